"""Performance model of a compiled program on the PYNQ-Z1 (xc7z020 at 100 MHz): MODELLED.

    python -m decoder_fpga.perf                       # grace-s at 256x256 (shapes only)
    python -m decoder_fpga.perf --program DIR         # a compiled program (program.json)
    python -m decoder_fpga.perf --measure 3           # + int8 / csim frames/s on this machine
    python -m decoder_fpga.perf --no-arm              # skip timing the ARM ops here

Nothing here was measured on hardware: every figure comes from the loop structure of the
HLS engines (`hw/conv/conv_engine.cpp`, `hw/gridsample/gridsample_engine.cpp`), their
sizes (`int8_ref.CONV_LIMITS` / `GRID_LIMITS`, mirrored by `hw/common/grace_hw.h` and
checked by the csim tests) and the stated `Assumptions` (pipeline depths, AXI latencies,
call overhead, the ARM slow-down), which an HLS schedule report or a board run would
replace.

Cycle model per engine invocation (one step of the program), following the C++ loops.
Every load/store loop moves one 8-byte beat a cycle (64-bit m_axi); a burst pays one read
latency (a contiguous run: a channel's tile rows, a plane, a lane's output tile; one per
row when w is not a multiple of 8, because the rows are then not one run of beats).

conv   params: II 2 a channel (12 bytes); weights: per (output channel, 8-channel input
       group) kk beats into a staging register and kk words into the banks (2 kk cycles),
       one burst a channel row (depthwise: one burst). Then the tile loop over row tiles x
       32-channel groups, step t = load(t) || compute(t-1) || store(t-2):
         load     input: the rows of row tile rt+1 in n_cot chunks of ceil(cin/8)*8 / n_cot
                  channels, one a step while row tile rt computes, ry_n x ceil(w/8) beats a
                  channel, the even channels on gmem0 (x), the odd ones on gmem1 (x1), and
                  the residual of tile t: lanes x ceil(rows*wo/8) beats (gmem2), in one
                  loop: the longest of the three + a read latency for every burst of any
                  (groups: ceil(cout/32), balanced to ceil(cout/n_cot) rounded up to 8)
                  + 32 cycles for tile t's group's {bias, M, S} into registers (a
                  second set: the compute stage of step t+1 starts at once)
         compute  dense: one flattened pipeline (II 1) of (pixel groups + 1) x slots +
                  depth; a group is P pixels of a row (P = 8 for cout <= 4 at stride 1,
                  4 for cout <= 8, 2 for cout <= 16, else 1: the 32 PE rows as P pixels x
                  32/P channels), slots =
                  max(ceil(cin/8) * k*k, ceil(P * lanes / 8)) (MAC slots of the packed
                  32 x 8 array, or the 8-lane epilogue when that is longer);
                  depthwise: ceil(lanes/8) x rows x (wo + row overhead) (II 1, the window
                  fetches staggered over the three rows)
         store    lanes x ceil(rows*wo/8) beats
       "overlapped" takes the max of the three stages per step (the design intent), and at
       least the step's DDR bytes (load + store) / `ddr_bytes_per_cycle`; "serial" their
       sum (if HLS does not overlap the calls).
grid   per pass of planes (as many as fit 64 KiB): load planes x h x ceil(w/8) beats;
       per block of R = 2048 // wo output rows, software-pipelined: the grid/occlusion
       block b+1 (x, y: R*wo/4 beats each on gmem1, occlusion R*wo/8 on gmem3, in one loop,
       three bursts) || block b's (row, plane) items sampled in one flattened pipeline (2
       samplers: ceil(wo/2) cycles an item, the depth once a block, an item's store of
       ceil(wo/8) beats + a write latency overlapping the next item's sampling; block 0 of
       every pass but the first loaded during the previous pass's last block); passes
       double-buffered (overlapped) or not; the call at least its DDR bytes / the DDR rate.
Both   + a fixed call overhead (s_axilite writes, start, done interrupt/poll).

ARM    the frame stage's ARM ops (backward map, heatmaps, resizes, sigmoid, Q9.6 and uint8
       conversions, the output image) timed here with a null engine, x `arm_factor` (an
       assumed Cortex-A9 / this host slow-down; measure on the board). The frame period
       of the co-processor schedule is max(engines, ARM) (the ARM works on frames n+1 /
       n-1 while the engines run frame n), or engines + ARM when not overlapped.

Resources are estimated from the same structures (128 DSP48E1 for 256 int8 MACs, two
products a DSP; BRAM by partitioned bank, each bank rounded up to BRAM18 halves); LUTs
are a coarse itemised guess. Energy per pixel = board power x frame time / pixels (2.5 W
unless measured).
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
BEAT = 8  # bytes per m_axi beat (64-bit data paths)
EPI_LANES = 8  # conv epilogues a cycle
GS_SAMPLERS = 2  # grid-sample outputs a cycle (the two ports of each parity bank)
GS_ROW_BUF = 2048  # grid / occlusion values a half of the block buffers (gridsample_engine.cpp)
DDR_PEAK_BYTES_S = 2 * 1066e6  # PYNQ-Z1: one 16-bit DDR3 chip at 1066 MT/s


@dataclasses.dataclass(frozen=True)
class Assumptions:
    """Stated constants of the model (not measured; an HLS report or a board replaces them)."""

    clock_hz: float = 100e6
    board_power_w: float = 2.5
    read_latency: int = 24  # cycles: AXI HP read latency + loop fill, once per burst
    write_latency: int = 8  # cycles: once per written burst (posted writes)
    # dense: lane read 2 + DSP cascade 4 + split/adder tree 3 + epilogue (64-bit product,
    # round, clamp) 5: the flattened pipeline's depth, paid once a tile
    dense_pipe_depth: int = 14
    dw_row_overhead: int = 12  # depthwise: row prologue (6 reads, 3 cycles) + pipeline depth
    gs_row_depth: int = 10  # grid-sample pipeline depth, once per pipelined loop (a grid block)
    call_overhead: int = 500  # cycles (5 us) per engine invocation: registers, start, done
    # DDR: the PYNQ-Z1's DDR3 is one 16-bit chip at 1066 MT/s (Digilent reference manual):
    # 2.13 GB/s peak = 21.3 bytes a 100 MHz cycle. Sustained: 75 % of peak for long bursts
    # from several HP ports with reads and writes mixed (read/write turnarounds, refresh,
    # page misses between the streams), i.e. 1.6 GB/s = 16 bytes a cycle: assumed, not
    # measured; every step's cycles are at least its DDR bytes / this (the HP ports alone
    # could move 8 bytes a cycle each, 4 ports 32)
    ddr_bytes_per_cycle: float = 16.0
    arm_factor: float = 10.0  # Cortex-A9 (667 MHz, numpy) / this host: assumed, unmeasured


A = Assumptions()


def _cdiv(a: int, b: int) -> int:
    return -(-a // b)


# ---------------------------------------------------------------------------------------
# Cycle models of the two engines


def pixel_group(cout: int, stride: int = 1, pe_co: int = ref.CONV_LIMITS.pe_co) -> int:
    """Output pixels a dense pass computes at once (conv_engine.cpp pixel_group): the 32 PE
    rows as 8 pixels x 4 channels (cout <= 4, stride 1), 4 x 8 (cout <= 8), 2 x 16 (cout
    <= 16) or 1 x 32."""
    if cout <= pe_co // 8 and stride == 1:
        return 8
    return 4 if cout <= pe_co // 4 else 2 if cout <= pe_co // 2 else 1


def group_width(cout: int, pe_co: int = ref.CONV_LIMITS.pe_co, pe_ci: int = ref.CONV_LIMITS.pe_ci):
    """Channels of an output-channel group (conv_engine.cpp layer_t.gco): the ceil(cout/32)
    groups balanced, ceil(cout / n_cot) rounded up to a multiple of 8."""
    n_cot = _cdiv(cout, pe_co)
    return _cdiv(_cdiv(cout, n_cot), pe_ci) * pe_ci


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
    wpr = _cdiv(w, BEAT)
    pix_group = pixel_group(cout, s, pe_co)
    gco = group_width(cout, pe_co, pe_ci)
    setup = 2 * n_cot * pe_co + a.read_latency
    if dw:
        setup += cig_n * 2 * kk + a.read_latency
        w_bytes = cin * kk
    else:
        setup += n_cot * pe_co * (cig_n * 2 * kk + a.read_latency)
        w_bytes = cout * cin * kk
    # per row tile: its input rows, and the bursts of one channel's rows
    rows_of = []
    for rt in range(n_rt):
        oy0 = rt * tr
        nrows = min(tr, ho - oy0)
        vlo = max(0, oy0 * s - p)
        vhi = min(hv - 1, (oy0 + nrows - 1) * s - p + k - 1)
        rows_of.append((nrows, ((vhi >> 1) - (vlo >> 1) + 1) if up else (vhi - vlo + 1)))
    in_bytes = sum(cin * ry_n * w for _, ry_n in rows_of)
    chunk = _cdiv(ci_pad, n_cot)
    loads, computes, stores, load_bytes, store_bytes = [], [], [], [], []
    for t in range(n_rt * n_cot):
        rt, cot = divmod(t, n_cot)
        nrows = rows_of[rt][0]
        npix = nrows * wo
        lanes = min(gco, cout - cot * gco)
        # the input chunk loading at step t (conv_engine.cpp TILE_LOOP): row tile 0 whole
        # at t = 0, else channels [q * chunk, (q+1) * chunk) of row tile (t-1)//n_cot + 1
        if t == 0:
            c_lo, c_hi, ry_n = 0, ci_pad, rows_of[0][1]
        else:
            rt_in, q = (t - 1) // n_cot + 1, (t - 1) % n_cot
            c_lo, c_hi = q * chunk, min(ci_pad, (q + 1) * chunk)
            if rt_in >= n_rt or c_lo > c_hi:
                c_lo = c_hi = 0
            ry_n = rows_of[rt_in][1] if rt_in < n_rt else 0
        n_ch = c_hi - c_lo
        n_odd = c_hi // 2 - c_lo // 2  # odd channels in [c_lo, c_hi): port x1 (gmem1)
        n_real = max(0, min(c_hi, cin) - c_lo)  # channels >= cin are zeros, not read
        bursts_in = 1 if w % BEAT == 0 else ry_n
        # even input channels (gmem0), odd ones (gmem1) and residual (gmem2) beats advance
        # in one loop; every burst start of any of them stalls that loop by a read latency
        res_beats = lanes * _cdiv(npix, BEAT) if res else 0
        beats = max(n_ch - n_odd, n_odd) * ry_n * wpr
        beats = max(beats, res_beats)
        bursts = n_ch * bursts_in + (lanes if res else 0)
        # + the 32 {bias, M, S} of tile t's group into registers, after the load loop
        loads.append((beats + bursts * a.read_latency if beats else 0) + pe_co)
        load_bytes.append(n_real * ry_n * w + (lanes * npix if res else 0))
        store_bytes.append(lanes * npix)
        cp = 0  # (the group's {bias, M, S} are in registers already: the load stage)
        if dw:
            cp += _cdiv(lanes, pe_ci) * nrows * (wo + a.dw_row_overhead)
        else:
            groups = nrows * _cdiv(wo, pix_group)
            slots = max(cig_n * kk, _cdiv(pix_group * lanes, EPI_LANES))
            cp += (groups + 1) * slots + a.dense_pipe_depth
        computes.append(cp)
        stores.append(lanes * (_cdiv(npix, BEAT) + a.write_latency))
    n = len(loads)
    overlapped = 0
    ddr_bound = 0  # cycles the DDR bandwidth adds over the three stages
    for t in range(n + 2):
        stage = max(loads[t] if t < n else 0, computes[t - 1] if 1 <= t <= n else 0,
                    stores[t - 2] if t >= 2 else 0)  # fmt: skip
        moved = (load_bytes[t] if t < n else 0) + (store_bytes[t - 2] if t >= 2 else 0)
        ddr = math.ceil(moved / a.ddr_bytes_per_cycle)
        overlapped += max(stage, ddr)
        ddr_bound += max(0, ddr - stage)
    serial = sum(loads) + sum(computes) + sum(stores)
    serial = max(serial, math.ceil((sum(load_bytes) + sum(store_bytes)) / a.ddr_bytes_per_cycle))
    macs = cout * ho * wo * (1 if dw else cin) * kk
    ddr = w_bytes + 12 * cout + in_bytes + cout * ho * wo * (2 if res else 1)
    return {
        "overlapped": setup + overlapped + a.call_overhead,
        "serial": setup + serial + a.call_overhead,
        # the PE array's peak: 256 MACs a cycle dense, 8 channels x k*k taps depthwise
        "mac_bound": math.ceil(macs / (pe_co * pe_ci)) if not dw else _cdiv(cout * ho * wo, pe_ci),
        "macs": macs,
        "ddr_bytes": ddr,
        "ddr_stall": ddr_bound,
        "compute": sum(computes),
    }


def grid_cycles(cfg: dict, a: Assumptions = A, limits: ref.GridLimits = ref.GRID_LIMITS) -> dict:
    """Cycles (overlapped and serial), MACs and DDR bytes of one grid-sample engine call."""
    c, h, w, ho, wo, occ = cfg["c"], cfg["h"], cfg["w"], cfg["ho"], cfg["wo"], cfg["occlusion"]
    np_ = ref.check_grid_sample(c, h, w, ho, wo, occlusion=occ, limits=limits)
    passes = [min(np_, c - c0) for c0 in range(0, c, np_)]
    bursts = 1 if w % BEAT == 0 else h
    loads = [n * (h * _cdiv(w, BEAT) + bursts * a.read_latency) for n in passes]
    # the grid in blocks of R whole output rows (gridsample_engine.cpp block_rows): x and y
    # (gmem1, one run each) and the occlusion rows (gmem3) in one loop; every burst start
    # stalls it by a read latency
    R = min(ho, GS_ROW_BUF // wo)
    blocks = [min(R, ho - i0) for i0 in range(0, ho, R)]

    def grid_block(nr: int) -> int:
        ne = nr * wo
        beats = max(2 * _cdiv(ne, 4), _cdiv(ne, BEAT) if occ else 0)
        return beats + (3 if occ else 2) * a.read_latency

    # a block's (row, plane) items are one flattened pipeline (gridsample_engine.cpp
    # BLOCK_PAIR): item k's pixel pairs || item k-1's row stored (a written burst), the
    # pipeline depth once a block, then the last item's store
    samp = _cdiv(wo, GS_SAMPLERS)
    store = _cdiv(wo, BEAT) + a.write_latency

    def items_over(k: int) -> int:  # a block's k (row, plane) items: sample k || store k-1
        return a.gs_row_depth + samp + (k - 1) * max(samp, store) + store

    serial_s, over_s = [], []
    for n in passes:
        serial_s.append(
            sum(grid_block(nr) + a.gs_row_depth + nr * n * (samp + store) for nr in blocks)
        )
    # block 0 of a pass after the first is loaded by the pass before, during its last block
    # (gridsample_engine.cpp sample_pass: the grid is the same for every pass)
    for g, n in enumerate(passes):
        more = g + 1 < len(passes)
        over_s.append((grid_block(blocks[0]) if g == 0 else 0) + sum(
            max(grid_block(blocks[b + 1] if b + 1 < len(blocks) else blocks[0])
                if b + 1 < len(blocks) or more else 0, items_over(nr * n))
            for b, nr in enumerate(blocks)))  # fmt: skip
    over = loads[0] + sum(
        max(loads[g + 1] if g + 1 < len(passes) else 0, over_s[g]) for g in range(len(passes))
    )
    macs = 4 * c * ho * wo + (c * ho * wo if occ else 0)
    ddr = c * h * w + len(passes) * ho * wo * (4 + (1 if occ else 0)) + c * ho * wo
    ddr_cycles = math.ceil(ddr / a.ddr_bytes_per_cycle)  # the call as a whole
    return {
        "overlapped": max(over, ddr_cycles) + a.call_overhead,
        "ddr_stall": max(0, ddr_cycles - over),
        "serial": max(sum(loads) + sum(serial_s), ddr_cycles) + a.call_overhead,
        "mac_bound": _cdiv(c * ho * wo, GS_SAMPLERS),
        "macs": macs,
        "ddr_bytes": ddr,
        "compute": _cdiv(c * ho * wo, GS_SAMPLERS),
    }


# ---------------------------------------------------------------------------------------
# Resources


def bram18(depth: int, width: int) -> int:
    """BRAM18 units of one partitioned bank (0: small enough for registers / LUTRAM)."""
    if depth * width < 1024:
        return 0
    return min(
        _cdiv(depth, d) * _cdiv(width, wd)
        for d, wd in ((16384, 1), (8192, 2), (4096, 4), (2048, 9), (1024, 18), (512, 36))
    )


def resources(conv: ref.ConvLimits = ref.CONV_LIMITS, gs: ref.GridLimits = ref.GRID_LIMITS):
    """DSP48E1 / BRAM36 / LUT estimates of the two engines + the block design. Modelled."""
    pairs = conv.pe_co * conv.pe_ci // 2
    dsp = {
        f"conv PE array {conv.pe_co}x{conv.pe_ci}: 2 int8 MACs a DSP48E1 (shared activation)": pairs,
        f"conv epilogue {EPI_LANES} lanes (acc*M 4 + r*res_M 2)": EPI_LANES * 6,
        f"grid-sample {GS_SAMPLERS} samplers (4 taps, occlusion, requant 4)": GS_SAMPLERS * 9,
    }
    words = 64  # bits of a conv buffer word
    in_words = conv.in_buf_bytes // conv.pe_ci // 8
    out_words = conv.out_tile_pix // 8
    gs_words = gs.bank_bytes // 4
    banks = {
        # name: (banks, depth, width bits)
        f"conv in_buf 2 halves x {conv.pe_ci} lanes x {in_words} x 64 bit": (
            2 * conv.pe_ci, in_words, words),
        f"conv w_buf {conv.pe_co} banks x {conv.w_bank_bytes // 8} x 64 bit": (
            conv.pe_co, conv.w_bank_bytes // 8, words),
        f"conv out_buf 2 halves x {conv.pe_co * out_words} x 64 bit": (
            2, conv.pe_co * out_words, words),
        f"conv res_buf 2 halves x {conv.pe_co * out_words} x 64 bit": (
            2, conv.pe_co * out_words, words),
        "conv bias/M/S 3 x 1024 x int32 (LUTRAM, see LUT)": (0, conv.max_ch, 32),
        f"grid plane_buf 2 halves x 4 parity banks x {gs_words} x 32 bit": (8, gs_words, 32),
        f"grid gx/gy blocks (ping-pong, {GS_ROW_BUF} values)": (4, GS_ROW_BUF, 16),
        f"grid occ blocks (ping-pong, {GS_ROW_BUF} values)": (2, GS_ROW_BUF, 8),
        "grid out rows (ping-pong, 64-bit words)": (2, gs.max_w_out // 8, 64),
    }  # fmt: skip
    bram = {k: n * bram18(d, wd) / 2 for k, (n, d, wd) in banks.items()}
    capacity = sum(n * d * wd for n, d, wd in banks.values()) / (36 * 1024 * 8 / 9)
    lut = {
        "PE array: 32 packed-sum splits + 32 adder trees/accumulators": 32 * 30 + 32 * 80,
        "depthwise adder trees 8 x 9 taps": 8 * 150,
        "epilogues 8 lanes (64-bit round/shift/clamp)": 8 * 250,
        "bias/M/S tables in LUTRAM (96 Kbit) + read muxes": 2000,
        "second {bias, M, S} register set (ping-pong): 2:1 selects 96 x 32 bit": 1550,
        "out/res word flush + prefetch registers (32:1 x 64-bit muxes)": 1400,
        "input byte selects, depthwise window (8 lanes x 9 taps x 16:1)": 2400,
        "8-pixel groups: 4 more pixels' byte selects (32 x 16:1) + 8:1 activation routing": 1250,
        "second input stream (x1 on gmem1): counters, addresses, lane write ports": 400,
        "grid-sample block addressing and (row, plane) item counters": 300,
        "weight staging / transposer": 600,
        "address generation and counters": 2000,
        "m_axi adapters 7 x ~1.8k (64-bit)": 12600,
        "s_axilite 2 x ~0.4k": 800,
        "engine control FSMs 2 x ~2.5k": 5000,
        "grid-sample 2 samplers: taps, weights, bank/byte select": 3000,
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


class _NullEngines:
    """Engines that return zeros: the ARM ops alone can be timed on a ProgramRunner."""

    name = "null"

    def conv(self, x, w, params, res, cfg):
        ho = ref.conv_out_size(cfg["h"], cfg["k"], cfg["stride"], bool(cfg["upsample"]))
        wo = ref.conv_out_size(cfg["w"], cfg["k"], cfg["stride"], bool(cfg["upsample"]))
        return np.zeros((cfg["cout"], ho, wo), np.int8)

    def grid_sample(self, x, grid, occ, cfg):
        return np.zeros((cfg["c"], cfg["ho"], cfg["wo"]), np.int8)


def arm_host_ms(program: Program, frames: int = 7) -> dict:
    """Milliseconds a frame of each frame-stage ARM op on THIS host, with null engines (the
    ARM ops' cost does not depend on the values): the fastest of `frames` frames, the one
    least disturbed by other load on the host. motion_head is split as render_many runs
    it: "motion_head" (the 64 px part, in series), and per deferred part (its outputs,
    e.g. "g128+occ128") "late:<outputs>" (computing it: the ARM worker's) and
    "write:<outputs>" (its arena writes, in series before the step that needs it)."""
    from codec.motion import default_shape_model

    from . import backends

    s = program.size
    sm = default_shape_model()
    face = (sm.mean.reshape(68, 2) * sm.scale0 * s / 256 + s / 2).astype(np.float64)
    rng = np.random.default_rng(0)
    run = backends.ProgramRunner(program, _NullEngines())
    img = rng.integers(0, 256, (s, s, 3)).astype(np.uint8)
    run.run("reference", image=img, landmarks=face)
    times: dict[str, list[float]] = {}
    for _ in range(frames):
        lm = face + rng.normal(0, 1.0, face.shape)
        for st in program.steps("frame"):
            if st["op"] != "arm":
                continue
            run.deferred_times = {}
            t0 = time.perf_counter()
            backends.ARM_OPS[st["node"]](run, landmarks=lm)
            dt = time.perf_counter() - t0
            for names, (late, write) in run.deferred_times.items():
                dt -= late + write
                key = "+".join(names)
                times.setdefault(f"late:{key}", []).append(1e3 * late)
                times.setdefault(f"write:{key}", []).append(1e3 * write)
            times.setdefault(st["node"], []).append(1e3 * dt)
    return {k: float(np.min(v)) for k, v in times.items()}


def runtime_schedule(program: Program, a: Assumptions, arm_host: dict, frames: int = 40) -> dict:
    """The frame period of the schedule `Int8Generator.render_many` runs, in cycles
    (modelled), by stepping its two threads through `frames` frames:

    main thread (one Cortex-A9): frame t's engine steps in program order, with between
      them what it keeps of the ARM work: motion_head's 64 px part right after the motion
      net; before the first step that touches a deferred part's outputs, a wait for that
      part, then its arena writes; at the start of frame t, a wait for frame t's inputs.
    worker (the other Cortex-A9), one job at a time, in submission order except that a
      deferred part goes ahead of queued, not started jobs: motion_head's deferred parts
      of frame t (submitted after its 64 px part), frame t+1's inputs (frame_inputs,
      submitted at the start of frame t but held until then; at the start when nothing
      is deferred), frame t's output (output, at its end).

    So a waiting step waits for max(engine time since the split, the deferred part's ARM
    time + whatever the worker was still running at the split). ARM times: arm_host (ms
    on this host, `arm_host_ms`) x a.arm_factor. Returns the steady-state period
    ("cycles"), the main thread's waits a frame for deferred parts ("stall_cycles") and
    for its inputs ("input_wait_cycles"), and the deferred parts' join steps."""
    k = a.arm_factor * 1e-3 * a.clock_hz
    steps = program.steps("frame")
    eng = iter(r["overlapped"] for r in step_table(program, "frame", a))
    cyc = [0.0 if st["op"] == "arm" else next(eng) for st in steps]
    split = next((i for i, st in enumerate(steps) if st.get("node") == "motion_head"), None)
    jobs = []  # (outputs, compute cycles, write cycles, join step index)
    if split is not None:
        from .backends import join_step

        for key, ms in arm_host.items():
            if key.startswith("late:"):
                names = key[5:].split("+")
                w = k * arm_host.get(f"write:{key[5:]}", 0.0)
                jobs.append((names, k * ms, w, join_step(program, "frame", split, names)))
    prep, out, mh = (k * arm_host.get(n, 0.0) for n in ("frame_inputs", "output", "motion_head"))

    # the worker: non-preemptive, urgent jobs first among those submitted when it frees
    queue: list = []  # (submit time, urgent, seq, duration, id)
    done: dict = {}
    free = 0.0

    def submit(now, dur, urgent, jid):
        queue.append((now, urgent, len(done) + len(queue), dur, jid))

    def wait(jid, now):
        nonlocal free
        while jid not in done:
            start = max(free, min(q[0] for q in queue))
            ready = [q for q in queue if q[0] <= start]
            job = min(ready, key=lambda q: (not q[1], q[2]))
            queue.remove(job)
            free = start + job[3]
            done[job[4]] = free
        return max(now, done[jid])

    now = 0.0
    ends, stalls, input_waits = [], [], []
    submit(now, prep, False, ("prep", 0))
    for t in range(frames):
        if t + 1 < frames and not jobs:
            submit(now, prep, False, ("prep", t + 1))
        t0 = now
        now = wait(("prep", t), now)
        input_waits.append(now - t0)
        stall = 0.0
        for i in range(len(steps)):
            for j, (_, _, w, at) in enumerate(jobs):
                if at == i:
                    t0 = now
                    now = wait(("late", t, j), now)
                    stall += now - t0
                    now += w
            now += cyc[i]
            if i == split:
                now += mh
                for j, (_, c, _, _) in enumerate(jobs):
                    submit(now, c, True, ("late", t, j))
                if jobs and t + 1 < frames:  # held until the deferred parts are queued
                    submit(now, prep, False, ("prep", t + 1))
        for j, (_, _, w, at) in enumerate(jobs):
            if at >= len(steps):
                now = wait(("late", t, j), now) + w
        submit(now, out, False, ("out", t))
        ends.append(now)
        stalls.append(stall)
    n = max(1, frames // 4)
    return {
        "cycles": (ends[-1] - ends[-1 - n]) / n,
        "stall_cycles": float(np.mean(stalls[-n:])),
        "input_wait_cycles": float(np.mean(input_waits[-n:])),
        "deferred": [
            {
                "outputs": names,
                "ms": 1e3 * c / a.clock_hz,
                "join": steps[at]["node"] if at < len(steps) else "end",
            }
            for names, c, _, at in jobs
        ],  # fmt: skip
    }


def report(program: Program, a: Assumptions = A, arm_host: dict | None = None) -> dict:
    """Every figure of the model as a dict (all modelled). arm_host: {ARM op: ms a frame
    on this host} (`arm_host_ms`) to add the ARM side (x a.arm_factor) to the schedule."""
    frame = step_table(program, "frame", a)
    reference = step_table(program, "reference", a)
    s = program.size
    out = {"label": LABEL, "assumptions": dataclasses.asdict(a), "size": s}
    for key in ("overlapped", "serial", "mac_bound"):
        out[key] = _rate(sum(r[key] for r in frame), a, s)
    out["reference_ms"] = 1e3 * sum(r["overlapped"] for r in reference) / a.clock_hz
    out["macs"] = sum(r["macs"] for r in frame)
    out["ddr_bytes"] = sum(r["ddr_bytes"] for r in frame)
    out["ddr_mb_s"] = out["ddr_bytes"] * out["overlapped"]["fps"] / 1e6
    out["ddr_sustained_mb_s"] = a.ddr_bytes_per_cycle * a.clock_hz / 1e6
    out["ddr_peak_mb_s"] = DDR_PEAK_BYTES_S / 1e6
    busiest = max(frame, key=lambda x: x["ddr_bytes"] / x["overlapped"])
    out["ddr_busiest_step"] = {
        "step": busiest["step"],
        "mb_s": busiest["ddr_bytes"] * a.clock_hz / busiest["overlapped"] / 1e6,
    }
    out["ddr_stall_cycles"] = sum(x["ddr_stall"] for x in frame)
    out["ddr_bound_steps"] = [x["step"] for x in frame if x["ddr_stall"] > 0]
    if arm_host is not None:
        arm_ms = a.arm_factor * sum(arm_host.values())
        eng = out["overlapped"]["cycles"]
        arm_cycles = arm_ms * 1e-3 * a.clock_hz
        out["arm"] = {
            "host_ms": dict(arm_host),
            "factor": a.arm_factor,
            "ms": arm_ms,
            "limit": "ARM" if arm_cycles > eng else "engines",
        }
        # co-processor schedule: ARM of frames n+1 / n-1 under the engines of frame n
        out["system"] = _rate(max(eng, arm_cycles), a, s)
        out["system_serial"] = _rate(eng + arm_cycles, a, s)
        # the schedule render_many implements (one activation arena): frame_inputs,
        # output and motion_head's 128/256 px parts on the ARM worker under the engines;
        # motion_head's 64 px part (and the deferred parts' arena writes) in series
        if "board" not in arm_host:
            rs = runtime_schedule(program, a, arm_host)
            out["system_runtime"] = _rate(rs["cycles"], a, s)
            out["system_runtime"].update(
                stall_ms=1e3 * rs["stall_cycles"] / a.clock_hz,
                input_wait_ms=1e3 * rs["input_wait_cycles"] / a.clock_hz,
                deferred=rs["deferred"],
            )
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
    b = r["ddr_busiest_step"]
    lines.append(
        f"  DDR: assumed sustained {r['ddr_sustained_mb_s']:.0f} MB/s (of the PYNQ-Z1's "
        f"{r['ddr_peak_mb_s']:.0f} MB/s peak); busiest step {b['step']} at {b['mb_s']:.0f} MB/s; "
        f"{len(r['ddr_bound_steps'])} steps held back by DDR bandwidth "
        f"(+{r['ddr_stall_cycles'] / 1e3:.1f} kcycles; modelled)"
    )
    for key, what in (
        ("overlapped", "engines, load || compute || store overlapped (design intent)"),
        ("serial", "engines, no overlap inside an engine call"),
        ("mac_bound", "MAC-bound limit (packed 32x8 array always busy, no overheads)"),
    ):
        x = r[key]
        lines.append(
            f"  {what:<62} {x['ms']:7.1f} ms  {x['fps']:6.2f} frames/s  "
            f"{x['uj_per_pixel']:6.2f} uJ/pixel  (modelled)"
        )
    if "arm" in r:
        arm = r["arm"]
        host = ", ".join(
            f"{k.replace('late:', 'motion_head late ').replace('write:', 'arena writes ')} {v:.2f}"
            for k, v in arm["host_ms"].items()
        )
        if "board" in arm["host_ms"]:
            lines.append(f"  ARM ops: {arm['ms']:.1f} ms a frame, as measured on the board (given)")
        else:
            lines.append(
                f"  ARM ops: {sum(arm['host_ms'].values()):.1f} ms a frame on this host ({host}) "
                f"x {arm['factor']:g} (assumed Cortex-A9 slow-down) = {arm['ms']:.1f} ms "
                "(modelled)"
            )
        for key, what in (
            ("system", f"with the ARM: period max(engines, ARM), {arm['limit']}-bound"),
            ("system_runtime", "with the ARM, render_many's schedule (64 px head inline)"),
            ("system_serial", "with the ARM, not overlapped: engines + ARM"),
        ):
            if key not in r:
                continue
            x = r[key]
            lines.append(
                f"  {what:<62} {x['ms']:7.1f} ms  {x['fps']:6.2f} frames/s  "
                f"{x['uj_per_pixel']:6.2f} uJ/pixel  (modelled)"
            )
            if key == "system_runtime" and x["deferred"]:
                parts = ", ".join(
                    f"{'/'.join(d['outputs'])} {d['ms']:.1f} ms before {d['join']}"
                    for d in x["deferred"]
                )
                lines.append(
                    f"      motion_head's deferred parts on the ARM worker ({parts}); the "
                    f"waiting steps wait {x['stall_ms']:.1f} ms a frame, frame inputs "
                    f"{x['input_wait_ms']:.1f} ms (modelled)"
                )
    ov_key = "system_runtime" if "system_runtime" in r else "system"
    for key, title in (("overlapped", "engines alone"), (ov_key, "with the ARM")):
        if key not in r:
            continue
        ov = r[key]
        lines.append(
            f"  targets, {title}: >= {TARGET_FPS:.0f} frames/s "
            f"{'met' if ov['fps'] >= TARGET_FPS else 'NOT met'}, <= {TARGET_UJ_PER_PIXEL} "
            f"uJ/pixel at {r['assumptions']['board_power_w']} W "
            f"{'met' if ov['uj_per_pixel'] <= TARGET_UJ_PER_PIXEL else 'NOT met'} "
            f"({ov['fps']:.2f} frames/s, {ov['uj_per_pixel']:.2f} uJ/pixel vs GRACE's "
            f"{GRACE_UJ_PER_PIXEL} measured; modelled)"
        )
    lines.append(f"  reference stage (per key frame): {r['reference_ms']:.1f} ms (modelled)")
    lines.append(
        "  ARM-side ops per frame (not in the engine cycle count; overlappable with the "
        f"engines of the neighbouring frames): {', '.join(r['arm_ops'])}"
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
    p.add_argument("--no-arm", action="store_true", help="do not time the ARM ops here")
    p.add_argument(
        "--arm-factor",
        type=float,
        default=A.arm_factor,
        help="assumed Cortex-A9 / this host slow-down of the ARM ops (modelled)",
    )
    p.add_argument("--arm-ms", type=float, metavar="MS",
                   help="the ARM ops' time a frame measured on the board (replaces the "
                        "host time x factor)")  # fmt: skip
    p.add_argument("--json", type=Path, help="write every figure as JSON")
    p.add_argument("--top", type=int, default=12)
    args = p.parse_args(argv)  # fmt: skip
    if args.program:
        program = Program.load(args.program)
    else:
        from codec.models.grace_s import GraceSConfig

        program = shape_program(GraceSConfig(size=args.size))
    a = dataclasses.replace(A, arm_factor=args.arm_factor)
    if args.arm_ms is not None:
        arm, a = {"board": args.arm_ms}, dataclasses.replace(A, arm_factor=1.0)
    else:
        arm = None if args.no_arm else arm_host_ms(program)
    r = report(program, a, arm_host=arm)
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
