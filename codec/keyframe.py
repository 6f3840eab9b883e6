"""Conventional intra coding of the key frame through PyAV (FFmpeg).

The key frame is one RGB image coded with a standard still-image / intra codec; the
bitstream stores the codec id (`ImageCodec`, stable numbers) and the bare coded bytes.

Quality mapping (``quality`` is 0..100, higher is better, mapped linearly):

==========  ==========================  ================================================
codec       encoder -> decoder          native setting
==========  ==========================  ================================================
HEVC (1)    libx265 -> FFmpeg ``hevc``  QP = round(51 * (100 - q) / 100), constant QP
AV1 (2)     libsvtav1 -> libdav1d       QP = round(63 * (100 - q) / 100), constant QP,
                                        raised to 1 (FFmpeg treats qp=0 as "unset")
WEBP (3)    libwebp -> FFmpeg ``webp``  lossy quality = q
==========  ==========================  ================================================

Coded forms: HEVC is an Annex B stream (VPS, SPS, PPS and one IDR slice, no SEI); AV1 is
one temporal unit of OBUs (temporal delimiter, sequence header, frame); WebP is a
complete RIFF ``.webp`` file. All three go through YUV 4:2:0, BT.601 limited range,
converted by swscale in bit-exact mode, so the chroma subsampling alone caps the PSNR of
saturated images at about 36 dB. Encoding is single-threaded and deterministic.
"""

from __future__ import annotations

import enum
import numbers
import os
from fractions import Fraction

import av
import av.codec.codec
import numpy as np
from av.video.reformatter import Interpolation

from .errors import BackendUnavailableError, BitstreamError


class ImageCodec(enum.IntEnum):
    """Stable ids written in the bitstream (never renumber)."""

    HEVC = 1  # libx265 intra, decoded by FFmpeg's hevc decoder
    AV1 = 2  # libsvtav1, decoded by libdav1d
    WEBP = 3  # libwebp (lossy), decoded by FFmpeg's webp decoder


IMAGE_CODEC_NAMES = {"hevc": ImageCodec.HEVC, "av1": ImageCodec.AV1, "webp": ImageCodec.WEBP}

MIN_SIZE = 64  # smallest side accepted (key frames are 256x256); a floor for all codecs

_ENCODERS = {ImageCodec.HEVC: "libx265", ImageCodec.AV1: "libsvtav1", ImageCodec.WEBP: "libwebp"}
# FFmpeg's own "av1" decoder needs a hardware accelerator, so AV1 is decoded by libdav1d.
_DECODERS = {ImageCodec.HEVC: "hevc", ImageCodec.AV1: "libdav1d", ImageCodec.WEBP: "webp"}

# One fixed RGB <-> YUV conversion on both sides; BITEXACT makes swscale give the same
# result on every CPU (no SIMD-dependent rounding), so coded bytes are reproducible.
_SWS_FLAGS = Interpolation.BILINEAR | Interpolation.ACCURATE_RND | Interpolation.BITEXACT
_COLOR = {"src_colorspace": "ITU601", "dst_colorspace": "ITU601", "threads": 1}


def _check_image(image: np.ndarray) -> None:
    if not isinstance(image, np.ndarray) or image.dtype != np.uint8:
        raise ValueError("image must be a uint8 numpy array")
    if image.ndim != 3 or image.shape[2] != 3:
        raise ValueError(f"image must be HxWx3 RGB, got shape {image.shape}")
    h, w = image.shape[:2]
    if h < MIN_SIZE or w < MIN_SIZE or h % 2 or w % 2:
        raise ValueError(f"image size must be even and at least {MIN_SIZE}, got {w}x{h}")


def _encoder_options(codec: ImageCodec, quality: int) -> dict[str, str]:
    """FFmpeg options for `codec` at `quality` (see the module docstring for the mapping)."""
    if codec is ImageCodec.HEVC:
        qp = round(51 * (100 - quality) / 100)
        params = [
            f"qp={qp}",
            "keyint=1",  # intra only
            "info=0",  # no SEI with the option string (~2 KB)
            "hash=0",  # no decoded-picture-hash SEI
            "aud=0",
            "repeat-headers=0",  # VPS/SPS/PPS appear once, in the single packet
            "annexb=1",
            "log-level=none",
            # Single-threaded: deterministic and kind to shared CPUs.
            "pools=none",
            "frame-threads=1",
            "lookahead-slices=0",
        ]
        # veryslow: ~5% smaller than medium, still ~0.1 s for a 256x256 picture.
        return {"preset": "veryslow", "x265-params": ":".join(params)}
    if codec is ImageCodec.AV1:
        # FFmpeg's libsvtav1 ignores qp=0 (it means "not set"), so 1 is the best quality.
        qp = max(1, round(63 * (100 - quality) / 100))
        # preset 4: within 2% of preset 2's size at a third of its time (~0.1 s at 256x256).
        return {"qp": str(qp), "preset": "4", "svtav1-params": "lp=1"}
    # compression_level 6 is libwebp's slowest, smallest method; still a few ms.
    return {"quality": str(quality), "compression_level": "6", "lossless": "0"}


