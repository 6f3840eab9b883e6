"""grace-s: a small landmark-driven animation network (about 1 GMAC a frame at 256x256).

Per key frame (cached): a reference encoder computes features at 256, 128 and 64 px.
Per frame:
  1. outside the network (ARM side on the board): the piecewise-affine backward map of
     `codec.generators.flow` (as a sampling grid) and Gaussian heatmaps of the target and
     reference landmarks at 64x64;
  2. a motion net at 64x64 refines the grid and predicts an occlusion map;
  3. the reference features are warped (bilinear grid sample) and masked by occlusion;
  4. a decoder with depthwise-separable blocks upsamples to 256 and predicts a residual
     over the warped key frame.
The residual head starts at zero and the grid refinement too, so an untrained network
renders exactly the `warp` backend; training learns what a warp cannot do (mouth interior,
eyes, shading, occlusions).

Ops inside the network: conv2d (k 1/3, stride 1/2, dense or depthwise), bias, ReLU,
residual add, nearest x2 upsample, bilinear grid sample, multiply by a [0, 1] map — the
vocabulary of the FPGA engines. Bilinear resizing of the grid and the occlusion map is a
grid sample on a regular grid.

ReLUs and additions work in place on fresh conv and resize outputs (safe under autograd:
neither keeps its output for the backward pass): at 256x256 they save a large buffer each
(one before/after measurement with `gracecodec bench --backend torch`: 14.0 -> 18.1
frames/s on the 2-core machine of that session).
Products with the occlusion map stay out of place (their backward needs the warped
features).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

from ..generators.flow import LANDMARK_GROUPS


@dataclasses.dataclass(frozen=True)
class GraceSConfig:
    size: int = 256
    enc: tuple[int, int, int] = (16, 32, 64)  # reference features at 256, 128, 64
    motion: tuple[int, int, int] = (32, 64, 96)  # motion net widths at 64, 32, 16
    dec: tuple[int, int, int] = (96, 48, 24)  # decoder widths at 64, 128, 256
    dec_blocks: int = 3  # residual blocks at 64
    groups: int = len(LANDMARK_GROUPS)
    flow_scale: float = 0.05  # grid refinement range, in normalised coordinates


def conv(cin: int, cout: int, k: int = 3, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, k, stride, padding=k // 2)


class DSBlock(nn.Module):
    """Depthwise-separable residual block: (dw3x3 -> pw1x1 -> ReLU) x2 + input."""

    def __init__(self, c: int):
        super().__init__()
        self.dw1 = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.pw1 = conv(c, c, 1)
        self.dw2 = nn.Conv2d(c, c, 3, 1, 1, groups=c)
        self.pw2 = conv(c, c, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.pw1(self.dw1(x)).relu_()
        return self.pw2(self.dw2(y)).add_(x).relu_()


class DSUp(nn.Module):
    """Nearest x2 upsample, then a depthwise-separable conv to `cout` channels."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.dw = nn.Conv2d(cin, cin, 3, 1, 1, groups=cin)
        self.pw = conv(cin, cout, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pw(self.dw(F.interpolate(x, scale_factor=2, mode="nearest")))


def warp(x: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    """Bilinear sample of x (B, C, H, W) at grid (B, 2, h, w) in [-1, 1].

    The grid is first clamped to the centres of x's edge pixels, so a head moving towards
    the crop border repeats the edge instead of pulling in black (a zero-padding grid
    sample engine then never reads outside; the clamp is part of building the grid).
    """
    lim = 1 - 1 / x.shape[-1]
    grid = grid.clamp(-lim, lim).permute(0, 2, 3, 1)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear resize (the same as a grid sample on a regular grid)."""
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


class GraceS(nn.Module):
    arch = "grace-s"

    def __init__(self, config: GraceSConfig = GraceSConfig()):
        super().__init__()
        self.config = c = config
        e0, e1, e2 = c.enc
        m0, m1, m2 = c.motion
        d0, d1, d2 = c.dec
        g = c.groups
        # Reference encoder (once per key frame).
        self.enc0 = conv(3, e0)
        self.enc1a, self.enc1b = conv(e0, e1, 3, 2), conv(e1, e1)
        self.enc2a, self.enc2b = conv(e1, e2, 3, 2), conv(e2, e2)
        # Motion net at 64: warped reference image + heatmaps -> grid refinement, occlusion.
        self.mot0 = conv(3 + 2 * g, m0)
        self.mot1a, self.mot1b = conv(m0, m1, 3, 2), conv(m1, m1)
        self.mot2a, self.mot2b = conv(m1, m2, 3, 2), conv(m2, m2)
        self.mot_up1 = conv(m2, m1)
        self.mot_up0 = conv(m1, m0)
        self.mot_head = conv(m0, 3)
        # Decoder.
        self.dec_in = conv(e2, d0, 1)
        self.dec_heat = conv(g, d0, 1)
        self.dec_blocks = nn.Sequential(*[DSBlock(d0) for _ in range(c.dec_blocks)])
        self.up1 = DSUp(d0, d1)
        self.skip1 = conv(e1, d1, 1)
        self.block1 = DSBlock(d1)
        self.up2 = DSUp(d1, d2)
        self.skip2 = conv(e0, d2, 1)
        self.block2 = DSBlock(d2)
        self.out = conv(d2, 3)
        # Start as the plain warp: no grid refinement, no residual, nothing occluded.
        for head in (self.mot_head, self.out):
            nn.init.zeros_(head.weight)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            self.mot_head.bias[2] = 4.0  # sigmoid(4) ~ 0.98: features pass

    def encode_reference(self, ref: torch.Tensor) -> list[torch.Tensor]:
        """ref: (B, 3, S, S) in [0, 1] -> features at S, S/2, S/4 (cached per key frame)."""
        x = ref - 0.5
        f0 = F.relu(self.enc0(x))
        f1 = F.relu(self.enc1b(F.relu(self.enc1a(f0))))
        f2 = F.relu(self.enc2b(F.relu(self.enc2a(f1))))
        return [f0, f1, f2]

    def render(
        self,
        ref: torch.Tensor,
        feats: list[torch.Tensor],
        grid: torch.Tensor,
        target_heat: torch.Tensor,
        ref_heat: torch.Tensor,
    ) -> torch.Tensor:
        """One frame.

        ref: (B, 3, S, S) in [0, 1]; feats: from encode_reference;
        grid: (B, 2, S, S) the landmark backward map in normalised [-1, 1] coordinates;
        target_heat, ref_heat: (B, G, S/4, S/4) landmark heatmaps.
        Returns (B, 3, S, S), unclamped (clamp to [0, 1] for display).
        """
        s = self.config.size
        q = s // 4
        grid64 = resize(grid, q)
        warped64 = warp(resize(ref, q), grid64) - 0.5
        x0 = self.mot0(torch.cat([warped64, target_heat, ref_heat], 1)).relu_()
        x1 = self.mot1b(self.mot1a(x0).relu_()).relu_()
        x2 = self.mot2b(self.mot2a(x1).relu_()).relu_()
        y1 = self.mot_up1(F.interpolate(x2, scale_factor=2, mode="nearest")).add_(x1).relu_()
        y0 = self.mot_up0(F.interpolate(y1, scale_factor=2, mode="nearest")).add_(x0).relu_()
        head = self.mot_head(y0)
        delta = head[:, :2] * self.config.flow_scale
        occlusion = torch.sigmoid(head[:, 2:3])  # ARM side on the board
        g64 = grid64 + delta
        g128 = resize(grid, 2 * q).add_(resize(delta, 2 * q))
        g256 = resize(delta, s).add_(grid)
        f0, f1, f2 = feats
        h = self.dec_in(warp(f2, g64) * occlusion).add_(self.dec_heat(target_heat)).relu_()
        h = self.dec_blocks(h)
        h = self.up1(h).add_(self.skip1(warp(f1, g128) * resize(occlusion, 2 * q))).relu_()
        h = self.block1(h)
        h = self.up2(h).add_(self.skip2(warp(f0, g256) * resize(occlusion, s))).relu_()
        h = self.block2(h)
        return self.out(h).add_(warp(ref, g256))


def count_macs(model: GraceS) -> dict[str, int]:
    """Multiply-accumulates per module for one 256x256 frame (convs and grid samples).

    Conv: out_pixels * cout * (cin / groups) * k * k; grid sample: 4 per output value.
    """
    macs: dict[str, int] = {}
    hooks = []

    def conv_hook(name):
        def hook(mod: nn.Conv2d, inp, out):
            k = mod.kernel_size[0] * mod.kernel_size[1]
            macs[name] = macs.get(name, 0) + out.numel() * (mod.in_channels // mod.groups) * k

        return hook

    for name, mod in model.named_modules():
        if isinstance(mod, nn.Conv2d):
            hooks.append(mod.register_forward_hook(conv_hook(name)))
    s = model.config.size
    ref = torch.zeros(1, 3, s, s)
    ident = identity_grid(1, s)
    heat = torch.zeros(1, model.config.groups, s // 4, s // 4)
    with torch.no_grad():
        feats = model.encode_reference(ref)
        enc = dict(macs)
        macs.clear()
        model.render(ref, feats, ident, heat, heat)
    for h in hooks:
        h.remove()
    c = model.config
    grid_samples = 4 * (
        3 * (s // 4) ** 2
        + c.enc[2] * (s // 4) ** 2
        + c.enc[1] * (s // 2) ** 2
        + (c.enc[0] + 3) * s**2
    )
    per_frame = {k: v for k, v in macs.items()}
    per_frame["grid_sample"] = grid_samples
    return {"reference": sum(enc.values()), **per_frame}


def identity_grid(batch: int, size: int) -> torch.Tensor:
    """(B, 2, size, size) normalised coordinates of each pixel centre (align_corners=False)."""
    lin = (torch.arange(size, dtype=torch.float32) * 2 + 1) / size - 1
    ys, xs = torch.meshgrid(lin, lin, indexing="ij")
    return torch.stack([xs, ys], 0).expand(batch, 2, size, size).clone()
