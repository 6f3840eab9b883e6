// conv_engine.cpp -- runtime-configured int8 conv engine for the xc7z020 (PYNQ-Z1).
//
// Arithmetic: exactly decoder_fpga/int8_ref.py conv2d_int8 (int32 accumulator, per-channel
// multiplier/shift requant with rounding half up, fused residual, ReLU, saturation; fused
// nearest x2 upsample of the input; k 1/3, stride 1/2, dense or depthwise). Verified here
// bit for bit against int8_ref (golden vectors, tests/decoder_fpga/test_csim.py) and a C++
// port of it (tb_conv.cpp). NOT verified here: synthesis, the initiation intervals and
// resource figures in the comments below, timing closure at 100 MHz (no Vitis HLS here).
//
// ---- Structure ------------------------------------------------------------------------
// The output is cut into tiles of `tile_rows` full-width output rows x 32 output channels.
// Per layer, the weights and per-channel {bias, M, S} are loaded once into on-chip memory.
// Per row tile, the input rows it needs (all input channels, full width, rows of the
// *real* input when upsampling) are loaded into one half of a double-buffered input tile
// buffer. The tile loop is software-pipelined over three stages that work on different
// buffer halves and so run concurrently in hardware (the classic HLS ping-pong pattern):
//     step t:  load 1/n_cot of the input channels of the next row tile + the residual of
//              tile t || compute tile t-1 (PE array + fused epilogue) || store tile t-2
// (the next row tile's input thus loads while all n_cot output groups of the current one
// compute, instead of all at once next to one group's compute).
//
// ---- Data paths: 64-bit words ---------------------------------------------------------
// Every load/store loop moves one 8-byte beat per iteration (PIPELINE II=1 over beats,
// the 8 bytes unrolled); hls.tcl sets -m_axi_max_widen_bitwidth 64 so the int8 m_axi ports
// become 64 bits wide. On chip the data are 64-bit words too:
//   in_buf   [half][8 input lanes][1024 words]: word = 8 consecutive x of one channel;
//            rows padded to whole words (ceil(w/8) words a row), so a DDR beat is one
//            word write and the PE array reads all 8 lanes at one address
//   w_buf    [32 PE rows][512 words]: word = 8 input lanes (dense) / 8 channels (dw tap)
//   out_buf, res_buf [half][32 lanes][128 words]: word = 8 consecutive output pixels of one
//            channel, i.e. one DDR beat of the channel-major output
//
// ---- PE array and DSP sizing (xc7z020: 220 DSP48E1) ------------------------------------
//  * Dense: 32 output channels x 8 input channels = 256 int8 MACs per cycle on 128
//    DSP48E1: each DSP computes a * (w[2q] + w[2q+1] * 2^17) for two output channels that
//    share the activation a (grace_dsp2 in grace_hw.h); 4 DSPs cascade (PCOUT->PCIN) the
//    packed sum of 4 input lanes, which is then split exactly (grace_unpack2).
//    The compute loop is one flattened pipeline over (pixel group, slot) of the whole tile
//    at II = 1: slots = max(ceil(cin/8) * k*k MAC slots, ceil(P*lanes/8) epilogue slots)
//    per group, the epilogue of group g overlapping the MACs of group g+1 (no per-pixel
//    fill). For small layers the 32 PE rows are P pixels x 32/P channels (P = 4 for
//    cout <= 8, 2 for cout <= 16; grace-s's 3-channel `out` conv uses 12 of 32 rows
//    instead of 3): the P pixels of one row lie in two input words (the two BRAM ports).
//  * Depthwise: 72 of the 128 DSPs (low product only) as 8 channels x 9 taps: one output
//    pixel of 8 channels a cycle. The 3x3 window keeps two words per row in registers; a
//    row needs a new word only when its window crosses a word boundary (every 8 / 4 / 16
//    pixels at stride 1 / 2 / upsample) and the three rows fetch it in three different
//    cycles (row ky at ky cycles after the crossing), so each lane bank sees at most one
//    read a cycle: II = 1. The C++ checks (assert) that no tap ever needs a word that has
//    not been fetched under this schedule.
//  * Epilogue: acc (32 bit) x M (31 bit) needs 4 DSP48E1; the residual term r (8 bit) x
//    res_m (31 bit) 2 more. 8 epilogue lanes (48 DSP) = 8 outputs a cycle, matching the
//    depthwise path and dense layers with >= ceil(lanes/8) MAC slots a pixel.
//  * Total conv engine 176 DSP; the grid-sample engine 18 (2 samplers); 194 of 220 (88 %).
//
// ---- BRAM sizing (BRAM36 = 512 x 72 bit for 64-bit words) ------------------------------
//  in_buf  2 halves x 8 lanes x 1024 x 64 bit                             32 BRAM36
//  w_buf   32 banks x 512 x 64 bit                                        32 BRAM36
//  out_buf, res_buf  2 x 2 halves x 4096 x 64 bit (one memory per half)   32 BRAM36
//  bias/M/S  1024 entries in LUTRAM; the 32 of the computing group and of the next in
//            two register sets (the next loaded in the load stage)              0
//  conv engine 96 BRAM36; the grid-sample engine ~37 -> ~133 of 140 (see perf.py).
//
// ---- Limits (rejected with -status, see grace_hw.h; the compiler splits bigger layers)
//  cin, cout <= 1024; h <= 1024; w, w_out <= 256; weights per bank <= 4 KiB
//  (ceil(cout/32) * ceil(cin/8)*8 * k*k bytes, dense); the input rows of one output row
//  <= 64 KiB (ceil(cin/8)*8 * rows * 8*ceil(w/8)); weights in [-127, 127].
#include "conv_engine.h"

