"""Closed-loop key-frame refresh (`encode --refresh-drop`): the sender renders the frame as
the receiver shows it and sends a new key frame once its quality has fallen too far."""

from fractions import Fraction

import numpy as np
import pytest

from codec.bitstream import KEY_KINDS, AgcReader, PacketKind
from codec.commands import decode_file, encode_file
from codec.video import VideoWriter, read_frames

CHANGE = 30  # the frame from which the scene is much brighter


@pytest.fixture(scope="module")
def brightening_clip(tmp_path_factory):
    """The example (3 s) with its light turned up from frame CHANGE on: the key frame's
    render cannot follow, so the shown frames' PSNR falls by far more than 6 dB."""
    from codec.example import write_example_clip

    folder = tmp_path_factory.mktemp("refresh")
    write_example_clip(folder / "example.mp4", seconds=3, fps=25)
    path = folder / "bright.mkv"
    frames = list(read_frames(folder / "example.mp4"))
    h, w = frames[0].shape[:2]
    with VideoWriter(path, Fraction(25), w, h) as out:
        for i, frame in enumerate(frames):
            lit = frame.astype(np.int16) + (70 if i >= CHANGE else 0)
            out.write(np.clip(lit, 0, 255).astype(np.uint8))
    return path


def _key_frames(path) -> list[int]:
    with open(path, "rb") as f:
        return [p.pts for p in AgcReader(f) if p.kind in KEY_KINDS]  # where segments start


def test_a_quality_drop_brings_a_new_key_frame(brightening_clip, tmp_path):
    options = dict(model="warp", key_search=0)  # each segment's first frame is its key
    plain = encode_file(brightening_clip, tmp_path / "plain.agc", **options)
    assert plain.refreshes == 0 and _key_frames(tmp_path / "plain.agc") == [0]
    stats = encode_file(brightening_clip, tmp_path / "r.agc", refresh_drop_db=6, **options)
    keys = _key_frames(tmp_path / "r.agc")
    # Checked every 5th frame: the first check on a lit frame asks, the next frame is key.
    assert keys == [0, CHANGE + 1] and stats.refreshes == 1
    assert "1 quality refreshes" in stats.summary()
    decoded = tmp_path / "r.mkv"
    assert decode_file(tmp_path / "r.agc", decoded, backend="warp").frames == stats.frames
    shown = list(read_frames(decoded))
    lit = list(read_frames(brightening_clip))
    assert shown[-1].mean() > lit[0].mean() + 40  # the refreshed key frame is the lit scene


def test_no_refresh_before_the_minimum_gap(brightening_clip, tmp_path):
    """A drop before the minimum gap has passed waits for it."""
    from encoder.encoder import Encoder, EncoderConfig

    config = EncoderConfig(model_id="warp", refresh_drop_db=6, refresh_min_gap=45)
    frames = list(read_frames(brightening_clip))
    enc = Encoder(config, Fraction(25), frames[0].shape[1], frames[0].shape[0])
    packets = [p for f in frames for p in enc.encode(f)] + enc.flush()
    keys = [p.pts for p in packets if p.kind == PacketKind.KEYFRAME]
    assert keys == [0, 46] and enc.refreshes == 1  # the check at frame 45, the key at 46


def test_a_refresh_inside_the_held_frames_starts_a_searched_segment(
    brightening_clip, tmp_path, monkeypatch
):
    """With key-frame search the frames wait while the key is chosen; a refresh asked for
    while they are coded starts a new segment with the frames left, its key searched too."""
    import encoder.encoder as encoder_module

    # The first segment keeps its first (dark) frame; the next takes its middle frame.
    monkeypatch.setattr(
        encoder_module, "choose_key", lambda faces: 0 if faces[0].index == 0 else len(faces) // 2
    )
    stats = encode_file(brightening_clip, tmp_path / "s.agc", model="warp", refresh_drop_db=6)
    with open(tmp_path / "s.agc", "rb") as f:
        starts = [(p.kind, p.pts) for p in AgcReader(f) if p.kind in KEY_KINDS]
    assert starts == [(PacketKind.KEYFRAME, 0), (PacketKind.REFERENCE, CHANGE + 1)]
    assert stats.refreshes == 1 and stats.frames == 75
    decoded = tmp_path / "s.mkv"
    assert decode_file(tmp_path / "s.agc", decoded, backend="warp").frames == 75
    shown = list(read_frames(decoded))
    lit = list(read_frames(brightening_clip))
    assert shown[CHANGE + 1].mean() > lit[0].mean() + 40  # rendered from the lit reference
