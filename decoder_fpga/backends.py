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

import os
import shutil
import tempfile
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


def resize_bilinear(x: np.ndarray, size: int) -> np.ndarray:
    """float (C, H, W) -> float64 (C, size, size): torch's bilinear interpolate,
    align_corners=False, no antialias (source index clamped at 0, edges replicated)."""

    def taps(n_in: int, n_out: int):
        src = np.maximum((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0)
        i0 = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
        i1 = np.minimum(i0 + 1, n_in - 1)
        f = src - i0
        return i0, i1, 1.0 - f, f

    x = np.asarray(x, np.float64)
    i0, i1, a, b = taps(x.shape[1], size)
    y = x[:, i0, :] * a[None, :, None] + x[:, i1, :] * b[None, :, None]
    j0, j1, a, b = taps(x.shape[2], size)
    return y[:, :, j0] * a[None, None, :] + y[:, :, j1] * b[None, None, :]


def grid_to_fixed_clamped(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Normalised grid (2, Ho, Wo) -> int16 Q9.6 pixels of an (h, w) input, clamped to the
    edge pixels' centres ([0, w - 1] x [0, h - 1]) as grace-s's `warp` clamps its grid."""
    q = ref.grid_to_fixed(grid, h, w)
    q[0] = np.clip(q[0], 0, (w - 1) * ref.GRID_ONE)
    q[1] = np.clip(q[1], 0, (h - 1) * ref.GRID_ONE)
    return q


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


def _frame_inputs(run: ProgramRunner, landmarks: np.ndarray, **_):
    """Landmarks -> the backward map (kept on the ARM), its 64x64 resize as a Q9.6 grid,
    the target heatmaps and a copy of the reference heatmaps into mot_in."""
    from codec.generators.flow import network_inputs

    s = run.size
    q = s // 4
    grid, heat = network_inputs(run.state["ref_lm"], landmarks, s)
    run.state["grid"] = grid.astype(np.float64)
    run.state["grid64"] = resize_bilinear(grid, q)
    run.view("grid64")[...] = grid_to_fixed_clamped(run.state["grid64"], q, q)
    run.view("mot_in.heat")[...] = ref.quantize(heat, run.scale("mot_in.heat"))
    run.view("mot_in.ref_heat")[...] = run.view("ref_heat")


def _motion_head(run: ProgramRunner, **_):
    """The head (grid refinement, occlusion logit) -> Q9.6 grids at 64/128/256 and uint8
    occlusion maps: sigmoid, bilinear resizes and the sums in float64 on the ARM."""
    s = run.size
    q = s // 4
    head = run.view("mot_head").astype(np.float64) * run.scale("mot_head")
    delta = head[:2] * run.program.meta["config"]["flow_scale"]
    occ = 1.0 / (1.0 + np.exp(-head[2:3]))
    grid = run.state["grid"]
    g64 = run.state["grid64"] + delta
    g128 = resize_bilinear(grid, 2 * q) + resize_bilinear(delta, 2 * q)
    g256 = grid + resize_bilinear(delta, s)
    run.view("g64")[...] = grid_to_fixed_clamped(g64, q, q)
    run.view("g128")[...] = grid_to_fixed_clamped(g128, 2 * q, 2 * q)
    run.view("g256")[...] = grid_to_fixed_clamped(g256, s, s)
    run.view("occ64")[...] = ref.occlusion_to_fixed(occ[0])
    run.view("occ128")[...] = ref.occlusion_to_fixed(resize_bilinear(occ, 2 * q)[0])
    run.view("occ256")[...] = ref.occlusion_to_fixed(resize_bilinear(occ, s)[0])


def _output(run: ProgramRunner, **_):
    """warp(ref) + out -> clamp to [0, 1] -> uint8 (S, S, 3), rounding half to even like
    the torch backend; warp(ref) = warp(ref - 0.5) + 0.5 (the grid stays inside)."""
    img = run.view("wref256").astype(np.float64) * run.scale("wref256") + 0.5
    img = img + run.view("out").astype(np.float64) * run.scale("out")
    out = np.rint(np.clip(img, 0.0, 1.0) * 255.0).astype(np.uint8)
    run.state["image"] = np.ascontiguousarray(out.transpose(1, 2, 0))


ARM_OPS = {
    "reference_input": _reference_input,
    "frame_inputs": _frame_inputs,
    "motion_head": _motion_head,
    "output": _output,
}


# ---------------------------------------------------------------------------------------
# The program runner


class ProgramRunner:
    """Runs a Program's stages over one activation arena with the given engines."""

    def __init__(self, program: Program, engines):
        self.program = program
        self.engines = engines
        self.size = program.size
        self.arena = np.zeros(program.arena_bytes, np.uint8)
        self.weights = np.frombuffer(program.weights, np.uint8)
        self.state: dict = {}  # ARM-side memory (landmarks, the float backward map)
        for stage in ("reference", "frame"):
            for st in program.steps(stage):
                if st["op"] == "arm" and st["node"] not in ARM_OPS:
                    raise CompileError(f"the program needs ARM op {st['node']!r}, unknown here")

    def _at(self, buf: np.ndarray, off: int, shape, dtype) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        return buf[off : off + n].view(dtype).reshape(shape)

    def view(self, name: str) -> np.ndarray:
        """The arena slice of tensor `name` (a writable numpy view)."""
        t = self.program.tensor(name)
        return self._at(self.arena, t["offset"], tuple(t["shape"]), DTYPES[t["dtype"]])

    def scale(self, name: str) -> float:
        return float(self.program.tensor(name)["scale"])

    def run(self, stage: str, **inputs) -> None:
        for st in self.program.steps(stage):
            op = st["op"]
            if op == "conv":
                c = st["cfg"]
                k, cin, cout = c["k"], c["cin"], c["cout"]
                ho = ref.conv_out_size(c["h"], k, c["stride"], bool(c["upsample"]))
                wo = ref.conv_out_size(c["w"], k, c["stride"], bool(c["upsample"]))
                x = self._at(self.arena, st["x"], (cin, c["h"], c["w"]), np.int8)
                w = self._at(
                    self.weights, st["w"], (cout, 1 if c["depthwise"] else cin, k, k), np.int8
                )
                params = self._at(self.weights, st["params"], (cout, 3), np.int32)
                res = (
                    self._at(self.arena, st["res"], (cout, ho, wo), np.int8)
                    if c["residual"]
                    else None
                )
                y = self.engines.conv(x, w, params, res, c)
                self._at(self.arena, st["y"], (cout, ho, wo), np.int8)[...] = y
            elif op == "grid_sample":
                c = st["cfg"]
                x = self._at(self.arena, st["x"], (c["c"], c["h"], c["w"]), np.int8)
                grid = self._at(self.arena, st["grid"], (2, c["ho"], c["wo"]), np.int16)
                occ = (
                    self._at(self.arena, st["occ"], (c["ho"], c["wo"]), np.uint8)
                    if c["occlusion"]
                    else None
                )
                y = self.engines.grid_sample(x, grid, occ, c)
                self._at(self.arena, st["y"], (c["c"], c["ho"], c["wo"]), np.int8)[...] = y
            else:
                ARM_OPS[st["node"]](self, **inputs)


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
