"""A simulated PYNQ-Z1: DDR with physical addresses, CPU caches, engines behind registers.

What is modelled, and how faithfully:

* **DDR** (`capacity` bytes of CMA from `base`): `allocate` hands out page-aligned,
  physically contiguous buffers and fails (DeviceError) when the pool is exhausted.
* **CPU cache** per buffer: `array` is what the CPU sees; the DDR copy is what the PL
  sees. `flush()` writes the CPU's changed bytes to DDR; `invalidate()` reloads the CPU's
  view from DDR. An engine refuses to start when a range it reads or writes holds CPU
  writes not yet flushed; the CPU may not touch (`cpu_access`) bytes the PL wrote until
  the buffer is invalidated; invalidating over unflushed CPU writes is refused (they
  would be lost).
* **Engines**: a register file per engine at the `regmap` offsets with the HLS control
  semantics (ap_start taken at once, ap_idle low while busy, ap_done / ap_ready clear on
  read, ISR toggle on write, ap_return). A start while busy, a register outside the
  map, an unaligned address or one outside every allocated buffer is refused with a
  DeviceError. The engine completes after `latency_polls` reads of its control register:
  only then does it run the C-simulation library (`hw/` compiled by g++,
  decoder_fpga/csim.py) directly on the DDR bytes at the addresses in its registers.
* **Overlay**: an `ip_dict` like PYNQ's (`type` = VLNV); tests pass a broken one.
* **Faults** (for tests): `hang_on_start=n` makes the n-th engine start (1-based) never
  finish; `capacity` limits allocations.

Not modelled: time (runs take host time; decoder_fpga/perf.py models the board's),
cache-line granularity (bytes here), AXI errors, interrupts beyond the ISR bits.
"""

from __future__ import annotations

import ctypes

import numpy as np

from codec.errors import DeviceError

from . import int8_ref as ref
from . import regmap as R
from .driver import find_engines

PAGE = 4096
DEFAULT_BASE = 0x1800_0000  # where PYNQ-Z1 images put the CMA pool (any page works)
DEFAULT_CAPACITY = 128 << 20  # PYNQ-Z1 images reserve 128 MiB of CMA


def default_ip_dict() -> dict[str, dict]:
    """The overlay hw/vivado/block_design.tcl builds, as PYNQ's Overlay.ip_dict has it."""
    return {
        "conv_engine_0": {"type": R.CONV.vlnv, "phys_addr": 0x43C0_0000, "addr_range": 0x10000},
        "gridsample_engine_0": {
            "type": R.GRIDSAMPLE.vlnv,
            "phys_addr": 0x43C1_0000,
            "addr_range": 0x10000,
        },
        "axi_intc_0": {"type": "xilinx.com:ip:axi_intc:4.1", "phys_addr": 0x4180_0000},
    }


class SimBuffer:
    """A buffer in simulated DDR with a CPU-side view (the cache)."""

    def __init__(self, dev: SimDevice, phys: int, nbytes: int, name: str):
        self.dev = dev
        self.name = name
        self.physical_address = phys
        self.nbytes = nbytes
        self.ddr = np.zeros(nbytes, np.uint8)  # what the PL sees
        self.array = np.zeros(nbytes, np.uint8)  # what the CPU sees
        self._synced = np.zeros(nbytes, np.uint8)  # the CPU view at the last flush/invalidate
        self.pl_written: list[tuple[int, int]] = []  # [start, end) since the last invalidate
        self.flushes = self.invalidates = 0
        self.freed = False

    def _dirty(self, lo: int = 0, hi: int | None = None) -> bool:
        hi = self.nbytes if hi is None else hi
        return not np.array_equal(self.array[lo:hi], self._synced[lo:hi])

    def flush(self) -> None:
        """Writes the CPU's changed bytes back to DDR (write-back of dirty lines)."""
        changed = self.array != self._synced
        self.ddr[changed] = self.array[changed]
        self._synced[changed] = self.array[changed]
        self.flushes += 1

    def invalidate(self) -> None:
        """Drops the CPU's view: it now reads what the PL wrote."""
        if self._dirty():
            raise DeviceError(
                f"invalidate of buffer {self.name!r} would discard CPU writes that were "
                "never flushed"
            )
        self.array[:] = self.ddr
        self._synced[:] = self.ddr
        self.pl_written.clear()
        self.invalidates += 1

    def cpu_access(self, offset: int, nbytes: int) -> None:
        """Refuses a CPU access to bytes the PL wrote since the last invalidate."""
        for lo, hi in self.pl_written:
            if lo < offset + nbytes and offset < hi:
                raise DeviceError(
                    f"the CPU reads {self.name}[{offset}:{offset + nbytes}] that the PL "
                    "wrote without an invalidate: it would see stale cache lines"
                )

    def free(self) -> None:
        if not self.freed:
            self.freed = True
            self.dev._free(self)


