"""The board driver, written once against an abstract device.

A device (`decoder_fpga.pynq_device.PynqDevice` on the board,
`decoder_fpga.sim_device.SimDevice` here) gives:

* `engine(kind) -> RegisterIO`: the `s_axilite` registers of the engine for `kind`
  ("conv" / "grid_sample"), checked against its VLNV (`regmap.EngineMap.vlnv`);
* `allocate(nbytes, name) -> Buffer`: physically contiguous DDR shared with the PL,
  (`pynq.allocate`), with `array` (the CPU's uint8 view), `physical_address`, `flush()`
  (write the CPU's cache back before the PL reads), `invalidate()` (drop the CPU's cache
  after the PL wrote) and `cpu_access()` (a hook the simulated device uses to refuse a CPU
  read of data the PL wrote and nobody invalidated; a no-op on the board).

`EngineDriver` writes arguments by name from the register map, starts the engine, polls
ap_done with a timeout and reads the engine's status (ap_return). `Board` allocates the
weights, the activation arena and two output frames once per program and keeps track of
which side wrote the arena last, so it flushes only before an engine reads CPU-written
data and invalidates only before the CPU reads engine-written data.
"""

from __future__ import annotations

import time
from typing import Protocol

import numpy as np

from codec.errors import DeviceError

from . import int8_ref as ref
from . import regmap as R
from .program import Program


class RegisterIO(Protocol):
    def read(self, offset: int) -> int: ...

    def write(self, offset: int, value: int) -> None: ...


class Buffer(Protocol):
    array: np.ndarray  # uint8, the CPU's view
    physical_address: int

    def flush(self) -> None: ...

    def invalidate(self) -> None: ...

    def cpu_access(self, offset: int, nbytes: int) -> None: ...

    def free(self) -> None: ...


class Device(Protocol):
    name: str

    def engine(self, kind: str) -> RegisterIO: ...

    def allocate(self, nbytes: int, name: str) -> Buffer: ...

    def close(self) -> None: ...


DEFAULT_TIMEOUT_S = 2.0  # the largest 256-px layer is modelled at ~50 ms; 40x margin


def find_engines(ip_dict: dict[str, dict], where: str) -> dict[str, str]:
    """{kind: IP name} for both engines, checking vendor, library, name and version of
    each VLNV; a missing or mismatched engine is a DeviceError naming what was found."""
    out = {}
    for kind, m in R.ENGINES.items():
        vendor_lib_name = m.vlnv.rsplit(":", 1)[0]
        hits = [
            (n, d["type"])
            for n, d in ip_dict.items()
            if d.get("type", "").startswith(vendor_lib_name + ":")
        ]
        if not hits:
            found = ", ".join(f"{n} ({d.get('type')})" for n, d in ip_dict.items()) or "nothing"
            raise DeviceError(
                f"{where}: the overlay has no {m.name} engine (VLNV {m.vlnv}); it holds {found}. "
                "Load the gracecodec overlay (grace.bit + grace.hwh, see docs/board.md)"
            )
        name, vlnv = hits[0]
        if vlnv != m.vlnv:
            raise DeviceError(
                f"{where}: {name} is {vlnv}, this driver needs {m.vlnv}: rebuild the overlay "
                "from this checkout's hw/ (docs/board.md) or install the matching gracecodec"
            )
        out[kind] = name
    return out


class EngineDriver:
    """One HLS engine through its register map."""

    def __init__(
        self,
        regs: RegisterIO,
        rmap: R.EngineMap,
        timeout_s: float = DEFAULT_TIMEOUT_S,
        poll_s: float = 0.0,
    ):
        self.regs = regs
        self.map = rmap
        self.timeout_s = timeout_s
        self.poll_s = poll_s  # sleep between polls (0: busy-poll, as PYNQ's DefaultIP)
        # None, or a callable: while it returns True, give the GIL away at every poll
        # (time.sleep(0)) so that the ARM worker thread of the overlapped schedule runs
        # while this thread waits for ap_done (not always: on a loaded host a sleep(0)
        # can cost a scheduler time slice)
        self.yield_gil = None
        self.runs = 0

    def status(self) -> dict[str, bool]:
        """The control register's bits (reading it clears ap_done / ap_ready)."""
        v = self.regs.read(R.CTRL)
        return {
            "start": bool(v & R.AP_START),
            "done": bool(v & R.AP_DONE),
            "idle": bool(v & R.AP_IDLE),
            "ready": bool(v & R.AP_READY),
        }

    def write_args(self, **args) -> None:
        """Arguments by name: pointer offsets as physical addresses, `cfg` as a dict."""
        for name, value in args.items():
            for off, word in self.map.words(name, value):
                self.regs.write(off, word)

    def start(self) -> None:
        if not self.regs.read(R.CTRL) & R.AP_IDLE:
            raise DeviceError(f"{self.map.name}: start requested while the engine is busy")
        self.regs.write(R.CTRL, R.AP_START)  # auto_restart stays 0: one run per start

    def wait(self) -> int:
        """Polls ap_done until the timeout; returns ap_return (0 or -status)."""
        deadline = time.monotonic() + self.timeout_s
        while True:
            v = self.regs.read(R.CTRL)
            if v & R.AP_DONE or (v & R.AP_IDLE and not v & R.AP_START):
                break
            if time.monotonic() > deadline:
                raise DeviceError(
                    f"{self.map.name}: no ap_done after {self.timeout_s:g} s (control "
                    f"register 0x{v:x}); the engine hangs or the overlay is not the one "
                    "this driver expects"
                )
            if self.poll_s:
                time.sleep(self.poll_s)
            elif self.yield_gil is not None and self.yield_gil():
                time.sleep(0)
        self.runs += 1
        ret = self.regs.read(R.AP_RETURN)
        return (ret ^ 0x80000000) - 0x80000000  # int32

    def run(self, **args) -> None:
        """write_args, start, wait; a non-zero status is a DeviceError naming it."""
        self.write_args(**args)
        self.start()
        self.check(self.wait())

    def check(self, code: int) -> None:
        if code:
            st = ref.EngineStatus(-code) if -code in ref.EngineStatus._value2member_map_ else None
            what = f"{st.name}: {ref.STATUS_TEXT[st]}" if st else f"unknown status {code}"
            raise DeviceError(f"{self.map.name} rejected its configuration: {what}")


