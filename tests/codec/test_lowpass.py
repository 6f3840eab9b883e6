"""The low-pass residual: sender and receiver hold the same residual, it brings a frame's
coarse shading back, and a damaged update is an error, not a crash."""

import numpy as np
import pytest

from codec import lowpass
from codec.bitstream import AgcReader, PacketKind
from codec.decoder import Decoder
from codec.errors import BitstreamError

SIZE = 64


def _frames(seed=0):
    """An 'original' and a 'rendered' frame that differs from it by a smooth shading."""
    rng = np.random.default_rng(seed)
    original = rng.integers(40, 216, (SIZE, SIZE, 3)).astype(np.uint8)
    yy, xx = np.mgrid[0:SIZE, 0:SIZE] / SIZE
    shading = 30 * np.sin(3 * xx + 2 * yy)[..., None] * np.array([1.0, 0.8, 0.6])
    rendered = np.clip(original + shading, 0, 255).astype(np.uint8)
    return original, rendered


def _lowpass_error(a, b):
    ya, _ = lowpass.downsample(a)
    yb, _ = lowpass.downsample(b)
    return float(np.abs(ya - yb).mean())


def test_tables_are_symmetric_distributions_sharpest_first():
    t = lowpass.TABLES
    assert t.shape == (16, 2 * lowpass.MAX_SYMBOL + 1)
    np.testing.assert_allclose(t.sum(1), 1.0)
    np.testing.assert_array_equal(t, t[:, ::-1])
    centre = t[:, lowpass.MAX_SYMBOL]
    assert np.all(np.diff(centre) < 0)


def test_sender_and_receiver_hold_the_same_residual():
    original, rendered = _frames()
    sender, receiver = lowpass.LowpassResidual(SIZE), lowpass.LowpassResidual(SIZE)
    for step in range(3):  # updates build on each other
        moved = np.roll(rendered, step, axis=1)
        payload = sender.encode(original, moved)
        receiver.decode(payload, pts=step)
        np.testing.assert_array_equal(sender.luma, receiver.luma)
        np.testing.assert_array_equal(sender.chroma, receiver.chroma)
        np.testing.assert_array_equal(sender.apply(moved), receiver.apply(moved))


def test_the_residual_puts_the_shading_back():
    original, rendered = _frames()
    res = lowpass.LowpassResidual(SIZE)
    assert not res.active and res.apply(rendered) is rendered  # nothing before an update
    payload = res.encode(original, rendered)
    assert res.active and len(payload) < 200
    before = _lowpass_error(original, rendered)
    assert _lowpass_error(original, res.apply(rendered)) < 0.3 * before
    res.reset()
    assert res.apply(rendered) is rendered


def test_a_proposal_changes_nothing_until_committed():
    original, rendered = _frames()
    res = lowpass.LowpassResidual(SIZE)
    update = res.propose(original, rendered)
    assert not res.active and update.gain_db > 3  # the shading is most of the error
    again = res.propose(original, rendered)
    assert again.payload == update.payload
    res.commit(update)
    np.testing.assert_array_equal(res.luma, update.luma)
    # Once held, the same frame asks for (nearly) nothing more and gains (nearly) nothing.
    after = res.propose(original, rendered)
    assert after is None or after.gain_db < 0.5


def test_no_change_sends_nothing():
    original, _ = _frames()
    res = lowpass.LowpassResidual(SIZE)
    assert res.encode(original, original) is None and not res.active


@pytest.mark.parametrize(
    "payload",
    [b"", b"\x0c", b"\x00\x08\x00\x01\x02\x03\x04", b"\x0c\x08\x00\x01\x02\x03"],
)
def test_malformed_payloads_are_bitstream_errors(payload):
    with pytest.raises(BitstreamError, match="LOWPASS"):
        lowpass.LowpassResidual(SIZE).decode(payload, pts=7)


def test_garbage_words_decode_to_some_residual_without_crashing():
    rng = np.random.default_rng(1)
    res = lowpass.LowpassResidual(SIZE)
    res.decode(b"\x0c\x08\x35" + rng.integers(0, 256, 40, np.uint8).tobytes(), pts=1)
    out = res.apply(np.full((SIZE, SIZE, 3), 128, np.uint8))
    assert out.dtype == np.uint8 and out.shape == (SIZE, SIZE, 3)