class SimEngine:
    """One HLS engine: its register file and, on completion, the C-simulation run."""

    def __init__(self, dev: SimDevice, rmap: R.EngineMap):
        self.dev = dev
        self.map = rmap
        self.regs: dict[int, int] = {}
        self.busy = False
        self.hang = False
        self.polls_left = 0
        self.done = self.ready = False
        self.gie = self.ier = self.isr = 0
        self.ret = 0
        self.auto_restart = 0
        self.starts = 0
        valid = {R.CTRL, R.GIE, R.IER, R.ISR, R.AP_RETURN}
        for a in rmap.args:
            valid |= {a.offset + 4 * i for i in range(a.words)}
        self.valid = valid

    # ---- the register interface (what PYNQ's DefaultIP.read / write do over AXI-Lite)
    def read(self, offset: int) -> int:
        self._check_offset(offset)
        if offset == R.CTRL:
            if self.busy and not self.hang:
                self.polls_left -= 1
                if self.polls_left <= 0:
                    self._complete()
            v = (0 if self.busy else R.AP_IDLE) | self.auto_restart
            v |= (R.AP_DONE if self.done else 0) | (R.AP_READY if self.ready else 0)
            if self.gie and self.isr & self.ier:
                v |= R.INTERRUPT
            self.done = self.ready = False  # clear on read
            return v
        if offset == R.GIE:
            return self.gie
        if offset == R.IER:
            return self.ier
        if offset == R.ISR:
            return self.isr
        if offset == R.AP_RETURN:
            return self.ret & 0xFFFFFFFF
        return self.regs.get(offset, 0)

    def write(self, offset: int, value: int) -> None:
        self._check_offset(offset)
        value = int(value) & 0xFFFFFFFF
        if offset == R.CTRL:
            self.auto_restart = value & R.AUTO_RESTART
            if value & R.AP_START:
                self._start()
        elif offset == R.GIE:
            self.gie = value & 1
        elif offset == R.IER:
            self.ier = value & 3
        elif offset == R.ISR:
            self.isr ^= value & 3  # toggle on write
        elif offset == R.AP_RETURN:
            raise DeviceError(f"{self.map.name}: ap_return (0x10) is read-only")
        else:
            self.regs[offset] = value

    def _check_offset(self, offset: int) -> None:
        if offset not in self.valid:
            raise DeviceError(
                f"{self.map.name}: register 0x{offset:x} is not in its map (reserved or "
                f"outside 0x0-0x{self.map.span - 1:x})"
            )

    # ---- execution
    def _start(self) -> None:
        if self.busy:
            raise DeviceError(f"{self.map.name}: ap_start written while the engine is busy")
        if self.auto_restart:
            raise DeviceError(f"{self.map.name}: auto_restart is not supported by the driver")
        regs = dict(self.regs)  # the arguments are latched at start, as the HLS block does
        self.plan = self._plan(regs)  # refuses bad addresses / unflushed data before running
        self.dev.starts += 1
        self.starts += 1
        self.hang = self.dev.hang_on_start == self.dev.starts
        self.busy = True
        self.polls_left = self.dev.latency_polls

    def _complete(self) -> None:
        self.ret = self._execute(self.plan)
        self.busy = False
        self.done = self.ready = True
        self.isr |= self.ier & 3

    def _span(self, name: str, addr: int, nbytes: int, dtype: str) -> tuple[SimBuffer, int]:
        """(buffer, offset) of a pointer argument, after the checks the PL would need."""
        align = max(self.map.align, np.dtype(dtype).itemsize)
        if addr % align:
            raise DeviceError(
                f"{self.map.name}: argument {name} = 0x{addr:x} is not {align}-byte aligned"
            )
        buf, off = self.dev.translate(addr, nbytes, f"{self.map.name} argument {name}")
        if buf._dirty(off, off + nbytes):
            raise DeviceError(
                f"{self.map.name}: argument {name} points into {buf.name}[{off}:"
                f"{off + nbytes}], which holds CPU writes not flushed before the start"
            )
        return buf, off

    def _plan(self, regs: dict[int, int]) -> dict:
        """The run the registers describe: config, status of the engine's own check and the
        checked (buffer, offset) of every pointer the run touches."""
        from . import csim

        cfg = self.map.decode(regs, "cfg")
        arg = {a.name: self.map.decode(regs, a.name) for a in self.map.pointers()}
        spans: dict = {}
        if self.map.name == "conv_engine":
            c = csim.ConvConfig(*(cfg[f] for f in R.CONV_CFG_FIELDS))
            status, _ = csim.conv_check_status(c)
            if status:  # the engine checks its config before touching memory
                return {"status": status}
            k, cin, cout = cfg["k"], cfg["cin"], cfg["cout"]
            ho = ref.conv_out_size(cfg["h"], k, cfg["stride"], bool(cfg["upsample"]))
            wo = ref.conv_out_size(cfg["w"], k, cfg["stride"], bool(cfg["upsample"]))
            need = {
                "x": cin * cfg["h"] * cfg["w"],
                "x1": cin * cfg["h"] * cfg["w"],  # the same input through gmem1
                "w": cout * (1 if cfg["depthwise"] else cin) * k * k,
                "params": 12 * cout,
                "res": cout * ho * wo if cfg["residual"] else 0,
                "y": cout * ho * wo,
            }
        else:
            c = csim.GridConfig(*(cfg[f] for f in R.GS_CFG_FIELDS))
            status, _ = csim.grid_check_status(c)
            if status:
                return {"status": status}
            n_out = cfg["ho"] * cfg["wo"]
            need = {
                "x": cfg["c"] * cfg["h"] * cfg["w"],
                "grid": 4 * n_out,
                "occ": n_out if cfg["occlusion"] else 0,
                "y": cfg["c"] * n_out,
            }
        for a in self.map.pointers():
            if need[a.name]:  # an unused pointer (no residual / occlusion) is not read
                spans[a.name] = self._span(a.name, arg[a.name], need[a.name], a.dtype)
        buf, off = spans["y"]
        buf.pl_written.append((off, off + need["y"]))  # the PL may write from the start on
        return {"status": 0, "cfg": c, "spans": spans}

    def _ptr(self, span, ctype):
        if span is None:
            return None
        buf, off = span
        return ctypes.cast(buf.ddr.ctypes.data + off, ctypes.POINTER(ctype))

    def _execute(self, plan: dict) -> int:
        """Runs the C-simulated engine on the DDR bytes; returns ap_return."""
        from . import csim

        if plan["status"]:
            return -plan["status"]
        lib = csim.load_library()
        sp, c = plan["spans"], plan["cfg"]
        i8, u8, i16, i32 = ctypes.c_int8, ctypes.c_uint8, ctypes.c_int16, ctypes.c_int32
        with csim._lock:
            if self.map.name == "conv_engine":
                return lib.grace_conv2d_ports(
                    self._ptr(sp["x"], i8), self._ptr(sp["w"], i8), self._ptr(sp["params"], i32),
                    self._ptr(sp.get("res"), i8), self._ptr(sp["y"], i8), self._ptr(sp["x1"], i8),
                    ctypes.byref(c),
                )  # fmt: skip
            return lib.grace_grid_sample(
                self._ptr(sp["x"], i8), self._ptr(sp["grid"], i16), self._ptr(sp.get("occ"), u8),
                self._ptr(sp["y"], i8), ctypes.byref(c),
            )  # fmt: skip


