"""Landmark-driven dense motion (outside the network: ARM side on the board).

A fixed triangulation over [68 landmarks, a ring around the face (hair, head outline) that
the stream moves or else the skull's similarity does, points on the crop border that
follow the camera] gives a
piecewise-affine backward map: for every output pixel, where to fetch it in the
reference frame. The `warp` backend applies it directly; the learned generator starts
from it and refines it.

Motion points: float (68, 2) landmarks, or (72, 2) when the stream carries camera motion
(`codec.motion`): rows 68-71 are where the key frame's four crop corners are in that
frame. The border then moves by the similarity between the two frames' corners; without
them it stays fixed (a still camera). With ring motion, (88, 2): rows 72-87 are where the
key frame's ring points are in that frame.
"""

from __future__ import annotations

import functools

import cv2
import numpy as np
from scipy.spatial import Delaunay

from ..motion import (
    NUM_CORNERS,
    NUM_LANDMARKS,
    RING_POINTS,
    default_shape_model,
    face_ring,
    similarity_fit,
    skull_ring,
)

BORDER_STEPS = 4  # points per crop side
_RING_ROWS = slice(NUM_LANDMARKS + NUM_CORNERS, NUM_LANDMARKS + NUM_CORNERS + RING_POINTS)


def _border(width: int, height: int) -> np.ndarray:
    xs = np.linspace(0, width - 1, BORDER_STEPS + 1)
    ys = np.linspace(0, height - 1, BORDER_STEPS + 1)
    top = [(x, 0) for x in xs] + [(x, height - 1) for x in xs]
    sides = [(0, y) for y in ys[1:-1]] + [(width - 1, y) for y in ys[1:-1]]
    return np.array(top + sides, dtype=np.float64)


@functools.cache
def _triangles(width: int, height: int) -> np.ndarray:
    """int (T, 3) fixed triangulation over [landmarks, ring, border], made on a mean face."""
    model = default_shape_model()
    scale = model.scale0 * min(width, height) / 256
    face = model.mean.reshape(68, 2) * scale + np.array([width / 2, height / 2])
    pts = np.vstack([face, face_ring(face), _border(width, height)])
    return Delaunay(pts).simplices.astype(np.int64)


def _triangle_affines(dst: np.ndarray, src: np.ndarray) -> np.ndarray:
    """(T, 3, 2) dst and src triangles -> (T, 2, 3) affine maps dst -> src."""
    ones = np.ones((*dst.shape[:2], 1))
    a = np.concatenate([dst, ones], axis=2)  # (T, 3, 3)
    # Degenerate (collapsed) triangles get a tiny regulariser instead of a singular solve.
    a = a + np.eye(3)[None] * 1e-9 * (np.abs(np.linalg.det(a)) < 1e-9)[:, None, None]
    m = np.linalg.solve(a, src)  # (T, 3, 2): [x y 1] @ m = src
    return np.transpose(m, (0, 2, 1))


