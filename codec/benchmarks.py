"""Benchmarks and data tools on ../shared/data: landmark tracks, shape-model fit, motion rate.

Tracks (smoothed landmarks in crop px, as the encoder sends them) are cached as .npz per
clip, so the face pipeline runs once per clip.
"""

from __future__ import annotations

import csv
import dataclasses
import hashlib
import math
from pathlib import Path

import numpy as np

from .errors import InputError


@dataclasses.dataclass(frozen=True)
class Clip:
    path: Path
    split: str
    kind: str
    identity: str
    fps: float


def read_manifest(data_dir, split: str | None = None) -> list[Clip]:
    """Clips listed in `data_dir/manifest.csv`, optionally only one split."""
    data = Path(data_dir)
    manifest = data / "manifest.csv"
    if not manifest.is_file():
        raise InputError(f"no manifest.csv in {data} (is ../shared/data present?)")
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    return [
        Clip(data / r["file"], r["split"], r["kind"], r["identity"], float(r["fps"]))
        for r in rows
        if split is None or r["split"] == split
    ]


def _track_cache_key(pipeline_config) -> str:
    return hashlib.sha256(repr(pipeline_config).encode()).hexdigest()[:10]


def clip_track(
    clip_path,
    cache_dir=None,
    max_frames: int | None = None,
    frame_stride: int | None = None,
    pipeline_config=None,
) -> dict[str, np.ndarray]:
    """Runs the encoder's face pipeline (its default config, or `pipeline_config`) over a clip.

    Returns landmarks float32 (T, 68, 2) smoothed, in crop px; recentred bool (T,);
    fps float; with `frame_stride`, also frame_landmarks float32 (T, 68, 2): every
    `frame_stride`-th crop's own landmarks, fitted as AKD fits its reference (the metric's
    dlib detection and shape fit on the crop), NaN elsewhere and where no face is found.
    Cached in `cache_dir` when given.
    """
    from encoder.pipeline import FacePipeline, PipelineConfig, face_frames

    from .evaluation.metrics import face_reference
    from .video import probe_video, read_frames

    clip_path = Path(clip_path)
    config = pipeline_config or PipelineConfig()
    cache = None
    if cache_dir is not None:
        tag = f"{clip_path.stem}.{_track_cache_key(config)}.{max_frames or 'all'}.f{frame_stride or 0}"
        cache = Path(cache_dir) / f"{tag}.npz"
        if cache.is_file():
            with np.load(cache) as z:
                return {k: z[k] for k in z.files}
    info = probe_video(clip_path)
    pipeline = FacePipeline(float(info.fps), info.width, info.height, config)
    lms, rec, own = [], [], []
    for face in face_frames(read_frames(clip_path, max_frames), pipeline):
        lms.append(face.landmarks)
        rec.append(face.recentred)
        if frame_stride:
            ref = face_reference(face.crop()) if face.index % frame_stride == 0 else None
            own.append(
                np.full((68, 2), np.nan) if ref is None or ref.box is None else ref.landmarks
            )
    out = {
        "landmarks": np.array(lms, np.float32),
        "recentred": np.array(rec, bool),
        "fps": np.float64(info.fps),
    }
    if frame_stride:
        out["frame_landmarks"] = np.array(own, np.float32)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.savez(cache, **out)
    return out


