"""File-level operations behind the CLI: encode a video, decode a stream, describe a stream."""

from __future__ import annotations

import dataclasses
import io
import time
from collections import Counter
from collections.abc import Callable, Iterable
from fractions import Fraction
from pathlib import Path

from .bitstream import (
    FILE_KEY_SEARCH,
    FILE_MOTION_GROUP,
    KEY_KINDS,
    MOTION_KINDS,
    AgcReader,
    AgcWriter,
    Header,
    Packet,
    PacketKind,
    coded_bytes,
    motion_chunks,
)
from .errors import BitstreamError, GraceError, InputError
from .fileio import atomic_output, check_writable
from .lowpass import DEFAULT_MIN_GAIN

Progress = Callable[[Iterable, int | None], Iterable]


def _no_progress(it: Iterable, total: int | None) -> Iterable:
    return it


@dataclasses.dataclass
class EncodeStats:
    frames: int = 0
    keyframes: int = 0
    refreshes: int = 0  # key frames sent because the rendered quality dropped
    references: int = 0  # key frames chosen from later in their segment (REFERENCE packets)
    key_qualities: list[int] = dataclasses.field(default_factory=list)  # of each key frame
    lost_frames: int = 0
    bytes_total: int = 0
    seconds: float = 0.0
    fps: Fraction = Fraction(25)

    def summary(self) -> str:
        duration = self.frames / self.fps if self.frames else 1
        kbps = self.bytes_total * 8 / float(duration) / 1000
        speed = self.frames / self.seconds if self.seconds else 0.0
        refreshes = f", {self.refreshes} quality refreshes" if self.refreshes else ""
        if self.references:
            refreshes += f", {self.references} chosen from later in their segment"
        qualities = sorted(set(self.key_qualities))
        if len(qualities) > 4:
            qualities = [qualities[0], "...", qualities[-1]]
        at = f" at quality {' '.join(map(str, qualities))}" if qualities else ""
        return (
            f"encoded {self.frames} frames ({self.keyframes} key frames{at}{refreshes}, "
            f"{self.lost_frames} without a detected face) into {self.bytes_total} bytes, "
            f"{kbps:.2f} kbit/s, {speed:.1f} frames/s"
        )


@dataclasses.dataclass
class DecodeStats:
    frames: int = 0
    seconds: float = 0.0
    backend: str = ""
    replay: object = None  # decoder_fpga.replay.ReplayStats when decoding with --replay

    def summary(self) -> str:
        speed = self.frames / self.seconds if self.seconds else 0.0
        text = f"decoded {self.frames} frames with backend {self.backend!r}, {speed:.1f} frames/s"
        if self.replay is not None:
            r = self.replay
            text += (
                f"; replay: {100 * r.tile_fraction:.1f} % of tiles reused, "
                f"{r.frames_skipped} frames not rendered"
            )
        return text


