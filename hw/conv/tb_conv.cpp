// tb_conv.cpp -- C-simulation testbench of the conv engine (g++; also usable as the
// Vitis HLS csim testbench, see hls.tcl). Three checks:
//   1. golden vectors written by decoder_fpga/int8_ref.py (hw/vectors/conv_*.grv, listed
//      in MANIFEST.sha256): the engine's output equals int8_ref's, for every tile_rows;
//   2. random configurations against ref_conv below, a direct C++ port of conv2d_int8;
//   3. rejected configurations return the expected -status and leave y untouched;
//   4. the two-products-per-DSP48E1 packing (grace_dsp2 / grace_unpack2): every single
//      product of the operand ranges, and every packed sum of GRACE_PACK_SUM products at
//      the extreme operands, split exactly.
// Usage: tb_conv [VECTOR_DIR] [N_RANDOM]. Exit status 0 when everything passes.
#include <stdlib.h>

#include <algorithm>

#include "../common/tb_util.h"
#include "conv_engine.h"

namespace {

int32_t out_size(int32_t n, int32_t k, int32_t s, int32_t up) {
    return ((up ? 2 * n : n) + 2 * (k / 2) - k) / s + 1;
}

// Direct port of decoder_fpga.int8_ref.conv2d_int8 (no tiling, no buffers).
void ref_conv(const grace_conv_cfg_t &c, const int8_t *x, const int8_t *w, const int32_t *params,
              const int8_t *res, int8_t *y) {
    const int32_t ho = out_size(c.h, c.k, c.stride, c.upsample);
    const int32_t wo = out_size(c.w, c.k, c.stride, c.upsample);
    const int32_t hv = c.upsample ? 2 * c.h : c.h, wv = c.upsample ? 2 * c.w : c.w, p = c.k / 2;
    for (int32_t co = 0; co < c.cout; ++co)
        for (int32_t oy = 0; oy < ho; ++oy)
            for (int32_t ox = 0; ox < wo; ++ox) {
                int64_t acc = params[3 * co];
                const int32_t ci_lo = c.depthwise ? co : 0, ci_hi = c.depthwise ? co + 1 : c.cin;
                for (int32_t ci = ci_lo; ci < ci_hi; ++ci)
                    for (int32_t ky = 0; ky < c.k; ++ky)
                        for (int32_t kx = 0; kx < c.k; ++kx) {
                            const int32_t vy = oy * c.stride + ky - p, vx = ox * c.stride + kx - p;
                            if (vy < 0 || vy >= hv || vx < 0 || vx >= wv) continue;
                            const int32_t ry = c.upsample ? vy / 2 : vy, rx = c.upsample ? vx / 2 : vx;
                            const int32_t wi = c.depthwise ? (co * c.k + ky) * c.k + kx
                                                           : ((co * c.cin + ci) * c.k + ky) * c.k + kx;
                            acc += (int64_t)w[wi] * x[((int64_t)ci * c.h + ry) * c.w + rx];
                        }
                const int64_t i = ((int64_t)co * ho + oy) * wo + ox;
                const int32_t m = params[3 * co + 1], s = params[3 * co + 2];
                int64_t v;
                if (c.residual) {  // written out again, not via grace_epilogue
                    const int64_t t = ((acc * m + ((int64_t)1 << (s - 9))) >> (s - 8)) +
                                      (((int64_t)res[i] * c.res_m + ((int64_t)1 << (c.res_s - 9))) >> (c.res_s - 8));
                    v = (t + 128) >> 8;
                } else {
                    v = (acc * m + ((int64_t)1 << (s - 1))) >> s;
                }
                y[i] = grace_sat8(v, c.relu);
            }
}

struct conv_case {
    grace_conv_cfg_t cfg;
    std::vector<int8_t> x, w, res, expect;
    std::vector<int32_t> params;
    int32_t ho, wo;
};

// Run the engine with every valid tile_rows (0 = auto, 1, 2, ..., the max) and compare.
void run_case(const char *name, conv_case &t) {
    int32_t auto_tr = 0;
    grace_conv_cfg_t cfg = t.cfg;
    cfg.tile_rows = 0;
    const int32_t st = conv_check(&cfg, &auto_tr);
    TB_CHECK(st == 0, "%s: conv_check = %d", name, st);
    if (st) return;
    for (int32_t tr = 0; tr <= auto_tr; ++tr) {
        cfg.tile_rows = tr;
        std::vector<int8_t> y(t.expect.size(), (int8_t)0x5a);
        const int32_t r = conv_engine(t.x.data(), t.w.data(), t.params.data(),
                                      t.res.empty() ? nullptr : t.res.data(), y.data(), t.x.data(), cfg);
        TB_CHECK(r == 0, "%s tile_rows=%d: engine returned %d", name, tr, r);
        size_t bad = 0, first = 0;
        for (size_t i = 0; i < y.size(); ++i)
            if (y[i] != t.expect[i] && bad++ == 0) first = i;
        TB_CHECK(bad == 0, "%s tile_rows=%d: %zu of %zu differ (first at %zu: %d != %d)", name, tr,
                 bad, y.size(), first, y[first], t.expect[first]);
    }
}

int golden(const std::string &dir) {
    const std::vector<std::string> files = tb_manifest(dir, "conv_");
    TB_CHECK(!files.empty(), "no conv_* vectors listed in %s/MANIFEST.sha256", dir.c_str());
    for (const std::string &f : files) {
        tb_vectors v;
        if (!tb_load(dir + "/" + f, &v)) {
            TB_CHECK(false, "cannot read %s", f.c_str());
            continue;
        }
        const std::vector<int32_t> c = tb_get<int32_t>(v, "cfg");
        if (c.size() != 13) {
            TB_CHECK(false, "%s: cfg has %zu fields", f.c_str(), c.size());
            continue;
        }
        conv_case t;
        t.cfg = {c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7], c[8], c[9], c[10], c[11], c[12]};
        t.x = tb_get<int8_t>(v, "x");
        t.w = tb_get<int8_t>(v, "w");
        t.params = tb_get<int32_t>(v, "params");
        t.res = tb_get<int8_t>(v, "res");
        t.expect = tb_get<int8_t>(v, "y");
        run_case(f.c_str(), t);
    }
    return (int)files.size();
}

