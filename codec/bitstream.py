"""The .agc container: header and packets. `docs/bitstream.md` is the normative spec.

Layout::

    stream  = magic(4) major(u8) minor(u8) header_len(varint) header(header_len) header_crc(u32)
              packet* END-packet
    packet  = kind(u8) pts(varint) length(varint) payload(length) crc32(u32)

The packet CRC covers kind, pts, length and payload; the header CRC covers the header body.
"""

from __future__ import annotations

import dataclasses
import enum
import io
from collections.abc import Iterator
from fractions import Fraction
from typing import BinaryIO

from . import binary
from .errors import BitstreamError, TruncatedError, UnsupportedVersionError

MAGIC = b"AGC\x1a"
VERSION_MAJOR = 3  # 3.0: REFERENCE packets; 2.0: MOTION_GROUP packets (neither can be skipped)
VERSION_MINOR = 0
READABLE_MAJORS = (1, 2, 3)  # each major's streams are the next one's without its new kind

# Limits checked before anything is allocated (a hostile length cannot exhaust memory).
MAX_HEADER_BYTES = 64 * 1024
MAX_PAYLOAD_BYTES = 16 * 1024 * 1024
MAX_DIMENSION = 8192
MAX_PTS = 2**32 - 1
MAX_FPS_TERM = 1_000_000
MAX_ID_BYTES = 64
MAX_GROUP_FRAMES = 1024  # frames in one MOTION_GROUP packet
FILE_MOTION_GROUP = 25  # frames a group in the files gracecodec writes (a live call sends 1)
# Frames among which a sender may choose a segment's key frame (sent as a REFERENCE), and
# how many files use (10 s at 25 fps; a live call shows its first frame at once: 0).
MAX_KEY_SEARCH = 750
FILE_KEY_SEARCH = 250


class PacketKind(enum.IntEnum):
    """Stable numeric ids of packet kinds (never renumber)."""

    KEYFRAME = 1  # a key frame: image codec id, image bytes, the frame's landmarks
    MOTION = 2  # one frame's share of the continuous entropy-coded motion stream
    END = 3  # end of stream: payload = varint number of packets before it
    LOWPASS = 4  # a low-pass residual update (codec.lowpass), just before its frame's MOTION
    MOTION_GROUP = 5  # consecutive frames' motion in one packet (files: framing paid once)
    REFERENCE = 6  # a key frame not shown: KEYFRAME's payload; frame pts on come as motion


MOTION_KINDS = (PacketKind.MOTION, PacketKind.MOTION_GROUP)
KEY_KINDS = (PacketKind.KEYFRAME, PacketKind.REFERENCE)  # packets that start a segment


class LandmarkScheme(enum.IntEnum):
    IBUG68 = 1  # the 68 iBUG 300-W points


