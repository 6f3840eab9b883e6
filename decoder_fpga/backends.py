"""The `int8` and `csim` generator backends: a compiled Program run step by step.

Both run the same `decoder_fpga.program.Program` over the same activation arena; they
differ only in who executes the engine steps:

* `int8` (`Int8Generator`): `int8_ref.conv2d_int8` / `grid_sample_int8` in numpy, the
  specification of the hardware arithmetic;
* `csim` (`CsimGenerator`): the HLS C++ engines of `hw/` compiled with g++ and called
  through ctypes (`decoder_fpga.csim`), bit-exact with int8_ref.

The ARM-side steps (`ARM_OPS`: building the int8 inputs, the Q9.6 sampling grids and the
occlusion maps, the final `warp(ref) + out` to uint8) are this module's numpy code in
both, and are what the board's ARM runs (PYNQ runs Python), so `int8 ≡ csim` holds frame
for frame.

Where the program comes from (`resolve_program`), in order:
1. `program=`: a Program or a folder holding one;
2. shipped next to the checkpoint: `<checkpoint without .pt>.int8/program.json`
   (`codec/assets/grace-s.int8/` for the shipped model; made by
   `python -m decoder_fpga.quantize`);
3. the user cache, keyed by the weights digest: `$GRACECODEC_CACHE` or
   `$XDG_CACHE_HOME/gracecodec` or `~/.cache/gracecodec`, under `programs/`;
4. quantised now (once, then stored in 3): the float checkpoint through
   `torch_backend.load_model`, calibrated on `calibration=` (samples or a prepared-cache
   split folder), else `$GRACECODEC_CALIB_DATA`, else the source checkout's
   `cache/train_data/train`. Without any of these the backend is unavailable, with a
   message saying how to make the program.
The program carries the float weights' digest; a stream made for other weights is a
`ModelMismatchError`.
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import numpy as np

from codec.errors import BackendUnavailableError, GraceError, InputError, ModelMismatchError

from . import int8_ref as ref
from .program import DTYPES, PROGRAM_VERSION, CompileError, Program
from .quantize import QUANT_VERSION

REPO = Path(__file__).resolve().parents[1]


# ---------------------------------------------------------------------------------------
# Engines


class Int8Engines:
    """The engine steps in numpy (int8_ref)."""

    name = "int8"

    def conv(self, x, w, params, res, cfg):
        return ref.conv2d_int8(
            x, w, params[:, 0], params[:, 1], params[:, 2],
            stride=cfg["stride"], depthwise=bool(cfg["depthwise"]), relu=bool(cfg["relu"]),
            upsample=bool(cfg["upsample"]), residual=res,
            res_M=cfg["res_m"] if res is not None else None,
            res_S=cfg["res_s"] if res is not None else None,
        )  # fmt: skip

    def grid_sample(self, x, grid, occ, cfg):
        return ref.grid_sample_int8(x, grid, cfg["m"], cfg["s"], occlusion=occ)


class CsimEngines:
    """The engine steps in C simulation (hw/ compiled by g++)."""

    name = "csim"

    def __init__(self):
        from . import csim

        csim.load_library()  # build now: a missing compiler fails at construction
        self.csim = csim

    def conv(self, x, w, params, res, cfg):
        return self.csim.conv2d(
            x, w, params[:, 0], params[:, 1], params[:, 2],
            stride=cfg["stride"], depthwise=bool(cfg["depthwise"]), relu=bool(cfg["relu"]),
            upsample=bool(cfg["upsample"]), residual=res,
            res_M=cfg["res_m"] if res is not None else None,
            res_S=cfg["res_s"] if res is not None else None, tile_rows=cfg["tile_rows"],
        )  # fmt: skip

    def grid_sample(self, x, grid, occ, cfg):
        return self.csim.grid_sample(x, grid, cfg["m"], cfg["s"], occlusion=occ)


# ---------------------------------------------------------------------------------------
# ARM-side ops (numpy; the board's ARM runs the same code)
#
# Cost (docs/hardware.md "The ARM side"): the constant parts are computed once per size
# (resize taps, functools.cache) and every per-frame op is the float64 arithmetic of the
# previous, straightforward version, in the same order, so the results are the same
# bits; what changed is fewer temporaries (in-place ops, out=; the backward map and the
# heatmaps in codec.generators.flow likewise), and the work that only depends on the
# landmarks (`prepare_frame_inputs`) split from the work that needs the
# motion head, so that a lookahead (`Int8Generator.render_many`) can run it ahead.


@functools.cache
def _taps(n_in: int, n_out: int):
    """Bilinear taps of torch's interpolate (align_corners=False, source index clamped at
    0, edge replicated): i0, i1 (int64) and the weights 1 - f, f (float64), read-only."""
    src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    f = src - i0
    out = (i0, i1, 1.0 - f, f)
    for a in out:
        a.flags.writeable = False
    return out


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """float (C, H, W) -> float64 (C, size, size): torch's bilinear interpolate,
    align_corners=False, no antialias (source index clamped at 0, edges replicated)."""
    x = np.asarray(x, np.float64)
    i0, i1, a, b = _taps(x.shape[1], size)
    y = np.take(x, i0, axis=1)
    y *= a[None, :, None]
    t = np.take(x, i1, axis=1)
    t *= b[None, :, None]
    y += t
    j0, j1, a, b = _taps(x.shape[2], size)
    z = np.take(y, j0, axis=2)
    z *= a[None, None, :]
    t = np.take(y, j1, axis=2)
    t *= b[None, None, :]
    z += t
    return z


def _to_q96(p: np.ndarray, n: int, out: np.ndarray) -> None:
    """Normalised coordinates p (H, W) float64 of an n-pixel axis -> Q9.6 pixels in `out`
    (int16), clamped to the edge pixels' centres: ref.grid_to_fixed's arithmetic
    (((g + 1) n - 1) / 2 x 64, round half up, NaN -> far outside) then the clamp."""
    t = p + 1.0
    t *= n
    t -= 1.0
    t /= 2.0
    t *= ref.GRID_ONE
    t += 0.5
    np.floor(t, out=t)
    np.nan_to_num(t, copy=False, nan=-32768.0)
    np.clip(t, 0, (n - 1) * ref.GRID_ONE, out=t)
    out[...] = t


def grid_to_fixed_clamped(grid: np.ndarray, h: int, w: int, out=None) -> np.ndarray:
    """Normalised grid (2, Ho, Wo) -> int16 Q9.6 pixels of an (h, w) input, clamped to the
    edge pixels' centres ([0, w - 1] x [0, h - 1]) as grace-s's `warp` clamps its grid
    (= clip(ref.grid_to_fixed(grid, h, w)) bit for bit); written into `out` when given."""
    g = np.asarray(grid, np.float64)
    if out is None:
        out = np.empty(g.shape, np.int16)
    _to_q96(g[0], w, out[0])
    _to_q96(g[1], h, out[1])
    return out


def prepare_frame_inputs(ref_lm: np.ndarray, landmarks: np.ndarray, size: int,
                         heat_scale: float) -> dict:  # fmt: skip
    """What a frame needs from its landmarks alone (no engine result), in ARM memory:
    the backward map (float64, kept for motion_head), its 64 and 128 px resizes, the
    64 px Q9.6 grid and the int8 target heatmaps. Pure: safe on a worker thread."""
    from codec.generators.flow import network_inputs

    q = size // 4
    grid, heat = network_inputs(ref_lm, landmarks, size)
    grid = grid.astype(np.float64)
    grid64 = resize_bilinear(grid, q)
    return {
        "landmarks": np.array(landmarks, np.float64),
        "grid": grid,
        "grid64": grid64,
        "grid128": resize_bilinear(grid, 2 * q),
        "grid64_q": grid_to_fixed_clamped(grid64, q, q),
        "heat_q": ref.quantize(heat, heat_scale),
    }


def _reference_input(run: ProgramRunner, image: np.ndarray, landmarks: np.ndarray, **_):
    """uint8 key frame -> ref_in = p/255 - 0.5 at scale 0.5/127, exactly (round half up):
    q = floor((508 p - 64515) / 510); the constant resize grid; the reference heatmaps at
    scale 1/127."""
    from codec.generators.flow import landmark_heatmaps

    s = run.size
    q = s // 4
    p = image.transpose(2, 0, 1).astype(np.int32)
    run.view("ref_in")[...] = (508 * p - 64515) // 510
    run.view("grid_resize")[...] = ref.resize_grid(s, s, q, q)
    run.state["ref_lm"] = np.asarray(landmarks, np.float64)
    heat = landmark_heatmaps(run.state["ref_lm"], s, q)
    run.view("ref_heat")[...] = ref.quantize(heat, run.scale("ref_heat"))


def _frame_inputs(run: ProgramRunner, landmarks: np.ndarray, prepared: dict | None = None, **_):
    """Landmarks -> the backward map (kept on the ARM), its 64x64 resize as a Q9.6 grid,
    the target heatmaps and a copy of the reference heatmaps into mot_in. `prepared`: the
    same computed ahead (`prepare_frame_inputs`, for these landmarks); only the arena
    writes are left here."""
    p = prepared
    lm = np.asarray(landmarks, np.float64)
    if (
        p is None
        or p.get("ref_lm") is not run.state["ref_lm"]
        or not np.array_equal(p["landmarks"], lm)
    ):
        p = run.prepare(landmarks)
    run.state["frame"] = p
    run.view("grid64")[...] = p["grid64_q"]
    run.view("mot_in.heat")[...] = p["heat_q"]
    run.view("mot_in.ref_heat")[...] = run.view("ref_heat")


def _motion_head(run: ProgramRunner, **_):
    """The head (grid refinement, occlusion logit) -> Q9.6 grids at 64/128/256 and uint8
    occlusion maps: sigmoid, bilinear resizes and the sums in float64 on the ARM.

    Split in two (same arithmetic, same bits): the 64 px grid and occlusion, which the
    decoder's first warp (wf2) needs at once, here; the 128 px and 256 px ones
    (`motion_head_late`, only needed by wf1 and by wf0 / wref256) handed to
    `ProgramRunner.defer`, which computes them at once (`render`) or on the ARM worker
    while the engines run the 64 px decoder stage (`render_many`)."""
    s = run.size
    q = s // 4
    p = run.state["frame"]
    head = run.view("mot_head").astype(np.float64)  # a copy in ARM memory
    head *= run.scale("mot_head")
    delta = head[:2]
    delta *= run.program.meta["config"]["flow_scale"]
    occ = head[2:3]
    np.negative(occ, out=occ)
    np.exp(occ, out=occ)
    occ += 1.0
    np.divide(1.0, occ, out=occ)
    g = p["grid64"] + delta
    grid_to_fixed_clamped(g, q, q, out=run.view("g64"))
    run.view("occ64")[...] = ref.occlusion_to_fixed(occ[0])
    # the half-size part first: wf1 needs it before wf0 needs the full-size one
    run.defer(("g128", "occ128"), motion_head_late, delta, occ, p["grid128"], 2 * q)
    run.defer(("g256", "occ256"), motion_head_late, delta, occ, p["grid"], s)


def motion_head_late(delta: np.ndarray, occ: np.ndarray, grid: np.ndarray, n: int):
    """One of motion_head's larger sizes (n = S/2 or S: "g128"/"occ128", "g256"/"occ256"):
    the Q9.6 grid resize(delta) + grid (the backward map at n px) and the uint8 occlusion
    map, (int16 (2, n, n), uint8 (n, n)) in ARM memory. Pure (reads its float64 arguments
    only, writes new arrays): safe on a worker thread."""
    g = resize_bilinear(delta, n)
    g += grid  # = resize(grid) + resize(delta): addition commutes exactly
    return grid_to_fixed_clamped(g, n, n), ref.occlusion_to_fixed(resize_bilinear(occ, n)[0])


@functools.cache
def _output_lut(s_wref: float, s_out: float) -> np.ndarray:
    """uint8 (65536,): the output pixel for every (warp(ref - 0.5), out) int8 pair, indexed
    by (wref & 0xff) << 8 | (out & 0xff): the float64 arithmetic of `output_image`, done
    once per pair of scales instead of once per pixel (same bits)."""
    v = np.arange(256, dtype=np.uint8).view(np.int8).astype(np.float64)
    img = (v * s_wref + 0.5)[:, None] + (v * s_out)[None, :]
    lut = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8).reshape(-1)
    lut.flags.writeable = False
    return lut


def output_image(wref: np.ndarray, out: np.ndarray, s_wref: float, s_out: float) -> np.ndarray:
    """int8 warp(ref - 0.5) and out (3, S, S) -> uint8 (S, S, 3): warp(ref) + out, clamp
    to [0, 1], x 255, rounding half to even like the torch backend (through a table of
    the 65536 int8 pairs, `_output_lut`). Pure (worker-safe)."""
    idx = np.left_shift(wref.view(np.uint8).transpose(1, 2, 0), 8, dtype=np.uint16)
    idx |= out.view(np.uint8).transpose(1, 2, 0)
    return _output_lut(float(s_wref), float(s_out))[idx]


def _output(run: ProgramRunner, defer_output: bool = False, **_):
    """warp(ref) + out -> clamp to [0, 1] -> uint8 (S, S, 3), rounding half to even like
    the torch backend; warp(ref) = warp(ref - 0.5) + 0.5 (the grid stays inside).
    defer_output: only copy the two int8 operands out of the arena (`state["output_raw"]`,
    for `output_image` on a worker while the engines run the next frame)."""
    args = (run.view("wref256"), run.view("out"), run.scale("wref256"), run.scale("out"))
    if defer_output:
        run.state["output_raw"] = (args[0].copy(), args[1].copy(), *args[2:])
    else:
        run.state["image"] = output_image(*args)


ARM_OPS = {
    "reference_input": _reference_input,
    "frame_inputs": _frame_inputs,
    "motion_head": _motion_head,
    "output": _output,
}
DEFERRING_OPS = {"motion_head"}  # ARM ops that hand part of their work to `defer`


# ---------------------------------------------------------------------------------------
# The program runner


def tensor_span(program: Program, name: str) -> tuple[int, int]:
    """The arena bytes [start, end) of tensor `name`."""
    t = program.tensor(name)
    n = int(np.prod(t["shape"])) * np.dtype(DTYPES[t["dtype"]]).itemsize
    return t["offset"], t["offset"] + n


def _overlaps(spans, touch) -> bool:
    """Whether any byte range [a, b) of `spans` overlaps any of `touch`."""
    return any(a < d and c < b for a, b in spans for c, d in touch)


def join_step(program: Program, stage: str, after: int, outputs) -> int:
    """Index of the first step of `stage` after step `after` that reads or writes the
    bytes of any tensor of `outputs` (where deferred ARM work for them must be in the
    arena: `ProgramRunner.defer`); len(steps) when none does."""
    spans = [tensor_span(program, n) for n in outputs]
    steps = program.steps(stage)
    for i in range(after + 1, len(steps)):
        names = (*steps[i].get("inputs", ()), *steps[i].get("outputs", ()))
        if _overlaps(spans, [tensor_span(program, n) for n in names]):
            return i
    return len(steps)


class ProgramRunner:
    """Runs a Program's stages over one activation arena with the given engines."""

    def __init__(self, program: Program, engines):
        self.program = program
        self.engines = engines
        self.size = program.size
        self.arena = np.zeros(program.arena_bytes, np.uint8)
        self.weights = np.frombuffer(program.weights, np.uint8)
        self.state: dict = {}  # ARM-side memory (landmarks, the float backward map)
        self._setup()

    def _setup(self) -> None:
        """Checks the ARM ops and notes the arena bytes each step touches (`defer`)."""
        self.worker = None  # render_many's ARM worker while it runs (see defer)
        self._pending: list = []  # deferred ARM results not in the arena yet
        self.arm_times = {"deferred": 0.0, "join": 0.0, "wait": 0.0}  # host s, cumulative
        self.deferred_times: dict[tuple, list] = {}  # outputs -> [compute s, write s]
        self._touch = {}
        for stage in ("reference", "frame"):
            for st in self.program.steps(stage):
                if st["op"] == "arm" and st["node"] not in ARM_OPS:
                    raise CompileError(f"the program needs ARM op {st['node']!r}, unknown here")
            self._touch[stage] = [
                [
                    tensor_span(self.program, n)
                    for n in (*st.get("inputs", ()), *st.get("outputs", ()))
                ]
                for st in self.program.steps(stage)
            ]

    def defers(self, stage: str) -> bool:
        """Whether the stage has an ARM op that defers work (`DEFERRING_OPS`)."""
        return any(st.get("node") in DEFERRING_OPS for st in self.program.steps(stage))

    def _released(self) -> None:
        """After an ARM op that deferred work, and at the end of a stage: the worker's
        held jobs may start (they queue behind the deferred work)."""
        if self.worker is not None:
            self.worker.release()

    def _clock(self) -> float:
        """Host seconds of ARM work (the board runner leaves out cache maintenance)."""
        return time.perf_counter()

    def defer(self, outputs: tuple[str, ...], fn, *args) -> None:
        """ARM work `fn(*args)` -> one array per tensor of `outputs`, which no step needs
        before the first one that touches those tensors' arena bytes. Without a worker
        (`render`) it is done and written now, in program order. With one (`render_many`)
        it goes to the worker ahead of the worker's other queued work, and this thread
        writes the results into the arena just before that step (`_join`), so the worker
        never touches the arena and the arena holds, at every step, the same bytes as in
        `render`."""
        if self.worker is None:
            t0 = self._clock()
            res = fn(*args)
            self._note(outputs, self._clock() - t0)
            self._write(outputs, res)
            return
        spans = [tensor_span(self.program, n) for n in outputs]
        self._pending.append((spans, outputs, self.worker.submit(_timed, fn, *args, first=True)))

    def _join(self, touch: list | None = None) -> None:
        """Before a step touching the byte ranges `touch` (None: at the end of the stage,
        all): waits for the deferred work whose outputs overlap them and writes it."""
        keep = []
        for spans, names, fut in self._pending:
            if touch is None or _overlaps(spans, touch):
                t0 = time.perf_counter()
                res, dt = fut.result()
                self.arm_times["wait"] += time.perf_counter() - t0
                self._note(names, dt)
                self._write(names, res)
            else:
                keep.append((spans, names, fut))
        self._pending = keep

    def _note(self, names, dt: float) -> None:
        self.arm_times["deferred"] += dt
        self.deferred_times.setdefault(tuple(names), [0.0, 0.0])[0] += dt

    def _write(self, names, arrays) -> None:
        t0 = self._clock()
        for n, a in zip(names, arrays):
            self.view(n)[...] = a
        dt = self._clock() - t0
        self.arm_times["join"] += dt
        self.deferred_times.setdefault(tuple(names), [0.0, 0.0])[1] += dt

    def _at(self, buf: np.ndarray, off: int, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return buf[off : off + n].view(dtype).reshape(shape)

    def view(self, name: str) -> np.ndarray:
        """The arena slice of tensor `name` (a writable numpy view)."""
        t = self.program.tensor(name)
        return self._at(self.arena, t["offset"], tuple(t["shape"]), DTYPES[t["dtype"]])

    def scale(self, name: str) -> float:
        return float(self.program.tensor(name)["scale"])

    def prepare(self, landmarks: np.ndarray) -> dict:
        """`prepare_frame_inputs` for the current key frame (pure: a worker may run it)."""
        p = prepare_frame_inputs(
            self.state["ref_lm"], landmarks, self.size, self.scale("mot_in.heat")
        )
        p["ref_lm"] = self.state["ref_lm"]
        return p

    def run(self, stage: str, **inputs) -> None:
        self._pending = []
        for st, touch in zip(self.program.steps(stage), self._touch[stage]):
            if self._pending:
                self._join(touch)
            if st["op"] in ("conv", "grid_sample"):
                self._engine_step(st)
            else:
                self._arm_step(st, inputs)
        self._released()
        self._join()

    def _arm_step(self, st: dict, inputs: dict) -> None:
        ARM_OPS[st["node"]](self, **inputs)
        if st["node"] in DEFERRING_OPS:
            self._released()

    def _engine_step(self, st: dict) -> None:
        c = st["cfg"]
        if st["op"] == "conv":
            k, cin, cout = c["k"], c["cin"], c["cout"]
            ho = ref.conv_out_size(c["h"], k, c["stride"], bool(c["upsample"]))
            wo = ref.conv_out_size(c["w"], k, c["stride"], bool(c["upsample"]))
            x = self._at(self.arena, st["x"], (cin, c["h"], c["w"]), np.int8)
            w = self._at(self.weights, st["w"], (cout, 1 if c["depthwise"] else cin, k, k), np.int8)
            params = self._at(self.weights, st["params"], (cout, 3), np.int32)
            res = (
                self._at(self.arena, st["res"], (cout, ho, wo), np.int8) if c["residual"] else None
            )
            y = self.engines.conv(x, w, params, res, c)
            self._at(self.arena, st["y"], (cout, ho, wo), np.int8)[...] = y
        else:
            x = self._at(self.arena, st["x"], (c["c"], c["h"], c["w"]), np.int8)
            grid = self._at(self.arena, st["grid"], (2, c["ho"], c["wo"]), np.int16)
            occ = (
                self._at(self.arena, st["occ"], (c["ho"], c["wo"]), np.uint8)
                if c["occlusion"]
                else None
            )
            y = self.engines.grid_sample(x, grid, occ, c)
            self._at(self.arena, st["y"], (c["c"], c["ho"], c["wo"]), np.int8)[...] = y


def _timed(fn, *args):
    t0 = time.perf_counter()
    res = fn(*args)
    return res, time.perf_counter() - t0


# ---------------------------------------------------------------------------------------
# Where the program comes from


def cache_root() -> Path:
    env = os.environ.get("GRACECODEC_CACHE")
    if env:
        return Path(env)
    xdg = os.environ.get("XDG_CACHE_HOME")
    return (Path(xdg) if xdg else Path.home() / ".cache") / "gracecodec"


def default_calibration() -> Path | None:
    """$GRACECODEC_CALIB_DATA, else the source checkout's cache/train_data/train, else None."""
    env = os.environ.get("GRACECODEC_CALIB_DATA")
    if env:
        p = Path(env)
        return p / "train" if (p / "train" / "index.json").is_file() else p
    p = REPO / "cache" / "train_data" / "train"
    return p if (p / "index.json").is_file() else None


def _check_digest(program: Program, model_digest: bytes, where) -> Program:
    if model_digest and program.digest != model_digest.hex():
        raise ModelMismatchError(
            f"the stream was made for weights {model_digest.hex()}, the int8 program "
            f"({where}) for {program.digest}"
        )
    return program


def resolve_program(
    model_id: str = "grace-s",
    model_digest: bytes = b"",
    checkpoint=None,
    program=None,
    calibration=None,
    cache_dir=None,
) -> Program:
    """The compiled program for a model; see the module docstring for the search order."""
    if isinstance(program, Program):
        return _check_digest(program, model_digest, "given")
    if program is not None:
        return _check_digest(Program.load(Path(program)), model_digest, program)
    import json

    from codec.generators.torch_backend import model_path

    if model_id == "warp":  # a warp stream carries no model: use the shipped one
        model_id, model_digest = "grace-s", b""
    ckpt = Path(checkpoint) if checkpoint else model_path(model_id)
    shipped = ckpt.with_suffix(".int8")
    if (shipped / "program.json").is_file():
        prog = Program.load(shipped)
        card_path = ckpt.with_suffix(".json")  # the sidecar model card, when there is one
        card = json.loads(card_path.read_text()) if card_path.is_file() else None
        if card and card.get("digest") != prog.digest:
            raise ModelMismatchError(
                f"{shipped} was compiled for weights {prog.digest}, {ckpt.name} holds "
                f"{card.get('digest')}: re-run python -m decoder_fpga.quantize"
            )
        return _check_digest(prog, model_digest, shipped)
    from codec.generators.torch_backend import load_model
    from codec.models import weights_digest

    model = load_model(ckpt, model_digest)  # BackendUnavailableError without torch/weights
    digest = weights_digest(model.state_dict()).hex()
    folder = (
        Path(cache_dir) if cache_dir else cache_root() / "programs"
    ) / f"{model.arch}-{digest}-q{QUANT_VERSION}-p{PROGRAM_VERSION}"
    if (folder / "program.json").is_file():
        return _check_digest(Program.load(folder), model_digest, folder)
    from .program import compile_program
    from .quantize import DEFAULT_PERCENTILE, calibration_samples, quantize_model

    if calibration is None:
        calibration = default_calibration()
    if calibration is None:
        raise BackendUnavailableError(
            f"no int8 program for {model.arch} {digest} (looked in {shipped} and {folder}) "
            "and no calibration data to make one: run `python -m decoder_fpga.quantize "
            f"--checkpoint {ckpt} --data <prepared cache> --out {shipped}` or set "
            "GRACECODEC_CALIB_DATA to a prepared cache (codec.training.prepare)"
        )
    if isinstance(calibration, (str, Path)):
        source = str(calibration)
        samples = calibration_samples(Path(calibration), model.config.size)
    else:
        source, samples = "given samples", list(calibration)
    qm = quantize_model(model, samples, "percentile", DEFAULT_PERCENTILE, source=source)
    prog = compile_program(qm)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=".tmp-"))
    try:
        prog.save(tmp)
        qm.save(tmp / "quantized.npz")
        try:
            tmp.rename(folder)
        except OSError:  # another process stored it first: theirs is the same
            pass
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return prog


