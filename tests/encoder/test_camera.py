"""Camera tracker: a panning background is followed, a still one stays put."""

import cv2
import numpy as np

from codec.motion import crop_corners, mean_face
from encoder.camera import CameraTracker


def scene(shift: tuple[float, float], face_shift: float, seed: int = 3) -> np.ndarray:
    """A 256 crop: blurred-noise background moved by `shift`, a flat face disc on top
    that moves on its own (face_shift px to the right)."""
    rng = np.random.default_rng(seed)
    big = cv2.GaussianBlur(rng.integers(0, 256, (384, 384, 3)).astype(np.uint8), (0, 0), 2.5)
    big = cv2.normalize(big, None, 0, 255, cv2.NORM_MINMAX)
    m = np.float32([[1, 0, 64 + shift[0]], [0, 1, 64 + shift[1]]])  # crop = big(x - 64 - s)
    crop = cv2.warpAffine(big, m, (256, 256), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP)
    face = mean_face(256) + [face_shift, 0]
    c = face.mean(0)
    cv2.circle(crop, (int(c[0]), int(c[1])), 70, (200, 160, 140), -1)
    return crop


def test_a_panning_background_is_followed():
    # The background under the crop moves left: the key crop's corners go left with it.
    tracker = CameraTracker(256)
    tracker.start(scene((0, 0), 0), mean_face(256))
    for t in range(1, 31):
        pan = (0.5 * t, 0.2 * t)
        got = tracker.track(scene(pan, 3 * np.sin(t / 4)), mean_face(256) + [3 * np.sin(t / 4), 0])
    expected = crop_corners(256, 256) - [15.0, 6.0]
    assert np.abs(got - expected).max() < 0.5


def test_a_still_background_keeps_the_corners_still():
    tracker = CameraTracker(256)
    tracker.start(scene((0, 0), 0), mean_face(256))
    for t in range(1, 20):
        got = tracker.track(
            scene((0, 0), 4 * np.sin(t / 3)), mean_face(256) + [4 * np.sin(t / 3), 0]
        )
        np.testing.assert_array_equal(got, crop_corners(256, 256).astype(np.float32))


def test_a_panning_stream_decodes_with_the_background_following():
    """Encoder -> .agc packets -> Decoder (warp): with camera motion the decoded frame's
    background is the pan's; without it, it stays where the key frame had it."""
    import io
    from fractions import Fraction

    from codec.bitstream import AgcReader, AgcWriter
    from codec.decoder import Decoder
    from codec.evaluation.runner import ReplayPipeline
    from codec.motion import MotionConfig
    from encoder.crop import CropBox
    from encoder.encoder import Encoder, EncoderConfig
    from encoder.pipeline import FaceFrame

    # The camera pans over a still scene: the background and the head move left together.
    pans = [0.6 * t for t in range(20)]
    crops = [scene((p, 0.0), -p) for p in pans]
    errors = {}
    for camera in (True, False):
        config = EncoderConfig(key_quality=90, motion=MotionConfig(camera=camera))
        enc = Encoder(config, Fraction(25), 256, 256, frame_count=len(crops))
        enc.pipeline = ReplayPipeline()  # the frames are crops already: no face tracking
        buf = io.BytesIO()
        writer = AgcWriter(buf, enc.header)
        for i, crop in enumerate(crops):
            head = mean_face(256) - [pans[i], 0.0]
            face = FaceFrame(i, crop, CropBox(0, 0, 256), head.astype(np.float32), False, False)
            for packet in enc.encode(face):
                writer.write(packet)
        for packet in enc.flush():
            writer.write(packet)
        writer.close()
        buf.seek(0)
        reader = AgcReader(buf)
        decoder = Decoder(reader.header, "warp")
        frames = [f for packet in reader for f in decoder.decode(packet)]
        corner = (slice(0, 48), slice(0, 48))  # background, far from the face disc
        errors[camera] = np.abs(frames[-1][corner].astype(int) - crops[-1][corner]).mean()
    assert errors[True] < 6 and errors[False] > 4 * errors[True]  # 3.7 (the key codec) and 27
