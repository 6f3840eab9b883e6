"""The int8 reference: the specification of the hardware arithmetic, in numpy.

Every function here defines, bit for bit, what an engine of `hw/` computes. The C++
engines (`hw/conv`, `hw/gridsample`), driven through `decoder_fpga.csim`, are tested
against these functions with `np.testing.assert_array_equal`.

Quantisation scheme
===================

Activations
    int8, symmetric, zero point 0, one scale per tensor: real = q * s. Range [-128, 127]
    (the -128 code is reachable by saturation; `activation_scale` picks s = max|x| / 127).
Weights
    int8, symmetric, zero point 0, one scale per output channel: real = q * s_w[co].
    Range [-127, 127] (`quantize_weights`); the conv engine rejects -128 (BAD_WEIGHT): its
    DSP48E1s take two weights per multiplier, w_lo + w_hi * 2**17, which must fit the
    25-bit multiplier port (|w| <= 127 does, -128 with a negative partner does not).
Bias
    int32 with scale s_in * s_w[co]; |bias| <= 2**30 (`quantize_bias` clamps, the engines
    reject larger values).
Accumulator
    int32: acc = bias + sum(x * w) over the receptive field. The engine limits
    (cin * k * k <= 1024 * 9 terms of magnitude <= 128 * 128, plus |bias| <= 2**30) keep
    |acc| < 2**31, so it never wraps. (This module sums in exact integer-valued float64 /
    int64 and checks the bound.)
Requantisation (one multiplier M and shift S per output channel)
    M: int32 in [0, 2**31 - 1]; S: int32 in [1, 62]. With the product taken in int64:

        rq(acc, M, S) = (acc * M + (1 << (S - 1))) >> S        # arithmetic shift

    i.e. acc * M / 2**S rounded to nearest, ties toward +infinity ("round half up").
    |acc * M| < 2**62 and the rounding constant is <= 2**61, so int64 never overflows.
    `quantize_multiplier(m)` gives M in [2**30, 2**31) and S = 31 - e for m = f * 2**e,
    f in [0.5, 1) (m = s_in * s_w[co] / s_out for a conv).
Fused residual add (optional, one multiplier/shift for the whole tensor)
    A second int8 tensor r (scale s_r, the shape of the output) is brought to the output
    scale with its own multiplier and added *before* the activation and the saturation.
    Both terms keep G = RES_GUARD_BITS = 8 guard bits, so the sum is rounded once more
    only (error <= 0.5 + 2**-8 output steps instead of 1 step for two rounded terms):

        t = rq(acc, M[co], S[co] - G) + rq(r, res_M, res_S - G)   # int64, in 1/256 steps
        v = (t + (1 << (G - 1))) >> G                              # round half up
        y = clamp(v, 0 if relu else -128, 127)                     # ReLU folded in the clamp

    Without a residual: v = rq(acc, M[co], S[co]), y = clamp(v, ...). With a residual both
    S[co] and res_S must be >= G + 1 = 9 (multipliers < 2**22; true of any sane scale).
    res_M / 2**res_S approximates s_r / s_out. So `relu(conv(x) + r)` is one engine call.
Fused ReLU
    max(v, 0) before saturation (the clamp above). LeakyReLU is not in the engines.
Fused nearest x2 upsample of the input
    The conv reads a virtual input of size (2H, 2W) with virtual[y][x] = input[y // 2][x // 2];
    padding, stride and kernel apply to the virtual input.
Conv geometry
    kernel k in {1, 3}, padding k // 2 with zeros, stride in {1, 2};
    H_out = (H_v + 2 * (k // 2) - k) // stride + 1 (H_v = 2H with upsample, else H);
    dense weights (cout, cin, k, k) or depthwise (c, 1, k, k) with cin == cout == c.
    Upsample together with stride 2 is rejected (it is a plain conv on the original input).

Grid sample (bilinear, zero padding, fused occlusion multiply)
    Input x: int8 (C, H, W) with scale s_in. Grid: int16 (2, Ho, Wo), channel 0 = x,
    channel 1 = y, in *pixel* coordinates of the input with GRID_FRAC_BITS = 6 fractional
    bits (signed Q9.6: range [-512, 512) px, step 1/64 px). Pixel i's centre is at i, so
    torch's align_corners=False normalised coordinate g maps to p = ((g + 1) * W - 1) / 2
    (`grid_to_fixed`). Any coordinate <= -1 or >= W reads only zeros, so saturating a far
    coordinate to the int16 range changes nothing while W, H <= 256.

        x0 = gx >> 6, fx = gx & 63 (likewise y0, fy)        # floor and fraction in 1/64
        taps (y0, x0) w=(64-fy)(64-fx), (y0, x0+1) w=(64-fy)fx,
             (y0+1, x0) w=fy(64-fx),    (y0+1, x0+1) w=fy*fx   # weights sum to 4096
        acc = sum(w * x[c, yy, xx]) over taps inside the image (outside: 0)   # |acc| < 2**20
        acc = acc * occ[i, j]   when an occlusion map is fused (uint8)          # |acc| < 2**28
        y = clamp(rq(acc, M, S), -128, 127)                  # M, S: one pair for the tensor

    No rounding happens before the single requantisation. The occlusion map is uint8
    with a scale s_occ that is folded into M: `occlusion_to_fixed` uses s_occ = 1/255
    (0 and 1 exact; round half up). A Q0.8 map (s_occ = 1/256) works the same way,
    only M changes. M / 2**S = s_in * s_occ / (4096 * s_out) (`grid_sample_multiplier`).
    A bilinear resize (torch's interpolate, align_corners=False) is a grid sample on a
    regular grid whose positions are clamped to [0, size - 1] (`resize_grid`): interpolate
    replicates the edge where zero padding would fade it. The resize factors 1/4, 1/2, 2, 4
    put the samples exactly on Q9.6, so the only error is the final rounding.

Rounding of float -> int helpers: round half up (floor(v + 0.5)), like the hardware.

Engine limits (the configurations the engines take; larger layers must be split by the
compiler, e.g. along output channels) are in `ConvLimits` / `GridLimits` and checked by
`check_conv` / `check_grid_sample`, which agree with the C engines' own checks.
"""

