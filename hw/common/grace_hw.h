// grace_hw.h -- types, limits and arithmetic shared by the gracecodec HLS engines.
//
// The single source of truth for the arithmetic is decoder_fpga/int8_ref.py; this header
// mirrors its constants (ConvLimits, GridLimits, EngineStatus) and its requantisation.
// tests/decoder_fpga/test_csim.py checks the mirror through grace_hw_limits().
//
// Plain fixed-width integer types only (no ap_int): the same sources build with g++ for
// C simulation and with Vitis HLS for synthesis. Signed right shifts are arithmetic
// (guaranteed by g++ and Vitis HLS; by the standard from C++20).
#ifndef GRACE_HW_H
#define GRACE_HW_H

#include <stdint.h>

#define GRACE_HW_ABI_VERSION 3  // 3: grace_conv2d_ports (the conv engine's x1 port)

// ---- status codes (decoder_fpga.int8_ref.EngineStatus); engines return -code ----------
enum grace_status {
    GRACE_OK = 0,
    GRACE_BAD_KERNEL = 1,
    GRACE_BAD_STRIDE = 2,
    GRACE_BAD_CHANNELS = 3,
    GRACE_BAD_SIZE = 4,
    GRACE_BAD_DEPTHWISE = 5,
    GRACE_BAD_UPSAMPLE = 6,
    GRACE_WEIGHTS_TOO_BIG = 7,
    GRACE_TILE_TOO_BIG = 8,
    GRACE_BAD_TILE_ROWS = 9,
    GRACE_BAD_REQUANT = 10,
    GRACE_BAD_BIAS = 11,
    GRACE_BAD_FLAG = 12,
    GRACE_BAD_WEIGHT = 13,
};

// ---- conv engine limits (int8_ref.ConvLimits) -----------------------------------------
#define CONV_PE_CO 32          // PE array rows: output channels per cycle (dense), 2 per DSP
#define CONV_PE_CI 8           // PE array columns: input channels (dense) / channels (dw)
#define CONV_MAX_CH 1024
#define CONV_MAX_H 1024
#define CONV_MAX_W 256
#define CONV_MAX_W_OUT 256
#define CONV_IN_BUF_BYTES 65536  // one half of the double-buffered input tile
#define CONV_W_BANK_BYTES 4096   // each of the CONV_PE_CO weight banks
#define CONV_OUT_TILE_PIX 1024   // tile_rows * w_out, per output-channel lane
#define CONV_MAX_TILE_ROWS 16
#define CONV_MAX_PIX_GROUP 8   // pixels of one dense pass (cout <= 4, stride 1)

// ---- grid-sample engine limits (int8_ref.GridLimits) ----------------------------------
#define GS_MAX_CH 1024
#define GS_MAX_H 256
#define GS_MAX_W 256
#define GS_MAX_H_OUT 1024
#define GS_MAX_W_OUT 1024
#define GS_BANK_BYTES 16384  // each of the 4 parity banks of one half of the plane buffer
#define GS_MAX_PLANES 64
#define GS_FRAC_BITS 6       // grid: int16 pixel coordinates, Q9.6
#define GS_ONE (1 << GS_FRAC_BITS)

#define GRACE_BIAS_LIMIT (1 << 30)
#define GRACE_S_MIN 1
#define GRACE_S_MAX 62
#define GRACE_RES_GUARD 8  // guard bits of the two terms of a fused residual add
#define GRACE_W_MIN (-127) // weights: the packed DSP multipliers take [-127, 127]

// ---- 64-bit data words -------------------------------------------------------------------
// The engines move data as 64-bit words (8 x int8) on chip and 8-byte beats on m_axi.
typedef uint64_t grace_word_t;
#define GRACE_WORD_BYTES 8

static inline int8_t grace_byte(grace_word_t v, int32_t i) { return (int8_t)(uint8_t)(v >> (8 * i)); }

static inline grace_word_t grace_set_byte(grace_word_t v, int32_t i, int8_t b) {
    const grace_word_t m = (grace_word_t)0xff << (8 * i);
    return (v & ~m) | ((grace_word_t)(uint8_t)b << (8 * i));
}

static inline int32_t grace_words(int32_t bytes) { return (bytes + GRACE_WORD_BYTES - 1) / GRACE_WORD_BYTES; }

