"""Motion coding: 68 landmarks a frame -> a few dozen bits, over one continuous stream.

A frame's motion points are its 68 landmarks and, when the stream carries camera motion
(`MotionConfig.camera`), four more: where the key frame's crop corners are in this frame
(the background under a panning or zooming camera, `encoder.camera`), float (72, 2); and
when it carries ring motion too (`MotionConfig.ring`), sixteen more: where the points of
the key frame's ring around the face (hair, head outline) are in this frame
(`encoder.ring`), float (88, 2).

Pipeline (encoder and decoder run the same arithmetic, so the encoder knows exactly the
landmarks the receiver reconstructs):

1. **Reduce.** A similarity transform (centroid x/y, log scale, rotation) maps the
   landmarks onto a normalised shape, which a PCA basis fitted on training clips
   (`codec/assets/shape_model.npz`) reduces to `num_coeffs` coefficients. A frame is
   then a parameter vector ``[cx, cy, log_s, theta, b_1 .. b_k]``, followed, with camera
   motion, by the similarity that moves the key frame's corners, ``[tx, ty, a, b]`` (about
   the crop centre: p' = c + [[1 + a, -b], [b, 1 + a]] (p - c) + t; zero at a key frame),
   and, with ring motion, by how far the ring is from where the skull's similarity puts
   it: that offset around the ring as a short Fourier series (`RING_HARMONICS`), its x
   and y coefficients (zero at a key frame, and wherever the hair moves with the skull).
2. **Quantise** each parameter with a uniform step derived from one knob, the motion
   step in crop pixels.
3. **Predict** each parameter from the previous *decoded* frame (closed-loop DPCM), so
   quantisation errors do not accumulate.
4. **Entropy-code** the residual indices with adaptive per-parameter categorical models
   and one range coder (`constriction`) that runs across all frames of a segment (key
   frame to key frame). Nothing is flushed or byte-aligned per frame: a MOTION packet
   carries the 32-bit words the coder finalised since the previous packet. A range
   decoder looks two words ahead, so the encoder holds a frame's packet back until the
   two words after its last symbol exist (typically one or two frames, 40-80 ms at
   25 fps); a key frame or the end of the stream seals the coder and releases the rest.

Key frames carry their parameters intra-coded (absolute indices as signed varints); they
reset the predictor, the adaptive models and the range coder, so decoding can start at any
key frame.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import struct
from collections.abc import Sequence
from importlib import resources

import numpy as np

from . import binary
from .errors import BitstreamError

MOTION_CODER_VERSION = 2  # bump when anything that changes the coded bits changes
# 1: landmarks only; 2: + a flags byte (bit 0: camera motion, bit 1: ring motion). Both
# decode; a decoder older than the ring flag refuses such a stream by its flags.
FLAG_CAMERA = 1
FLAG_RING = 2
ALPHABET_HALF = 12  # residual indices -12..12 get their own symbol
ESCAPE = 2 * ALPHABET_HALF + 1  # then a raw 16-bit zigzag value follows
ALPHABET = ESCAPE + 1
MAX_RESIDUAL = 2**15 - 1
COUNT_INCREMENT = 24  # adaptation speed of the frequency counts
COUNT_LIMIT = 1 << 13  # halve the counts above this total: forget old statistics
NUM_POSE = 4  # cx, cy, log_s, theta
NUM_CAMERA = 4  # tx, ty, a, b
MAX_CAMERA_ZOOM = 0.5  # |a|, |b| beyond this is a damaged stream, not a camera
# The ring around the face (codec.generators.flow): its points sit RING_RADIUS RMS face
# radii from the landmarks' centroid, beyond the jaw, around hair and neck.
RING_POINTS = 16
RING_RADIUS = 1.9
# Without ring motion the ring moves with the skull: the similarity of the landmarks fixed
# to it, the upper jaw line by the ears and the eyes, not the chin, lips and brows that
# move with speech and expression (docs/results.md, "The ring follows the skull").
SKULL_POINTS = (0, 1, 2, 3, 4, 12, 13, 14, 15, 16, *range(36, 48))
_SKULL = list(SKULL_POINTS)  # as an index (a tuple would index several axes)
# Ring motion: the ring's offset from the skull's pose, as harmonics 0..RING_HARMONICS
# around it, x and y (a one-off trial on three val clips, not kept: 2 or 3 harmonics kept
# most of what the sixteen free points gain).
RING_HARMONICS = 3
NUM_RING = 2 * (2 * RING_HARMONICS + 1)
NUM_LANDMARKS = 68
NUM_CORNERS = 4  # the camera's motion points
LOOKAHEAD_WORDS = 2  # words a range decoder reads beyond its current position


# ---------------------------------------------------------------------------------------
# Shape model: similarity normalisation + PCA basis
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ShapeModel:
    """A PCA model of normalised 68-point shapes.

    mean: float64 (136,) normalised mean shape (zero centroid, unit RMS radius).
    basis: float64 (k_max, 136) orthonormal rows, by decreasing variance.
    stddev: float64 (k_max,) standard deviation of each coefficient on the training set.
    scale0: typical RMS radius of a face in the 256 crop (px), sets coefficient steps.
    """

    mean: np.ndarray
    basis: np.ndarray
    stddev: np.ndarray
    scale0: float
    prior_counts: np.ndarray | None = None  # int64 (4 + k_max, ALPHABET) residual histogram

    @functools.cached_property
    def digest(self) -> bytes:
        h = hashlib.sha256()
        for a in (self.mean, self.basis, self.stddev):
            h.update(np.ascontiguousarray(a, dtype="<f8").tobytes())
        h.update(struct.pack("<d", self.scale0))
        if self.prior_counts is not None:  # the priors shape the coded bits too
            h.update(np.ascontiguousarray(self.prior_counts, dtype="<i8").tobytes())
        return h.digest()[:8]

    @property
    def max_coeffs(self) -> int:
        return self.basis.shape[0]

    def save(self, path) -> None:
        extra = {} if self.prior_counts is None else {"prior_counts": self.prior_counts}
        np.savez(
            path,
            mean=self.mean,
            basis=self.basis,
            stddev=self.stddev,
            scale0=np.float64(self.scale0),
            **extra,
        )

    @classmethod
    def load(cls, path) -> ShapeModel:
        with np.load(path) as z:
            prior = z["prior_counts"] if "prior_counts" in z else None
            return cls(z["mean"], z["basis"], z["stddev"], float(z["scale0"]), prior)


@functools.cache
def default_shape_model() -> ShapeModel:
    """The shape model shipped in the package (fitted by `gracecodec fit-shape-model`)."""
    ref = resources.files("codec") / "assets" / "shape_model.npz"
    with resources.as_file(ref) as path:
        return ShapeModel.load(path)


def mean_face(size: int = 256) -> np.ndarray:
    """float32 (68, 2): the shipped model's mean face at its typical scale, centred in a
    size x size crop (a neutral pose for triangulations and synthetic test scenes)."""
    model = default_shape_model()
    pts = model.mean.reshape(68, 2) * model.scale0 * size / 256 + size / 2
    return pts.astype(np.float32)


def similarity_normalise(landmarks: np.ndarray, mean: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Splits landmarks into a similarity pose and a normalised shape.

    landmarks: float (68, 2) crop pixels. mean: (136,) normalised mean shape.
    Returns pose float64 (4,) = [cx, cy, log_s, theta] and shape float64 (136,) such that
    landmarks = s R(theta) shape + c.
    """
    pts = np.asarray(landmarks, dtype=np.float64).reshape(68, 2)
    c = pts.mean(axis=0)
    d = pts - c
    s = np.sqrt((d**2).sum(axis=1).mean())
    if not np.isfinite(s) or s <= 1e-6:
        raise ValueError("degenerate landmarks: all points coincide")
    d = d / s
    m = mean.reshape(68, 2)
    # Rotation that best maps the mean onto the shape (2-D Procrustes, closed form).
    num = (m[:, 0] * d[:, 1] - m[:, 1] * d[:, 0]).sum()
    den = (m[:, 0] * d[:, 0] + m[:, 1] * d[:, 1]).sum()
    theta = np.arctan2(num, den)
    shape = d @ _rotation(theta)  # rotates by -theta (row vectors times R)
    return np.array([c[0], c[1], np.log(s), theta]), shape.reshape(-1)


