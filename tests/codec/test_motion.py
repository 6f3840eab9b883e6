"""Motion coder: round trips, closed-loop reconstruction, stream framing, damage."""

import dataclasses

import numpy as np
import pytest

from codec import motion
from codec.errors import BitstreamError, GraceError


def synthetic_track(frames: int, seed: int) -> np.ndarray:
    """A face-like (T, 68, 2) track: a fixed layout with smooth deformation and head motion."""
    rng = np.random.default_rng(1234)
    base = rng.normal(size=(68, 2)) * 40 + 128
    modes = rng.normal(size=(6, 68, 2))
    r = np.random.default_rng(seed)
    phase, freq = r.uniform(0, 6, 6), r.uniform(0.2, 2.0, 6)
    out = []
    for t in range(frames):
        pts = base + np.tensordot(np.sin(2 * np.pi * freq * t / 25 + phase) * 3, modes, 1)
        th = 0.05 * np.sin(t / 20)
        rot = np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
        pts = (pts - 128) @ rot.T * (1 + 0.03 * np.sin(t / 13)) + 128 + [5 * np.sin(t / 17), 0]
        out.append(pts)
    return np.array(out, np.float32)


@pytest.fixture(scope="module")
def model() -> motion.ShapeModel:
    return motion.fit_shape_model([synthetic_track(150, s) for s in range(4)], max_coeffs=16)


def code(track, config, model):
    enc = motion.MotionEncoder(config, model)
    key, first = enc.intra(track[0], 0)
    decoded, chunks = [first], []
    for pts in track[1:]:
        lm, ready = enc.inter(pts)
        decoded.append(lm)
        chunks += ready
    chunks += enc.seal()
    return key, chunks, decoded


def test_params_round_trip_is_exact_without_truncation(model):
    pts = synthetic_track(1, 7)[0]
    params = motion.landmarks_to_params(pts, model, model.max_coeffs)
    back = motion.params_to_landmarks(params, model)
    # 16 of 136 dimensions: what is lost is only the shape outside the basis.
    assert motion.rms_error(back, pts) < 0.5
    pose, _ = motion.similarity_normalise(pts, model.mean)
    assert np.isfinite(pose).all()


def test_decoder_reproduces_encoder_exactly(model):
    track = synthetic_track(300, 99)
    config = motion.MotionConfig(num_coeffs=12, step_px=2.0, camera=False)
    key, chunks, enc_decoded = code(track, config, model)
    assert [pts for pts, _ in chunks] == list(range(1, 300))  # one chunk a frame, in order
    dec = motion.MotionDecoder(config, model)
    out = [dec.intra(key)] + [dec.inter(data) for _, data in chunks]
    for a, b in zip(out, enc_decoded):
        np.testing.assert_array_equal(a, b)


def test_error_stays_within_quantisation_and_rate_is_small(model):
    track = synthetic_track(300, 5)
    config = motion.MotionConfig(num_coeffs=12, step_px=2.0, camera=False)
    _, chunks, decoded = code(track, config, model)
    errors = [motion.rms_error(d, t) for d, t in zip(decoded, track)]
    assert np.mean(errors) < 0.5 and max(errors) < 1.0  # closed loop: no drift
    bits_per_frame = sum(8 * len(d) for _, d in chunks) / 299
    assert bits_per_frame < 60


def test_finer_step_costs_more_bits_and_less_error(model):
    track = synthetic_track(200, 3)
    coarse = code(track, motion.MotionConfig(12, 3.0, camera=False), model)
    fine = code(track, motion.MotionConfig(12, 0.5, camera=False), model)
    size = lambda c: sum(len(d) for _, d in c[1])  # noqa: E731
    err = lambda c: np.mean([motion.rms_error(d, t) for d, t in zip(c[2], track)])  # noqa: E731
    assert size(fine) > size(coarse)
    assert err(fine) < err(coarse)


