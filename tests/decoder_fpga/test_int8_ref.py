"""The int8 reference (decoder_fpga.int8_ref): exact integer semantics, agreement with the
float torch ops within stated tolerances, the engine-limit checks, the golden vectors."""

import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from codec.errors import GraceError
from decoder_fpga import int8_ref as ref
from decoder_fpga import vectors

# --------------------------------------------------------------------------- arithmetic


def test_requantize_rounds_half_up():
    half = (2**30, 31)  # M / 2**S = 0.5
    acc = np.array([-5, -4, -3, -2, -1, 0, 1, 2, 3, 4, 5])
    # x / 2 rounded half toward +infinity
    np.testing.assert_array_equal(ref.requantize(acc, *half), [-2, -2, -1, -1, 0, 0, 1, 1, 2, 2, 3])
    # extremes of the int64 product do not overflow: |acc| < 2**31, M < 2**31, S <= 62
    big = ref.requantize(np.array([-(2**31) + 1, 2**31 - 1]), 2**31 - 1, 62)
    np.testing.assert_array_equal(big, [-1, 1])  # (2**31-1)**2 / 2**62 ~ 1
    assert ref.requantize(np.array([7]), 1, 1)[0] == 4  # 3.5 -> 4


@given(st.floats(min_value=1e-12, max_value=1e6, allow_nan=False, allow_infinity=False))
@settings(max_examples=200, deadline=None)
def test_quantize_multiplier_is_accurate(m):
    M, S = ref.quantize_multiplier(m)
    M, S = int(M), int(S)
    assert 0 <= M < 2**31 and 1 <= S <= 62
    if S < 62:
        assert 2**30 <= M  # normalised: 31 significant bits
        assert abs(M / 2**S - m) <= m * 2**-30
    else:  # very small multipliers lose bits but stay within half a unit of 2**-62
        assert abs(M / 2**S - m) <= 2**-63


def test_quantize_multiplier_edges():
    M, S = ref.quantize_multiplier(np.array([0.0, 0.5, 1.0, 0.999999999999]))
    np.testing.assert_array_equal(M, [0, 2**30, 2**30, 2**30])
    np.testing.assert_array_equal(S, [1, 31, 30, 30])  # the last one rounds up to 1.0
    for bad in (2.0**30, -1.0, float("nan"), float("inf")):
        with pytest.raises(ref.UnsupportedConfigError):
            ref.quantize_multiplier(bad)


