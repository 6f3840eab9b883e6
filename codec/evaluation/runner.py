"""`run_eval`: gracecodec against x264/x265 on a set of clips; tables, plots and a summary.

For every clip:

1. The encoder's own face pipeline (`encoder.pipeline.FacePipeline`) runs once and its
   256x256 crops are kept in memory: they are the originals every codec is scored against.
2. gracecodec codes them at each operating point (key-frame quality x key-frame interval)
   through the real `Encoder` (its pipeline replaced by a replay of the stored crops, so
   tracking runs once), into an in-memory .agc stream that `AgcReader` + `Decoder` decode
   with each available backend.
3. The anchors (`anchors.encode_anchor`) code the same crops at each QP.
4. Metrics (`metrics`) are computed per frame against the crops and averaged per clip.

Rates: gracecodec's kbit/s counts the whole .agc stream (header, packet headers, CRCs,
END packet) over the clip's duration (frames / fps); ``payload_kbps`` counts only the
KEYFRAME and MOTION payloads. The anchors' kbit/s counts their coded packets without the
informational SEI (see `anchors`). Speeds are wall time on this machine, one process:
gracecodec's encode time includes the face pipeline (tracking, smoothing, cropping), the
key-frame search (both run once per clip and charged to each operating point) plus motion
and key-frame coding; decode time covers parsing, key-frame decoding and rendering
(backend construction excluded). Anchors: colour conversion plus coding.

BD-rate (Bjøntegaard delta rate) against x265, per clip and metric: log10(rate) as a
function of quality is interpolated with a piecewise cubic Hermite (PCHIP) through each
curve's points, both are integrated over the quality interval the two curves share, and
the mean log-rate difference d gives (10^d - 1) x 100 %. Negative: fewer bits for the
same quality. For AKD and AED (lower is better) the quality axis is the negated metric.
Without overlap the value is "n/a". The table gives the mean over the clips where it is
defined, and how many those are.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import platform
import shlex
import time
from collections import defaultdict
from collections.abc import Sequence
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from ..benchmarks import Clip
from ..bitstream import FILE_KEY_SEARCH, FILE_MOTION_GROUP
from ..errors import GraceError, InputError
from ..lowpass import DEFAULT_MIN_GAIN
from .anchors import ANCHOR_CODECS, DEFAULT_QPS, QUICK_QPS
from .metrics import CORE_METRICS, DIGITS, HIGHER_IS_BETTER, LABELS

VIDEO_EXTENSIONS = {".mp4", ".mov", ".mkv", ".webm", ".avi", ".mpg", ".mpeg", ".m4v"}
GRACE = "gracecodec"
STRIP_FRAMES = 4
# What a clip or a run may fail with and still be reported (FFmpeg errors are OSError or
# ValueError): the evaluation goes on with the next one.
_FAILURES = (GraceError, ValueError, RuntimeError, OSError)


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    qps: tuple[int, ...] = DEFAULT_QPS
    key_qualities: tuple[int, ...] = (20, 40, 60)
    keyframe_intervals: tuple[int, ...] = (0, 125)
    anchors: tuple[str, ...] = ANCHOR_CODECS
    backends: tuple[str, ...] | None = (
        "warp",
        "torch",
    )  # None: every registered backend (int8 and csim are slow)
    max_frames: int | None = None
    max_clips: int | None = None
    face_stride: int = 1  # AKD/AED on every n-th frame (the dlib descriptor is ~60 ms)
    preset: str = "medium"  # anchors' x264/x265 preset
    camera_motion: bool = True  # gracecodec streams carry the camera's motion
    ring_motion: bool = True  # and the ring's (with the camera's only: MotionConfig)
    lowpass_interval: int = 0  # gracecodec streams' low-pass residual updates (0: none)
    lowpass_min_gain: float = DEFAULT_MIN_GAIN  # dB per kbit an update must gain (EncoderConfig)
    motion_group: int = FILE_MOTION_GROUP  # gracecodec streams' frames per motion packet
    refresh_drop_db: float = 0.0  # closed-loop key-frame refresh (EncoderConfig); 0: off
    key_search: int = FILE_KEY_SEARCH  # frames a key frame is chosen among (EncoderConfig)
    # Rate targets (kbit/s) gracecodec streams are also coded at (EncoderConfig.target_kbps),
    # each backend's own curve beside its key qualities'.
    target_rates: tuple[float, ...] = ()


QUICK = EvalConfig(
    qps=QUICK_QPS, key_qualities=(20, 60), keyframe_intervals=(0,), max_frames=30, max_clips=2
)


@dataclasses.dataclass(frozen=True)
class Run:
    """One coding of a clip: a codec at an operating point."""

    codec: str  # gracecodec | x264 | x265
    backend: str = ""  # gracecodec's generator backend
    qp: int | None = None
    key_quality: int | None = None
    keyframe_interval: int | None = None
    target_kbps: float | None = None  # rate control instead of a fixed key quality

    @property
    def label(self) -> str:
        return f"{GRACE}/{self.backend}" if self.codec == GRACE else self.codec

    @property
    def curve(self) -> str:
        """The RD curve this run is a point of."""
        if self.codec != GRACE:
            return self.codec
        rate = " target" if self.target_kbps else ""
        return f"{self.label} ki={self.keyframe_interval}{rate}"

    @property
    def operating_point(self) -> str:
        if self.codec != GRACE:
            return f"qp={self.qp}"
        if self.target_kbps:
            return f"target={self.target_kbps:g} ki={self.keyframe_interval}"
        return f"kq={self.key_quality} ki={self.keyframe_interval}"


# ------------------------------------------------------------------------------------------
# Clips
# ------------------------------------------------------------------------------------------


def find_clips(source: str | os.PathLike, split: str | None = "val") -> list[Path]:
    """Clips from a manifest CSV (column `file`, optional `split`; split None or "all": every
    row) or a folder: its manifest.csv if it has one, else its video files, sorted."""
    src = Path(source)
    if src.is_dir() and (src / "manifest.csv").is_file():
        src = src / "manifest.csv"
    if src.is_file() and src.suffix.lower() == ".csv":
        with open(src, newline="") as f:
            rows = list(csv.DictReader(f))
        if rows and "file" not in rows[0]:
            raise InputError(f"{src}: a manifest needs a 'file' column")
        keep = split in (None, "all")
        clips = [src.parent / r["file"] for r in rows if keep or r.get("split") == split]
    elif src.is_dir():
        clips = sorted(p for p in src.iterdir() if p.suffix.lower() in VIDEO_EXTENSIONS)
    else:
        raise InputError(f"{src}: not a folder of videos or a manifest CSV")
    if not clips:
        raise InputError(f"{source}: no clips" + (f" in split {split!r}" if split else ""))
    return clips


class ReplayPipeline:
    """Stands in for the Encoder's FacePipeline: hands back the FaceFrames stored earlier,
    so tracking runs once per clip, not once per operating point. `Encoder.encode` is
    given a FaceFrame instead of a source frame (the tests feed made-up crops so too)."""

    lost_frames = 0

    def process(self, face: Any) -> list[Any]:
        return [face]

    def finish(self) -> None:
        pass


@dataclasses.dataclass
class _ClipData:
    name: str
    fps: Fraction
    faces: list[Any]  # FaceFrame whose image is the crop itself (saves memory)
    pipeline_seconds: float
    lost_frames: int
    # The key-frame search's answer and its seconds per held window (frame indices): the
    # same for every operating point of the clip, so searched once and charged to each.
    key_choices: dict[tuple[int, ...], tuple[int, float]] = dataclasses.field(default_factory=dict)

    @property
    def crops(self) -> list[np.ndarray]:
        return [f.image for f in self.faces]


def _prepare(path: Path, max_frames: int | None) -> _ClipData:
    """Runs the encoder's face pipeline over the clip; keeps only the crops."""
    from encoder.crop import CropBox
    from encoder.pipeline import FacePipeline

    from ..video import probe_video, read_frames

    info = probe_video(path)
    pipeline = FacePipeline(float(info.fps), info.width, info.height)
    faces, seconds = [], 0.0

    def keep(found: list[Any]) -> None:
        for face in found:
            size = face.crop_size
            # A box equal to the crop makes face.crop() return the crop unchanged.
            faces.append(dataclasses.replace(face, image=face.crop(), box=CropBox(0, 0, size)))

    for frame in read_frames(path, max_frames):
        start = time.perf_counter()
        found = pipeline.process(frame)
        seconds += time.perf_counter() - start
        keep(found)
    pipeline.finish()
    if [f.index for f in faces] != list(range(len(faces))):
        raise GraceError(f"{path.name}: the face pipeline returned frames out of order")
    return _ClipData(path.stem, info.fps, faces, seconds, pipeline.lost_frames)