void random_case(tb_rng &rng, conv_case &t) {
    grace_conv_cfg_t &c = t.cfg;
    c.k = rng.range(0, 1) ? 3 : 1;
    c.depthwise = rng.range(0, 2) == 0;
    c.upsample = rng.range(0, 3) == 0;
    c.stride = c.upsample ? 1 : (int32_t)rng.range(1, 2);
    c.cin = (int32_t)rng.range(1, 40);
    c.cout = c.depthwise ? c.cin : (int32_t)rng.range(1, 40);
    c.h = (int32_t)rng.range(1, 13);
    c.w = (int32_t)rng.range(1, 13);
    c.relu = (int32_t)rng.range(0, 1);
    c.residual = (int32_t)rng.range(0, 1);
    c.res_m = (int32_t)rng.range(1 << 30, 0x7fffffff);
    c.res_s = (int32_t)rng.range(30, 33);
    c.tile_rows = 0;
    t.ho = out_size(c.h, c.k, c.stride, c.upsample);
    t.wo = out_size(c.w, c.k, c.stride, c.upsample);
    const bool extreme = rng.range(0, 4) == 0;  // only -128 / 127 / -127: saturation
    auto val = [&](int32_t lo) -> int8_t {
        if (extreme) return (int8_t)(rng.range(0, 1) ? 127 : lo);
        return (int8_t)rng.range(lo, 127);
    };
    t.x.resize((size_t)c.cin * c.h * c.w);
    for (auto &e : t.x) e = val(-128);
    t.w.resize((size_t)c.cout * (c.depthwise ? 1 : c.cin) * c.k * c.k);
    for (auto &e : t.w) e = val(-127);
    t.params.resize(3 * (size_t)c.cout);
    for (int32_t co = 0; co < c.cout; ++co) {
        const int64_t mode = rng.range(0, 9);
        t.params[3 * co] = (int32_t)(mode == 0 ? (rng.range(0, 1) ? GRACE_BIAS_LIMIT : -GRACE_BIAS_LIMIT)
                                               : rng.range(-20000, 20000));
        t.params[3 * co + 1] = (int32_t)(mode == 1 ? 0x7fffffff : mode == 2 ? 0 : rng.range(1 << 30, 0x7fffffff));
        t.params[3 * co + 2] = (int32_t)(mode == 3 ? (c.residual ? 9 : 1) : mode == 4 ? 62 : rng.range(36, 44));
    }
    if (c.residual) {
        t.res.resize((size_t)c.cout * t.ho * t.wo);
        for (auto &e : t.res) e = val(-128);
    } else {
        t.res.clear();
    }
    t.expect.assign((size_t)c.cout * t.ho * t.wo, 0);
    ref_conv(c, t.x.data(), t.w.data(), t.params.data(), t.res.empty() ? nullptr : t.res.data(), t.expect.data());
}