def _rotation(theta: float) -> np.ndarray:
    cos, sin = np.cos(theta), np.sin(theta)
    return np.array([[cos, -sin], [sin, cos]])


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


def crop_corners(width: int, height: int) -> np.ndarray:
    """float64 (4, 2): the corner pixel centres of a crop (the camera's motion points)."""
    return np.array([(0, 0), (width - 1, 0), (0, height - 1), (width - 1, height - 1)], float)


def corners_to_camera(corners: np.ndarray, size: int) -> np.ndarray:
    """float (4, 2) key-frame corners as seen in a frame -> float64 [tx, ty, a, b]."""
    key = crop_corners(size, size)
    m = similarity_fit(key, corners)
    c = np.full(2, (size - 1) / 2)
    t = m[:, :2] @ c + m[:, 2] - c
    return np.array([t[0], t[1], m[0, 0] - 1, m[1, 0]])


def camera_to_corners(camera: np.ndarray, size: int) -> np.ndarray:
    """float64 [tx, ty, a, b] -> float32 (4, 2): where the key frame's corners went."""
    tx, ty, a, b = camera
    c = np.full(2, (size - 1) / 2)
    with np.errstate(over="ignore", invalid="ignore"):  # damaged streams: the decoder checks
        m = np.array([[1 + a, -b], [b, 1 + a]])
        return ((crop_corners(size, size) - c) @ m.T + c + [tx, ty]).astype(np.float32)


