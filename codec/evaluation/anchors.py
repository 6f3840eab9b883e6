"""Conventional anchors: x264 and x265 through PyAV on the same 256x256 crop sequence.

Coding set-up (both): low delay, one IDR frame then P-frames only: no B-frames
(``bframes=0``), no periodic or scene-cut I-frames (x264 ``keyint=infinite``, x265
``keyint=-1``; ``scenecut=0``), no lookahead (``rc-lookahead=0``, x265 ``tune=zerolatency``),
constant QP (``qp=N``; both encoders' default ip-ratio of 1.4 codes the IDR at about N-3), preset
``medium``, one thread (deterministic, and the same footing as the single-threaded
gracecodec). Colour: RGB -> YUV 4:2:0 BT.601 limited range and back with the same
bit-exact swscale settings as gracecodec's key frames (`codec.keyframe`).

Rate: the bytes counted are the Annex B packets the encoder emits (VPS/SPS/PPS, slices),
minus the encoders' informational SEI:

- x265 is told not to write it (``info=0``; ``hash=0`` and ``aud=0`` keep the stream free
  of picture-hash SEI and access unit delimiters);
- x264 has no switch for its ``x264 - core ... options`` user-data SEI (~700 bytes), so
  every SEI NAL unit (H.264 type 6, HEVC types 39/40) whose messages are all
  ``user_data_unregistered`` (payload type 5) is cut out of the Annex B packets, start
  code included, before the bytes are counted. The same filter runs on x265's output
  (where it finds nothing) and the bytes removed are reported.

The decoder is fed exactly the counted (filtered) bytes, so the rate and the pictures
scored belong to the same stream.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from fractions import Fraction

import av
import numpy as np

from ..errors import BackendUnavailableError, GraceError, InputError
from ..keyframe import _COLOR, _SWS_FLAGS

ANCHOR_CODECS = ("x264", "x265")
DEFAULT_QPS = (37, 39, 41, 43, 45, 47, 49, 51)
QUICK_QPS = (37, 44, 51)

_ENCODERS = {"x264": "libx264", "x265": "libx265"}
_DECODERS = {"x264": "h264", "x265": "hevc"}
_SEI_TYPES = {"x264": {6}, "x265": {39, 40}}
_USER_DATA_UNREGISTERED = 5


@dataclasses.dataclass
class AnchorResult:
    """One anchor run: the decoded frames and what was counted for the rate.

    frames: uint8 (H, W, 3) RGB, one per input frame, in order. packets: the coded
    packets as counted (SEI removed). sei_bytes_removed: the informational SEI cut out.
    """

    codec: str
    qp: int
    frames: list[np.ndarray]
    packets: list[bytes]
    sei_bytes_removed: int
    keyframes: int
    encode_seconds: float
    decode_seconds: float

    @property
    def coded_bytes(self) -> int:
        return sum(len(p) for p in self.packets)

    def kbps(self, fps: float) -> float:
        """Counted video bits per second / 1000 at `fps` frames a second."""
        return self.coded_bytes * 8 * fps / len(self.frames) / 1000


def _options(codec: str, qp: int, preset: str) -> dict[str, str]:
    if codec == "x264":
        params = (
            "qp={}:bframes=0:keyint=infinite:scenecut=0:rc-lookahead=0:sync-lookahead=0:threads=1"
        )
        return {"preset": preset, "x264-params": params.format(qp)}
    params = [
        f"qp={qp}",
        "bframes=0",
        "keyint=-1",  # x265: one I-frame at the start, never another
        "scenecut=0",
        "rc-lookahead=0",
        "info=0",  # no SEI with the option string (~2 KB)
        "hash=0",
        "aud=0",
        "annexb=1",
        "log-level=none",
        "pools=none",
        "frame-threads=1",
        "lookahead-slices=0",
    ]
    return {"preset": preset, "tune": "zerolatency", "x265-params": ":".join(params)}


def _nal_type(codec: str, header: int) -> int:
    return header & 0x1F if codec == "x264" else (header >> 1) & 0x3F


def _only_user_data(sei_rbsp: bytes) -> bool:
    """True when every SEI message in the RBSP is user_data_unregistered."""
    sei_rbsp = sei_rbsp.rstrip(b"\x00")  # trailing_zero_8bits before the next start code
    i, kinds = 0, []
    while i < len(sei_rbsp) and sei_rbsp[i:] != b"\x80":  # 0x80: rbsp trailing bits
        ptype = psize = 0
        while i < len(sei_rbsp) and sei_rbsp[i] == 0xFF:
            ptype, i = ptype + 255, i + 1
        if i >= len(sei_rbsp):
            return False
        ptype, i = ptype + sei_rbsp[i], i + 1
        while i < len(sei_rbsp) and sei_rbsp[i] == 0xFF:
            psize, i = psize + 255, i + 1
        if i >= len(sei_rbsp):
            return False
        psize, i = psize + sei_rbsp[i], i + 1
        i += psize
        if i > len(sei_rbsp):
            return False  # malformed: keep the NAL unit (and count it)
        kinds.append(ptype)
    return bool(kinds) and all(k == _USER_DATA_UNREGISTERED for k in kinds)


def _unescape(nal: bytes) -> bytes:
    """NAL payload -> RBSP: drops the emulation-prevention 0x03 of each 00 00 03."""
    return nal.replace(b"\x00\x00\x03", b"\x00\x00")


def strip_info_sei(data: bytes, codec: str) -> tuple[bytes, int]:
    """Cuts user-data-only SEI NAL units out of an Annex B packet; returns (bytes, removed)."""
    starts = []
    i = data.find(b"\x00\x00\x01")
    while i >= 0:
        starts.append((i - 1 if i > 0 and data[i - 1] == 0 else i, i + 3))
        i = data.find(b"\x00\x00\x01", i + 3)
    if not starts:
        raise GraceError(f"{codec} packet is not Annex B (no start code): cannot filter its SEI")
    kept, removed = [data[: starts[0][0]]], 0
    header_len = 1 if codec == "x264" else 2
    for k, (begin, nal) in enumerate(starts):
        end = starts[k + 1][0] if k + 1 < len(starts) else len(data)
        unit = data[begin:end]
        if (
            nal < end
            and _nal_type(codec, data[nal]) in _SEI_TYPES[codec]
            and _only_user_data(_unescape(data[nal + header_len : end]))
        ):
            removed += len(unit)
        else:
            kept.append(unit)
    return b"".join(kept), removed


def _open(name: str, mode: str) -> av.CodecContext:
    try:
        return av.CodecContext.create(name, mode)
    except av.codec.codec.UnknownCodecError:
        raise BackendUnavailableError(
            f"{name} is missing from this PyAV build: pip install 'av>=12,<19'"
        ) from None


def encode_anchor(
    crops: Sequence[np.ndarray],
    codec: str,
    qp: int,
    fps: Fraction = Fraction(25),
    preset: str = "medium",
) -> AnchorResult:
    """Codes `crops` (uint8 (H, W, 3) RGB, even sides) with an anchor and decodes them back.

    Raises GraceError when the decoded frames are not one per input frame in order.
    """
    if codec not in _ENCODERS:
        raise InputError(f"unknown anchor {codec!r}; choose from {', '.join(ANCHOR_CODECS)}")
    if not crops:
        raise InputError("no frames to code")
    h, w = crops[0].shape[:2]
    enc = _open(_ENCODERS[codec], "w")
    enc.width, enc.height, enc.pix_fmt = w, h, "yuv420p"
    enc.time_base = 1 / Fraction(fps)
    enc.framerate = Fraction(fps)
    enc.thread_count = 1
    enc.options = _options(codec, qp, preset)

    start = time.perf_counter()
    raw: list[av.Packet] = []
    for i, crop in enumerate(crops):
        rgb = av.VideoFrame.from_ndarray(np.ascontiguousarray(crop), format="rgb24")
        frame = rgb.reformat(
            format="yuv420p",
            interpolation=_SWS_FLAGS,
            src_color_range="JPEG",
            dst_color_range="MPEG",
            **_COLOR,
        )
        frame.pts = i
        raw += enc.encode(frame)
    raw += enc.encode(None)
    if [p.pts for p in raw] != list(range(len(crops))):
        # Packets out of display order mean B-frames or reordering: not a low-delay anchor.
        raise GraceError(f"{codec} qp {qp}: packets are not in display order")
    packets, removed = [], 0
    for p in raw:
        data, cut = strip_info_sei(bytes(p), codec)
        packets.append(data)
        removed += cut
    encode_seconds = time.perf_counter() - start

    dec = _open(_DECODERS[codec], "r")
    dec.thread_count = 1  # frame threads would only add delay
    start = time.perf_counter()
    frames, pts = [], []
    for data, p in zip(packets, raw, strict=True):
        packet = av.Packet(data)
        packet.pts, packet.dts = p.pts, p.dts
        for f in dec.decode(packet):
            frames.append(f)
    frames += dec.decode(None)
    out = []
    for f in frames:
        pts.append(f.pts)
        out.append(
            np.ascontiguousarray(
                f.to_ndarray(
                    format="rgb24",
                    interpolation=_SWS_FLAGS,
                    src_color_range="MPEG",
                    dst_color_range="JPEG",
                    **_COLOR,
                )
            )
        )
    decode_seconds = time.perf_counter() - start
    if pts != list(range(len(crops))):
        raise GraceError(
            f"{codec} qp {qp}: frame alignment broken: {len(crops)} frames in, "
            f"{len(out)} out (pts {pts[:5]}...)"
        )
    keyframes = sum(p.is_keyframe for p in raw)
    return AnchorResult(codec, qp, out, packets, removed, keyframes, encode_seconds, decode_seconds)
