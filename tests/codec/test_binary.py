"""codec.binary: integer packing (LEB128 varints, zigzag) and the bounds-checked ByteReader."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from codec import binary
from codec.binary import MAX_VARINT_BYTES, ByteReader
from codec.errors import BitstreamError, GraceError, TruncatedError

U64_MAX = 2**64 - 1
I64_MAX = 2**63 - 1

VARINT_VECTORS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (300, "ac02"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2**32 - 1, "ffffffff0f"),
    (U64_MAX, "ffffffffffffffffff01"),
]


@pytest.mark.parametrize(("value", "hex_"), VARINT_VECTORS)
def test_varint_known_encodings(value: int, hex_: str) -> None:
    assert binary.varint(value).hex() == hex_
    r = ByteReader(bytes.fromhex(hex_))
    assert r.varint() == value
    r.expect_end()


def test_varint_longest_is_max_varint_bytes() -> None:
    assert len(binary.varint(U64_MAX)) == MAX_VARINT_BYTES


def test_varint_rejects_negative() -> None:
    with pytest.raises(ValueError):
        binary.varint(-1)


@given(st.integers(min_value=0, max_value=U64_MAX))
def test_varint_round_trip(v: int) -> None:
    enc = binary.varint(v)
    assert 1 <= len(enc) <= MAX_VARINT_BYTES
    assert all(b & 0x80 for b in enc[:-1]) and not enc[-1] & 0x80
    r = ByteReader(enc)
    assert r.varint() == v
    assert r.remaining == 0


@pytest.mark.parametrize(
    ("signed", "unsigned"),
    [(0, 0), (-1, 1), (1, 2), (-2, 3), (2, 4), (I64_MAX, 2**64 - 2), (-(2**63), U64_MAX)],
)
def test_zigzag_table(signed: int, unsigned: int) -> None:
    assert binary.zigzag(signed) == unsigned
    assert binary.unzigzag(unsigned) == signed


@given(st.integers())
def test_zigzag_inverse(v: int) -> None:
    u = binary.zigzag(v)
    assert u >= 0
    assert binary.unzigzag(u) == v


@given(st.integers(min_value=-I64_MAX, max_value=I64_MAX))
def test_svarint_round_trip(v: int) -> None:
    r = ByteReader(binary.svarint(v))
    assert r.svarint() == v
    r.expect_end()


@pytest.mark.parametrize("v", [0, -1, 1, -64, 63, -65, 64, I64_MAX, -I64_MAX])
def test_svarint_edges(v: int) -> None:
    assert ByteReader(binary.svarint(v)).svarint() == v


def test_svarint_limit() -> None:
    with pytest.raises(BitstreamError, match="exceeds limit"):
        ByteReader(binary.svarint(-11)).svarint(limit=10)
    assert ByteReader(binary.svarint(-10)).svarint(limit=10) == -10


def test_fixed_width_little_endian() -> None:
    assert binary.u8(0xAB) == b"\xab"
    assert binary.u16(0x1234) == b"\x34\x12"
    assert binary.u32(0x12345678) == b"\x78\x56\x34\x12"
    r = ByteReader(b"\xab\x34\x12\x78\x56\x34\x12")
    assert (r.u8(), r.u16(), r.u32()) == (0xAB, 0x1234, 0x12345678)
    r.expect_end()


def test_crc32_check_value() -> None:
    assert binary.crc32(b"123456789") == 0xCBF43926  # the CRC-32/ISO-HDLC check value
    assert binary.crc32(b"") == 0


@given(st.binary(max_size=300))
def test_length_prefixed_round_trip(data: bytes) -> None:
    enc = binary.length_prefixed(data)
    assert enc == binary.varint(len(data)) + data
    r = ByteReader(enc)
    assert r.length_prefixed(limit=len(data)) == data
    r.expect_end()


@given(
    st.lists(
        st.one_of(
            st.tuples(st.just("u8"), st.integers(0, 0xFF)),
            st.tuples(st.just("u16"), st.integers(0, 0xFFFF)),
            st.tuples(st.just("u32"), st.integers(0, 0xFFFFFFFF)),
            st.tuples(st.just("varint"), st.integers(0, U64_MAX)),
            st.tuples(st.just("svarint"), st.integers(-I64_MAX, I64_MAX)),
        ),
        max_size=20,
    )
)
def test_mixed_sequence_round_trip(fields: list[tuple[str, int]]) -> None:
    data = b"".join(getattr(binary, name)(v) for name, v in fields)
    r = ByteReader(data)
    assert [getattr(r, name)() for name, _ in fields] == [v for _, v in fields]
    r.expect_end()


# --- ByteReader errors -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "read"),
    [
        (b"", "u8"),
        (b"\x01", "u16"),
        (b"\x01\x02\x03", "u32"),
        (b"", "varint"),
        (b"\x80", "varint"),
        (b"\xff\xff\xff", "varint"),
        (b"\x81", "svarint"),
    ],
)
def test_short_reads_raise_truncated(data: bytes, read: str) -> None:
    with pytest.raises(TruncatedError, match="truncated"):
        getattr(ByteReader(data), read)()


def test_take_checks_bounds() -> None:
    r = ByteReader(b"abc", "thing")
    assert r.take(0) == b""
    with pytest.raises(TruncatedError, match="thing truncated"):
        r.take(4)
    assert r.pos == 0  # a failed read consumes nothing
    with pytest.raises(TruncatedError):
        r.take(-1)
    assert r.take(3) == b"abc"


def test_length_prefixed_truncated_payload() -> None:
    with pytest.raises(TruncatedError):
        ByteReader(b"\x05abcd").length_prefixed(limit=100)


def test_length_prefixed_over_limit_rejected_before_reading() -> None:
    with pytest.raises(BitstreamError, match="exceeds limit") as exc:
        ByteReader(binary.varint(101) + b"x" * 200).length_prefixed(limit=100)
    assert not isinstance(exc.value, TruncatedError)


def test_varint_over_limit() -> None:
    with pytest.raises(BitstreamError, match="exceeds limit"):
        ByteReader(binary.varint(1000)).varint(limit=999)
    assert ByteReader(binary.varint(999)).varint(limit=999) == 999


def test_varint_over_u64_rejected() -> None:
    # Ten bytes can hold 70 bits; anything above 2**64 - 1 is refused.
    with pytest.raises(BitstreamError, match="exceeds limit"):
        ByteReader(binary.varint(2**64)).varint()
    with pytest.raises(BitstreamError, match="exceeds limit"):
        ByteReader(b"\xff" * 9 + b"\x7f").varint()


def test_overlong_varint_rejected() -> None:
    data = b"\x80" * MAX_VARINT_BYTES + b"\x00"
    with pytest.raises(BitstreamError, match="longer than") as exc:
        ByteReader(data).varint()
    assert not isinstance(exc.value, TruncatedError)


def test_non_minimal_varint_accepted() -> None:
    # Readers accept redundant continuation bytes; writers always emit the minimal form.
    assert ByteReader(b"\x80\x00").varint() == 0
    assert ByteReader(b"\xff\x80\x00").varint() == 127


def test_expect_end() -> None:
    r = ByteReader(b"\x01\x02", "blob")
    r.u8()
    with pytest.raises(BitstreamError, match="blob: 1 unexpected trailing bytes"):
        r.expect_end()
    r.u8()
    r.expect_end()


def test_errors_are_value_errors() -> None:
    assert issubclass(TruncatedError, BitstreamError)
    assert issubclass(BitstreamError, GraceError)
    assert issubclass(BitstreamError, ValueError)


@given(st.binary(max_size=40))
def test_random_bytes_raise_only_grace_errors(data: bytes) -> None:
    r = ByteReader(data)
    try:
        while True:
            r.svarint()
            r.length_prefixed(limit=16)
            r.u16()
    except GraceError:
        pass
