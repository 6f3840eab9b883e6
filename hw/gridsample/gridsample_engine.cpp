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
// parities of (y, x); a bank word (32 bit) holds 4 consecutive same-parity columns. The
// four bilinear taps (y0|y0+1, x0|x0+1) always fall in four different banks, so one output
// value is one read of each bank; the two BRAM ports of each bank serve two outputs (two
// neighbouring pixels of one plane row) a cycle: 2 samplers, II = 1 per pixel pair.
// Passes are double-buffered: planes of pass g+1 load while pass g samples. The grid is
// read in blocks of whole output rows (as many as fit 2048 values: 8 rows at 256 wide, so
// one burst of x, one of y and one of the occlusion map per block instead of per row): the
// grid block (x, y: int16, bundle gmem1) and the occlusion block (bundle gmem3) of block
// b+1 are read (8-byte beats, the two bundles in parallel) into one half of ping-pong
// block buffers while block b is sampled from the other half. A block's (row, plane)
// items run row-major, every plane of the pass for a row; each item's output row goes out
// as 8-byte beats from a ping-pong row buffer while the next item samples (across rows
// too, so a pass of one plane is sample-bound, not sample + store). The items of a block
// are one flattened pipeline (item, pixel pair): the sampling pipeline fills once a
// block, not once an output row, and the store of an item's row (ceil(wo/8) beats) runs in
// the same iterations as the next item's sampling (ceil(wo/2) pairs).
//
// ---- Data paths ---------------------------------------------------------------------------
// Every load/store loop moves one 8-byte beat per iteration (PIPELINE II=1, the bytes
// unrolled; hls.tcl widens the m_axi ports to 64 bits): a plane row is ceil(w/8) beats,
// each beat one word into the even-column bank and one into the odd-column bank.
//
// ---- Resources (estimates, unverified) -------------------------------------------------
// DSP: per sampler 4 tap multipliers (int8 x 13-bit weight), the occlusion multiply (20 x 8
// bit), the requant (28 x 31 bit, 4 DSP48E1) -> 9; two samplers 18. BRAM: 2 halves x 4 banks
// x 4096 x 32 bit = 128 KiB = 32 BRAM36; grid blocks 2 x (2 x 2048 x int16), occlusion
// blocks 2 x 2048 x uint8, output rows 2 x 128 x 64 bit -> ~7 (see perf.py).
#include "gridsample_engine.h"

namespace {

constexpr int32_t BANK_WORDS = GS_BANK_BYTES / 4;  // 32-bit words a parity bank
constexpr int32_t OUT_ROW_WORDS = GS_MAX_W_OUT / GRACE_WORD_BYTES;
constexpr int32_t GS_ROW_BUF = 2048;  // grid / occlusion values of one half of the block buffers

struct gs_layer_t {
    int32_t c, h, w, ho, wo, occ, m, s;
    int32_t np;    // planes per pass
    int32_t wq;    // ceil(w / 8): bank words per bank row (4 same-parity columns a word)
    int32_t pp;    // ceil(h / 2) * wq: bank words per plane
};

inline int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

inline int8_t byte_of(uint32_t v, int32_t i) { return (int8_t)(uint8_t)(v >> (8 * i)); }

// Planes [c0, c0 + n) into one half of the plane buffer, split by (y & 1, x & 1).
// Beat j of a row = x 8j .. 8j+7: bytes 0,2,4,6 -> even bank word j, 1,3,5,7 -> odd bank.
void load_planes(const int8_t *x, const gs_layer_t &L, int32_t c0, int32_t n,
                 uint32_t pb[4][BANK_WORDS]) {
LOAD_PLANE:
    for (int32_t p = 0; p < n; ++p) {
        // A plane is contiguous in DDR: one flattened pipeline over h x wq beats.
        const int8_t *src = x + (int64_t)(c0 + p) * L.h * L.w;
        int32_t yy = 0, j = 0;
    LOAD_BEAT:
        for (int32_t it = 0; it < L.h * L.wq; ++it) {
#pragma HLS PIPELINE II = 1
            uint32_t even = 0, odd = 0;
        LOAD_BYTE:
            for (int32_t b = 0; b < GRACE_WORD_BYTES; ++b) {
#pragma HLS UNROLL
                const int32_t xx = GRACE_WORD_BYTES * j + b;
                const uint32_t v = xx < L.w ? (uint32_t)(uint8_t)src[(int64_t)yy * L.w + xx] : 0u;
                if (b & 1)
                    odd |= v << (8 * (b >> 1));
                else
                    even |= v << (8 * (b >> 1));
            }
            const int32_t addr = p * L.pp + (yy >> 1) * L.wq + j;
            pb[((yy & 1) << 1) | 0][addr] = even;
            pb[((yy & 1) << 1) | 1][addr] = odd;
            if (++j == L.wq) {
                j = 0;
                ++yy;
            }
        }
    }
}

// One output value: the four taps (one read of each bank), occlusion, requant.
inline int8_t sample(const gs_layer_t &L, int32_t p, const uint32_t pb[4][BANK_WORDS], int32_t gx,
                     int32_t gy, int32_t occ) {
#pragma HLS INLINE
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
        const int32_t m = xx >> 1;  // index among the bank row's same-parity columns
        const int32_t v =
            inside ? (int32_t)byte_of(pb[b][p * L.pp + (yy >> 1) * L.wq + (m >> 2)], m & 3) : 0;
        acc += wgt * v;
    }
    if (L.occ) acc *= occ;
    return grace_sat8(grace_rq(acc, L.m, L.s), 0);
}

