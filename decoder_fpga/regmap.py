"""Register maps of the HLS engines' `s_axilite` control interface: the one specification
that the PYNQ driver, the simulated device and the tests use.

The layout follows what Vitis HLS (2020.2 and newer, `-flow_target vivado`) generates for
a top function whose arguments and `return` are all in the `control` bundle:

==========  =========================================================================
0x00        control: bit 0 ap_start (R/W, cleared by the engine when it takes the
            start), bit 1 ap_done (R, clear on read), bit 2 ap_idle (R), bit 3 ap_ready
            (R, clear on read), bit 7 auto_restart (R/W), bit 9 interrupt (R)
0x04        GIE, global interrupt enable: bit 0
0x08        IER, IP interrupt enable: bit 0 ap_done, bit 1 ap_ready
0x0C        ISR, IP interrupt status: bit 0 ap_done, bit 1 ap_ready (toggle on write)
0x10        ap_return (R; the engines return 0 or -status), 0x14 reserved
0x18 ...    the arguments in the order of the top function's parameters. Each argument
            takes its data words (32 bits each, least significant word first) then one
            reserved word: a 32-bit scalar or pointer offset takes 8 bytes, a 64-bit
            pointer offset (`config_interface -m_axi_addr64=true`, the Vitis default)
            takes 12 (low word, high word, reserved), a struct passed by value is
            aggregated into one wide field, its members packed from bit 0 in declaration
            order (13 int32 members: 13 words, then a reserved word).
==========  =========================================================================

The engines' `hls.tcl` set `config_interface -m_axi_addr64=false` (the Zynq-7000 HP ports
take 32-bit addresses), so `ADDR64 = False` and every pointer offset is one 32-bit word;
`engine_map(..., addr64=True)` gives the 64-bit layout should that change.
tests/decoder_fpga/test_regmap.py checks this module against the `#pragma HLS INTERFACE`
lists, the top functions' parameter order, the config structs in `hw/common/grace_hw.h`
and the `hls.tcl` settings. None of it has been checked against a generated
`x*_hw.h` (no Vitis here): do that on the first synthesis (docs/board.md).
"""

from __future__ import annotations

import dataclasses

# ---- the block-level control registers (ap_ctrl_hs) --------------------------------------
CTRL = 0x00
GIE = 0x04
IER = 0x08
ISR = 0x0C
AP_RETURN = 0x10
FIRST_ARG = 0x18

AP_START = 1 << 0
AP_DONE = 1 << 1
AP_IDLE = 1 << 2
AP_READY = 1 << 3
AUTO_RESTART = 1 << 7
INTERRUPT = 1 << 9

ADDR64 = False  # hw/*/hls.tcl: config_interface -m_axi_addr64=false
VENDOR, LIBRARY, VERSION = "gracecodec", "hls", "1.0"  # hw/*/hls.tcl export_design

CONV_CFG_FIELDS = (
    "cin", "cout", "h", "w", "k", "stride", "depthwise", "relu", "upsample", "residual",
    "res_m", "res_s", "tile_rows",
)  # fmt: skip  # grace_conv_cfg_t
GS_CFG_FIELDS = ("c", "h", "w", "ho", "wo", "occlusion", "m", "s")  # grace_gs_cfg_t


@dataclasses.dataclass(frozen=True)
class Arg:
    """One s_axilite argument: `words` 32-bit data words from `offset`."""

    name: str
    offset: int
    words: int
    kind: str  # "pointer" (an m_axi offset: a physical address) or "struct"
    bundle: str = ""  # the m_axi bundle of a pointer
    dtype: str = ""  # the element type the pointer addresses (alignment, range checks)
    fields: tuple[str, ...] = ()  # the members of a struct, one int32 word each


