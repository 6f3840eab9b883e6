"""Post-training static int8 quantisation of grace-s: the fused graph, calibration, QuantizedModel.

    python -m decoder_fpga.quantize --checkpoint runs/grace-s/grace-s.pt \\
        --data cache/train_data --out codec/assets/grace-s.int8

writes the compiled program (`program.json` + `weights.bin`, see `decoder_fpga.program`)
and the QuantizedModel (`quantized.npz`) into the folder `--out`.

The fused graph
===============
`build_graph(config)` rewrites `GraceS.encode_reference` + `GraceS.render` as a list of
engine-shaped nodes over named tensors. One node is one engine invocation (before channel
splits) or one ARM-side op:

* `ConvNode`: conv (k 1/3, stride 1/2, dense/depthwise) + bias + requant, with fused
  - ReLU,
  - nearest x2 upsample of the input (`upsample`: `mot_up1`, `mot_up0`, `up1.dw`, `up2.dw`),
  - a residual add before the ReLU (`residual`: another int8 tensor of the output's shape):
    DSBlock's `relu(x + pw2(dw2(y)))` is `pw2` with residual `x`; the motion net's
    `relu(conv(up(x)) + skip)` is one call; the decoder's `relu(up(h) + skip(warp(f)*occ))`
    is `skip` with residual `up.pw`; `dec_in(warp(f2)*occ) + dec_heat(heat)` is `dec_in`
    with residual `dec_heat` (two convs summed through the residual path: their inputs
    have very different ranges, so one concatenated int8 input would waste the heatmaps'
    precision).
* `GridNode`: bilinear grid sample with the occlusion multiply fused (`warp(f, g) * occ`),
  or a bilinear resize (`mode="resize"`, a grid sample on a constant grid). grace-s's
  `warp` clamps its grid to the centres of the edge pixels, so the engine's zero padding
  is never reached: the clamp is part of building the grid (ARM side).
* `ArmNode`: the small ops that stay on the ARM (numpy): building the int8 inputs, the
  sampling grids in Q9.6 pixel coordinates (landmark backward map, bilinear resizes of the
  grid and of the refinement), the sigmoid of the occlusion logit and its resizes, and the
  final `warp(ref) + out` with clamp and uint8 conversion.

Tensors with a fixed, known range get a fixed scale, the others a calibrated one:

* `ref_in` (3, S, S): the key frame centred, `ref - 0.5`, at scale 0.5/127 (254 levels:
  `q = floor((508 p - 64515) / 510)` for a pixel p, exact). The encoder's input, and what
  the warps sample: the grids stay inside the frame (clamped), so
  `warp(ref) = warp(ref - 0.5) + 0.5` exactly, and `warp(resize(ref)) - 0.5` is
  `warp(resize(ref_in))`.
* `mot_in` (3 + 2G, q, q): the first motion conv's concatenated input is ONE int8 tensor
  with ONE scale, 1/127: the heatmaps are in [0, 1], the centred warped image in
  [-0.5, 0.5] (so it keeps about 7 bits, for the motion net only). Its channel slices are
  written by different steps: `mot_in.rgb` by the grid-sample engine (warp of the 64x64
  reference, requantised from 0.5/127 to 1/127), `mot_in.heat` (the target heatmaps, also
  `dec_heat`'s input) and `mot_in.ref_heat` by the ARM.
* every other int8 tensor (conv and grid-sample outputs): per-tensor scale from
  calibration (below).

Calibration
===========
The float graph (`run_float_graph`, which equals `GraceS.render` to float precision) runs
over calibration pairs (source/driving frames of the prepared train cache, the driving
frame's ring moved as the default stream moves it, `calibration_samples`). Per tensor:
scale = P / 127 where P is the `percentile` (default 99.99) of |x| over a random
subsample of every sample's values (method "percentile"), or the max of |x| (method
"max"). Weights: per output channel, `int8_ref.quantize_weights`
(max |w| / 127); a channel whose weights are all zero gets the scale that makes its
multiplier 2^-8 so its bias stays exact. Biases: int32 at s_in * s_w[co] (an error if it
would not fit 2^30). Multipliers: `int8_ref.quantize_multiplier`.
"""

from __future__ import annotations

import argparse
import dataclasses
import io
import json
import math
import sys
from pathlib import Path