# ------------------------------------------------------------------------------------------
# Coding
# ------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _Coded:
    frames: list[np.ndarray]
    total_bytes: int
    payload_bytes: int
    keyframes: int
    encode_seconds: float
    decode_seconds: float
    sei_bytes_removed: int = 0


def _code_grace(clip: _ClipData, run: Run, config: EvalConfig) -> _Coded:
    from encoder.encoder import Encoder, EncoderConfig, choose_key

    from ..bitstream import KEY_KINDS, AgcReader, AgcWriter, coded_bytes
    from ..decoder import Decoder
    from ..generators import MODEL_BACKENDS, default_model
    from ..motion import MotionConfig

    size = clip.faces[0].crop_size
    # The header names the model this backend decodes by default; the sender renders the
    # low-pass residual's frames with it too.
    model = next((m for m, b in MODEL_BACKENDS.items() if b == run.backend), "warp")
    default_id, default_digest = default_model()
    enc_config = EncoderConfig(
        key_quality=run.key_quality or 0,
        keyframe_interval=run.keyframe_interval,
        target_kbps=run.target_kbps or 0.0,
        motion=MotionConfig(camera=config.camera_motion, ring=config.ring_motion),
        model_id=model,
        model_digest=default_digest if model == default_id else b"",
        lowpass_interval=config.lowpass_interval,
        lowpass_min_gain=config.lowpass_min_gain,
        motion_group=config.motion_group,
        refresh_drop_db=config.refresh_drop_db,
        key_search=config.key_search,
    )
    enc = Encoder(enc_config, clip.fps, size, size, frame_count=len(clip.faces))  # as encode's
    enc.pipeline = ReplayPipeline()
    searched, fresh = [], []  # seconds of this run's key searches, all and run here

    def choose(faces: list[Any]) -> int:
        window = tuple(f.index for f in faces)
        if window not in clip.key_choices:
            start = time.perf_counter()
            k = choose_key(faces)
            fresh.append(time.perf_counter() - start)
            clip.key_choices[window] = (k, fresh[-1])
        k, seconds = clip.key_choices[window]
        searched.append(seconds)
        return k

    enc.choose_key = choose
    buf = io.BytesIO()
    payload = keyframes = 0
    start = time.perf_counter()
    writer = AgcWriter(buf, enc.header)
    for packets in [enc.encode(face) for face in clip.faces] + [enc.flush()]:
        for p in packets:
            writer.write(p)
            payload += coded_bytes(p)
            keyframes += p.kind in KEY_KINDS
    writer.close()
    encode_seconds = time.perf_counter() - start - sum(fresh) + sum(searched)
    encode_seconds += clip.pipeline_seconds

    buf.seek(0)
    reader = AgcReader(buf)
    decoder = Decoder(reader.header, run.backend)
    frames, pts = [], []
    start = time.perf_counter()
    for packet in reader:
        for i, frame in enumerate(decoder.decode(packet)):  # a MOTION_GROUP: several
            frames.append(frame)
            pts.append(packet.pts + i)
    decode_seconds = time.perf_counter() - start
    if pts != list(range(len(clip.faces))):
        raise GraceError(
            f"frame alignment broken: {len(clip.faces)} frames in, {len(frames)} decoded "
            f"(pts {pts[:5]}...)"
        )
    return _Coded(frames, writer.bytes_written, payload, keyframes, encode_seconds, decode_seconds)