def encode_file(
    input_path,
    output_path,
    *,
    key_codec: str = "hevc",
    key_quality: int = 40,
    keyframe_interval: int = 0,
    max_frames: int | None = None,
    detector: str = "dlib",
    motion_step: float | None = None,
    camera_motion: bool = True,
    ring_motion: bool = True,
    lowpass_interval: int = 0,
    lowpass_min_gain: float = DEFAULT_MIN_GAIN,
    motion_group: int = FILE_MOTION_GROUP,
    refresh_drop_db: float = 0.0,
    target_kbps: float = 0.0,
    key_search: int = FILE_KEY_SEARCH,
    model: str | None = None,
    progress: Progress = _no_progress,
) -> EncodeStats:
    """Encodes a video file into an .agc file; the output appears only on success."""
    from encoder.encoder import Encoder, EncoderConfig
    from encoder.pipeline import PipelineConfig

    from .motion import MotionConfig
    from .video import probe_video, read_frames

    check_writable(output_path)
    model_id, model_digest = _stream_model(model)
    info = probe_video(input_path)
    motion = MotionConfig(camera=camera_motion, ring=ring_motion)
    if motion_step is not None:
        motion = dataclasses.replace(motion, step_px=motion_step)
    config = EncoderConfig(
        key_codec=key_codec,
        key_quality=key_quality,
        keyframe_interval=keyframe_interval,
        motion=motion,
        pipeline=PipelineConfig(detector=detector),
        model_id=model_id,
        model_digest=model_digest,
        lowpass_interval=lowpass_interval,
        lowpass_min_gain=lowpass_min_gain,
        motion_group=motion_group,
        refresh_drop_db=refresh_drop_db,
        target_kbps=target_kbps,
        key_search=key_search,
    )
    total = min(info.frame_count, max_frames or info.frame_count) or max_frames
    # The container's frame count (a hint: rate control's horizon) until the real one is known.
    enc = Encoder(config, info.fps, info.width, info.height, frame_count=total or 0)
    stats = EncodeStats(fps=info.fps)
    start = time.perf_counter()
    # Packets are held in memory (a few kbit/s) until the frame count is known: the header
    # carries it, and a varint cannot be patched in place.
    packets = io.BytesIO()
    writer = AgcWriter(packets, enc.header)

    def write(batch: list[Packet]) -> None:
        for p in batch:
            writer.write(p)
            stats.frames += p.kind == PacketKind.KEYFRAME
            stats.frames += len(motion_chunks(p)) if p.kind in MOTION_KINDS else 0
            stats.keyframes += p.kind in KEY_KINDS
            stats.references += p.kind == PacketKind.REFERENCE

    for frame in progress(read_frames(input_path, max_frames), total):
        write(enc.encode(frame))
    write(enc.flush())
    writer.close()
    body = packets.getvalue()[len(enc.header.to_bytes()) :]
    header = dataclasses.replace(enc.header, frame_count=stats.frames).to_bytes()
    with atomic_output(output_path) as tmp:
        tmp.write_bytes(header + body)
    stats.bytes_total = len(header) + len(body)
    stats.seconds = time.perf_counter() - start
    stats.lost_frames = enc.pipeline.lost_frames
    stats.refreshes = enc.refreshes
    stats.key_qualities = enc.key_qualities
    return stats


def _stream_model(model: str | None) -> tuple[str, bytes]:
    """(model id, weights digest) a new stream names: the chosen model, or the default."""
    from .generators import default_model
    from .generators.torch_backend import model_card

    if model is None:
        return default_model()
    if model == "warp":
        return "warp", b""
    card = model_card(model)
    if card is None:
        raise GraceError(f"no weights for model {model!r} ship with this build")
    return card["arch"], bytes.fromhex(card["digest"])


def decode_file(
    input_path,
    output_path,
    *,
    backend: str | None = None,
    replay_px: float | None = None,
    progress: Progress = _no_progress,
) -> DecodeStats:
    """Decodes an .agc file into a video file; the output appears only on success.

    replay_px: temporal replay (decoder_fpga.replay): reuse the cached 32-px tiles whose
    landmark motion since they were computed is below this many pixels; None: off.
    """
    from .decoder import Decoder
    from .video import BackgroundVideoWriter

    check_writable(output_path)
    if replay_px is not None and not 0 <= replay_px <= 64:
        raise InputError(f"replay threshold {replay_px} px is outside [0, 64]")
    with _open_stream(input_path) as f:
        reader = AgcReader(f)
        header = reader.header
        decoder = Decoder(header, backend)
        stats = DecodeStats(backend=decoder.backend)
        if replay_px is not None:
            from decoder_fpga.replay import ReplayGenerator

            decoder.generator = ReplayGenerator(decoder.generator, replay_px)
            stats.replay = decoder.generator.stats
        start = time.perf_counter()
        # The video encoder runs on its own thread, beside the rendering.
        with BackgroundVideoWriter(output_path, header.fps, header.width, header.height) as out:
            # Progress counts frames: a MOTION_GROUP packet holds many, a REFERENCE none.
            frames = decoder.decode_packets(reader)
            for frame in progress(frames, header.frame_count or None):
                out.write(frame)
                stats.frames += 1
            if stats.frames == 0:
                raise BitstreamError("the stream holds no frames")
    stats.seconds = time.perf_counter() - start
    return stats


def _open_stream(path):
    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such file")
    return open(p, "rb")