from __future__ import annotations

import dataclasses
import enum
import math

import numpy as np

from codec.errors import GraceError

# ---------------------------------------------------------------------------------------
# Errors and status codes (mirrored by GRACE_STATUS in hw/common/grace_hw.h)


class UnsupportedConfigError(GraceError, ValueError):
    """A layer configuration or operand the int8 engines cannot take (never silently wrong)."""


class EngineStatus(enum.IntEnum):
    """Engine return codes; the C engines return -status (0 on success)."""

    OK = 0
    BAD_KERNEL = 1
    BAD_STRIDE = 2
    BAD_CHANNELS = 3
    BAD_SIZE = 4
    BAD_DEPTHWISE = 5
    BAD_UPSAMPLE = 6
    WEIGHTS_TOO_BIG = 7
    TILE_TOO_BIG = 8
    BAD_TILE_ROWS = 9
    BAD_REQUANT = 10
    BAD_BIAS = 11
    BAD_FLAG = 12
    BAD_WEIGHT = 13


STATUS_TEXT = {
    EngineStatus.OK: "ok",
    EngineStatus.BAD_KERNEL: "kernel size must be 1 or 3",
    EngineStatus.BAD_STRIDE: "stride must be 1 or 2",
    EngineStatus.BAD_CHANNELS: "channel count out of range",
    EngineStatus.BAD_SIZE: "height/width out of range",
    EngineStatus.BAD_DEPTHWISE: "depthwise conv needs cin == cout",
    EngineStatus.BAD_UPSAMPLE: "upsample with stride 2 is not supported",
    EngineStatus.WEIGHTS_TOO_BIG: "the layer's weights do not fit the weight buffer",
    EngineStatus.TILE_TOO_BIG: "one output row needs more input than the input buffer holds",
    EngineStatus.BAD_TILE_ROWS: "tile_rows out of range or too large for the buffers",
    EngineStatus.BAD_REQUANT: (
        "requant multiplier/shift out of range (M in [0, 2^31), S in [1, 62], S >= 9 with a residual)"
    ),
    EngineStatus.BAD_BIAS: "bias out of range (|bias| <= 2^30)",
    EngineStatus.BAD_FLAG: "a flag is not 0 or 1",
    EngineStatus.BAD_WEIGHT: "a weight of -128 (the packed DSP multipliers take [-127, 127])",
}