def face_ring(landmarks: np.ndarray) -> np.ndarray:
    """float64 (RING_POINTS, 2): the ring around a face's (68, 2) landmarks."""
    pts = np.asarray(landmarks, np.float64)[:NUM_LANDMARKS]
    c = pts.mean(0)
    r = np.sqrt(((pts - c) ** 2).sum(1).mean()) * RING_RADIUS
    ang = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    return c + r * np.stack([np.cos(ang), np.sin(ang)], 1)


def skull_ring(key_landmarks: np.ndarray, landmarks: np.ndarray) -> np.ndarray:
    """float64 (RING_POINTS, 2): the key frame's ring moved by the skull's similarity
    from the key frame's landmarks to these (both (68, 2) or longer motion points)."""
    key = np.asarray(key_landmarks, np.float64)[:NUM_LANDMARKS]
    now = np.asarray(landmarks, np.float64)[:NUM_LANDMARKS]
    pose = similarity_fit(key[_SKULL], now[_SKULL])
    return face_ring(key) @ pose[:, :2].T + pose[:, 2]


@functools.cache
def _ring_basis() -> np.ndarray:
    """float64 (RING_POINTS, 2 RING_HARMONICS + 1): 1, cos, sin of each harmonic per point."""
    ang = np.linspace(0, 2 * np.pi, RING_POINTS, endpoint=False)
    cols = [np.ones(RING_POINTS)]
    for h in range(1, RING_HARMONICS + 1):
        cols += [np.cos(h * ang), np.sin(h * ang)]
    return np.stack(cols, 1)


def ring_to_params(offset: np.ndarray) -> np.ndarray:
    """float (RING_POINTS, 2) ring offset from the skull's pose -> float64 (NUM_RING,)
    least-squares harmonic coefficients, x's then y's."""
    return (np.linalg.pinv(_ring_basis()) @ np.asarray(offset, np.float64)).T.reshape(-1)


def params_to_ring(params: np.ndarray) -> np.ndarray:
    """float64 (NUM_RING,) coefficients -> float64 (RING_POINTS, 2) ring offset."""
    return _ring_basis() @ np.asarray(params, np.float64).reshape(2, -1).T


def landmarks_to_params(landmarks: np.ndarray, model: ShapeModel, k: int) -> np.ndarray:
    """float (68, 2) crop px -> float64 (4 + k,) parameters [cx, cy, log_s, theta, b_1..b_k]."""
    pose, shape = similarity_normalise(landmarks, model.mean)
    coeffs = model.basis[:k] @ (shape - model.mean)
    return np.concatenate([pose, coeffs])


def params_to_landmarks(
    params: np.ndarray, model: ShapeModel, detail: np.ndarray | None = None
) -> np.ndarray:
    """float64 (4 + k,) parameters -> float32 (68, 2) landmarks in crop px.

    detail: optional float64 (136,) normalised shape offset (the key frame's detail).
    """
    cx, cy, log_s, theta = params[:NUM_POSE]
    k = len(params) - NUM_POSE
    shape = model.mean + params[NUM_POSE:] @ model.basis[:k]
    if detail is not None:
        shape = shape + detail
    shape = shape.reshape(68, 2)
    # Damaged streams can decode to absurd values: let them become inf/nan quietly, the
    # decoder rejects non-finite landmarks with a clear error.
    with np.errstate(over="ignore", invalid="ignore"):
        pts = np.exp(log_s) * shape @ _rotation(theta).T + np.array([cx, cy])
        return pts.astype(np.float32)


