"""codec.bitstream: the .agc container (docs/bitstream.md is the normative spec)."""

from __future__ import annotations

import io
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from codec import binary
from codec.bitstream import (
    MAGIC,
    MAX_DIMENSION,
    MAX_FPS_TERM,
    MAX_GROUP_FRAMES,
    MAX_HEADER_BYTES,
    MAX_ID_BYTES,
    MAX_PAYLOAD_BYTES,
    MAX_PTS,
    READABLE_MAJORS,
    VERSION_MAJOR,
    VERSION_MINOR,
    AgcReader,
    AgcWriter,
    Header,
    LandmarkScheme,
    Packet,
    PacketKind,
    group_motion,
    motion_chunks,
    read_packet,
)
from codec.errors import BitstreamError, GraceError, TruncatedError, UnsupportedVersionError

FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

HEADER = Header(
    width=64,
    height=48,
    fps=Fraction(25),
    model_id="grace-s",
    model_digest=bytes.fromhex("a1b2c3d4"),
    motion_params=b"\x05",
    frame_count=2,
)
PACKETS = [
    Packet(PacketKind.KEYFRAME, 0, b"key"),
    Packet(PacketKind.MOTION, 1, b"\x12\x34"),
]

# HEADER + PACKETS + END, as written by AgcWriter. Changing these bytes changes the format:
# bump the version and update docs/bitstream.md (its worked example is this stream).
GOLDEN_HEX = (
    "4147431a" "03" "00" "17"  # magic "AGC\x1a", version 3.0, header length 23
    "4000" "3000" "19" "01" "02"  # width 64, height 48, fps 25/1, frame_count 2
    "07" "67726163652d73"  # model_id "grace-s"
    "04" "a1b2c3d4"  # model_digest
    "01"  # landmark scheme IBUG68
    "01" "05"  # motion_params
    "9ec8edf1"  # header CRC-32
    "01" "00" "03" "6b6579" "53affa1d"  # KEYFRAME pts 0 b"key"
    "02" "01" "02" "1234" "10939a5e"  # MOTION pts 1 b"\x12\x34"
    "03" "00" "01" "02" "9f20e4c4"  # END pts 0, count 2
)  # fmt: skip


def write_stream(header: Header, packets: list[Packet]) -> bytes:
    buf = io.BytesIO()
    writer = AgcWriter(buf, header)
    for p in packets:
        writer.write(p)
    writer.close()
    assert writer.bytes_written == len(buf.getvalue())
    assert writer.packets_written == len(packets)
    return buf.getvalue()


def read_stream(data: bytes) -> tuple[Header, list[Packet]]:
    reader = AgcReader(io.BytesIO(data))
    return reader.header, list(reader)


def consume(data: bytes) -> None:
    """Reads a whole stream, swallowing only GraceError: anything else fails the test."""
    try:
        read_stream(data)
    except GraceError:
        pass


def header_bytes(body: bytes, major: int = VERSION_MAJOR, minor: int = VERSION_MINOR) -> bytes:
    """A stream prefix with a hand-made header body (length and CRC computed here)."""
    return (
        MAGIC
        + binary.u8(major)
        + binary.u8(minor)
        + binary.length_prefixed(body)
        + binary.u32(binary.crc32(body))
    )


def header_body(header: Header) -> bytes:
    data = header.to_bytes()
    r = binary.ByteReader(data[len(MAGIC) + 2 :])
    return r.length_prefixed(MAX_HEADER_BYTES)


GOLDEN = bytes.fromhex(GOLDEN_HEX)
GOLDEN_HEADER_LEN = len(HEADER.to_bytes())


# --- golden bytes ------------------------------------------------------------------------


def test_golden_bytes() -> None:
    assert write_stream(HEADER, PACKETS) == GOLDEN
    assert read_stream(GOLDEN) == (HEADER, PACKETS)


def test_golden_header_crc_covers_body_only() -> None:
    body = header_body(HEADER)
    assert len(body) == 0x17
    assert GOLDEN[: GOLDEN_HEADER_LEN - 4] == MAGIC + b"\x03\x00\x17" + body
    assert GOLDEN[GOLDEN_HEADER_LEN - 4 : GOLDEN_HEADER_LEN] == binary.u32(binary.crc32(body))