import numpy as np

from codec.errors import GraceError

from . import int8_ref as ref

QUANT_VERSION = 1
REF_SCALE = 0.5 / 127.0  # ref_in, ref64, wref64, wref256: the centred key frame
HEAT_SCALE = 1.0 / 127.0  # mot_in (heatmaps in [0, 1], centred warped image)
DEFAULT_PERCENTILE = 99.99
SUBSAMPLE = 16384  # values per tensor and sample kept for the percentile


class QuantizationError(GraceError, ValueError):
    """The model cannot be quantised as asked (bad calibration data, an unrepresentable bias)."""


# ---------------------------------------------------------------------------------------
# The fused graph


@dataclasses.dataclass(frozen=True)
class TensorSpec:
    """One tensor of the fused graph (channel-major, batch 1).

    dtype: "int8" activations, "int16" grids (2, H, W) in Q9.6 pixels, "uint8" occlusion
    maps (H, W) at 1/255. scale: fixed scale, or None for a calibrated int8 tensor.
    parent/ch0: a view of channels [ch0, ch0 + shape[0]) of another tensor.
    """

    name: str
    shape: tuple[int, ...]
    dtype: str = "int8"
    stage: str = "frame"
    scale: float | None = None
    parent: str | None = None
    ch0: int = 0


@dataclasses.dataclass(frozen=True)
class ConvNode:
    name: str  # the GraceS module whose weights it uses; also its output tensor
    x: str
    k: int
    stride: int = 1
    depthwise: bool = False
    relu: bool = False
    upsample: bool = False
    residual: str | None = None
    stage: str = "frame"

    @property
    def y(self) -> str:
        return self.name

    @property
    def inputs(self) -> list[str]:
        return [self.x] + ([self.residual] if self.residual else [])


@dataclasses.dataclass(frozen=True)
class GridNode:
    name: str  # also its output tensor
    x: str
    grid: str
    occ: str | None = None
    mode: str = "warp"  # "warp" or "resize" (the grid is the constant resize grid)
    stage: str = "frame"
    out: str | None = None  # output tensor when not `name` (e.g. a channel slice)

    @property
    def y(self) -> str:
        return self.out or self.name

    @property
    def inputs(self) -> list[str]:
        return [self.x, self.grid] + ([self.occ] if self.occ else [])


@dataclasses.dataclass(frozen=True)
class ArmNode:
    name: str  # the ARM function (see decoder_fpga.backends.ARM_OPS)
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    stage: str = "frame"


@dataclasses.dataclass(frozen=True)
class Graph:
    config: dict
    tensors: dict[str, TensorSpec]
    nodes: list

    def node(self, name: str):
        return next(n for n in self.nodes if n.name == name)

    def root(self, name: str) -> str:
        """The tensor that owns the memory of `name` (itself unless a view)."""
        t = self.tensors[name]
        return t.parent if t.parent else name


def config_dict(config) -> dict:
    """A GraceSConfig (or its dict) as a plain JSON-able dict."""
    d = dataclasses.asdict(config) if dataclasses.is_dataclass(config) else dict(config)
    return {k: list(v) if isinstance(v, (tuple, list)) else v for k, v in d.items()}