# ---------------------------------------------------------------------------------------
# Quantisation configuration (written into the stream header)
# ---------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MotionConfig:
    """The motion coder's parameters.

    num_coeffs: PCA coefficients sent per frame.
    step_px: quantisation step of a shape coefficient, in crop pixels at the typical face
        scale; pose, camera and ring steps are derived from it (see `steps`).
    camera: each frame also carries the camera's motion since the key frame.
    ring: each frame also carries the ring's offset from the skull's pose; with camera
        motion only (the ring's points follow the corners' in the motion points), so
        `camera=False` turns it off too.
    """

    num_coeffs: int = 20  # with the lighter smoothing, fewer bits than 60 and closer to the frame
    step_px: float = 1.25
    camera: bool = True
    ring: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "ring", self.ring and self.camera)  # frozen

    def describe(self) -> str:
        """One line for `gracecodec info`."""
        extras = [name for name, on in (("camera", self.camera), ("ring", self.ring)) if on]
        return f"{self.num_coeffs} shape coefficients, {self.step_px:g} px step, " + (
            " and ".join(extras) + " motion" if extras else "no camera or ring motion"
        )

    @property
    def num_params(self) -> int:
        return (
            NUM_POSE
            + self.num_coeffs
            + (NUM_CAMERA if self.camera else 0)
            + (NUM_RING if self.ring else 0)
        )

    @property
    def num_points(self) -> int:
        """Motion points a frame decodes to: 68, 72 or 88."""
        return NUM_LANDMARKS + NUM_CORNERS * self.camera + RING_POINTS * self.ring

    def steps(self, model: ShapeModel, size: int = 256) -> np.ndarray:
        """float64 (num_params,) quantisation step of each parameter.

        Each pose parameter gets a step whose error, spread over the face, is a quarter
        of a coefficient step's: pose errors move every point, shape errors spread out.
        The camera's steps move the middle of the crop's edges by half a coefficient step:
        the background needs less precision than the face (in a one-off trial on four val
        clips a quarter step cost about 1.5x the camera's bits for no measurable gain).
        The ring's harmonics get 1.6 coefficient steps (2 px at the default step): in the
        same trial as `RING_HARMONICS`, 1 px bought +0.002 MS-SSIM for 1.6x the bits.
        """
        q = self.step_px
        pose = [q / 4, q / 4, q / (4 * model.scale0), q / (4 * model.scale0)]
        camera = [q / 2, q / 2, q / size, q / size] if self.camera else []
        ring = [1.6 * q] * NUM_RING if self.ring else []
        return np.array(pose + [q / model.scale0] * self.num_coeffs + camera + ring)

    def to_bytes(self, model: ShapeModel) -> bytes:
        flags = (FLAG_CAMERA if self.camera else 0) | (FLAG_RING if self.ring else 0)
        return (
            binary.u8(MOTION_CODER_VERSION)
            + binary.length_prefixed(model.digest)
            + binary.u8(self.num_coeffs)
            + binary.varint(round(self.step_px * 1000))
            + binary.u8(flags)
        )

    @classmethod
    def from_bytes(cls, data: bytes, model: ShapeModel) -> MotionConfig:
        r = binary.ByteReader(data, "motion parameters")
        version = r.u8()
        if version not in (1, MOTION_CODER_VERSION):
            raise BitstreamError(f"motion coder version {version} is not supported")
        digest = r.length_prefixed(32)
        if digest != model.digest:
            raise BitstreamError(
                f"stream uses shape model {digest.hex()}, this build ships {model.digest.hex()}"
            )
        k = r.u8()
        step = r.varint(10**6) / 1000
        flags = r.u8() if version >= 2 else 0
        if not 1 <= k <= model.max_coeffs or step <= 0:
            raise BitstreamError(f"motion parameters out of range (k={k}, step={step})")
        if flags & ~(FLAG_CAMERA | FLAG_RING) or flags == FLAG_RING:
            raise BitstreamError(f"unknown motion coder flags 0x{flags:02x}")
        return cls(
            num_coeffs=k,
            step_px=step,
            camera=bool(flags & FLAG_CAMERA),
            ring=bool(flags & FLAG_RING),
        )