#include <assert.h>

namespace {

constexpr int32_t IN_WORDS = CONV_IN_BUF_BYTES / CONV_PE_CI / GRACE_WORD_BYTES;  // a lane, a half
constexpr int32_t W_WORDS = CONV_W_BANK_BYTES / GRACE_WORD_BYTES;                 // a PE row
constexpr int32_t OUT_WORDS = CONV_OUT_TILE_PIX / GRACE_WORD_BYTES;               // a lane
constexpr int32_t EPI_LANES = 8;                                                   // epilogues a cycle
constexpr int32_t N_PAIRS = CONV_PE_CO / 2;                                        // DSP columns

// Derived per-layer values (computed once from the configuration registers).
struct layer_t {
    int32_t cin, cout, h, w, ho, wo, hv, wv;
    int32_t k, kk, s, p;
    int32_t dw, relu, up, res, res_m, res_s;
    int32_t tr;        // output rows per tile
    int32_t rows_cap;  // input rows reserved per channel group in the input tile
    int32_t wpr;       // 64-bit words per input row
    int32_t cig_n;     // 8-channel input groups
    int32_t n_cot;     // output-channel groups (ceil(cout / 32))
    int32_t gco;       // channels a group: ceil(cout / n_cot) rounded up to 8 (<= 32): balanced
    int32_t n_rt;      // row tiles
};

struct tile_t {
    int32_t rt, cot;   // row tile, output-channel group
    int32_t oy0, nrows;
    int32_t ry_lo, ry_n;  // real input rows [ry_lo, ry_lo + ry_n)
    int32_t c0;           // first output channel of this group (cot * gco)
    int32_t lanes;        // output channels of this group (<= gco)
};

// The per-channel epilogue parameters of the current 32-channel group (registers).
struct group_params_t {
    int32_t b[CONV_PE_CO], m[CONV_PE_CO], s[CONV_PE_CO];
};

inline int32_t ceil_div(int32_t a, int32_t b) { return (a + b - 1) / b; }

inline int32_t out_size(int32_t n, int32_t k, int32_t s, int32_t up) {
    return ((up ? 2 * n : n) + 2 * (k / 2) - k) / s + 1;
}

inline int32_t tile_input_rows(int32_t tr, int32_t k, int32_t s, int32_t up, int32_t h) {
    const int32_t span = (tr - 1) * s + k;
    const int32_t rows = up ? span / 2 + 1 : span;
    return rows < h ? rows : h;
}

inline bool tile_fits(int32_t tr, int32_t ci_pad, int32_t k, int32_t s, int32_t up, int32_t h,
                      int32_t w, int32_t wo) {
    return ci_pad * tile_input_rows(tr, k, s, up, h) * grace_words(w) * GRACE_WORD_BYTES <= CONV_IN_BUF_BYTES &&
           tr * wo <= CONV_OUT_TILE_PIX;
}

tile_t make_tile(const layer_t &L, int32_t t) {
    tile_t T;
    T.rt = t / L.n_cot;
    T.cot = t % L.n_cot;
    T.oy0 = T.rt * L.tr;
    T.nrows = L.ho - T.oy0 < L.tr ? L.ho - T.oy0 : L.tr;
    int32_t vlo = T.oy0 * L.s - L.p;
    int32_t vhi = (T.oy0 + T.nrows - 1) * L.s - L.p + L.k - 1;
    if (vlo < 0) vlo = 0;
    if (vhi > L.hv - 1) vhi = L.hv - 1;
    T.ry_lo = L.up ? vlo >> 1 : vlo;
    const int32_t ry_hi = L.up ? vhi >> 1 : vhi;
    T.ry_n = ry_hi - T.ry_lo + 1;
    T.c0 = T.cot * L.gco;
    T.lanes = L.cout - T.c0 < L.gco ? L.cout - T.c0 : L.gco;
    return T;
}

inline int8_t epilogue(int32_t acc, int32_t m, int32_t s, const layer_t &L, int8_t r) {
#pragma HLS INLINE
    return grace_epilogue(acc, m, s, L.relu, L.res, r, L.res_m, L.res_s);
}

// One 64-bit beat from DDR: bytes src[0..n) (n <= 8), zeros above.
inline grace_word_t read_beat(const int8_t *src, int32_t n) {
#pragma HLS INLINE
    grace_word_t v = 0;
BEAT_RD:
    for (int32_t b = 0; b < GRACE_WORD_BYTES; ++b) {
#pragma HLS UNROLL
        if (b < n) v = grace_set_byte(v, b, src[b]);
    }
    return v;
}

// ---- load stage: the input rows of a row tile and the residual tile --------------------
// Input (gmem0 and gmem1): lane l = channel % 8 holds, for channel group g = channel / 8,
// rows [0, rows_cap) of ceil(w/8) words each: word (g * rows_cap + r) * wpr + j = x
// 8j..8j+7 of row ry_lo + r; lanes of channels >= cin hold 0. The tile's rows of one channel
// are contiguous in DDR: one run of beats (one burst when w is a multiple of 8). The even
// channels come through port x (gmem0), the odd ones through port x1 (gmem1, which carries
// the weights and parameters only before the tile loop; x1 = x): two beats a cycle, into
// different lane banks (even / odd lanes). Residual (gmem2): lanes x ceil(rows*wo/8) words,
// 8 pixels a word, one burst a lane. The three streams advance in one pipelined loop, a
// beat of each a cycle, so the stage takes the longest of the three.
struct in_stream_t {
    int32_t c, r, j;  // channel, row, word
};

inline void load_in_beat(const int8_t *x, const layer_t &L, const tile_t &TI, in_stream_t &S,
                         grace_word_t inb[CONV_PE_CI][IN_WORDS]) {
#pragma HLS INLINE
    const int8_t *src = x + ((int64_t)S.c * L.h + TI.ry_lo + S.r) * L.w + GRACE_WORD_BYTES * S.j;
    inb[S.c % CONV_PE_CI][((S.c / CONV_PE_CI) * L.rows_cap + S.r) * L.wpr + S.j] =
        S.c < L.cin ? read_beat(src, L.w - GRACE_WORD_BYTES * S.j) : 0;
    if (++S.j == L.wpr) {
        S.j = 0;
        if (++S.r == TI.ry_n) {
            S.r = 0;
            S.c += 2;  // the next channel of this port's parity
        }
    }
}

void load_tile(const int8_t *x, const int8_t *x1, const int8_t *res, const layer_t &L, const tile_t &TI,
               int32_t c_lo, int32_t c_hi, const tile_t &T, grace_word_t inb[CONV_PE_CI][IN_WORDS],
               grace_word_t resb[CONV_PE_CO][OUT_WORDS]) {
    // TI: the row tile whose input channels [c_lo, c_hi) load; T: the tile whose residual loads
    const int32_t c_even = c_lo + (c_lo & 1), c_odd = c_lo + 1 - (c_lo & 1);
    const int32_t n_even = c_hi > c_even ? (c_hi - c_even + 1) / 2 : 0;
    const int32_t n_odd = c_hi > c_odd ? (c_hi - c_odd + 1) / 2 : 0;
    const int32_t per_ch = TI.ry_n * L.wpr;
    const int32_t n_in0 = n_even * per_ch, n_in1 = n_odd * per_ch;
    const int32_t npix = T.nrows * L.wo, rw = grace_words(npix);
    const int32_t n_res = L.res ? T.lanes * rw : 0;
    int32_t n = n_in0 > n_in1 ? n_in0 : n_in1;
    if (n_res > n) n = n_res;
    in_stream_t S0 = {c_even, 0, 0}, S1 = {c_odd, 0, 0};
    int32_t po = 0, k = 0;  // residual: lane, word
LOAD_BEAT:
    for (int32_t it = 0; it < n; ++it) {
#pragma HLS PIPELINE II = 1
        if (it < n_in0) load_in_beat(x, L, TI, S0, inb);   // gmem0: even lanes
        if (it < n_in1) load_in_beat(x1, L, TI, S1, inb);  // gmem1: odd lanes
        if (it < n_res) {
            const int8_t *src = res + ((int64_t)(T.c0 + po) * L.ho + T.oy0) * L.wo;
            resb[po][k] = read_beat(src + GRACE_WORD_BYTES * k, npix - GRACE_WORD_BYTES * k);
            if (++k == rw) {
                k = 0;
                ++po;
            }
        }
    }
}

// ---- store: the output tile, one beat a cycle -------------------------------------------
void store_output(int8_t *y, const layer_t &L, const tile_t &T,
                  const grace_word_t outb[CONV_PE_CO][OUT_WORDS]) {
    const int32_t npix = T.nrows * L.wo;
STORE_LANE:
    for (int32_t po = 0; po < T.lanes; ++po) {
        int8_t *dst = y + ((int64_t)(T.c0 + po) * L.ho + T.oy0) * L.wo;
    STORE_WORD:
        for (int32_t j = 0; j < grace_words(npix); ++j) {
#pragma HLS PIPELINE II = 1
            const grace_word_t v = outb[po][j];
        STORE_BYTE:
            for (int32_t b = 0; b < GRACE_WORD_BYTES; ++b) {
#pragma HLS UNROLL
                if (GRACE_WORD_BYTES * j + b < npix) dst[GRACE_WORD_BYTES * j + b] = grace_byte(v, b);
            }
        }
    }
}

// The 8 lanes of channel group cig for the P pixels (ox0 .. ox0+P-1) of one output row at
// kernel tap (ky, kx). Their real columns span at most 8 (P = 8 at stride 1; P = 4 at
// stride 2: 7; upsample: 5), so they
// lie in at most two consecutive words of the row: two reads of each lane bank (its two
// BRAM ports), then a byte select per pixel. Zero outside the (virtual) input.
inline void read_group(const grace_word_t inb[CONV_PE_CI][IN_WORDS], const layer_t &L,
                       const tile_t &T, int32_t cig, int32_t vy, int32_t vx0, int32_t P,
                       int8_t out[CONV_MAX_PIX_GROUP][CONV_PE_CI]) {
#pragma HLS INLINE
    const bool row_in = vy >= 0 && vy < L.hv;
    const int32_t base = row_in ? (cig * L.rows_cap + (L.up ? vy >> 1 : vy) - T.ry_lo) * L.wpr : 0;
    // the first in-image column of the group -> the first of the two words
    const int32_t vfirst = vx0 < 0 ? 0 : vx0;
    const int32_t j0 = (L.up ? vfirst >> 1 : vfirst) >> 3;
    const bool two = j0 + 1 < L.wpr;
    grace_word_t w0[CONV_PE_CI], w1[CONV_PE_CI];
READ_PORTS:
    for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
        w0[pi] = row_in ? inb[pi][base + j0] : 0;                 // port A
        w1[pi] = row_in && two ? inb[pi][base + j0 + 1] : 0;      // port B
    }
READ_PIX:
    for (int32_t u = 0; u < CONV_MAX_PIX_GROUP; ++u) {
#pragma HLS UNROLL
        const int32_t vx = vx0 + u * L.s;
        const bool inside = u < P && row_in && vx >= 0 && vx < L.wv;
        const int32_t rx = L.up ? vx >> 1 : vx;
        assert(!inside || (rx >> 3) == j0 || (rx >> 3) == j0 + 1);
    READ_PIX_LANE:
        for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
            out[u][pi] = inside ? grace_byte((rx >> 3) == j0 ? w0[pi] : w1[pi], rx & 7) : (int8_t)0;
        }
    }
}