// The grid rows (x then y, gmem1: 4 coordinates a beat) and the occlusion rows (gmem3: 8
// values a beat) of the block of output rows [i0, i0 + nr) in one pipelined loop, a beat of
// each bundle a cycle. The block's rows are contiguous in DDR: one run of beats for x, one
// for y, one for the occlusion map.
void load_grid_block(const int16_t *grid, const uint8_t *occ, const gs_layer_t &L, int32_t i0,
                     int32_t nr, int16_t gx_blk[GS_ROW_BUF], int16_t gy_blk[GS_ROW_BUF],
                     uint8_t occ_blk[GS_ROW_BUF]) {
    const int64_t plane = (int64_t)L.ho * L.wo, base = (int64_t)i0 * L.wo;
    const int32_t ne = nr * L.wo;                          // values of one coordinate
    const int32_t n_g = ceil_div(ne, 4);                   // beats of one coordinate
    const int32_t n_o = L.occ ? grace_words(ne) : 0;       // beats of the occlusion rows
    const int32_t n = 2 * n_g > n_o ? 2 * n_g : n_o;
GRID_BEAT:
    for (int32_t j = 0; j < n; ++j) {
#pragma HLS PIPELINE II = 1
        if (j < 2 * n_g) {  // x rows, then y rows
            const int32_t jj = j < n_g ? j : j - n_g;
            const int16_t *src = grid + (j < n_g ? 0 : plane) + base;
            int16_t *dst = j < n_g ? gx_blk : gy_blk;
        GRID_COORD:
            for (int32_t b = 0; b < 4; ++b)
                if (4 * jj + b < ne) dst[4 * jj + b] = src[4 * jj + b];
        }
        if (j < n_o) {
        GRID_OCC:
            for (int32_t b = 0; b < GRACE_WORD_BYTES; ++b)
                if (GRACE_WORD_BYTES * j + b < ne)
                    occ_blk[GRACE_WORD_BYTES * j + b] = occ[base + GRACE_WORD_BYTES * j + b];
        }
    }
}

// Rows per grid block: as many whole output rows as fit the row buffers (8 at 256 wide).
inline int32_t block_rows(const gs_layer_t &L) {
    const int32_t r = GS_ROW_BUF / L.wo;
    return r < L.ho ? r : L.ho;
}

