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
// The output is cut into tiles of `tile_rows` full-width output rows x 16 output channels.
// Per layer, the weights and per-channel {bias, M, S} are loaded once into on-chip banks.
// Per row tile, the input rows it needs (all input channels, full width, rows of the
// *real* input when upsampling) are loaded into one half of a double-buffered input tile
// buffer. The tile loop is software-pipelined over three stages that work on different
// buffer halves and so run concurrently in hardware (the classic HLS ping-pong pattern):
//     step t:  load input of row tile t (when it starts one) + load residual tile t
//              || compute tile t-1 (PE array + fused epilogue) || store tile t-2
//
// ---- PE array and DSP sizing (xc7z020: 220 DSP48E1) ------------------------------------
//  * Dense: 16 output channels x 8 input channels = 128 int8 x int8 MACs per cycle, one
//    DSP48E1 each (25x18 multiplier; the adds go into the DSP post-adders / a LUT tree).
//    One cycle per (8-input-channel group, kernel tap): a 3x3 conv with cin=cout=96 takes
//    12 * 9 = 108 cycles per 16 output values of one pixel.
//  * Depthwise: the same multipliers as 9 taps x 8 channels (72 of the 128 in use): one
//    output pixel of 8 channels per cycle from a 3x3 window register that shifts by the
//    stride (1 or 2 new columns per cycle, one word per row bank).
//  * Epilogue: acc (32 bit) x M (31 bit) needs 4 DSP48E1; the residual term r (8 bit) x
//    res_m (31 bit) 2 more. Eight epilogue lanes (48 DSP) keep up with the depthwise path
//    (8 outputs a cycle) and with dense layers of >= 2 cycles per pixel and channel group.
//  * Total conv engine ~176 DSP; the grid-sample engine ~10 (4 tap multipliers, the
//    occlusion multiply, a 4-DSP requant); ~186 of 220 (85 %), the rest left for address
//    arithmetic that HLS may map to DSPs. A 16x12 array (192 DSP) would not fit with the
//    epilogues; 16x8 is the largest power-of-two array that does.
//
// ---- BRAM sizing (140 BRAM36 of 4 KiB for 8-bit data) ----------------------------------
//  in_buf  2 x 64 KiB, 8 banks (one per input-channel lane)             32 BRAM36
//  w_buf   16 banks x 8 KiB (one per PE row; depthwise: one per tap)     32 BRAM36
//  out_buf, res_buf  2 x 2 x 16 lanes x 1 KiB                             16 BRAM36
//  bias/M/S  3 x 1024 x int32                                              3 BRAM36
//  conv engine ~83 BRAM36; the grid-sample engine ~35 (planes 2 x 64 KiB + rows) -> ~118 of 140.
//
// ---- Limits (rejected with -status, see grace_hw.h; the compiler splits bigger layers)
//  cin, cout <= 1024; h <= 1024; w, w_out <= 256; weights per bank <= 8 KiB
//  (ceil(cout/16) * ceil(cin/8)*8 * k*k bytes, dense); the input rows of one output row
//  <= 64 KiB (ceil(cin/8)*8 * rows * w).
#include "conv_engine.h"

