"""The `warp` backend: a piecewise-affine warp of the key frame, driven by landmarks.

No learning. The 68 landmarks, a ring of points around the face that follows the head's
similarity motion (so hair and neck move with the head), and fixed points on the crop
border (so the background stays put) form one fixed triangulation. Each output pixel
is fetched from the key frame through the affine map of the triangle that covers it.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from scipy.spatial import Delaunay

RING_POINTS = 16
RING_RADIUS = 1.9  # in RMS face radii: beyond the jaw, around hair and neck
BORDER_STEPS = 4  # points per crop side


def similarity_fit(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """Least-squares similarity (2x3 matrix) mapping src (N, 2) onto dst (N, 2)."""
    src = np.asarray(src, np.float64)
    dst = np.asarray(dst, np.float64)
    ms, md = src.mean(0), dst.mean(0)
    s, d = src - ms, dst - md
    a = (s * d).sum() / (s**2).sum()
    b = (s[:, 0] * d[:, 1] - s[:, 1] * d[:, 0]).sum() / (s**2).sum()
    rot = np.array([[a, -b], [b, a]])
    return np.hstack([rot, (md - rot @ ms)[:, None]])


def _ring(landmarks: np.ndarray) -> np.ndarray:
    c = landmarks.mean(0)
    r = np.sqrt(((landmarks - c) ** 2).sum(1).mean()) * RING_RADIUS
    ang = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    return c + r * np.stack([np.cos(ang), np.sin(ang)], 1)


def _border(width: int, height: int) -> np.ndarray:
    xs = np.linspace(0, width - 1, BORDER_STEPS + 1)
    ys = np.linspace(0, height - 1, BORDER_STEPS + 1)
    top = [(x, 0) for x in xs] + [(x, height - 1) for x in xs]
    sides = [(0, y) for y in ys[1:-1]] + [(width - 1, y) for y in ys[1:-1]]
    return np.array(top + sides, dtype=np.float64)


@functools.cache
def _triangles(width: int, height: int) -> np.ndarray:
    """int (T, 3) fixed triangulation over [landmarks, ring, border], made on a mean face."""
    from ..motion import default_shape_model

    model = default_shape_model()
    scale = model.scale0 * min(width, height) / 256
    face = model.mean.reshape(68, 2) * scale + np.array([width / 2, height / 2])
    pts = np.vstack([face, _ring(face), _border(width, height)])
    return Delaunay(pts).simplices.astype(np.int64)


class WarpGenerator:
    """Piecewise-affine warp of the key frame; CPU, numpy + OpenCV."""

    name = "warp"

    def __init__(self, model_id: str = "warp", model_digest: bytes = b""):
        # The warp needs no weights: it can decode a stream made for any model.
        self._image: np.ndarray | None = None

    def set_reference(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        """image: uint8 (H, W, 3) RGB; landmarks: float32 (68, 2) in its pixels."""
        self._image = np.ascontiguousarray(image)
        h, w = image.shape[:2]
        self._ref_landmarks = np.asarray(landmarks, np.float64)
        self._ref_ring = _ring(self._ref_landmarks)
        self._border = _border(w, h)
        self._src = np.vstack([self._ref_landmarks, self._ref_ring, self._border])
        self._tri = _triangles(w, h)
        ys, xs = np.mgrid[0:h, 0:w]
        self._grid = (xs.astype(np.float32), ys.astype(np.float32))

    def render(self, landmarks: np.ndarray) -> np.ndarray:
        """landmarks: float32 (68, 2) -> uint8 (H, W, 3) RGB."""
        if self._image is None:
            raise RuntimeError("render() before set_reference()")
        h, w = self._image.shape[:2]
        target = np.asarray(landmarks, np.float64)
        pose = similarity_fit(self._ref_landmarks, target)
        ring = self._ref_ring @ pose[:, :2].T + pose[:, 2]
        dst = np.vstack([target, ring, self._border])
        affines = _triangle_affines(dst[self._tri], self._src[self._tri])
        ids = np.full((h, w), -1, np.int32)
        for i, tri in enumerate(dst[self._tri]):
            cv2.fillConvexPoly(ids, np.round(tri * 16).astype(np.int32), i, cv2.LINE_8, 4)
        covered = ids >= 0
        a = affines[np.where(covered, ids, 0)]  # (H, W, 2, 3)
        xs, ys = self._grid
        map_x = np.where(covered, a[..., 0, 0] * xs + a[..., 0, 1] * ys + a[..., 0, 2], xs)
        map_y = np.where(covered, a[..., 1, 0] * xs + a[..., 1, 1] * ys + a[..., 1, 2], ys)
        return cv2.remap(
            self._image,
            map_x.astype(np.float32),
            map_y.astype(np.float32),
            cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_REPLICATE,
        )


def _triangle_affines(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(T, 3, 2) dst and src triangles -> (T, 2, 3) affine maps dst -> src."""
    ones = np.ones((*dst.shape[:2], 1))
    a = np.concatenate([dst, ones], axis=2)  # (T, 3, 3)
    # Degenerate (collapsed) triangles get a tiny regulariser instead of a singular solve.
    a = a + np.eye(3)[None] * 1e-9 * (np.abs(np.linalg.det(a)) < 1e-9)[:, None, None]
    m = np.linalg.solve(a, src)  # (T, 3, 2): [x y 1] @ m = src
    return np.transpose(m, (0, 2, 1))
