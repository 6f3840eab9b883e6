// gridsample_engine.cpp -- bilinear grid sample (zero padding, align_corners=False in pixel
// coordinates) with a fused multiply by an occlusion map, for the xc7z020 (PYNQ-Z1).
//
// Arithmetic: exactly decoder_fpga/int8_ref.py grid_sample_int8: grid in int16 pixel
// coordinates with 6 fractional bits (Q9.6), weights (64-f) and f in 1/64, their products
// in 1/4096, one int32 sum over the four taps inside the image, times the uint8 occlusion
// value, then rq(acc, M, S) (rounding half up) and saturation to int8. Verified here bit
// for bit against int8_ref (golden vectors, pytest) and a C++ port (tb_gridsample.cpp).
// NOT verified here: synthesis, II, resources, timing at 100 MHz.
//
// ---- Structure ------------------------------------------------------------------------
// Random access into the input needs it on chip: a pass holds as many whole input planes
// as fit (64 KiB; one 256x256 plane, sixteen 64x64 planes), split into 4 banks by the
// parities of (y, x). The four bilinear taps (y0|y0+1, x0|x0+1) always fall in four
// different banks, so one output value is one read of each bank: II = 1 (intended).
// Passes are double-buffered: planes of pass g+1 load while pass g samples. Per output
// row, the grid row and the occlusion row are read once and reused by every plane of the
// pass; output rows are written as bursts from a ping-pong row buffer.
//
// ---- Resources (estimates, unverified) -------------------------------------------------
// DSP: 4 tap multipliers (int8 x 13-bit weight), the occlusion multiply (20 x 8 bit), the
// requant (28 x 31 bit, 4 DSP48E1) -> ~9-10 DSP48E1. BRAM: 2 halves x 4 banks x 16 KiB =
// 128 KiB = 32 BRAM36; row buffers (grid 2 x 1024 x int16, occlusion, 2 output rows) ~3.
#include "gridsample_engine.h"

namespace {

struct gs_layer_t {
    int32_t c, h, w, ho, wo, occ, m, s;
    int32_t np;    // planes per pass
    int32_t hw2;   // ceil(w / 2): bank row pitch
    int32_t pp;    // ceil(h / 2) * ceil(w / 2): bank words per plane
};

inline int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

// Planes [c0, c0 + n) into one half of the plane buffer, split by (y & 1, x & 1).
void load_planes(const int8_t *x, const gs_layer_t &L, int32_t c0, int32_t n,
                 int8_t pb[4][GS_BANK_BYTES]) {
LOAD_PLANE:
    for (int32_t p = 0; p < n; ++p) {
    LOAD_ROW:
        for (int32_t yy = 0; yy < L.h; ++yy) {
            const int8_t *src = x + ((int64_t)(c0 + p) * L.h + yy) * L.w;
            const int32_t base = p * L.pp + (yy >> 1) * L.hw2;
        LOAD_X:
            for (int32_t xx = 0; xx < L.w; ++xx) {
#pragma HLS PIPELINE II = 1
                pb[((yy & 1) << 1) | (xx & 1)][base + (xx >> 1)] = src[xx];
            }
        }
    }
}

// One output row of one plane.
void sample_row(const gs_layer_t &L, int32_t p, const int8_t pb[4][GS_BANK_BYTES],
                const int16_t gx_row[GS_MAX_W_OUT], const int16_t gy_row[GS_MAX_W_OUT],
                const uint8_t occ_row[GS_MAX_W_OUT], int8_t out_row[GS_MAX_W_OUT]) {
SAMPLE_X:
    for (int32_t j = 0; j < L.wo; ++j) {
#pragma HLS PIPELINE II = 1
        const int32_t gx = gx_row[j], gy = gy_row[j];
        const int32_t x0 = gx >> GS_FRAC_BITS, fx = gx & (GS_ONE - 1);
        const int32_t y0 = gy >> GS_FRAC_BITS, fy = gy & (GS_ONE - 1);
        int32_t acc = 0;
    SAMPLE_BANK:
        for (int32_t b = 0; b < 4; ++b) {
#pragma HLS UNROLL
            // The tap held by bank b: its row/column has the bank's parity.
            const int32_t dy = (y0 & 1) == (b >> 1) ? 0 : 1;
            const int32_t dx = (x0 & 1) == (b & 1) ? 0 : 1;
            const int32_t yy = y0 + dy, xx = x0 + dx;
            const int32_t wgt = (dy ? fy : GS_ONE - fy) * (dx ? fx : GS_ONE - fx);
            const bool inside = yy >= 0 && yy < L.h && xx >= 0 && xx < L.w;
            const int32_t v = inside ? (int32_t)pb[b][p * L.pp + (yy >> 1) * L.hw2 + (xx >> 1)] : 0;
            acc += wgt * v;
        }
        if (L.occ) acc *= (int32_t)occ_row[j];
        out_row[j] = grace_sat8(grace_rq(acc, L.m, L.s), 0);
    }
}

void sample_pass(const int16_t *grid, const uint8_t *occ, int8_t *y, const gs_layer_t &L,
                 int32_t c0, int32_t n, const int8_t pb[4][GS_BANK_BYTES]) {
    static int16_t gx_row[GS_MAX_W_OUT], gy_row[GS_MAX_W_OUT];
    static uint8_t occ_row[GS_MAX_W_OUT];
    static int8_t out_row[2][GS_MAX_W_OUT];
#pragma HLS ARRAY_PARTITION variable = out_row complete dim = 1
    const int64_t plane = (int64_t)L.ho * L.wo;
PASS_ROW:
    for (int32_t i = 0; i < L.ho; ++i) {
    GRID_ROW:
        for (int32_t j = 0; j < L.wo; ++j) {
#pragma HLS PIPELINE II = 1
            gx_row[j] = grid[(int64_t)i * L.wo + j];
            gy_row[j] = grid[plane + (int64_t)i * L.wo + j];
            occ_row[j] = L.occ ? occ[(int64_t)i * L.wo + j] : (uint8_t)0;
        }
        // sample plane p || store plane p-1 (ping-pong row buffer)
    PASS_PLANE:
        for (int32_t p = 0; p <= n; ++p) {
            if (p < n) sample_row(L, p, pb, gx_row, gy_row, occ_row, out_row[p & 1]);
            if (p >= 1) {
                int8_t *dst = y + (c0 + p - 1) * plane + (int64_t)i * L.wo;
            STORE_X:
                for (int32_t j = 0; j < L.wo; ++j) {
#pragma HLS PIPELINE II = 1
                    dst[j] = out_row[(p - 1) & 1][j];
                }
            }
        }
    }
}

}  // namespace