namespace {

// Derived per-layer values (computed once from the configuration registers).
struct layer_t {
    int32_t cin, cout, h, w, ho, wo, hv, wv;
    int32_t k, kk, s, p;
    int32_t dw, relu, up, res, res_m, res_s;
    int32_t tr;        // output rows per tile
    int32_t rows_cap;  // input rows reserved per channel group in the input tile
    int32_t cig_n;     // 8-channel input groups
    int32_t n_cot;     // 16-channel output groups
    int32_t n_rt;      // row tiles
};

struct tile_t {
    int32_t rt, cot;   // row tile, output-channel group
    int32_t oy0, nrows;
    int32_t ry_lo, ry_n;  // real input rows [ry_lo, ry_lo + ry_n)
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
    return ci_pad * tile_input_rows(tr, k, s, up, h) * w <= CONV_IN_BUF_BYTES &&
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
    return T;
}

inline int8_t epilogue(int32_t acc, int32_t m, int32_t s, const layer_t &L, int8_t r) {
#pragma HLS INLINE
    return grace_epilogue(acc, m, s, L.relu, L.res, r, L.res_m, L.res_s);
}

// ---- load: the input rows of one row tile, all channels, into one half of in_buf ------
// Layout: [channel group][row][x][8 channel lanes]; lanes of channels >= cin hold 0.
void load_input(const int8_t *x, const layer_t &L, const tile_t &T, int8_t inb[CONV_IN_BUF_BYTES]) {
LOAD_IN_CH:
    for (int32_t c = 0; c < L.cig_n * CONV_PE_CI; ++c) {
    LOAD_IN_ROW:
        for (int32_t r = 0; r < T.ry_n; ++r) {
            const int32_t base = (((c / CONV_PE_CI) * L.rows_cap + r) * L.w) * CONV_PE_CI + c % CONV_PE_CI;
            const int8_t *src = x + ((int64_t)c * L.h + T.ry_lo + r) * L.w;
        LOAD_IN_X:
            for (int32_t xx = 0; xx < L.w; ++xx) {
#pragma HLS PIPELINE II = 1
                inb[base + xx * CONV_PE_CI] = c < L.cin ? src[xx] : (int8_t)0;
            }
        }
    }
}

// ---- load: the residual tile (16 channels x nrows x wo) -------------------------------
void load_residual(const int8_t *res, const layer_t &L, const tile_t &T,
                   int8_t resb[CONV_PE_CO][CONV_OUT_TILE_PIX]) {
LOAD_RES_LANE:
    for (int32_t po = 0; po < CONV_PE_CO; ++po) {
        const int32_t co = T.cot * CONV_PE_CO + po;
        if (co >= L.cout) break;
        const int8_t *src = res + ((int64_t)co * L.ho + T.oy0) * L.wo;
    LOAD_RES_PIX:
        for (int32_t i = 0; i < T.nrows * L.wo; ++i) {
#pragma HLS PIPELINE II = 1
            resb[po][i] = src[i];
        }
    }
}

// ---- store: the output tile ------------------------------------------------------------
void store_output(int8_t *y, const layer_t &L, const tile_t &T,
                  const int8_t outb[CONV_PE_CO][CONV_OUT_TILE_PIX]) {
STORE_LANE:
    for (int32_t po = 0; po < CONV_PE_CO; ++po) {
        const int32_t co = T.cot * CONV_PE_CO + po;
        if (co >= L.cout) break;
        int8_t *dst = y + ((int64_t)co * L.ho + T.oy0) * L.wo;
    STORE_PIX:
        for (int32_t i = 0; i < T.nrows * L.wo; ++i) {
#pragma HLS PIPELINE II = 1
            dst[i] = outb[po][i];
        }
    }
}

// One 8-channel word of the (virtual, zero-padded) input at virtual position (vy, vx).
inline void read_word(const int8_t inb[CONV_IN_BUF_BYTES], const layer_t &L, const tile_t &T,
                      int32_t cig, int32_t vy, int32_t vx, int8_t out[CONV_PE_CI]) {
#pragma HLS INLINE
    const bool inside = vy >= 0 && vy < L.hv && vx >= 0 && vx < L.wv;
    const int32_t ry = (L.up ? vy >> 1 : vy) - T.ry_lo;
    const int32_t rx = L.up ? vx >> 1 : vx;
    const int32_t base = inside ? ((cig * L.rows_cap + ry) * L.w + rx) * CONV_PE_CI : 0;
READ_LANE:
    for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) out[pi] = inside ? inb[base + pi] : (int8_t)0;
}

