"""Ring motion: where the key frame's ring around the face is in each later frame.

Without it the receiver moves the ring (the hair and head outline between the jaw and
the background, `codec.generators.flow`) by the skull's similarity, which misses a head
that turns or tilts: the hair then stays where the key frame had it, the largest error
left on the val clips that move most (docs/results.md, "Ring motion"). The sender
measures the real motion with dense optical flow (DIS) from the key crop straight to
each frame, read at the ring's points; the motion coder sends its offset from the
skull's pose as a few harmonics (`codec.motion`), so the receiver gets a smooth ring.
"""

from __future__ import annotations

import cv2
import numpy as np

from codec.motion import face_ring, skull_ring

# Each frame's offset from the skull's pose is averaged with the last frame's: the flow's
# frame-to-frame noise costs bits and shows nothing (one-off trial on feifeili_clip1,
# grace-s at key quality 30, smoothing the whole ring: -0.17 kbit/s for -0.0007 MS-SSIM;
# 0.3: -0.23 kbit/s, -0.0033). Only the offset: the head's and camera's steady motion,
# which the landmarks carry, must not lag.
SMOOTHING = 0.5


def _grey(crop: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)


class RingTracker:
    """Per segment: `start(key_crop, landmarks)` at the key frame, then
    `track(crop, landmarks)` for any frame of the segment (before the key frame too:
    nothing is chained) returns float32 (RING_POINTS, 2), the key frame's ring points in
    that frame, their offset from the skull's pose smoothed over the frames tracked
    since `start`."""

    def __init__(self) -> None:
        # The medium preset: the one the trial behind RING_HARMONICS used.
        self._flow = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
        self._key: np.ndarray | None = None
        self._key_landmarks = np.zeros((0, 2))
        self._ring = np.zeros((0, 2), np.float32)
        self._offset: np.ndarray | None = None

    def start(self, key_crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        self._key = _grey(key_crop)
        self._key_landmarks = np.asarray(landmarks, np.float64)
        self._ring = face_ring(landmarks).astype(np.float32)
        self._offset = None
        return self._ring.copy()

    def track(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """crop: uint8 (S, S, 3); landmarks: this frame's (68, 2), the skull's pose."""
        if self._key is None:
            raise RuntimeError("RingTracker.track called before start")
        flow = self._flow.calc(self._key, _grey(crop), None)  # key px -> displacement
        # A ring point outside the crop reads the flow at the nearest edge pixel.
        h, w = self._key.shape
        at = np.clip(self._ring, 0, [w - 1, h - 1]).astype(np.float32).reshape(-1, 1, 2)
        moved = [
            cv2.remap(np.ascontiguousarray(flow[..., c]), at[..., 0], at[..., 1], cv2.INTER_LINEAR)
            for c in (0, 1)
        ]
        skull = skull_ring(self._key_landmarks, landmarks)
        offset = self._ring + np.hstack(moved) - skull
        if self._offset is not None:  # frames in coding order: a segment's, in time
            offset = SMOOTHING * offset + (1 - SMOOTHING) * self._offset
        self._offset = offset
        return (skull + offset).astype(np.float32)
