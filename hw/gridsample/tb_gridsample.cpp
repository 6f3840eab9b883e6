// tb_gridsample.cpp -- C-simulation testbench of the grid-sample engine (g++; also the
// Vitis HLS csim testbench, see hls.tcl). Three checks:
//   1. golden vectors written by decoder_fpga/int8_ref.py (hw/vectors/gs_*.grv);
//   2. random configurations (coordinates inside, on the borders, just outside, far
//      outside, int16 extremes) against ref_gs below, a direct C++ port of grid_sample_int8;
//   3. rejected configurations return the expected -status.
// Usage: tb_gridsample [VECTOR_DIR] [N_RANDOM]. Exit status 0 when everything passes.
#include <stdlib.h>

#include "../common/tb_util.h"
#include "gridsample_engine.h"

namespace {

// Direct port of decoder_fpga.int8_ref.grid_sample_int8.
void ref_gs(const grace_gs_cfg_t &c, const int8_t *x, const int16_t *grid, const uint8_t *occ, int8_t *y) {
    const int64_t plane = (int64_t)c.ho * c.wo;
    for (int32_t ch = 0; ch < c.c; ++ch)
        for (int64_t i = 0; i < plane; ++i) {
            const int32_t gx = grid[i], gy = grid[plane + i];
            const int32_t x0 = gx >> GS_FRAC_BITS, fx = gx & (GS_ONE - 1);
            const int32_t y0 = gy >> GS_FRAC_BITS, fy = gy & (GS_ONE - 1);
            int64_t acc = 0;
            for (int32_t dy = 0; dy < 2; ++dy)
                for (int32_t dx = 0; dx < 2; ++dx) {
                    const int32_t yy = y0 + dy, xx = x0 + dx;
                    if (yy < 0 || yy >= c.h || xx < 0 || xx >= c.w) continue;
                    const int64_t wgt = (int64_t)(dy ? fy : GS_ONE - fy) * (dx ? fx : GS_ONE - fx);
                    acc += wgt * x[((int64_t)ch * c.h + yy) * c.w + xx];
                }
            if (c.occlusion) acc *= occ[i];
            y[ch * plane + i] = grace_sat8(grace_rq(acc, c.m, c.s), 0);
        }
}

struct gs_case {
    grace_gs_cfg_t cfg;
    std::vector<int8_t> x, expect;
    std::vector<int16_t> grid;
    std::vector<uint8_t> occ;
};

void run_case(const char *name, const gs_case &t) {
    std::vector<int8_t> y(t.expect.size(), (int8_t)0x5a);
    const int32_t r = gridsample_engine(t.x.data(), t.grid.data(), t.occ.empty() ? nullptr : t.occ.data(),
                                        y.data(), t.cfg);
    TB_CHECK(r == 0, "%s: engine returned %d", name, r);
    size_t bad = 0, first = 0;
    for (size_t i = 0; i < y.size(); ++i)
        if (y[i] != t.expect[i] && bad++ == 0) first = i;
    TB_CHECK(bad == 0, "%s: %zu of %zu differ (first at %zu: %d != %d)", name, bad, y.size(), first,
             y[first], t.expect[first]);
}

int golden(const std::string &dir) {
    const std::vector<std::string> files = tb_manifest(dir, "gs_");
    TB_CHECK(!files.empty(), "no gs_* vectors listed in %s/MANIFEST.sha256", dir.c_str());
    for (const std::string &f : files) {
        tb_vectors v;
        if (!tb_load(dir + "/" + f, &v)) {
            TB_CHECK(false, "cannot read %s", f.c_str());
            continue;
        }
        const std::vector<int32_t> c = tb_get<int32_t>(v, "cfg");
        if (c.size() != 8) {
            TB_CHECK(false, "%s: cfg has %zu fields", f.c_str(), c.size());
            continue;
        }
        gs_case t;
        t.cfg = {c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]};
        t.x = tb_get<int8_t>(v, "x");
        t.grid = tb_get<int16_t>(v, "grid");
        t.occ = tb_get<uint8_t>(v, "occ");
        t.expect = tb_get<int8_t>(v, "y");
        run_case(f.c_str(), t);
    }
    return (int)files.size();
}

int16_t coord(tb_rng &rng, int32_t size) {
    switch (rng.range(0, 7)) {
        case 0: return (int16_t)(rng.range(0, 1) ? 32767 : -32768);              // int16 extremes
        case 1: return (int16_t)(rng.range(-1, size) * GS_ONE);                  // exactly on pixels/borders
        case 2: return (int16_t)(rng.range(0, 1) ? -GS_ONE + rng.range(-2, 2)   // around -1 and size-1, size
                                                 : (size - 1 + rng.range(0, 1)) * GS_ONE + rng.range(-2, 2));
        case 3: return (int16_t)rng.range(-40 * GS_ONE, 40 * GS_ONE + size * GS_ONE);  // far outside
        default: return (int16_t)rng.range(-GS_ONE, size * GS_ONE);              // inside or near
    }
}