int32_t gridsample_check(const grace_gs_cfg_t *cfg, int32_t *planes) {
    const grace_gs_cfg_t &C = *cfg;
    if (C.occlusion != 0 && C.occlusion != 1) return -GRACE_BAD_FLAG;
    if (C.c < 1 || C.c > GS_MAX_CH) return -GRACE_BAD_CHANNELS;
    if (C.h < 1 || C.h > GS_MAX_H || C.w < 1 || C.w > GS_MAX_W || C.ho < 1 || C.ho > GS_MAX_H_OUT ||
        C.wo < 1 || C.wo > GS_MAX_W_OUT)
        return -GRACE_BAD_SIZE;
    if (!grace_requant_ok(C.m, C.s)) return -GRACE_BAD_REQUANT;
    int32_t np = GS_BANK_BYTES / (ceil_div(C.h, 2) * ceil_div(C.w, 2));
    if (np > GS_MAX_PLANES) np = GS_MAX_PLANES;
    if (np > C.c) np = C.c;
    if (planes) *planes = np;
    return GRACE_OK;
}

int32_t gridsample_engine(const int8_t *x, const int16_t *grid, const uint8_t *occ, int8_t *y,
                          grace_gs_cfg_t cfg) {
#pragma HLS INTERFACE m_axi port = x offset = slave bundle = gmem0 max_read_burst_length = 64
#pragma HLS INTERFACE m_axi port = grid offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = occ offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = y offset = slave bundle = gmem2 max_write_burst_length = 64
#pragma HLS INTERFACE s_axilite port = x bundle = control
#pragma HLS INTERFACE s_axilite port = grid bundle = control
#pragma HLS INTERFACE s_axilite port = occ bundle = control
#pragma HLS INTERFACE s_axilite port = y bundle = control
#pragma HLS INTERFACE s_axilite port = cfg bundle = control
#pragma HLS INTERFACE s_axilite port = return bundle = control
    static int8_t plane_buf[2][4][GS_BANK_BYTES];
#pragma HLS ARRAY_PARTITION variable = plane_buf complete dim = 1
#pragma HLS ARRAY_PARTITION variable = plane_buf complete dim = 2

    int32_t np = 0;
    const int32_t status = gridsample_check(&cfg, &np);
    if (status != GRACE_OK) return status;
    gs_layer_t L;
    L.c = cfg.c;
    L.h = cfg.h;
    L.w = cfg.w;
    L.ho = cfg.ho;
    L.wo = cfg.wo;
    L.occ = cfg.occlusion;
    L.m = cfg.m;
    L.s = cfg.s;
    L.np = np;
    L.hw2 = ceil_div(L.w, 2);
    L.pp = ceil_div(L.h, 2) * L.hw2;

    // load pass g || sample pass g-1 (ping-pong plane buffer)
    const int32_t n_pass = ceil_div(L.c, L.np);
PASS_LOOP:
    for (int32_t g = 0; g <= n_pass; ++g) {
        if (g < n_pass) {
            const int32_t c0 = g * L.np;
            load_planes(x, L, c0, L.c - c0 < L.np ? L.c - c0 : L.np, plane_buf[g & 1]);
        }
        if (g >= 1) {
            const int32_t c0 = (g - 1) * L.np;
            sample_pass(grid, occ, y, L, c0, L.c - c0 < L.np ? L.c - c0 : L.np, plane_buf[(g - 1) & 1]);
        }
    }
    return GRACE_OK;
}
