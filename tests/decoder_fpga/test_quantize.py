"""Whole-model int8 quantisation: the fused graph equals grace-s, the quantised operands are
in the engines' ranges, the int8 decoder stays close to float torch, the npz round trip."""

import json

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codec.generators.torch_backend import TorchGenerator  # noqa: E402
from codec.models import weights_digest  # noqa: E402
from codec.models.grace_s import GraceS, GraceSConfig  # noqa: E402
from codec.motion import default_shape_model  # noqa: E402
from codec.training.train import export  # noqa: E402
from decoder_fpga import int8_ref as ref  # noqa: E402
from decoder_fpga import quantize as Q  # noqa: E402
from decoder_fpga.backends import Int8Generator  # noqa: E402
from decoder_fpga.program import compile_program  # noqa: E402

SIZE = 64
TINY = GraceSConfig(size=SIZE, enc=(8, 8, 16), motion=(8, 16, 16), dec=(16, 8, 8), dec_blocks=1)


def tiny_model(config=TINY, seed=0) -> GraceS:
    """A seeded grace-s with non-zero heads (the stock init zeroes them)."""
    torch.manual_seed(seed)
    m = GraceS(config).eval()
    with torch.no_grad():
        m.mot_head.weight.normal_(0, 0.05)
        m.out.weight.normal_(0, 0.05)
        m.out.bias.normal_(0, 0.02)
    return m


def face(size=SIZE, shift=(0.0, 0.0)) -> np.ndarray:
    sm = default_shape_model()
    k = size / 256
    pts = sm.mean.reshape(68, 2) * sm.scale0 * k + size / 2 + np.array(shift) * k
    return pts.astype(np.float32)


def psnr(a, b) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255**2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def samples():
    return Q.synthetic_samples(SIZE, 6, seed=1)


@pytest.fixture(scope="module")
def qm(model, samples):
    return Q.quantize_model(model, samples[:4])


def batch(samples):
    return {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}


@pytest.mark.parametrize("config", [TINY, GraceSConfig(size=SIZE)], ids=["tiny", "grace-s"])
def test_float_graph_equals_render(config, samples):
    m = tiny_model(config)
    b = batch(samples[:2])
    with torch.no_grad():
        t = Q.run_float_graph(m, Q.build_graph(config), b)
        feats = m.encode_reference(b["ref"])
        want = m.render(b["ref"], feats, b["grid"], b["target_heat"], b["ref_heat"])
    torch.testing.assert_close(t["image"], want, atol=1e-5, rtol=1e-5)


def test_graph_uses_every_conv_once():
    m = tiny_model()
    g = Q.build_graph(TINY)
    convs = [n.name for n in g.nodes if isinstance(n, Q.ConvNode)]
    modules = [n for n, mod in m.named_modules() if isinstance(mod, torch.nn.Conv2d)]
    assert sorted(convs) == sorted(modules)
    grids = [n.name for n in g.nodes if isinstance(n, Q.GridNode)]
    assert grids == ["ref64", "wref64", "wf2", "wf1", "wf0", "wref256"]
    # ops in the engines' vocabulary only
    for n in g.nodes:
        if isinstance(n, Q.ConvNode):
            assert n.k in (1, 3) and n.stride in (1, 2) and not (n.upsample and n.stride == 2)


def test_operands_are_in_the_engines_ranges(qm):
    g = qm.graph()
    for node in g.nodes:
        if isinstance(node, Q.ConvNode):
            qc = qm.convs[node.name]
            assert qc.w.dtype == np.int8 and np.abs(qc.w.astype(int)).max() <= 127
            assert qc.b.dtype == np.int32 and np.abs(qc.b.astype(np.int64)).max() <= ref.BIAS_LIMIT
            assert (qc.M >= 0).all() and (qc.M <= ref.M_MAX).all()
            assert (qc.S >= ref.S_MIN).all() and (qc.S <= ref.S_MAX).all()
            if node.residual:
                assert qc.S.min() > ref.RES_GUARD_BITS and qc.res_S > ref.RES_GUARD_BITS
            else:
                assert qc.res_M is None
    for name, spec in g.tensors.items():
        if spec.dtype == "int8":
            assert qm.scales[name] > 0
    assert qm.scales["ref_in"] == Q.REF_SCALE and qm.scales["mot_in"] == Q.HEAT_SCALE
    assert qm.scales["mot_in.rgb"] == Q.HEAT_SCALE  # a view takes its parent's scale
    assert qm.digest == weights_digest(tiny_model().state_dict()).hex()


