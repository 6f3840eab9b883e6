"""The hw/ engines compiled with g++ (decoder_fpga.csim) against the int8 reference, bit for
bit: golden vectors, random shapes, borders, saturation, tiling; rejected configurations."""

import dataclasses
import shutil

import numpy as np
import pytest

from codec.errors import BackendUnavailableError
from decoder_fpga import int8_ref as ref
from decoder_fpga import vectors

if shutil.which("g++") is None or shutil.which("make") is None:
    pytest.skip("the csim backend needs g++ and make", allow_module_level=True)

from decoder_fpga import csim  # noqa: E402


@pytest.fixture(scope="module", autouse=True)
def library():
    return csim.load_library()


def test_limits_mirror_the_reference():
    want = [getattr(ref.CONV_LIMITS, f.name) for f in dataclasses.fields(ref.ConvLimits)]
    want += [getattr(ref.GRID_LIMITS, f.name) for f in dataclasses.fields(ref.GridLimits)]
    want += [ref.GRID_FRAC_BITS, ref.BIAS_LIMIT, ref.S_MIN, ref.S_MAX]
    assert csim.limits() == want


@pytest.mark.parametrize("name", sorted(p.name for p in vectors.HW_VECTORS.glob("*.grv")))
def test_golden_vectors(name):
    kind, args, kwargs, want = vectors.case_call(
        vectors.decode((vectors.HW_VECTORS / name).read_bytes())
    )
    fn = csim.conv2d if kind == "conv" else csim.grid_sample
    np.testing.assert_array_equal(fn(*args, **kwargs), want)


def random_conv(rng, *, cin_max=20, size_max=11, extreme=False):
    k = int(rng.choice([1, 3]))
    depthwise = bool(rng.integers(3) == 0)
    upsample = bool(rng.integers(4) == 0)
    stride = 1 if upsample else int(rng.integers(1, 3))
    cin = int(rng.integers(1, cin_max + 1))
    cout = cin if depthwise else int(rng.integers(1, 40))
    h, w = (int(v) for v in rng.integers(1, size_max + 1, 2))
    if extreme:
        x = rng.choice(np.array([-128, 127], np.int8), (cin, h, w))
        wt = rng.choice(np.array([-127, 127], np.int8), (cout, 1 if depthwise else cin, k, k))
        b = rng.choice(np.array([-(2**30), 0, 2**30], np.int32), cout)
        M = rng.choice(np.array([0, 2**30, 2**31 - 1], np.int32), cout)
        S = rng.choice(np.array([9, 20, 31, 62], np.int32), cout)
    else:
        x = rng.integers(-128, 128, (cin, h, w), dtype=np.int8)
        wt = rng.integers(-127, 128, (cout, 1 if depthwise else cin, k, k), dtype=np.int8)
        b = rng.integers(-30000, 30000, cout, dtype=np.int32)
        M, S = vectors._multipliers(rng, (1 if depthwise else cin) * k * k, cout)
    ho, wo = ref.conv_out_size(h, k, stride, upsample), ref.conv_out_size(w, k, stride, upsample)
    kw = dict(stride=stride, depthwise=depthwise, relu=bool(rng.integers(2)), upsample=upsample)
    if rng.integers(2):
        kw.update(
            residual=rng.integers(-128, 128, (cout, ho, wo), dtype=np.int8),
            res_M=int(rng.integers(2**30, 2**31)),
            res_S=int(rng.integers(9, 40)),
        )
    return (x, wt, b, M, S), kw


@pytest.mark.parametrize("seed", range(40))
def test_conv_random_shapes(seed):
    rng = np.random.default_rng(seed)
    args, kw = random_conv(rng, extreme=seed % 5 == 0)
    want = ref.conv2d_int8(*args, **kw)
    np.testing.assert_array_equal(csim.conv2d(*args, **kw), want)


def test_conv_every_tile_size_gives_the_same_result():
    rng = np.random.default_rng(99)
    for _ in range(4):
        args, kw = random_conv(rng, size_max=13)
        want = ref.conv2d_int8(*args, **kw)
        cin, h, w = args[0].shape
        auto = ref.check_conv(
            cin, args[1].shape[0], h, w, k=args[1].shape[2], stride=kw["stride"],
            depthwise=kw["depthwise"], upsample=kw["upsample"],
        )  # fmt: skip
        for tr in range(1, auto + 1):
            np.testing.assert_array_equal(csim.conv2d(*args, **kw, tile_rows=tr), want)