# ---------------------------------------------------------------------------------------
# Adaptive models and the two coders
# ---------------------------------------------------------------------------------------


class _AdaptiveModels:
    """One frequency table per parameter, updated after every frame identically on both sides.

    Rows: the shape model's priors for the pose and shape parameters (when it has them),
    then a still prior for each camera and ring parameter (`still` rows).
    """

    def __init__(self, n: int, prior: np.ndarray | None, still_rows: int = 0):
        dist = np.abs(np.arange(ALPHABET) - ALPHABET_HALF)
        m = n - still_rows
        if prior is not None and prior.shape[0] >= m:
            rows = prior[:m].astype(np.int64)
        else:  # a generic peaked prior: zero residuals are the most likely
            row = np.maximum(1, (256 * 0.5**dist).astype(np.int64))
            row[ESCAPE] = 1
            rows = np.tile(row, (m, 1))
        # A still camera (a ring that moves with the skull) sends zeros frame after frame:
        # start sure of them (a pan's first few frames cost a few bits more until the
        # counts adapt).
        still = np.maximum(1, (4096 * 0.0625**dist).astype(np.int64))
        still[ESCAPE] = 1
        self.initial = np.vstack([rows, np.tile(still, (still_rows, 1))])
        self.reset()

    def reset(self) -> None:
        self.counts = self.initial.copy()

    def probabilities(self) -> np.ndarray:
        counts = self.counts.astype(np.float64)
        return counts / counts.sum(axis=1, keepdims=True)

    def update(self, symbols: np.ndarray) -> None:
        rows = np.arange(len(symbols))
        self.counts[rows, symbols] += COUNT_INCREMENT
        full = self.counts.sum(axis=1) > COUNT_LIMIT
        self.counts[full] = (self.counts[full] + 1) // 2


def _categorical():
    import constriction  # local import: keeps `import codec` light

    return constriction.stream.model.Categorical(perfect=False)


def _uniform16():
    import constriction

    return constriction.stream.model.Uniform(1 << 16)


