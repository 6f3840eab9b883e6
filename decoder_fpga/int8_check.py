"""Quality cost of the int8 decoder against float torch, on val pairs of the prepared cache.

    python -m decoder_fpga.int8_check [--data cache/train_data] [--pairs 8]

Renders the same (key frame, target landmarks) pairs with the shipped grace-s weights in
the `torch` and `int8` backends and prints PSNR and MS-SSIM of each against the real
target frame, and PSNR of int8 against torch. The issue's budget: int8 within 0.3 dB
PSNR and 0.005 MS-SSIM of torch.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return float(10 * np.log10(255**2 / max(mse, 1e-10)))


def _ms_ssim(a: np.ndarray, b: np.ndarray) -> float:
    import torch
    from pytorch_msssim import ms_ssim

    t = [torch.from_numpy(x.transpose(2, 0, 1)).float()[None] / 255 for x in (a, b)]
    return float(ms_ssim(t[0], t[1], data_range=1.0))


def main(argv=None) -> None:
    from codec.generators import make_generator
    from codec.training.train import PairDataset

    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", default="cache/train_data")
    p.add_argument("--pairs", type=int, default=8)
    args = p.parse_args(argv)
    val = PairDataset(Path(args.data) / "val")
    rng = np.random.default_rng(1234)
    pairs = []
    while len(pairs) < args.pairs:
        c, i, j = val.pair(rng)
        if i != j:
            pairs.append((c, i, j))
    gens = {name: make_generator(name, "grace-s") for name in ("torch", "int8")}
    rows = []
    for c, i, j in pairs:
        ref, target = np.array(val.crops[c][i]), np.array(val.crops[c][j])
        out = {}
        for name, gen in gens.items():
            gen.set_reference(ref, val.landmarks[c][i])
            out[name] = gen.render(val.landmarks[c][j])
        rows.append(
            [_psnr(out["int8"], out["torch"])]
            + [_psnr(out[n], target) for n in gens]
            + [_ms_ssim(out[n], target) for n in gens]
        )
    r = np.mean(rows, axis=0)
    print(f"{len(pairs)} distinct val pairs of {args.data}, 256x256, shipped grace-s weights")
    print(f"PSNR int8 vs torch: {r[0]:.2f} dB")
    print(
        f"PSNR vs target:     torch {r[1]:.3f} dB, int8 {r[2]:.3f} dB (cost {r[1] - r[2]:+.3f} dB)"
    )
    print(f"MS-SSIM vs target:  torch {r[3]:.4f}, int8 {r[4]:.4f} (cost {r[3] - r[4]:+.4f})")


if __name__ == "__main__":
    main()