@dataclasses.dataclass(frozen=True)
class EngineMap:
    """The register map of one engine."""

    name: str  # the HLS top function
    args: tuple[Arg, ...]
    addr64: bool
    align: int  # bytes: the pointer alignment the engine is built for (hls.tcl)

    @property
    def vlnv(self) -> str:
        return f"{VENDOR}:{LIBRARY}:{self.name}:{VERSION}"

    @property
    def span(self) -> int:
        """Bytes of the register space (the last argument's reserved word included),
        rounded up to a power of two as Vivado's address editor does."""
        last = self.args[-1]
        end = last.offset + 4 * (last.words + 1)
        n = 64
        while n < end:
            n *= 2
        return n

    def arg(self, name: str) -> Arg:
        for a in self.args:
            if a.name == name:
                return a
        raise KeyError(f"{self.name} has no argument {name!r}")

    def pointers(self) -> tuple[Arg, ...]:
        return tuple(a for a in self.args if a.kind == "pointer")

    def words(self, name: str, value) -> list[tuple[int, int]]:
        """[(offset, uint32)] to write argument `name` = value (an address or a dict)."""
        a = self.arg(name)
        if a.kind == "struct":
            vals = [int(value[f]) for f in a.fields]
        else:
            v = int(value)
            vals = [(v >> (32 * i)) & 0xFFFFFFFF for i in range(a.words)]
        return [(a.offset + 4 * i, v & 0xFFFFFFFF) for i, v in enumerate(vals)]

    def decode(self, regs: dict[int, int], name: str):
        """The value of argument `name` from a register file {offset: uint32}."""
        a = self.arg(name)
        raw = [regs.get(a.offset + 4 * i, 0) & 0xFFFFFFFF for i in range(a.words)]
        if a.kind == "struct":  # int32 members, two's complement
            return {f: (v ^ 0x80000000) - 0x80000000 for f, v in zip(a.fields, raw)}
        return sum(v << (32 * i) for i, v in enumerate(raw))


def _layout(name: str, params: list[tuple], addr64: bool, align: int) -> EngineMap:
    args, off = [], FIRST_ARG
    for p in params:
        if p[1] == "struct":
            words = len(p[2])
            args.append(Arg(p[0], off, words, "struct", fields=p[2]))
        else:
            words = 2 if addr64 else 1
            args.append(Arg(p[0], off, words, "pointer", bundle=p[1], dtype=p[2]))
        off += 4 * (words + 1)  # data words, then one reserved word
    return EngineMap(name, tuple(args), addr64, align)


def conv_map(addr64: bool = ADDR64) -> EngineMap:
    """conv_engine(x, w, params, res, y, x1, cfg) of hw/conv/conv_engine.cpp (x1: the input's
    second read port, on gmem1, which carries the odd channels; the driver gives it x's
    address)."""
    return _layout(
        "conv_engine",
        [
            ("x", "gmem0", "int8"),
            ("w", "gmem1", "int8"),
            ("params", "gmem1", "int32"),
            ("res", "gmem2", "int8"),
            ("y", "gmem2", "int8"),
            ("x1", "gmem1", "int8"),
            ("cfg", "struct", CONV_CFG_FIELDS),
        ],
        addr64,
        64,  # hw/conv/hls.tcl: -m_axi_alignment_byte_size 64
    )


def gridsample_map(addr64: bool = ADDR64) -> EngineMap:
    """gridsample_engine(x, grid, occ, y, cfg) of hw/gridsample/gridsample_engine.cpp."""
    return _layout(
        "gridsample_engine",
        [
            ("x", "gmem0", "int8"),
            ("grid", "gmem1", "int16"),
            ("occ", "gmem3", "uint8"),
            ("y", "gmem2", "int8"),
            ("cfg", "struct", GS_CFG_FIELDS),
        ],
        addr64,
        2,  # no alignment setting in its hls.tcl: the natural alignment of int16
    )


CONV = conv_map()
GRIDSAMPLE = gridsample_map()
ENGINES: dict[str, EngineMap] = {"conv": CONV, "grid_sample": GRIDSAMPLE}


def describe(m: EngineMap) -> str:
    """The map as text (docs/board.md, debugging on the board)."""
    lines = [f"{m.name}  VLNV {m.vlnv}  span 0x{m.span:x}  addr64={m.addr64}"]
    lines += ["  0x00 CTRL  0x04 GIE  0x08 IER  0x0c ISR  0x10 ap_return"]
    for a in m.args:
        what = f"{a.kind} {a.bundle} {a.dtype}".strip() if a.kind == "pointer" else "struct"
        lines.append(f"  0x{a.offset:02x} {a.name:<7} {a.words} word(s)  {what}")
    return "\n".join(lines)
