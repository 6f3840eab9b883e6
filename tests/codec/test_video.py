"""codec.video: reading any video PyAV reads, writing .mp4/.mov (H.264) and .mkv (FFV1)."""

from __future__ import annotations

import os
from fractions import Fraction

import av
import numpy as np
import pytest

from codec.errors import InputError, OutputError
from codec.video import BackgroundVideoWriter, VideoInfo, VideoWriter, probe_video, read_frames


def ramp(n: int, height: int = 64, width: int = 64) -> list[np.ndarray]:
    """n smooth, distinct RGB frames (H.264 keeps them close); H, W <= 64."""
    y, x = np.mgrid[0:height, 0:width]
    return [
        np.stack([x * 2 + 4 * i, y * 3, np.full_like(x, 40 + 5 * i)], -1).astype(np.uint8)
        for i in range(n)
    ]


def write(path, frames, fps=Fraction(25)) -> None:
    h, w = frames[0].shape[:2]
    with VideoWriter(path, fps, w, h) as writer:
        for f in frames:
            writer.write(f)


def leftovers(folder) -> list[str]:
    return sorted(os.listdir(folder))


def test_mkv_round_trip_is_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (66, 70, 3), dtype=np.uint8) for _ in range(4)]
    path = tmp_path / "clip.mkv"
    write(path, frames)
    back = list(read_frames(path))
    assert len(back) == len(frames)
    for a, b in zip(frames, back, strict=True):
        np.testing.assert_array_equal(a, b)
    assert probe_video(path) == VideoInfo(70, 66, Fraction(25), 0)


@pytest.mark.parametrize("ext", ["mp4", "mov"])
@pytest.mark.parametrize("fps", [Fraction(25), Fraction(30000, 1001)])
def test_h264_rate_and_count(tmp_path, ext, fps):
    frames = ramp(12)
    path = tmp_path / f"clip.{ext}"
    write(path, frames, fps)
    assert probe_video(path) == VideoInfo(64, 64, fps, 12)
    back = list(read_frames(path))
    assert len(back) == 12
    for a, b in zip(frames, back, strict=True):
        assert b.shape == (64, 64, 3) and b.dtype == np.uint8
        assert np.abs(a.astype(int) - b).mean() < 3  # CRF 18, same BT.601 matrix both ways


def test_mkv_ntsc_rate(tmp_path):
    path = tmp_path / "clip.mkv"
    write(path, ramp(5), Fraction(30000, 1001))
    assert probe_video(path).fps == Fraction(30000, 1001)


def test_read_max_frames_and_early_stop(tmp_path):
    path = tmp_path / "clip.mkv"
    frames = ramp(6)
    write(path, frames)
    assert len(list(read_frames(path, max_frames=2))) == 2
    assert list(read_frames(path, max_frames=0)) == []
    it = read_frames(path)
    np.testing.assert_array_equal(next(it), frames[0])
    it.close()  # stopping early releases the file
    with pytest.raises(ValueError):
        read_frames(path, max_frames=-1)


def test_reads_other_containers(tmp_path):
    # An MPEG-2 .mpg, written with PyAV directly: any container FFmpeg reads is accepted.
    path = tmp_path / "clip.mpg"
    with av.open(str(path), "w") as c:
        s = c.add_stream("mpeg2video", rate=25)
        s.width, s.height, s.pix_fmt = 64, 48, "yuv420p"
        for i, f in enumerate(ramp(5, 48, 64)):
            vf = av.VideoFrame.from_ndarray(f, format="rgb24")
            vf.pts = i
            for p in s.encode(vf):
                c.mux(p)
        for p in s.encode(None):
            c.mux(p)
    info = probe_video(path)
    assert (info.width, info.height, info.fps) == (64, 48, Fraction(25))
    assert len(list(read_frames(path))) == 5


def test_missing_file(tmp_path):
    with pytest.raises(InputError, match="no such file"):
        probe_video(tmp_path / "nope.mp4")
    with pytest.raises(InputError, match="no such file"):
        read_frames(tmp_path / "nope.mp4")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.mp4"
    path.touch()
    with pytest.raises(InputError, match="empty"):
        probe_video(path)
    with pytest.raises(InputError, match="empty"):
        read_frames(path)


@pytest.mark.parametrize("name", ["notes.txt", "notes.mp4"])
def test_text_file(tmp_path, name):
    # FFmpeg would render a .txt file as ANSI-art video; that is not a video either.
    path = tmp_path / name
    path.write_text("hello, this is not a video\n" * 50)
    with pytest.raises(InputError):
        probe_video(path)
    with pytest.raises(InputError):
        read_frames(path)