@dataclasses.dataclass(frozen=True)
class Header:
    """Stream-wide parameters. `model_digest` is empty for models without weights."""

    width: int
    height: int
    fps: Fraction
    model_id: str
    model_digest: bytes = b""
    landmark_scheme: LandmarkScheme = LandmarkScheme.IBUG68
    motion_params: bytes = b""  # opaque to the container; read by codec.motion
    frame_count: int = 0  # 0 when unknown (live streams)

    def to_bytes(self) -> bytes:
        model_id = self.model_id.encode("utf-8")
        if not (0 < self.width <= MAX_DIMENSION and 0 < self.height <= MAX_DIMENSION):
            raise ValueError(f"frame size {self.width}x{self.height} out of range")
        if len(model_id) > MAX_ID_BYTES or len(self.model_digest) > MAX_ID_BYTES:
            raise ValueError("model id or digest too long")
        fps = Fraction(self.fps)
        if not (0 < fps.numerator <= MAX_FPS_TERM and fps.denominator <= MAX_FPS_TERM):
            raise ValueError(f"frame rate {fps} out of range")
        if not 0 <= self.frame_count <= MAX_PTS:
            raise ValueError(f"frame count {self.frame_count} out of range")
        body = b"".join(
            [
                binary.u16(self.width),
                binary.u16(self.height),
                binary.varint(fps.numerator),
                binary.varint(fps.denominator),
                binary.varint(self.frame_count),
                binary.length_prefixed(model_id),
                binary.length_prefixed(self.model_digest),
                binary.u8(self.landmark_scheme),
                binary.length_prefixed(self.motion_params),
            ]
        )
        if len(body) > MAX_HEADER_BYTES:
            raise ValueError(f"header of {len(body)} bytes exceeds the limit")
        return (
            MAGIC
            + binary.u8(VERSION_MAJOR)
            + binary.u8(VERSION_MINOR)
            + binary.length_prefixed(body)
            + binary.u32(binary.crc32(body))
        )

    @classmethod
    def read(cls, stream: BinaryIO) -> Header:
        magic = stream.read(4)
        if len(magic) < 4:
            raise TruncatedError("not an .agc stream: shorter than its magic number")
        if magic != MAGIC:
            raise BitstreamError(f"not an .agc stream: wrong magic {magic!r}")
        prefix = binary.ByteReader(_read_exact(stream, 2, "header"), "header")
        major, minor = prefix.u8(), prefix.u8()
        if major not in READABLE_MAJORS:
            raise UnsupportedVersionError(
                f"stream format version {major}.{minor} is not supported "
                f"(this gracecodec reads {' and '.join(f'{m}.x' for m in READABLE_MAJORS)})"
            )
        n = _read_varint(stream, MAX_HEADER_BYTES, "header length")
        body = _read_exact(stream, n, "header")
        crc = binary.ByteReader(_read_exact(stream, 4, "header"), "header").u32()
        if crc != binary.crc32(body):
            raise BitstreamError("header CRC mismatch: the stream header is damaged")
        r = binary.ByteReader(body, "header")
        width, height = r.u16(), r.u16()
        fps_num, fps_den = r.varint(MAX_FPS_TERM), r.varint(MAX_FPS_TERM)
        frame_count = r.varint(MAX_PTS)
        model_id_raw = r.length_prefixed(MAX_ID_BYTES)
        model_digest = r.length_prefixed(MAX_ID_BYTES)
        scheme = r.u8()
        motion_params = r.length_prefixed(MAX_HEADER_BYTES)
        # Bytes after the known fields are allowed: a newer minor version may append fields.
        if not (0 < width <= MAX_DIMENSION and 0 < height <= MAX_DIMENSION):
            raise BitstreamError(f"header: frame size {width}x{height} out of range")
        if fps_num == 0 or fps_den == 0:
            raise BitstreamError("header: frame rate is zero")
        try:
            model_id = model_id_raw.decode("utf-8")
            landmark_scheme = LandmarkScheme(scheme)
        except (UnicodeDecodeError, ValueError) as e:
            raise BitstreamError(f"header: {e}") from None
        return cls(
            width=width,
            height=height,
            fps=Fraction(fps_num, fps_den),
            model_id=model_id,
            model_digest=model_digest,
            landmark_scheme=landmark_scheme,
            motion_params=motion_params,
            frame_count=frame_count,
        )


@dataclasses.dataclass(frozen=True)
class Packet:
    kind: int  # a PacketKind, or an unknown kind from a newer minor version
    pts: int  # frame index, counted from 0
    payload: bytes

    def to_bytes(self) -> bytes:
        if not 0 <= self.kind <= 255:
            raise ValueError(f"packet kind {self.kind} out of range")
        if not 0 <= self.pts <= MAX_PTS:
            raise ValueError(f"pts {self.pts} out of range")
        if len(self.payload) > MAX_PAYLOAD_BYTES:
            raise ValueError(f"payload of {len(self.payload)} bytes exceeds the limit")
        body = binary.u8(self.kind) + binary.varint(self.pts) + binary.length_prefixed(self.payload)
        return body + binary.u32(binary.crc32(body))

    @classmethod
    def from_bytes(cls, data: bytes) -> Packet:
        """Parses exactly one packet (transport messages carry one each)."""
        stream = io.BytesIO(data)
        packet = read_packet(stream)
        if packet is None:
            raise TruncatedError("empty packet")
        if stream.read(1):
            raise BitstreamError("trailing bytes after packet")
        return packet


def read_packet(stream: BinaryIO) -> Packet | None:
    """Reads one packet; returns None at a clean end of stream (no byte left)."""
    first = stream.read(1)
    if not first:
        return None
    kind = first[0]
    pts_bytes, pts = _read_varint_raw(stream, MAX_PTS, "packet pts")
    len_bytes, n = _read_varint_raw(stream, MAX_PAYLOAD_BYTES, "packet length")
    payload = _read_exact(stream, n, "packet payload")
    crc = binary.ByteReader(_read_exact(stream, 4, "packet CRC"), "packet").u32()
    if crc != binary.crc32(first + pts_bytes + len_bytes + payload):
        raise BitstreamError(f"packet at pts {pts}: CRC mismatch (damaged data)")
    return Packet(kind, pts, payload)