@pytest.mark.parametrize(
    "cin,cout,h,w,k,stride,depthwise,upsample",
    [
        (40, 36, 9, 256, 3, 1, False, False),  # several row tiles and output groups, full width
        (24, 24, 7, 128, 3, 1, True, True),  # depthwise upsample to the full output width
        (33, 17, 11, 255, 3, 2, False, False),  # odd width, stride 2
        (96, 96, 13, 64, 1, 1, False, False),  # a decoder pointwise conv
        (24, 3, 6, 256, 3, 1, False, False),  # grace-s's `out`: 8-pixel groups, 3 lanes
        (9, 4, 7, 61, 3, 1, False, False),  # 8-pixel groups, 4 lanes, odd width
        (5, 1, 6, 37, 3, 1, False, True),  # 8-pixel groups on an upsampled input
        (17, 4, 9, 77, 3, 2, False, False),  # cout <= 4 at stride 2: 4-pixel groups
        (8, 2, 5, 256, 1, 1, False, False),  # 8-pixel groups, 1x1, epilogue slots
        (48, 48, 12, 256, 3, 1, True, False),  # depthwise 48: two balanced groups of 24
        (40, 40, 10, 64, 3, 2, True, False),  # depthwise 40: groups of 24 + 16
        (24, 48, 9, 128, 1, 1, False, False),  # dense 48: two balanced groups of 24
        (16, 72, 5, 40, 3, 1, False, False),  # dense 72: three groups of 24
        (8, 96, 9, 64, 1, 1, False, False),  # 1 MAC slot a pixel: epilogue-bound slots
        (16, 24, 5, 250, 1, 1, False, False),  # 2 MAC slots, 3 epilogue slots, odd width
        (32, 12, 7, 99, 3, 2, False, False),  # 2-pixel groups, stride 2, odd width
        (48, 48, 9, 120, 3, 1, True, True),  # upsampled depthwise, 6 lane groups
    ],
)
def test_conv_wide_layers(cin, cout, h, w, k, stride, depthwise, upsample):
    rng = np.random.default_rng(cin * cout + h)
    x = rng.integers(-128, 128, (cin, h, w), dtype=np.int8)
    wt = rng.integers(-127, 128, (cout, 1 if depthwise else cin, k, k), dtype=np.int8)
    b = rng.integers(-9999, 9999, cout, dtype=np.int32)
    M, S = vectors._multipliers(rng, (1 if depthwise else cin) * k * k, cout)
    ho, wo = ref.conv_out_size(h, k, stride, upsample), ref.conv_out_size(w, k, stride, upsample)
    res = rng.integers(-128, 128, (cout, ho, wo), dtype=np.int8)
    kw = dict(
        stride=stride,
        depthwise=depthwise,
        relu=True,
        upsample=upsample,
        residual=res,
        res_M=2**30,
        res_S=31,
    )
    np.testing.assert_array_equal(
        csim.conv2d(x, wt, b, M, S, **kw), ref.conv2d_int8(x, wt, b, M, S, **kw)
    )


def random_grid(rng, c, h, w, ho, wo, occlusion, extreme=False):
    x = (
        rng.choice(np.array([-128, 127], np.int8), (c, h, w))
        if extreme
        else rng.integers(-128, 128, (c, h, w), dtype=np.int8)
    )
    grid = np.stack([vectors.grid_coords(rng, (ho, wo), w), vectors.grid_coords(rng, (ho, wo), h)])
    inside = rng.random((ho, wo)) < 0.5
    grid[0][inside] = rng.integers(-64, w * 64 + 1, inside.sum())
    grid[1][inside] = rng.integers(-64, h * 64 + 1, inside.sum())
    occ = rng.integers(0, 256, (ho, wo), dtype=np.uint8) if occlusion else None
    M, S = ref.grid_sample_multiplier(1.0, 0.5 if extreme else 1.0, occlusion)
    return (x, grid, M, S), {"occlusion": occ}


@pytest.mark.parametrize("seed", range(24))
def test_grid_sample_random_shapes(seed):
    rng = np.random.default_rng(1000 + seed)
    c, h, w, ho, wo = (int(v) for v in rng.integers(1, 15, 5))
    args, kw = random_grid(rng, c, h, w, ho, wo, occlusion=bool(seed % 2), extreme=seed % 6 == 0)
    np.testing.assert_array_equal(csim.grid_sample(*args, **kw), ref.grid_sample_int8(*args, **kw))