def build_graph(config) -> Graph:
    """The fused graph of grace-s for a config (GraceSConfig or its dict). No torch needed."""
    c = config_dict(config)
    s = int(c["size"])
    if s % 16:
        raise QuantizationError(f"size must be a multiple of 16, got {s}")
    q, g = s // 4, int(c["groups"])
    e0, e1, e2 = c["enc"]
    m0, m1, m2 = c["motion"]
    d0, d1, d2 = c["dec"]
    T: dict[str, TensorSpec] = {}
    nodes: list = []

    def tensor(name, shape, **kw):
        T[name] = TensorSpec(name, tuple(int(v) for v in shape), **kw)

    def conv(name, x, cout, size, k=3, stride=1, **kw):
        stage = kw.get("stage", "frame")
        tensor(name, (cout, size, size), stage=stage)
        nodes.append(ConvNode(name, x, k, stride, **kw))

    def grid(name, x, grid_name, occ=None, mode="warp", stage="frame", out=None):
        if out is None:
            scale = REF_SCALE if T[x].scale == REF_SCALE else None
            tensor(name, (T[x].shape[0], T[grid_name].shape[1], T[grid_name].shape[2]),
                   stage=stage, scale=scale)  # fmt: skip
        nodes.append(GridNode(name, x, grid_name, occ, mode, stage, out))

    # ---- reference stage (once per key frame)
    R = "reference"
    tensor("ref_in", (3, s, s), stage=R, scale=REF_SCALE)
    tensor("grid_resize", (2, q, q), dtype="int16", stage=R)
    tensor("ref_heat", (g, q, q), stage=R, scale=HEAT_SCALE)
    nodes.append(ArmNode("reference_input", (), ("ref_in", "grid_resize", "ref_heat"), R))
    conv("enc0", "ref_in", e0, s, relu=True, stage=R)
    conv("enc1a", "enc0", e1, s // 2, stride=2, relu=True, stage=R)
    conv("enc1b", "enc1a", e1, s // 2, relu=True, stage=R)
    conv("enc2a", "enc1b", e2, q, stride=2, relu=True, stage=R)
    conv("enc2b", "enc2a", e2, q, relu=True, stage=R)
    grid("ref64", "ref_in", "grid_resize", mode="resize", stage=R)

    # ---- frame stage: motion net
    tensor("grid64", (2, q, q), dtype="int16")
    tensor("mot_in", (3 + 2 * g, q, q), scale=HEAT_SCALE)
    tensor("mot_in.rgb", (3, q, q), scale=HEAT_SCALE, parent="mot_in", ch0=0)
    tensor("mot_in.heat", (g, q, q), scale=HEAT_SCALE, parent="mot_in", ch0=3)
    tensor("mot_in.ref_heat", (g, q, q), scale=HEAT_SCALE, parent="mot_in", ch0=3 + g)
    nodes.append(ArmNode("frame_inputs", ("ref_heat",), ("grid64", "mot_in")))
    grid("wref64", "ref64", "grid64", out="mot_in.rgb")
    conv("mot0", "mot_in", m0, q, relu=True)
    conv("mot1a", "mot0", m1, q // 2, stride=2, relu=True)
    conv("mot1b", "mot1a", m1, q // 2, relu=True)
    conv("mot2a", "mot1b", m2, q // 4, stride=2, relu=True)
    conv("mot2b", "mot2a", m2, q // 4, relu=True)
    conv("mot_up1", "mot2b", m1, q // 2, upsample=True, residual="mot1b", relu=True)
    conv("mot_up0", "mot_up1", m0, q, upsample=True, residual="mot0", relu=True)
    conv("mot_head", "mot_up0", 3, q)
    maps = ("g64", "g128", "g256", "occ64", "occ128", "occ256")
    for name, size in zip(maps, (q, 2 * q, s) * 2):
        if name.startswith("g"):
            tensor(name, (2, size, size), dtype="int16")
        else:
            tensor(name, (size, size), dtype="uint8")
    nodes.append(ArmNode("motion_head", ("mot_head",), maps))

    # ---- frame stage: decoder
    def block(prefix, x, ch, size):
        conv(f"{prefix}.dw1", x, ch, size, depthwise=True)
        conv(f"{prefix}.pw1", f"{prefix}.dw1", ch, size, k=1, relu=True)
        conv(f"{prefix}.dw2", f"{prefix}.pw1", ch, size, depthwise=True)
        conv(f"{prefix}.pw2", f"{prefix}.dw2", ch, size, k=1, residual=x, relu=True)
        return f"{prefix}.pw2"

    grid("wf2", "enc2b", "g64", "occ64")
    conv("dec_heat", "mot_in.heat", d0, q, k=1)
    conv("dec_in", "wf2", d0, q, k=1, residual="dec_heat", relu=True)
    h = "dec_in"
    for i in range(int(c["dec_blocks"])):
        h = block(f"dec_blocks.{i}", h, d0, q)
    conv("up1.dw", h, d0, 2 * q, depthwise=True, upsample=True)
    conv("up1.pw", "up1.dw", d1, 2 * q, k=1)
    grid("wf1", "enc1b", "g128", "occ128")
    conv("skip1", "wf1", d1, 2 * q, k=1, residual="up1.pw", relu=True)
    h = block("block1", "skip1", d1, 2 * q)
    conv("up2.dw", h, d1, s, depthwise=True, upsample=True)
    conv("up2.pw", "up2.dw", d2, s, k=1)
    grid("wf0", "enc0", "g256", "occ256")
    conv("skip2", "wf0", d2, s, k=1, residual="up2.pw", relu=True)
    h = block("block2", "skip2", d2, s)
    conv("out", h, 3, s)
    grid("wref256", "ref_in", "g256")
    nodes.append(ArmNode("output", ("wref256", "out"), ()))
    return Graph(c, T, nodes)


# ---------------------------------------------------------------------------------------
# The float graph (torch): equals GraceS.render; used for calibration and tests


def _torch():
    try:
        import torch
    except ImportError:
        from codec.errors import BackendUnavailableError

        raise BackendUnavailableError(
            "quantising a model needs PyTorch: pip install torch (CPU build)"
        ) from None
    return torch


def run_float_graph(model, graph: Graph, inputs: dict) -> dict:
    """Runs the fused graph in float32 torch; returns every tensor (batch-first) plus "image".

    inputs: torch tensors ref (B, 3, S, S) in [0, 1], grid (B, 2, S, S) normalised,
    target_heat and ref_heat (B, G, S/4, S/4). Grids are normalised float here; "image" is
    `GraceS.render`'s unclamped output.
    """
    torch = _torch()
    import torch.nn.functional as F

    from codec.models.grace_s import resize, warp

    c = graph.config
    s, q = c["size"], c["size"] // 4
    t: dict = {}

    def get(name):
        spec = graph.tensors[name]
        if spec.parent:
            return t[spec.parent][:, spec.ch0 : spec.ch0 + spec.shape[0]]
        return t[name]

    ref_img = inputs["ref"]
    grid = inputs["grid"]
    for node in graph.nodes:
        if isinstance(node, ConvNode):
            mod = model.get_submodule(node.name)
            x = get(node.x)
            if node.upsample:
                x = F.interpolate(x, scale_factor=2, mode="nearest")
            y = mod(x)
            if node.residual:
                y = y + get(node.residual)
            t[node.y] = F.relu(y) if node.relu else y
        elif isinstance(node, GridNode):
            x = get(node.x)
            if node.mode == "resize":
                y = resize(x, graph.tensors[node.y].shape[1])
            else:
                y = warp(x, t[node.grid])
                y = y * t[node.occ] if node.occ else y
            spec = graph.tensors[node.y]
            if spec.parent:  # write a channel slice of another tensor
                p = t[spec.parent].clone()
                p[:, spec.ch0 : spec.ch0 + spec.shape[0]] = y
                t[spec.parent] = p
            else:
                t[node.y] = y
        elif node.name == "reference_input":
            t["ref_in"] = ref_img - 0.5
            t["ref_heat"] = inputs["ref_heat"]
        elif node.name == "frame_inputs":
            t["grid64"] = resize(grid, q)
            heat = inputs["target_heat"]
            t["mot_in"] = torch.cat([torch.zeros_like(heat[:, :3]), heat, t["ref_heat"]], 1)
        elif node.name == "motion_head":
            head = t["mot_head"]
            delta = head[:, :2] * c["flow_scale"]
            occ = torch.sigmoid(head[:, 2:3])
            t["g64"] = t["grid64"] + delta
            t["g128"] = resize(grid, 2 * q) + resize(delta, 2 * q)
            t["g256"] = grid + resize(delta, s)
            t["occ64"], t["occ128"], t["occ256"] = occ, resize(occ, 2 * q), resize(occ, s)
        elif node.name == "output":
            t["image"] = t["wref256"] + 0.5 + t["out"]
        else:  # pragma: no cover - the graph and this function are written together
            raise QuantizationError(f"no float semantics for ARM op {node.name!r}")
    return t


# ---------------------------------------------------------------------------------------
# Calibration data


def calibration_samples(root: Path, size: int, count: int = 32, seed: int = 0) -> list[dict]:
    """(source, driving) pairs of the prepared cache `root` (e.g. cache/train_data/train),
    the driving frame's motion points carrying the ring's motion as the default stream
    sends it (`PairDataset.ring_motion`): the grids the network sees in use.

    Returns float32 numpy dicts: ref (3, S, S), grid (2, S, S), target_heat and ref_heat
    (G, S/4, S/4); crops are resized to `size` when the cache holds another size.
    """
    import cv2

    from codec.generators.flow import landmark_heatmaps, network_inputs
    from codec.training.train import PairDataset

    index = Path(root) / "index.json"
    if not index.is_file():
        raise QuantizationError(f"no calibration data: {index} is missing")
    cache = PairDataset(root)
    if not cache.clips:
        raise QuantizationError(f"no calibration data: {index} lists no clips")
    rng = np.random.default_rng(seed)
    out = []
    for n in range(count):
        c = n % len(cache.clips)
        crops, lms, seg = cache.crops[c], cache.landmarks[c], cache.segments[c]
        i = int(rng.integers(len(seg)))
        j = int(rng.choice(np.flatnonzero(seg == seg[i])))
        img = np.array(crops[i])
        driven = cache.ring_motion(img, np.array(crops[j]), lms[i], lms[j])
        k = size / img.shape[0]
        if img.shape[:2] != (size, size):
            img = cv2.resize(img, (size, size), interpolation=cv2.INTER_AREA)
        src_lm = (lms[i].astype(np.float64) + 0.5) * k - 0.5
        dst_lm = (driven.astype(np.float64) + 0.5) * k - 0.5
        grid, heat = network_inputs(src_lm, dst_lm, size)
        out.append(
            {
                "ref": np.ascontiguousarray(img.transpose(2, 0, 1), np.float32) / 255.0,
                "grid": grid,
                "target_heat": heat,
                "ref_heat": landmark_heatmaps(src_lm, size, size // 4),
            }
        )
    return out


def synthetic_samples(size: int, count: int = 4, seed: int = 0) -> list[dict]:
    """Synthetic calibration/test inputs (smooth random images, the mean face moved a little).

    For tests and smoke runs only: these are not faces, so a model calibrated on them is
    not the shipped quantisation.
    """
    from codec.generators.flow import landmark_heatmaps, network_inputs
    from codec.motion import default_shape_model

    m = default_shape_model()
    rng = np.random.default_rng(seed)
    base = m.mean.reshape(68, 2) * m.scale0 * (size / 256) + size / 2
    out = []
    for _ in range(count):
        cells = rng.random((3, 8, 8))
        img = np.kron(cells, np.ones((size // 8, size // 8)))
        ys, xs = np.mgrid[0:size, 0:size] / size
        img = 0.6 * img + 0.4 * (0.5 + 0.5 * np.sin(6 * xs + 4 * ys + rng.random(3)[:, None, None]))
        src = base + rng.normal(0, 0.5, base.shape) * size / 256
        dst = src + rng.normal(0, 1.5, 2) * size / 256 + rng.normal(0, 0.7, base.shape)
        grid, heat = network_inputs(src, dst, size)
        out.append(
            {
                "ref": np.clip(img, 0, 1).astype(np.float32),
                "grid": grid,
                "target_heat": heat,
                "ref_heat": landmark_heatmaps(src, size, size // 4),
            }
        )
    return out


def _batches(samples: list[dict], n: int):
    torch = _torch()
    for k in range(0, len(samples), n):
        part = samples[k : k + n]
        yield {key: torch.from_numpy(np.stack([p[key] for p in part])) for key in part[0]}


def calibrate(
    model,
    graph: Graph,
    samples: list[dict],
    method: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    seed: int = 0,
) -> dict[str, float]:
    """Per-tensor activation scales for every calibrated int8 tensor of the graph."""
    torch = _torch()
    if method not in ("max", "percentile"):
        raise QuantizationError(f"calibration method must be 'max' or 'percentile', not {method!r}")
    if not samples:
        raise QuantizationError("calibration needs at least one sample")
    names = [
        n
        for n, spec in graph.tensors.items()
        if spec.dtype == "int8" and spec.scale is None and spec.parent is None
    ]
    peak = dict.fromkeys(names, 0.0)
    kept: dict[str, list[np.ndarray]] = {n: [] for n in names}
    rng = np.random.default_rng(seed)
    with torch.inference_mode():
        for b in _batches(samples, 4):
            t = run_float_graph(model, graph, b)
            for n in names:
                a = t[n].abs().reshape(t[n].shape[0], -1).numpy()
                peak[n] = max(peak[n], float(a.max()))
                if method == "percentile":
                    for row in a:
                        idx = rng.integers(0, row.size, min(SUBSAMPLE, row.size))
                        kept[n].append(row[idx])
    scales = {}
    for n in names:
        v = (
            peak[n]
            if method == "max"
            else float(np.percentile(np.concatenate(kept[n]), percentile))
        )
        if not math.isfinite(v):
            raise QuantizationError(f"calibration of {n} gave a non-finite range")
        scales[n] = v / 127.0 if v > 0 else 1.0
    return scales


# ---------------------------------------------------------------------------------------
# The quantised model


@dataclasses.dataclass
class QuantizedModel:
    """An int8 grace-s: integer operands per layer and the scale of every tensor.

    convs[name]: int8_ref.QuantConv (w int8, b/M/S int32 per output channel, res_M/res_S,
    w_scale); grids[name]: (M, S) of the grid-sample requant; scales: every int8 tensor
    (views included). Serialised as one npz (`save` / `load`), no torch needed to load.
    """

    arch: str
    config: dict
    digest: str  # hex, the float weights' digest (codec.models.weights_digest)
    scales: dict[str, float]
    convs: dict[str, ref.QuantConv]
    grids: dict[str, tuple[int, int]]
    calibration: dict
    version: int = QUANT_VERSION

    def graph(self) -> Graph:
        return build_graph(self.config)

    def save(self, path: Path) -> None:
        meta = {
            "arch": self.arch,
            "config": self.config,
            "digest": self.digest,
            "scales": self.scales,
            "grids": {k: [int(m), int(s)] for k, (m, s) in self.grids.items()},
            "calibration": self.calibration,
            "version": self.version,
            "res": {k: [v.res_M, v.res_S] for k, v in self.convs.items() if v.res_M is not None},
        }
        arrays = {"meta": np.frombuffer(json.dumps(meta).encode(), np.uint8)}
        for name, qc in self.convs.items():
            for field in ("w", "b", "M", "S", "w_scale"):
                arrays[f"{name}/{field}"] = getattr(qc, field)
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        Path(path).write_bytes(buf.getvalue())

    @classmethod
    def load(cls, path: Path) -> QuantizedModel:
        try:
            with np.load(Path(path), allow_pickle=False) as z:
                meta = json.loads(z["meta"].tobytes().decode())
                if meta.get("version") != QUANT_VERSION:
                    raise QuantizationError(
                        f"{path}: quantised-model version {meta.get('version')}, "
                        f"expected {QUANT_VERSION}"
                    )
                convs = {}
                for key in z.files:
                    if key.endswith("/w"):
                        name = key[:-2]
                        rm, rs = meta["res"].get(name, [None, None])
                        convs[name] = ref.QuantConv(
                            z[f"{name}/w"], z[f"{name}/b"], z[f"{name}/M"], z[f"{name}/S"],
                            rm, rs, z[f"{name}/w_scale"],
                        )  # fmt: skip
        except (OSError, ValueError, KeyError) as e:
            if isinstance(e, GraceError):
                raise
            raise QuantizationError(f"{path}: not a quantised model ({e})") from None
        return cls(
            meta["arch"],
            meta["config"],
            meta["digest"],
            {k: float(v) for k, v in meta["scales"].items()},
            convs,
            {k: (int(m), int(s)) for k, (m, s) in meta["grids"].items()},
            meta["calibration"],
            meta["version"],
        )


def quantize_conv_layer(
    w: np.ndarray, b: np.ndarray, s_in: float, s_out: float, s_res: float | None, name: str
) -> ref.QuantConv:
    """int8_ref.quantize_conv, plus: all-zero channels keep an exact bias; no silent clamps."""
    w = np.asarray(w, np.float64)
    b = np.asarray(b, np.float64)
    wq, sw = ref.quantize_weights(w)
    dead = np.abs(w.reshape(w.shape[0], -1)).max(axis=1) == 0
    sw = np.where(dead, s_out / (s_in * 256.0), sw)  # multiplier 2^-8: bias in 1/256 steps
    bq = ref.round_half_up(b / (s_in * sw))
    if np.abs(bq).max(initial=0) > ref.BIAS_LIMIT:
        raise QuantizationError(f"{name}: a bias does not fit the int32 bias range (2^30)")
    try:
        M, S = ref.quantize_multiplier(s_in * sw / s_out)
        res_M = res_S = None
        if s_res is not None:
            rm, rs = ref.quantize_multiplier(s_res / s_out)
            res_M, res_S = int(rm), int(rs)
    except ref.UnsupportedConfigError as e:
        raise QuantizationError(f"{name}: {e}") from None
    return ref.QuantConv(wq, bq.astype(np.int32), M, S, res_M, res_S, sw)


def tensor_scales(graph: Graph, calibrated: dict[str, float]) -> dict[str, float]:
    """Fixed + calibrated scales for every int8 tensor (views take their parent's)."""
    out = {}
    for name, spec in graph.tensors.items():
        if spec.dtype != "int8":
            continue
        if spec.parent:
            continue
        out[name] = spec.scale if spec.scale is not None else calibrated[name]
    for name, spec in graph.tensors.items():
        if spec.dtype == "int8" and spec.parent:
            out[name] = out[spec.parent]
    return out


def quantize_model(
    model,
    samples: list[dict],
    method: str = "percentile",
    percentile: float = DEFAULT_PERCENTILE,
    source: str = "",
) -> QuantizedModel:
    """Calibrates a float GraceS on `samples` and returns its QuantizedModel."""
    from codec.models import weights_digest

    graph = build_graph(model.config)
    if samples and samples[0]["ref"].shape[-1] != graph.config["size"]:
        raise QuantizationError(
            f"calibration samples are {samples[0]['ref'].shape[-1]} px, "
            f"the model renders {graph.config['size']} px"
        )
    scales = tensor_scales(graph, calibrate(model, graph, samples, method, percentile))
    state = {k: v.detach().cpu().double().numpy() for k, v in model.state_dict().items()}
    convs, grids = {}, {}
    for node in graph.nodes:
        if isinstance(node, ConvNode):
            convs[node.name] = quantize_conv_layer(
                state[f"{node.name}.weight"],
                state[f"{node.name}.bias"],
                scales[node.x],
                scales[node.y],
                scales[node.residual] if node.residual else None,
                node.name,
            )
        elif isinstance(node, GridNode):
            try:
                grids[node.name] = ref.grid_sample_multiplier(
                    scales[node.x], scales[node.y], node.occ is not None
                )
            except ref.UnsupportedConfigError as e:
                raise QuantizationError(f"{node.name}: {e}") from None
    calib = {"method": method, "samples": len(samples), "source": source}
    if method == "percentile":
        calib["percentile"] = percentile
    return QuantizedModel(
        model.arch,
        graph.config,
        weights_digest(model.state_dict()).hex(),
        scales,
        convs,
        grids,
        calib,
    )


# ---------------------------------------------------------------------------------------
# CLI


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m decoder_fpga.quantize",
        description="Quantise a grace-s checkpoint to int8 and compile its engine program.",
    )
    p.add_argument("--checkpoint", required=True, type=Path)
    p.add_argument("--data", type=Path, default=Path("cache/train_data"),
                   help="prepared cache (its train/ split is used for calibration)")  # fmt: skip
    p.add_argument("--out", required=True, type=Path, help="output folder")
    p.add_argument("--samples", type=int, default=32)
    p.add_argument("--method", choices=("max", "percentile"), default="percentile")
    p.add_argument("--percentile", type=float, default=DEFAULT_PERCENTILE)
    args = p.parse_args(argv)
    from codec.generators.torch_backend import load_model

    from .program import compile_program

    try:
        model = load_model(args.checkpoint)
        root = args.data / "train" if (args.data / "train").is_dir() else args.data
        samples = calibration_samples(root, model.config.size, args.samples)
        qm = quantize_model(model, samples, args.method, args.percentile, source=str(root))
        program = compile_program(qm)
        args.out.mkdir(parents=True, exist_ok=True)
        qm.save(args.out / "quantized.npz")
        program.save(args.out)
    except GraceError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"{args.out}: program for {qm.arch} {qm.digest}, {len(program.steps('frame'))} "
          f"frame steps, weights {program.weights_bytes} B, arena {program.arena_bytes} B")  # fmt: skip
    return 0


if __name__ == "__main__":
    # Run the package's copy of this module: the compiler's isinstance checks need the
    # node classes of `decoder_fpga.quantize`, not of `__main__`.
    from decoder_fpga.quantize import main as _main

    sys.exit(_main())
