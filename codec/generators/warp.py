"""The `warp` backend: a piecewise-affine warp of the key frame, driven by landmarks.

No learning: each output pixel is fetched from the key frame through the landmark-driven
backward map of `codec.generators.flow`. Fast (a few ms a frame) and exact where the
face only moves and deforms; it cannot open a closed mouth, turn the head or blink.
"""

from __future__ import annotations

import cv2
import numpy as np

from .flow import backward_map


class WarpGenerator:
    """Piecewise-affine warp of the key frame; CPU, numpy + OpenCV."""

    name = "warp"

    def __init__(self, model_id: str = "warp", model_digest: bytes = b""):
        # The warp needs no weights: it can decode a stream made for any model.
        self._image: np.ndarray | None = None

    def set_reference(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        """image: uint8 (H, W, 3) RGB; landmarks: float32 (68, 2) in its pixels."""
        self._image = np.ascontiguousarray(image)
        self._landmarks = np.asarray(landmarks, np.float64)

    def render(self, landmarks: np.ndarray) -> np.ndarray:
        """landmarks: float32 (68, 2) -> uint8 (H, W, 3) RGB."""
        if self._image is None:
            raise RuntimeError("render() before set_reference()")
        h, w = self._image.shape[:2]
        map_x, map_y = backward_map(self._landmarks, landmarks, w, h)
        return cv2.remap(
            self._image, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
