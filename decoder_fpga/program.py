"""The compiler: a QuantizedModel -> a Program (engine invocations over two memory arenas).

A Program is what the board runs, and what the `int8` and `csim` backends run here:

* `weights.bin`, the **weight arena** (read-only): for each conv layer its int8 weights
  in the conv engine's DDR layout, `[cout][cin][k][k]` dense or `[c][k][k]` depthwise,
  then its int32 params `[cout][3]` = {bias, M, S}; every block 64-byte aligned. A split
  along output channels is a contiguous sub-range of both (no repacking).
* the **activation arena** (`arena_bytes`, zero-initialised by the runtime): every tensor
  of the fused graph at a fixed byte offset, channel-major (`[C][H][W]` int8 activations,
  `[2][H][W]` int16 Q9.6 grids, `[H][W]` uint8 occlusion maps), 64-byte aligned. Tensors
  that the frame stage reads from the reference stage (features, the centred key frame,
  its heatmaps) are persistent; the others share memory by lifetime (first fit), the
  reference stage's temporaries overlapping the frame stage's.
* `program.json`: format/version, arch, config, model digest, the tensor table (offset,
  dtype, shape, scale), and two ordered step lists, `reference` (run by set_reference) and
  `frame` (run by render). A step is one of

      {"op": "conv", "node", "part": [i, n], "x", "w", "params", "res", "y", "cfg": {...}}
      {"op": "grid_sample", "node", "x", "grid", "occ", "y", "cfg": {...}}
      {"op": "arm", "node", "inputs": [...], "outputs": [...]}

  with byte offsets (x/res/y/grid/occ in the activation arena, -1 for none; w/params in
  the weight arena) and `cfg` exactly the engine's `s_axilite` configuration struct
  (`grace_conv_cfg_t` / `grace_gs_cfg_t`, tile_rows resolved).

Tiling: a dense conv whose weights overflow a weight bank (`ceil(cout/32) * ceil(cin/8)*8
* k*k > 4096` bytes) is split along output channels into the fewest parts of multiples of
32 that fit; row tiling inside a call is the engine's (`tile_rows`, chosen here as the
largest that fits). Everything is checked with `int8_ref.check_conv` /
`check_grid_sample` (the engines' own checks): a layer the engines cannot take — too wide
(> 256 px), an input row set over the 64 KiB input buffer, one 32-channel output group
whose weights overflow a bank, a requant out of range — raises `CompileError` naming the
layer; nothing is silently wrong.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import numpy as np

from codec.errors import GraceError

from . import int8_ref as ref
from .quantize import ArmNode, ConvNode, Graph, GridNode, QuantizedModel

PROGRAM_FORMAT = "gracecodec-program"
PROGRAM_VERSION = 1
ALIGN = 64
DTYPES = {"int8": np.int8, "int16": np.int16, "uint8": np.uint8, "int32": np.int32}


class CompileError(GraceError, ValueError):
    """The fused graph holds a layer the engines cannot take (or the program is malformed)."""


def _align(n: int) -> int:
    return -(-n // ALIGN) * ALIGN


def _nbytes(shape, dtype: str) -> int:
    return int(np.prod(shape)) * np.dtype(DTYPES[dtype]).itemsize


@dataclasses.dataclass
class Program:
    """A compiled program: `meta` (the JSON document) and the weight arena bytes."""

    meta: dict
    weights: bytes

    # ---- accessors
    @property
    def digest(self) -> str:
        return self.meta["digest"]

    @property
    def arena_bytes(self) -> int:
        return int(self.meta["arena_bytes"])

    @property
    def weights_bytes(self) -> int:
        return len(self.weights)

    @property
    def size(self) -> int:
        return int(self.meta["config"]["size"])

    def steps(self, stage: str) -> list[dict]:
        return self.meta["stages"][stage]

    def tensor(self, name: str) -> dict:
        return self.meta["tensors"][name]

    # ---- serialisation
    def save(self, folder: Path) -> None:
        """Writes `folder/program.json` and `folder/weights.bin`."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "weights.bin").write_bytes(self.weights)
        (folder / "program.json").write_text(json.dumps(self.meta, indent=1) + "\n")

    @classmethod
    def load(cls, folder: Path) -> Program:
        folder = Path(folder)
        try:
            meta = json.loads((folder / "program.json").read_text())
            weights = (folder / "weights.bin").read_bytes()
        except (OSError, ValueError) as e:
            raise CompileError(f"{folder}: cannot read the program ({e})") from None
        if meta.get("format") != PROGRAM_FORMAT or meta.get("version") != PROGRAM_VERSION:
            raise CompileError(
                f"{folder}: not a {PROGRAM_FORMAT} v{PROGRAM_VERSION} program "
                f"(format {meta.get('format')!r}, version {meta.get('version')!r})"
            )
        if hashlib.sha256(weights).hexdigest() != meta.get("weights_sha256"):
            raise CompileError(f"{folder}: weights.bin does not match its recorded sha256")
        prog = cls(meta, weights)
        validate(prog)
        return prog