// Pixels a dense pass computes at once: the 32 PE rows are P pixels x 32/P output channels
// (8 x 4 for cout <= 4 at stride 1, 4 x 8 for cout <= 8, 2 x 16 for cout <= 16, else
// 1 x 32); the weight banks hold the channels' weights once per pixel (conv_engine's
// weight load). 8 pixels at stride 2 would span 15 columns, i.e. up to three words.
inline int32_t pixel_group(int32_t cout, int32_t stride) {
    return cout <= CONV_PE_CO / 8 && stride == 1 ? 8 : cout <= CONV_PE_CO / 4 ? 4 : cout <= CONV_PE_CO / 2 ? 2 : 1;
}

// Per lane: collect output bytes into a word, write it when full or at the tile's end.
// (In hardware the 32 words completed at a word boundary drain one a cycle through a
// 32-word flush register into the single out_buf memory of the half: 8 pixels take at
// least `lanes` cycles, see the epilogue slots, so the drain keeps up.)
inline void put_output(grace_word_t &pack, grace_word_t outb_lane[OUT_WORDS], int32_t i, int32_t npix, int8_t v) {
#pragma HLS INLINE
    pack = grace_set_byte(pack, i & 7, v);
    if ((i & 7) == 7 || i == npix - 1) outb_lane[i >> 3] = pack;
}