def backward_map(
    ref_landmarks: np.ndarray, target_landmarks: np.ndarray, width: int, height: int
) -> tuple[np.ndarray, np.ndarray]:
    """Piecewise-affine backward map of a (width x height) frame.

    ref_landmarks, target_landmarks: motion points, float (68, 2), (72, 2) or (88, 2)
    (the module docstring), in that frame's pixels.
    Returns map_x, map_y: float32 (height, width), the reference-frame position of
    every target pixel (for cv2.remap or a grid sample).
    """
    ref_points = np.asarray(ref_landmarks, np.float64)
    target_points = np.asarray(target_landmarks, np.float64)
    ref, target = ref_points[:NUM_LANDMARKS], target_points[:NUM_LANDMARKS]
    ref_ring, border = face_ring(ref), _border(width, height)
    ring = target_points[_RING_ROWS]
    if len(ring) != RING_POINTS:  # the stream sends no ring motion: the skull moves it
        ring = skull_ring(ref, target)
    moved, outside = border, np.array([1.0, 0.0, 0.0, 0.0, 1.0, 0.0])
    corners = slice(NUM_LANDMARKS, NUM_LANDMARKS + NUM_CORNERS)
    if len(ref_points) > NUM_LANDMARKS and len(target_points) > NUM_LANDMARKS:
        camera = similarity_fit(ref_points[corners], target_points[corners])
        moved = border @ camera[:, :2].T + camera[:, 2]
        # Pixels the moved border no longer covers continue the background's motion.
        outside = similarity_fit(moved, border).reshape(6)
    src = np.vstack([ref, ref_ring, border])
    dst = np.vstack([target, ring, moved])
    tri = _triangles(width, height)
    dst_tri = dst[tri]
    affines = _triangle_affines(dst_tri, src[tri])  # (T, 2, 3)
    n = len(tri)
    ids = np.full((height, width), n, np.int32)  # n: no triangle covers the pixel
    corners = np.round(dst_tri * 16).astype(np.int32)
    for i in range(n):
        cv2.fillConvexPoly(ids, corners[i], i, cv2.LINE_8, 4)
    # Per pixel, gather the 6 coefficients of its triangle's affine (one appended for
    # uncovered pixels: the identity, or the camera's motion; an identity gives x and y
    # exactly): no (H, W, 2, 3) table, few temporaries (this runs per frame on the ARM).
    coef = np.concatenate([affines.reshape(n, 6), outside[None]]).T.copy()
    xs, ys = _grid(width, height)
    maps = []
    for r in (0, 3):  # map_x = a00 x + a01 y + a02, map_y = a10 x + a11 y + a12
        m = coef[r][ids]
        m *= xs
        t = coef[r + 1][ids]
        t *= ys
        m += t
        m += coef[r + 2][ids]
        maps.append(m.astype(np.float32))
    return maps[0], maps[1]


@functools.cache
def _grid(width: int, height: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = np.mgrid[0:height, 0:width]
    return xs.astype(np.float64), ys.astype(np.float64)


# The iBUG-68 points grouped by face part: one heatmap channel each.
LANDMARK_GROUPS = (
    range(0, 17),  # jaw
    range(17, 22),  # right brow
    range(22, 27),  # left brow
    range(27, 36),  # nose
    range(36, 42),  # right eye
    range(42, 48),  # left eye
    range(48, 60),  # outer lips
    range(60, 68),  # inner lips
)


def landmark_heatmaps(
    landmarks: np.ndarray, frame_size: int, size: int = 64, sigma: float = 1.5
) -> np.ndarray:
    """Gaussian heatmaps of the landmark groups at `size` x `size`.

    landmarks: float (68, 2) in pixels of a frame_size x frame_size frame.
    Returns float32 (len(LANDMARK_GROUPS), size, size) in [0, 1]; sigma in heatmap px.
    """
    pts = (np.asarray(landmarks, np.float64) + 0.5) * (size / frame_size) - 0.5
    r = np.arange(size, dtype=np.float64)
    # The squared distance is separable: (x - px)^2 per column plus (y - py)^2 per row.
    dx2 = (r[None, :] - pts[:, 0, None]) ** 2  # (68, size)
    dy2 = (r[None, :] - pts[:, 1, None]) ** 2
    out = np.empty((len(LANDMARK_GROUPS), size, size), np.float32)
    for g, idx in enumerate(LANDMARK_GROUPS):
        sl = slice(idx.start, idx.stop)
        d2 = (dx2[sl, None, :] + dy2[sl, :, None]).min(axis=0)
        out[g] = np.exp(-d2 / (2 * sigma**2))
    return out


def normalised_grid(map_x: np.ndarray, map_y: np.ndarray) -> np.ndarray:
    """Pixel backward maps (H, W) -> float32 (2, H, W) grid in [-1, 1] (pixel centres,
    the align_corners=False convention of a bilinear grid sample)."""
    h, w = map_x.shape
    return np.stack([(2 * map_x + 1) / w - 1, (2 * map_y + 1) / h - 1]).astype(np.float32)


def network_inputs(
    ref_landmarks: np.ndarray, target_landmarks: np.ndarray, size: int
) -> tuple[np.ndarray, np.ndarray]:
    """What the learned generator gets per frame from outside the network.

    Returns grid float32 (2, size, size) (the landmark backward map) and the target
    heatmaps float32 (G, size/4, size/4).
    """
    grid = normalised_grid(*backward_map(ref_landmarks, target_landmarks, size, size))
    return grid, landmark_heatmaps(target_landmarks, size, size // 4)
