// conv_engine.h -- the runtime-configured int8 conv engine (see conv_engine.cpp).
#ifndef CONV_ENGINE_H
#define CONV_ENGINE_H

#include "../common/grace_hw.h"

// Check a configuration without touching memory. Returns 0 and the tile rows the engine
// will use, or -status. Mirrors decoder_fpga.int8_ref.check_conv (same order of checks),
// plus the residual multiplier/shift when cfg.residual is set.
int32_t conv_check(const grace_conv_cfg_t *cfg, int32_t *tile_rows);

// The HLS top function. Memory layouts (all little-endian, contiguous):
//   x      int8  [cin][h][w]
//   w      int8  dense [cout][cin][k][k], depthwise [c][k][k]; every weight in [-127, 127]
//                (-128: GRACE_BAD_WEIGHT, the packed DSP multipliers cannot take it)
//   params int32 [cout][3] = {bias, M, S} per output channel
//   res    int8  [cout][h_out][w_out] (read only when cfg.residual)
//   y      int8  [cout][h_out][w_out]
//   x1     the same address as x: the input's second read port (bundle gmem1; the odd
//          channels come through it)
// Returns 0, or -status for a configuration or parameter it cannot take (nothing is
// written to y then).
int32_t conv_engine(const int8_t *x, const int8_t *w, const int32_t *params, const int8_t *res,
                    int8_t *y, const int8_t *x1, grace_conv_cfg_t cfg);

#endif