def test_int8_close_to_float_torch(tmp_path, model, qm, samples):
    """The fused int8 decoder against float torch on the tiny model: PSNR >= 40 dB a frame
    (measured ~50 dB; grace-s's trained checkpoint at 256 px gives ~50 dB too)."""
    path = tmp_path / "tiny.pt"
    export(model, path)
    float_gen = TorchGenerator(checkpoint=path)
    int_gen = Int8Generator(program=compile_program(qm))
    img = np.ascontiguousarray(
        (samples[5]["ref"].transpose(1, 2, 0) * 255).round().astype(np.uint8)
    )
    rng = np.random.default_rng(3)
    for g in (float_gen, int_gen):
        g.set_reference(img, face())
    for _ in range(3):
        lm = face(shift=rng.normal(0, 3, 2)) + rng.normal(0, 0.5, (68, 2)).astype(np.float32)
        a, b = float_gen.render(lm), int_gen.render(lm)
        assert psnr(a, b) >= 40.0
        assert np.abs(a.astype(int) - b).mean() < 1.0


def test_round_trip(tmp_path, qm):
    path = tmp_path / "q.npz"
    qm.save(path)
    back = Q.QuantizedModel.load(path)
    assert back.scales == qm.scales and back.grids == qm.grids
    assert back.config == qm.config and back.digest == qm.digest
    assert back.calibration == qm.calibration
    for name, qc in qm.convs.items():
        other = back.convs[name]
        for f in ("w", "b", "M", "S", "w_scale"):
            np.testing.assert_array_equal(getattr(other, f), getattr(qc, f))
            assert getattr(other, f).dtype == getattr(qc, f).dtype
        assert (other.res_M, other.res_S) == (qc.res_M, qc.res_S)
    path.write_bytes(b"not an npz")
    with pytest.raises(Q.QuantizationError):
        Q.QuantizedModel.load(path)


def test_calibration_methods(model, samples):
    g = Q.build_graph(TINY)
    peak = Q.calibrate(model, g, samples[:2], "max")
    pct = Q.calibrate(model, g, samples[:2], "percentile", 99.0)
    assert set(peak) == set(pct)
    assert all(pct[n] <= peak[n] + 1e-12 for n in peak)
    assert "mot_in" not in peak and "ref_in" not in peak  # fixed scales
    with pytest.raises(Q.QuantizationError):
        Q.calibrate(model, g, samples[:2], "entropy")
    with pytest.raises(Q.QuantizationError):
        Q.calibrate(model, g, [], "max")


def test_dead_channel_keeps_its_bias():
    w = np.zeros((2, 3, 3, 3))
    w[0] = 0.1
    b = np.array([0.3, -0.25])
    qc = Q.quantize_conv_layer(w, b, s_in=0.01, s_out=0.005, s_res=None, name="t")
    x = np.zeros((3, 4, 4), np.int8)
    y = ref.conv2d_int8(x, qc.w, qc.b, qc.M, qc.S)
    np.testing.assert_array_equal(y[1], np.full((4, 4), -50))  # -0.25 / 0.005, exact
    np.testing.assert_array_equal(y[0][1:-1, 1:-1], np.full((2, 2), 60))  # 0.3 / 0.005
    with pytest.raises(Q.QuantizationError, match="bias"):
        Q.quantize_conv_layer(w, np.array([1e9, 0.0]), 0.01, 0.005, None, "t")


def test_calibration_samples_from_a_prepared_cache(tmp_path, monkeypatch):
    """The train cache layout (crops at 256 px, 68 landmarks + the camera's 4 corners)
    resized to the model's size; the driving grid moves the ring as the stream does."""
    from codec.motion import crop_corners

    root = tmp_path / "train"
    rng = np.random.default_rng(0)
    points = np.vstack([face(256), crop_corners(256, 256)]).astype(np.float32)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True)
        crops = rng.integers(0, 256, (3, 256, 256, 3), dtype=np.uint8)
        np.save(root / name / "crops.npy", crops)
        np.save(root / name / "decoded.npy", np.stack([points] * 3))
        np.save(root / name / "segment.npy", np.zeros(3, np.int32))
    (root / "index.json").write_text(json.dumps([{"clip": "a"}, {"clip": "b"}]))
    from codec.training.train import PairDataset

    driven = []
    ring_motion = PairDataset.ring_motion

    def spy(self, *args):
        driven.append(ring_motion(self, *args))
        return driven[-1]

    monkeypatch.setattr(PairDataset, "ring_motion", spy)
    out = Q.calibration_samples(root, SIZE, count=3)
    assert len(out) == 3 and len(driven) == 3 and driven[0].shape == (88, 2)
    assert out[0]["ref"].shape == (3, SIZE, SIZE) and out[0]["ref"].dtype == np.float32
    assert out[0]["grid"].shape == (2, SIZE, SIZE)
    assert out[0]["target_heat"].shape == (8, SIZE // 4, SIZE // 4)
    with pytest.raises(Q.QuantizationError, match="index.json"):
        Q.calibration_samples(tmp_path / "nothing", SIZE)