def test_golden_packet_crc_covers_kind_pts_length_payload() -> None:
    data = Packet(PacketKind.KEYFRAME, 0, b"key").to_bytes()
    assert data[:-4] == b"\x01\x00\x03key"
    assert data[-4:] == binary.u32(binary.crc32(data[:-4]))


# --- round trips -------------------------------------------------------------------------

fps_st = st.one_of(
    st.sampled_from([Fraction(25), Fraction(30), Fraction(30000, 1001), Fraction(24000, 1001)]),
    st.builds(Fraction, st.integers(1, MAX_FPS_TERM), st.integers(1, MAX_FPS_TERM)),
)
header_st = st.builds(
    Header,
    width=st.integers(1, MAX_DIMENSION),
    height=st.integers(1, MAX_DIMENSION),
    fps=fps_st,
    model_id=st.one_of(
        st.sampled_from(["grace-s", "", "modèle-ü", "顔-コーデック", "🙂"]),
        st.text(max_size=MAX_ID_BYTES // 4),  # at most 4 UTF-8 bytes a character
    ),
    model_digest=st.binary(max_size=MAX_ID_BYTES),
    landmark_scheme=st.just(LandmarkScheme.IBUG68),
    motion_params=st.binary(max_size=512),
    frame_count=st.integers(0, MAX_PTS),
)
packet_st = st.builds(
    Packet,
    kind=st.sampled_from([PacketKind.KEYFRAME, PacketKind.MOTION, 200]),
    pts=st.integers(0, MAX_PTS),
    payload=st.one_of(st.just(b""), st.binary(max_size=64), st.binary(max_size=4096)),
)


@given(header_st)
def test_header_round_trip(header: Header) -> None:
    data = header.to_bytes()
    assert data[:6] == MAGIC + bytes([VERSION_MAJOR, VERSION_MINOR])
    stream = io.BytesIO(data)
    assert Header.read(stream) == header
    assert stream.read() == b""  # reads exactly its own bytes


@settings(deadline=None, max_examples=60)
@given(header_st, st.lists(packet_st, max_size=8))
def test_stream_round_trip(header: Header, packets: list[Packet]) -> None:
    got_header, got = read_stream(write_stream(header, packets))
    assert got_header == header
    assert got == packets  # unknown kinds (200) pass through to the caller


@given(packet_st)
def test_packet_from_bytes_round_trip(packet: Packet) -> None:
    assert Packet.from_bytes(packet.to_bytes()) == packet


def test_packet_from_bytes_rejects_empty_and_trailing() -> None:
    with pytest.raises(TruncatedError):
        Packet.from_bytes(b"")
    with pytest.raises(BitstreamError, match="trailing"):
        Packet.from_bytes(PACKETS[0].to_bytes() + b"\x00")


def test_read_packet_clean_end_returns_none() -> None:
    stream = io.BytesIO(PACKETS[1].to_bytes())
    assert read_packet(stream) == PACKETS[1]
    assert read_packet(stream) is None


def test_empty_stream_round_trip() -> None:
    assert read_stream(write_stream(HEADER, [])) == (HEADER, [])


def test_max_payload_round_trip() -> None:
    p = Packet(PacketKind.KEYFRAME, MAX_PTS, bytes(MAX_PAYLOAD_BYTES))
    assert read_stream(write_stream(HEADER, [p]))[1] == [p]


def test_writer_rejects_out_of_range_values() -> None:
    with pytest.raises(ValueError):
        Header(0, 48, Fraction(25), "m").to_bytes()
    with pytest.raises(ValueError):
        Header(64, MAX_DIMENSION + 1, Fraction(25), "m").to_bytes()
    with pytest.raises(ValueError):
        Header(64, 48, Fraction(25), "é" * 33).to_bytes()  # 66 UTF-8 bytes
    with pytest.raises(ValueError):
        Header(64, 48, Fraction(25), "m", model_digest=bytes(MAX_ID_BYTES + 1)).to_bytes()
    with pytest.raises(ValueError):
        Packet(PacketKind.MOTION, MAX_PTS + 1, b"").to_bytes()
    with pytest.raises(ValueError):
        Packet(PacketKind.MOTION, -1, b"").to_bytes()
    with pytest.raises(ValueError):
        Packet(PacketKind.MOTION, 0, bytes(MAX_PAYLOAD_BYTES + 1)).to_bytes()


@pytest.mark.parametrize(
    "make",
    [
        lambda: Header(64, 48, Fraction(MAX_FPS_TERM + 1), "m").to_bytes(),
        lambda: Header(64, 48, Fraction(1, MAX_FPS_TERM + 1), "m").to_bytes(),
        lambda: Header(64, 48, Fraction(0), "m").to_bytes(),
        lambda: Header(64, 48, Fraction(25), "m", frame_count=MAX_PTS + 1).to_bytes(),
        lambda: Header(64, 48, Fraction(25), "m", motion_params=bytes(MAX_HEADER_BYTES)).to_bytes(),
        lambda: Packet(256, 0, b"").to_bytes(),
    ],
    ids=["fps-num", "fps-den", "fps-zero", "frame-count", "motion-params", "kind"],
)
def test_writer_never_emits_what_the_reader_refuses(make) -> None:
    with pytest.raises(ValueError):
        make()


# --- fuzzing: only GraceError, never a crash -----------------------------------------------


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_raise_only_grace_errors(data: bytes) -> None:
    consume(data)


@FUZZ
@given(st.integers(0, 255), st.binary(max_size=200))
def test_random_bytes_after_magic_and_version(minor: int, tail: bytes) -> None:
    consume(MAGIC + bytes([VERSION_MAJOR, minor]) + tail)


@FUZZ
@given(st.binary(max_size=200))
def test_random_bytes_after_valid_header(tail: bytes) -> None:
    consume(HEADER.to_bytes() + tail)


@FUZZ
@given(st.binary(min_size=1, max_size=60))
def test_random_header_body_with_valid_crc(body: bytes) -> None:
    consume(header_bytes(body) + GOLDEN[GOLDEN_HEADER_LEN:])


@FUZZ
@given(st.lists(st.tuples(st.integers(0, len(GOLDEN) - 1), st.integers(0, 255)), max_size=6))
def test_mutated_golden_stream(edits: list[tuple[int, int]]) -> None:
    data = bytearray(GOLDEN)
    for pos, value in edits:
        data[pos] = value
    consume(bytes(data))


# --- truncation and damage -------------------------------------------------------------------


def test_every_truncation_raises_truncated_error() -> None:
    data = write_stream(
        HEADER,
        [
            Packet(PacketKind.KEYFRAME, 0, bytes(range(200))),  # two-byte length varint
            Packet(PacketKind.MOTION, 1, b""),
            Packet(200, 300, b"future"),  # two-byte pts varint
            Packet(PacketKind.MOTION, 2, b"\x01\x02\x03"),
        ],
    )
    for n in range(len(data)):
        with pytest.raises(TruncatedError):
            read_stream(data[:n])


def test_every_bit_flip_in_packets_is_detected() -> None:
    for bit in range(GOLDEN_HEADER_LEN * 8, len(GOLDEN) * 8):
        data = bytearray(GOLDEN)
        data[bit // 8] ^= 1 << (bit % 8)
        with pytest.raises(BitstreamError):
            read_stream(bytes(data))


def test_every_bit_flip_in_header_except_the_version_is_detected() -> None:
    # The version bytes are not covered by any CRC: a reader accepts every minor, and the
    # older majors it reads (a flip of 3 to 2 or 1).
    major_byte, minor_byte = len(MAGIC), len(MAGIC) + 1
    for bit in range(GOLDEN_HEADER_LEN * 8):
        data = bytearray(GOLDEN)
        data[bit // 8] ^= 1 << (bit % 8)
        readable_major = bit // 8 == major_byte and data[major_byte] in READABLE_MAJORS
        if bit // 8 == minor_byte or readable_major:
            assert read_stream(bytes(data)) == (HEADER, PACKETS)
        else:
            with pytest.raises(BitstreamError):
                read_stream(bytes(data))


def test_packet_crc_mismatch_message() -> None:
    data = bytearray(PACKETS[1].to_bytes())
    data[-5] ^= 0xFF  # last payload byte
    with pytest.raises(BitstreamError, match="pts 1: CRC mismatch"):
        read_packet(io.BytesIO(bytes(data)))


def test_header_crc_mismatch() -> None:
    data = bytearray(GOLDEN)
    data[7] ^= 0x01  # inside the width
    with pytest.raises(BitstreamError, match="header CRC mismatch"):
        read_stream(bytes(data))


# --- magic and versions ---------------------------------------------------------------------


@pytest.mark.parametrize("magic", [b"AGC\x00", b"RIFF", b"\x00\x00\x00\x00", b"agc\x1a"])
def test_wrong_magic(magic: bytes) -> None:
    with pytest.raises(BitstreamError, match="magic") as exc:
        read_stream(magic + GOLDEN[4:])
    assert not isinstance(exc.value, TruncatedError)


@pytest.mark.parametrize("major", [0, 4, 255])
def test_other_major_version_refused(major: int) -> None:
    data = bytearray(GOLDEN)
    data[4] = major
    with pytest.raises(UnsupportedVersionError, match=f"version {major}.0 is not supported"):
        read_stream(bytes(data))


@pytest.mark.parametrize("version", [b"\x01\x01", b"\x02\x00"])
def test_older_majors_still_read(version: bytes) -> None:
    """2.0 only added MOTION_GROUP, 3.0 REFERENCE: a 1.1 or 2.0 file reads as it did."""
    data = bytearray(GOLDEN)
    data[4:6] = version  # the version bytes are outside the header CRC
    assert read_stream(bytes(data)) == (HEADER, PACKETS)


def test_minor_version_bump_with_trailing_header_fields_reads() -> None:
    body = header_body(HEADER) + b"\x07new-field\x00\x01"
    data = header_bytes(body, minor=VERSION_MINOR + 1) + GOLDEN[GOLDEN_HEADER_LEN:]
    assert read_stream(data) == (HEADER, PACKETS)


def test_new_packet_kinds_pass_through() -> None:
    packets = [PACKETS[0], Packet(4, 1, b"side data"), Packet(0, 1, b""), PACKETS[1]]
    assert read_stream(write_stream(HEADER, packets))[1] == packets


# --- header field checks ---------------------------------------------------------------------


def _body(**over: bytes) -> bytes:
    fields = {
        "size": binary.u16(64) + binary.u16(48),
        "fps": binary.varint(25) + binary.varint(1),
        "frame_count": binary.varint(0),
        "model_id": binary.length_prefixed(b"m"),
        "digest": binary.length_prefixed(b""),
        "scheme": binary.u8(1),
        "motion": binary.length_prefixed(b""),
    }
    fields.update(over)
    return b"".join(fields.values())


END = Packet(PacketKind.END, 0, binary.varint(0)).to_bytes()


def test_hand_made_header_body_reads() -> None:
    header, packets = read_stream(header_bytes(_body()) + END)
    assert header == Header(64, 48, Fraction(25), "m")
    assert packets == []


def test_header_fps_reduced_on_read() -> None:
    body = _body(fps=binary.varint(60000) + binary.varint(2002))
    assert read_stream(header_bytes(body) + END)[0].fps == Fraction(30000, 1001)


@pytest.mark.parametrize(
    ("over", "match"),
    [
        ({"size": binary.u16(0) + binary.u16(48)}, "frame size"),
        ({"size": binary.u16(64) + binary.u16(MAX_DIMENSION + 1)}, "frame size"),
        ({"fps": binary.varint(0) + binary.varint(1)}, "frame rate is zero"),
        ({"fps": binary.varint(25) + binary.varint(0)}, "frame rate is zero"),
        ({"fps": binary.varint(MAX_FPS_TERM + 1) + binary.varint(1)}, "exceeds limit"),
        ({"frame_count": binary.varint(MAX_PTS + 1)}, "exceeds limit"),
        ({"model_id": binary.length_prefixed(b"\xff\xfe")}, "header: 'utf-8'"),
        ({"model_id": binary.length_prefixed(bytes(MAX_ID_BYTES + 1))}, "exceeds limit"),
        ({"digest": binary.length_prefixed(bytes(MAX_ID_BYTES + 1))}, "exceeds limit"),
        ({"scheme": binary.u8(0)}, "LandmarkScheme"),
        ({"scheme": binary.u8(2)}, "LandmarkScheme"),
    ],
)
def test_header_field_limits(over: dict[str, bytes], match: str) -> None:
    with pytest.raises(BitstreamError, match=match):
        read_stream(header_bytes(_body(**over)) + END)


def test_header_body_missing_fields_is_truncated() -> None:
    body = _body()
    for n in range(len(body)):
        with pytest.raises(TruncatedError):
            read_stream(header_bytes(body[:n]) + END)


# --- limits are checked before allocating ----------------------------------------------------


class RecordingStream(io.BytesIO):
    """A BytesIO that remembers the largest read it was asked for."""

    largest = 0

    def read(self, n: int | None = -1) -> bytes:
        self.largest = max(self.largest, -1 if n is None else n)
        return super().read(n)


def test_payload_length_over_limit_rejected_before_reading() -> None:
    packet = b"\x01\x00" + binary.varint(MAX_PAYLOAD_BYTES + 1)  # no payload follows
    stream = RecordingStream(GOLDEN[:GOLDEN_HEADER_LEN] + packet)
    reader = AgcReader(stream)
    with pytest.raises(BitstreamError, match="packet length.*exceeds limit") as exc:
        list(reader)
    assert not isinstance(exc.value, TruncatedError)
    assert stream.largest < 1024


def test_payload_length_at_limit_is_only_truncated() -> None:
    packet = b"\x01\x00" + binary.varint(MAX_PAYLOAD_BYTES)
    with pytest.raises(TruncatedError, match="packet payload truncated"):
        read_stream(GOLDEN[:GOLDEN_HEADER_LEN] + packet)


def test_header_length_over_limit_rejected_before_reading() -> None:
    stream = RecordingStream(MAGIC + b"\x01\x00" + binary.varint(MAX_HEADER_BYTES + 1))
    with pytest.raises(BitstreamError, match="header length.*exceeds limit") as exc:
        AgcReader(stream)
    assert not isinstance(exc.value, TruncatedError)
    assert stream.largest < 1024


def test_pts_over_limit() -> None:
    packet = b"\x02" + binary.varint(MAX_PTS + 1) + b"\x00" + b"\x00" * 4
    with pytest.raises(BitstreamError, match="packet pts.*exceeds limit"):
        read_stream(GOLDEN[:GOLDEN_HEADER_LEN] + packet)


def test_overlong_varint_in_packet() -> None:
    packet = b"\x02" + b"\x80" * 20
    with pytest.raises(BitstreamError, match="varint too long") as exc:
        read_stream(GOLDEN[:GOLDEN_HEADER_LEN] + packet)
    assert not isinstance(exc.value, TruncatedError)


# --- END packet ------------------------------------------------------------------------------


def _stream_with_end(count_payload: bytes, packets: list[Packet] = PACKETS) -> bytes:
    body = b"".join(p.to_bytes() for p in packets)
    return HEADER.to_bytes() + body + Packet(PacketKind.END, 0, count_payload).to_bytes()


@pytest.mark.parametrize("declared", [0, 1, 3, MAX_PTS])
def test_end_count_mismatch(declared: int) -> None:
    with pytest.raises(BitstreamError, match=f"declares {declared} packets, stream holds 2"):
        read_stream(_stream_with_end(binary.varint(declared)))


def test_end_count_over_limit() -> None:
    with pytest.raises(BitstreamError, match="exceeds limit"):
        read_stream(_stream_with_end(binary.varint(MAX_PTS + 1)))


def test_end_with_empty_payload_is_truncated() -> None:
    with pytest.raises(TruncatedError, match="END packet"):
        read_stream(_stream_with_end(b""))


def test_missing_end_is_truncated() -> None:
    data = HEADER.to_bytes() + b"".join(p.to_bytes() for p in PACKETS)
    reader = AgcReader(io.BytesIO(data))
    it = iter(reader)
    assert next(it) == PACKETS[0]
    assert next(it) == PACKETS[1]
    with pytest.raises(TruncatedError, match="no END packet after 2 packets"):
        next(it)


def test_reader_stops_at_end() -> None:
    # Bytes after END are not read: the reader leaves the stream positioned just past END.
    stream = io.BytesIO(GOLDEN + b"trailing")
    assert list(AgcReader(stream)) == PACKETS
    assert stream.read() == b"trailing"


def test_end_pts_and_bytes_after_count_are_ignored() -> None:
    body = HEADER.to_bytes() + b"".join(p.to_bytes() for p in PACKETS)
    end = Packet(PacketKind.END, 7, binary.varint(2) + b"reserved").to_bytes()
    assert read_stream(body + end) == (HEADER, PACKETS)


# --- MOTION_GROUP ------------------------------------------------------------------------------


def test_motion_group_packs_consecutive_frames_once() -> None:
    chunks = [(7, b"\x01\x02\x03\x04"), (8, b""), (9, b"\x05\x06\x07\x08" * 2)]
    packet = group_motion(chunks)
    assert packet == Packet(
        PacketKind.MOTION_GROUP, 7, b"\x03" + b"\x01\x02\x03\x04" + b"\x05\x06\x07\x08" * 2
    )
    # The words all come with the first frame: the motion decoder keeps what it has not used.
    assert motion_chunks(packet) == [(7, packet.payload[1:]), (8, b""), (9, b"")]
    single = group_motion(chunks[:1])
    assert single == Packet(PacketKind.MOTION, 7, chunks[0][1])  # one frame: a MOTION packet
    assert motion_chunks(single) == chunks[:1]


def test_motion_group_golden_bytes() -> None:
    """The MOTION_GROUP example of docs/bitstream.md, "Worked example"."""
    chunks = [(2, bytes.fromhex("11223344")), (3, b""), (4, bytes.fromhex("55667788"))]
    data = group_motion(chunks).to_bytes()
    assert data == bytes.fromhex("050209" "03" "1122334455667788" "1a21b88a")  # fmt: skip
    assert sum(len(Packet(PacketKind.MOTION, pts, w).to_bytes()) for pts, w in chunks) == 29


def test_reference_golden_bytes() -> None:
    """The REFERENCE example of docs/bitstream.md, "Worked example": KEYFRAME's payload
    under kind 6, and the frame at its pts comes as motion."""
    data = Packet(PacketKind.REFERENCE, 0, b"key").to_bytes()
    assert data == bytes.fromhex("060003" "6b6579" "eb9fff00")  # fmt: skip
    assert read_stream(write_stream(HEADER, [Packet(PacketKind.REFERENCE, 0, b"key")]))[1][0] == (
        Packet(PacketKind.REFERENCE, 0, b"key")
    )


def test_motion_group_writer_checks() -> None:
    with pytest.raises(ValueError, match="consecutive"):
        group_motion([(1, b""), (3, b"")])
    with pytest.raises(ValueError, match="holds"):
        group_motion([])
    with pytest.raises(ValueError, match="holds"):
        group_motion([(i, b"") for i in range(MAX_GROUP_FRAMES + 1)])
    with pytest.raises(ValueError, match="no motion"):
        motion_chunks(Packet(PacketKind.KEYFRAME, 0, b""))


@pytest.mark.parametrize(
    "pts, payload",
    [
        (0, b""),  # no frame count
        (0, b"\x00"),  # zero frames
        (0, b"\x80"),  # a varint cut short
        (0, binary.varint(MAX_GROUP_FRAMES + 1)),  # more frames than a group may hold
        (MAX_PTS, b"\x02"),  # its last frame past MAX_PTS
    ],
)
def test_malformed_motion_group_is_a_stream_error(pts: int, payload: bytes) -> None:
    with pytest.raises(BitstreamError, match="MOTION_GROUP"):
        motion_chunks(Packet(PacketKind.MOTION_GROUP, pts, payload))
