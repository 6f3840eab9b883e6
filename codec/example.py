"""The self-made example clip: a talking head made from a photo that ships with scikit-image.

No clip may be committed, so the project makes its own from scikit-image's astronaut
portrait (Eileen Collins, a public-domain NASA photo): head and shoulders, matted onto a
still, softly shaded background with the face in the upper-left third of the frame, so the
codec has to find it. Per frame:

- the mouth talks: the lower lip, chin and jaw move down (or up, closing over the teeth)
  following a 3-5 Hz syllable rhythm with pauses; the opened gap is shaded dark;
- the eyes blink every few seconds;
- the head moves: a few px of translation, a few degrees of roll, 1-2 % of scale.

The photo's 68 landmarks are found once with dlib; the mouth and eyes are moved by smooth
local displacement fields built around them, and the whole portrait by one similarity
warp. Everything is a function of (frame index, fps, seed): the same arguments give
identical frames, and frame i does not depend on how many frames are asked for.
"""

from __future__ import annotations

import dataclasses
import functools
import os
from collections.abc import Iterator
from fractions import Fraction

import cv2
import numpy as np

__all__ = ["FRAME_SIZE", "example_frames", "write_example_clip"]

FRAME_SIZE = (640, 480)

# Where the portrait goes, for a frame of height 480 (everything scales with the height):
# the photo's face box is ~90 px at 512 px; 1.1x keeps it well above dlib's 80 px window.
_PHOTO_SCALE = 1.1
_FACE_AT = (0.30, 0.36)  # face centre as a fraction of (width, height): upper-left third
_CROP = (400, 380)  # the part of the 512x512 photo used (width, height), from its top-left

# Motion amplitudes, in photo pixels (512 scale) and degrees.
_MOUTH_OPEN_PX = 11.0  # widest opening of the lips at the centre
_MOUTH_CLOSE_PX = 4.0  # at rest the lower lip rises over the smile's teeth
_BLINK_SECONDS = 0.2
_ROLL_DEG = (1.8, 0.9)
_SHIFT_PX = (3.0, 1.5)  # in frame pixels at height 480
_BREATH = 0.015


@dataclasses.dataclass(frozen=True)
class _Still:
    """The photo prepared once.

    layer: float32 (h, w, 4) premultiplied RGBA, RGB in 0..255, alpha in 0..1.
    landmarks: float32 68x2 (x, y) in photo pixels.
    """

    layer: np.ndarray
    landmarks: np.ndarray


def _smoothstep(x: np.ndarray) -> np.ndarray:
    x = np.clip(x, 0.0, 1.0)
    return x * x * (3 - 2 * x)


@functools.cache
def _still() -> _Still:
    """The astronaut photo, its landmarks (dlib, once per process) and a head-and-shoulders matte."""
    from skimage import data

    from encoder.landmarks import make_detector

    photo = data.astronaut()
    faces = make_detector("dlib").detect(photo)
    if not faces:
        raise RuntimeError("dlib found no face in skimage.data.astronaut()")
    lm = max(faces, key=lambda f: f.area).landmarks.astype(np.float32)

    w, h = _CROP
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    cx = float(lm[27:36, 0].mean())  # nose line
    head = ((xs - cx) / 88) ** 2 + ((ys - 100) / 100) ** 2 < 1
    torso = ((xs - cx + 20) / 175) ** 2 + ((ys - 430) / 230) ** 2 < 1
    matte = cv2.GaussianBlur((head | torso).astype(np.float32), (0, 0), 7)
    # Fade the suit out above the round mission patch (y ~ 345): dlib's HOG detector takes
    # the patch for a second face when it searches at 2x.
    matte *= 1 - _smoothstep((ys - 280) / 60)
    rgb = photo[:h, :w].astype(np.float32)
    layer = np.dstack([rgb * matte[..., None], matte]).astype(np.float32)
    return _Still(layer=layer, landmarks=lm)


@functools.cache
def _background(width: int, height: int) -> np.ndarray:
    """A still studio backdrop: float32 (height, width, 3), a soft gradient with low blotches."""
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    u, v = xs / width, ys / height
    # Close to the photo's own backdrop (~ 195, 186, 182 around the head): no visible halo.
    top, bottom = np.array([192, 184, 180], np.float32), np.array([128, 124, 128], np.float32)
    base = top + (bottom - top) * v[..., None]
    base += 18 * np.exp(-((u - 0.3) ** 2 + (v - 0.35) ** 2) / 0.12)[..., None]  # key light
    blotch = np.random.default_rng(12345).normal(0, 1, (6, 8)).astype(np.float32)
    blotch = cv2.resize(blotch, (width, height), interpolation=cv2.INTER_CUBIC)
    return base + 5 * blotch[..., None]