// ---- two int8 products per DSP48E1 ------------------------------------------------------
// A DSP48E1 multiplies a 25-bit signed operand (the pre-adder D + A) by an 18-bit signed one
// and accumulates in 48 bits (the P register / the PCOUT->PCIN cascade). Two output
// channels share the activation a: the pre-adder forms pk = w_lo + w_hi * 2^17 and the
// multiplier gives a*w_lo + a*w_hi * 2^17. With |w| <= 127, |pk| <= 127 * 2^17 + 127 < 2^24
// fits the 25-bit port (w = -128 with a negative partner would not: GRACE_BAD_WEIGHT), and
// a sum of up to GRACE_PACK_SUM such products keeps the low field inside 17 signed bits:
// 4 * 128 * 127 = 65024 < 2^16. The split takes the low field sign-extended and corrects the
// high field by its sign bit (floor shift + 1 when the low field is negative). Exact for
// every operand in range: tb_conv checks it exhaustively, the csim tests at -128/127/-127.
#define GRACE_PACK_SHIFT 17
#define GRACE_PACK_SUM 4

static inline int64_t grace_dsp2(int8_t w_lo, int8_t w_hi, int8_t a) {
    const int32_t pk = (int32_t)w_lo + (int32_t)w_hi * (1 << GRACE_PACK_SHIFT);  // pre-adder, 25 bit
    return (int64_t)pk * (int64_t)a;                                              // 25 x 18 -> 43 bit
}

static inline void grace_unpack2(int64_t p, int32_t *lo, int32_t *hi) {
    const int32_t f = (int32_t)(p & ((1 << GRACE_PACK_SHIFT) - 1));             // low 17 bits
    *lo = f >= (1 << (GRACE_PACK_SHIFT - 1)) ? f - (1 << GRACE_PACK_SHIFT) : f;  // sign-extended
    *hi = (int32_t)(p >> GRACE_PACK_SHIFT) + (int32_t)((p >> (GRACE_PACK_SHIFT - 1)) & 1);
}

// ---- configurations (the s_axilite argument structs) ----------------------------------
typedef struct {
    int32_t cin, cout;    // channels (depthwise: cin == cout)
    int32_t h, w;         // input height, width (before upsample)
    int32_t k;            // kernel 1 or 3, padding k/2
    int32_t stride;       // 1 or 2
    int32_t depthwise;    // 0/1
    int32_t relu;         // 0/1: clamp at 0 instead of -128
    int32_t upsample;     // 0/1: nearest x2 upsample of the input, fused (stride 1 only)
    int32_t residual;     // 0/1: add rq(res, res_m, res_s) before the activation
    int32_t res_m, res_s; // residual requant multiplier / shift
    int32_t tile_rows;    // output rows per tile; 0: the largest that fits
} grace_conv_cfg_t;

typedef struct {
    int32_t c, h, w;      // input planes and size
    int32_t ho, wo;       // output size (= the grid's)
    int32_t occlusion;    // 0/1: multiply by the uint8 occlusion map before the requant
    int32_t m, s;         // requant multiplier / shift (one pair for the tensor)
} grace_gs_cfg_t;

// ---- arithmetic ------------------------------------------------------------------------
// rq(acc, M, S) = (acc * M + 2^(S-1)) >> S in 64 bits: round to nearest, ties up.
static inline int64_t grace_rq(int64_t acc, int32_t m, int32_t s) {
    return (acc * (int64_t)m + ((int64_t)1 << (s - 1))) >> s;
}

static inline int8_t grace_sat8(int64_t v, int32_t relu) {
    const int64_t lo = relu ? 0 : -128;
    if (v < lo) v = lo;
    if (v > 127) v = 127;
    return (int8_t)v;
}

static inline int grace_requant_ok(int32_t m, int32_t s) {
    return m >= 0 && s >= GRACE_S_MIN && s <= GRACE_S_MAX;
}

// The conv epilogue: requant, optional residual add (both terms with GRACE_RES_GUARD guard
// bits, one final rounding), ReLU, saturation. With a residual, s and res_s are >= 9.
static inline int8_t grace_epilogue(int32_t acc, int32_t m, int32_t s, int32_t relu,
                                    int32_t has_res, int8_t r, int32_t res_m, int32_t res_s) {
    int64_t v;
    if (has_res) {
        const int64_t t = grace_rq(acc, m, s - GRACE_RES_GUARD) + grace_rq(r, res_m, res_s - GRACE_RES_GUARD);
        v = (t + ((int64_t)1 << (GRACE_RES_GUARD - 1))) >> GRACE_RES_GUARD;
    } else {
        v = grace_rq(acc, m, s);
    }
    return grace_sat8(v, relu);
}

#endif