void rejections() {
    // Each configuration must be rejected with its status, leaving y untouched.
    struct bad_case {
        grace_conv_cfg_t cfg;
        int32_t status;
    };
    const bad_case cases[] = {
        {{8, 8, 8, 8, 5, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_BAD_KERNEL},
        {{8, 8, 8, 8, 3, 3, 0, 0, 0, 0, 0, 0, 0}, GRACE_BAD_STRIDE},
        {{0, 8, 8, 8, 3, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_BAD_CHANNELS},
        {{8, 1025, 8, 8, 1, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_BAD_CHANNELS},
        {{8, 16, 8, 8, 3, 1, 1, 0, 0, 0, 0, 0, 0}, GRACE_BAD_DEPTHWISE},
        {{8, 8, 8, 8, 3, 2, 0, 0, 1, 0, 0, 0, 0}, GRACE_BAD_UPSAMPLE},
        {{8, 8, 8, 257, 3, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_BAD_SIZE},
        {{8, 8, 8, 129, 3, 1, 0, 0, 1, 0, 0, 0, 0}, GRACE_BAD_SIZE},
        {{8, 8, 0, 8, 3, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_BAD_SIZE},
        {{256, 256, 8, 8, 3, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_WEIGHTS_TOO_BIG},
        {{96, 16, 8, 256, 3, 1, 0, 0, 0, 0, 0, 0, 0}, GRACE_TILE_TOO_BIG},
        {{8, 8, 8, 8, 3, 1, 0, 0, 0, 0, 0, 0, 17}, GRACE_BAD_TILE_ROWS},
        {{64, 8, 64, 256, 3, 1, 0, 0, 0, 0, 0, 0, 4}, GRACE_BAD_TILE_ROWS},
        {{8, 8, 8, 8, 3, 1, 0, 2, 0, 0, 0, 0, 0}, GRACE_BAD_FLAG},
        {{8, 8, 8, 8, 3, 1, 0, 0, 0, 1, 1 << 30, 0, 0}, GRACE_BAD_REQUANT},
        {{8, 8, 8, 8, 3, 1, 0, 0, 0, 1, -1, 31, 0}, GRACE_BAD_REQUANT},
        {{8, 8, 8, 8, 3, 1, 0, 0, 0, 1, 1 << 30, 8, 0}, GRACE_BAD_REQUANT},
    };
    std::vector<int8_t> x(1 << 16, 1), w(1 << 20, 1), y(1 << 16, 7), res(1 << 16, 1);
    std::vector<int32_t> params(3 * 1024, 1);
    for (const bad_case &b : cases) {
        const int32_t r = conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), b.cfg);
        TB_CHECK(r == -b.status, "config rejected with %d, expected %d", r, -b.status);
    }
    // Out-of-range per-channel parameters (data, not configuration).
    grace_conv_cfg_t c = {8, 8, 4, 4, 3, 1, 0, 0, 0, 0, 0, 0, 0};
    for (int32_t co = 0; co < 8; ++co) { params[3 * co] = 0; params[3 * co + 1] = 1 << 30; params[3 * co + 2] = 30; }
    params[3 * 5 + 2] = 63;
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == -GRACE_BAD_REQUANT, "S=63 accepted");
    params[3 * 5 + 2] = 0;
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == -GRACE_BAD_REQUANT, "S=0 accepted");
    params[3 * 5 + 2] = 8;  // fine alone, too small with a residual
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == 0, "S=8 rejected");
    std::fill(y.begin(), y.end(), (int8_t)7);
    c.residual = 1;
    c.res_m = 1 << 30;
    c.res_s = 31;
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == -GRACE_BAD_REQUANT, "S=8 with a residual accepted");
    c.residual = 0;
    params[3 * 5 + 2] = 30;
    params[3 * 7] = GRACE_BIAS_LIMIT + 1;
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == -GRACE_BAD_BIAS, "bias 2^30+1 accepted");
    params[3 * 7] = 0;
    w[77] = -128;  // the packed DSPs take [-127, 127]
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == -GRACE_BAD_WEIGHT, "weight -128 accepted");
    c.depthwise = 1;
    c.cin = c.cout = 8;
    w[77] = 1;
    w[71] = -128;  // inside the 8 x 9 depthwise weights
    TB_CHECK(conv_engine(x.data(), w.data(), params.data(), res.data(), y.data(), x.data(), c) == -GRACE_BAD_WEIGHT, "dw weight -128 accepted");
    bool untouched = true;
    for (int8_t v : y) untouched = untouched && v == 7;
    TB_CHECK(untouched, "a rejected call wrote to y");
}