// ---- compute: dense conv on the 16 x 8 PE array + fused epilogue -----------------------
void compute_dense(const layer_t &L, const tile_t &T, const int8_t inb[CONV_IN_BUF_BYTES],
                   const int8_t wb[CONV_PE_CO][CONV_W_BANK_BYTES], const int32_t bias[CONV_MAX_CH],
                   const int32_t mul[CONV_MAX_CH], const int32_t shf[CONV_MAX_CH],
                   const int8_t resb[CONV_PE_CO][CONV_OUT_TILE_PIX],
                   int8_t outb[CONV_PE_CO][CONV_OUT_TILE_PIX]) {
    const int32_t co0 = T.cot * CONV_PE_CO;
DENSE_ROW:
    for (int32_t oyl = 0; oyl < T.nrows; ++oyl) {
        const int32_t oy = T.oy0 + oyl;
    DENSE_COL:
        for (int32_t ox = 0; ox < L.wo; ++ox) {
            int32_t acc[CONV_PE_CO];
#pragma HLS ARRAY_PARTITION variable = acc complete
        DENSE_BIAS:
            for (int32_t po = 0; po < CONV_PE_CO; ++po) acc[po] = bias[co0 + po];
        DENSE_CIN:
            for (int32_t cig = 0; cig < L.cig_n; ++cig) {
            DENSE_KY:
                for (int32_t ky = 0; ky < L.k; ++ky) {
                DENSE_KX:
                    for (int32_t kx = 0; kx < L.k; ++kx) {
#pragma HLS LOOP_FLATTEN
#pragma HLS PIPELINE II = 1
                        int8_t word[CONV_PE_CI];
                        read_word(inb, L, T, cig, oy * L.s + ky - L.p, ox * L.s + kx - L.p, word);
                        const int32_t widx = ((T.cot * L.cig_n + cig) * L.kk + ky * L.k + kx) * CONV_PE_CI;
                    PE_ROW:
                        for (int32_t po = 0; po < CONV_PE_CO; ++po) {
#pragma HLS UNROLL
                            int32_t sum = 0;
                        PE_COL:
                            for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
                                sum += (int32_t)wb[po][widx + pi] * (int32_t)word[pi];
                            }
                            acc[po] += sum;
                        }
                    }
                }
            }
        DENSE_EPI:
            for (int32_t po = 0; po < CONV_PE_CO; ++po) {
#pragma HLS UNROLL factor = 8
                const int32_t co = co0 + po;
                if (co < L.cout) {
                    const int32_t i = oyl * L.wo + ox;
                    outb[po][i] = epilogue(acc[po], mul[co], shf[co], L, L.res ? resb[po][i] : (int8_t)0);
                }
            }
        }
    }
}