@pytest.mark.parametrize("name", ["noise.bin", "noise.mp4", "noise.mkv"])
def test_random_bytes(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(np.random.default_rng(1).bytes(5000))
    with pytest.raises(InputError, match="not a readable video"):
        probe_video(path)


def test_no_video_stream(tmp_path):
    path = tmp_path / "sound.wav"
    with av.open(str(path), "w") as c:
        s = c.add_stream("pcm_s16le", rate=8000, layout="mono")
        frame = av.AudioFrame.from_ndarray(
            np.zeros((1, 800), np.int16), format="s16", layout="mono"
        )
        frame.sample_rate, frame.pts = 8000, 0
        for p in [*s.encode(frame), *s.encode(None)]:
            c.mux(p)
    with pytest.raises(InputError, match="no video stream"):
        probe_video(path)


def test_no_frames(tmp_path):
    # A video stream whose packets decode to nothing.
    path = tmp_path / "hollow.mkv"
    with av.open(str(path), "w") as c:
        s = c.add_stream("h264", rate=25)
        s.width, s.height, s.pix_fmt = 64, 64, "yuv420p"
        for i in range(3):
            p = av.Packet(bytes(range(200)))
            p.stream, p.pts, p.dts, p.time_base = s, i, i, Fraction(1, 25)
            c.mux(p)
    with pytest.raises(InputError, match="no frames"):
        probe_video(path)
    with pytest.raises(InputError, match="no frames"):
        read_frames(path)


def test_unsupported_extension(tmp_path):
    with pytest.raises(OutputError, match=r"\.mp4, \.mov, \.mkv"):
        VideoWriter(tmp_path / "clip.avi", Fraction(25), 64, 64)
    assert leftovers(tmp_path) == []


def test_bad_writer_arguments(tmp_path):
    with pytest.raises(ValueError, match="even"):
        VideoWriter(tmp_path / "clip.mp4", Fraction(25), 65, 64)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "clip.mkv", Fraction(0), 64, 64)
    with pytest.raises(ValueError):
        VideoWriter(tmp_path / "clip.mkv", 29.97, 64, 64)
    assert leftovers(tmp_path) == []


def test_odd_size_mkv(tmp_path):
    frames = ramp(2, 63, 65)
    write(tmp_path / "odd.mkv", frames)
    np.testing.assert_array_equal(next(read_frames(tmp_path / "odd.mkv")), frames[0])


def test_wrong_frame_shape(tmp_path):
    with VideoWriter(tmp_path / "clip.mkv", Fraction(25), 64, 64) as w:
        w.write(ramp(1)[0])
        with pytest.raises(ValueError, match="shape"):
            w.write(np.zeros((64, 66, 3), np.uint8))
    assert leftovers(tmp_path) == ["clip.mkv"]


@pytest.mark.parametrize("ext", ["mp4", "mkv"])
def test_no_partial_file_when_body_raises(tmp_path, ext):
    path = tmp_path / f"clip.{ext}"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(path, Fraction(25), 64, 64) as w:
            w.write(ramp(1)[0])
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []


def test_file_appears_only_on_close(tmp_path):
    path = tmp_path / "clip.mp4"
    w = VideoWriter(path, Fraction(25), 64, 64)
    w.write(ramp(1)[0])
    assert not path.exists()
    w.close()
    w.close()  # idempotent
    assert leftovers(tmp_path) == ["clip.mp4"]
    with pytest.raises(ValueError, match="closed"):
        w.write(ramp(1)[0])


def test_no_frames_written(tmp_path):
    with pytest.raises(OutputError, match="no frames"):
        with VideoWriter(tmp_path / "clip.mp4", Fraction(25), 64, 64):
            pass
    assert leftovers(tmp_path) == []


def test_unwritable_path(tmp_path):
    with pytest.raises(OutputError, match="does not exist"):
        VideoWriter(tmp_path / "no" / "such" / "clip.mp4", Fraction(25), 64, 64)
    (tmp_path / "taken.mkv").mkdir()
    with pytest.raises(OutputError, match="directory"):
        VideoWriter(tmp_path / "taken.mkv", Fraction(25), 64, 64)
    assert leftovers(tmp_path) == ["taken.mkv"]


def test_background_writer_writes_what_the_plain_one_does(tmp_path):
    frames = ramp(6)
    write(tmp_path / "plain.mkv", frames)
    buffer = np.empty_like(frames[0])
    with BackgroundVideoWriter(tmp_path / "bg.mkv", Fraction(25), 64, 64) as w:
        for f in frames:
            buffer[:] = f  # one reused buffer: the writer must have copied each frame
            w.write(buffer)
        with pytest.raises(ValueError, match="shape"):
            w.write(np.zeros((64, 66, 3), np.uint8))  # checked at once, not on the thread
    assert w.path == tmp_path / "bg.mkv"
    for a, b in zip(
        read_frames(tmp_path / "plain.mkv"), read_frames(tmp_path / "bg.mkv"), strict=True
    ):
        np.testing.assert_array_equal(a, b)


def test_background_writer_error_reaches_the_caller_and_leaves_no_file(tmp_path, monkeypatch):
    def broken(self, frame):
        raise OutputError("cannot write: disk full")

    w = BackgroundVideoWriter(tmp_path / "clip.mp4", Fraction(25), 64, 64)
    monkeypatch.setattr(VideoWriter, "write", broken)
    w.write(ramp(1)[0])
    with pytest.raises(OutputError, match="disk full"):
        w.close()
    assert leftovers(tmp_path) == []


def test_background_writer_leaves_no_file_when_body_raises(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with BackgroundVideoWriter(tmp_path / "clip.mp4", Fraction(25), 64, 64) as w:
            w.write(ramp(1)[0])
            raise RuntimeError("boom")
    assert leftovers(tmp_path) == []
