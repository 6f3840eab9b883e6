"""codec.keyframe: intra coding of the key frame with HEVC, AV1 and WebP through PyAV."""

from __future__ import annotations

import functools

import cv2
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from skimage import data

from codec.errors import BitstreamError
from codec.keyframe import IMAGE_CODEC_NAMES, ImageCodec, decode_image, encode_image

FUZZ = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
CODECS = list(ImageCodec)


@functools.cache
def astronaut() -> np.ndarray:
    """scikit-image's astronaut (person, flag, background) at 256x256."""
    return cv2.resize(data.astronaut(), (256, 256), interpolation=cv2.INTER_AREA)


@functools.cache
def face() -> np.ndarray:
    """The astronaut's head and shoulders at 256x256: what a key frame holds."""
    return cv2.resize(data.astronaut()[10:230, 130:350], (256, 256), interpolation=cv2.INTER_AREA)


@functools.cache
def coded(codec: ImageCodec) -> bytes:
    return encode_image(face(), codec, 50)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float(10 * np.log10(255**2 / mse))


def test_ids_are_stable():
    # Written in the bitstream: these numbers never change.
    assert {c.name: int(c) for c in ImageCodec} == {"HEVC": 1, "AV1": 2, "WEBP": 3}
    assert IMAGE_CODEC_NAMES == {
        "hevc": ImageCodec.HEVC,
        "av1": ImageCodec.AV1,
        "webp": ImageCodec.WEBP,
    }


@pytest.mark.parametrize("codec", CODECS)
def test_round_trip(codec):
    img = astronaut()
    data_ = encode_image(img, codec, 70)
    out = decode_image(data_, codec, 256, 256)
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    assert psnr(out, img) > 30


@pytest.mark.parametrize("codec", CODECS)
def test_size_falls_with_quality(codec):
    sizes = [len(encode_image(face(), codec, q)) for q in (90, 60, 30)]
    assert sizes[0] > sizes[1] > sizes[2]
    assert sizes[2] < 6000  # a face at quality 30 costs a few KB


@pytest.mark.parametrize("codec", CODECS)
def test_extreme_qualities(codec):
    for q in (0, 100):
        assert decode_image(encode_image(face(), codec, q), codec, 256, 256).shape == (256, 256, 3)


@pytest.mark.parametrize("codec", CODECS)
def test_deterministic(codec):
    assert encode_image(face(), codec, 50) == coded(codec)


@pytest.mark.parametrize("codec", CODECS)
def test_non_square_even_size(codec):
    img = np.ascontiguousarray(face()[:66, :70])
    out = decode_image(encode_image(img, codec, 80), codec, 70, 66)
    assert out.shape == (66, 70, 3)
    assert psnr(out, img) > 25


def test_hevc_is_bare_annexb_without_sei():
    data_ = coded(ImageCodec.HEVC)
    # NAL unit types after each start code: VPS, SPS, PPS, then slices; SEI (39, 40) is
    # option text or hashes, not needed to decode.
    types = [
        (data_[i + 3] >> 1) & 0x3F for i in range(len(data_) - 3) if data_[i : i + 3] == b"\0\0\1"
    ]
    assert types[:3] == [32, 33, 34]
    assert not {39, 40} & set(types)


def test_webp_is_a_file():
    assert coded(ImageCodec.WEBP)[:4] == b"RIFF" and coded(ImageCodec.WEBP)[8:12] == b"WEBP"


@pytest.mark.parametrize(
    "image",
    [
        np.zeros((64, 65, 3), np.uint8),  # odd width
        np.zeros((63, 64, 3), np.uint8),  # odd height
        np.zeros((62, 64, 3), np.uint8),  # too small
        np.zeros((64, 64), np.uint8),  # grey
        np.zeros((64, 64, 4), np.uint8),  # RGBA
        np.zeros((64, 64, 3), np.float32),  # not uint8
    ],
)
def test_bad_image(image):
    with pytest.raises(ValueError):
        encode_image(image, ImageCodec.WEBP, 50)


@pytest.mark.parametrize("quality", [-1, 101, 50.0, True])
def test_bad_quality(quality):
    with pytest.raises(ValueError):
        encode_image(face(), ImageCodec.WEBP, quality)


@pytest.mark.parametrize("codec", CODECS)
def test_wrong_size_is_bitstream_error(codec):
    with pytest.raises(BitstreamError, match="expected 128x256"):
        decode_image(coded(codec), codec, 128, 256)
    # Much larger than announced: refused before allocation.
    with pytest.raises(BitstreamError):
        decode_image(coded(codec), codec, 64, 64)


@pytest.mark.parametrize("codec", CODECS)
def test_empty_and_truncated(codec):
    with pytest.raises(BitstreamError):
        decode_image(b"", codec, 256, 256)
    with pytest.raises(BitstreamError):
        decode_image(coded(codec)[:20], codec, 256, 256)


def test_unknown_codec_id():
    with pytest.raises(BitstreamError, match="unknown image codec id 9"):
        decode_image(coded(ImageCodec.WEBP), 9, 256, 256)


def test_wrong_codec():
    with pytest.raises(BitstreamError):
        decode_image(coded(ImageCodec.WEBP), ImageCodec.HEVC, 256, 256)


def _decodes_or_bitstream_error(data_: bytes, codec: ImageCodec) -> None:
    """Damaged bytes either decode to a picture of the right size or raise BitstreamError."""
    try:
        out = decode_image(data_, codec, 256, 256)
    except BitstreamError as e:
        assert "\n" not in str(e)
    else:
        assert out.shape == (256, 256, 3) and out.dtype == np.uint8


@FUZZ
@given(st.sampled_from(CODECS), st.binary(max_size=400))
def test_random_bytes(codec, data_):
    _decodes_or_bitstream_error(data_, codec)


@FUZZ
@given(st.sampled_from(CODECS), st.data())
def test_damaged_bytes(codec, draw):
    good = bytearray(coded(codec))
    for _ in range(draw.draw(st.integers(1, 8))):
        i = draw.draw(st.integers(0, len(good) - 1))
        good[i] = draw.draw(st.integers(0, 255))
    cut = draw.draw(st.integers(0, len(good)))
    _decodes_or_bitstream_error(bytes(good[:cut]), codec)