def _fail(status: EngineStatus, detail: str = "") -> UnsupportedConfigError:
    text = f"{status.name}: {STATUS_TEXT[status]}"
    return UnsupportedConfigError(f"{text} ({detail})" if detail else text)


# ---------------------------------------------------------------------------------------
# Engine limits (mirrored by hw/common/grace_hw.h; tests compare them with the library)


@dataclasses.dataclass(frozen=True)
class ConvLimits:
    pe_co: int = 32  # PE array rows: output channels per cycle (dense; 2 per DSP48E1)
    pe_ci: int = 8  # PE array columns: input channels per cycle (dense) / channels (dw)
    max_ch: int = 1024  # cin, cout
    max_h: int = 1024  # input height
    max_w: int = 256  # input width (line/tile buffer width)
    max_w_out: int = 256  # output width (output tile buffer)
    in_buf_bytes: int = 65536  # one half of the double-buffered input tile
    w_bank_bytes: int = 4096  # each of the 32 weight banks (one per PE row)
    out_tile_pix: int = 1024  # tile_rows * w_out per channel in the output tile
    max_tile_rows: int = 16


@dataclasses.dataclass(frozen=True)
class GridLimits:
    max_ch: int = 1024
    max_h: int = 256  # input plane (parity-banked in BRAM)
    max_w: int = 256
    max_h_out: int = 1024
    max_w_out: int = 1024
    bank_bytes: int = 16384  # each of the 4 parity banks of one half of the plane buffer
    # (a bank row holds ceil(w / 8) 32-bit words: 4 same-parity columns each)
    max_planes: int = 64  # planes sampled per pass


CONV_LIMITS = ConvLimits()
GRID_LIMITS = GridLimits()