// ---- compute: dense conv on the 32 x 8 packed PE array + fused epilogue ----------------
// One flattened pipeline (II 1) over (pixel group, slot) of the whole tile. A group is P
// pixels of one output row; it takes `slots` = max(MAC slots, epilogue slots) cycles:
// MAC slot (cig, ky, kx) of group g, and epilogue slot e (8 outputs) of group g-1.
void compute_dense(const layer_t &L, const tile_t &T, const grace_word_t inb[CONV_PE_CI][IN_WORDS],
                   const grace_word_t wb[CONV_PE_CO][W_WORDS], const group_params_t &G,
                   const grace_word_t resb[CONV_PE_CO][OUT_WORDS],
                   grace_word_t outb[CONV_PE_CO][OUT_WORDS]) {
    const int32_t npix = T.nrows * L.wo;
    const int32_t P = pixel_group(L.cout, L.s);
    const int32_t cpg = CONV_PE_CO / P;               // PE rows (channels) a pixel
    const int32_t cpg_sh = P == 8 ? 2 : P == 4 ? 3 : P == 2 ? 4 : 5;  // log2(cpg): PE row -> pixel
    const int32_t gpr = ceil_div(L.wo, P);            // groups a row
    const int32_t n_grp = T.nrows * gpr;
    const int32_t n_mac = L.cig_n * L.kk;             // MAC slots a group
    const int32_t n_epi = ceil_div(P * T.lanes, EPI_LANES);  // epilogue slots a group
    const int32_t slots = n_mac > n_epi ? n_mac : n_epi;
    int32_t acc[CONV_PE_CO];   // the group being accumulated
    int32_t fin[CONV_PE_CO];   // the previous group, in the epilogue
    grace_word_t opack[CONV_PE_CO], rpack[CONV_PE_CO];
#pragma HLS ARRAY_PARTITION variable = acc complete
#pragma HLS ARRAY_PARTITION variable = fin complete
#pragma HLS ARRAY_PARTITION variable = opack complete
#pragma HLS ARRAY_PARTITION variable = rpack complete
    // Loop counters (incremented, no division in the pipeline).
    int32_t grp = 0, slot = 0, oyl = 0, ox0 = 0, cig = 0, ky = 0, kx = 0;
    int32_t fin_i = 0, fin_n = 0;  // first flat pixel index and pixel count of group grp-1
    int32_t eu = 0, ec = 0;        // epilogue: pixel in the group, channel of the next output
    const int32_t n_iter = (n_grp + 1) * slots;  // + one group time to drain the epilogue
DENSE_PIPE:
    for (int32_t it = 0; it < n_iter; ++it) {
#pragma HLS PIPELINE II = 1
        // MAC slot (cig, ky, kx) of group `grp`.
        if (grp < n_grp && slot < n_mac) {
            int8_t a[CONV_MAX_PIX_GROUP][CONV_PE_CI];
            read_group(inb, L, T, cig, (T.oy0 + oyl) * L.s + ky - L.p, ox0 * L.s + kx - L.p, P, a);
            const int32_t widx = (T.cot * L.cig_n + cig) * L.kk + ky * L.k + kx;
        PE_PAIR:
            for (int32_t q = 0; q < N_PAIRS; ++q) {
#pragma HLS UNROLL
                const int32_t u = (2 * q) >> cpg_sh;  // the pixel of this DSP column (both rows)
                int32_t lo_sum = 0, hi_sum = 0;
            PE_CASCADE:
                for (int32_t g = 0; g < CONV_PE_CI / GRACE_PACK_SUM; ++g) {
#pragma HLS UNROLL
                    int64_t p = 0;  // 48-bit cascade of GRACE_PACK_SUM DSPs
                PE_DSP:
                    for (int32_t d = 0; d < GRACE_PACK_SUM; ++d) {
#pragma HLS UNROLL
                        const int32_t pi = g * GRACE_PACK_SUM + d;
                        p += grace_dsp2(grace_byte(wb[2 * q][widx], pi), grace_byte(wb[2 * q + 1][widx], pi), a[u][pi]);
                    }
                    int32_t lo, hi;
                    grace_unpack2(p, &lo, &hi);
                    lo_sum += lo;
                    hi_sum += hi;
                }
                const int32_t b0 = slot == 0 ? G.b[(2 * q) & (cpg - 1)] : acc[2 * q];
                const int32_t b1 = slot == 0 ? G.b[(2 * q + 1) & (cpg - 1)] : acc[2 * q + 1];
                acc[2 * q] = b0 + lo_sum;
                acc[2 * q + 1] = b1 + hi_sum;
            }
        }
        // Epilogue slot: outputs slot*8 .. slot*8+7 of group `grp - 1`, output o = u * lanes + c.
        if (grp >= 1 && slot < n_epi) {
            if (slot == 0) eu = ec = 0;
        DENSE_EPI:
            for (int32_t e = 0; e < EPI_LANES; ++e) {
#pragma HLS UNROLL
                // output slot * 8 + e = eu * lanes + ec: pixel eu of the group, channel ec
                if (eu < fin_n) {
                    const int32_t i = fin_i + eu, c = ec;
                    if ((i & 7) == 0) rpack[c] = L.res ? resb[c][i >> 3] : 0;
                    const int8_t r = grace_byte(rpack[c], i & 7);
                    put_output(opack[c], outb[c], i, npix, epilogue(fin[eu * cpg + c], G.m[c], G.s[c], L, r));
                }
                if (++ec == T.lanes) {
                    ec = 0;
                    ++eu;
                }
            }
        }
        // Advance the counters; at a group's last slot its sums move to the epilogue.
        if (++slot == slots) {
            slot = 0;
        FIN:
            for (int32_t po = 0; po < CONV_PE_CO; ++po) {
#pragma HLS UNROLL
                fin[po] = acc[po];
            }
            fin_i = oyl * L.wo + ox0;
            fin_n = L.wo - ox0 < P ? L.wo - ox0 : P;
            ++grp;
            ox0 += P;
            if (ox0 >= L.wo) {
                ox0 = 0;
                ++oyl;
            }
        }
        if (slot < n_mac) {  // the tap of the next MAC slot
            if (slot == 0) {
                cig = ky = kx = 0;
            } else if (++kx == L.k) {
                kx = 0;
                if (++ky == L.k) {
                    ky = 0;
                    ++cig;
                }
            }
        }
    }
}