// q0: the call-wide index of the pass's first block (its ping-pong half is q0 & 1); the
// first pass loads its block 0 itself, every other pass finds it loaded by the pass before
// (the grid is the same for every pass), which loads it while sampling its own last block.
void sample_pass(const int16_t *grid, const uint8_t *occ, int8_t *y, const gs_layer_t &L,
                 int32_t c0, int32_t n, const uint32_t pb[4][BANK_WORDS], int32_t q0, bool first,
                 bool more) {
    static int16_t gx_blk[2][GS_ROW_BUF], gy_blk[2][GS_ROW_BUF];
    static uint8_t occ_blk[2][GS_ROW_BUF];
    static grace_word_t out_row[2][OUT_ROW_WORDS];
#pragma HLS ARRAY_PARTITION variable = gx_blk complete dim = 1
#pragma HLS ARRAY_PARTITION variable = gy_blk complete dim = 1
#pragma HLS ARRAY_PARTITION variable = occ_blk complete dim = 1
#pragma HLS ARRAY_PARTITION variable = out_row complete dim = 1
    const int64_t plane = (int64_t)L.ho * L.wo;
    const int32_t R = block_rows(L), n_blk = ceil_div(L.ho, R);
    // load grid block b || sample block b-1: its (row, plane) items, row-major, each
    // item's output row stored while the next item samples (ping-pong output row)
PASS_BLOCK:
    for (int32_t b = first ? 0 : 1; b <= n_blk; ++b) {
        if (b < n_blk || more) {  // block b, or the next pass's block 0
            const int32_t i0 = b < n_blk ? b * R : 0, hl = (q0 + b) & 1;
            load_grid_block(grid, occ, L, i0, L.ho - i0 < R ? L.ho - i0 : R, gx_blk[hl], gy_blk[hl],
                            occ_blk[hl]);
        }
        if (b >= 1) {
            const int32_t h = (q0 + b - 1) & 1, i0 = (b - 1) * R;
            const int32_t nr = L.ho - i0 < R ? L.ho - i0 : R, n_items = nr * n;
            // One flattened pipeline (II 1) over the block's items x pixel pairs: the
            // pipeline fills once a block, not once an item. Iteration (k, jj): pixel pair jj
            // of item k sampled into out_row[k & 1] (jj < npr) || beat jj of item k-1's row
            // stored from out_row[(k-1) & 1] (jj < nw <= npr); then the last item's beats.
            const int32_t npr = ceil_div(L.wo, 2), nw = grace_words(L.wo);
            int32_t r = 0, p = 0;    // the item sampling
            int32_t rs = 0, ps = 0;  // the item storing (the previous one)
            int32_t k = 0, jj = 0;
            grace_word_t pack = 0;
        BLOCK_PAIR:
            for (int32_t it = 0; it < n_items * npr + nw; ++it) {
#pragma HLS PIPELINE II = 1
                if (k < n_items) {
                SAMPLER:
                    for (int32_t u = 0; u < 2; ++u) {
#pragma HLS UNROLL
                        const int32_t j = 2 * jj + u, e = r * L.wo + j;
                        if (j < L.wo) {
                            pack = grace_set_byte(pack, j & 7,
                                                  sample(L, p, pb, gx_blk[h][e], gy_blk[h][e], occ_blk[h][e]));
                            if ((j & 7) == 7 || j == L.wo - 1) out_row[k & 1][j >> 3] = pack;
                        }
                    }
                }
                if (k >= 1 && jj < nw) {
                    int8_t *dst = y + (c0 + ps) * plane + (int64_t)(i0 + rs) * L.wo;
                    const grace_word_t wd = out_row[(k - 1) & 1][jj];
                    for (int32_t bb = 0; bb < GRACE_WORD_BYTES; ++bb)
                        if (GRACE_WORD_BYTES * jj + bb < L.wo) dst[GRACE_WORD_BYTES * jj + bb] = grace_byte(wd, bb);
                }
                if (++jj == npr) {
                    jj = 0;
                    ++k;
                    rs = r;
                    ps = p;
                    if (++p == n) {
                        p = 0;
                        ++r;
                    }
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
    int32_t np = BANK_WORDS / (ceil_div(C.h, 2) * grace_words(C.w));
    if (np > GS_MAX_PLANES) np = GS_MAX_PLANES;
    if (np > C.c) np = C.c;
    if (planes) *planes = np;
    return GRACE_OK;
}

int32_t gridsample_engine(const int8_t *x, const int16_t *grid, const uint8_t *occ, int8_t *y,
                          grace_gs_cfg_t cfg) {
#pragma HLS INTERFACE m_axi port = x offset = slave bundle = gmem0 max_read_burst_length = 64
#pragma HLS INTERFACE m_axi port = grid offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = occ offset = slave bundle = gmem3
#pragma HLS INTERFACE m_axi port = y offset = slave bundle = gmem2 max_write_burst_length = 64
#pragma HLS INTERFACE s_axilite port = x bundle = control
#pragma HLS INTERFACE s_axilite port = grid bundle = control
#pragma HLS INTERFACE s_axilite port = occ bundle = control
#pragma HLS INTERFACE s_axilite port = y bundle = control
#pragma HLS INTERFACE s_axilite port = cfg bundle = control
#pragma HLS INTERFACE s_axilite port = return bundle = control
    static uint32_t plane_buf[2][4][BANK_WORDS];
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
    L.wq = grace_words(L.w);
    L.pp = ceil_div(L.h, 2) * L.wq;

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
            sample_pass(grid, occ, y, L, c0, L.c - c0 < L.np ? L.c - c0 : L.np, plane_buf[(g - 1) & 1],
                        (g - 1) * ceil_div(L.ho, block_rows(L)), g == 1, g < n_pass);
        }
    }
    return GRACE_OK;
}