def test_large_jumps_use_escape_codes(model):
    track = synthetic_track(40, 1)
    track[20:] += 60.0  # a sudden 60 px move: residuals beyond the alphabet
    config = motion.MotionConfig(12, 0.5, camera=False)
    key, chunks, enc_decoded = code(track, config, model)
    dec = motion.MotionDecoder(config, model)
    out = [dec.intra(key)] + [dec.inter(d) for _, d in chunks]
    np.testing.assert_array_equal(out[-1], enc_decoded[-1])
    assert motion.rms_error(out[25], track[25]) < 1.0


def test_config_round_trip_and_mismatch(model):
    config = motion.MotionConfig(num_coeffs=10, step_px=1.25)
    assert motion.MotionConfig.from_bytes(config.to_bytes(model), model) == config
    still = motion.MotionConfig(num_coeffs=10, step_px=1.25, camera=False)
    assert motion.MotionConfig.from_bytes(still.to_bytes(model), model) == still
    # Version 1 (the releases before camera motion) had no flags byte: it still decodes.
    v1 = b"\x01" + still.to_bytes(model)[1:-1]
    assert motion.MotionConfig.from_bytes(v1, model) == still
    assert config.ring and not still.ring  # ring motion only with the camera's
    no_ring = motion.MotionConfig(num_coeffs=10, step_px=1.25, ring=False)
    assert motion.MotionConfig.from_bytes(no_ring.to_bytes(model), model) == no_ring
    assert no_ring.describe() == "10 shape coefficients, 1.25 px step, camera motion"
    assert still.describe().endswith("no camera or ring motion")
    for flags in (b"\x04", b"\x02"):  # unknown; ring motion without the camera's
        with pytest.raises(BitstreamError, match="flags"):
            motion.MotionConfig.from_bytes(config.to_bytes(model)[:-1] + flags, model)
    other = motion.fit_shape_model([synthetic_track(50, 9)], max_coeffs=12)
    with pytest.raises(BitstreamError, match="shape model"):
        motion.MotionConfig.from_bytes(config.to_bytes(other), model)
    with pytest.raises(BitstreamError):
        motion.MotionConfig.from_bytes(b"\x09" + config.to_bytes(model)[1:], model)


def test_damaged_motion_data_raises_only_codec_errors(model):
    track = synthetic_track(120, 4)
    config = motion.MotionConfig(12, 1.0, camera=False)
    key, chunks, _ = code(track, config, model)
    rng = np.random.default_rng(0)
    for trial in range(30):
        dec = motion.MotionDecoder(config, model)
        dec.intra(key)
        try:
            for i, (_, data) in enumerate(chunks):
                if i == 10 and data:
                    data = bytes(rng.integers(0, 256, len(data), dtype=np.uint8))
                dec.inter(data if trial % 3 else data[:-1] if data else b"\x00")
        except GraceError:
            pass  # damage is reported as the codec's own error, or decodes to other values


def test_motion_before_key_frame_is_an_error(model):
    dec = motion.MotionDecoder(motion.MotionConfig(12, 1.0, camera=False), model)
    with pytest.raises(BitstreamError, match="key frame"):
        dec.inter(b"\x00\x00\x00\x00")
    with pytest.raises(GraceError):
        dec.intra(b"\x01")  # truncated key-frame parameters


def panning(track: np.ndarray, size: int = 256) -> np.ndarray:
    """The track with the key crop's corners of a camera that pans 0.4 px a frame and
    zooms in slowly: (T, 72, 2)."""
    corners = motion.crop_corners(size, size)
    c = (size - 1) / 2
    out = []
    for t, pts in enumerate(track):
        zoom = 1 + 0.0005 * t
        out.append(np.vstack([pts, (corners - c) * zoom + c + [0.4 * t, -0.1 * t]]))
    return np.array(out, np.float32)


def test_camera_corners_round_trip():
    corners = motion.crop_corners(256, 256)
    cam = np.array([3.5, -2.0, 0.01, -0.004])
    moved = motion.camera_to_corners(cam, 256)
    np.testing.assert_allclose(motion.corners_to_camera(moved, 256), cam, atol=1e-5)
    np.testing.assert_allclose(motion.camera_to_corners(np.zeros(4), 256), corners)