def group_motion(chunks: list[tuple[int, bytes]]) -> Packet:
    """One packet for consecutive frames' MOTION chunks (pts, words): a MOTION packet for
    one frame, else a MOTION_GROUP (varint frame count, then the chunks' words in order)."""
    if not 1 <= len(chunks) <= MAX_GROUP_FRAMES:
        raise ValueError(f"a motion group holds 1..{MAX_GROUP_FRAMES} frames, not {len(chunks)}")
    first = chunks[0][0]
    if [pts for pts, _ in chunks] != list(range(first, first + len(chunks))):
        raise ValueError("a motion group's frames must be consecutive")
    if len(chunks) == 1:
        return Packet(PacketKind.MOTION, first, chunks[0][1])
    words = b"".join(data for _, data in chunks)
    return Packet(PacketKind.MOTION_GROUP, first, binary.varint(len(chunks)) + words)


def motion_chunks(packet: Packet) -> list[tuple[int, bytes]]:
    """The frames a MOTION or MOTION_GROUP packet codes, as (pts, words): a group's words
    all come with its first frame (the motion decoder keeps words it has not consumed)."""
    if packet.kind == PacketKind.MOTION:
        return [(packet.pts, packet.payload)]
    if packet.kind != PacketKind.MOTION_GROUP:
        raise ValueError(f"packet kind {packet.kind} carries no motion")
    r = binary.ByteReader(packet.payload, "MOTION_GROUP packet")
    n = r.varint(MAX_GROUP_FRAMES)
    if n < 1 or packet.pts + n - 1 > MAX_PTS:
        raise BitstreamError(f"MOTION_GROUP at pts {packet.pts}: {n} frames out of range")
    words = r.take(r.remaining)
    return [(packet.pts, words)] + [(packet.pts + i, b"") for i in range(1, n)]


def coded_bytes(packet: Packet) -> int:
    """The packet's coded data as rates count it: its payload, less a MOTION_GROUP's
    frame count (framing, like the packet header)."""
    if packet.kind in MOTION_KINDS:
        return sum(len(words) for _, words in motion_chunks(packet))
    return len(packet.payload)


class AgcWriter:
    """Writes a header, then packets, then (on close) the END packet."""

    def __init__(self, stream: BinaryIO, header: Header):
        self.stream = stream
        self.header = header
        self.packets_written = 0
        self.bytes_written = 0
        self._write(header.to_bytes())

    def _write(self, data: bytes) -> None:
        self.stream.write(data)
        self.bytes_written += len(data)

    def write(self, packet: Packet) -> None:
        self._write(packet.to_bytes())
        self.packets_written += 1

    def close(self) -> None:
        end = Packet(PacketKind.END, 0, binary.varint(self.packets_written))
        self._write(end.to_bytes())


class AgcReader:
    """Reads a header, then iterates packets up to and excluding END.

    Raises `TruncatedError` when the stream stops before its END packet, and
    `BitstreamError` when END disagrees with the number of packets read.
    """

    def __init__(self, stream: BinaryIO):
        self.stream = stream
        self.header = Header.read(stream)

    def __iter__(self) -> Iterator[Packet]:
        count = 0
        while True:
            packet = read_packet(self.stream)
            if packet is None:
                raise TruncatedError(f"stream truncated: no END packet after {count} packets")
            if packet.kind == PacketKind.END:
                r = binary.ByteReader(packet.payload, "END packet")
                declared = r.varint(MAX_PTS)
                if declared != count:
                    raise BitstreamError(
                        f"END packet declares {declared} packets, stream holds {count}"
                    )
                return
            count += 1
            yield packet


def _read_exact(stream: BinaryIO, n: int, what: str) -> bytes:
    data = stream.read(n)
    if len(data) != n:
        raise TruncatedError(f"{what} truncated: expected {n} bytes, got {len(data)}")
    return data


def _read_varint_raw(stream: BinaryIO, limit: int, what: str) -> tuple[bytes, int]:
    raw = bytearray()
    for _ in range(binary.MAX_VARINT_BYTES):
        b = stream.read(1)
        if not b:
            raise TruncatedError(f"{what} truncated")
        raw += b
        if not b[0] & 0x80:
            value = binary.ByteReader(bytes(raw), what).varint(limit)
            return bytes(raw), value
    raise BitstreamError(f"{what}: varint too long")


def _read_varint(stream: BinaryIO, limit: int, what: str) -> int:
    return _read_varint_raw(stream, limit, what)[1]