class SimDevice:
    """The simulated board: an overlay (ip_dict), engines and a CMA pool."""

    name = "pynq-sim"

    def __init__(
        self,
        ip_dict: dict[str, dict] | None = None,
        capacity: int = DEFAULT_CAPACITY,
        base: int = DEFAULT_BASE,
        latency_polls: int = 2,
        hang_on_start: int | None = None,
    ):
        self.ip_dict = default_ip_dict() if ip_dict is None else ip_dict
        self.names = find_engines(self.ip_dict, "pynq-sim overlay")
        self.capacity = capacity
        self.base = base
        self.latency_polls = latency_polls
        self.hang_on_start = hang_on_start
        self.starts = 0
        self.buffers: list[SimBuffer] = []
        self._engines = {k: SimEngine(self, m) for k, m in R.ENGINES.items()}

    def engine(self, kind: str) -> SimEngine:
        return self._engines[kind]

    def allocate(self, nbytes: int, name: str) -> SimBuffer:
        nbytes = int(nbytes)
        if nbytes <= 0:
            raise DeviceError(f"cannot allocate {nbytes} bytes for {name}")
        need = -(-nbytes // PAGE) * PAGE
        addr = self.base  # first fit over the sorted live buffers
        for b in sorted(self.buffers, key=lambda b: b.physical_address):
            if addr + need <= b.physical_address:
                break
            addr = b.physical_address + -(-b.nbytes // PAGE) * PAGE
        if addr + need > self.base + self.capacity:
            used = sum(b.nbytes for b in self.buffers)
            raise DeviceError(
                f"cannot allocate {nbytes} bytes of contiguous memory for {name}: the CMA "
                f"pool holds {self.capacity} bytes, {used} in use"
            )
        buf = SimBuffer(self, addr, nbytes, name)
        self.buffers.append(buf)
        return buf

    def _free(self, buf: SimBuffer) -> None:
        self.buffers.remove(buf)

    def translate(self, addr: int, nbytes: int, what: str) -> tuple[SimBuffer, int]:
        for b in self.buffers:
            if b.physical_address <= addr and addr + nbytes <= b.physical_address + b.nbytes:
                return b, addr - b.physical_address
        raise DeviceError(
            f"{what}: [0x{addr:x}, 0x{addr + nbytes:x}) is outside every allocated buffer"
        )

    def close(self) -> None:
        for b in list(self.buffers):
            b.free()