def _code_anchor(clip: _ClipData, run: Run, preset: str) -> _Coded:
    from .anchors import encode_anchor

    r = encode_anchor(clip.crops, run.codec, run.qp, clip.fps, preset)
    return _Coded(
        r.frames,
        r.coded_bytes,
        r.coded_bytes,
        r.keyframes,
        r.encode_seconds,
        r.decode_seconds,
        r.sei_bytes_removed,
    )


def _plan(config: EvalConfig, backends: list[str]) -> list[Run]:
    runs = [
        Run(GRACE, backend=b, key_quality=q, keyframe_interval=k)
        for b in backends
        for k in config.keyframe_intervals
        for q in config.key_qualities
    ]
    runs += [
        Run(GRACE, backend=b, keyframe_interval=k, target_kbps=t)
        for b in backends
        for k in config.keyframe_intervals
        for t in config.target_rates
    ]
    return runs + [Run(c, qp=qp) for c in config.anchors for qp in config.qps]


def _usable_backends(config: EvalConfig) -> tuple[list[str], list[str]]:
    """Backends that build here, and a note for each that does not."""
    from ..generators import backend_names, make_generator

    usable, notes = [], []
    for name in config.backends or tuple(backend_names()):
        try:
            make_generator(name)
        except GraceError as e:  # BackendUnavailableError, ModelMismatchError, unknown name
            notes.append(f"backend {name!r} skipped: {e}")
            continue
        usable.append(name)
    return usable, notes