def _encode(clip, interval, tmp_path, min_gain=0.0):
    """The example's first 20 frames; min_gain 0: every update that changes something."""
    from codec.cli import main

    out = tmp_path / f"lp{interval}_{min_gain}.agc"
    argv = ["encode", str(clip), str(out), "-q", "--model", "warp", "--max-frames", "20"]
    lowpass = ["--lowpass-interval", str(interval), "--lowpass-min-gain", str(min_gain)]
    assert main([*argv, *lowpass]) == 0
    with open(out, "rb") as f:
        reader = AgcReader(f)
        return reader.header, list(reader)


def test_stream_carries_updates_before_their_frames(example_clip, tmp_path):
    header, packets = _encode(example_clip, 4, tmp_path)
    kinds = [(p.kind, p.pts) for p in packets]
    updates = [pts for kind, pts in kinds if kind == PacketKind.LOWPASS]
    assert updates and all(pts % 4 == 0 for pts in updates)  # one key frame at 0
    for pts in updates:  # each update comes just before the motion packet its frame starts
        i = kinds.index((PacketKind.LOWPASS, pts))
        assert kinds[i + 1] in [(PacketKind.MOTION, pts), (PacketKind.MOTION_GROUP, pts)]
    _, plain = _encode(example_clip, 0, tmp_path)
    assert PacketKind.LOWPASS not in [p.kind for p in plain]
    # The same motion either way: a receiver that skips LOWPASS (an older one) still
    # decodes every frame, only without the correction.
    assert [p.payload for p in packets if p.kind == PacketKind.MOTION] == [
        p.payload for p in plain if p.kind == PacketKind.MOTION
    ]
    old = Decoder(header, "warp")
    frames = [f for p in packets if p.kind != PacketKind.LOWPASS for f in old.decode(p)]
    assert len(frames) == 20


def test_update_frames_come_closer_to_the_source(example_clip, tmp_path):
    """At the frames an update is made for, the decode is closer to the source. (Between
    updates a held residual can miss a fast-moving part: the example's head moves faster
    than a talking head, so only the update frames are asserted here.)"""
    from codec.video import probe_video, read_frames
    from encoder.pipeline import FacePipeline, face_frames

    info = probe_video(example_clip)
    pipeline = FacePipeline(float(info.fps), info.width, info.height)
    crops = [f.crop() for f in face_frames(read_frames(example_clip, 20), pipeline)]

    def errors(interval):
        header, packets = _encode(example_clip, interval, tmp_path)
        dec = Decoder(header, "warp")
        frames = [f for p in packets for f in dec.decode(p)]
        mse = [np.mean((a.astype(float) - b) ** 2) for a, b in zip(crops, frames, strict=True)]
        return np.array(mse), [p.pts for p in packets if p.kind == PacketKind.LOWPASS]

    with_updates, updated = errors(4)
    without, _ = errors(0)
    assert len(updated) >= 3
    assert np.all(with_updates[updated] <= without[updated])
    assert with_updates[updated].sum() < 0.85 * without[updated].sum()


def test_the_sender_sends_only_updates_worth_their_bits(example_clip, tmp_path):
    every = [p for p in _encode(example_clip, 4, tmp_path)[1] if p.kind == PacketKind.LOWPASS]
    gated = [p for p in _encode(example_clip, 4, tmp_path, 2.0)[1] if p.kind == PacketKind.LOWPASS]
    none = [p for p in _encode(example_clip, 4, tmp_path, 100)[1] if p.kind == PacketKind.LOWPASS]
    assert len(every) >= 3 and len(gated) < len(every) and not none


def test_an_update_out_of_place_asks_for_a_key_frame(example_clip, tmp_path):
    header, packets = _encode(example_clip, 4, tmp_path)
    dec = Decoder(header, "warp")
    # An update after the segment's first motion packet (a searched key frame's segment
    # may start with one, at the REFERENCE's own pts).
    i = next(n for n, p in enumerate(packets) if p.kind == PacketKind.LOWPASS and n > 2)
    for p in packets[: i - 1]:
        dec.decode(p)
    with pytest.raises(BitstreamError, match="LOWPASS for frame"):
        dec.decode(packets[i])  # the frame before it never arrived
    assert dec.needs_keyframe