# ---------------------------------------------------------------------------------------
# The generators


class Int8Generator:
    """The int8 reference decoder (numpy): the specification of the hardware arithmetic.

    Takes the torch backend's arguments (model_id, model_digest, checkpoint) plus
    `program` (a Program or its folder), `calibration` (samples or a prepared-cache split)
    and `cache_dir`; see `resolve_program`.
    """

    name = "int8"

    def __init__(
        self,
        model_id: str = "grace-s",
        model_digest: bytes = b"",
        checkpoint=None,
        program=None,
        calibration=None,
        cache_dir=None,
    ):
        engines = self._engines()
        self.program = resolve_program(
            model_id, model_digest, checkpoint, program, calibration, cache_dir
        )
        self.runner = ProgramRunner(self.program, engines)
        self.size = self.program.size
        self._has_ref = False

    def _engines(self):
        return Int8Engines()

    def set_reference(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        """image: uint8 (S, S, 3) RGB; landmarks: float32 (68, 2) in its pixels.
        Runs the program's reference stage (the feature encoder) once."""
        image = np.asarray(image)
        if image.shape != (self.size, self.size, 3) or image.dtype != np.uint8:
            raise InputError(
                f"the model renders {self.size}x{self.size}: the key frame must be uint8 "
                f"({self.size}, {self.size}, 3), got {image.dtype} {image.shape}"
            )
        self.runner.run("reference", image=image, landmarks=np.asarray(landmarks, np.float64))
        self._has_ref = True

    def render(self, landmarks: np.ndarray) -> np.ndarray:
        """landmarks: float32 (68, 2) -> uint8 (S, S, 3) RGB."""
        if not self._has_ref:
            raise RuntimeError("render() before set_reference()")
        self.runner.run("frame", landmarks=np.asarray(landmarks, np.float64))
        return self.runner.state.pop("image")

    def _deliver_deferred(self, image: np.ndarray) -> np.ndarray:
        """A frame converted on the worker, handed out (the board copies it into its
        double-buffered frame buffers)."""
        return image

    def render_many(self, landmarks_seq) -> Iterator[np.ndarray]:
        """Lookahead rendering of the frames of one key frame: yields, in order, the uint8
        (S, S, 3) frame of each landmarks of `landmarks_seq` (any iterable, read one frame
        ahead), bit for bit `[render(lm) for lm in landmarks_seq]`.

        The co-processor schedule: one ARM worker thread prepares frame t+1's inputs
        (`prepare_frame_inputs`: the backward map, its resizes, the heatmaps) and converts
        frame t-1's output while this thread runs frame t's engine steps (the C engines
        release the GIL, so the overlap is real in csim / pynq-sim too). The worker only
        touches ARM memory (its inputs, double-buffered: one set in use, one being made,
        and copies of the output operands); every arena access stays on this thread, in
        program order. Of motion_head only the 64 px grid and occlusion (wf2's) stay
        between the motion net and the decoder of the same frame: its 128 px and 256 px
        parts (`ProgramRunner.defer`) go to the worker ahead of its other work while the
        engines run the 64 px decoder stage, and wf1 / wf0 wait for them. Call
        set_reference first; do not call it while iterating."""
        if not self._has_ref:
            raise RuntimeError("render_many() before set_reference()")
        run = self.runner
        it = iter(landmarks_seq)

        def _next():
            lm = next(it, None)
            return None if lm is None else np.asarray(lm, np.float64)

        with _ArmWorker() as arm, self._overlap(arm), self._deferring(arm):
            nxt = _next()
            ahead = arm.submit(run.prepare, nxt) if nxt is not None else None
            pending = None  # frame t-1's output conversion
            while nxt is not None:
                cur, prepared = nxt, ahead
                nxt = _next()
                if nxt is not None:  # held until this frame's deferred part is queued
                    ahead = arm.submit(run.prepare, nxt, hold=run.defers("frame"))
                run.run("frame", landmarks=cur, prepared=prepared.result(), defer_output=True)
                done = arm.submit(output_image, *run.state.pop("output_raw"))
                if pending is not None:
                    yield self._deliver_deferred(pending.result())
                pending = done
            if pending is not None:
                yield self._deliver_deferred(pending.result())

    @contextlib.contextmanager
    def _deferring(self, worker: _ArmWorker):
        """While render_many runs, the runner hands deferred ARM work to the worker."""
        self.runner.worker = worker
        try:
            yield
        finally:
            self.runner.worker = None

    def _overlap(self, worker: _ArmWorker):
        """A context for the overlapped schedule (the board's driver gives the GIL away
        while it polls and the worker has work); nothing to do here."""
        return contextlib.nullcontext()


class _ArmWorker:
    """The ARM worker of render_many: one thread running its jobs in order, except that
    a job submitted with first=True (motion_head's deferred part, which a step of the
    frame the engines are running waits for) goes ahead of the queued, not yet started
    others; and whether it has work (`busy`)."""

    def __init__(self):
        self._urgent: deque = deque()
        self._queue: deque = deque()
        self._held: deque = deque()  # jobs that wait for release()
        self._cv = threading.Condition()
        self._jobs = 0  # queued + running
        self._closed = False
        self._thread = threading.Thread(target=self._loop, name="grace-arm", daemon=True)
        self._thread.start()

    def submit(self, fn, *args, first: bool = False, hold: bool = False) -> Future:
        """Queues fn(*args); first: ahead of the queued others; hold: not before the next
        release() (frame t+1's inputs, held until frame t's deferred part is queued, so
        that part does not wait behind them)."""
        fut: Future = Future()
        with self._cv:
            q = self._urgent if first else self._held if hold else self._queue
            q.append((fut, fn, args))
            self._jobs += 1
            self._cv.notify()
        return fut

    def release(self) -> None:
        """The held jobs join the queue (after those queued before them)."""
        with self._cv:
            self._queue.extend(self._held)
            self._held.clear()
            self._cv.notify()

    def _loop(self) -> None:
        while True:
            with self._cv:
                while not (self._urgent or self._queue or self._closed):
                    self._cv.wait()
                if not (self._urgent or self._queue):
                    return
                fut, fn, args = (self._urgent or self._queue).popleft()
            try:
                if fut.set_running_or_notify_cancel():
                    try:
                        fut.set_result(fn(*args))
                    except BaseException as e:  # handed to whoever waits for the result
                        fut.set_exception(e)
            finally:
                with self._cv:
                    self._jobs -= 1

    def busy(self) -> bool:
        return self._jobs > 0

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
        with self._cv:  # the queued jobs still run (their results may be waited for)
            self._closed = True
            self._cv.notify()
        self._thread.join()


class CsimGenerator(Int8Generator):
    """The same program with the conv and grid-sample steps in the C-simulated engines."""

    name = "csim"

    def _engines(self):
        try:
            return CsimEngines()
        except GraceError:
            raise
        except OSError as e:
            raise BackendUnavailableError(f"the csim engines cannot load: {e}") from None