@pytest.mark.parametrize("c,h,w", [(2, 256, 256), (40, 64, 64), (3, 255, 17), (70, 1, 1)])
def test_grid_sample_plane_passes(c, h, w):
    """A full 256x256 plane a pass; 16 planes of 64x64 a pass (3 passes); odd sizes."""
    rng = np.random.default_rng(c + h + w)
    args, kw = random_grid(rng, c, h, w, 9, 14, occlusion=True)
    np.testing.assert_array_equal(csim.grid_sample(*args, **kw), ref.grid_sample_int8(*args, **kw))


@pytest.mark.parametrize(
    "c,h,w,ho,wo,occlusion",
    [(3, 256, 256, 40, 256, True), (3, 200, 200, 37, 100, False), (40, 64, 64, 70, 60, True)],
)
def test_grid_sample_passes_of_several_blocks(c, h, w, ho, wo, occlusion):
    """Several passes of several grid blocks (the last one partial): block 0 of every pass
    after the first is loaded by the pass before, the items of a block one pipeline."""
    rng = np.random.default_rng(c * h + ho)
    args, kw = random_grid(rng, c, h, w, ho, wo, occlusion=occlusion)
    np.testing.assert_array_equal(csim.grid_sample(*args, **kw), ref.grid_sample_int8(*args, **kw))


def test_grid_sample_resize():
    rng = np.random.default_rng(4)
    x = rng.integers(-128, 128, (3, 16, 16), dtype=np.int8)
    M, S = ref.grid_sample_multiplier(1.0, 1.0, occlusion=False)
    for size in (4, 8, 32, 64):
        g = ref.resize_grid(16, 16, size, size)
        np.testing.assert_array_equal(
            csim.grid_sample(x, g, M, S), ref.grid_sample_int8(x, g, M, S)
        )


# --------------------------------------------------------------------------- rejections

CONV_OK = dict(cin=8, cout=8, h=8, w=8, k=3, stride=1, depthwise=0, relu=0, upsample=0,
               residual=0, res_m=0, res_s=0, tile_rows=0)  # fmt: skip


@pytest.mark.parametrize(
    "change,status",
    [
        (dict(k=5), "BAD_KERNEL"),
        (dict(stride=3), "BAD_STRIDE"),
        (dict(cout=1025), "BAD_CHANNELS"),
        (dict(cout=16, depthwise=1), "BAD_DEPTHWISE"),
        (dict(stride=2, upsample=1), "BAD_UPSAMPLE"),
        (dict(w=257), "BAD_SIZE"),
        (dict(w=129, upsample=1), "BAD_SIZE"),
        (dict(cin=256, cout=256), "WEIGHTS_TOO_BIG"),
        (dict(cin=96, w=256), "TILE_TOO_BIG"),
        (dict(tile_rows=17), "BAD_TILE_ROWS"),
        (dict(cin=64, h=64, w=256, tile_rows=4), "BAD_TILE_ROWS"),
    ],
)
def test_conv_rejects_configurations(change, status):
    c = {**CONV_OK, **change}
    cin, cout, h, w, k = c["cin"], c["cout"], c["h"], c["w"], c["k"]
    x = np.zeros((cin, h, w), np.int8)
    wt = np.zeros((cout, 1 if c["depthwise"] else cin, k, k), np.int8)
    with pytest.raises(ref.UnsupportedConfigError, match=f"conv engine rejected.*{status}"):
        csim.conv2d(x, wt, 0, 2**30, 31, stride=c["stride"], depthwise=bool(c["depthwise"]),
                    upsample=bool(c["upsample"]), tile_rows=c["tile_rows"])  # fmt: skip
    with pytest.raises(ref.UnsupportedConfigError, match=status):  # the reference agrees
        ref.check_conv(cin, cout, h, w, k=k, stride=c["stride"], depthwise=bool(c["depthwise"]),
                       upsample=bool(c["upsample"]), tile_rows=c["tile_rows"])  # fmt: skip