def _residual_symbols(residual: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """int residual indices -> (symbols, escaped zigzag values)."""
    symbols = residual + ALPHABET_HALF
    escaped = np.abs(residual) > ALPHABET_HALF
    symbols[escaped] = ESCAPE
    raw = np.array([binary.zigzag(int(v)) for v in residual[escaped]], dtype=np.int32)
    return symbols.astype(np.int32), raw


class _Predictor:
    """Closed-loop state shared by both sides: decoded indices and the coder context.

    The parameter vector: pose and PCA coefficients (`num_shape`), then the camera's
    (`num_camera`), then the ring's (`num_ring`)."""

    def __init__(self, config: MotionConfig, model: ShapeModel, size: int):
        self.config = config
        self.model = model
        self.size = size
        self.steps = config.steps(model, size)
        self.n = config.num_params
        self.num_camera = NUM_CAMERA if config.camera else 0
        self.num_ring = NUM_RING if config.ring else 0
        self.num_shape = self.n - self.num_camera - self.num_ring
        self.models = _AdaptiveModels(self.n, model.prior_counts, self.num_camera + self.num_ring)
        self.previous: np.ndarray | None = None  # int64 (n,) decoded indices
        self.detail_step = config.step_px / (2 * model.scale0)
        self.detail = np.zeros(136)  # the key frame's shape detail outside the PCA basis
        self.key_landmarks = np.zeros((NUM_LANDMARKS, 2))  # decoded: the ring's pose base

    def to_params(self, points: np.ndarray) -> np.ndarray:
        """Motion points (68, 72 or 88, 2) -> float64 (n,) parameters (a missing camera:
        still; a missing ring: with the skull)."""
        points = np.asarray(points, np.float64)
        landmarks = points[:NUM_LANDMARKS]
        params = [landmarks_to_params(landmarks, self.model, self.config.num_coeffs)]
        corners = points[NUM_LANDMARKS : NUM_LANDMARKS + NUM_CORNERS]
        if self.num_camera:
            camera = corners_to_camera(corners, self.size) if len(corners) else np.zeros(4)
            params.append(camera)
        if self.num_ring:
            ring = points[NUM_LANDMARKS + NUM_CORNERS :]
            offset = ring - skull_ring(self.key_landmarks, landmarks) if len(ring) else 0
            params.append(ring_to_params(np.zeros((RING_POINTS, 2)) + offset))
        return np.concatenate(params)

    def indices_to_landmarks(self, indices: np.ndarray) -> np.ndarray:
        """Decoded indices -> float32 motion points (`MotionConfig.num_points`, 2)."""
        params = indices * self.steps
        pts = params_to_landmarks(params[: self.num_shape], self.model, self.detail)
        if not self.num_camera:
            return pts
        camera = params[self.num_shape : self.num_shape + self.num_camera]
        out = [pts, camera_to_corners(camera, self.size)]
        if self.num_ring:
            with np.errstate(over="ignore", invalid="ignore"):  # damaged streams: checked later
                offset = params_to_ring(params[self.num_shape + self.num_camera :])
                out.append((skull_ring(self.key_landmarks, pts) + offset).astype(np.float32))
        return np.vstack(out)

    def start_segment(self, indices: np.ndarray, detail_indices: np.ndarray) -> None:
        """indices: the key frame's pose and shape; its camera is still and its ring on
        the skull by definition."""
        self.previous = np.concatenate([indices, np.zeros(self.n - len(indices), np.int64)])
        self.detail = detail_indices * self.detail_step
        self.key_landmarks = params_to_landmarks(
            indices * self.steps[: self.num_shape], self.model, self.detail
        ).astype(np.float64)
        self.models.reset()


class MotionEncoder:
    """Turns per-frame landmarks into KEYFRAME landmark fields and MOTION payloads.

    Usage: `intra(landmarks)` at a key frame (returns its payload bytes and the decoded
    landmarks), then `inter(landmarks)` for each following frame, which returns the
    decoded landmarks and the list of (frame index, payload) MOTION chunks that became
    ready; `seal()` before the next key frame or at the end releases the held-back rest.
    """

    def __init__(self, config: MotionConfig, model: ShapeModel | None = None, size: int = 256):
        self.state = _Predictor(config, model or default_shape_model(), size)
        self._coder = None
        self._pending: list[tuple[int, int]] = []  # (frame index, words needed)
        self._sent_words = 0
        self._frame = 0

    def intra(self, landmarks: np.ndarray, frame: int) -> tuple[bytes, np.ndarray]:
        """Starts a segment. landmarks: float (68, 2) (the key frame defines the camera).
        Returns (intra-coded parameters, decoded float32 motion points)."""
        import constriction

        s = self.state
        landmarks = np.asarray(landmarks, np.float64)[:NUM_LANDMARKS]
        params = landmarks_to_params(landmarks, s.model, s.config.num_coeffs)
        steps = s.steps[: s.num_shape]
        indices = np.clip(np.round(params / steps), -(2**31), 2**31 - 1).astype(np.int64)
        # The identity-specific shape the PCA basis misses stays constant over a segment:
        # send it once here instead of paying for more coefficients every frame.
        _, shape = similarity_normalise(landmarks, s.model.mean)
        coeffs = params[NUM_POSE:]
        detail = shape - s.model.mean - coeffs @ s.model.basis[: len(coeffs)]
        detail_indices = np.clip(np.round(detail / s.detail_step), -MAX_RESIDUAL, MAX_RESIDUAL)
        s.start_segment(indices, detail_indices.astype(np.int64))
        self._coder = constriction.stream.queue.RangeEncoder()
        self._pending, self._sent_words, self._frame = [], 0, frame
        values = np.concatenate([indices, detail_indices.astype(np.int64)])
        payload = b"".join(binary.svarint(int(v)) for v in values)
        return payload, s.indices_to_landmarks(s.previous)

    def inter(self, landmarks: np.ndarray) -> tuple[np.ndarray, list[tuple[int, bytes]]]:
        """Codes one frame after the key frame. landmarks: motion points (68 or 72, 2).
        Returns (decoded motion points, ready chunks)."""
        s = self.state
        if self._coder is None or s.previous is None:
            raise RuntimeError("MotionEncoder.inter called before intra")
        self._frame += 1
        params = s.to_params(landmarks)
        residual = np.round(params / s.steps - s.previous).astype(np.int64)
        residual = np.clip(residual, -MAX_RESIDUAL, MAX_RESIDUAL)
        symbols, raw = _residual_symbols(residual)
        self._coder.encode(symbols, _categorical(), s.models.probabilities())
        if len(raw):
            self._coder.encode(raw, _uniform16())
        s.models.update(symbols)
        s.previous = s.previous + residual
        self._pending.append((self._frame, self._coder.pos()[0] + LOOKAHEAD_WORDS))
        return s.indices_to_landmarks(s.previous), self._release(sealed=False)

    def seal(self) -> list[tuple[int, bytes]]:
        """Ends the segment: flushes the coder and returns every held-back chunk."""
        if self._coder is None:
            return []
        ready = self._release(sealed=True)
        self._coder = None
        return ready

    def _release(self, sealed: bool) -> list[tuple[int, bytes]]:
        """Pops the pending frames whose words are all final, each with the new words."""
        words = self._coder.get_compressed()
        words_available = len(words) if sealed else _final_words(self._coder, words)
        ready = []
        while self._pending and (sealed or self._pending[0][1] <= words_available):
            frame, _ = self._pending.pop(0)
            # Each chunk carries every word finalised so far that was not sent yet.
            chunk = words[self._sent_words : words_available]
            self._sent_words = max(self._sent_words, words_available)
            ready.append((frame, chunk.astype("<u4").tobytes()))
        return ready


def _final_words(coder, words: np.ndarray) -> int:
    """How many leading words of a running range coder can no longer change.

    `pos()` counts words that a carry may still increment: while lower + range overflows
    64 bits the coder is "inverted", and the last word plus any run of 0xFFFFFFFF words
    before it wait for the carry to resolve. Being conservative only delays a packet.
    """
    position, (lower, rng) = coder.pos()
    if lower + rng < 1 << 64:
        return position
    n = position - 1  # the last counted word waits for the carry
    while n > 0 and words[n] in (0, 0xFFFFFFFF):  # a run the carry would ripple through
        n -= 1
    return n  # words[n] is the first word a carry may change


class MotionDecoder:
    """Mirror of MotionEncoder on the receiving side."""

    def __init__(self, config: MotionConfig, model: ShapeModel | None = None, size: int = 256):
        self.state = _Predictor(config, model or default_shape_model(), size)
        self._words = np.zeros(0, dtype=np.uint32)  # received, not yet consumed words
        self._checkpoint: tuple[int, tuple[int, int]] | None = None
        self._shadow = None  # a mirror encoder: its pos() is our decoder checkpoint

    @property
    def ready(self) -> bool:
        """True once a key frame has started a segment."""
        return self.state.previous is not None

    def intra(self, payload: bytes) -> np.ndarray:
        """Reads a key frame's parameters; returns its decoded float32 motion points."""
        import constriction

        s = self.state
        r = binary.ByteReader(payload, "key-frame landmarks")
        indices = np.array([r.svarint(2**31) for _ in range(s.num_shape)], dtype=np.int64)
        detail = np.array([r.svarint(MAX_RESIDUAL) for _ in range(136)], dtype=np.int64)
        r.expect_end()
        s.start_segment(indices, detail)
        self._words = np.zeros(0, dtype=np.uint32)
        self._shadow = constriction.stream.queue.RangeEncoder()
        self._checkpoint = None
        return self._landmarks(s.previous)

    def inter(self, payload: bytes) -> np.ndarray:
        """Decodes one MOTION chunk; returns decoded float32 motion points."""
        import constriction

        s = self.state
        if s.previous is None or self._shadow is None:
            raise BitstreamError("motion packet before any key frame")
        if len(payload) % 4:
            raise BitstreamError("motion packet length is not a multiple of 4 bytes")
        self._words = np.concatenate([self._words, np.frombuffer(payload, dtype="<u4")])
        if len(self._words) == 0:
            raise BitstreamError("motion stream underrun: no coded data")
        decoder = constriction.stream.queue.RangeDecoder(self._words.astype(np.uint32))
        try:
            if self._checkpoint is not None:
                decoder.seek(0, self._checkpoint[1])
            symbols = np.asarray(decoder.decode(_categorical(), s.models.probabilities()))
            escaped = symbols == ESCAPE
            raw = (
                np.asarray(decoder.decode(_uniform16(), int(escaped.sum())))
                if escaped.any()
                else np.zeros(0, dtype=np.int32)
            )
        except (AssertionError, ValueError, RuntimeError) as e:
            raise BitstreamError(f"motion stream damaged: {e}") from None
        residual = symbols.astype(np.int64) - ALPHABET_HALF
        residual[escaped] = [binary.unzigzag(int(v)) for v in raw]
        # Mirror the encoder to learn where the next frame starts in the word stream.
        self._shadow.encode(symbols.astype(np.int32), _categorical(), s.models.probabilities())
        if len(raw):
            self._shadow.encode(raw.astype(np.int32), _uniform16())
        position, coder_state = self._shadow.pos()
        consumed = position - (self._checkpoint[0] if self._checkpoint else 0)
        self._words = self._words[consumed:]
        self._checkpoint = (position, coder_state)
        s.models.update(symbols.astype(np.int32))
        s.previous = s.previous + residual
        return self._landmarks(s.previous)

    def _landmarks(self, indices: np.ndarray) -> np.ndarray:
        s = self.state
        pts = s.indices_to_landmarks(indices)
        if not np.isfinite(pts).all():
            raise BitstreamError("motion stream decodes to non-finite landmarks")
        if s.num_camera:  # a sender's camera stays well inside these (encoder.camera)
            camera = slice(s.num_shape, s.num_shape + s.num_camera)
            tx, ty, a, b = indices[camera] * s.steps[camera]
            if max(abs(tx), abs(ty)) > s.size or max(abs(a), abs(b)) > MAX_CAMERA_ZOOM:
                raise BitstreamError("motion stream decodes to an implausible camera motion")
        if s.num_ring and np.abs(pts[NUM_LANDMARKS + NUM_CORNERS :]).max() > 4 * s.size:
            raise BitstreamError("motion stream decodes to an implausible ring motion")
        return pts


def rms_error(a: np.ndarray, b: np.ndarray) -> float:
    """Root mean square Euclidean distance between two (N, 2) point sets, in px."""
    return float(np.sqrt(((np.asarray(a, np.float64) - b) ** 2).sum(axis=-1).mean()))


def fit_shape_model(
    tracks: Sequence[np.ndarray], max_coeffs: int = 40, config: MotionConfig | None = None
) -> ShapeModel:
    """Fits the PCA basis and residual priors on landmark tracks in crop pixels.

    tracks: sequence of float (T, 68, 2) smoothed landmark tracks, one per clip.
    """
    frames = np.concatenate([np.asarray(t, np.float64).reshape(-1, 68, 2) for t in tracks])
    # Iterate mean estimation: normalise to the current mean, re-average (generalised Procrustes).
    first = frames[0] - frames[0].mean(axis=0)
    mean = (first / np.sqrt((first**2).sum(axis=1).mean())).reshape(-1)
    for _ in range(5):
        shapes = np.stack([similarity_normalise(f, mean)[1] for f in frames])
        mean = shapes.mean(axis=0)
        mean /= np.sqrt((mean.reshape(68, 2) ** 2).sum(axis=1).mean())
    shapes = np.stack([similarity_normalise(f, mean)[1] for f in frames])
    scales = np.stack([similarity_normalise(f, mean)[0][2] for f in frames])
    _, sv, vt = np.linalg.svd(shapes - mean, full_matrices=False)
    k = min(max_coeffs, vt.shape[0])
    stddev = sv[:k] / np.sqrt(len(shapes))
    model = ShapeModel(mean, vt[:k], stddev, float(np.exp(np.median(scales))))
    # Priors: the residual histogram each parameter shows on the training tracks.
    config = config or MotionConfig()
    hist = np.ones((NUM_POSE + k, ALPHABET), dtype=np.int64)
    wide = MotionConfig(num_coeffs=k, step_px=config.step_px, camera=False)
    for track in tracks:
        enc = MotionEncoder(wide, model)
        enc.intra(track[0], 0)
        for pts in track[1:]:
            before = enc.state.previous.copy()
            enc.inter(pts)
            symbols, _ = _residual_symbols(enc.state.previous - before)
            hist[np.arange(len(symbols)), symbols] += 1
        enc.seal()
    prior = np.maximum(1, np.round(hist * (1024 / hist.sum(axis=1, keepdims=True)))).astype(
        np.int64
    )
    return dataclasses.replace(model, prior_counts=prior)
