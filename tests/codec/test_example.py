"""The self-made example clip: deterministic, one face in every frame, a talking mouth."""

import runpy
from pathlib import Path

import av
import numpy as np
import pytest

from codec.example import example_frames
from codec.video import probe_video
from encoder.landmarks import make_detector

REPO = Path(__file__).resolve().parents[2]


def test_frames_are_deterministic():
    a = list(example_frames(6))
    b = list(example_frames(3))  # frame i does not depend on the clip length
    assert a[0].shape == (480, 640, 3) and a[0].dtype == np.uint8
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)
    np.testing.assert_array_equal(list(example_frames(6))[5], a[5])
    assert not np.array_equal(list(example_frames(6, seed=1))[5], a[5])
    assert next(example_frames(1, size=(320, 240))).shape == (240, 320, 3)


@pytest.fixture(scope="module")
def sampled():
    """12 frames spread over 1.9 s (every 4th), with the one face dlib finds in each."""
    frames = list(example_frames(48))[::4]
    detector = make_detector("dlib")
    faces = [detector.detect(f) for f in frames]
    return frames, faces


def test_one_off_centre_face_in_every_frame(sampled):
    frames, faces = sampled
    assert [len(f) for f in faces] == [1] * len(frames)
    for (face,) in faces:
        x0, y0, x1, y1 = face.box
        assert x1 - x0 > 80  # above dlib's smallest HOG window, with a margin
        assert (x0 + x1) / 2 < 640 / 2 and (y0 + y1) / 2 < 480 / 2  # not centred


def test_mouth_talks_background_stays(sampled):
    frames, faces = sampled
    gaps = np.array([f[0].landmarks[66, 1] - f[0].landmarks[62, 1] for f in faces])
    assert gaps.max() - gaps.min() > 4  # dlib itself sees the lips part and close
    shut, wide = int(gaps.argmin()), int(gaps.argmax())
    x0, y0 = np.floor(faces[wide][0].landmarks[48:68].min(0)).astype(int) - 4
    x1, y1 = np.ceil(faces[wide][0].landmarks[48:68].max(0)).astype(int) + 4
    mouth = [frames[i][y0:y1, x0:x1].astype(np.int16) for i in (shut, wide)]
    assert np.abs(mouth[1] - mouth[0]).mean() > 10
    far = [f[:, 480:] for f in frames]  # the right quarter of the frame: backdrop only
    for f in far[1:]:
        np.testing.assert_array_equal(f, far[0])


def test_written_clip(example_clip):
    info = probe_video(example_clip)  # conftest writes 1.2 s at 25 fps
    assert (info.width, info.height, info.fps) == (640, 480, 25)
    with av.open(str(example_clip)) as container:
        stream = container.streams.video[0]
        assert stream.codec_context.name == "h264"
        assert stream.average_rate == 25
        assert sum(1 for _ in container.decode(stream)) == 30


def test_script_writes_a_clip(tmp_path, capsys):
    script = runpy.run_path(str(REPO / "examples" / "make_example_clip.py"))
    out = tmp_path / "clip.mp4"
    assert script["main"]([str(out), "--seconds", "0.2"]) == 0
    assert str(out) in capsys.readouterr().out
    assert probe_video(out).frame_count == 5
