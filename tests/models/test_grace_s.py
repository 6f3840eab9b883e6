"""grace-s: budget, the untrained network equals the warp, checkpoints and digests."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codec.errors import ModelMismatchError  # noqa: E402
from codec.generators import make_generator  # noqa: E402
from codec.generators.torch_backend import TorchGenerator  # noqa: E402
from codec.models.grace_s import GraceS, GraceSConfig, count_macs  # noqa: E402
from codec.motion import mean_face  # noqa: E402
from codec.training.train import export  # noqa: E402


def face(shift=(0.0, 0.0), open_mouth=0.0) -> np.ndarray:
    pts = mean_face(256) + np.float32(shift)
    pts[57:60, 1] += open_mouth
    return pts


def test_budget():
    model = GraceS()
    macs = count_macs(model)
    reference = macs.pop("reference")
    per_frame = sum(macs.values())
    params = sum(p.numel() for p in model.parameters())
    assert per_frame <= 2e9, per_frame  # design budget: <= 2 GMAC a frame
    assert params <= 4e6
    assert reference > 0


def test_untrained_network_renders_the_warp(tmp_path):
    torch.manual_seed(0)
    path = tmp_path / "m.pt"
    export(GraceS(GraceSConfig()), path)
    gen = TorchGenerator(checkpoint=path)
    rng = np.random.default_rng(0)
    img = (rng.random((256, 256, 3)) * 255).astype(np.uint8)
    img = np.ascontiguousarray(np.repeat(np.repeat(img[::8, ::8], 8, 0), 8, 1))  # smooth-ish
    warp = make_generator("warp")
    for g in (gen, warp):
        g.set_reference(img, face())
    target = face(shift=(3.0, -2.0), open_mouth=4.0)
    a, b = gen.render(target), warp.render(target)
    assert a.shape == (256, 256, 3) and a.dtype == np.uint8
    # Same backward map, bilinear on both sides; borders differ (zero vs replicate padding).
    assert np.mean(np.abs(a[8:-8, 8:-8].astype(int) - b[8:-8, 8:-8])) < 1.0


def test_digest_is_checked(tmp_path):
    path = tmp_path / "m.pt"
    digest = export(GraceS(), path)
    TorchGenerator(checkpoint=path, model_digest=digest)  # matching: fine
    with pytest.raises(ModelMismatchError):
        TorchGenerator(checkpoint=path, model_digest=b"\x00" * 8)
    ckpt = torch.load(path, weights_only=True)
    ckpt["state_dict"]["out.bias"] += 1.0  # weights changed after export
    torch.save(ckpt, path)
    with pytest.raises(ModelMismatchError, match="digest"):
        TorchGenerator(checkpoint=path)


def test_shipped_model_is_within_budget_and_consistent():
    """The shipped card's config meets the budget; the weights load strictly and match the
    card's digest, and the int8 program shipped next to them was compiled from them."""
    import json

    from codec.generators.torch_backend import load_model, model_card, model_path

    card = model_card("grace-s")
    if card is None:
        pytest.skip("no shipped grace-s weights")
    config = GraceSConfig(
        **{k: tuple(v) if isinstance(v, list) else v for k, v in card["config"].items()}
    )
    macs = count_macs(GraceS(config))
    macs.pop("reference")
    assert sum(macs.values()) <= 2e9
    model = load_model(model_path("grace-s"), bytes.fromhex(card["digest"]))
    assert sum(p.numel() for p in model.parameters()) <= 4e6
    assert model_path("grace-s").stat().st_size <= 20e6
    program = json.loads((model_path("grace-s").with_suffix(".int8") / "program.json").read_text())
    assert program["digest"] == card["digest"]