def test_conv_rejects_parameters():
    """Per-channel M, S and the bias are checked by the engine itself (csim passes them on)."""
    x = np.zeros((4, 5, 5), np.int8)
    w = np.zeros((4, 4, 3, 3), np.int8)
    M, S = np.full(4, 2**30, np.int32), np.full(4, 31, np.int32)
    res = dict(residual=np.zeros((4, 5, 5), np.int8), res_M=2**30, res_S=31)
    cases = [
        (dict(M=M, S=np.array([31, 31, 63, 31])), "BAD_REQUANT"),
        (dict(M=M, S=np.array([31, 0, 31, 31])), "BAD_REQUANT"),
        (dict(M=np.array([2**30, -1, 2**30, 2**30]), S=S), "BAD_REQUANT"),
        (dict(M=M, S=np.array([31, 8, 31, 31]), **res), "BAD_REQUANT"),  # guard bits
        (dict(M=M, S=S, residual=res["residual"], res_M=2**30, res_S=8), "BAD_REQUANT"),
        (dict(M=M, S=S, b=np.array([0, 0, 2**30 + 1, 0])), "BAD_BIAS"),
    ]
    for kw, status in cases:
        kw = {"b": np.zeros(4, np.int32), **kw}
        args = (x, w, kw.pop("b"), kw.pop("M"), kw.pop("S"))
        with pytest.raises(ref.UnsupportedConfigError, match=status):
            csim.conv2d(*args, **kw)
        with pytest.raises(ref.UnsupportedConfigError, match=status):
            ref.conv2d_int8(*args, **kw)
    # S = 8 is fine without a residual
    csim.conv2d(x, w, np.zeros(4, np.int32), M, np.full(4, 8, np.int32))


@pytest.mark.parametrize("depthwise", [False, True])
def test_conv_rejects_weight_minus_128(depthwise):
    """The packed DSP multipliers take weights in [-127, 127]: -128 is BAD_WEIGHT."""
    x = np.zeros((8, 5, 5), np.int8)
    w = np.zeros((8, 1 if depthwise else 8, 3, 3), np.int8)
    w[5, 0, 2, 1] = -128
    z = np.zeros(8, np.int32)
    for fn in (csim.conv2d, ref.conv2d_int8):
        with pytest.raises(ref.UnsupportedConfigError, match="BAD_WEIGHT"):
            fn(x, w, z, 2**30, 31, depthwise=depthwise)
    w[5, 0, 2, 1] = -127  # the most negative weight taken
    np.testing.assert_array_equal(
        csim.conv2d(x, w, z, 2**30, 31, depthwise=depthwise),
        ref.conv2d_int8(x, w, z, 2**30, 31, depthwise=depthwise),
    )


@pytest.mark.parametrize(
    "cin,cout,k,depthwise,upsample,relu",
    [
        (64, 40, 3, False, False, False),  # 8 input groups, odd DSP pairs in the 2nd group
        (64, 40, 3, False, False, True),
        (13, 33, 1, False, False, False),  # a partial input group, one lane in group 2
        (40, 64, 3, False, True, False),
        (24, 3, 3, False, False, False),  # 4-pixel groups
        (20, 12, 3, False, False, False),  # 2-pixel groups
        (24, 24, 3, True, False, False),
        (24, 24, 3, True, True, True),
    ],
)
def test_conv_dsp_packing_extreme_operands(cin, cout, k, depthwise, upsample, relu):
    """Two int8 products a DSP48E1 (w_lo + w_hi * 2^17, sums of 4, split with the sign
    correction) at the extreme operands x in {-128, 127}, w in {-127, 127}: constant inputs
    drive every packed sum to its largest magnitude, with both DSP partners of one sign or
    of opposite signs; the bias cancels the interior sums, and M/S = 1, so any error in a
    packed product shows as a nonzero interior output. Then random extreme mixtures."""
    rng = np.random.default_rng(cin * 100 + cout + k)
    wcin = 1 if depthwise else cin
    n = wcin * k * k  # products of an interior output
    alt = np.where(np.arange(cout) % 2 == 0, 1, -1)  # DSP partners of opposite signs
    kw = dict(depthwise=depthwise, upsample=upsample, relu=relu)
    ones = np.ones(cout, np.int64)
    for xv, sign in ((-128, ones), (-128, -ones), (-128, alt), (127, alt)):
        x = np.full((cin, 6, 6), xv, np.int8)
        wt = np.broadcast_to((127 * sign)[:, None, None, None], (cout, wcin, k, k)).astype(np.int8)
        b = (-xv * 127 * sign * n).astype(np.int32)
        one = (np.full(cout, 2**30, np.int32), np.full(cout, 30, np.int32))  # rq = identity
        want = ref.conv2d_int8(x, wt, b, *one, **kw)
        p = k // 2
        assert not want[:, p : want.shape[1] - p, p : want.shape[2] - p].any()  # cancels
        np.testing.assert_array_equal(csim.conv2d(x, wt, b, *one, **kw), want)
    for _ in range(2):
        x = rng.choice(np.array([-128, 127], np.int8), (cin, 6, 6))
        wt = rng.choice(np.array([-127, 127], np.int8), (cout, wcin, k, k))
        b = rng.choice(np.array([-(2**30), 0, 2**30], np.int32), cout)
        M, S = np.full(cout, 2**30, np.int32), np.full(cout, 40, np.int32)
        want = ref.conv2d_int8(x, wt, b, M, S, **kw)
        np.testing.assert_array_equal(csim.conv2d(x, wt, b, M, S, **kw), want)


