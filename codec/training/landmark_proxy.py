"""A small differentiable landmark regressor, trained from scratch, for a keypoint loss.

AKD (`codec.evaluation.metrics`) fits dlib's 68-point shape predictor, a cascade of
regression trees, on the decoded frame: it has no gradient to train the generator with.
This network learns to place the same 68 points on the prepared training crops, so that
the distance between its landmarks on the output and on the target can be trained on
(`keypoint_distance`): a generator that draws a mouth corner or the jaw line a pixel off
pays for it, as AKD makes it pay.

    python -m codec.training.landmark_proxy --data cache/train_data \
        --out training_state/landmark_proxy.pt --steps 2500

Labels are the encoder's landmarks of each crop (`landmarks.npy`: dlib, smoothed in time);
augmentation moves, scales and turns the face (so the network must find it, not recite the
mean shape), changes brightness and blurs, as generator outputs are blurred. Input is the
crop at half size (128x128); 68 heatmaps at 32x32, soft-argmax to sub-pixel coordinates.
About 0.25 GMAC per image, 0.22 M parameters.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import InputError
from .prepare import read_cache

INPUT = 128  # network input side; crops are 256x256
# Kept with the training state in the repository: used by training only, never shipped.
COMMITTED = Path(__file__).resolve().parents[2] / "training_state" / "landmark_proxy.pt"
POINTS = 68


def _conv(c_in: int, c_out: int, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride, padding=dilation, dilation=dilation),
        nn.ReLU(inplace=True),
    )


class LandmarkProxy(nn.Module):
    """(N, 3, S, S) RGB in [0, 1] -> (N, 68, 2) landmarks in input pixels (x, y)."""

    def __init__(self, width: int = 64) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _conv(3, 32, 2),  # 64x64
            _conv(32, 32),
            _conv(32, width, 2),  # 32x32
            _conv(width, width),
            _conv(width, width, dilation=2),
            _conv(width, width, dilation=4),  # context: the whole face, to tell point from point
            _conv(width, width, dilation=8),
            _conv(width, width),
        )
        self.heads = nn.Conv2d(width, POINTS, 1)
        self.log_temperature = nn.Parameter(torch.zeros(()))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        size = images.shape[-1]
        x = F.interpolate(images, size=(INPUT, INPUT), mode="area") if size != INPUT else images
        heat = self.heads(self.body((x - 0.5) * 4))
        n, k, h, w = heat.shape
        prob = (heat.flatten(2) * self.log_temperature.exp()).softmax(-1).view(n, k, h, w)
        cell = size / w  # soft-argmax over cell centres, in the caller's pixel indices
        xs = (torch.arange(w, dtype=prob.dtype) + 0.5) * cell - 0.5
        ys = (torch.arange(h, dtype=prob.dtype) + 0.5) * cell - 0.5
        return torch.stack(((prob.sum(2) * xs).sum(-1), (prob.sum(3) * ys).sum(-1)), -1)


def load_proxy(path: str | Path) -> LandmarkProxy:
    """The trained proxy, frozen, in eval mode; a clear error if the file is missing."""
    path = Path(path)
    if not path.is_file():
        raise InputError(
            f"{path}: no landmark proxy (train one: python -m codec.training.landmark_proxy)"
        )
    state = torch.load(path, map_location="cpu", weights_only=True)
    model = LandmarkProxy(state["config"]["width"])
    model.load_state_dict(state["model"])
    model.eval().requires_grad_(False)
    return model


def keypoint_distance(
    proxy: LandmarkProxy, output: torch.Tensor, target: torch.Tensor
) -> torch.Tensor:
    """Per-sample mean distance (px of the images) between the proxy's landmarks on output
    and on target (both (N, 3, S, S) in [0, 1]); the target's are constants."""
    with torch.no_grad():
        want = proxy(target)
    return (proxy(output) - want).pow(2).sum(-1).add(1e-6).sqrt().mean(-1)


# ------------------------------------------------------------------------------------------
# Training on the prepared cache
# ------------------------------------------------------------------------------------------