# ------------------------------------------------------------------------------------------
# BD-rate
# ------------------------------------------------------------------------------------------


def bd_rate(
    anchor_rate: Sequence[float],
    anchor_quality: Sequence[float],
    test_rate: Sequence[float],
    test_quality: Sequence[float],
    higher_is_better: bool = True,
) -> float | None:
    """Bjøntegaard delta rate (%) of the test curve against the anchor (PCHIP, see module
    docstring); None when the curves do not share a quality interval or have < 2 points."""
    from scipy.interpolate import PchipInterpolator

    curves = []
    for rate, quality in ((anchor_rate, anchor_quality), (test_rate, test_quality)):
        r, q = np.asarray(rate, np.float64), np.asarray(quality, np.float64)
        ok = np.isfinite(r) & np.isfinite(q) & (r > 0)
        q = q[ok] if higher_is_better else -q[ok]
        logr = np.log10(r[ok])
        qs = np.unique(q)
        if len(qs) < 2:
            return None
        # Equal qualities (a flat curve) are merged: PCHIP needs strictly increasing x.
        curves.append((qs, np.array([logr[q == v].mean() for v in qs])))
    lo = max(c[0][0] for c in curves)
    hi = min(c[0][-1] for c in curves)
    if hi <= lo:
        return None
    a, t = (PchipInterpolator(q, lr).integrate(lo, hi) for q, lr in curves)
    return float((10 ** ((t - a) / (hi - lo)) - 1) * 100)


def _bd_table(rows: list[dict], clips: list[str], metrics: list[str]) -> list[dict]:
    """Per test curve and metric: mean BD-rate vs x265 over the clips where it exists."""
    by_curve: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["clip"] in clips:
            by_curve[(r["clip"], r["curve"])].append(r)
    curves = sorted({c for _, c in by_curve if c != "x265"})
    table = []
    for curve in curves:
        entry: dict[str, Any] = {"curve": curve}
        for m in metrics:
            values = []
            for clip in clips:
                a, t = by_curve.get((clip, "x265"), []), by_curve.get((clip, curve), [])
                v = bd_rate(
                    [r["kbps"] for r in a],
                    [r[m] for r in a],
                    [r["kbps"] for r in t],
                    [r[m] for r in t],
                    HIGHER_IS_BETTER[m],
                )
                if v is not None:
                    values.append(v)
            entry[m] = float(np.mean(values)) if values else None
            entry[f"{m}_clips"] = len(values)
        table.append(entry)
    return table


ANCHOR_QP = 47  # the bar: x265 at QP 47 (the run's highest QP if it has no QP 47)


def _clip_counts(rows: list[dict], clips: list[str], metrics: list[str]) -> dict[str, Any]:
    """Per gracecodec operating point: on how many clips it codes fewer bits than the same
    clip's x265 anchor point, and on how many it is at least as good on each metric. Means
    hide spread: a mean ahead can come from a few clips far ahead and many behind."""
    x265 = [r for r in rows if r["clip"] in clips and r["codec"] == "x265"]
    qps = sorted({int(r["qp"]) for r in x265})
    if not qps:
        return {}
    qp = ANCHOR_QP if ANCHOR_QP in qps else qps[-1]
    anchor = {r["clip"]: r for r in x265 if int(r["qp"]) == qp}
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["clip"] in anchor and r["codec"].startswith(GRACE):
            groups[(r["codec"], r["operating_point"])].append(r)
    table = []
    for (codec, op), rs in sorted(groups.items()):
        entry: dict[str, Any] = {"codec": codec, "operating_point": op, "clips": len(rs)}
        entry["lower_rate"] = sum(r["kbps"] <= anchor[r["clip"]]["kbps"] for r in rs)
        for m in metrics:
            sign = 1 if HIGHER_IS_BETTER[m] else -1
            entry[m] = sum(sign * (r[m] - anchor[r["clip"]][m]) >= 0 for r in rs)
        table.append(entry)
    return {"anchor": f"x265 qp={qp}", "counts": table}


