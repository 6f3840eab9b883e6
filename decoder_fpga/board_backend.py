"""The `pynq` and `pynq-sim` generator backends: the compiled Program run through the
board driver (decoder_fpga/driver.py).

The program, its resolution (`backends.resolve_program`, model digest checked) and the
ARM-side ops (`backends.ARM_OPS`) are the `int8` / `csim` backends' own; only the engine
steps differ: each is a register write of its arguments (physical addresses of the
weights and activation buffers + the config struct), a start, a poll of ap_done. On
`pynq-sim` the device is `sim_device.SimDevice` (the C-simulated engines on simulated
DDR), so frames equal `csim` and `int8` bit for bit; on `pynq` it is the board
(`pynq_device.PynqDevice`).

The runner keeps a per-frame trace of host seconds per stage (pack: register writes;
flush; run: start to done; invalidate; arm: ARM ops; unpack: the frame into its output
buffer), and, per key frame, the reference stage's features stay in the activation
buffer (persistent tensors of the program) for every frame that follows.
"""

from __future__ import annotations

import contextlib
import time

import numpy as np

from .backends import Int8Generator, ProgramRunner, resolve_program
from .driver import DEFAULT_TIMEOUT_S, Board, Device
from .program import DTYPES, Program

STAGES = ("pack", "flush", "run", "invalidate", "arm", "unpack")


class BoardRunner(ProgramRunner):
    """ProgramRunner whose arena is the device buffer and whose engine steps go through
    the driver; ARM ops are backends.ARM_OPS unchanged."""

    def __init__(self, program: Program, board: Board):
        self.program = program
        self.board = board
        self.engines = None
        self.size = program.size
        self.arena = board.arena.array
        self.weights = board.weights.array
        self.state: dict = {}
        self.trace: list[dict] = []  # one entry per stage run
        self._setup()

    def _clock(self) -> float:
        """Host seconds less the cache maintenance (traced as flush / invalidate)."""
        t = self.board.times
        return time.perf_counter() - t.get("invalidate", 0.0) - t.get("flush", 0.0)

    def view(self, name: str) -> np.ndarray:
        """The arena slice of tensor `name`, after the coherence the CPU access needs."""
        t = self.program.tensor(name)
        dtype = DTYPES[t["dtype"]]
        n = int(np.prod(t["shape"])) * np.dtype(dtype).itemsize
        return self.board.cpu_view(t["offset"], n).view(dtype).reshape(t["shape"])

    def run(self, stage: str, **inputs) -> None:
        """The stage's steps, traced (host seconds): the STAGES; arm (all ARM work of the
        stage, on whichever thread it ran); arm_by_op (that work by op, motion_head split
        as `perf.arm_host_ms` splits it: "motion_head" its 64 px part, "late:<outputs>"
        computing a deferred part, "write:<outputs>" its arena writes); arm_inline (what
        render_many keeps on this thread between engine steps: motion_head's 64 px part
        and the writes); arm_deferred (the deferred parts, on the worker in render_many);
        wait (this thread blocked on them, render_many only)."""
        b = self.board
        before, at0 = dict(b.times), dict(self.arm_times)
        self.deferred_times = {}
        t_start = time.perf_counter()
        self._counts = {"engine_steps": 0, "arm_ops": 0}
        self._by_op: dict[str, float] = {}
        super().run(stage, **inputs)
        by_op = self._by_op
        if "image" in self.state:
            self.state["image"] = b.output_frame(self.state["image"]).copy()
        for names, (late, write) in self.deferred_times.items():
            by_op["late:" + "+".join(names)] = late
            by_op["write:" + "+".join(names)] = write
        rec = {s: b.times.get(s, 0.0) - before.get(s, 0.0) for s in STAGES}
        d = {k: v - at0[k] for k, v in self.arm_times.items()}
        rec["arm"] = sum(by_op.values())
        rec.update(stage=stage, **self._counts, arm_by_op=by_op,
                   arm_inline=by_op.get("motion_head", 0.0) + d["join"],
                   arm_deferred=d["deferred"], wait=d["wait"])  # fmt: skip
        rec["total"] = time.perf_counter() - t_start
        self.trace.append(rec)

    def _engine_step(self, st: dict) -> None:
        self.board.run_step(st)
        self._counts["engine_steps"] += 1

    def _arm_step(self, st: dict, inputs: dict) -> None:
        t0, d0 = self._clock(), self.arm_times["deferred"] + self.arm_times["join"]
        super()._arm_step(st, inputs)
        d1 = self.arm_times["deferred"] + self.arm_times["join"]
        dt = self._clock() - t0 - (d1 - d0)  # less deferred work done in the op
        self._by_op[st["node"]] = self._by_op.get(st["node"], 0.0) + dt
        self._counts["arm_ops"] += 1


class BoardGenerator(Int8Generator):
    """The program on a board device; `device=` a driver.Device (made by `_device()` when
    None). Other arguments as Int8Generator (program, checkpoint, calibration, ...)."""

    name = "pynq-sim"
    yield_while_polling = True  # render_many: give the GIL away while polling (see _overlap)

    def __init__(
        self,
        model_id: str = "grace-s",
        model_digest: bytes = b"",
        checkpoint=None,
        program=None,
        calibration=None,
        cache_dir=None,
        device: Device | None = None,
        timeout_s: float = DEFAULT_TIMEOUT_S,
    ):
        self.device = self._device() if device is None else device  # fail first, fast
        self.program = resolve_program(
            model_id, model_digest, checkpoint, program, calibration, cache_dir
        )
        self.board = Board(self.device, self.program, timeout_s)
        self.runner = BoardRunner(self.program, self.board)
        self.size = self.program.size
        self._has_ref = False

    def _device(self) -> Device:
        from .sim_device import SimDevice

        return SimDevice()

    def _deliver_deferred(self, image: np.ndarray) -> np.ndarray:
        return self.board.output_frame(image).copy()

    @contextlib.contextmanager
    def _overlap(self, worker):
        """While render_many runs: the engine drivers yield the GIL at every poll while
        the ARM worker has work (on the board the poll is Python MMIO reads; without it
        the worker would wait for the interpreter's switch interval). Off on pynq-sim
        (`yield_while_polling`): there the engine runs inside a register read, in C,
        without the GIL, and a sleep(0) on a loaded host costs a time slice (measured:
        +30-60 ms a frame here)."""
        if not self.yield_while_polling:
            yield
            return
        engines = list(self.board.engines.values())
        before = [e.yield_gil for e in engines]
        for e in engines:
            e.yield_gil = worker.busy
        try:
            yield
        finally:
            for e, v in zip(engines, before):
                e.yield_gil = v

    @property
    def trace(self) -> list[dict]:
        return self.runner.trace

    def close(self) -> None:
        """Gives the DDR buffers back (the device stays usable)."""
        self.board.close()


class PynqSimGenerator(BoardGenerator):
    """`pynq-sim`: the driver on the simulated device (C-simulated engines)."""

    name = "pynq-sim"
    yield_while_polling = False


class PynqGenerator(BoardGenerator):
    """`pynq`: the driver on the PYNQ-Z1 (pynq imported only here, on the board)."""

    name = "pynq"
    yield_while_polling = True

    def _device(self) -> Device:
        from .pynq_device import PynqDevice

        return PynqDevice()