def _one_line(e: Exception) -> str:
    """FFmpeg's reason without errno and call name, on one line (the CLI prints one)."""
    return " ".join((getattr(e, "strerror", None) or str(e)).split())


def _open_codec(name: str, mode: str) -> av.CodecContext:
    try:
        return av.CodecContext.create(name, mode)
    except av.codec.codec.UnknownCodecError:
        raise BackendUnavailableError(
            f"codec {name} is missing from this PyAV build; "
            "install the PyPI wheel: pip install 'av>=12,<19'"
        ) from None


def encode_image(image: np.ndarray, codec: ImageCodec, quality: int) -> bytes:
    """Codes one RGB picture; returns the bare coded bytes (see the module docstring).

    image: uint8 HxWx3 RGB, H and W even and >= 64. quality: int 0..100, higher is better.
    The same image, codec and quality always give the same bytes.
    """
    _check_image(image)
    codec = ImageCodec(codec)
    if isinstance(quality, bool) or not isinstance(quality, numbers.Integral):
        raise ValueError(f"quality must be an int, got {quality!r}")
    if not 0 <= quality <= 100:
        raise ValueError(f"quality must be in 0..100, got {quality}")
    quality = int(quality)
    # SVT-AV1 reads SVT_LOG when it first logs; 1 = errors only (it prints a banner otherwise).
    os.environ.setdefault("SVT_LOG", "1")

    h, w = image.shape[:2]
    ctx = _open_codec(_ENCODERS[codec], "w")
    ctx.width, ctx.height, ctx.pix_fmt = w, h, "yuv420p"
    ctx.time_base = Fraction(1, 1)
    ctx.thread_count = 1
    ctx.options = _encoder_options(codec, quality)

    rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(image), format="rgb24")
    frame = rgb.reformat(
        format="yuv420p",
        interpolation=_SWS_FLAGS,
        src_color_range="JPEG",  # RGB is full range
        dst_color_range="MPEG",
        **_COLOR,
    )
    frame.pts = 0
    # encode(None) flushes: the encoders hold the picture until they know no more come.
    packets = list(ctx.encode(frame)) + list(ctx.encode(None))
    return b"".join(bytes(p) for p in packets)


def decode_image(data: bytes, codec: ImageCodec, width: int, height: int) -> np.ndarray:
    """Decodes bytes from `encode_image`; returns uint8 (height, width, 3) RGB.

    Raises BitstreamError (one line) for an unknown codec id, bytes that do not decode to
    exactly one picture, or a picture whose size is not width x height. Damaged bytes that
    still decode give a damaged picture, not an error.
    """
    try:
        codec = ImageCodec(codec)
    except ValueError:
        raise BitstreamError(f"unknown image codec id {codec}") from None
    if width < 1 or height < 1:
        raise ValueError(f"width and height must be positive, got {width}x{height}")
    if not data:
        raise BitstreamError(f"{codec.name} image is empty")

    ctx = _open_codec(_DECODERS[codec], "r")
    ctx.thread_count = 1
    # Refuse pictures far larger than announced before the decoder allocates them (a
    # hostile header cannot exhaust memory); a mere mismatch gets the clearer error below.
    ctx.options = {"max_pixels": str(4 * width * height)}
    try:
        frames = list(ctx.decode(av.Packet(bytes(data)))) + list(ctx.decode(None))
    except av.error.FFmpegError as e:
        raise BitstreamError(f"{codec.name} image does not decode: {_one_line(e)}") from None
    if len(frames) != 1:
        raise BitstreamError(f"{codec.name} image decodes to {len(frames)} pictures, not 1")
    frame = frames[0]
    if (frame.width, frame.height) != (width, height):
        raise BitstreamError(
            f"{codec.name} image is {frame.width}x{frame.height}, expected {width}x{height}"
        )
    try:
        rgb = frame.to_ndarray(
            format="rgb24",
            interpolation=_SWS_FLAGS,
            src_color_range="MPEG",
            dst_color_range="JPEG",
            **_COLOR,
        )
    except (av.error.FFmpegError, ValueError) as e:  # a damaged stream's odd pixel format
        raise BitstreamError(f"{codec.name} image does not convert: {_one_line(e)}") from None
    return np.ascontiguousarray(rgb)
