"""The self-made example clip: deterministic, a face in every frame, a moving mouth."""

import numpy as np

from codec.example import example_frames
from codec.video import probe_video
from encoder.landmarks import make_detector


def test_frames_are_deterministic():
    a = list(example_frames(3))
    b = list(example_frames(3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    assert a[0].shape == (480, 640, 3) and a[0].dtype == np.uint8


def test_face_in_every_frame_and_mouth_moves():
    frames = list(example_frames(12))
    detector = make_detector("dlib")
    mouths = []
    for f in frames:
        faces = detector.detect(f)
        assert faces, "the example face must be found in every frame"
        big = max(faces, key=lambda face: face.area)
        mouths.append(big.landmarks[66, 1] - big.landmarks[62, 1])  # inner-lip gap
    assert max(mouths) - min(mouths) > 3  # the mouth opens and closes
    corner = [f[-20:, -20:].astype(int) for f in frames]  # far background: still
    assert max(np.abs(c - corner[0]).max() for c in corner) == 0


def test_written_clip(example_clip):
    info = probe_video(example_clip)
    assert (info.width, info.height) == (640, 480)
    assert info.frame_count == 30 and info.fps == 25
