"""Generator registry and the warp backend."""

import numpy as np
import pytest

from codec.errors import GraceError
from codec.generators import backend_names, make_generator
from codec.generators.flow import similarity_fit
from codec.motion import crop_corners, mean_face


def face_landmarks(shift=(0.0, 0.0)) -> np.ndarray:
    return mean_face(256) + np.float32(shift)


def textured_image() -> np.ndarray:
    ys, xs = np.mgrid[0:256, 0:256]
    img = np.stack([xs, ys, (xs * 3 + ys * 5) % 256], -1)
    return img.astype(np.uint8)


def test_registry_lists_warp_and_rejects_unknown():
    assert "warp" in backend_names()
    with pytest.raises(GraceError, match="unknown backend"):
        make_generator("no-such-backend")


def test_identity_pose_reproduces_reference():
    gen = make_generator("warp")
    img, lm = textured_image(), face_landmarks()
    gen.set_reference(img, lm)
    out = gen.render(lm)
    assert out.shape == img.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - img).max() <= 1


def test_translation_moves_the_face_and_keeps_the_border():
    gen = make_generator("warp")
    img = textured_image()
    gen.set_reference(img, face_landmarks())
    out = gen.render(face_landmarks(shift=(6.0, 0.0)))
    centre = out[110:150, 110:150].astype(int)
    shifted = img[110:150, 104:144].astype(int)  # content moved right by 6 px
    assert np.abs(centre - shifted).mean() < 3
    np.testing.assert_array_equal(out[0], img[0])  # the crop border stays put


def test_camera_points_move_the_background_with_the_face():
    """With the key crop's corners 6 px to the right (a pan), the whole frame follows,
    the border and the strip the moved border uncovers included; still corners (or none)
    keep the border put."""
    gen = make_generator("warp")
    img = textured_image()
    corners = crop_corners(256, 256).astype(np.float32)
    gen.set_reference(img, np.vstack([face_landmarks(), corners]))
    out = gen.render(np.vstack([face_landmarks(shift=(6.0, 0.0)), corners + [6.0, 0.0]]))
    np.testing.assert_array_equal(out[:, 6:], img[:, :-6])  # every pixel: 6 px to the right
    still = gen.render(np.vstack([face_landmarks(), corners]))
    np.testing.assert_array_equal(still, gen.render(face_landmarks()))
    assert np.abs(still.astype(int) - img).max() <= 1


def test_ring_follows_the_skull_not_the_open_mouth():
    """Opening the mouth (chin, lower jaw and lips down 12 px) moves the lower face but not
    the ring: the hair and head outline stay where the key frame has them."""
    from codec.generators.flow import backward_map
    from codec.motion import SKULL_POINTS, face_ring

    ref = face_landmarks().astype(np.float64)
    target = ref.copy()
    mouth = [*range(5, 12), *range(48, 68)]
    target[mouth, 1] += 12.0
    assert not set(mouth) & set(SKULL_POINTS)
    map_x, map_y = backward_map(ref, target, 256, 256)
    for x, y in face_ring(ref).round().astype(int):
        x, y = np.clip([x, y], 0, 255)
        assert abs(map_x[y, x] - x) < 0.5 and abs(map_y[y, x] - y) < 0.5
    # The chin itself does move: it is fetched from 12 px higher up in the key frame.
    cx, cy = ref[8].round().astype(int)
    assert map_y[cy + 12, cx] == pytest.approx(cy, abs=1.0)


def test_ring_goes_where_the_stream_sends_it():
    """Motion points with ring rows (88, 2): the hair at each ring point is fetched from
    the key frame's ring point, wherever the skull's pose would have put it."""
    from codec.generators.flow import backward_map
    from codec.motion import crop_corners, face_ring

    ref = np.vstack([face_landmarks(), crop_corners(256, 256)]).astype(np.float64)
    sway = np.array([7.0, -3.0])
    ring = face_ring(ref) + sway
    target = np.vstack([ref, ring])  # the face and camera still, the hair swung aside
    map_x, map_y = backward_map(ref, target, 256, 256)
    inside = [(p, q) for p, q in zip(ring, face_ring(ref)) if (p >= 1).all() and (p <= 254).all()]
    assert len(inside) >= 8
    for (x, y), (kx, ky) in inside:
        xi, yi = int(round(x)), int(round(y))  # a pixel next to the ring point
        assert map_x[yi, xi] == pytest.approx(kx + xi - x, abs=0.3)
        assert map_y[yi, xi] == pytest.approx(ky + yi - y, abs=0.3)
    # Without ring rows the ring stays with the (still) skull.
    still_x, _ = backward_map(ref, ref, 256, 256)
    xi, yi = np.round(face_ring(ref)[0]).astype(int).clip(0, 255)
    assert still_x[yi, xi] == pytest.approx(xi, abs=0.3)


def test_similarity_fit_recovers_a_known_transform():
    rng = np.random.default_rng(0)
    src = rng.normal(size=(20, 2)) * 30
    th, s, t = 0.2, 1.3, np.array([5.0, -7.0])
    rot = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    m = similarity_fit(src, src @ rot.T + t)
    np.testing.assert_allclose(m[:, :2], rot, atol=1e-9)
    np.testing.assert_allclose(m[:, 2], t, atol=1e-9)


def test_render_before_reference_is_an_error():
    with pytest.raises(RuntimeError):
        make_generator("warp").render(face_landmarks())