# ---------------------------------------------------------------------------------------
# Memory planning


def _lifetimes(graph: Graph) -> tuple[list, dict[str, tuple[int, int]]]:
    """Node order and, per root tensor, (first writer, last reader) node indices."""
    order = [n for n in graph.nodes if n.stage == "reference"] + [
        n for n in graph.nodes if n.stage == "frame"
    ]
    first: dict[str, int] = {}
    last: dict[str, int] = {}
    for i, node in enumerate(order):
        outs = list(node.outputs) if isinstance(node, ArmNode) else [node.y]
        ins = list(node.inputs)
        for name in outs:
            r = graph.root(name)
            first.setdefault(r, i)
            last[r] = max(last.get(r, i), i)
        for name in ins:
            r = graph.root(name)
            if r not in first:
                raise CompileError(f"{node.name} reads {name} before anything writes it")
            last[r] = max(last[r], i)
    return order, {r: (first[r], last[r]) for r in first}


def plan_memory(graph: Graph) -> tuple[dict[str, int], int, set[str]]:
    """Byte offsets of every root tensor, the arena size, and the persistent tensors."""
    order, life = _lifetimes(graph)
    n_ref = sum(1 for n in order if n.stage == "reference")
    persistent = [r for r, (a, b) in life.items() if a < n_ref <= b]
    offsets: dict[str, int] = {}
    top = 0
    for r in sorted(persistent, key=lambda r: life[r][0]):
        offsets[r] = top
        top += _align(_nbytes(graph.tensors[r].shape, graph.tensors[r].dtype))
    base = top
    peak = base
    for lo, hi in ((0, n_ref), (n_ref, len(order))):  # the two stages share the rest
        placed: list[tuple[int, int, int, int]] = []  # (offset, size, first, last)
        temps = [r for r, (a, b) in life.items() if r not in offsets and lo <= a < hi]
        for r in sorted(temps, key=lambda r: life[r][0]):
            a, b = life[r]
            size = _align(_nbytes(graph.tensors[r].shape, graph.tensors[r].dtype))
            busy = sorted((o, o + sz) for o, sz, f, e in placed if not (e < a or b < f))
            off = base
            for s0, s1 in busy:
                if off + size <= s0:
                    break
                off = max(off, s1)
            placed.append((off, size, a, b))
            offsets[r] = off
            peak = max(peak, off + size)
    return offsets, peak, set(persistent)


# ---------------------------------------------------------------------------------------
# Compilation


