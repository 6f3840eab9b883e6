"""The x264/x265 anchors: low delay, constant QP, and a rate without the encoders' info SEI."""

from fractions import Fraction

import numpy as np
import pytest

from codec.errors import GraceError, InputError
from codec.evaluation import metrics
from codec.evaluation.anchors import encode_anchor, strip_info_sei

N = 12


@pytest.fixture(scope="module")
def clip() -> list[np.ndarray]:
    """Moving colour gradients, 128x128, with a scene cut in the middle."""
    yy, xx = np.mgrid[:128, :128]
    frames = [
        np.stack([(xx + 3 * t) % 256, (yy + 2 * t) % 256, (xx + yy + t) % 256], -1).astype(np.uint8)
        for t in range(N)
    ]
    frames[N // 2] = 255 - frames[N // 2]
    return frames


def nal_units(stream: bytes, codec: str) -> list[tuple[int, bytes]]:
    """(NAL type, NAL bytes after the start code) of an Annex B stream."""
    starts = []
    i = stream.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append(i + 3)
        i = stream.find(b"\x00\x00\x01", i + 3)
    units = []
    for k, s in enumerate(starts):
        nal = stream[s : starts[k + 1] - 3 if k + 1 < len(starts) else len(stream)]
        units.append((nal[0] & 0x1F if codec == "x264" else (nal[0] >> 1) & 0x3F, nal))
    return units


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_counted_bytes_hold_no_info_sei_and_still_decode(clip, codec):
    r = encode_anchor(clip, codec, qp=40, fps=Fraction(25))
    stream = b"".join(r.packets)
    sei_types = {6} if codec == "x264" else {39, 40}
    types = [t for t, _ in nal_units(stream, codec)]
    assert not sei_types & set(types), f"SEI NAL units left in the counted bytes: {types}"
    assert b"x264 - core" not in stream and b"x265 (build" not in stream
    assert b"options:" not in stream
    if codec == "x264":
        # x264 always writes its ~700-byte option SEI: it was cut out and reported.
        assert 300 < r.sei_bytes_removed < 1500
    else:
        assert r.sei_bytes_removed == 0  # info=0: x265 never wrote it
    # What is counted is what was decoded: one frame per input frame, of sane quality.
    assert r.coded_bytes == len(stream)
    assert len(r.frames) == N
    assert all(f.shape == (128, 128, 3) and f.dtype == np.uint8 for f in r.frames)
    assert np.mean([metrics.psnr(a, b) for a, b in zip(clip, r.frames, strict=True)]) > 25
    assert r.kbps(25) == pytest.approx(r.coded_bytes * 8 * 25 / N / 1000)


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_low_delay_one_intra_frame_despite_a_scene_cut(clip, codec):
    r = encode_anchor(clip, codec, qp=45)
    assert r.keyframes == 1
    slices = {"x264": {1, 5}, "x265": set(range(0, 22))}[codec]
    assert sum(t in slices for t, _ in nal_units(b"".join(r.packets), codec)) == N


@pytest.mark.parametrize("codec", ["x264", "x265"])
def test_higher_qp_fewer_bits(clip, codec):
    sizes = [encode_anchor(clip, codec, qp).coded_bytes for qp in (37, 44, 51)]
    assert sizes[0] > sizes[1] > sizes[2]


def emulation_prevent(rbsp: bytes) -> bytes:
    """Inserts 0x03 after two zero bytes followed by 0x00..0x03 (H.264 7.4.1)."""
    out, zeros = bytearray(), 0
    for x in rbsp:
        if zeros >= 2 and x <= 3:
            out.append(3)
            zeros = 0
        out.append(x)
        zeros = zeros + 1 if x == 0 else 0
    return bytes(out)


def test_strip_keeps_other_sei_and_handles_emulation_prevention():
    sps = b"\x00\x00\x00\x01\x67\x64\x00\x0d"
    # user_data_unregistered, 20 bytes, whose payload holds an emulation-prevention byte.
    body = bytes(16) + b"ab"
    escaped = emulation_prevent(body)
    assert len(escaped) > len(body)
    user_data = b"\x00\x00\x01\x06\x05" + bytes([len(body)]) + escaped + b"\x80"
    pic_timing = b"\x00\x00\x01\x06\x01\x02\xaa\xbb\x80"
    mixed = b"\x00\x00\x01\x06\x05\x01\xcc\x01\x01\xdd\x80"  # user data AND pic timing
    idr = b"\x00\x00\x00\x01\x65\x88\x84"
    data = sps + user_data + pic_timing + mixed + idr
    out, removed = strip_info_sei(data, "x264")
    assert removed == len(user_data)
    assert out == sps + pic_timing + mixed + idr


def test_strip_refuses_a_non_annex_b_packet():
    with pytest.raises(GraceError, match="Annex B"):
        strip_info_sei(b"\x12\x34\x56", "x264")


def test_unknown_anchor_and_empty_clip():
    with pytest.raises(InputError):
        encode_anchor([np.zeros((64, 64, 3), np.uint8)], "vp9", 40)
    with pytest.raises(InputError):
        encode_anchor([], "x264", 40)