// ---- compute: depthwise conv, 8 channels x k*k taps a cycle + fused epilogue -----------
// Window registers per row ky: two words per lane (win0 = word j0, win1 = word j0 + 1).
void compute_depthwise(const layer_t &L, const tile_t &T, const grace_word_t inb[CONV_PE_CI][IN_WORDS],
                       const grace_word_t wb[CONV_PE_CO][W_WORDS], const group_params_t &G,
                       const grace_word_t resb[CONV_PE_CO][OUT_WORDS],
                       grace_word_t outb[CONV_PE_CO][OUT_WORDS]) {
    const int32_t npix = T.nrows * L.wo;
DW_GROUP:
    for (int32_t g = 0; g < CONV_PE_CO / CONV_PE_CI; ++g) {
        if (g * CONV_PE_CI >= T.lanes) break;
        const int32_t c0 = T.c0 + g * CONV_PE_CI;  // a multiple of 8: one lane group
        const int32_t cig = c0 / CONV_PE_CI;
        grace_word_t opack[CONV_PE_CI], rpack[CONV_PE_CI];
#pragma HLS ARRAY_PARTITION variable = opack complete
#pragma HLS ARRAY_PARTITION variable = rpack complete
    DW_ROW:
        for (int32_t oyl = 0; oyl < T.nrows; ++oyl) {
            const int32_t oy = T.oy0 + oyl;
            grace_word_t win0[3][CONV_PE_CI], win1[3][CONV_PE_CI];
#pragma HLS ARRAY_PARTITION variable = win0 complete dim = 0
#pragma HLS ARRAY_PARTITION variable = win1 complete dim = 0
            int32_t j0[3], due[3], addr[3];
            bool row_in[3];
#pragma HLS ARRAY_PARTITION variable = j0 complete
#pragma HLS ARRAY_PARTITION variable = due complete
            // Row prologue: words 0 and 1 of each window row (2 reads a row, 3 cycles).
        DW_ROW_START:
            for (int32_t ky = 0; ky < L.k; ++ky) {
                const int32_t vy = oy * L.s + ky - L.p;
                row_in[ky] = vy >= 0 && vy < L.hv;
                addr[ky] = row_in[ky] ? (cig * L.rows_cap + (L.up ? vy >> 1 : vy) - T.ry_lo) * L.wpr : 0;
                j0[ky] = 0;
                due[ky] = -1;  // no fetch pending
            DW_ROW_LANES:
                for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
                    win0[ky][pi] = row_in[ky] ? inb[pi][addr[ky]] : 0;
                    win1[ky][pi] = row_in[ky] && L.wpr > 1 ? inb[pi][addr[ky] + 1] : 0;
                }
            }
        DW_COL:
            for (int32_t ox = 0; ox < L.wo; ++ox) {
#pragma HLS PIPELINE II = 1
                // Leftmost real column of the window inside the image -> the word it starts in.
                const int32_t vlo = ox * L.s - L.p < 0 ? 0 : ox * L.s - L.p;
                const int32_t jw = (L.up ? vlo >> 1 : vlo) >> 3;
            DW_FETCH:
                for (int32_t ky = 0; ky < L.k; ++ky) {
                    if (jw > j0[ky]) {  // crossed into the next word: shift, fetch later
                        assert(jw == j0[ky] + 1 && due[ky] < 0);
                        j0[ky] = jw;
                    DW_SHIFT:
                        for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) win0[ky][pi] = win1[ky][pi];
                        due[ky] = ky;  // row ky fetches ky cycles later: one read a cycle
                    }
                    if (due[ky] == 0) {
                        const bool have = row_in[ky] && j0[ky] + 1 < L.wpr;
                    DW_READ:
                        for (int32_t pi = 0; pi < CONV_PE_CI; ++pi)
                            win1[ky][pi] = have ? inb[pi][addr[ky] + j0[ky] + 1] : 0;
                    }
                    if (due[ky] >= 0) --due[ky];
                }
                int32_t acc[CONV_PE_CI];
#pragma HLS ARRAY_PARTITION variable = acc complete
            DW_LANE:
                for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
                    int32_t sum = G.b[g * CONV_PE_CI + pi];
                DW_TAP_Y:
                    for (int32_t ky = 0; ky < L.k; ++ky) {
                    DW_TAP_X:
                        for (int32_t kx = 0; kx < L.k; ++kx) {
                            const int32_t vy = oy * L.s + ky - L.p, vx = ox * L.s + kx - L.p;
                            const bool inside = vy >= 0 && vy < L.hv && vx >= 0 && vx < L.wv;
                            const int32_t rx = L.up ? vx >> 1 : vx;
                            int8_t a = 0;
                            if (inside) {
                                // The word must be in the registers (the fetch schedule above).
                                assert((rx >> 3) == j0[ky] || ((rx >> 3) == j0[ky] + 1 && due[ky] < 0));
                                a = grace_byte((rx >> 3) == j0[ky] ? win0[ky][pi] : win1[ky][pi], rx & 7);
                            }
                            // low product of a DSP (its high weight is 0)
                            sum += (int32_t)grace_byte(wb[ky * L.k + kx][cig], pi) * (int32_t)a;
                        }
                    }
                    acc[pi] = sum;
                }
                const int32_t i = oyl * L.wo + ox;
            DW_EPI:
                for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
                    const int32_t po = g * CONV_PE_CI + pi;
                    if (po < T.lanes) {
                        if ((i & 7) == 0) rpack[pi] = L.res ? resb[po][i >> 3] : 0;
                        const int8_t r = grace_byte(rpack[pi], i & 7);
                        put_output(opack[pi], outb[po], i, npix, epilogue(acc[pi], G.m[po], G.s[po], L, r));
                    }
                }
            }
        }
    }
}

}  // namespace

