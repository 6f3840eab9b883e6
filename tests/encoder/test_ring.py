"""Ring tracker: the hair around a still face is followed, into the decoded picture."""

import cv2
import numpy as np

from codec.motion import MotionConfig, face_ring, mean_face
from encoder.crop import CropBox
from encoder.pipeline import FaceFrame
from encoder.ring import RingTracker

from .test_key_search import code


def _texture(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (384, 384, 3)).astype(np.uint8), (0, 0), 2.5)
    return cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)


def _shifted(image: np.ndarray, shift: float) -> np.ndarray:
    m = np.float32([[1, 0, 64 - shift], [0, 1, 64]])  # crop(x) = image(x + 64 - shift)
    return cv2.warpAffine(image, m, (256, 256), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)


def scene(hair_shift: float) -> np.ndarray:
    """A 256 crop: a still textured background, a hair band around the face (out to 1.2x
    the ring's radius) swung `hair_shift` px to the right, a flat still face disc."""
    face = mean_face(256)
    c = face.mean(0)
    ring_radius = np.linalg.norm(face_ring(face)[0] - c)
    yy, xx = np.mgrid[0:256, 0:256]
    band = np.hypot(xx - c[0], yy - c[1]) < 1.2 * ring_radius
    crop = np.where(band[..., None], _shifted(_texture(5), hair_shift), _shifted(_texture(3), 0))
    cv2.circle(crop, (int(c[0]), int(c[1])), 50, (200, 160, 140), -1)
    return crop


def test_swung_hair_moves_the_ring():
    tracker = RingTracker()
    start = tracker.start(scene(0), mean_face(256))
    np.testing.assert_allclose(start, face_ring(mean_face(256)), atol=1e-4)
    for _ in range(8):  # the same frame again and again: the smoothing converges
        got = tracker.track(scene(5.0), mean_face(256))
    inside = ((start > 8) & (start < 248)).all(1)
    assert inside.sum() >= 8
    np.testing.assert_allclose(got[inside] - start[inside], [[5.0, 0.0]] * inside.sum(), atol=0.5)


def test_a_stream_with_ring_motion_shows_the_hair_where_it_swung():
    """Encoder -> .agc packets -> Decoder (warp): with ring motion the hair band of the
    decoded frame follows the swing; without it, it stays where the key frame had it."""
    face = mean_face(256)
    faces = [
        FaceFrame(t, scene(0.4 * t), CropBox(0, 0, 256), face, False, False) for t in range(20)
    ]
    c = face.mean(0)
    ring_radius = np.linalg.norm(face_ring(face)[0] - c)
    yy, xx = np.mgrid[0:256, 0:256]
    r = np.hypot(xx - c[0], yy - c[1])
    hair = (r > 60) & (r < 1.1 * ring_radius)
    errors = {}
    for ring in (True, False):
        _, _, frames = code(faces, motion=MotionConfig(ring=ring))
        errors[ring] = np.abs(frames[-1][hair].astype(int) - faces[-1].image[hair]).mean()
    assert errors[True] < 0.7 * errors[False]  # 15.5 against 29.2
