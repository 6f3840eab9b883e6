// bridge.cpp -- extern "C" entry points of libgrace_hw.so for ctypes (decoder_fpga/csim.py).
//
// Plain pointers and the configuration structs of common/grace_hw.h; every function
// returns 0 or -status (decoder_fpga.int8_ref.EngineStatus). The engines keep their
// on-chip buffers in static arrays, so the library is not reentrant: callers serialise
// (csim.py holds a lock).
#include "common/grace_hw.h"
#include "conv/conv_engine.h"
#include "gridsample/gridsample_engine.h"

extern "C" {

int32_t grace_hw_abi_version(void) { return GRACE_HW_ABI_VERSION; }

int32_t grace_conv_cfg_size(void) { return (int32_t)sizeof(grace_conv_cfg_t); }

int32_t grace_gs_cfg_size(void) { return (int32_t)sizeof(grace_gs_cfg_t); }

// The limits of grace_hw.h in a fixed order (the fields of int8_ref.ConvLimits, then of
// GridLimits, then GS_FRAC_BITS, GRACE_BIAS_LIMIT, GRACE_S_MIN, GRACE_S_MAX).
// Writes up to n values; returns how many there are.
int32_t grace_hw_limits(int32_t *out, int32_t n) {
    const int32_t v[] = {
        CONV_PE_CO, CONV_PE_CI, CONV_MAX_CH, CONV_MAX_H, CONV_MAX_W, CONV_MAX_W_OUT,
        CONV_IN_BUF_BYTES, CONV_W_BANK_BYTES, CONV_OUT_TILE_PIX, CONV_MAX_TILE_ROWS,
        GS_MAX_CH, GS_MAX_H, GS_MAX_W, GS_MAX_H_OUT, GS_MAX_W_OUT, GS_BANK_BYTES, GS_MAX_PLANES,
        GS_FRAC_BITS, GRACE_BIAS_LIMIT, GRACE_S_MIN, GRACE_S_MAX,
    };
    const int32_t total = (int32_t)(sizeof(v) / sizeof(v[0]));
    for (int32_t i = 0; i < n && i < total; ++i) out[i] = v[i];
    return total;
}

int32_t grace_conv_check(const grace_conv_cfg_t *cfg, int32_t *tile_rows) {
    return conv_check(cfg, tile_rows);
}

int32_t grace_conv2d(const int8_t *x, const int8_t *w, const int32_t *params, const int8_t *res,
                     int8_t *y, const grace_conv_cfg_t *cfg) {
    return conv_engine(x, w, params, res, y, x, *cfg);
}

// The engine with its ports as the registers give them (the simulated board): x1 is the
// input's second read port, the same address as x on a correct driver.
int32_t grace_conv2d_ports(const int8_t *x, const int8_t *w, const int32_t *params, const int8_t *res,
                           int8_t *y, const int8_t *x1, const grace_conv_cfg_t *cfg) {
    return conv_engine(x, w, params, res, y, x1, *cfg);
}

int32_t grace_gs_check(const grace_gs_cfg_t *cfg, int32_t *planes) {
    return gridsample_check(cfg, planes);
}

int32_t grace_grid_sample(const int8_t *x, const int16_t *grid, const uint8_t *occ, int8_t *y,
                          const grace_gs_cfg_t *cfg) {
    return gridsample_engine(x, grid, occ, y, *cfg);
}

}  // extern "C"
