// gridsample_engine.h -- bilinear grid sample with fused occlusion multiply (see .cpp).
#ifndef GRIDSAMPLE_ENGINE_H
#define GRIDSAMPLE_ENGINE_H

#include "../common/grace_hw.h"

// Check a configuration without touching memory: 0 and the planes sampled per pass, or
// -status. Mirrors decoder_fpga.int8_ref.check_grid_sample, plus the multiplier/shift.
int32_t gridsample_check(const grace_gs_cfg_t *cfg, int32_t *planes);

// The HLS top function. Memory layouts (little-endian, contiguous):
//   x     int8   [c][h][w]
//   grid  int16  [2][ho][wo]  pixel coordinates Q9.6; [0] = x, [1] = y
//   occ   uint8  [ho][wo]     (read only when cfg.occlusion)
//   y     int8   [c][ho][wo]
// Returns 0 or -status (nothing written then).
int32_t gridsample_engine(const int8_t *x, const int16_t *grid, const uint8_t *occ, int8_t *y,
                          grace_gs_cfg_t cfg);

#endif
