"""Temporal replay over thresholds: work skipped, speed-up, quality cost.

    python -m decoder_fpga.replay_bench [--data cache/train_data/val] [--clips 3]
        [--frames 40] [--thresholds 0,0.1,0.25,0.5,1,2] [--backend torch|warp|int8]
        [--checkpoint runs/grace-s/grace-s.pt]

Each clip's first `--frames` crops (one key frame, then the decoded landmarks) are
rendered once without replay; each threshold then replays tiles over those renders (the
generators are deterministic, so this equals re-rendering; see decoder_fpga/replay.py).
Prints per threshold: replayed tiles, skipped frames, PSNR and MS-SSIM against the
original crops and their change against no replay, and speed-ups: `frames` = from whole
frames skipped (real for every backend), `board` = modelled PYNQ-Z1 cycles if the
engines also skipped the replayed tiles of the full-resolution decoder layers
(decoder_fpga/perf.py; modelled, not implemented). The default threshold is the largest
whose mean PSNR cost is <= 0.1 dB.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from codec.errors import GraceError

from .replay import DEFAULT_TILE, ReplayGenerator

REPO = Path(__file__).resolve().parents[1]


class _Replayed:
    """A 'generator' returning precomputed frames in order."""

    name = "precomputed"

    def __init__(self, frames: list[np.ndarray]):
        self.frames = frames
        self.i = 0

    def set_reference(self, image, landmarks) -> None:
        pass

    def render(self, landmarks) -> np.ndarray:
        f = self.frames[self.i]
        self.i += 1
        return f


def full_res_share(size: int) -> float:
    """Share of the modelled frame cycles in layers whose output is size x size."""
    from codec.models.grace_s import GraceSConfig

    from . import int8_ref as ref
    from . import perf

    prog = perf.shape_program(GraceSConfig(size=size))
    total = full = 0.0
    for st, row in zip(
        [s for s in prog.steps("frame") if s["op"] != "arm"], perf.step_table(prog, "frame")
    ):
        c = st["cfg"]
        ho = (
            c["ho"]
            if st["op"] == "grid_sample"
            else ref.conv_out_size(c["h"], c["k"], c["stride"], bool(c["upsample"]))
        )
        total += row["overlapped"]
        full += row["overlapped"] if ho == size else 0.0
    return full / total


def make_backend(name: str, checkpoint: str | None):
    if name == "warp":
        from codec.generators import make_generator

        return make_generator("warp")
    if name == "torch":
        from codec.generators.torch_backend import TorchGenerator

        return TorchGenerator(checkpoint=checkpoint)
    from .backends import CsimGenerator, Int8Generator

    return (Int8Generator if name == "int8" else CsimGenerator)(checkpoint=checkpoint)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m decoder_fpga.replay_bench", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", default=str(REPO / "cache" / "train_data" / "val"))
    p.add_argument("--clips", type=int, default=3)
    p.add_argument("--frames", type=int, default=40)
    p.add_argument("--thresholds", default="0,0.1,0.25,0.5,1,2")
    p.add_argument("--tile", type=int, default=DEFAULT_TILE)
    p.add_argument("--backend", default=None, help="torch (with a checkpoint), else warp")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--json", help="write the table here too")
    args = p.parse_args(argv)
    data = Path(args.data)
    if not (data / "index.json").is_file():
        print(f"skipped: no prepared val clips at {data} (codec.training.prepare)", file=sys.stderr)
        return 0
    ckpt = args.checkpoint
    if ckpt is None and (REPO / "runs" / "grace-s" / "grace-s.pt").is_file():
        ckpt = str(REPO / "runs" / "grace-s" / "grace-s.pt")
    backend = args.backend or ("torch" if ckpt else "warp")
    thresholds = [float(t) for t in args.thresholds.split(",")]
    from codec.evaluation.metrics import ms_ssim_available, ms_ssim_batch
    from codec.training.prepare import read_cache

    try:
        gen = make_backend(backend, ckpt)
        _, arrays = read_cache(data, "crops", "decoded")
        runs = []
        t_render = 0.0
        for crops, lms in list(zip(arrays["crops"], arrays["decoded"]))[: args.clips]:
            n = min(args.frames, len(crops))
            gen.set_reference(np.asarray(crops[0]), np.asarray(lms[0]))
            t0 = time.perf_counter()
            base = [gen.render(np.asarray(lms[i])) for i in range(n)]
            t_render += time.perf_counter() - t0
            runs.append((np.array(crops[:n]), np.array(lms[:n]), base))
    except GraceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    n_frames = sum(len(r[2]) for r in runs)
    share = full_res_share(runs[0][0].shape[1])
    use_ms = ms_ssim_available()
    rows = []
    for thr in thresholds:
        sq, mss, tiles, skipped, board_work = [], [], [], 0, []
        for crops, lms, base in runs:
            rg = ReplayGenerator(_Replayed(base), threshold_px=thr, tile=args.tile)
            rg.set_reference(crops[0], lms[0])
            out = np.stack([rg.render(lm) for lm in lms])
            # frames after the key frame; PSNR of the pooled MSE (a frame equal to its
            # original would make a mean of per-frame PSNRs infinite)
            sq += list(((out[1:].astype(np.float64) - crops[1:]) ** 2).mean(axis=(1, 2, 3)))
            if use_ms:
                mss += list(ms_ssim_batch(crops[1:], out[1:]))
            tiles.append(rg.stats.tile_fraction)
            skipped += rg.stats.frames_skipped
            board_work += [0.0 if f == 1.0 else 1.0 - share * f for f in rg.stats.per_frame]
        rows.append(
            {
                "threshold_px": thr,
                "tiles_replayed": float(np.mean(tiles)),
                "frames_skipped": skipped / n_frames,
                "speedup_frames": n_frames / max(n_frames - skipped, 1),
                "speedup_board_modelled": 1.0 / max(float(np.mean(board_work)), 1e-9),
                "psnr": float(10 * np.log10(255.0**2 / max(float(np.mean(sq)), 1e-10))),
                "ms_ssim": float(np.mean(mss)) if mss else None,
            }
        )
    ref0 = next((r for r in rows if r["threshold_px"] == 0), rows[0])
    print(
        f"replay bench: backend {backend}{' (' + ckpt + ')' if ckpt and backend != 'warp' else ''}, {len(runs)} val clips x "
        f"{args.frames} frames, {args.tile}-px tiles; render {1e3 * t_render / n_frames:.0f} ms/frame here; "
        f"full-res layers = {100 * share:.0f}% of the modelled board cycles"
    )
    print(
        f"{'thr px':>7}{'tiles %':>9}{'skip %':>8}{'x frames':>9}{'x board*':>9}{'PSNR':>8}{'dPSNR':>8}{'MS-SSIM':>9}{'dMS-SSIM':>10}"
    )
    for r in rows:
        r["dpsnr"] = r["psnr"] - ref0["psnr"]
        r["dms_ssim"] = (r["ms_ssim"] - ref0["ms_ssim"]) if r["ms_ssim"] is not None else None
        ms = (
            f"{r['ms_ssim']:>9.4f}{r['dms_ssim']:>10.4f}"
            if r["ms_ssim"] is not None
            else f"{'-':>9}{'-':>10}"
        )
        print(
            f"{r['threshold_px']:>7g}{100 * r['tiles_replayed']:>9.1f}{100 * r['frames_skipped']:>8.1f}"
            f"{r['speedup_frames']:>9.2f}{r['speedup_board_modelled']:>9.2f}{r['psnr']:>8.2f}{r['dpsnr']:>8.3f}{ms}"
        )
    ok = [r for r in rows if r["dpsnr"] >= -0.1]
    best = max(ok, key=lambda r: r["threshold_px"]) if ok else rows[0]
    print(
        f"* modelled. Default: threshold {best['threshold_px']:g} px (largest with PSNR cost <= 0.1 dB)"
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps({"backend": backend, "rows": rows, "default": best}, indent=1)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
