"""The stable face crop: a square box that stays still until the face drifts far from it.

A crop that follows every landmark wobble makes the whole background shake; a fixed one
loses the face. The box is re-centred only when the face centre leaves a tolerance zone
or the face size changes a lot; each re-centre starts a new key frame.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np


@dataclasses.dataclass(frozen=True)
class CropBox:
    """A square in source pixels: integer top-left corner and side."""

    x0: int
    y0: int
    side: int

    def to_crop(self, points: np.ndarray, size: int) -> np.ndarray:
        """Source px (N, 2) -> crop px (N, 2) float32 in a size x size crop."""
        s = size / self.side
        return ((np.asarray(points, np.float64) - [self.x0, self.y0]) * s).astype(np.float32)

    def cut(self, frame: np.ndarray, size: int) -> np.ndarray:
        """uint8 (H, W, 3) source frame -> uint8 (size, size, 3) crop (edges replicated)."""
        h, w = frame.shape[:2]
        x1, y1 = self.x0 + self.side, self.y0 + self.side
        pad = max(0, -self.x0, -self.y0, x1 - w, y1 - h)
        if pad:
            frame = cv2.copyMakeBorder(frame, pad, pad, pad, pad, cv2.BORDER_REPLICATE)
        patch = frame[self.y0 + pad : y1 + pad, self.x0 + pad : x1 + pad]
        if self.side == size:
            return np.ascontiguousarray(patch)
        interp = cv2.INTER_AREA if self.side > size else cv2.INTER_CUBIC
        return cv2.resize(patch, (size, size), interpolation=interp)


@dataclasses.dataclass(frozen=True)
class CropConfig:
    size: int = 256  # output crop side, px
    face_scale: float = 2.1  # crop side / face size (max of landmark box width and height)
    lift: float = 0.1  # move the centre up by this fraction of the face size (forehead)
    snap_full: float = 0.85  # a box this close to the frame's short side takes it whole
    drift: float = 0.12  # re-centre when the face centre moves this fraction of the side
    rescale: float = 0.2  # ... or when the wanted side changes by this fraction


class StableCrop:
    """Chooses the crop box frame by frame from smoothed source landmarks."""

    def __init__(self, frame_width: int, frame_height: int, config: CropConfig = CropConfig()):
        self.w, self.h = frame_width, frame_height
        self.config = config
        self.box: CropBox | None = None

    def wanted(self, landmarks: np.ndarray) -> tuple[float, float, float]:
        """Ideal (centre x, centre y, side) for these landmarks, before stabilisation."""
        c = self.config
        lo, hi = landmarks.min(0), landmarks.max(0)
        face = float(max(hi - lo))
        cx, cy = (lo + hi) / 2
        cy -= c.lift * face
        side = c.face_scale * face
        short = min(self.w, self.h)
        if side >= c.snap_full * short:
            side = short
        return float(cx), float(cy), side

    def update(self, landmarks: np.ndarray) -> tuple[CropBox, bool]:
        """landmarks: float (68, 2) source px. Returns (box, whether it was re-centred)."""
        cx, cy, side = self.wanted(landmarks)
        box = self.box
        if box is not None:
            bcx, bcy = box.x0 + box.side / 2, box.y0 + box.side / 2
            moved = max(abs(cx - bcx), abs(cy - bcy)) > self.config.drift * box.side
            resized = abs(side - box.side) > self.config.rescale * box.side
            if not (moved or resized):
                return box, False
        self.box = self._place(cx, cy, side)
        # A box pinned by the frame edges may land where it was: that is no re-centre.
        return self.box, box is not None and self.box != box

    def _place(self, cx: float, cy: float, side: float) -> CropBox:
        s = max(16, int(round(side)))
        x0, y0 = int(round(cx - s / 2)), int(round(cy - s / 2))
        # Keep the box inside the frame where it fits; pad only when it cannot.
        if s <= self.w:
            x0 = min(max(x0, 0), self.w - s)
        if s <= self.h:
            y0 = min(max(y0, 0), self.h - s)
        return CropBox(x0, y0, s)