class _Schedule:
    """The seeded motion of the clip: mouth opening, blink and head pose at time t (s)."""

    def __init__(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        self.f0 = rng.uniform(3.6, 4.4)  # syllables per second
        self.fm, self.am = rng.uniform(0.25, 0.4), rng.uniform(0.4, 0.7)
        self.p = rng.uniform(0, 2 * np.pi, 2)
        self.phrase_f = rng.uniform(0.14, 0.2)  # speech / pause cycles per second
        self.phrase_p = rng.uniform(0.2, 1.2)  # starts mid-phrase: frame 0 talks
        self.head_f = rng.uniform([0.15, 0.4, 0.12, 0.35, 0.1, 0.3, 0.2], [0.3, 0.7] * 3 + [0.4])
        self.head_p = rng.uniform(0, 2 * np.pi, 7)
        # Blink times are drawn lazily after the fixed draws, so frame i never depends on
        # how long the clip is.
        self._rng = rng
        self.blinks = [rng.uniform(0.6, 1.4)]

    def mouth(self, t: float) -> float:
        """Lip opening in photo px at the mouth centre: -_MOUTH_CLOSE_PX .. _MOUTH_OPEN_PX."""
        # A syllable oscillation of slowly wandering rate, varying loudness, and pauses.
        phase = 2 * np.pi * self.f0 * t - self.am / self.fm * np.cos(2 * np.pi * self.fm * t)
        syllable = 0.5 - 0.5 * np.cos(phase + self.p[0])
        loud = 0.7 + 0.3 * np.sin(2 * np.pi * 0.9 * t + self.p[1])
        talking = _smoothstep((np.sin(2 * np.pi * self.phrase_f * t + self.phrase_p) + 0.75) / 0.5)
        s = float(syllable * loud * talking)
        return -_MOUTH_CLOSE_PX + (_MOUTH_OPEN_PX + _MOUTH_CLOSE_PX) * s

    def blink(self, t: float) -> float:
        """How closed the eyes are, 0..1."""
        while self.blinks[-1] < t:
            self.blinks.append(self.blinks[-1] + self._rng.uniform(2.5, 4.5))
        for start in self.blinks:
            if 0 <= t - start < _BLINK_SECONDS:
                return float(np.sin(np.pi * (t - start) / _BLINK_SECONDS))
        return 0.0

    def head(self, t: float) -> tuple[float, float, float, float]:
        """(roll in degrees, dx, dy in frame px at height 480, scale factor)."""
        s = np.sin(2 * np.pi * self.head_f * t + self.head_p)
        roll = _ROLL_DEG[0] * s[0] + _ROLL_DEG[1] * s[1]
        dx = _SHIFT_PX[0] * s[2] + _SHIFT_PX[1] * s[3]
        dy = 0.7 * (_SHIFT_PX[0] * s[4] + _SHIFT_PX[1] * s[5])
        return float(roll), float(dx), float(dy), float(1 + _BREATH * s[6])


def _box(points: np.ndarray, margin: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Integer (x0, y0, x1, y1) around `points`, grown by (left, top, right, bottom) px."""
    x0, y0 = np.floor(points.min(0)).astype(int)
    x1, y1 = np.ceil(points.max(0)).astype(int) + 1
    return int(x0) - margin[0], int(y0) - margin[1], int(x1) + margin[2], int(y1) + margin[3]


def _move_mouth(layer: np.ndarray, lm: np.ndarray, opening: float) -> None:
    """Opens (opening > 0) or closes the mouth of `layer` in place, in photo coordinates.

    Everything under a split line moves down by a displacement that is `opening` at the lip
    centre, fades to zero at the mouth corners and the jaw sides, and fades out below the
    chin. Opening splits under the teeth and shades the gap; closing splits under the upper
    lip, so the lower lip slides up over the teeth.
    """
    x0, y0, x1, y1 = _box(lm[[3, 13, 8, 61, 62, 63]], (0, 4, 0, 30))
    ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    xl, xr = lm[60, 0], lm[64, 0]
    upper, lower = lm[[60, 61, 62, 63, 64]], lm[[60, 67, 66, 65, 64]]
    curve = lower if opening > 0 else upper
    split = np.interp(xs[0], curve[:, 0], curve[:, 1]).astype(np.float32)[None, :]

    u = np.clip((xs[0] - xl) / (xr - xl), 0, 1)
    lip = np.clip(np.sin(np.pi * u), 0, 1) ** 0.6  # a lens-shaped opening, pointed at the corners
    jaw_l, jaw_r = lm[3, 0] + 2, lm[13, 0] - 2
    jaw = np.where(
        xs[0] < xl,
        _smoothstep((xs[0] - jaw_l) / (xl - jaw_l)),
        _smoothstep((jaw_r - xs[0]) / (jaw_r - xr)),
    )
    jaw = np.where((xs[0] >= xl) & (xs[0] <= xr), 1.0, jaw)
    chin = lm[8, 1]
    below = ys - split
    to_jaw = np.clip(below / np.maximum(chin - split, 1), 0, 1)  # lip profile -> jaw profile
    fade = 1 - _smoothstep((ys - chin) / (y1 - 1 - chin))  # the neck stretches
    disp = (opening * ((1 - to_jaw) * lip + to_jaw * jaw) * fade * (below > 0)).astype(np.float32)

    roi = layer[y0:y1, x0:x1]
    moved = cv2.remap(
        roi,
        xs - x0,
        ys - y0 - disp,
        cv2.INTER_LINEAR,
        borderMode=cv2.BORDER_REPLICATE,
    )
    if opening > 0:
        # The gap between the teeth and the lowered lip: a dark mouth, darkest inside.
        gap = opening * lip
        cover = np.clip(below + 0.5, 0, 1) * np.clip(gap - below + 0.5, 0, 1) * np.clip(gap, 0, 1)
        depth = np.sin(np.pi * np.clip(below / np.maximum(gap, 1e-3), 0, 1))
        inside = np.array([120, 52, 58], np.float32) * (1 - 0.6 * depth)[..., None]
        a = cover[..., None]
        moved[..., :3] = moved[..., :3] * (1 - a) + inside * a
    layer[y0:y1, x0:x1] = moved


def _blink(layer: np.ndarray, lm: np.ndarray, closed: float) -> None:
    """Lowers both upper eyelids of `layer` in place; closed=1 shuts the eyes."""
    for eye in (lm[36:42], lm[42:48]):
        top = float(eye[[1, 2], 1].min())
        bottom = float(eye[[4, 5], 1].max())
        height = bottom - top + 1
        x0, y0, x1, y1 = _box(eye, (5, int(2 * height) + 2, 5, 6))
        ys, xs = np.mgrid[y0:y1, x0:x1].astype(np.float32)
        xl, xr = eye[0, 0] - 3, eye[3, 0] + 3
        across = np.clip(np.sin(np.pi * np.clip((xs - xl) / (xr - xl), 0, 1)), 0, 1) ** 0.5
        # Rows from above the lid down to the lower lid slide down by up to `height`, so the
        # lid skin covers the eye; the 3 rows under it squeeze the eye into a lash line.
        lid_top = top - 1.5 * height
        down = np.clip((ys - lid_top) / (bottom - lid_top), 0, 1)
        down = np.where(ys > bottom, np.clip(1 - (ys - bottom) / 3, 0, 1), down)
        disp = (closed * height * across * down).astype(np.float32)
        roi = layer[y0:y1, x0:x1]
        moved = cv2.remap(
            roi, xs - x0, ys - y0 - disp, cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE
        )
        lash = 1 - 0.3 * closed * across * np.exp(-(((ys - bottom) / 1.5) ** 2))
        moved[..., :3] *= lash[..., None]
        layer[y0:y1, x0:x1] = moved


def example_frames(
    num_frames: int = 100, size: tuple[int, int] = FRAME_SIZE, seed: int = 0, fps: float = 25.0
) -> Iterator[np.ndarray]:
    """Frames of the example talking head: uint8 (H, W, 3) RGB, W, H = size.

    Deterministic: the same (size, seed, fps) give identical frames, and frame i is the same
    whatever num_frames is. About 5 ms a frame at 640x480 on one core.
    """
    width, height = (int(v) for v in size)
    if num_frames < 0 or width < 1 or height < 1 or fps <= 0:
        raise ValueError(
            f"need num_frames >= 0, a positive size and fps, got {num_frames}, {size}, {fps}"
        )
    still = _still()
    lm = still.landmarks
    bg = _background(width, height)
    sched = _Schedule(seed)
    k = _PHOTO_SCALE * height / 480
    pivot = np.array([lm[:, 0].mean(), lm[8, 1] + 30], np.float32)  # the neck: head rolls on it
    face = lm.mean(0)
    for i in range(num_frames):
        t = i / fps
        layer = still.layer.copy()
        _move_mouth(layer, lm, sched.mouth(t))
        closed = sched.blink(t)
        if closed > 0:
            _blink(layer, lm, closed)

        roll, dx, dy, breath = sched.head(t)
        s = k * breath
        th = np.deg2rad(roll)
        rot = s * np.array([[np.cos(th), np.sin(th)], [-np.sin(th), np.cos(th)]], np.float32)
        # The pivot goes where it sits when the face is at _FACE_AT, plus the shift.
        at = np.array([_FACE_AT[0] * width, _FACE_AT[1] * height]) + k * (pivot - face)
        at += np.array([dx, dy]) * height / 480
        m = np.hstack([rot, (at - rot @ pivot)[:, None]]).astype(np.float64)
        fg = cv2.warpAffine(
            layer,
            m,
            (width, height),
            flags=cv2.INTER_LINEAR,
            borderMode=cv2.BORDER_CONSTANT,
            borderValue=0,
        )
        out = fg[..., :3] + bg * (1 - fg[..., 3:])
        yield np.clip(out + 0.5, 0, 255).astype(np.uint8)


def write_example_clip(
    path: str | os.PathLike,
    seconds: float = 4.0,
    fps: int = 25,
    size: tuple[int, int] = FRAME_SIZE,
    seed: int = 0,
) -> None:
    """Writes the example clip as an H.264 MP4 of round(seconds * fps) frames (at least 1)."""
    from .video import VideoWriter

    n = max(1, round(seconds * fps))
    with VideoWriter(path, Fraction(fps), size[0], size[1]) as out:
        for frame in example_frames(n, size, seed=seed, fps=float(fps)):
            out.write(frame)