# ------------------------------------------------------------------------------------------
# The run
# ------------------------------------------------------------------------------------------


def _row(clip: str, run: Run, fps: float, frames: int) -> dict[str, Any]:
    return {
        "clip": clip,
        "codec": run.label,
        "curve": run.curve,
        "operating_point": run.operating_point,
        "qp": run.qp,
        "key_quality": run.key_quality,
        "keyframe_interval": run.keyframe_interval,
        "target_kbps": run.target_kbps,
        "status": "ok",
        "error": "",
        "frames": frames,
        "fps": fps,
    }


def _score(
    clip: _ClipData, run: Run, config: EvalConfig, refs: list, extra: dict, use_ms_ssim: bool
) -> tuple[dict[str, Any], _Coded]:
    from .metrics import clip_scores

    if run.codec == GRACE:
        coded = _code_grace(clip, run, config)
    else:
        coded = _code_anchor(clip, run, config.preset)
    n, fps = len(clip.faces), float(clip.fps)
    row = _row(clip.name, run, fps, n)
    row.update(
        kbps=coded.total_bytes * 8 * fps / n / 1000,
        payload_kbps=coded.payload_bytes * 8 * fps / n / 1000,
        bytes=coded.total_bytes,
        sei_bytes_removed=coded.sei_bytes_removed,
        keyframes=coded.keyframes,
        lost_frames=clip.lost_frames,
        encode_seconds=coded.encode_seconds,
        decode_seconds=coded.decode_seconds,
        enc_fps=n / coded.encode_seconds,
        dec_fps=n / coded.decode_seconds,
    )
    row.update(clip_scores(clip.crops, coded.frames, refs, extra, use_ms_ssim))
    return row, coded


def default_command(
    source: Any, split: str | None, quick: bool, config: EvalConfig, out: Any = "out/eval"
) -> str:
    """The `gracecodec eval` command line matching these arguments."""
    argv = ["gracecodec", "eval", str(source), "--out", str(out)]
    if split:
        argv += ["--split", split]
    if quick:
        argv.append("--quick")
    base = QUICK if quick else EvalConfig()
    if config.max_frames != base.max_frames and config.max_frames:
        argv += ["--max-frames", str(config.max_frames)]
    if config.max_clips != base.max_clips and config.max_clips:
        argv += ["--max-clips", str(config.max_clips)]
    if config.face_stride != 1:
        argv += ["--face-stride", str(config.face_stride)]
    if config.qps != base.qps:
        argv += ["--qps", *map(str, config.qps)]
    if config.key_qualities != base.key_qualities and config.key_qualities:
        argv += ["--key-qualities", *map(str, config.key_qualities)]
    if config.keyframe_intervals != base.keyframe_intervals:
        argv += ["--keyframe-intervals", *map(str, config.keyframe_intervals)]
    if config.backends != base.backends and config.backends:
        argv += ["--backends", *config.backends]
    if not config.camera_motion:
        argv.append("--no-camera-motion")
    if not config.ring_motion:
        argv.append("--no-ring-motion")
    if config.lowpass_interval != base.lowpass_interval:
        argv += ["--lowpass-interval", str(config.lowpass_interval)]
    if config.lowpass_min_gain != base.lowpass_min_gain:
        argv += ["--lowpass-min-gain", f"{config.lowpass_min_gain:g}"]
    if config.motion_group != base.motion_group:
        argv += ["--motion-group", str(config.motion_group)]
    if config.refresh_drop_db != base.refresh_drop_db:
        argv += ["--refresh-drop", f"{config.refresh_drop_db:g}"]
    if config.key_search != base.key_search:
        argv += ["--key-search", str(config.key_search)]
    if config.target_rates:
        argv += ["--target-kbps", *(f"{t:g}" for t in config.target_rates)]
    return shlex.join(argv)