GRID_FRAC_BITS = 6
GRID_ONE = 1 << GRID_FRAC_BITS
BIAS_LIMIT = 1 << 30
S_MIN, S_MAX = 1, 62
RES_GUARD_BITS = 8
M_MAX = (1 << 31) - 1


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def conv_out_size(n: int, k: int, stride: int, upsample: bool) -> int:
    """Output height/width for input size n (before upsample)."""
    v = 2 * n if upsample else n
    return (v + 2 * (k // 2) - k) // stride + 1


def padded_width(w: int) -> int:
    """Bytes one input row takes in the conv engine's input buffer: whole 64-bit words."""
    return 8 * _ceil_div(w, 8)


def conv_tile_input_rows(tile_rows: int, k: int, stride: int, upsample: bool, h: int) -> int:
    """Upper bound of the real input rows one tile of `tile_rows` output rows reads."""
    span = (tile_rows - 1) * stride + k  # virtual rows
    rows = span // 2 + 1 if upsample else span
    return min(rows, h)


def check_conv(
    cin: int,
    cout: int,
    h: int,
    w: int,
    *,
    k: int,
    stride: int,
    depthwise: bool,
    upsample: bool,
    relu: bool = False,
    residual: bool = False,
    tile_rows: int = 0,
    limits: ConvLimits = CONV_LIMITS,
) -> int:
    """Check a conv configuration against the engine; return the tile rows it will use.

    tile_rows = 0 picks the largest that fits. Raises UnsupportedConfigError with the
    engine's status otherwise. The order of the checks is the C engine's (same status).
    """
    for flag in (depthwise, upsample, relu, residual):
        if flag not in (0, 1, True, False):
            raise _fail(EngineStatus.BAD_FLAG)
    if k not in (1, 3):
        raise _fail(EngineStatus.BAD_KERNEL, f"k={k}")
    if stride not in (1, 2):
        raise _fail(EngineStatus.BAD_STRIDE, f"stride={stride}")
    if not (1 <= cin <= limits.max_ch and 1 <= cout <= limits.max_ch):
        raise _fail(EngineStatus.BAD_CHANNELS, f"cin={cin} cout={cout}, max {limits.max_ch}")
    if depthwise and cin != cout:
        raise _fail(EngineStatus.BAD_DEPTHWISE, f"cin={cin} cout={cout}")
    if upsample and stride != 1:
        raise _fail(EngineStatus.BAD_UPSAMPLE)
    wo = conv_out_size(w, k, stride, bool(upsample))
    if not (1 <= h <= limits.max_h and 1 <= w <= limits.max_w and wo <= limits.max_w_out):
        raise _fail(
            EngineStatus.BAD_SIZE,
            f"h={h} w={w} w_out={wo}; max h {limits.max_h}, w {limits.max_w}, "
            f"w_out {limits.max_w_out}",
        )
    kk = k * k
    ci_pad = _ceil_div(cin, limits.pe_ci) * limits.pe_ci
    if depthwise:
        w_bytes = ci_pad  # per tap bank
    else:
        w_bytes = _ceil_div(cout, limits.pe_co) * ci_pad * kk  # per PE-row bank
    if w_bytes > limits.w_bank_bytes:
        raise _fail(
            EngineStatus.WEIGHTS_TOO_BIG,
            f"{w_bytes} bytes a bank > {limits.w_bank_bytes}; split the output channels",
        )

    def fits(tr: int) -> bool:
        rows = conv_tile_input_rows(tr, k, stride, bool(upsample), h)
        return ci_pad * rows * padded_width(w) <= limits.in_buf_bytes and (
            tr * wo <= limits.out_tile_pix
        )

    if not fits(1):
        raise _fail(
            EngineStatus.TILE_TOO_BIG,
            f"cin={cin} w={w}: "
            f"{ci_pad * conv_tile_input_rows(1, k, stride, bool(upsample), h) * padded_width(w)}"
            f" bytes > {limits.in_buf_bytes}",
        )
    if tile_rows == 0:
        tr = 1
        while tr < limits.max_tile_rows and fits(tr + 1):
            tr += 1
        return tr
    if not (1 <= tile_rows <= limits.max_tile_rows) or not fits(tile_rows):
        raise _fail(EngineStatus.BAD_TILE_ROWS, f"tile_rows={tile_rows}")
    return tile_rows


def check_grid_sample(
    c: int, h: int, w: int, ho: int, wo: int, *, occlusion: bool, limits: GridLimits = GRID_LIMITS
) -> int:
    """Check a grid-sample configuration; return the number of planes sampled per pass."""
    if occlusion not in (0, 1, True, False):
        raise _fail(EngineStatus.BAD_FLAG)
    if not 1 <= c <= limits.max_ch:
        raise _fail(EngineStatus.BAD_CHANNELS, f"c={c}, max {limits.max_ch}")
    if not (
        1 <= h <= limits.max_h
        and 1 <= w <= limits.max_w
        and 1 <= ho <= limits.max_h_out
        and 1 <= wo <= limits.max_w_out
    ):
        raise _fail(
            EngineStatus.BAD_SIZE,
            f"in {h}x{w} (max {limits.max_h}x{limits.max_w}), out {ho}x{wo} "
            f"(max {limits.max_h_out}x{limits.max_w_out})",
        )
    per_plane = _ceil_div(h, 2) * padded_width(w) // 2  # bytes of one parity bank
    return min(c, limits.max_planes, limits.bank_bytes // per_plane)


# ---------------------------------------------------------------------------------------
# Integer arithmetic


def requantize(acc: np.ndarray, m: np.ndarray | int, s: np.ndarray | int) -> np.ndarray:
    """rq(acc, M, S) = (acc * M + 2**(S-1)) >> S in int64 (M, S broadcast against acc)."""
    acc = np.asarray(acc, dtype=np.int64)
    m = np.asarray(m, dtype=np.int64)
    s = np.asarray(s, dtype=np.int64)
    return (acc * m + np.left_shift(np.int64(1), s - 1)) >> s


def _check_requant(m: np.ndarray, s: np.ndarray, what: str) -> None:
    if m.size and (m.min() < 0 or m.max() > M_MAX or s.min() < S_MIN or s.max() > S_MAX):
        raise _fail(EngineStatus.BAD_REQUANT, what)


def _as_int(a, dtype, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype != dtype:
        # Values must already be in range: a silent wrap would hide a quantiser bug.
        info = np.iinfo(dtype)
        if a.size and (
            not np.issubdtype(a.dtype, np.integer) or a.min() < info.min or a.max() > info.max
        ):
            raise UnsupportedConfigError(f"{name} must hold {np.dtype(dtype).name} values")
        a = a.astype(dtype)
    if a.ndim != ndim:
        raise UnsupportedConfigError(f"{name} must have {ndim} dimensions, got shape {a.shape}")
    return a


def _per_channel(a, n: int, name: str) -> np.ndarray:
    a = np.asarray(a)
    if a.ndim == 0:
        a = np.full(n, a)
    a = _as_int(a, np.int32, name, 1)
    if a.shape != (n,):
        raise UnsupportedConfigError(f"{name} must have shape ({n},), got {a.shape}")
    return a


def conv2d_int8(
    x: np.ndarray,
    w: np.ndarray,
    b: np.ndarray,
    M: np.ndarray,
    S: np.ndarray,
    *,
    stride: int = 1,
    depthwise: bool = False,
    relu: bool = False,
    upsample: bool = False,
    residual: np.ndarray | None = None,
    res_M: int | None = None,
    res_S: int | None = None,
) -> np.ndarray:
    """The conv engine: int8 (cin, H, W) -> int8 (cout, Ho, Wo).

    w: int8 (cout, cin, k, k) dense or (c, 1, k, k) depthwise; b, M, S: int32 (cout,)
    (scalars broadcast); residual: int8 (cout, Ho, Wo) with scalar res_M, res_S.
    See the module docstring for the exact arithmetic.
    """
    x = _as_int(x, np.int8, "x", 3)
    w = _as_int(w, np.int8, "w", 4)
    cin, h, wd = x.shape
    cout, wcin, k, k2 = w.shape
    if k != k2:
        raise _fail(EngineStatus.BAD_KERNEL, f"non-square kernel {k}x{k2}")
    if (wcin != 1 if depthwise else wcin != cin) or (depthwise and cout != cin):
        raise UnsupportedConfigError(
            f"weights {w.shape} do not match input {x.shape} (depthwise={bool(depthwise)})"
        )
    check_conv(
        cin, cout, h, wd, k=k, stride=stride, depthwise=depthwise, upsample=upsample,
        relu=relu, residual=residual is not None,
    )  # fmt: skip
    b = _per_channel(b, cout, "b")
    M = _per_channel(M, cout, "M")
    S = _per_channel(S, cout, "S")
    _check_requant(M, S, "M/S")
    if np.abs(b.astype(np.int64)).max() > BIAS_LIMIT:
        raise _fail(EngineStatus.BAD_BIAS)
    ho = conv_out_size(h, k, stride, upsample)
    wo = conv_out_size(wd, k, stride, upsample)
    if residual is not None:
        residual = _as_int(residual, np.int8, "residual", 3)
        if residual.shape != (cout, ho, wo):
            raise UnsupportedConfigError(
                f"residual must have shape {(cout, ho, wo)}, got {residual.shape}"
            )
        if res_M is None or res_S is None:
            raise UnsupportedConfigError("a residual needs res_M and res_S")
        _check_requant(np.array([res_M]), np.array([res_S]), "res_M/res_S")
        if min(int(res_S), int(S.min())) <= RES_GUARD_BITS:
            raise _fail(
                EngineStatus.BAD_REQUANT,
                f"with a residual S and res_S must be >= {RES_GUARD_BITS + 1}",
            )
    if w.size and int(w.min()) < -127:  # checked last, as the engine loads the weights last
        raise _fail(EngineStatus.BAD_WEIGHT)

    xv = x.astype(np.float64)
    if upsample:
        xv = xv.repeat(2, axis=1).repeat(2, axis=2)
    p = k // 2
    xp = np.pad(xv, ((0, 0), (p, p), (p, p)))
    wf = w.astype(np.float64)
    # Every partial sum is an integer below 2**28 in magnitude: float64 (BLAS) is exact.
    acc = np.zeros((cout, ho * wo), dtype=np.float64)
    for ky in range(k):
        for kx in range(k):
            patch = xp[
                :,
                ky : ky + stride * (ho - 1) + 1 : stride,
                kx : kx + stride * (wo - 1) + 1 : stride,
            ]
            patch = patch.reshape(cin, ho * wo)
            if depthwise:
                acc += wf[:, 0, ky, kx][:, None] * patch
            else:
                acc += wf[:, :, ky, kx] @ patch
    acc = acc.astype(np.int64).reshape(cout, ho, wo) + b.astype(np.int64)[:, None, None]
    if acc.size and np.abs(acc).max() >= 1 << 31:  # cannot happen within the limits
        raise AssertionError("int32 accumulator overflow: the engine limits are wrong")
    if residual is None:
        v = requantize(acc, M[:, None, None], S[:, None, None])
    else:
        g = RES_GUARD_BITS
        t = requantize(acc, M[:, None, None], S[:, None, None] - g)
        t = t + requantize(residual, int(res_M), int(res_S) - g)
        v = (t + (1 << (g - 1))) >> g
    return np.clip(v, 0 if relu else -128, 127).astype(np.int8)


def grid_sample_int8(
    x: np.ndarray,
    grid: np.ndarray,
    M: int,
    S: int,
    *,
    occlusion: np.ndarray | None = None,
) -> np.ndarray:
    """The grid-sample engine: int8 (C, H, W) sampled at int16 (2, Ho, Wo) -> int8 (C, Ho, Wo).

    grid: pixel coordinates, channel 0 = x, 1 = y, GRID_FRAC_BITS fractional bits;
    occlusion: uint8 (Ho, Wo) multiplied in before the requantisation (scale folded in M).
    """
    x = _as_int(x, np.int8, "x", 3)
    grid = _as_int(grid, np.int16, "grid", 3)
    c, h, w = x.shape
    if grid.shape[0] != 2:
        raise UnsupportedConfigError(f"grid must have shape (2, Ho, Wo), got {grid.shape}")
    ho, wo = grid.shape[1:]
    check_grid_sample(c, h, w, ho, wo, occlusion=occlusion is not None)
    _check_requant(np.array([M]), np.array([S]), "M/S")
    if occlusion is not None:
        occlusion = _as_int(occlusion, np.uint8, "occlusion", 2)
        if occlusion.shape != (ho, wo):
            raise UnsupportedConfigError(f"occlusion must have shape {(ho, wo)}")
    gx = grid[0].astype(np.int64)
    gy = grid[1].astype(np.int64)
    x0, fx = gx >> GRID_FRAC_BITS, gx & (GRID_ONE - 1)
    y0, fy = gy >> GRID_FRAC_BITS, gy & (GRID_ONE - 1)
    acc = np.zeros((c, ho, wo), dtype=np.int64)
    xi = x.astype(np.int64)
    for dy, wy in ((0, GRID_ONE - fy), (1, fy)):
        for dx, wx in ((0, GRID_ONE - fx), (1, fx)):
            yy, xx = y0 + dy, x0 + dx
            inside = (yy >= 0) & (yy < h) & (xx >= 0) & (xx < w)
            v = xi[:, np.clip(yy, 0, h - 1), np.clip(xx, 0, w - 1)] * inside
            acc += (wy * wx) * v
    if occlusion is not None:
        acc = acc * occlusion.astype(np.int64)
    return np.clip(requantize(acc, int(M), int(S)), -128, 127).astype(np.int8)


# ---------------------------------------------------------------------------------------
# Float -> int helpers (quantisation of tensors, weights, multipliers, grids)


def round_half_up(v: np.ndarray) -> np.ndarray:
    return np.floor(np.asarray(v, dtype=np.float64) + 0.5)


def activation_scale(x: np.ndarray) -> float:
    """Per-tensor symmetric scale: max|x| / 127 (1.0 for an all-zero tensor)."""
    peak = float(np.max(np.abs(x))) if np.size(x) else 0.0
    return peak / 127.0 if peak > 0 else 1.0


def quantize(x: np.ndarray, scale: float) -> np.ndarray:
    """float -> int8: clamp(round_half_up(x / scale), -128, 127)."""
    return np.clip(round_half_up(np.asarray(x, np.float64) / scale), -128, 127).astype(np.int8)


def dequantize(q: np.ndarray, scale: float | np.ndarray) -> np.ndarray:
    return np.asarray(q, np.float32) * np.float32(scale)


def quantize_weights(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float (cout, ...) -> (int8 weights in [-127, 127], float64 per-channel scales)."""
    w = np.asarray(w, np.float64)
    peak = np.abs(w.reshape(w.shape[0], -1)).max(axis=1)
    scales = np.where(peak > 0, peak / 127.0, 1.0)
    shape = (-1,) + (1,) * (w.ndim - 1)
    q = np.clip(round_half_up(w / scales.reshape(shape)), -127, 127).astype(np.int8)
    return q, scales


def quantize_bias(b: np.ndarray, s_in: float, s_w: np.ndarray) -> np.ndarray:
    """float bias -> int32 at scale s_in * s_w[co], clamped to +-2**30."""
    q = round_half_up(np.asarray(b, np.float64) / (s_in * np.asarray(s_w, np.float64)))
    return np.clip(q, -BIAS_LIMIT, BIAS_LIMIT).astype(np.int32)


def quantize_multiplier(m: float | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Real multiplier(s) m >= 0 -> (M, S) int32 with M / 2**S ~ m.

    m = f * 2**e with f in [0.5, 1): M = round_half_up(f * 2**31) in [2**30, 2**31),
    S = 31 - e. If S would exceed 62 (m < 2**-31) S = 62 and M gets smaller; m = 0 gives
    M = 0, S = 1. m >= 2**30 cannot be represented and raises UnsupportedConfigError.
    """
    arr = np.atleast_1d(np.asarray(m, dtype=np.float64))
    ms = np.zeros(arr.shape, np.int64)
    ss = np.ones(arr.shape, np.int64)
    for i, v in enumerate(arr.flat):
        if not math.isfinite(v) or v < 0:
            raise UnsupportedConfigError(f"requant multiplier must be finite and >= 0, got {v}")
        if v == 0:
            continue
        f, e = math.frexp(v)
        mm, s = math.floor(f * 2**31 + 0.5), 31 - e
        if mm == 2**31:
            mm, s = 2**30, s - 1
        if s > S_MAX:
            mm, s = math.floor(v * 2.0**S_MAX + 0.5), S_MAX
        if s < S_MIN:
            raise UnsupportedConfigError(f"requant multiplier {v} is too large (>= 2**30)")
        ms.flat[i], ss.flat[i] = mm, s
    return ms.astype(np.int32).reshape(np.shape(m)), ss.astype(np.int32).reshape(np.shape(m))


@dataclasses.dataclass(frozen=True)
class QuantConv:
    """One conv layer's integer operands (what the engine's weight/param buffers hold)."""

    w: np.ndarray  # int8 (cout, cin, k, k) or (c, 1, k, k)
    b: np.ndarray  # int32 (cout,)
    M: np.ndarray  # int32 (cout,)
    S: np.ndarray  # int32 (cout,)
    res_M: int | None = None
    res_S: int | None = None
    w_scale: np.ndarray | None = None  # float64 (cout,)


def quantize_conv(
    w: np.ndarray, b: np.ndarray, s_in: float, s_out: float, s_res: float | None = None
) -> QuantConv:
    """Float conv weights/bias and activation scales -> the engine's integer operands."""
    wq, sw = quantize_weights(w)
    bq = quantize_bias(b, s_in, sw)
    M, S = quantize_multiplier(s_in * sw / s_out)
    res_M = res_S = None
    if s_res is not None:
        rm, rs = quantize_multiplier(s_res / s_out)
        res_M, res_S = int(rm), int(rs)
    return QuantConv(wq, bq, M, S, res_M, res_S, sw)


def grid_to_fixed(grid: np.ndarray, h: int, w: int) -> np.ndarray:
    """Normalised grid (2, Ho, Wo) in [-1, 1] (x first; align_corners=False) -> int16 Q9.6 px.

    p = ((g + 1) * size - 1) / 2, then round half up at 1/64 px, saturated to int16.
    """
    g = np.asarray(grid, np.float64)
    px = ((g[0] + 1.0) * w - 1.0) / 2.0
    py = ((g[1] + 1.0) * h - 1.0) / 2.0
    q = round_half_up(np.stack([px, py]) * GRID_ONE)
    q = np.nan_to_num(q, nan=-32768.0)  # NaN -> far outside -> zeros
    return np.clip(q, -32768, 32767).astype(np.int16)


def fixed_to_grid(q: np.ndarray, h: int, w: int) -> np.ndarray:
    """Inverse of grid_to_fixed (exact positions): int16 Q9.6 px -> normalised float64."""
    p = np.asarray(q, np.float64) / GRID_ONE
    return np.stack([(2 * p[0] + 1) / w - 1, (2 * p[1] + 1) / h - 1])


def resize_grid(h: int, w: int, ho: int, wo: int) -> np.ndarray:
    """The int16 grid that makes grid_sample_int8 a bilinear resize (h, w) -> (ho, wo).

    align_corners=False: output pixel j samples input p = (j + 0.5) * w / wo - 0.5, clamped
    to [0, w - 1] as torch.nn.functional.interpolate does (edge replication, no zeros).
    """
    px = np.clip((np.arange(wo) + 0.5) * (w / wo) - 0.5, 0, w - 1)
    py = np.clip((np.arange(ho) + 0.5) * (h / ho) - 0.5, 0, h - 1)
    gx, gy = np.meshgrid(px, py)
    q = round_half_up(np.stack([gx, gy]) * GRID_ONE)
    return np.clip(q, -32768, 32767).astype(np.int16)


OCC_SCALE = 1.0 / 255.0


def occlusion_to_fixed(occ: np.ndarray) -> np.ndarray:
    """[0, 1] float map -> uint8 with scale 1/255: clamp(round_half_up(o * 255), 0, 255)."""
    return np.clip(round_half_up(np.asarray(occ, np.float64) * 255.0), 0, 255).astype(np.uint8)


def grid_sample_multiplier(
    s_in: float, s_out: float, occlusion: bool, s_occ: float = OCC_SCALE
) -> tuple[int, int]:
    """(M, S) for grid_sample_int8: m = s_in * (s_occ if occlusion) / (4096 * s_out)."""
    m = s_in / (GRID_ONE * GRID_ONE) / s_out * (s_occ if occlusion else 1.0)
    M, S = quantize_multiplier(m)
    return int(M), int(S)