// The DSP packing: a * (w_lo + w_hi * 2^17) and its split, against plain products.
void dsp_packing() {
    int64_t bad = 0, n = 0;
    for (int32_t a = -128; a <= 127; ++a)
        for (int32_t lo = GRACE_W_MIN; lo <= 127; ++lo)
            for (int32_t hi = GRACE_W_MIN; hi <= 127; ++hi) {
                const int32_t pk = lo + hi * (1 << GRACE_PACK_SHIFT);
                int32_t l, h;
                grace_unpack2(grace_dsp2((int8_t)lo, (int8_t)hi, (int8_t)a), &l, &h);
                bad += (l != a * lo || h != a * hi || pk < -(1 << 24) || pk >= (1 << 24));
                ++n;
            }
    // Sums of GRACE_PACK_SUM products, every combination of the extreme operands.
    const int32_t ext_a[] = {-128, 127, -127, 0}, ext_w[] = {-127, 127, 0};
    int32_t idx[3 * GRACE_PACK_SUM] = {0};
    for (;;) {
        int64_t p = 0;
        int32_t want_lo = 0, want_hi = 0;
        for (int32_t d = 0; d < GRACE_PACK_SUM; ++d) {
            const int32_t a = ext_a[idx[3 * d]], lo = ext_w[idx[3 * d + 1]], hi = ext_w[idx[3 * d + 2]];
            p += grace_dsp2((int8_t)lo, (int8_t)hi, (int8_t)a);
            want_lo += a * lo;
            want_hi += a * hi;
        }
        int32_t l, h;
        grace_unpack2(p, &l, &h);
        bad += (l != want_lo || h != want_hi);
        ++n;
        int32_t k = 0;
        for (; k < 3 * GRACE_PACK_SUM; ++k) {
            const int32_t lim = (k % 3 == 0) ? 4 : 3;
            if (++idx[k] < lim) break;
            idx[k] = 0;
        }
        if (k == 3 * GRACE_PACK_SUM) break;
    }
    TB_CHECK(bad == 0, "DSP packing: %lld of %lld cases wrong", (long long)bad, (long long)n);
}

// Extreme operands through the whole engine: x = -128 / 127, w = +-127, many input lanes.
void extreme_case() {
    for (int32_t mode = 0; mode < 4; ++mode) {
        conv_case t;
        t.cfg = {64, 40, 5, 11, 3, 1, 0, 0, 0, 0, 0, 0, 0};
        t.ho = 5;
        t.wo = 11;
        t.x.assign(64 * 5 * 11, (int8_t)(mode & 1 ? 127 : -128));
        t.w.assign(40 * 64 * 9, (int8_t)(mode & 2 ? 127 : -127));
        for (size_t i = 0; i < t.w.size(); i += 3) t.w[i] = (int8_t)-t.w[i];  // mixed signs
        for (int co = 0; co < 40; ++co) t.params.insert(t.params.end(), {co & 1 ? GRACE_BIAS_LIMIT : -GRACE_BIAS_LIMIT, 1 << 30, 50});
        t.expect.assign(40 * 5 * 11, 0);
        ref_conv(t.cfg, t.x.data(), t.w.data(), t.params.data(), nullptr, t.expect.data());
        char name[64];
        snprintf(name, sizeof name, "extreme case %d", mode);
        run_case(name, t);
    }
}

}  // namespace

int main(int argc, char **argv) {
    const std::string dir = argc > 1 ? argv[1] : "vectors";
    const int n_random = argc > 2 ? atoi(argv[2]) : 300;
    const int n_golden = golden(dir);
    tb_rng rng(20240501);
    for (int i = 0; i < n_random; ++i) {
        conv_case t;
        random_case(rng, t);
        char name[64];
        snprintf(name, sizeof name, "random case %d", i);
        run_case(name, t);
    }
    // A wide case: several row tiles and output-channel groups with the auto tile size.
    {
        tb_rng r2(7);
        conv_case t;
        t.cfg = {40, 36, 9, 256, 3, 1, 0, 1, 0, 1, 1 << 30, 31, 0};
        t.ho = 9;
        t.wo = 256;
        t.x.resize(40 * 9 * 256);
        for (auto &e : t.x) e = (int8_t)r2.range(-128, 127);
        t.w.resize(36 * 40 * 9);
        for (auto &e : t.w) e = (int8_t)r2.range(-127, 127);
        t.res.resize(36 * 9 * 256);
        for (auto &e : t.res) e = (int8_t)r2.range(-128, 127);
        for (int co = 0; co < 36; ++co) t.params.insert(t.params.end(), {(int32_t)r2.range(-9999, 9999), 1 << 30, 42});
        t.expect.assign(36 * 9 * 256, 0);
        ref_conv(t.cfg, t.x.data(), t.w.data(), t.params.data(), t.res.data(), t.expect.data());
        run_case("wide case", t);
    }
    rejections();
    dsp_packing();
    extreme_case();
    printf("tb_conv: %d golden vector files, %d random cases, %s (%d failures)\n", n_golden, n_random,
           tb_failures ? "FAILED" : "PASSED", tb_failures);
    return tb_failures ? 1 : 0;
}