int32_t conv_check(const grace_conv_cfg_t *cfg, int32_t *tile_rows) {
    const grace_conv_cfg_t &C = *cfg;
    const int32_t flags[4] = {C.depthwise, C.upsample, C.relu, C.residual};
    for (int32_t i = 0; i < 4; ++i)
        if (flags[i] != 0 && flags[i] != 1) return -GRACE_BAD_FLAG;
    if (C.k != 1 && C.k != 3) return -GRACE_BAD_KERNEL;
    if (C.stride != 1 && C.stride != 2) return -GRACE_BAD_STRIDE;
    if (C.cin < 1 || C.cin > CONV_MAX_CH || C.cout < 1 || C.cout > CONV_MAX_CH) return -GRACE_BAD_CHANNELS;
    if (C.depthwise && C.cin != C.cout) return -GRACE_BAD_DEPTHWISE;
    if (C.upsample && C.stride != 1) return -GRACE_BAD_UPSAMPLE;
    if (C.h < 1 || C.h > CONV_MAX_H || C.w < 1 || C.w > CONV_MAX_W) return -GRACE_BAD_SIZE;
    const int32_t wo = out_size(C.w, C.k, C.stride, C.upsample);
    if (wo > CONV_MAX_W_OUT) return -GRACE_BAD_SIZE;
    const int32_t ci_pad = ceil_div(C.cin, CONV_PE_CI) * CONV_PE_CI;
    const int32_t w_bytes = C.depthwise ? ci_pad : ceil_div(C.cout, CONV_PE_CO) * ci_pad * C.k * C.k;
    if (w_bytes > CONV_W_BANK_BYTES) return -GRACE_WEIGHTS_TOO_BIG;
    if (!tile_fits(1, ci_pad, C.k, C.stride, C.upsample, C.h, C.w, wo)) return -GRACE_TILE_TOO_BIG;
    int32_t tr = C.tile_rows;
    if (tr == 0) {
        tr = 1;
        while (tr < CONV_MAX_TILE_ROWS && tile_fits(tr + 1, ci_pad, C.k, C.stride, C.upsample, C.h, C.w, wo)) ++tr;
    } else if (tr < 1 || tr > CONV_MAX_TILE_ROWS || !tile_fits(tr, ci_pad, C.k, C.stride, C.upsample, C.h, C.w, wo)) {
        return -GRACE_BAD_TILE_ROWS;
    }
    if (C.residual && (!grace_requant_ok(C.res_m, C.res_s) || C.res_s <= GRACE_RES_GUARD)) return -GRACE_BAD_REQUANT;
    if (tile_rows) *tile_rows = tr;
    return GRACE_OK;
}

