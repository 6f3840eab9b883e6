"""Camera motion: where the key frame's crop corners are in each later frame.

The crop stays still between re-centres, but the camera need not: a slow pan or zoom
moves the whole background under the fixed crop, and a receiver that warps only the face
leaves the background where the key frame had it (the val clip s18 pans slowly all
through its 150 frames). The tracker follows background corners of the key crop from frame to frame
(pyramidal Lucas-Kanade, checked forwards and backwards) and fits one similarity from
their key-frame positions with RANSAC; the landmarks' ring around the face is masked
out, so the head's own motion does not count, and the fit is sent only where it matches
the frame's background better than a still one. The result travels as four motion points
(`codec.generators.flow`, `codec.motion`).
"""

from __future__ import annotations

import cv2
import numpy as np

from codec.motion import NUM_LANDMARKS, RING_RADIUS, crop_corners, similarity_fit

MAX_FEATURES = 150
MIN_INLIERS = 12  # fewer (a plain backdrop, the head covering it): keep the last estimate
RANSAC_PX = 1.0
ROUND_TRIP_PX = 0.5  # a feature tracked forwards then backwards must land this close
MAX_ZOOM = 0.25  # |scale - 1| beyond this is a failed fit, not a camera
GAIN = 0.95  # a moved background must cut the background error by 5 % to be sent
_LK = dict(winSize=(21, 21), maxLevel=3, criteria=(cv2.TERM_CRITERIA_EPS | 3, 30, 0.01))


def _grey(crop: np.ndarray) -> np.ndarray:
    return cv2.cvtColor(np.ascontiguousarray(crop), cv2.COLOR_RGB2GRAY)


def background_mask(landmarks: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size): 255 away from the face, hair and neck (outside the ring the
    warp moves with the head, widened by a tenth)."""
    pts = np.asarray(landmarks, np.float64)[:NUM_LANDMARKS]
    c = pts.mean(0)
    r = np.sqrt(((pts - c) ** 2).sum(1).mean()) * RING_RADIUS * 1.1
    mask = np.full((size, size), 255, np.uint8)
    cv2.circle(mask, (int(round(c[0])), int(round(c[1]))), int(round(r)), 0, -1)
    return mask


class CameraTracker:
    """Per segment: `start(key_crop, landmarks)` at the key frame, then
    `track(crop, landmarks)` for each following frame returns float32 (4, 2), the key
    crop's corners in that frame (`motion_points` does either, as the encoder needs).

    Background corners of the key crop are tracked from frame to frame (small steps, so
    a fast or blurred camera move stays tracked; in `gracecodec eval` this beat tracking
    straight from the key crop, docs/results.md, "Camera motion"), and
    each frame's similarity is fitted from the corners' key-frame positions to their
    positions now. Corners that fail the forward-backward check are dropped for the rest
    of the segment; a fit that fails or runs wild keeps the last estimate.
    """

    def __init__(self, size: int = 256):
        self.size = size
        self.corners = crop_corners(size, size)
        self._key: np.ndarray | None = None
        self._points = np.zeros((0, 1, 2), np.float32)
        self._transform = np.eye(3)[:2]  # tracked fit, key -> current
        self._moving = False  # whether track() sends the fit (else a still camera)

    def start(self, key_crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        self._key = _grey(key_crop)
        self._key_mask = background_mask(landmarks, self.size)
        found = cv2.goodFeaturesToTrack(self._key, MAX_FEATURES, 0.01, 8, mask=self._key_mask)
        self._points = np.zeros((0, 1, 2), np.float32) if found is None else found
        self._tracked = self._points.copy()  # where they were in the last frame
        self._prev = self._key
        self._transform = np.eye(3)[:2]
        self._moving = False
        return self.corners.astype(np.float32)

    def track(self, crop: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
        """crop: uint8 (S, S, 3); landmarks: this frame's (68, 2), to mask the head."""
        if self._key is None:
            raise RuntimeError("CameraTracker.track called before start")
        grey = _grey(crop)
        if len(self._points) >= MIN_INLIERS:
            self._refit(grey)
        # Shoulders and hair outside the mask move too, and on a still camera the fit may
        # follow them: a moved background is sent only while it matches this frame
        # clearly better than a still one (and back to still only when that is clearly
        # better: no flicker between the two).
        mask = background_mask(landmarks, self.size)
        still = np.eye(3)[:2]
        e_still = self._background_error(still, grey, mask)
        e_moved = self._background_error(self._transform, grey, mask)
        if self._moving:
            self._moving = not e_still < GAIN * e_moved
        else:
            self._moving = e_moved < GAIN * e_still
        t = self._transform if self._moving else still
        return (self.corners @ t[:, :2].T + t[:, 2]).astype(np.float32)

    def motion_points(self, crop: np.ndarray, landmarks: np.ndarray, key: bool) -> np.ndarray:
        """What the motion coder gets for a frame: the landmarks at a key frame (which
        starts the tracker), landmarks and tracked corners (72, 2) after it."""
        if key:
            self.start(crop, landmarks)
            return np.asarray(landmarks)
        return np.vstack([landmarks, self.track(crop, landmarks)])

    def _background_error(self, transform: np.ndarray, grey: np.ndarray, mask: np.ndarray) -> float:
        """Mean |key moved by transform - this frame| where both are background."""
        size = (self.size, self.size)
        moved = cv2.warpAffine(self._key, transform, size, borderMode=cv2.BORDER_REPLICATE)
        valid = cv2.warpAffine(self._key_mask, transform, size, flags=cv2.INTER_NEAREST)
        both = (valid > 0) & (mask > 0)
        if not both.any():
            return 0.0
        return float(np.abs(moved.astype(np.int16) - grey)[both].mean())

    def _refit(self, grey: np.ndarray) -> None:
        # Chained: each point from the last frame into this one (small steps: large,
        # blurred camera moves stay tracked), the fit from its key-frame position.
        src, prev = self._points, self._tracked
        dst, ok, _ = cv2.calcOpticalFlowPyrLK(self._prev, grey, prev, None, **_LK)
        back, ok2, _ = cv2.calcOpticalFlowPyrLK(grey, self._prev, dst, None, **_LK)
        good = (ok[:, 0] == 1) & (ok2[:, 0] == 1)
        good &= np.linalg.norm((back - prev).reshape(-1, 2), axis=1) < ROUND_TRIP_PX
        self._prev = grey
        self._points, self._tracked = src[good], dst[good]
        if good.sum() < MIN_INLIERS:
            return
        src, dst = src[good].reshape(-1, 2), dst[good].reshape(-1, 2)
        fit, inliers = cv2.estimateAffinePartial2D(
            src, dst, method=cv2.RANSAC, ransacReprojThreshold=RANSAC_PX
        )
        if fit is None or int(inliers.sum()) < MIN_INLIERS:
            return
        keep = inliers[:, 0] == 1
        # Refit on the inliers by least squares (RANSAC's fit comes from a minimal sample).
        fit = similarity_fit(src[keep], dst[keep])
        zoom = np.hypot(fit[0, 0], fit[1, 0])
        if abs(zoom - 1) <= MAX_ZOOM and np.abs(fit[:, 2]).max() <= self.size / 4:
            self._transform = fit