def run_eval(
    clips: Sequence[str | os.PathLike | Clip],
    out_dir: str | os.PathLike,
    quick: bool = False,
    config: EvalConfig | None = None,
    command: str | None = None,
    data: str = "",
    progress: bool = True,
) -> dict[str, Any]:
    """Evaluates every clip; writes results.csv, results.json, summary.md, rd_<metric>.png
    and strip.png into `out_dir`; returns what results.json holds.

    quick: the QUICK configuration (2 clips, 30 frames, 3 QPs, 2 operating points) unless
    `config` is given. A clip or run that fails is reported with status "error".
    """
    from tqdm import tqdm

    from .metrics import face_references, ms_ssim_available, optional_metrics

    config = config or (QUICK if quick else EvalConfig())
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [Path(c.path if isinstance(c, Clip) else c) for c in clips][: config.max_clips]
    if not paths:
        raise InputError("no clips to evaluate")
    backends, notes = _usable_backends(config)
    extra, extra_notes = optional_metrics()
    notes += extra_notes
    use_ms_ssim = ms_ssim_available()
    if not use_ms_ssim:
        notes.append("MS-SSIM skipped: needs torch and pytorch-msssim (pip install pytorch-msssim)")
    metrics = [m for m in CORE_METRICS if use_ms_ssim or m != "ms_ssim"] + list(extra)
    plan = _plan(config, backends)
    rows: list[dict[str, Any]] = []
    strip: dict[str, Any] = {}
    started = time.perf_counter()

    for path in tqdm(paths, desc="clips", unit="clip", disable=not progress):
        try:
            clip = _prepare(path, config.max_frames)
            refs = face_references(clip.crops, config.face_stride)
        except _FAILURES as e:
            for run in plan:
                rows.append(
                    _row(path.stem, run, math.nan, 0) | {"status": "error", "error": str(e)}
                )
            continue
        picks = np.linspace(0, len(clip.faces) - 1, STRIP_FRAMES).round().astype(int)
        keep_strip = not strip
        if keep_strip:
            strip = {
                "clip": clip.name,
                "indices": picks.tolist(),
                "original": [clip.crops[i] for i in picks],
            }
        for run in tqdm(plan, desc=clip.name[-30:], unit="run", leave=False, disable=not progress):
            try:
                row, coded = _score(clip, run, config, refs, extra, use_ms_ssim)
            except _FAILURES as e:
                row = _row(clip.name, run, float(clip.fps), len(clip.faces))
                row.update(status="error", error=str(e))
                coded = None
            rows.append(row)
            if keep_strip and coded is not None:
                strip[f"{run.label}|{run.operating_point}"] = [coded.frames[i] for i in picks]

    names = list(dict.fromkeys(r["clip"] for r in rows))
    complete = [c for c in names if all(r["status"] == "ok" for r in rows if r["clip"] == c)]
    if len(complete) < len(names):
        notes.append(
            f"averages and BD-rates use the {len(complete)} of {len(names)} clips where every "
            "run succeeded; the others are listed under Failures"
        )
    summary = _average(rows, complete, metrics)
    bd = _bd_table(rows, complete, metrics)
    result = {
        "command": command or default_command(data or paths[0].parent, None, quick, config, out),
        "machine": _machine(),
        "data": {"source": data, "clips": [str(p) for p in paths], "max_frames": config.max_frames},
        "config": dataclasses.asdict(config) | {"backends": backends},
        "notes": notes,
        "seconds": time.perf_counter() - started,
        "metrics": metrics,
        "summary": summary,
        "bd_rate": bd,
        "clip_counts": _clip_counts(rows, complete, metrics),
        "rows": rows,
    }
    _write_csv(out / "results.csv", rows)
    (out / "results.json").write_text(json.dumps(_jsonable(result), indent=1) + "\n")
    plots = _plot_rd(out, summary, metrics)
    if strip:
        _plot_strip(out / "strip.png", strip, rows)
    (out / "summary.md").write_text(_markdown(result, plots, bool(strip)))
    return result


# ------------------------------------------------------------------------------------------
# Outputs
# ------------------------------------------------------------------------------------------


def _average(rows: list[dict], clips: list[str], metrics: list[str]) -> list[dict]:
    """Mean per codec and operating point over `clips`; speeds as total frames / total time."""
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for r in rows:
        if r["clip"] in clips:
            groups[(r["codec"], r["operating_point"])].append(r)
    out = []
    for (codec, op), rs in groups.items():
        frames = sum(r["frames"] for r in rs)
        entry = {"codec": codec, "curve": rs[0]["curve"], "operating_point": op, "clips": len(rs)}
        for k in ["kbps", "payload_kbps", *metrics]:
            v = np.array([r[k] for r in rs], np.float64)
            entry[k] = float(np.nanmean(v)) if np.isfinite(v).any() else math.nan
        entry["enc_fps"] = frames / sum(r["encode_seconds"] for r in rs)
        entry["dec_fps"] = frames / sum(r["decode_seconds"] for r in rs)
        out.append(entry)
    return out


