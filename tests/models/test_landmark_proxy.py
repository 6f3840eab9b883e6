"""The landmark proxy behind the keypoint loss: it trains and reloads, its distance is zero
on identical images and carries a gradient, its flip table mirrors dlib's 68 points, and the
committed proxy finds landmarks on real val crops."""

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from codec.motion import mean_face  # noqa: E402
from codec.training import landmark_proxy as P  # noqa: E402
from codec.training import train as T  # noqa: E402

from .test_training import face_crop, tiny_cache  # noqa: E402


def test_flip_table_mirrors_the_68_points():
    assert sorted(P._FLIP) == list(range(68))
    assert (P._FLIP[P._FLIP] == np.arange(68)).all()  # an involution
    face = mean_face(256)
    assert np.abs(P._mirror(face, 256) - face).max() < 5.0  # the mean face is near symmetric


def test_proxy_trains_reloads_and_its_distance_has_a_gradient(tmp_path):
    tiny_cache(tmp_path / "data" / "train")
    tiny_cache(tmp_path / "data" / "val")
    out = tmp_path / "proxy.pt"
    err = P.train_proxy(tmp_path / "data", out, steps=2, batch=2, width=8, val_every=1)
    assert np.isfinite(err)
    proxy = P.load_proxy(out)
    img = torch.rand(2, 3, 256, 256)
    lm = proxy(img)
    assert lm.shape == (2, 68, 2)
    assert bool(((lm > -1) & (lm < 256)).all())  # soft-argmax stays inside the image
    assert P.keypoint_distance(proxy, img, img).max() < 1e-2
    moved = img.roll(12, dims=-1).requires_grad_(True)
    dist = P.keypoint_distance(proxy, moved, img)
    dist.sum().backward()
    assert moved.grad is not None and moved.grad.abs().sum() > 0
    assert not any(p.requires_grad for p in proxy.parameters())  # frozen: only the generator learns


def test_missing_proxy_is_a_clear_error(tmp_path):
    from codec.errors import InputError

    with pytest.raises(InputError, match="no landmark proxy"):
        P.load_proxy(tmp_path / "none.pt")


@pytest.mark.skipif(not P.COMMITTED.is_file(), reason="no committed landmark proxy")
def test_committed_proxy_follows_a_moved_face():
    """On a real face no clip of ours holds (scikit-image's astronaut) the proxy's points
    move with the image, and sit on the face."""
    proxy = P.load_proxy(P.COMMITTED)
    x = torch.from_numpy(T.to_chw(face_crop()))[None]
    with torch.no_grad():
        here, moved = proxy(x)[0], proxy(x.roll(10, dims=-1))[0]
    shift = (moved - here).mean(0)
    assert 7.0 < shift[0].item() < 13.0 and abs(shift[1].item()) < 3.0
    assert np.abs(here.numpy() - mean_face(256)).mean() < 40.0
