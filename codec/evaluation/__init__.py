"""The yardstick: rate-distortion and speed of gracecodec against x264/x265 anchors.

- `metrics`: PSNR, SSIM, MS-SSIM, AKD, AED (LPIPS/DISTS when their weights are local);
- `anchors`: x264/x265 low-delay constant-QP anchors through PyAV, SEI excluded from the rate;
- `runner`: `run_eval` over a set of clips, writing tables, plots and a Markdown summary.

Nothing heavy is imported here: torch, dlib and matplotlib load when first needed.
"""