def split_output_channels(
    cin: int, cout: int, k: int, depthwise: bool, limits: ref.ConvLimits
) -> list[tuple[int, int]]:
    """[(co0, co1)] parts of a conv whose weights fit the engine's weight banks."""
    if depthwise:
        return [(0, cout)]
    ci_pad = -(-cin // limits.pe_ci) * limits.pe_ci
    per_group = ci_pad * k * k  # bytes a bank per pe_co-channel output group
    groups_per_part = limits.w_bank_bytes // per_group
    if groups_per_part < 1:
        raise CompileError(
            f"WEIGHTS_TOO_BIG: one group of {limits.pe_co} output channels needs {per_group} "
            f"bytes a weight bank (> {limits.w_bank_bytes}); the engine cannot split input "
            "channels"
        )
    n_groups = -(-cout // limits.pe_co)
    n_parts = -(-n_groups // groups_per_part)
    # Balanced parts, each a multiple of pe_co channels (the last takes the remainder).
    per_part = -(-n_groups // n_parts) * limits.pe_co
    return [(c0, min(cout, c0 + per_part)) for c0 in range(0, cout, per_part)]


def compile_program(
    qm: QuantizedModel,
    conv_limits: ref.ConvLimits = ref.CONV_LIMITS,
    grid_limits: ref.GridLimits = ref.GRID_LIMITS,
) -> Program:
    """Compiles a QuantizedModel; raises CompileError for anything the engines cannot take."""
    graph = qm.graph()
    offsets, arena, persistent = plan_memory(graph)
    T = graph.tensors

    def addr(name: str) -> int:
        spec = T[name]
        if spec.parent:
            plane = int(np.prod(spec.shape[1:])) * np.dtype(DTYPES[spec.dtype]).itemsize
            return offsets[spec.parent] + spec.ch0 * plane
        return offsets[name]

    blob = bytearray()

    def put(a: np.ndarray) -> int:
        off = len(blob)
        blob.extend(np.ascontiguousarray(a).tobytes())
        blob.extend(b"\0" * (_align(len(blob)) - len(blob)))
        return off

    stages: dict[str, list[dict]] = {"reference": [], "frame": []}
    for node in graph.nodes:
        where = f"layer {node.name!r}"
        if isinstance(node, ConvNode):
            qc = qm.convs.get(node.name)
            if qc is None:
                raise CompileError(f"{where}: no quantised weights")
            cin, h, w = T[node.x].shape
            cout = T[node.y].shape[0]
            k = node.k
            want_w = (cout, 1 if node.depthwise else cin, k, k)
            if tuple(qc.w.shape) != want_w:
                raise CompileError(f"{where}: weights {qc.w.shape}, expected {want_w}")
            ho = ref.conv_out_size(h, k, node.stride, node.upsample)
            if (cout, ho, ho) != T[node.y].shape:
                raise CompileError(f"{where}: output {T[node.y].shape} != {(cout, ho, ho)}")
            try:
                parts = split_output_channels(cin, cout, k, node.depthwise, conv_limits)
            except CompileError as e:
                raise CompileError(f"{where} ({cin}->{cout}, k={k}): {e}") from None
            w_off = put(qc.w.astype(np.int8))
            params = np.stack([qc.b, qc.M, qc.S], axis=1).astype(np.int32)
            p_off = put(params)
            res_m = int(qc.res_M) if node.residual else 0
            res_s = int(qc.res_S) if node.residual else 0
            if node.residual and T[node.residual].shape != T[node.y].shape:
                raise CompileError(f"{where}: residual shape {T[node.residual].shape}")
            if (qc.M < 0).any() or (qc.S < ref.S_MIN).any() or (qc.S > ref.S_MAX).any():
                raise CompileError(f"{where}: BAD_REQUANT: a multiplier/shift is out of range")
            if node.residual and (min(int(qc.S.min()), res_s) <= ref.RES_GUARD_BITS):
                raise CompileError(
                    f"{where}: BAD_REQUANT: a fused residual needs shifts >= "
                    f"{ref.RES_GUARD_BITS + 1}"
                )
            if np.abs(qc.b.astype(np.int64)).max() > ref.BIAS_LIMIT:
                raise CompileError(f"{where}: BAD_BIAS: |bias| > 2^30")
            plane_out = ho * ho
            w_per_co = int(np.prod(want_w[1:]))
            for i, (c0, c1) in enumerate(parts):
                pc_in = c1 - c0 if node.depthwise else cin
                try:
                    tr = ref.check_conv(
                        pc_in, c1 - c0, h, w, k=k, stride=node.stride,
                        depthwise=node.depthwise, upsample=node.upsample, relu=node.relu,
                        residual=node.residual is not None, limits=conv_limits,
                    )  # fmt: skip
                except ref.UnsupportedConfigError as e:
                    raise CompileError(
                        f"{where} ({cin}->{cout}, {h}x{w}, k={k}, stride={node.stride}, "
                        f"depthwise={node.depthwise}, upsample={node.upsample}): {e}"
                    ) from None
                x_off = addr(node.x) + (c0 * h * w if node.depthwise else 0)
                stages[node.stage].append(
                    {
                        "op": "conv",
                        "node": node.name,
                        "part": [i, len(parts)],
                        "channels": [c0, c1],
                        "inputs": node.inputs,
                        "outputs": [node.y],
                        "x": x_off,
                        "w": w_off + c0 * w_per_co,
                        "params": p_off + c0 * 12,
                        "res": addr(node.residual) + c0 * plane_out if node.residual else -1,
                        "y": addr(node.y) + c0 * plane_out,
                        "cfg": {
                            "cin": pc_in,
                            "cout": c1 - c0,
                            "h": h,
                            "w": w,
                            "k": k,
                            "stride": node.stride,
                            "depthwise": int(node.depthwise),
                            "relu": int(node.relu),
                            "upsample": int(node.upsample),
                            "residual": int(node.residual is not None),
                            "res_m": res_m,
                            "res_s": res_s,
                            "tile_rows": tr,
                        },  # fmt: skip
                    }
                )
        elif isinstance(node, GridNode):
            c, h, w = T[node.x].shape
            _, ho, wo = T[node.grid].shape
            m, s = qm.grids[node.name]
            try:
                ref.check_grid_sample(c, h, w, ho, wo, occlusion=node.occ is not None,
                                      limits=grid_limits)  # fmt: skip
                if not (0 <= m <= ref.M_MAX and ref.S_MIN <= s <= ref.S_MAX):
                    raise ref._fail(ref.EngineStatus.BAD_REQUANT, f"M={m} S={s}")
            except ref.UnsupportedConfigError as e:
                raise CompileError(f"{where} ({c}x{h}x{w} -> {ho}x{wo}): {e}") from None
            stages[node.stage].append(
                {
                    "op": "grid_sample",
                    "node": node.name,
                    "mode": node.mode,
                    "inputs": node.inputs,
                    "outputs": [node.y],
                    "x": addr(node.x),
                    "grid": addr(node.grid),
                    "occ": addr(node.occ) if node.occ else -1,
                    "y": addr(node.y),
                    "cfg": {
                        "c": c,
                        "h": h,
                        "w": w,
                        "ho": ho,
                        "wo": wo,
                        "occlusion": int(node.occ is not None),
                        "m": m,
                        "s": s,
                    },
                }  # fmt: skip
            )
        else:
            stages[node.stage].append(
                {
                    "op": "arm",
                    "node": node.name,
                    "inputs": list(node.inputs),
                    "outputs": list(node.outputs),
                }  # fmt: skip
            )
    tensors = {}
    for name, spec in T.items():
        tensors[name] = {
            "offset": addr(name),
            "dtype": spec.dtype,
            "shape": list(spec.shape),
            "scale": qm.scales.get(name),
            "stage": spec.stage,
            "persistent": graph.root(name) in persistent,
        }
    weights = bytes(blob)
    meta = {
        "format": PROGRAM_FORMAT,
        "version": PROGRAM_VERSION,
        "arch": qm.arch,
        "config": qm.config,
        "digest": qm.digest,
        "quantization": {"version": qm.version, "calibration": qm.calibration},
        "arena_bytes": arena,
        "weights_bytes": len(weights),
        "weights_sha256": hashlib.sha256(weights).hexdigest(),
        "conv_limits": dataclasses.asdict(conv_limits),
        "grid_limits": dataclasses.asdict(grid_limits),
        "tensors": tensors,
        "stages": stages,
    }
    prog = Program(meta, weights)
    validate(prog)
    return prog


def validate(prog: Program) -> None:
    """Structural checks of a (loaded) program: every buffer inside its arena."""
    meta = prog.meta
    arena, wbytes = prog.arena_bytes, prog.weights_bytes
    for name, t in meta["tensors"].items():
        end = t["offset"] + _nbytes(t["shape"], t["dtype"])
        if t["offset"] < 0 or end > arena:
            raise CompileError(f"tensor {name} [{t['offset']}, {end}) is outside the arena")
    for stage in ("reference", "frame"):
        for st in meta["stages"][stage]:
            if st["op"] == "conv":
                c = st["cfg"]
                ho = ref.conv_out_size(c["h"], c["k"], c["stride"], bool(c["upsample"]))
                wo = ref.conv_out_size(c["w"], c["k"], c["stride"], bool(c["upsample"]))
                wsz = c["cout"] * (1 if c["depthwise"] else c["cin"]) * c["k"] ** 2
                spans = [
                    (st["x"], c["cin"] * c["h"] * c["w"], arena),
                    (st["y"], c["cout"] * ho * wo, arena),
                    (st["w"], wsz, wbytes),
                    (st["params"], 12 * c["cout"], wbytes),
                ]
                if c["residual"]:
                    spans.append((st["res"], c["cout"] * ho * wo, arena))
            elif st["op"] == "grid_sample":
                c = st["cfg"]
                spans = [
                    (st["x"], c["c"] * c["h"] * c["w"], arena),
                    (st["grid"], 4 * c["ho"] * c["wo"], arena),
                    (st["y"], c["c"] * c["ho"] * c["wo"], arena),
                ]
                if c["occlusion"]:
                    spans.append((st["occ"], c["ho"] * c["wo"], arena))
            else:
                continue
            for off, n, limit in spans:
                if off < 0 or off + n > limit:
                    raise CompileError(f"step {st['node']}: buffer [{off}, {off + n}) out of range")