def _machine() -> dict[str, Any]:
    import av

    cpu = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    return {
        "platform": platform.platform(),
        "cpu": cpu,
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "av": av.__version__,
    }


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_jsonable(v) for v in x]
    if isinstance(x, float | np.floating):
        return float(x) if math.isfinite(x) else None  # JSON has no NaN
    if isinstance(x, np.integer):
        return int(x)
    return x


def _write_csv(path: Path, rows: list[dict]) -> None:
    fields = list(dict.fromkeys(k for r in rows for k in r))
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=fields)
        w.writeheader()
        for r in rows:
            w.writerow({k: _cell(r.get(k)) for k in fields})


def _cell(v: Any) -> Any:
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return "" if v is None else v


def _fmt(v: Any, digits: int) -> str:
    return (
        "n/a" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"
    )


def _plot_rd(out: Path, summary: list[dict], metrics: list[str]) -> list[str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    curves: dict[str, list[dict]] = defaultdict(list)
    for s in summary:
        curves[s["curve"]].append(s)
    names = []
    for m in metrics:
        fig, ax = plt.subplots(figsize=(6.4, 4.4))
        for curve, pts in sorted(curves.items()):
            pts = sorted(pts, key=lambda s: s["kbps"])
            style = "s--" if curve.startswith(("x264", "x265")) else "o-"
            ax.plot([p["kbps"] for p in pts], [p[m] for p in pts], style, label=curve)
        ax.set_xscale("log")
        ax.set_xlabel("rate (kbit/s, log scale)")
        better = "higher" if HIGHER_IS_BETTER[m] else "lower"
        ax.set_ylabel(f"{LABELS[m]}, {better} is better")
        ax.grid(True, which="both", alpha=0.3)
        if curves:
            ax.legend(fontsize=8)
        ax.set_title(f"{LABELS[m]} against rate (mean over clips)")
        fig.tight_layout()
        name = f"rd_{m}.png"
        fig.savefig(out / name, dpi=110)
        plt.close(fig)
        names.append(name)
    return names


def _plot_strip(path: Path, strip: dict, rows: list[dict]) -> None:
    """Original / x265 at the rate nearest gracecodec's / gracecodec, a few frames of a clip."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = {
        (r["codec"], r["operating_point"]): r
        for r in rows
        if r["clip"] == strip["clip"] and r["status"] == "ok"
    }
    grace = [k for k in ok if k[0].startswith(GRACE) and f"{k[0]}|{k[1]}" in strip]
    x265 = [k for k in ok if k[0] == "x265" and f"{k[0]}|{k[1]}" in strip]
    lines = [("original", strip["original"])]
    if grace:
        g = next((k for k in grace if k[1] == "kq=40 ki=0"), grace[0])
        if x265:
            near = min(x265, key=lambda k: abs(math.log(ok[k]["kbps"] / ok[g]["kbps"])))
            lines.append(
                (f"x265 {near[1]}\n{ok[near]['kbps']:.1f} kbit/s", strip[f"{near[0]}|{near[1]}"])
            )
        lines.append((f"{g[0]} {g[1]}\n{ok[g]['kbps']:.1f} kbit/s", strip[f"{g[0]}|{g[1]}"]))
    cols = len(strip["indices"])
    fig, axes = plt.subplots(
        len(lines), cols, figsize=(2.2 * cols + 0.6, 2.3 * len(lines)), squeeze=False
    )
    for r, (label, frames) in enumerate(lines):
        for c, frame in enumerate(frames):
            ax = axes[r][c]
            ax.imshow(frame)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"frame {strip['indices'][c]}", fontsize=9)
            if c == 0:
                ax.set_ylabel(label, fontsize=8)
    fig.suptitle(strip["clip"], fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _markdown(result: dict, plots: list[str], strip: bool) -> str:
    m = result["machine"]
    metrics = result["metrics"]
    rows = result["rows"]
    clips = list(dict.fromkeys(r["clip"] for r in rows))
    frames = {r["clip"]: r["frames"] for r in rows}
    lines = [
        "# gracecodec evaluation",
        "",
        "Reproduce with:",
        "",
        "```",
        result["command"],
        "```",
        "",
        f"Machine: {m['platform']}, {m['cpu']}, {m['cpu_count']} CPUs, Python {m['python']}, "
        f"PyAV {m['av']}; run took {result['seconds']:.0f} s.",
        "",
        f"Data: {len(clips)} clips ({sum(frames.values())} frames"
        + (
            f", at most {result['data']['max_frames']} a clip"
            if result["data"]["max_frames"]
            else ""
        )
        + f"){' from ' + result['data']['source'] if result['data']['source'] else ''}: "
        + ", ".join(f"{c} ({frames[c]})" for c in clips)
        + ".",
        "",
        "Set-up: every codec sees the encoder's own 256x256 face crops. Anchors: x264/x265 "
        f"preset {result['config']['preset']}, low delay (one I-frame, P-frames only, no "
        "B-frames, no scene-cut I-frames, no lookahead), constant QP, one thread; their rate "
        "excludes the encoders' informational SEI. gracecodec: rate = the whole .agc stream "
        "(payload = the key-frame, motion and low-pass payloads, without framing; motion "
        f"{result['config'].get('motion_group', 1)} frames a packet"
        + (
            f"; key-frame refresh at a {result['config']['refresh_drop_db']:g} dB drop"
            if result["config"].get("refresh_drop_db")
            else ""
        )
        + (
            f"; each key frame chosen among its segment's first "
            f"{result['config']['key_search']} frames"
            if result["config"].get("key_search", 0) > 1
            else ""
        )
        + "); `kq` key-frame quality, `ki` forced key-frame interval (0: only at the start "
        "and at crop re-centres). Encode speed includes face tracking. Speeds are wall time "
        "on this machine, single process.",
        "",
        "## Mean over clips",
        "",
        "| codec | operating point | kbit/s | payload kbit/s | "
        + " | ".join(LABELS[k] for k in metrics)
        + " | enc fps | dec fps |",
        "|---|---|" + "---:|" * (len(metrics) + 4),
    ]
    for s in sorted(result["summary"], key=lambda s: (s["curve"], s["kbps"])):
        lines.append(
            f"| {s['codec']} | {s['operating_point']} | {_fmt(s['kbps'], 2)} | "
            f"{_fmt(s['payload_kbps'], 2)} | "
            + " | ".join(_fmt(s[k], DIGITS[k]) for k in metrics)
            + f" | {_fmt(s['enc_fps'], 1)} | {_fmt(s['dec_fps'], 1)} |"
        )
    lines += [
        "",
        "## BD-rate against x265",
        "",
        "Bjøntegaard delta rate, %: PCHIP interpolation of log10(rate) against quality, "
        "integrated over the quality interval both curves share (AKD/AED negated), per clip, "
        "then averaged over the clips where the curves overlap (count in brackets); negative "
        "means fewer bits than x265 for the same quality; n/a: no overlap.",
        "",
        "| curve | " + " | ".join(LABELS[k] for k in metrics) + " |",
        "|---|" + "---:|" * len(metrics),
    ]
    for b in result["bd_rate"]:
        cells = ["n/a" if b[k] is None else f"{b[k]:+.1f} ({b[k + '_clips']})" for k in metrics]
        lines.append(f"| {b['curve']} | " + " | ".join(cells) + " |")
    counts = result["clip_counts"]
    if counts:
        lines += [
            "",
            f"## Clip by clip against {counts['anchor']}",
            "",
            f"Clips where the point codes at most the bits of the same clip's {counts['anchor']} "
            "(rate), and where it is at least as good on each metric.",
            "",
            "| codec | operating point | rate | " + " | ".join(LABELS[k] for k in metrics) + " |",
            "|---|---|" + "---:|" * (len(metrics) + 1),
        ]
        for c in counts["counts"]:
            n = c["clips"]
            cells = [f"{c['lower_rate']}/{n}"] + [f"{c[k]}/{n}" for k in metrics]
            lines.append(f"| {c['codec']} | {c['operating_point']} | " + " | ".join(cells) + " |")
    lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in plots]
    if strip:
        lines += ["", "![strip](strip.png)"]
    failures = [r for r in rows if r["status"] != "ok"]
    lines += ["", "## Failures", ""]
    lines += [
        f"- {r['clip']} {r['codec']} {r['operating_point']}: {r['error']}" for r in failures
    ] or ["none"]
    if result["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in result["notes"]]
    return "\n".join(lines) + "\n"