def test_camera_motion_is_coded_closed_loop_and_cheap_when_still(model):
    track = synthetic_track(200, 8)
    config = motion.MotionConfig(num_coeffs=12, step_px=1.25, ring=False)
    key, chunks, sent = code(panning(track), config, model)
    dec = motion.MotionDecoder(config, model)
    out = [dec.intra(key)] + [dec.inter(d) for _, d in chunks]
    for a, b in zip(out, sent):
        np.testing.assert_array_equal(a, b)
    assert out[0].shape == (72, 2)
    np.testing.assert_array_equal(out[0][68:], motion.crop_corners(256, 256))  # key: still
    corner_err = [motion.rms_error(d[68:], t[68:]) for d, t in zip(out, panning(track))]
    assert max(corner_err) < 1.0  # half-steps of q/2 px (edges) and more at the corners; no drift
    # A still camera (landmarks only in, zeros coded) costs well under a bit a frame more.
    _, still, _ = code(track, config, model)
    _, none, _ = code(track, motion.MotionConfig(12, 1.25, camera=False), model)
    extra = sum(8 * len(d) for _, d in still) - sum(8 * len(d) for _, d in none)
    assert extra / len(track) < 1.0


def swaying_hair(track: np.ndarray) -> np.ndarray:
    """The panning track (T, 72, 2) with the key frame's ring where hair swinging off the
    skull's pose puts it: a drift and a second-harmonic sway on top of the skull's ring."""
    out = []
    ang = np.linspace(0, 2 * np.pi, motion.RING_POINTS, endpoint=False)
    for t, pts in enumerate(panning(track)):
        offset = np.stack([0.05 * t + 3 * np.sin(t / 9) * np.cos(2 * ang), 2 * np.sin(ang)], 1)
        ring = motion.skull_ring(track[0], pts) + offset * min(t, 1)  # on the skull at the key
        out.append(np.vstack([pts, ring]))
    return np.array(out, np.float32)


def test_ring_motion_is_coded_closed_loop_and_cheap_on_the_skull(model):
    track = synthetic_track(200, 8)
    config = motion.MotionConfig(num_coeffs=12, step_px=1.25)
    key, chunks, sent = code(swaying_hair(track), config, model)
    dec = motion.MotionDecoder(config, model)
    out = [dec.intra(key)] + [dec.inter(d) for _, d in chunks]
    for a, b in zip(out, sent):
        np.testing.assert_array_equal(a, b)
    assert out[0].shape == (88, 2) and config.num_points == 88
    np.testing.assert_allclose(out[0][72:], motion.face_ring(out[0]), atol=1e-4)  # key: skull
    ring_err = [motion.rms_error(d[72:], t[72:]) for d, t in zip(out, swaying_hair(track))]
    # Harmonics up to the second are sent exactly but for the 2 px step (and the landmarks'
    # own quantisation moving the skull's ring): no drift.
    assert max(ring_err) < 2.0
    # A ring that moves with the skull (72 points in: zeros coded) costs little more.
    _, on_skull, _ = code(panning(track), config, model)
    _, no_ring, _ = code(panning(track), dataclasses.replace(config, ring=False), model)
    extra = sum(8 * len(d) for _, d in on_skull) - sum(8 * len(d) for _, d in no_ring)
    assert extra / len(track) < 2.0


def zoomed_3x(track: np.ndarray) -> np.ndarray:
    track[2, 68:72] = (track[2, 68:72] - 128) * 3 + 128  # the camera zooms 3x in one frame
    return track


def hair_far_away(track: np.ndarray) -> np.ndarray:
    track[2, 72:] += 3000  # the hair three crops away
    return track


@pytest.mark.parametrize("damage, what", [(zoomed_3x, "camera"), (hair_far_away, "ring")])
def test_an_implausible_camera_or_ring_is_a_stream_error(model, damage, what):
    config = motion.MotionConfig(num_coeffs=12, step_px=1.25)
    track = damage(swaying_hair(synthetic_track(3, 2)))
    key, chunks, _ = code(track, config, model)
    dec = motion.MotionDecoder(config, model)
    dec.intra(key)
    with pytest.raises(BitstreamError, match=f"implausible {what}"):
        for _, data in chunks:
            dec.inter(data)