def _segments(track: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Splits a track at crop re-centres (each starts a key frame)."""
    cuts = (
        [0]
        + [int(i) for i in np.flatnonzero(track["recentred"]) if i > 0]
        + [len(track["landmarks"])]
    )
    return [track["landmarks"][a:b] for a, b in zip(cuts[:-1], cuts[1:]) if b > a]


def _tracks(
    clips: list[Clip], cache, quiet: bool, frame_stride: int | None = None, pipeline_config=None
) -> list[dict[str, np.ndarray]]:
    from tqdm import tqdm

    out = []
    for clip in tqdm(clips, desc="landmark tracks", unit="clip", disable=quiet):
        try:
            out.append(clip_track(clip.path, cache, None, frame_stride, pipeline_config))
        except InputError as e:
            print(f"skipped {clip.path.name}: {e}")
    return out


def fit_shape_model_on_data(data_dir, output, cache=None, quiet: bool = False) -> str:
    """Fits the shape model on the train split and writes it to `output`."""
    from .motion import fit_shape_model

    clips = read_manifest(data_dir, "train")
    segments = [s for t in _tracks(clips, cache, quiet) for s in _segments(t)]
    model = fit_shape_model(segments, max_coeffs=60)
    model.save(output)
    frames = sum(len(s) for s in segments)
    var = model.stddev**2
    explained = np.cumsum(var) / var.sum()
    return (
        f"fitted on {len(clips)} train clips, {frames} frames; scale0 {model.scale0:.1f} px; "
        f"variance kept by 10/20/30 coefficients: {explained[9]:.4f}/{explained[19]:.4f}/"
        f"{explained[29]:.4f}; wrote {output} (digest {model.digest.hex()})"
    )


FRAME_STRIDE = 5  # bench-motion fits the crops' own landmarks on every 5th frame (dlib, slow)


@dataclasses.dataclass
class MotionResult:
    name: str
    frames: int
    fps: float
    bits: int  # continuous stream, all MOTION payload bits
    reset_bits: int  # per-frame reset coder, whole bytes a frame (ideal)
    reset_sealed_bits: int  # per-frame reset constriction coder, sealed words
    rms: float  # RMS landmark error over all frames and points, px
    max_rms: float
    frame_err: float = math.nan  # mean px from the frame's own landmarks (frame_landmarks)


def code_track(track: dict[str, np.ndarray], config) -> MotionResult:
    """Runs the motion coder over a track exactly as the encoder does, with baselines."""
    import constriction

    from .motion import (
        MotionDecoder,
        MotionEncoder,
        _categorical,
        _residual_symbols,
        default_shape_model,
        rms_error,
    )

    model = default_shape_model()
    bits = reset_bits = sealed_bits = 0
    errors, sent = [], []
    for seg in _segments(track):
        enc, dec = MotionEncoder(config, model), MotionDecoder(config, model)
        payload, decoded = enc.intra(seg[0], 0)
        dec.intra(payload)
        errors.append(rms_error(decoded, seg[0]))
        sent.append(decoded)
        initial = enc.state.models.probabilities()
        chunks = []
        for pts in seg[1:]:
            before = enc.state.previous.copy()
            decoded, ready = enc.inter(pts)
            errors.append(rms_error(decoded, pts))
            sent.append(decoded)
            chunks += ready
            symbols, _ = _residual_symbols(enc.state.previous - before)
            info = -np.log2(initial[np.arange(len(symbols)), symbols]).sum()
            reset_bits += 8 * math.ceil(info / 8)
            coder = constriction.stream.queue.RangeEncoder()
            coder.encode(symbols, _categorical(), initial)
            sealed_bits += 32 * coder.num_words()
        chunks += enc.seal()
        for _, data in chunks:  # decode too: the benchmark checks the stream it measures
            dec.inter(data)
        bits += sum(8 * len(d) for _, d in chunks)
    frame_err = math.nan
    own = track.get("frame_landmarks")
    if own is not None:
        dist = np.linalg.norm(np.array(sent) - own, axis=2).mean(axis=1)  # NaN: not fitted
        frame_err = float(np.nanmean(dist)) if np.isfinite(dist).any() else math.nan
    return MotionResult(
        "",
        len(track["landmarks"]),
        float(track["fps"]),
        bits,
        reset_bits,
        sealed_bits,
        float(np.sqrt(np.mean(np.square(errors)))),
        float(np.max(errors)),
        frame_err,
    )


def bench_motion(
    data_dir,
    split: str = "val",
    max_clips: int | None = None,
    motion_step: float | None = None,
    num_coeffs: int | None = None,
    cache=None,
    quiet: bool = False,
    smoothing: tuple[float, float] | None = None,
) -> str:
    """Motion rate and landmark error on a split; returns a Markdown table. smoothing:
    (min cutoff Hz, beta) of the encoder's One-Euro filter instead of its defaults."""
    from encoder.pipeline import PipelineConfig

    from .motion import MotionConfig

    # The landmarks' part of the motion stream: the camera's needs the crops (it is in
    # `gracecodec bench` and `gracecodec eval`, which code whole streams).
    config = MotionConfig(camera=False)
    if motion_step is not None:
        config = dataclasses.replace(config, step_px=motion_step)
    if num_coeffs is not None:
        config = dataclasses.replace(config, num_coeffs=num_coeffs)
    clips = read_manifest(data_dir, split)[:max_clips]
    rows = []
    pipeline = PipelineConfig()
    if smoothing is not None:
        pipeline = dataclasses.replace(
            pipeline, smooth_min_cutoff=smoothing[0], smooth_beta=smoothing[1]
        )
    for clip, track in zip(clips, _tracks(clips, cache, quiet, FRAME_STRIDE, pipeline)):
        r = code_track(track, config)
        r.name = clip.path.stem[-40:]
        rows.append(r)
    if not rows:
        raise InputError("no clip could be tracked")

    def kbps(bits: int, r: MotionResult) -> float:
        return bits * r.fps / r.frames / 1000

    lines = [
        f"smoothing {pipeline.smooth_min_cutoff} Hz, beta {pipeline.smooth_beta}; "
        f"motion coder: {config.num_coeffs} coefficients, step {config.step_px} px; "
        f"{len(rows)} {split} clips of {data_dir}",
        "",
        "| clip | frames | fps | kbit/s | bits/frame | RMS err px | worst frame px "
        "| from the frame px | reset+byte-aligned kbit/s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r.name} | {r.frames} | {r.fps:.2f} | {kbps(r.bits, r):.3f} | "
            f"{r.bits / r.frames:.1f} | {r.rms:.3f} | {r.max_rms:.3f} | {r.frame_err:.3f} | "
            f"{kbps(r.reset_bits, r):.3f} |"
        )
    frames = sum(r.frames for r in rows)
    mean_kbps = np.mean([kbps(r.bits, r) for r in rows])
    mean_reset = np.mean([kbps(r.reset_bits, r) for r in rows])
    mean_sealed = np.mean([kbps(r.reset_sealed_bits, r) for r in rows])
    rms = np.sqrt(sum(r.rms**2 * r.frames for r in rows) / frames)
    frame_err = np.nanmean([r.frame_err for r in rows])
    lines += [
        f"| **mean** | {frames} | | **{mean_kbps:.3f}** | | **{rms:.3f}** | "
        f"{max(r.max_rms for r in rows):.3f} | **{frame_err:.3f}** | {mean_reset:.3f} |",
        "",
        "RMS err: the decoded landmarks against the smoothed track the encoder sends (the "
        "coder's own error). From the frame: their mean distance from the landmarks dlib "
        f"fits on every {FRAME_STRIDE}th crop itself, as AKD fits its reference; this one "
        "also counts what the smoothing moved.",
        "",
        f"Continuous adaptive stream: {mean_kbps:.3f} kbit/s. Resetting the coder every frame "
        f"and rounding each frame up to whole bytes (the public reference's framing, with an "
        f"ideal coder and our initial models): {mean_reset:.3f} kbit/s "
        f"({mean_reset / mean_kbps:.1f}x); a reset constriction coder sealed per frame: "
        f"{mean_sealed:.3f} kbit/s ({mean_sealed / mean_kbps:.1f}x).",
    ]
    return "\n".join(lines)


def bench_codec(
    data_dir,
    split: str = "val",
    max_clips: int | None = None,
    backend: str | None = None,
    quiet: bool = False,
) -> str:
    """Encodes and decodes each clip with the default settings; returns a Markdown table
    of rate (key frames, motion, low-pass residual, total) and speed (encode and decode
    frames/s)."""
    import os
    import platform
    import tempfile

    from tqdm import tqdm

    from .bitstream import PacketKind
    from .commands import decode_file, encode_file, stream_info

    clips = read_manifest(data_dir, split)[:max_clips]
    lines = [
        "| clip | frames | fps | key frames | key-frame kbit | motion kbit/s | low-pass kbit/s "
        "| total kbit/s | encode frames/s | decode frames/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    totals = []
    with tempfile.TemporaryDirectory() as tmp:
        for clip in tqdm(clips, desc="bench", unit="clip", disable=quiet):
            agc, out = Path(tmp) / "c.agc", Path(tmp) / "c.mkv"
            try:
                enc = encode_file(clip.path, agc)
                dec = decode_file(agc, out, backend=backend)
            except InputError as e:
                lines.append(f"| {clip.path.stem[-40:]} | failed: {e} |")
                continue
            info = stream_info(agc)
            key = info.key_bytes * 8 / 1000
            n_key = info.keyframes
            row = (
                info.frames,
                float(info.header.fps),
                n_key,
                key,
                info.kbps(info.motion_bytes),
                info.kbps(info.payload_bytes[PacketKind.LOWPASS]),
                info.kbps(info.file_bytes),
                enc.frames / enc.seconds,
                dec.frames / dec.seconds,
            )
            totals.append(row)
            lines.append(
                f"| {clip.path.stem[-40:]} | {row[0]} | {row[1]:.2f} | {n_key} | {key / n_key:.1f} each "
                f"| {row[4]:.3f} | {row[5]:.3f} | {row[6]:.2f} | {row[7]:.1f} | {row[8]:.1f} |"
            )
    if not totals:
        raise InputError("no clip could be coded")
    t = np.array(totals, dtype=np.float64)
    lines.append(
        f"| **mean** | {int(t[:, 0].sum())} | | {t[:, 2].mean():.2f} | {t[:, 3].sum() / t[:, 2].sum():.1f} each "
        f"| {t[:, 4].mean():.3f} | {t[:, 5].mean():.3f} | {t[:, 6].mean():.2f} | {t[:, 7].mean():.1f} "
        f"| {t[:, 8].mean():.1f} |"
    )
    head = (
        f"{len(totals)} {split} clips of {data_dir}; default settings (HEVC key frames at "
        f"quality 40, backend {backend or 'from the stream'}); {platform.machine()}, "
        f"{os.cpu_count()} CPU cores; encode speed includes decoding the "
        f"source video and face tracking."
    )
    return head + "\n\n" + "\n".join(lines)
