"""The self-made example clip: a talking head made from a photo that ships with scikit-image.

No clip may be committed, so the project makes its own: scikit-image's astronaut portrait
(Eileen Collins, a public-domain NASA photo) placed off-centre in a 640x480 frame, with
procedural head motion (small translation, rotation and scale), a talking mouth (jaw and
lower lip following a syllable rhythm, the opened mouth shaded dark) and blinks. Motion
is applied by moving the photo's 68 landmarks and warping the photo piecewise-affinely
(`codec.generators.flow`); the background stays still.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from fractions import Fraction

import cv2
import numpy as np

from .generators.flow import backward_map

FRAME_SIZE = (640, 480)
PHOTO_SIZE = 360  # the 512 px portrait is shown at this size
PHOTO_ORIGIN = (40, 70)  # top-left corner of the portrait in the frame: face off-centre


@functools.cache
def _still(size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """The still frame (uint8 HxWx3) and its landmarks (float64 68x2), found once."""
    from skimage import data

    from encoder.landmarks import make_detector

    w, h = size
    ys, xs = np.mgrid[0:h, 0:w]
    frame = np.stack([60 + 40 * xs / w, 70 + 30 * ys / h, 90 + 20 * xs / w], -1).astype(np.uint8)
    photo = cv2.resize(data.astronaut(), (PHOTO_SIZE, PHOTO_SIZE), interpolation=cv2.INTER_AREA)
    x0, y0 = PHOTO_ORIGIN
    frame[y0 : y0 + PHOTO_SIZE, x0 : x0 + PHOTO_SIZE] = photo[: h - y0, : w - x0]
    faces = make_detector("dlib").detect(frame)
    if not faces:
        raise RuntimeError("the example photo's face was not found")
    return frame, faces[0].landmarks.astype(np.float64)


def _pose(landmarks: np.ndarray, t: float, rng_phase: np.ndarray) -> np.ndarray:
    """Landmarks of the face at time t (seconds): head motion, mouth, blinks."""
    pts = landmarks.copy()
    face_h = pts[:, 1].max() - pts[:, 1].min()
    # Mouth: a syllable-like rhythm (two mixed frequencies, never negative).
    talk = np.clip(
        0.55 * np.sin(2 * np.pi * 3.7 * t + rng_phase[0])
        + 0.45 * np.sin(2 * np.pi * 1.3 * t + rng_phase[1]),
        0,
        1,
    )
    opening = 0.09 * face_h * talk
    chin = np.r_[5:12]
    weight = 1 - np.abs(chin - 8) / 4  # the chin moves most
    pts[chin, 1] += opening * weight
    pts[[55, 56, 57, 58, 59, 65, 66, 67], 1] += opening
    pts[[54, 48, 60, 64], 1] += 0.4 * opening
    # Blinks: about every 2.5 s, for 0.15 s, the upper lids come down.
    if (t + rng_phase[2]) % 2.5 < 0.15:
        for up, low in ((37, 41), (38, 40), (43, 47), (44, 46)):
            pts[up] = 0.2 * pts[up] + 0.8 * pts[low]
    # Head motion: a similarity around the face centre.
    c = landmarks.mean(0)
    th = np.deg2rad(3.0 * np.sin(2 * np.pi * 0.31 * t + rng_phase[3]))
    s = 1 + 0.03 * np.sin(2 * np.pi * 0.23 * t)
    rot = s * np.array([[np.cos(th), -np.sin(th)], [np.sin(th), np.cos(th)]])
    shift = np.array(
        [6 * np.sin(2 * np.pi * 0.17 * t + rng_phase[4]), 4 * np.sin(2 * np.pi * 0.27 * t)]
    )
    return (pts - c) @ rot.T + c + shift


def example_frames(
    num_frames: int = 100, size: tuple[int, int] = FRAME_SIZE, seed: int = 0, fps: float = 25.0
) -> Iterator[np.ndarray]:
    """Frames of the example clip: uint8 (H, W, 3) RGB, H = size[1], W = size[0]. Deterministic."""
    still, landmarks = _still(tuple(size))
    phase = np.random.default_rng(seed).uniform(0, 2 * np.pi, 5)
    h, w = still.shape[:2]
    for i in range(num_frames):
        target = _pose(landmarks, i / fps, phase)
        map_x, map_y = backward_map(landmarks, target, w, h)
        frame = cv2.remap(still, map_x, map_y, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
        # The opened mouth: shade the inner-lip polygon dark red.
        inner = np.round(target[60:68] * 4).astype(np.int32)
        mask = np.zeros((h, w), np.uint8)
        cv2.fillPoly(mask, [inner], 255, cv2.LINE_AA, 2)
        alpha = (mask.astype(np.float32) / 255 * 0.85)[..., None]
        frame = (frame * (1 - alpha) + np.array([70, 20, 25]) * alpha).astype(np.uint8)
        yield frame


def write_example_clip(
    path, seconds: float = 4.0, fps: int = 25, size: tuple[int, int] = FRAME_SIZE
) -> None:
    """Writes the example clip as an H.264 MP4 (through codec.video.VideoWriter)."""
    from .video import VideoWriter

    n = max(1, round(seconds * fps))
    with VideoWriter(path, Fraction(fps), size[0], size[1]) as out:
        for frame in example_frames(n, size, fps=float(fps)):
            out.write(frame)
