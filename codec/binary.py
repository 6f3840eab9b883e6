"""All integer packing of the .agc format lives here (little-endian, LEB128 varints).

`ByteReader` checks every read against the end of its buffer and raises
`TruncatedError`, so a short buffer can never be misread as a shorter field.
"""

from __future__ import annotations

import struct
import zlib

from .errors import BitstreamError, TruncatedError

MAX_VARINT_BYTES = 10  # enough for any uint64


def u8(v: int) -> bytes:
    return struct.pack("<B", v)


def u16(v: int) -> bytes:
    return struct.pack("<H", v)


def u32(v: int) -> bytes:
    return struct.pack("<I", v)


def varint(v: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, low bits first, high bit set on all but the last."""
    if v < 0:
        raise ValueError(f"varint needs a non-negative value, got {v}")
    out = bytearray()
    while True:
        byte = v & 0x7F
        v >>= 7
        if v:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def zigzag(v: int) -> int:
    """Maps signed to unsigned: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    return (v << 1) if v >= 0 else ((-v << 1) - 1)


def unzigzag(u: int) -> int:
    return (u >> 1) if not (u & 1) else -((u + 1) >> 1)


def svarint(v: int) -> bytes:
    return varint(zigzag(v))


def length_prefixed(data: bytes) -> bytes:
    return varint(len(data)) + data


def crc32(data: bytes) -> int:
    """CRC-32 (ISO-HDLC, as zlib and PNG compute it)."""
    return zlib.crc32(data) & 0xFFFFFFFF


class ByteReader:
    """Sequential, bounds-checked reads over a bytes buffer."""

    def __init__(self, data: bytes, what: str = "buffer"):
        self.data = memoryview(data)
        self.pos = 0
        self.what = what

    @property
    def remaining(self) -> int:
        return len(self.data) - self.pos

    def take(self, n: int) -> bytes:
        if n < 0 or self.pos + n > len(self.data):
            raise TruncatedError(
                f"{self.what} truncated: needs {n} more bytes at offset {self.pos}, "
                f"has {self.remaining}"
            )
        out = bytes(self.data[self.pos : self.pos + n])
        self.pos += n
        return out

    def u8(self) -> int:
        return self.take(1)[0]

    def u16(self) -> int:
        return struct.unpack("<H", self.take(2))[0]

    def u32(self) -> int:
        return struct.unpack("<I", self.take(4))[0]

    def varint(self, limit: int = 2**64 - 1) -> int:
        value = 0
        for i in range(MAX_VARINT_BYTES):
            byte = self.u8()
            value |= (byte & 0x7F) << (7 * i)
            if not byte & 0x80:
                if value > limit:
                    raise BitstreamError(f"{self.what}: value {value} exceeds limit {limit}")
                return value
        raise BitstreamError(f"{self.what}: varint longer than {MAX_VARINT_BYTES} bytes")

    def svarint(self, limit: int = 2**63 - 1) -> int:
        v = unzigzag(self.varint())
        if abs(v) > limit:
            raise BitstreamError(f"{self.what}: value {v} exceeds limit ±{limit}")
        return v

    def length_prefixed(self, limit: int) -> bytes:
        n = self.varint(limit)
        return self.take(n)

    def expect_end(self) -> None:
        if self.remaining:
            raise BitstreamError(f"{self.what}: {self.remaining} unexpected trailing bytes")
