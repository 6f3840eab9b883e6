"""Performance model of a compiled program on the PYNQ-Z1 (xc7z020 at 100 MHz): MODELLED.

    python -m decoder_fpga.perf                       # grace-s at 256x256 (shapes only)
    python -m decoder_fpga.perf --program DIR         # a compiled program (program.json)
    python -m decoder_fpga.perf --measure 3           # + int8 / csim frames/s on this machine

Nothing here was measured on hardware: every figure comes from the loop structure of the
HLS engines (`hw/conv/conv_engine.cpp`, `hw/gridsample/gridsample_engine.cpp`), their
sizes (`int8_ref.CONV_LIMITS` / `GRID_LIMITS`, mirrored by `hw/common/grace_hw.h` and
checked by the csim tests) and the stated `Assumptions` (pipeline depths, AXI latencies,
call overhead), which an HLS schedule report or a board run would replace.

Cycle model per engine invocation (one step of the program), following the C++ loops:

conv   params: 3 cycles a channel (II 3); weights: 1 byte a cycle (dense: every lane of
       ceil(cout/16)*16 x ceil(cin/8)*8 x k*k; depthwise ceil(c/8)*8 x k*k) plus one AXI
       latency per output channel row. Then the tile loop over row tiles x 16-channel
       groups, step t = load(t) || compute(t-1) || store(t-2):
         load     input rows (cot == 0 only): ceil(cin/8)*8 x rows x (w + read latency),
                  residual: lanes x (rows*wo + read latency)  -- 1 byte a cycle
         compute  dense: rows x wo x (ceil(cin/8) x k*k + pixel overhead)
                  (only the (cin group, tap) loop is pipelined: each output pixel pays the
                  MAC pipeline fill and the 16-lane epilogue);
                  depthwise: ceil(lanes/8) x rows x (wo x II_dw + row overhead) with
                  II_dw = ceil(k x stride / 2): the window takes k (or k*stride) words
                  from the same 8 lane banks a cycle, two BRAM ports each
         store    lanes x (rows*wo + write latency)
       "overlapped" takes the max of the three stages per step (the design intent);
       "serial" their sum (if HLS does not overlap the calls).
grid   per pass of planes (as many as fit 64 KiB): load planes x h x (w + read latency);
       per output row: the grid/occlusion row at II = 2 (x, y) or 3 (x, y, occ) -- one
       m_axi bundle --, then per plane a row of samples (II 1, + pipeline depth) and its
       store; passes double-buffered (overlapped) or not (serial).
Both   + a fixed call overhead (s_axilite writes, start, done interrupt/poll).

Resources are estimated from the same structures (one DSP48E1 per int8 MAC; BRAM by
partitioned bank, each bank rounded up to BRAM18 halves); LUTs are a coarse itemised
guess. Energy per pixel = board power x frame time / pixels (2.5 W unless measured).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from . import int8_ref as ref
from .program import Program

LABEL = "modelled"
GRACE_UJ_PER_PIXEL = 11.7  # GRACE's measured figure on the PYNQ-Z1
TARGET_FPS = 10.0
TARGET_UJ_PER_PIXEL = 3.0
XC7Z020 = {"DSP48E1": 220, "BRAM36": 140, "LUT": 53200}


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """Stated constants of the model (not measured; an HLS report or a board replaces them)."""

    clock_hz: float = 100e6
    board_power_w: float = 2.5
    read_latency: int = 24  # cycles: AXI HP read latency + loop fill, once per burst row
    write_latency: int = 8  # cycles: once per written row (posted writes)
    dense_pixel_overhead: int = 12  # MAC pipeline fill (~6) + 2 epilogue iterations (~6)
    dw_row_overhead: int = 12  # depthwise window/MAC/epilogue pipeline depth per row
    gs_row_depth: int = 10  # grid-sample pipeline depth per sampled row
    call_overhead: int = 500  # cycles (5 us) per engine invocation: registers, start, done
    bram_ports: int = 2  # true dual-port BRAM
    # Knobs of the engines' structure. The defaults are the engines as written; WHAT_IF
    # below is a set of changes NOT implemented in hw/ (for planning only).
    bytes_per_cycle: int = 1  # load/store loops move one int8 a cycle (8-bit m_axi beats)
    pixel_pipelined: bool = False  # dense: only the (cin group, tap) loop is pipelined
    dw_ii_one: bool = False  # depthwise window rows share the 8 lane banks (II > 1)
    grid_ii_one: bool = False  # grid x, grid y (and occ) come through one m_axi bundle


A = Assumptions()
WHAT_IF = Assumptions(bytes_per_cycle=8, pixel_pipelined=True, dw_ii_one=True, grid_ii_one=True)


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------
# Cycle models of the two engines


def conv_cycles(cfg: dict, a: Assumptions = A, limits: ref.ConvLimits = ref.CONV_LIMITS) -> dict:
    """Cycles (overlapped and serial), MACs and DDR bytes of one conv engine call."""
    cin, cout, h, w, k = cfg["cin"], cfg["cout"], cfg["h"], cfg["w"], cfg["k"]
    s, up, dw, res = cfg["stride"], bool(cfg["upsample"]), bool(cfg["depthwise"]), cfg["residual"]
    tr = cfg["tile_rows"] or ref.check_conv(
        cin, cout, h, w, k=k, stride=s, depthwise=dw, upsample=up, limits=limits
    )
    pe_co, pe_ci = limits.pe_co, limits.pe_ci
    ho, wo = ref.conv_out_size(h, k, s, up), ref.conv_out_size(w, k, s, up)
    hv, p, kk = (2 * h if up else h), k // 2, k * k
    cig_n, n_cot, n_rt = _cdiv(cin, pe_ci), _cdiv(cout, pe_co), _cdiv(ho, tr)
    ci_pad = cig_n * pe_ci
    setup = 3 * n_cot * pe_co
    if dw:
        setup += ci_pad * kk + a.read_latency
        w_bytes = cin * kk
    else:
        setup += n_cot * pe_co * (ci_pad * kk + a.read_latency)
        w_bytes = cout * cin * kk
    ii_dw = max(1, _cdiv(k * min(s, k), a.bram_ports)) if k > 1 and not a.dw_ii_one else 1
    bpc = a.bytes_per_cycle
    loads, computes, stores = [], [], []
    in_bytes = 0
    for rt in range(n_rt):
        oy0 = rt * tr
        nrows = min(tr, ho - oy0)
        vlo = max(0, oy0 * s - p)
        vhi = min(hv - 1, (oy0 + nrows - 1) * s - p + k - 1)
        ry_n = ((vhi >> 1) - (vlo >> 1) + 1) if up else (vhi - vlo + 1)
        in_bytes += cin * ry_n * w
        for cot in range(n_cot):
            lanes = min(pe_co, cout - cot * pe_co)
            ld = ci_pad * ry_n * (_cdiv(w, bpc) + a.read_latency) if cot == 0 else 0
            if res:
                ld += lanes * (_cdiv(nrows * wo, bpc) + a.read_latency)
            if dw:
                cp = _cdiv(lanes, pe_ci) * nrows * (wo * ii_dw + a.dw_row_overhead)
            elif a.pixel_pipelined:
                cp = nrows * (wo * cig_n * kk + a.dense_pixel_overhead)
            else:
                cp = nrows * wo * (cig_n * kk + a.dense_pixel_overhead)
            loads.append(ld)
            computes.append(cp)
            stores.append(lanes * (_cdiv(nrows * wo, bpc) + a.write_latency))
    n = len(loads)
    overlapped = sum(
        max(loads[t] if t < n else 0, computes[t - 1] if 1 <= t <= n else 0,
            stores[t - 2] if t >= 2 else 0)
        for t in range(n + 2)
    )  # fmt: skip
    serial = sum(loads) + sum(computes) + sum(stores)
    macs = cout * ho * wo * (1 if dw else cin) * kk
    ddr = w_bytes + 12 * cout + in_bytes + cout * ho * wo * (2 if res else 1)
    return {
        "overlapped": setup + overlapped + a.call_overhead,
        "serial": setup + serial + a.call_overhead,
        "mac_bound": math.ceil(macs / (pe_co * pe_ci)) if not dw else cout * ho * wo // pe_ci,
        "macs": macs,
        "ddr_bytes": ddr,
        "compute": sum(computes),
    }


def grid_cycles(cfg: dict, a: Assumptions = A, limits: ref.GridLimits = ref.GRID_LIMITS) -> dict:
    """Cycles (overlapped and serial), MACs and DDR bytes of one grid-sample engine call."""
    c, h, w, ho, wo, occ = cfg["c"], cfg["h"], cfg["w"], cfg["ho"], cfg["wo"], cfg["occlusion"]
    np_ = ref.check_grid_sample(c, h, w, ho, wo, occlusion=occ, limits=limits)
    passes = [min(np_, c - c0) for c0 in range(0, c, np_)]
    ii_grid = 1 if a.grid_ii_one else (3 if occ else 2)
    bpc = a.bytes_per_cycle
    loads = [n * h * (_cdiv(w, bpc) + a.read_latency) for n in passes]
    grid_row = wo * ii_grid + a.read_latency
    samp = wo + a.gs_row_depth
    store = _cdiv(wo, bpc) + a.write_latency
    serial_s = [ho * (grid_row + n * (samp + store)) for n in passes]
    over_s = [ho * (grid_row + (n + 1) * max(samp, store)) for n in passes]
    over = loads[0] + sum(
        max(loads[g + 1] if g + 1 < len(passes) else 0, over_s[g]) for g in range(len(passes))
    )
    macs = 4 * c * ho * wo + (c * ho * wo if occ else 0)
    ddr = c * h * w + len(passes) * ho * wo * (4 + (1 if occ else 0)) + c * ho * wo
    return {
        "overlapped": over + a.call_overhead,
        "serial": sum(loads) + sum(serial_s) + a.call_overhead,
        "mac_bound": c * ho * wo,
        "macs": macs,
        "ddr_bytes": ddr,
        "compute": c * ho * wo,
    }


# ---------------------------------------------------------------------------------------
# Resources


def resources(conv: ref.ConvLimits = ref.CONV_LIMITS, gs: ref.GridLimits = ref.GRID_LIMITS):
    """DSP48E1 / BRAM36 / LUT estimates of the two engines + the block design. Modelled."""
    pe = conv.pe_co * conv.pe_ci
    epi_lanes = conv.pe_ci
    dsp = {
        f"conv PE array {conv.pe_co}x{conv.pe_ci} (1 DSP a int8 MAC)": pe,
        f"conv epilogue {epi_lanes} lanes (acc*M 4 + r*res_M 2)": epi_lanes * 6,
        "grid-sample (4 taps, occlusion, requant 4)": 9,
    }

    def bram18(depth: int, width: int) -> int:  # one partitioned bank, in BRAM18 units
        if depth * width < 1024:  # tiny: registers / LUTRAM
            return 0
        best = min(
            _cdiv(depth, d) * _cdiv(width, wd)
            for d, wd in ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
        )
        return best

    half = conv.in_buf_bytes // conv.pe_ci
    banks = {
        # name: (banks, depth, width bits)
        "conv in_buf 2 halves x 8 lanes": (2 * conv.pe_ci, half, 8),
        "conv w_buf 16 banks (reshaped x8: 64-bit words)": (
            conv.pe_co, conv.w_bank_bytes // conv.pe_ci, 8 * conv.pe_ci),
        "conv out_buf 2 x 16 lanes": (2 * conv.pe_co, conv.out_tile_pix, 8),
        "conv res_buf 2 x 16 lanes": (2 * conv.pe_co, conv.out_tile_pix, 8),
        "conv bias (cyclic 16)": (16, conv.max_ch // 16, 32),
        "conv M (cyclic 8)": (8, conv.max_ch // 8, 32),
        "conv S (cyclic 8)": (8, conv.max_ch // 8, 32),
        "grid plane_buf 2 halves x 4 parity banks": (8, gs.bank_bytes, 8),
        "grid gx/gy rows": (2, gs.max_w_out, 16),
        "grid occ row": (1, gs.max_w_out, 8),
        "grid out rows (ping-pong)": (2, gs.max_w_out, 8),
    }  # fmt: skip
    bram = {k: n * bram18(d, wd) / 2 for k, (n, d, wd) in banks.items()}
    capacity = sum(n * d * wd for n, d, wd in banks.values()) / (36 * 1024 * 8 / 9)
    lut = {
        "PE adder trees 16 x (8 products -> 32-bit acc)": 16 * 160,
        "depthwise adder trees 8 x 9 taps": 8 * 150,
        "epilogues 8 lanes (64-bit round/shift/clamp)": 8 * 250,
        "input/window muxes and address generation": 3000,
        "m_axi adapters 6 x ~1.5k": 9000,
        "s_axilite 2 x ~0.4k": 800,
        "engine control FSMs 2 x ~2.5k": 5000,
        "grid-sample taps, weights, bank select": 1500,
        "block design: AXI interconnects, interrupt controller, resets": 4500,
    }
    return dsp, bram, lut, capacity


# ---------------------------------------------------------------------------------------
# The program model


def step_table(program: Program, stage: str, a: Assumptions = A) -> list[dict]:
    rows = []
    for st in program.steps(stage):
        if st["op"] == "conv":
            c = st["cfg"]
            r = conv_cycles(c, a)
            shape = (
                f"{'dw' if c['depthwise'] else 'conv'}{c['k']} {c['cin']}->{c['cout']} "
                f"{c['h']}x{c['w']}{' s2' if c['stride'] == 2 else ''}"
                f"{' up' if c['upsample'] else ''}{' +res' if c['residual'] else ''}"
            )
        elif st["op"] == "grid_sample":
            c = st["cfg"]
            r = grid_cycles(c, a)
            shape = f"gs {c['c']}x{c['h']}x{c['w']}->{c['ho']}x{c['wo']}" + (
                " *occ" if c["occlusion"] else ""
            )
        else:
            continue
        name = st["node"] + (f"[{st['part'][0]}]" if st.get("part", [0, 1])[1] > 1 else "")
        rows.append({"step": name, "op": st["op"], "shape": shape, **r})
    return rows


def arm_ops(program: Program) -> list[str]:
    return [st["node"] for st in program.steps("frame") if st["op"] == "arm"]


def _rate(cycles: float, a: Assumptions, s: int) -> dict:
    t = cycles / a.clock_hz
    return {
        "cycles": cycles,
        "ms": 1e3 * t,
        "fps": 1.0 / t,
        "uj_per_pixel": 1e6 * a.board_power_w * t / (s * s),
    }


def report(program: Program, a: Assumptions = A) -> dict:
    """Every figure of the model as a dict (all modelled)."""
    frame = step_table(program, "frame", a)
    reference = step_table(program, "reference", a)
    s = program.size
    out = {"label": LABEL, "assumptions": dataclasses.asdict(a), "size": s}
    for key in ("overlapped", "serial", "mac_bound"):
        out[key] = _rate(sum(r[key] for r in frame), a, s)
    what_if = step_table(program, "frame", WHAT_IF)
    out["what_if"] = _rate(sum(r["overlapped"] for r in what_if), WHAT_IF, s)
    out["reference_ms"] = 1e3 * sum(r["overlapped"] for r in reference) / a.clock_hz
    out["macs"] = sum(r["macs"] for r in frame)
    out["ddr_bytes"] = sum(r["ddr_bytes"] for r in frame)
    out["ddr_mb_s"] = out["ddr_bytes"] * out["overlapped"]["fps"] / 1e6
    dsp, bram, lut, cap = resources()
    out["dsp"], out["bram36"], out["lut"] = dsp, bram, lut
    out["bram36_capacity_only"] = cap
    out["steps"] = frame
    out["reference_steps"] = reference
    out["arm_ops"] = arm_ops(program)
    return out


def shape_program(config=None) -> Program:
    """A program with placeholder operands (cycles depend on shapes only). Needs torch
    only for the default config."""
    from .program import compile_program
    from .quantize import ConvNode, GridNode, QuantizedModel, build_graph, config_dict

    if config is None:
        from codec.models.grace_s import GraceSConfig

        config = GraceSConfig()
    graph = build_graph(config)
    convs, grids = {}, {}
    for n in graph.nodes:
        if isinstance(n, ConvNode):
            cin = graph.tensors[n.x].shape[0]
            cout = graph.tensors[n.y].shape[0]
            w = np.zeros((cout, 1 if n.depthwise else cin, n.k, n.k), np.int8)
            z = np.zeros(cout, np.int32)
            res = (1 << 30, 31) if n.residual else (None, None)
            convs[n.name] = ref.QuantConv(w, z, z + (1 << 30), z + 40, *res, np.ones(cout))
        elif isinstance(n, GridNode):
            grids[n.name] = (1 << 30, 42)
    scales = {k: 1.0 for k, t in graph.tensors.items() if t.dtype == "int8"}
    qm = QuantizedModel("grace-s", config_dict(config), "0" * 16, scales, convs, grids,
                        {"method": "none (shapes only)"})  # fmt: skip
    return compile_program(qm)


# ---------------------------------------------------------------------------------------
# Measurement here (for the record)


def measure(program: Program, frames: int = 3) -> dict:
    """frames/s of the int8 and csim backends on this machine (synthetic inputs)."""
    from codec.errors import GraceError
    from codec.motion import default_shape_model

    from .backends import CsimGenerator, Int8Generator

    s = program.size
    sm = default_shape_model()
    face = (sm.mean.reshape(68, 2) * sm.scale0 * s / 256 + s / 2).astype(np.float32)
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (16, 16, 3)).astype(np.uint8).repeat(s // 16, 0).repeat(s // 16, 1)
    out = {}
    for cls in (Int8Generator, CsimGenerator):
        try:
            gen = cls(program=program)
        except GraceError as e:  # e.g. no g++ for csim: report, do not fail the model
            out[cls.name] = f"unavailable: {e}"
            continue
        t0 = time.perf_counter()
        gen.set_reference(img, face)
        t_ref = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(frames):
            gen.render(face + rng.normal(0, 1.0, face.shape).astype(np.float32))
        dt = (time.perf_counter() - t0) / frames
        out[cls.name] = {"fps": 1.0 / dt, "frame_s": dt, "reference_s": t_ref}
    return out


# ---------------------------------------------------------------------------------------
# Printing


def format_report(r: dict, top: int = 12) -> str:
    s = r["size"]
    lines = [
        f"gracecodec performance model of the {s}x{s} frame program on PYNQ-Z1 (xc7z020, "
        f"{r['assumptions']['clock_hz'] / 1e6:.0f} MHz) -- ALL FIGURES MODELLED, none measured",
        "",
        f"{'step':<22}{'engine call':<34}{'MMAC':>8}{'kcycles':>10}{'serial':>10}"
        f"{'ms':>8}{'DDR KiB':>9}",
    ]
    steps = sorted(r["steps"], key=lambda x: -x["overlapped"])
    for x in steps[:top]:
        lines.append(
            f"{x['step']:<22}{x['shape']:<34}{x['macs'] / 1e6:>8.1f}"
            f"{x['overlapped'] / 1e3:>10.1f}{x['serial'] / 1e3:>10.1f}"
            f"{1e3 * x['overlapped'] / r['assumptions']['clock_hz']:>8.2f}"
            f"{x['ddr_bytes'] / 1024:>9.0f}"
        )
    if len(steps) > top:
        rest = steps[top:]
        lines.append(
            f"{f'({len(rest)} more steps)':<56}"
            f"{sum(x['overlapped'] for x in rest) / 1e3:>10.1f}"
            f"{sum(x['serial'] for x in rest) / 1e3:>10.1f}"
        )
    lines.append("")
    lines.append(f"per frame (modelled): {r['macs'] / 1e9:.3f} GMAC-equivalent, "
                 f"{r['ddr_bytes'] / 2**20:.1f} MiB DDR traffic "
                 f"({r['ddr_mb_s']:.0f} MB/s at the overlapped rate)")  # fmt: skip
    for key, what in (
        ("overlapped", "engines overlapped as designed (load || compute || store)"),
        ("serial", "no overlap inside an engine call"),
        ("what_if", "what-if: 64-bit data paths, pixel-pipelined (NOT in hw/)"),
        ("mac_bound", "MAC-bound limit (PE array always busy, no overheads)"),
    ):
        x = r[key]
        lines.append(
            f"  {what:<58} {x['ms']:7.1f} ms  {x['fps']:6.2f} frames/s  "
            f"{x['uj_per_pixel']:6.2f} uJ/pixel  (modelled)"
        )
    ov = r["overlapped"]
    lines.append(
        f"  energy at {r['assumptions']['board_power_w']} W board power: "
        f"{ov['uj_per_pixel']:.2f} uJ/pixel modelled vs GRACE's {GRACE_UJ_PER_PIXEL} measured "
        f"({GRACE_UJ_PER_PIXEL / ov['uj_per_pixel']:.1f}x); targets >= {TARGET_FPS:.0f} "
        f"frames/s: {'met' if ov['fps'] >= TARGET_FPS else 'NOT met'}, <= "
        f"{TARGET_UJ_PER_PIXEL} uJ/pixel: "
        f"{'met' if ov['uj_per_pixel'] <= TARGET_UJ_PER_PIXEL else 'NOT met'} (modelled)"
    )
    lines.append(f"  reference stage (per key frame): {r['reference_ms']:.1f} ms (modelled)")
    lines.append(
        "  ARM-side per frame (not in the cycle count, overlappable with the previous "
        f"frame's engines except motion_head): {', '.join(r['arm_ops'])}"
    )
    lines.append("")
    lines.append("resources (modelled estimates, not synthesis reports):")
    for title, table, cap in (
        ("DSP48E1", r["dsp"], XC7Z020["DSP48E1"]),
        ("BRAM36", r["bram36"], XC7Z020["BRAM36"]),
        ("LUT", r["lut"], XC7Z020["LUT"]),
    ):
        total = sum(table.values())
        lines.append(f"  {title}: {total:g} of {cap} ({100 * total / cap:.0f} %) modelled")
        for k, v in table.items():
            lines.append(f"      {v:>7g}  {k}")
    lines.append(
        f"  (BRAM by capacity alone would be {r['bram36_capacity_only']:.0f} BRAM36; the "
        "per-bank rounding above is what partitioned arrays cost)"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m decoder_fpga.perf", description=__doc__.split("\n")[0]
    )
    p.add_argument(
        "--program", type=Path, help="a compiled program folder (default: grace-s shapes)"
    )
    p.add_argument("--size", type=int, default=256, help="frame size for the default config")
    p.add_argument(
        "--measure",
        type=int,
        default=0,
        metavar="N",
        help="also time N frames of the int8 and csim backends here",
    )
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)  # fmt: skip
    if args.program:
        program = Program.load(args.program)
    else:
        from codec.models.grace_s import GraceSConfig

        program = shape_program(GraceSConfig(size=args.size))
    r = report(program)
    print(format_report(r, args.top))
    if args.measure:
        m = measure(program, args.measure)
        r["measured_here"] = m
        print("\nmeasured on this machine (Python, not the board):")
        for k, v in m.items():
            if isinstance(v, dict):
                print(f"  {k:5s} {v['fps']:6.2f} frames/s ({v['frame_s']:.2f} s a frame, "
                      f"reference {v['reference_s']:.2f} s)")  # fmt: skip
            else:
                print(f"  {k:5s} {v}")
    if args.json:
        args.json.write_text(json.dumps(r, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