def naive_conv(x, w, b, M, S, stride, depthwise, relu, upsample, residual, res_M, res_S):
    """Pure-Python loops: an independent statement of conv2d_int8."""
    cin, h, wd = x.shape
    cout, _, k, _ = w.shape
    hv, wv = (2 * h, 2 * wd) if upsample else (h, wd)
    p = k // 2
    ho, wo = (hv + 2 * p - k) // stride + 1, (wv + 2 * p - k) // stride + 1
    y = np.zeros((cout, ho, wo), np.int8)
    for co in range(cout):
        for oy in range(ho):
            for ox in range(wo):
                acc = int(b[co])
                for ci in [co] if depthwise else range(cin):
                    for ky in range(k):
                        for kx in range(k):
                            vy, vx = oy * stride + ky - p, ox * stride + kx - p
                            if 0 <= vy < hv and 0 <= vx < wv:
                                ry, rx = (vy // 2, vx // 2) if upsample else (vy, vx)
                                wv_ = w[co, 0 if depthwise else ci, ky, kx]
                                acc += int(wv_) * int(x[ci, ry, rx])
                m, s = int(M[co]), int(S[co])
                if residual is None:
                    v = (acc * m + (1 << (s - 1))) >> s
                else:  # both terms with 8 guard bits, then one rounding
                    t = (acc * m + (1 << (s - 9))) >> (s - 8)
                    t += (int(residual[co, oy, ox]) * res_M + (1 << (res_S - 9))) >> (res_S - 8)
                    v = (t + 128) >> 8
                y[co, oy, ox] = min(127, max(0 if relu else -128, v))
    return y


@pytest.mark.parametrize("seed", range(24))
def test_conv_matches_naive_loops(seed):
    rng = np.random.default_rng(seed)
    k = int(rng.choice([1, 3]))
    depthwise = bool(rng.integers(2))
    upsample = bool(rng.integers(3) == 0)
    stride = 1 if upsample else int(rng.integers(1, 3))
    cin = int(rng.integers(1, 5))
    cout = cin if depthwise else int(rng.integers(1, 5))
    h, w = (int(v) for v in rng.integers(1, 6, 2))
    extreme = seed % 4 == 0
    x = (
        rng.choice(np.array([-128, 127], np.int8), (cin, h, w))
        if extreme
        else rng.integers(-128, 128, (cin, h, w), dtype=np.int8)
    )
    wt = rng.integers(-127, 128, (cout, 1 if depthwise else cin, k, k), dtype=np.int8)
    b = (
        rng.integers(-(2**30), 2**30, cout, dtype=np.int32)
        if extreme
        else rng.integers(-5000, 5000, cout, dtype=np.int32)
    )
    M = rng.integers(0, 2**31 - 1, cout, dtype=np.int32)
    S = (
        rng.integers(9, 63, cout, dtype=np.int32)
        if extreme
        else rng.integers(30, 40, cout, dtype=np.int32)
    )
    if extreme and not seed % 8:
        S[0] = 1  # the smallest shift (no residual then)
    ho, wo = ref.conv_out_size(h, k, stride, upsample), ref.conv_out_size(w, k, stride, upsample)
    residual, res_M, res_S = None, None, None
    if rng.integers(2) and S.min() > 8:
        residual = rng.integers(-128, 128, (cout, ho, wo), dtype=np.int8)
        res_M, res_S = int(rng.integers(0, 2**31 - 1)), int(rng.integers(28, 34))
    relu = bool(rng.integers(2))
    got = ref.conv2d_int8(
        x, wt, b, M, S, stride=stride, depthwise=depthwise, relu=relu, upsample=upsample,
        residual=residual, res_M=res_M, res_S=res_S,
    )  # fmt: skip
    want = naive_conv(x, wt, b, M, S, stride, depthwise, relu, upsample, residual, res_M, res_S)
    np.testing.assert_array_equal(got, want)


def naive_grid_sample(x, grid, M, S, occ):
    c, h, w = x.shape
    _, ho, wo = grid.shape
    y = np.zeros((c, ho, wo), np.int8)
    for ch in range(c):
        for i in range(ho):
            for j in range(wo):
                gx, gy = int(grid[0, i, j]), int(grid[1, i, j])
                x0, fx, y0, fy = (
                    gx // 64,
                    gx % 64,
                    gy // 64,
                    gy % 64,
                )  # floor, non-negative fraction
                acc = 0
                for yy, wy in ((y0, 64 - fy), (y0 + 1, fy)):
                    for xx, wx in ((x0, 64 - fx), (x0 + 1, fx)):
                        if 0 <= yy < h and 0 <= xx < w:
                            acc += wy * wx * int(x[ch, yy, xx])
                if occ is not None:
                    acc *= int(occ[i, j])
                y[ch, i, j] = min(127, max(-128, (acc * M + (1 << (S - 1))) >> S))
    return y


@pytest.mark.parametrize("seed", range(8))
def test_grid_sample_matches_naive_loops(seed):
    rng = np.random.default_rng(100 + seed)
    c, h, w, ho, wo = (int(v) for v in rng.integers(1, 7, 5))
    x = rng.integers(-128, 128, (c, h, w), dtype=np.int8)
    grid = np.stack([vectors.grid_coords(rng, (ho, wo), w), vectors.grid_coords(rng, (ho, wo), h)])
    occ = rng.integers(0, 256, (ho, wo), dtype=np.uint8) if seed % 2 else None
    M, S = (
        int(rng.integers(2**30, 2**31 - 1)),
        int(rng.integers(36, 44) if occ is not None else rng.integers(28, 36)),
    )
    np.testing.assert_array_equal(
        ref.grid_sample_int8(x, grid, M, S, occlusion=occ), naive_grid_sample(x, grid, M, S, occ)
    )


def test_grid_sample_borders_and_far_coordinates():
    x = np.full((1, 4, 5), 100, np.int8)
    one = ref.GRID_ONE
    M, S = ref.grid_sample_multiplier(1.0, 1.0, occlusion=False)  # identity scale
    xs = np.array(
        [-one - 1, -one, -one // 2, 0, 4 * one, 4 * one + one // 2, 5 * one, -32768, 32767]
    )
    grid = np.stack([xs, np.full_like(xs, one)])[:, None, :].astype(np.int16)
    y = ref.grid_sample_int8(x, grid, M, S)[0, 0]
    # p <= -1 or >= W reads only zero padding; half a pixel outside is half the value;
    # exactly on the first/last pixel is the pixel.
    np.testing.assert_array_equal(y, [0, 0, 50, 100, 100, 50, 0, 0, 0])


# ------------------------------------------------------------------- against float torch


def _torch():
    return pytest.importorskip("torch")


@pytest.mark.parametrize(
    "k,stride,depthwise,upsample,residual,relu",
    [
        (3, 1, False, False, False, True),
        (3, 2, False, False, False, False),
        (1, 1, False, False, True, True),
        (1, 2, False, False, False, False),
        (3, 1, True, False, True, True),
        (3, 2, True, False, False, False),
        (3, 1, False, True, True, True),
        (3, 1, True, True, False, False),
    ],
)
def test_conv_within_half_a_step_of_torch_on_the_same_operands(
    k, stride, depthwise, upsample, residual, relu
):
    """On dequantised operands, torch's float conv and the int8 engine differ only by the
    final rounding: |error| <= 0.5 output step, + 2**-8 with a residual (guard bits),
    + 1e-3 for M's 2**-30 relative error."""
    torch = _torch()
    F = torch.nn.functional
    rng = np.random.default_rng(k * 10 + stride + 100 * depthwise + 1000 * upsample)
    cin, cout, h, w = 12, 12 if depthwise else 20, 9, 11
    xf = rng.normal(0, 1, (cin, h, w))
    s_in = ref.activation_scale(xf)
    wf = rng.normal(0, 0.3, (cout, 1 if depthwise else cin, k, k))
    bf = rng.normal(0, 0.2, cout)
    s_out, s_res = 0.04, 0.03
    q = ref.quantize_conv(wf, bf, s_in, s_out, s_res if residual else None)
    xq = ref.quantize(xf, s_in)
    ho, wo = ref.conv_out_size(h, k, stride, upsample), ref.conv_out_size(w, k, stride, upsample)
    rq = ref.quantize(rng.normal(0, 1.5, (cout, ho, wo)), s_res) if residual else None
    y = ref.conv2d_int8(
        xq, q.w, q.b, q.M, q.S, stride=stride, depthwise=depthwise, relu=relu, upsample=upsample,
        residual=rq, res_M=q.res_M, res_S=q.res_S,
    )  # fmt: skip
    # the same operands in float
    xt = torch.tensor(ref.dequantize(xq, s_in)[None], dtype=torch.float64)
    if upsample:
        xt = F.interpolate(xt, scale_factor=2, mode="nearest")
    wt = torch.tensor(q.w.astype(np.float64) * q.w_scale[:, None, None, None])
    bt = torch.tensor(q.b.astype(np.float64) * s_in * q.w_scale)
    ft = F.conv2d(xt, wt, bt, stride=stride, padding=k // 2, groups=cin if depthwise else 1)[
        0
    ].numpy()
    if residual:
        ft = ft + rq.astype(np.float64) * s_res
    if relu:
        ft = np.maximum(ft, 0)
    ft = np.clip(ft, -128 * s_out, 127 * s_out)
    err = np.abs(y.astype(np.float64) * s_out - ft)
    bound = 0.5 + (2**-8 if residual else 0) + 1e-3
    assert err.max() <= bound * s_out, err.max() / s_out
    assert (y != 0).mean() > 0.3  # not a degenerate all-zero comparison


def test_conv_float_pipeline_within_stated_tolerance():
    """Whole float -> int8 -> float path against torch's float conv on float data:
    max error <= 3 output steps, mean <= 0.5 step (input, weight and output rounding)."""
    torch = _torch()
    rng = np.random.default_rng(5)
    cin, cout = 16, 24
    xf = np.maximum(rng.normal(0, 1, (cin, 12, 13)), 0)  # post-ReLU activations
    wf = rng.normal(0, 1 / np.sqrt(cin * 9), (cout, cin, 3, 3))
    bf = rng.normal(0, 0.1, cout)
    ft = torch.nn.functional.conv2d(
        torch.tensor(xf[None]), torch.tensor(wf), torch.tensor(bf), padding=1
    )[0].numpy()
    s_in, s_out = ref.activation_scale(xf), ref.activation_scale(ft)
    q = ref.quantize_conv(wf, bf, s_in, s_out)
    y = ref.conv2d_int8(ref.quantize(xf, s_in), q.w, q.b, q.M, q.S)
    err = np.abs(ref.dequantize(y, s_out) - ft) / s_out
    assert err.max() <= 3.0 and err.mean() <= 0.5, (err.max(), err.mean())


@pytest.mark.parametrize("occlusion", [False, True])
def test_grid_sample_within_half_a_step_of_torch(occlusion):
    """At the Q9.6 positions, torch's float grid_sample (bilinear, zeros, align_corners=False)
    and the engine differ by the final rounding only: <= 0.5 step + 1e-3."""
    torch = _torch()
    rng = np.random.default_rng(7 + occlusion)
    c, h, w, ho, wo = 6, 9, 13, 10, 12
    xf = rng.normal(0, 1, (c, h, w))
    s_in = ref.activation_scale(xf)
    xq = ref.quantize(xf, s_in)
    gq = np.stack([vectors.grid_coords(rng, (ho, wo), w), vectors.grid_coords(rng, (ho, wo), h)])
    gq[:, : ho // 2] = rng.integers(-64, 14 * 64, (2, ho // 2, wo))  # more samples inside
    occ = rng.integers(0, 256, (ho, wo), dtype=np.uint8) if occlusion else None
    s_out = 0.5 * s_in
    M, S = ref.grid_sample_multiplier(s_in, s_out, occlusion)
    y = ref.grid_sample_int8(xq, gq, M, S, occlusion=occ)
    g = torch.tensor(ref.fixed_to_grid(gq, h, w)).permute(1, 2, 0)[None]
    ft = torch.nn.functional.grid_sample(
        torch.tensor(ref.dequantize(xq, s_in)[None], dtype=torch.float64), g,
        mode="bilinear", padding_mode="zeros", align_corners=False,
    )[0].numpy()  # fmt: skip
    if occlusion:
        ft = ft * occ / 255.0
    ft = np.clip(ft, -128 * s_out, 127 * s_out)
    err = np.abs(y * s_out - ft)
    assert err.max() <= 0.5 * s_out + 1e-3 * s_out, err.max() / s_out
    assert (y != 0).mean() > 0.3


def test_resize_grid_is_torch_bilinear_resize():
    torch = _torch()
    rng = np.random.default_rng(3)
    xf = rng.normal(0, 1, (3, 8, 8))
    s = ref.activation_scale(xf)
    xq = ref.quantize(xf, s)
    for size in (2, 4, 16, 32):  # x1/4, x1/2, x2, x4: sample positions exact in Q9.6
        M, S = ref.grid_sample_multiplier(s, s, occlusion=False)
        y = ref.grid_sample_int8(xq, ref.resize_grid(8, 8, size, size), M, S)
        ft = torch.nn.functional.interpolate(
            torch.tensor(ref.dequantize(xq, s)[None], dtype=torch.float64), size=(size, size),
            mode="bilinear", align_corners=False,
        )[0].numpy()  # fmt: skip
        # ties round up: exactly 0.5 step (+ torch's float error)
        assert np.abs(y * s - ft).max() <= (0.5 + 1e-4) * s, size


def test_grid_to_fixed_identity_and_saturation():
    _torch()
    from codec.models.grace_s import identity_grid  # needs torch

    g = identity_grid(1, 8)[0].numpy()
    q = ref.grid_to_fixed(g, 8, 8)
    np.testing.assert_array_equal(q[0, 0] // ref.GRID_ONE, np.arange(8))  # pixel centres
    np.testing.assert_array_equal(q[0] % ref.GRID_ONE, 0)
    far = ref.grid_to_fixed(np.array([[[-1e6, 1e6, np.nan]], [[0.0, 0.0, 0.0]]]), 8, 8)
    np.testing.assert_array_equal(far[0, 0], [-32768, 32767, -32768])


def test_occlusion_to_fixed():
    np.testing.assert_array_equal(
        ref.occlusion_to_fixed(np.array([0.0, 1.0, 0.5, 1 / 255, -0.2, 1.3])),
        [0, 255, 128, 1, 0, 255],
    )


# ---------------------------------------------------------------------- limits and errors


def test_error_type():
    assert issubclass(ref.UnsupportedConfigError, GraceError)
    assert issubclass(ref.UnsupportedConfigError, ValueError)


OK = dict(cin=8, cout=8, h=8, w=8, k=3, stride=1, depthwise=False, upsample=False)


@pytest.mark.parametrize(
    "change,status",
    [
        (dict(k=5), "BAD_KERNEL"),
        (dict(stride=3), "BAD_STRIDE"),
        (dict(cin=2000), "BAD_CHANNELS"),
        (dict(cout=16, depthwise=True), "BAD_DEPTHWISE"),
        (dict(stride=2, upsample=True), "BAD_UPSAMPLE"),
        (dict(w=300), "BAD_SIZE"),
        (dict(w=200, upsample=True), "BAD_SIZE"),
        (dict(cin=256, cout=256), "WEIGHTS_TOO_BIG"),
        (dict(cin=96, cout=16, w=256), "TILE_TOO_BIG"),
        (dict(tile_rows=17), "BAD_TILE_ROWS"),
    ],
)
def test_check_conv_rejects(change, status):
    kw = {**OK, **change}
    with pytest.raises(ref.UnsupportedConfigError, match=status):
        ref.check_conv(kw.pop("cin"), kw.pop("cout"), kw.pop("h"), kw.pop("w"), **kw)


def test_check_conv_picks_the_largest_tile():
    # 96 channels at 64 px, 3x3: 10 input rows (96 * 10 * 64 = 61440 bytes) -> 8 output rows
    assert ref.check_conv(96, 96, 64, 64, k=3, stride=1, depthwise=False, upsample=False) == 8
    # 256 px wide: the output tile (1024 px a lane) allows 4 rows
    assert ref.check_conv(8, 8, 64, 256, k=3, stride=1, depthwise=False, upsample=False) == 4


def test_conv2d_int8_rejects_bad_operands():
    x = np.zeros((4, 5, 5), np.int8)
    w = np.zeros((4, 4, 3, 3), np.int8)
    b, M, S = np.zeros(4, np.int32), np.full(4, 2**30, np.int32), np.full(4, 31, np.int32)
    with pytest.raises(ref.UnsupportedConfigError, match="BAD_REQUANT"):
        ref.conv2d_int8(x, w, b, M, np.full(4, 63))
    with pytest.raises(ref.UnsupportedConfigError, match="BAD_BIAS"):
        ref.conv2d_int8(x, w, np.full(4, 2**30 + 1), M, S)
    with pytest.raises(ref.UnsupportedConfigError, match="int8"):
        ref.conv2d_int8(x.astype(np.int16) + 200, w, b, M, S)
    with pytest.raises(ref.UnsupportedConfigError, match="do not match"):
        ref.conv2d_int8(x, np.zeros((4, 3, 3, 3), np.int8), b, M, S)
    with pytest.raises(ref.UnsupportedConfigError, match="residual"):
        ref.conv2d_int8(x, w, b, M, S, residual=np.zeros((4, 4, 4), np.int8), res_M=1, res_S=1)


# ----------------------------------------------------------------------- golden vectors


def test_golden_vectors_are_current():
    """hw/vectors holds what int8_ref computes now; GENERATE_EXPECTED=1 rewrites them."""
    if os.environ.get("GENERATE_EXPECTED"):
        vectors.write()
    assert vectors.differences() == [], "run: GENERATE_EXPECTED=1 pytest tests/decoder_fpga"


def test_golden_vectors_manifest_and_contents():
    names = {}
    for line in (vectors.HW_VECTORS / "MANIFEST.sha256").read_text().splitlines():
        digest, name = line.split()
        names[name] = digest
    assert {p.name for p in vectors.HW_VECTORS.glob("*.grv")} == set(names)
    assert sum((vectors.HW_VECTORS / n).stat().st_size for n in names) < 32_000  # a few KB
    import hashlib

    for name, digest in names.items():
        data = (vectors.HW_VECTORS / name).read_bytes()
        assert hashlib.sha256(data).hexdigest() == digest
        kind, args, kwargs, want = vectors.case_call(vectors.decode(data))
        fn = ref.conv2d_int8 if kind == "conv" else ref.grid_sample_int8
        np.testing.assert_array_equal(fn(*args, **kwargs), want)