class Board:
    """A program's buffers on a device and the engines that run its steps."""

    def __init__(self, device: Device, program: Program, timeout_s: float = DEFAULT_TIMEOUT_S):
        self.device = device
        self.program = program
        self.engines = {
            k: EngineDriver(device.engine(k), m, timeout_s) for k, m in R.ENGINES.items()
        }
        s = program.size
        # Allocated once and reused for every frame (finn-examples' rule).
        got: list = []
        try:
            for n, name in (
                (max(program.weights_bytes, 1), "weights"),
                (program.arena_bytes, "activations"),
                (s * s * 3, "frame0"),
                (s * s * 3, "frame1"),
            ):
                got.append(device.allocate(n, name))
        except DeviceError:
            for b in got:  # give back what was taken: a retry must not find it leaked
                b.free()
            raise
        self.weights, self.arena, *self.frames = got
        self.weights.array[: program.weights_bytes] = np.frombuffer(program.weights, np.uint8)
        self.weights.flush()  # the PL reads the weights; the CPU never writes them again
        self.arena.array[:] = 0
        self.cpu_wrote = True  # the arena holds CPU writes the PL has not seen
        self.pl_wrote = False  # the arena holds PL writes the CPU has not seen
        self.flushes = self.invalidates = 0
        self.next_frame = 0
        self.times: dict[str, float] = {}  # host seconds per trace stage (see board_backend)

    def _time(self, stage: str, t0: float) -> None:
        self.times[stage] = self.times.get(stage, 0.0) + time.perf_counter() - t0

    # ---- coherence: the two flags decide when to flush / invalidate
    def before_engine(self) -> None:
        if self.cpu_wrote:
            t0 = time.perf_counter()
            self.arena.flush()
            self._time("flush", t0)
            self.flushes += 1
            self.cpu_wrote = False

    def before_cpu(self) -> None:
        if self.pl_wrote:
            t0 = time.perf_counter()
            self.arena.invalidate()
            self._time("invalidate", t0)
            self.invalidates += 1
            self.pl_wrote = False

    def cpu_view(self, offset: int, nbytes: int) -> np.ndarray:
        """The arena bytes [offset, offset + nbytes) for the CPU to read or write."""
        self.before_cpu()
        self.arena.cpu_access(offset, nbytes)
        self.cpu_wrote = True  # conservatively: the caller may write
        return self.arena.array[offset : offset + nbytes]

    # ---- engine steps
    def run_step(self, st: dict) -> None:
        """One conv / grid_sample step of the program (offsets into the two buffers)."""
        self.before_engine()
        a, w = self.arena.physical_address, self.weights.physical_address
        c = st["cfg"]
        t0 = time.perf_counter()
        if st["op"] == "conv":
            eng = self.engines["conv"]
            eng.write_args(
                x=a + st["x"],
                w=w + st["w"],
                params=w + st["params"],
                res=a + st["res"] if c["residual"] else 0,
                y=a + st["y"],
                x1=a + st["x"],  # the input's second read port (gmem1): the same tensor
                cfg=c,
            )
        else:
            eng = self.engines["grid_sample"]
            eng.write_args(
                x=a + st["x"],
                grid=a + st["grid"],
                occ=a + st["occ"] if c["occlusion"] else 0,
                y=a + st["y"],
                cfg=c,
            )
        self._time("pack", t0)
        t0 = time.perf_counter()
        eng.start()
        self.pl_wrote = True  # from the start on, the PL may write the arena
        code = eng.wait()
        self._time("run", t0)
        eng.check(code)

    def output_frame(self, image: np.ndarray) -> np.ndarray:
        """Copies a rendered frame into the next of the two frame buffers (double
        buffering: the previous frame stays intact while a consumer reads it)."""
        buf = self.frames[self.next_frame]
        self.next_frame ^= 1
        t0 = time.perf_counter()
        buf.array[:] = image.reshape(-1)
        self._time("unpack", t0)
        return buf.array.reshape(image.shape)

    def close(self) -> None:
        for b in (self.weights, self.arena, *self.frames):
            b.free()