void random_case(tb_rng &rng, gs_case &t) {
    grace_gs_cfg_t &c = t.cfg;
    c.c = (int32_t)rng.range(1, 20);
    c.h = (int32_t)rng.range(1, 17);
    c.w = (int32_t)rng.range(1, 17);
    c.ho = (int32_t)rng.range(1, 12);
    c.wo = (int32_t)rng.range(1, 12);
    c.occlusion = (int32_t)rng.range(0, 1);
    const int64_t mode = rng.range(0, 5);
    c.m = (int32_t)(mode == 0 ? 0x7fffffff : rng.range(1 << 30, 0x7fffffff));
    c.s = (int32_t)(mode == 1 ? 1 : mode == 2 ? 62 : rng.range(c.occlusion ? 38 : 30, c.occlusion ? 44 : 36));
    const bool extreme = rng.range(0, 4) == 0;
    t.x.resize((size_t)c.c * c.h * c.w);
    for (auto &e : t.x) e = (int8_t)(extreme ? (rng.range(0, 1) ? 127 : -128) : rng.range(-128, 127));
    const size_t plane = (size_t)c.ho * c.wo;
    t.grid.resize(2 * plane);
    for (size_t i = 0; i < plane; ++i) {
        t.grid[i] = coord(rng, c.w);
        t.grid[plane + i] = coord(rng, c.h);
    }
    t.occ.clear();
    if (c.occlusion) {
        t.occ.resize(plane);
        for (auto &e : t.occ) e = (uint8_t)(rng.range(0, 3) == 0 ? (rng.range(0, 1) ? 255 : 0) : rng.range(0, 255));
    }
    t.expect.assign((size_t)c.c * plane, 0);
    ref_gs(c, t.x.data(), t.grid.data(), t.occ.empty() ? nullptr : t.occ.data(), t.expect.data());
}

void rejections() {
    struct bad_case {
        grace_gs_cfg_t cfg;
        int32_t status;
    };
    const bad_case cases[] = {
        {{0, 8, 8, 8, 8, 0, 1 << 30, 30}, GRACE_BAD_CHANNELS},
        {{1025, 8, 8, 8, 8, 0, 1 << 30, 30}, GRACE_BAD_CHANNELS},
        {{4, 257, 8, 8, 8, 0, 1 << 30, 30}, GRACE_BAD_SIZE},
        {{4, 8, 8, 8, 1025, 0, 1 << 30, 30}, GRACE_BAD_SIZE},
        {{4, 8, 8, 0, 8, 0, 1 << 30, 30}, GRACE_BAD_SIZE},
        {{4, 8, 8, 8, 8, 2, 1 << 30, 30}, GRACE_BAD_FLAG},
        {{4, 8, 8, 8, 8, 0, 1 << 30, 63}, GRACE_BAD_REQUANT},
        {{4, 8, 8, 8, 8, 0, -5, 30}, GRACE_BAD_REQUANT},
    };
    std::vector<int8_t> x(1 << 12, 1), y(1 << 12, 7);
    std::vector<int16_t> grid(1 << 12, 0);
    std::vector<uint8_t> occ(1 << 12, 1);
    for (const bad_case &b : cases) {
        const int32_t r = gridsample_engine(x.data(), grid.data(), occ.data(), y.data(), b.cfg);
        TB_CHECK(r == -b.status, "config rejected with %d, expected %d", r, -b.status);
    }
    bool untouched = true;
    for (int8_t v : y) untouched = untouched && v == 7;
    TB_CHECK(untouched, "a rejected call wrote to y");
}

}  // namespace

int main(int argc, char **argv) {
    const std::string dir = argc > 1 ? argv[1] : "vectors";
    const int n_random = argc > 2 ? atoi(argv[2]) : 300;
    const int n_golden = golden(dir);
    tb_rng rng(20240502);
    for (int i = 0; i < n_random; ++i) {
        gs_case t;
        random_case(rng, t);
        char name[64];
        snprintf(name, sizeof name, "random case %d", i);
        run_case(name, t);
    }
    // Full-size planes: one 256x256 plane a pass, and many 64x64 planes a pass (two passes).
    const int32_t sizes[2][3] = {{3, 256, 256}, {80, 64, 64}};
    for (const auto &sz : sizes) {
        tb_rng r2((uint64_t)sz[1]);
        gs_case t;
        t.cfg = {sz[0], sz[1], sz[2], 16, 24, 1, 1 << 30, 39};
        t.x.resize((size_t)sz[0] * sz[1] * sz[2]);
        for (auto &e : t.x) e = (int8_t)r2.range(-128, 127);
        t.grid.resize(2 * 16 * 24);
        for (size_t i = 0; i < 16 * 24; ++i) {
            t.grid[i] = coord(r2, sz[2]);
            t.grid[16 * 24 + i] = coord(r2, sz[1]);
        }
        t.occ.resize(16 * 24);
        for (auto &e : t.occ) e = (uint8_t)r2.range(0, 255);
        t.expect.assign((size_t)sz[0] * 16 * 24, 0);
        ref_gs(t.cfg, t.x.data(), t.grid.data(), t.occ.data(), t.expect.data());
        run_case("full-size planes", t);
    }
    rejections();
    printf("tb_gridsample: %d golden vector files, %d random cases, %s (%d failures)\n", n_golden,
           n_random, tb_failures ? "FAILED" : "PASSED", tb_failures);
    return tb_failures ? 1 : 0;
}