@dataclasses.dataclass
class StreamInfo:
    header: Header
    file_bytes: int
    packets: Counter  # kind -> count
    payload_bytes: Counter  # kind -> payload bytes (a MOTION_GROUP's: its words only)
    key_codecs: Counter  # ImageCodec name -> count
    motion_frames: int  # frames in MOTION and MOTION_GROUP packets

    @property
    def frames(self) -> int:
        return self.packets[PacketKind.KEYFRAME] + self.motion_frames

    @property
    def keyframes(self) -> int:
        """Key frames of either kind (shown, or a reference only)."""
        return sum(self.packets[k] for k in KEY_KINDS)

    @property
    def key_bytes(self) -> int:
        return sum(self.payload_bytes[k] for k in KEY_KINDS)

    @property
    def motion_bytes(self) -> int:
        return self.payload_bytes[PacketKind.MOTION] + self.payload_bytes[PacketKind.MOTION_GROUP]

    @property
    def duration(self) -> float:
        return float(self.frames / self.header.fps) if self.frames else 0.0

    def kbps(self, nbytes: int) -> float:
        return nbytes * 8 / self.duration / 1000 if self.duration else 0.0

    def report(self) -> str:
        h = self.header
        key = self.key_bytes
        motion, n_motion = self.motion_bytes, self.motion_frames
        lowpass = self.payload_bytes[PacketKind.LOWPASS]
        framing = self.file_bytes - key - motion - lowpass
        n_key, n_lowpass = self.packets[PacketKind.KEYFRAME], self.packets[PacketKind.LOWPASS]
        n_ref = self.packets[PacketKind.REFERENCE]
        n_single, n_group = self.packets[PacketKind.MOTION], self.packets[PacketKind.MOTION_GROUP]
        n_known = n_key + n_ref + n_single + n_group + n_lowpass
        codecs = ", ".join(f"{k} x{v}" for k, v in sorted(self.key_codecs.items())) or "-"
        lines = [
            f"format       .agc {h.model_id!r} model"
            + (f" (digest {h.model_digest.hex()})" if h.model_digest else " (no weights)"),
            f"video        {h.width}x{h.height} at {float(h.fps):.3f} fps ({h.fps}), "
            f"{self.frames} frames, {self.duration:.2f} s",
            f"landmarks    {h.landmark_scheme.name}, {motion_description(h.motion_params)}",
            f"packets      {n_key} KEYFRAME, {n_ref} REFERENCE ({codecs}), {n_single} MOTION, {n_group} "
            f"MOTION_GROUP ({n_motion} motion frames), {n_lowpass} LOWPASS, "
            f"{sum(self.packets.values()) - n_known} other",
            "rate         bytes      kbit/s",
            f"  key frames {key:<10d} {self.kbps(key):.3f}",
            f"  motion     {motion:<10d} {self.kbps(motion):.3f}"
            + (f"   ({motion * 8 / max(n_motion, 1):.1f} bits a frame)" if n_motion else ""),
            f"  low-pass   {lowpass:<10d} {self.kbps(lowpass):.3f}"
            + (f"   ({lowpass / n_lowpass:.1f} bytes an update)" if n_lowpass else ""),
            f"  framing    {framing:<10d} {self.kbps(framing):.3f}   (header, packet headers, CRCs)",
            f"  total      {self.file_bytes:<10d} {self.kbps(self.file_bytes):.3f}",
        ]
        return "\n".join(lines)


def motion_description(params: bytes) -> str:
    """The header's motion coder parameters in words, or why this build cannot read them."""
    from .motion import MotionConfig, default_shape_model

    try:
        return MotionConfig.from_bytes(params, default_shape_model()).describe()
    except BitstreamError as e:
        return f"motion parameters {params.hex()} ({e})"


def stream_info(path) -> StreamInfo:
    """Reads a whole .agc file (checking every CRC) and tallies its packets."""
    from .keyframe import ImageCodec

    packets: Counter = Counter()
    payload: Counter = Counter()
    codecs: Counter = Counter()
    motion_frames = 0
    with _open_stream(path) as f:
        reader = AgcReader(f)
        for p in reader:
            packets[p.kind] += 1
            payload[p.kind] += coded_bytes(p)
            motion_frames += len(motion_chunks(p)) if p.kind in MOTION_KINDS else 0
            if p.kind in KEY_KINDS and p.payload:
                try:
                    codecs[ImageCodec(p.payload[0]).name] += 1
                except ValueError:
                    codecs["unknown"] += 1
        size = f.tell()
    return StreamInfo(reader.header, size, packets, payload, codecs, motion_frames)
