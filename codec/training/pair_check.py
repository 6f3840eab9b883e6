"""Scores checkpoints against the plain warp on val frame pairs, as the receiver sees them.

    python -m codec.training.pair_check runs/grace-s2/export-8400.pt runs/grace-s2/export-9600.pt

Pairs (source, driving) from the prepared val cache, more than `--min-gap` frames apart;
the source goes through the key-frame codec (HEVC intra at `--key-quality`) like a real
key frame, and the driving frame carries the ring's motion as the default stream does
(`--no-ring-motion`: the ring follows the skull). Metrics are those of `gracecodec eval`
(PSNR, SSIM, MS-SSIM, dlib AKD and AED) on the 256x256 frames. A quick way to choose among
training exports before a full eval.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from .train import PairDataset, coded_key_frame, distinct_pairs, make_inputs


def score(checkpoints: list[Path], data: Path, pairs: int, seed: int, key_quality: int,
          min_gap: int = 5, max_gap: int | None = None,
          ring: bool = True) -> dict[str, np.ndarray]:  # fmt: skip
    """name -> (PSNR, SSIM, MS-SSIM, AKD, AED) means over the pairs the detector finds a face in."""
    import torch
    from tqdm import tqdm

    from ..evaluation.metrics import face_reference, face_scores, ms_ssim, psnr, ssim
    from ..generators.torch_backend import load_model
    from ..models.grace_s import warp

    torch.set_num_threads(2)
    val = PairDataset(data / "val")
    models = {str(p): load_model(p).to(memory_format=torch.channels_last) for p in checkpoints}
    rows: dict[str, list] = {"warp": [], **{k: [] for k in models}}
    for c, i, j in tqdm(distinct_pairs(val, pairs, seed, min_gap, max_gap), desc="pairs"):
        original = np.array(val.crops[c][i])
        src = coded_key_frame(original, key_quality)
        dst = np.array(val.crops[c][j])
        ref = face_reference(dst)
        if ref.box is None:
            continue
        src_lm, dst_lm = val.landmarks[c][i], val.landmarks[c][j]
        if ring:  # measured from the original source crop, as the sender does
            dst_lm = val.ring_motion(original, dst, src_lm, dst_lm)
        x = {k: torch.from_numpy(v)[None] for k, v in make_inputs(
            src, src_lm, dst_lm, dst.shape[0]).items()}  # fmt: skip
        outs = {"warp": warp(x["ref"], x["grid"])}
        with torch.inference_mode():
            for k, m in models.items():
                feats = m.encode_reference(x["ref"])
                outs[k] = m.render(x["ref"], feats, x["grid"], x["target_heat"], x["ref_heat"])
        for k, out in outs.items():
            img = (out[0].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
            rows[k].append(
                (psnr(dst, img), ssim(dst, img), ms_ssim(dst, img), *face_scores(ref, img))
            )
    return {k: np.mean(v, axis=0) for k, v in rows.items()}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m codec.training.pair_check", description=__doc__)
    p.add_argument("checkpoints", nargs="+", type=Path, help="exported checkpoints (.pt)")
    p.add_argument("--data", type=Path, default=Path("cache/train_data"))
    p.add_argument("--pairs", type=int, default=80)
    p.add_argument("--seed", type=int, default=21)
    p.add_argument("--key-quality", type=int, default=30)
    p.add_argument("--min-gap", type=int, default=5)
    p.add_argument(
        "--max-gap", type=int, default=None, help="at most this many frames apart (near pairs)"
    )
    p.add_argument(
        "--no-ring-motion", dest="ring", action="store_false", help="the ring follows the skull"
    )
    args = p.parse_args(argv)
    result = score(
        args.checkpoints,
        args.data,
        args.pairs,
        args.seed,
        args.key_quality,
        args.min_gap,
        args.max_gap,
        args.ring,
    )
    print("| weights | PSNR (dB) | SSIM | MS-SSIM | AKD (px) | AED |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, (ps, ss, ms, akd, aed) in result.items():
        print(f"| {name} | {ps:.2f} | {ss:.4f} | {ms:.4f} | {akd:.2f} | {aed:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