def test_conv_check_agrees_with_the_reference():
    """The C check and int8_ref.check_conv give the same status and tile rows on a sweep."""
    rng = np.random.default_rng(0)
    for _ in range(3000):
        c = dict(
            cin=int(rng.choice([0, 1, 3, 8, 17, 64, 96, 128, 255, 1024, 1025])),
            cout=int(rng.choice([0, 1, 8, 16, 24, 96, 200, 1024, 1025])),
            h=int(rng.choice([0, 1, 2, 7, 64, 256, 1024, 1025])),
            w=int(rng.choice([0, 1, 5, 64, 127, 128, 129, 256, 257])),
            k=int(rng.choice([1, 3, 3, 5])),
            stride=int(rng.choice([1, 2, 2, 3])),
            depthwise=int(rng.choice([0, 1, 1, 2])),
            relu=int(rng.integers(2)),
            upsample=int(rng.choice([0, 0, 1])),
            residual=0,
            res_m=0,
            res_s=0,
            tile_rows=int(rng.choice([0, 0, 1, 2, 4, 8, 16, 17])),
        )
        if c["depthwise"] == 1 and rng.integers(2):
            c["cout"] = c["cin"]
        status, tr = csim.conv_check_status(csim.ConvConfig(**c))
        try:
            want_tr = ref.check_conv(
                c["cin"], c["cout"], c["h"], c["w"], k=c["k"], stride=c["stride"],
                depthwise=c["depthwise"], upsample=c["upsample"], relu=c["relu"],
                tile_rows=c["tile_rows"],
            )  # fmt: skip
            want = 0
        except ref.UnsupportedConfigError as e:
            want, want_tr = ref.EngineStatus[str(e).split(":")[0]], None
        assert status == want, c
        if want == 0:
            assert tr == want_tr, c


def test_grid_check_agrees_with_the_reference():
    rng = np.random.default_rng(1)
    for _ in range(2000):
        c = dict(
            c=int(rng.choice([0, 1, 3, 64, 1024, 1025])),
            h=int(rng.choice([0, 1, 7, 64, 256, 257])),
            w=int(rng.choice([0, 1, 8, 65, 256, 257])),
            ho=int(rng.choice([0, 1, 64, 1024, 1025])),
            wo=int(rng.choice([0, 1, 64, 1024, 1025])),
            occlusion=int(rng.choice([0, 1, 2])),
            m=2**30,
            s=31,
        )
        status, planes = csim.grid_check_status(csim.GridConfig(**c))
        try:
            want_planes = ref.check_grid_sample(
                c["c"], c["h"], c["w"], c["ho"], c["wo"], occlusion=c["occlusion"]
            )
            want = 0
        except ref.UnsupportedConfigError as e:
            want, want_planes = ref.EngineStatus[str(e).split(":")[0]], None
        assert status == want, c
        if want == 0:
            assert planes == want_planes, c


@pytest.mark.parametrize(
    "shape,grid_hw,M,S,status",
    [
        ((2, 257, 8), (4, 4), 2**30, 31, "BAD_SIZE"),
        ((2, 8, 8), (4, 1025), 2**30, 31, "BAD_SIZE"),
        ((1025, 2, 2), (4, 4), 2**30, 31, "BAD_CHANNELS"),
        ((2, 8, 8), (4, 4), -1, 31, "BAD_REQUANT"),
        ((2, 8, 8), (4, 4), 2**30, 63, "BAD_REQUANT"),
        ((2, 8, 8), (4, 4), 2**30, 0, "BAD_REQUANT"),
    ],
)
def test_grid_sample_rejects(shape, grid_hw, M, S, status):
    x = np.zeros(shape, np.int8)
    g = np.zeros((2, *grid_hw), np.int16)
    with pytest.raises(ref.UnsupportedConfigError, match=f"grid-sample engine rejected.*{status}"):
        csim.grid_sample(x, g, M, S)
    with pytest.raises(ref.UnsupportedConfigError, match=status):
        ref.grid_sample_int8(x, g, M, S)


def test_missing_compiler_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("CXX", "no-such-compiler-x")
    with pytest.raises(BackendUnavailableError, match="no-such-compiler-x"):
        csim.build_library()