int32_t conv_engine(const int8_t *x, const int8_t *w, const int32_t *params, const int8_t *res,
                    int8_t *y, const int8_t *x1, grace_conv_cfg_t cfg) {
#pragma HLS INTERFACE m_axi port = x offset = slave bundle = gmem0 max_read_burst_length = 64
#pragma HLS INTERFACE m_axi port = w offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = params offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = res offset = slave bundle = gmem2
#pragma HLS INTERFACE m_axi port = y offset = slave bundle = gmem2 max_write_burst_length = 64
#pragma HLS INTERFACE m_axi port = x1 offset = slave bundle = gmem1 max_read_burst_length = 64
#pragma HLS INTERFACE s_axilite port = x bundle = control
#pragma HLS INTERFACE s_axilite port = w bundle = control
#pragma HLS INTERFACE s_axilite port = params bundle = control
#pragma HLS INTERFACE s_axilite port = res bundle = control
#pragma HLS INTERFACE s_axilite port = y bundle = control
#pragma HLS INTERFACE s_axilite port = x1 bundle = control
#pragma HLS INTERFACE s_axilite port = cfg bundle = control
#pragma HLS INTERFACE s_axilite port = return bundle = control
    // On-chip buffers (static: BRAM/LUTRAM in hardware, off the stack in C simulation).
    static grace_word_t in_buf[2][CONV_PE_CI][IN_WORDS];
#pragma HLS ARRAY_PARTITION variable = in_buf complete dim = 1
#pragma HLS ARRAY_PARTITION variable = in_buf complete dim = 2
    static grace_word_t w_buf[CONV_PE_CO][W_WORDS];
#pragma HLS ARRAY_PARTITION variable = w_buf complete dim = 1
    static grace_word_t res_buf[2][CONV_PE_CO][OUT_WORDS];  // one 4096-word memory per half
#pragma HLS ARRAY_PARTITION variable = res_buf complete dim = 1
    static grace_word_t out_buf[2][CONV_PE_CO][OUT_WORDS];
#pragma HLS ARRAY_PARTITION variable = out_buf complete dim = 1
    static int32_t bias_tab[CONV_MAX_CH], m_tab[CONV_MAX_CH], s_tab[CONV_MAX_CH];
#pragma HLS BIND_STORAGE variable = bias_tab type = ram_1p impl = lutram
#pragma HLS BIND_STORAGE variable = m_tab type = ram_1p impl = lutram
#pragma HLS BIND_STORAGE variable = s_tab type = ram_1p impl = lutram

    int32_t tr = 0;
    const int32_t status = conv_check(&cfg, &tr);
    if (status != GRACE_OK) return status;

    layer_t L;
    L.cin = cfg.cin;
    L.cout = cfg.cout;
    L.h = cfg.h;
    L.w = cfg.w;
    L.k = cfg.k;
    L.kk = cfg.k * cfg.k;
    L.s = cfg.stride;
    L.p = cfg.k / 2;
    L.up = cfg.upsample;
    L.hv = L.up ? 2 * L.h : L.h;
    L.wv = L.up ? 2 * L.w : L.w;
    L.ho = out_size(L.h, L.k, L.s, L.up);
    L.wo = out_size(L.w, L.k, L.s, L.up);
    L.dw = cfg.depthwise;
    L.relu = cfg.relu;
    L.res = cfg.residual;
    L.res_m = cfg.res_m;
    L.res_s = cfg.res_s;
    L.tr = tr;
    L.rows_cap = tile_input_rows(tr, L.k, L.s, L.up, L.h);
    L.wpr = grace_words(L.w);
    L.cig_n = ceil_div(L.cin, CONV_PE_CI);
    L.n_cot = ceil_div(L.cout, CONV_PE_CO);
    L.gco = ceil_div(ceil_div(L.cout, L.n_cot), CONV_PE_CI) * CONV_PE_CI;
    L.n_rt = ceil_div(L.ho, L.tr);

    // Per-channel epilogue parameters (12 bytes a channel: II 2 on the 64-bit port);
    // reject out-of-range ones before writing anything.
LOAD_PARAMS:
    for (int32_t co = 0; co < L.n_cot * CONV_PE_CO; ++co) {
#pragma HLS PIPELINE II = 2
        const bool real = co < L.cout;
        const int32_t b = real ? params[3 * co] : 0;
        const int32_t m = real ? params[3 * co + 1] : 0;
        const int32_t s = real ? params[3 * co + 2] : 31;  // unused lanes: any valid shift
        if (!grace_requant_ok(m, s) || (L.res && s <= GRACE_RES_GUARD)) return -GRACE_BAD_REQUANT;
        if (b > GRACE_BIAS_LIMIT || b < -GRACE_BIAS_LIMIT) return -GRACE_BAD_BIAS;
        bias_tab[co] = b;
        m_tab[co] = m;
        s_tab[co] = s;
    }

    // Weights into the banks, 8 lanes a word. Dense: bank po = co % 32, word
    // ((co / 32) * cig_n + cig) * kk + tap holds input lanes cig*8 .. cig*8+7; depthwise:
    // bank = tap, word cig holds channels cig*8 .. cig*8+7. Unused lanes hold 0. One block of
    // 8 lanes x kk taps (kk beats, contiguous in DDR) goes through a kk-word staging
    // register (the DDR order is tap-fastest, the banks want lane-fastest), kk beats in,
    // kk words out: II 1 a beat.
    const int32_t n_blocks_co = L.dw ? 1 : L.n_cot * CONV_PE_CO;
LOAD_W_CO:
    for (int32_t co = 0; co < n_blocks_co; ++co) {
    LOAD_W_CIG:
        for (int32_t cig = 0; cig < L.cig_n; ++cig) {
            grace_word_t stage[9];
#pragma HLS ARRAY_PARTITION variable = stage complete
        LOAD_W_CLEAR:
            for (int32_t t = 0; t < 9; ++t) stage[t] = 0;
            // dense: weights of (co, cig*8 + lane, tap); depthwise: of (cig*8 + lane, tap)
            const int32_t n_lane = L.cin - cig * CONV_PE_CI < CONV_PE_CI ? L.cin - cig * CONV_PE_CI : CONV_PE_CI;
            // bank po = co % 32 of group cot = co / 32 holds channel cot * gco + po (po < gco);
            // with P-pixel groups (cout <= 16, one group), channel po % (32 / P)
            const int32_t P = pixel_group(L.cout, L.s), po = co % CONV_PE_CO, cot = co / CONV_PE_CO;
            const int32_t src_co = P > 1 ? po % (CONV_PE_CO / P) : cot * L.gco + po;
            const bool real = L.dw || (src_co < L.cout && (P > 1 || po < L.gco));
            const int8_t *src = L.dw ? w + (int64_t)cig * CONV_PE_CI * L.kk
                                     : w + ((int64_t)src_co * L.cin + cig * CONV_PE_CI) * L.kk;
            const int32_t n_bytes = real ? n_lane * L.kk : 0;
        LOAD_W_BEAT:
            for (int32_t j = 0; j < L.kk; ++j) {
#pragma HLS PIPELINE II = 1
            LOAD_W_BYTE:
                for (int32_t b = 0; b < GRACE_WORD_BYTES; ++b) {
#pragma HLS UNROLL
                    const int32_t e = GRACE_WORD_BYTES * j + b;  // = lane * kk + tap
                    if (e < n_bytes) {
                        const int8_t v = src[e];
                        if (v < GRACE_W_MIN) return -GRACE_BAD_WEIGHT;
                        stage[e % L.kk] = grace_set_byte(stage[e % L.kk], e / L.kk, v);
                    }
                }
            }
        LOAD_W_PUT:
            for (int32_t t = 0; t < L.kk; ++t) {
#pragma HLS PIPELINE II = 1
                if (L.dw)
                    w_buf[t][cig] = stage[t];
                else
                    w_buf[co % CONV_PE_CO][((co / CONV_PE_CO) * L.cig_n + cig) * L.kk + t] = stage[t];
            }
        }
    }

    // Software-pipelined tile loop: load (t) || compute (t-1) || store (t-2), ping-pong.
    // The input of row tile rt (half rt & 1) loads in n_cot chunks of channels, chunk q at
    // step (rt-1) * n_cot + q + 1, i.e. while the n_cot groups of row tile rt-1 compute from
    // the other half (row tile 0 loads whole at step 0). The residual of tile t loads at t.
    const int32_t n_tiles = L.n_rt * L.n_cot;
    const int32_t ci_pad = L.cig_n * CONV_PE_CI;
    const int32_t chunk = ceil_div(ci_pad, L.n_cot);
    // The {bias, M, S} of tile t's group go into registers GP[t & 1] in the load stage of
    // step t (after its input/residual loop), so the compute stage of step t+1 starts at once.
    group_params_t GP[2];
#pragma HLS ARRAY_PARTITION variable = GP complete
#pragma HLS ARRAY_PARTITION variable = GP[0].b complete
#pragma HLS ARRAY_PARTITION variable = GP[0].m complete
#pragma HLS ARRAY_PARTITION variable = GP[0].s complete
#pragma HLS ARRAY_PARTITION variable = GP[1].b complete
#pragma HLS ARRAY_PARTITION variable = GP[1].m complete
#pragma HLS ARRAY_PARTITION variable = GP[1].s complete
TILE_LOOP:
    for (int32_t t = 0; t < n_tiles + 2; ++t) {
        if (t < n_tiles) {
            const tile_t T = make_tile(L, t);
            const int32_t rt_in = t == 0 ? 0 : (t - 1) / L.n_cot + 1;  // the row tile loading
            const int32_t q = t == 0 ? 0 : (t - 1) % L.n_cot;
            int32_t c_lo = t == 0 ? 0 : q * chunk, c_hi = t == 0 ? ci_pad : (q + 1) * chunk;
            if (c_hi > ci_pad) c_hi = ci_pad;
            if (rt_in >= L.n_rt || c_lo > c_hi) c_lo = c_hi = 0;  // nothing left to load
            const tile_t TI = make_tile(L, rt_in < L.n_rt ? rt_in * L.n_cot : 0);
            load_tile(x, x1, res, L, TI, c_lo, c_hi, T, in_buf[rt_in & 1], res_buf[t & 1]);
            group_params_t &G = GP[t & 1];
        GROUP_PARAMS:  // tile t's 32 {bias, M, S} from LUTRAM into registers
            for (int32_t po = 0; po < CONV_PE_CO; ++po) {
#pragma HLS PIPELINE II = 1
                const int32_t co = T.c0 + po;
                G.b[po] = bias_tab[co];
                G.m[po] = m_tab[co];
                G.s[po] = s_tab[co];
            }
        }
        if (t >= 1 && t <= n_tiles) {
            const tile_t T = make_tile(L, t - 1);
            const group_params_t &G = GP[(t - 1) & 1];
            if (L.dw)
                compute_depthwise(L, T, in_buf[T.rt & 1], w_buf, G, res_buf[(t - 1) & 1], out_buf[(t - 1) & 1]);
            else
                compute_dense(L, T, in_buf[T.rt & 1], w_buf, G, res_buf[(t - 1) & 1], out_buf[(t - 1) & 1]);
        }
        if (t >= 2) store_output(y, L, make_tile(L, t - 2), out_buf[t & 1]);
    }
    return GRACE_OK;
}