// ---- compute: depthwise conv, 8 channels x k*k taps a cycle + fused epilogue -----------
void compute_depthwise(const layer_t &L, const tile_t &T, const int8_t inb[CONV_IN_BUF_BYTES],
                       const int8_t wb[CONV_PE_CO][CONV_W_BANK_BYTES],
                       const int32_t bias[CONV_MAX_CH], const int32_t mul[CONV_MAX_CH],
                       const int32_t shf[CONV_MAX_CH],
                       const int8_t resb[CONV_PE_CO][CONV_OUT_TILE_PIX],
                       int8_t outb[CONV_PE_CO][CONV_OUT_TILE_PIX]) {
    const int32_t co0 = T.cot * CONV_PE_CO;
DW_GROUP:
    for (int32_t g = 0; g < CONV_PE_CO / CONV_PE_CI; ++g) {
        const int32_t c0 = co0 + g * CONV_PE_CI;  // a multiple of 8: one input word
        if (c0 >= L.cout) break;
        const int32_t cig = c0 / CONV_PE_CI;
    DW_ROW:
        for (int32_t oyl = 0; oyl < T.nrows; ++oyl) {
            const int32_t oy = T.oy0 + oyl;
            int8_t win[3][3][CONV_PE_CI];  // window registers [ky][kx][lane]
#pragma HLS ARRAY_PARTITION variable = win complete dim = 0
        DW_COL:
            for (int32_t ox = 0; ox < L.wo; ++ox) {
#pragma HLS PIPELINE II = 1
            DW_WIN_Y:
                for (int32_t ky = 0; ky < L.k; ++ky) {
                DW_WIN_X:
                    for (int32_t kx = 0; kx < L.k; ++kx) {
                        if (ox > 0 && kx + L.s < L.k) {  // shift by the stride
                        DW_SHIFT:
                            for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) win[ky][kx][pi] = win[ky][kx + L.s][pi];
                        } else {  // a new column
                            read_word(inb, L, T, cig, oy * L.s + ky - L.p, ox * L.s + kx - L.p, win[ky][kx]);
                        }
                    }
                }
                int32_t acc[CONV_PE_CI];
#pragma HLS ARRAY_PARTITION variable = acc complete
            DW_LANE:
                for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
                    int32_t sum = bias[c0 + pi];
                DW_TAP_Y:
                    for (int32_t ky = 0; ky < L.k; ++ky) {
                    DW_TAP_X:
                        for (int32_t kx = 0; kx < L.k; ++kx) {
                            sum += (int32_t)wb[ky * L.k + kx][c0 + pi] * (int32_t)win[ky][kx][pi];
                        }
                    }
                    acc[pi] = sum;
                }
            DW_EPI:
                for (int32_t pi = 0; pi < CONV_PE_CI; ++pi) {
#pragma HLS UNROLL
                    const int32_t c = c0 + pi;
                    const int32_t po = g * CONV_PE_CI + pi;
                    if (c < L.cout) {
                        const int32_t i = oyl * L.wo + ox;
                        outb[po][i] = epilogue(acc[pi], mul[c], shf[c], L, L.res ? resb[po][i] : (int8_t)0);
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
                    int8_t *y, grace_conv_cfg_t cfg) {
#pragma HLS INTERFACE m_axi port = x offset = slave bundle = gmem0 max_read_burst_length = 64
#pragma HLS INTERFACE m_axi port = w offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = params offset = slave bundle = gmem1
#pragma HLS INTERFACE m_axi port = res offset = slave bundle = gmem2
#pragma HLS INTERFACE m_axi port = y offset = slave bundle = gmem2 max_write_burst_length = 64
#pragma HLS INTERFACE s_axilite port = x bundle = control
#pragma HLS INTERFACE s_axilite port = w bundle = control
#pragma HLS INTERFACE s_axilite port = params bundle = control
#pragma HLS INTERFACE s_axilite port = res bundle = control
#pragma HLS INTERFACE s_axilite port = y bundle = control
#pragma HLS INTERFACE s_axilite port = cfg bundle = control
#pragma HLS INTERFACE s_axilite port = return bundle = control
    // On-chip buffers (static: BRAM in hardware, off the stack in C simulation).
    static int8_t in_buf[2][CONV_IN_BUF_BYTES];
#pragma HLS ARRAY_PARTITION variable = in_buf complete dim = 1
#pragma HLS ARRAY_PARTITION variable = in_buf cyclic factor = 8 dim = 2
    static int8_t w_buf[CONV_PE_CO][CONV_W_BANK_BYTES];
#pragma HLS ARRAY_PARTITION variable = w_buf complete dim = 1
#pragma HLS ARRAY_RESHAPE variable = w_buf cyclic factor = 8 dim = 2
    static int8_t res_buf[2][CONV_PE_CO][CONV_OUT_TILE_PIX];
#pragma HLS ARRAY_PARTITION variable = res_buf complete dim = 1
#pragma HLS ARRAY_PARTITION variable = res_buf complete dim = 2
    static int8_t out_buf[2][CONV_PE_CO][CONV_OUT_TILE_PIX];
#pragma HLS ARRAY_PARTITION variable = out_buf complete dim = 1
#pragma HLS ARRAY_PARTITION variable = out_buf complete dim = 2
    static int32_t bias_buf[CONV_MAX_CH], m_buf[CONV_MAX_CH], s_buf[CONV_MAX_CH];
#pragma HLS ARRAY_PARTITION variable = bias_buf cyclic factor = 16
#pragma HLS ARRAY_PARTITION variable = m_buf cyclic factor = 8
#pragma HLS ARRAY_PARTITION variable = s_buf cyclic factor = 8

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
    L.cig_n = ceil_div(L.cin, CONV_PE_CI);
    L.n_cot = ceil_div(L.cout, CONV_PE_CO);
    L.n_rt = ceil_div(L.ho, L.tr);

    // Per-channel epilogue parameters; reject out-of-range ones before writing anything.
LOAD_PARAMS:
    for (int32_t co = 0; co < L.n_cot * CONV_PE_CO; ++co) {
#pragma HLS PIPELINE II = 3
        const bool real = co < L.cout;
        const int32_t b = real ? params[3 * co] : 0;
        const int32_t m = real ? params[3 * co + 1] : 0;
        const int32_t s = real ? params[3 * co + 2] : 31;  // unused lanes: any valid shift
        if (!grace_requant_ok(m, s) || (L.res && s <= GRACE_RES_GUARD)) return -GRACE_BAD_REQUANT;
        if (b > GRACE_BIAS_LIMIT || b < -GRACE_BIAS_LIMIT) return -GRACE_BAD_BIAS;
        bias_buf[co] = b;
        m_buf[co] = m;
        s_buf[co] = s;
    }

    // Weights into the banks: dense bank po = co % 16 holds [co / 16][cin group][tap][lane];
    // depthwise bank = tap holds [channel]. Unused lanes hold 0.
    const int32_t ci_pad = L.cig_n * CONV_PE_CI;
    if (L.dw) {
    LOAD_W_DW:
        for (int32_t c = 0; c < ci_pad; ++c) {
        LOAD_W_DW_TAP:
            for (int32_t t = 0; t < L.kk; ++t) {
#pragma HLS PIPELINE II = 1
                w_buf[t][c] = c < L.cin ? w[c * L.kk + t] : (int8_t)0;
            }
        }
    } else {
    LOAD_W_CO:
        for (int32_t co = 0; co < L.n_cot * CONV_PE_CO; ++co) {
        LOAD_W_CI:
            for (int32_t ci = 0; ci < ci_pad; ++ci) {
            LOAD_W_TAP:
                for (int32_t t = 0; t < L.kk; ++t) {
#pragma HLS PIPELINE II = 1
                    const int32_t idx = (((co / CONV_PE_CO) * L.cig_n + ci / CONV_PE_CI) * L.kk + t) * CONV_PE_CI + ci % CONV_PE_CI;
                    w_buf[co % CONV_PE_CO][idx] = (co < L.cout && ci < L.cin) ? w[((int64_t)co * L.cin + ci) * L.kk + t] : (int8_t)0;
                }
            }
        }
    }

    // Software-pipelined tile loop: load (t) || compute (t-1) || store (t-2), ping-pong.
    const int32_t n_tiles = L.n_rt * L.n_cot;
TILE_LOOP:
    for (int32_t t = 0; t < n_tiles + 2; ++t) {
        if (t < n_tiles) {
            const tile_t T = make_tile(L, t);
            if (T.cot == 0) load_input(x, L, T, in_buf[T.rt & 1]);
            if (L.res) load_residual(res, L, T, res_buf[t & 1]);
        }
        if (t >= 1 && t <= n_tiles) {
            const tile_t T = make_tile(L, t - 1);
            if (L.dw)
                compute_depthwise(L, T, in_buf[T.rt & 1], w_buf, bias_buf, m_buf, s_buf, res_buf[(t - 1) & 1], out_buf[(t - 1) & 1]);
            else
                compute_dense(L, T, in_buf[T.rt & 1], w_buf, bias_buf, m_buf, s_buf, res_buf[(t - 1) & 1], out_buf[(t - 1) & 1]);
        }
        if (t >= 2) store_output(y, L, make_tile(L, t - 2), out_buf[t & 1]);
    }
    return GRACE_OK;
}