class _Frames:
    """All crops and landmarks of one prepared split, memory-mapped."""

    def __init__(self, root: Path) -> None:
        _, cache = read_cache(root, "crops", "landmarks")
        self.crops, self.lms = cache["crops"], cache["landmarks"]
        self.index = [(c, t) for c, lm in enumerate(self.lms) for t in range(len(lm))]

    def sample(self, k: int, rng: np.random.Generator | None) -> tuple[np.ndarray, np.ndarray]:
        c, t = self.index[k]
        img, lm = np.array(self.crops[c][t]), self.lms[c][t].astype(np.float32)
        if rng is None:
            return img, lm
        size = img.shape[0]
        angle, scale = rng.uniform(-12, 12), rng.uniform(0.85, 1.15)
        m = cv2.getRotationMatrix2D((size / 2, size / 2), angle, scale)
        m[:, 2] += rng.uniform(-0.08, 0.08, 2) * size
        img = cv2.warpAffine(img, m, (size, size), borderMode=cv2.BORDER_REFLECT101)
        lm = lm @ m[:, :2].T.astype(np.float32) + m[:, 2].astype(np.float32)
        if rng.random() < 0.5:
            img = img[:, ::-1].copy()
            lm = _mirror(lm, size)
        img = np.clip(img * rng.uniform(0.7, 1.3) + rng.uniform(-25, 25), 0, 255)
        if rng.random() < 0.5:
            img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.5, 2.0))
        return img.astype(np.uint8), lm


# dlib's 68 points under a horizontal flip: jaw, brows, nose, eyes, mouth swap sides.
_FLIP = np.array(
    list(range(16, -1, -1)) + list(range(26, 16, -1)) + [27, 28, 29, 30]
    + [35, 34, 33, 32, 31] + [45, 44, 43, 42, 47, 46] + [39, 38, 37, 36, 41, 40]
    + [54, 53, 52, 51, 50, 49, 48, 59, 58, 57, 56, 55] + [64, 63, 62, 61, 60, 67, 66, 65]
)  # fmt: skip


def _mirror(lm: np.ndarray, size: int) -> np.ndarray:
    out = lm[_FLIP].copy()
    out[:, 0] = size - 1 - out[:, 0]
    return out


def _batch(frames: _Frames, keys, rng) -> tuple[torch.Tensor, torch.Tensor]:
    imgs, lms = zip(*(frames.sample(int(k), rng) for k in keys))
    x = torch.from_numpy(np.stack(imgs)).permute(0, 3, 1, 2).float() / 255
    return x, torch.from_numpy(np.stack(lms))


def train_proxy(data: Path, out: Path, steps: int, batch: int = 16, seed: int = 0,
                width: int = 64, val_every: int = 250) -> float:  # fmt: skip
    """Trains a proxy on data/train, checks it on data/val; returns the val error (px)."""
    from tqdm import tqdm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train, val = _Frames(data / "train"), _Frames(data / "val")
    val_keys = np.random.default_rng(1).choice(
        len(val.index), min(256, len(val.index)), replace=False
    )
    val_x, val_y = _batch(val, val_keys, None)
    model = LandmarkProxy(width)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, 1e-3, total_steps=steps, pct_start=0.05)
    err = float("nan")
    bar = tqdm(range(1, steps + 1), desc="landmark proxy")
    for step in bar:
        x, y = _batch(train, rng.integers(len(train.index), size=batch), rng)
        loss = (model(x) - y).abs().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        if step % val_every == 0 or step == steps:
            with torch.no_grad():
                err = float((model(val_x) - val_y).norm(dim=-1).mean())
            bar.set_postfix(l1=f"{loss.item():.2f}", val_px=f"{err:.2f}")
            out.parent.mkdir(parents=True, exist_ok=True)
            tmp = out.with_suffix(".tmp")
            torch.save(
                {
                    "model": model.state_dict(),
                    "config": {"width": width},
                    "step": step,
                    "val_px": err,
                },
                tmp,
            )
            tmp.replace(out)
    return err


def main(argv=None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m codec.training.landmark_proxy", description=__doc__.split("\n")[0]
    )
    p.add_argument("--data", type=Path, default=Path("cache/train_data"))
    p.add_argument("--out", type=Path, default=COMMITTED)
    p.add_argument("--steps", type=int, default=2500)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    err = train_proxy(args.data, args.out, args.steps, args.batch)
    print(f"{args.out}: val error {err:.2f} px (256x256 crops), {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
