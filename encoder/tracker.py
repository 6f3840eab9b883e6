"""Per-frame tracking of one face through a video.

The tracker locks onto the largest face, then follows that person: each frame it searches
a region of interest around the previous box (cheap), falls back to the whole frame, and
keeps only a detection that overlaps the previous box. When the face is missing it returns
None (the caller holds the last pose); it re-locks onto the largest face only after the
tracked one has been gone for more than `max_lost` frames.
"""

from __future__ import annotations

import cv2
import numpy as np

from codec.errors import InputError
from encoder.landmarks import Box, Face, LandmarkDetector, check_image

__all__ = ["FaceTracker", "box_iou"]


_ROI_GRID_PX = 32  # the search region's corners snap to this grid (in search px)


def box_iou(a: Box, b: Box) -> float:
    """Intersection over union of two (x0, y0, x1, y1) boxes; 0.0 when either is empty."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    inter = iw * ih
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return float(inter / union) if union > 0 else 0.0


def _landmark_box(landmarks: np.ndarray) -> Box:
    """Bounding box (x0, y0, x1, y1) of a 68x2 landmark array."""
    x0, y0 = landmarks.min(axis=0)
    x1, y1 = landmarks.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)


class FaceTracker:
    """Follow one face through a sequence of frames.

    detector: any LandmarkDetector.
    redetect_every: run the face detector every N frames; in between, landmarks are fitted
        in the previous box shifted by the face's motion (faster, but it cannot notice the
        face disappearing between detections). 1 = detect every frame (most robust).
    max_lost: frames the tracked face may be missing before the tracker takes the largest
        face again (25 = 1 s at 25 fps).
    min_iou: a detection continues the track if its box overlaps the previous box by more.
    roi_scale: side of the search region in units of the previous box size.
    roi_face_px: the region is halved until the previous box is at most twice this big
        (the dlib HOG detector needs >= 80 px); landmarks are still fitted at full
        resolution.
    """

    def __init__(
        self,
        detector: LandmarkDetector,
        redetect_every: int = 1,
        *,
        max_lost: int = 25,
        min_iou: float = 0.3,
        roi_scale: float = 2.0,
        roi_face_px: int = 128,
    ) -> None:
        if redetect_every < 1:
            raise InputError(f"redetect_every must be >= 1, got {redetect_every}")
        self.detector = detector
        self.redetect_every = int(redetect_every)
        self.max_lost = int(max_lost)
        self.min_iou = float(min_iou)
        self.roi_scale = float(roi_scale)
        self.roi_face_px = int(roi_face_px)
        self._box: Box | None = None  # box of the tracked face in the last frame it was seen
        self._landmarks: np.ndarray | None = None
        self._lost = 0
        self._since_detect = 0

    @property
    def lost_frames(self) -> int:
        """Consecutive frames, up to the latest, in which the tracked face was not found."""
        return self._lost

    @property
    def box(self) -> Box | None:
        """Box (x0, y0, x1, y1) of the tracked face where it was last seen, or None."""
        return self._box

    def reset(self) -> None:
        """Forget the tracked face; the next frame takes the largest face again."""
        self._box = None
        self._landmarks = None
        self._lost = 0
        self._since_detect = 0

    def track(self, frame: np.ndarray) -> np.ndarray | None:
        """Landmarks of the tracked face in one frame.

        frame: uint8 HxWx3 RGB. Returns float32 68x2 (x, y) in frame pixels, or None when
        the tracked face is not found in this frame.
        """
        frame = check_image(frame)
        landmarks = None
        if (
            self._landmarks is not None
            and self._lost == 0
            and self._since_detect < self.redetect_every - 1
        ):
            landmarks = self._follow(frame)
        if landmarks is None:
            landmarks = self._detect(frame)
        if landmarks is None:
            self._lost += 1
            self._landmarks = None
            return None
        self._lost = 0
        self._landmarks = landmarks
        return landmarks

    # -- internals ------------------------------------------------------------------------

    def _follow(self, frame: np.ndarray) -> np.ndarray | None:
        """Fit landmarks in the previous box moved with the face; None if implausible."""
        if self._box is None or self._landmarks is None:
            return None
        landmarks = self.detector.landmarks_in_box(frame, self._box)
        if not self._plausible(landmarks, self._box):
            return None
        dx, dy = landmarks.mean(axis=0) - self._landmarks.mean(axis=0)
        x0, y0, x1, y1 = self._box
        self._box = (x0 + dx, y0 + dy, x1 + dx, y1 + dy)
        self._since_detect += 1
        return landmarks

    def _detect(self, frame: np.ndarray) -> np.ndarray | None:
        """Run the detector and pick the tracked face; updates the box. None if absent."""
        self._since_detect = 0
        if self._box is None or self._lost > self.max_lost:
            # (Re)acquire: the largest plausible face in the whole frame.
            faces = self._plausible_faces(self.detector.detect(frame))
            if not faces:
                return None
            face = max(faces, key=lambda f: f.area)
            self._box = face.box
            return face.landmarks

        face, refit = self._search_roi(frame)
        if face is None:
            face, refit = self._match(self.detector.detect(frame)), False
        if face is None:
            return None
        self._box = face.box
        if refit:
            # The ROI was downscaled: fit landmarks again at full resolution.
            landmarks = self.detector.landmarks_in_box(frame, face.box)
            return landmarks if self._plausible(landmarks, face.box) else None
        return face.landmarks

    def _search_roi(self, frame: np.ndarray) -> tuple[Face | None, bool]:
        """Detect in a region around the previous box; returns (match, landmarks need refit).

        Faces are mapped back to frame pixels; the landmarks of a downscaled search are at
        reduced precision, hence the refit flag.
        """
        if self._box is None:
            return None, False
        h, w = frame.shape[:2]
        x0, y0, x1, y1 = self._box
        size = max(x1 - x0, y1 - y0)
        # The detector's boxes come in steps of its scan grid, and dlib's landmark fit moves
        # with the box (eyebrows by 8 px for a 2 % smaller box on a val clip). A search
        # scaled by a factor that follows the last box, or placed at its exact position,
        # feeds those steps back frame after frame: on a still face the box shrank 1.5 % a
        # frame. So the factor is a power of two and the region snaps to a coarse grid:
        # for a still face the search, and so the box and the fit, stay the same.
        scale = 1.0
        while size * scale > 2 * self.roi_face_px:
            scale /= 2
        grid = _ROI_GRID_PX / scale
        cx, cy, half = (x0 + x1) / 2, (y0 + y1) / 2, self.roi_scale * size / 2
        rx0 = max(0, int((cx - half) // grid * grid))
        ry0 = max(0, int((cy - half) // grid * grid))
        rx1 = min(w, int(-(-(cx + half) // grid) * grid))
        ry1 = min(h, int(-(-(cy + half) // grid) * grid))
        if rx1 - rx0 < 16 or ry1 - ry0 < 16:
            return None, False
        roi = frame[ry0:ry1, rx0:rx1]
        if scale < 1.0:
            roi = cv2.resize(
                roi,
                (max(1, round(roi.shape[1] * scale)), max(1, round(roi.shape[0] * scale))),
                interpolation=cv2.INTER_AREA,
            )
        faces = []
        for f in self.detector.detect(roi):
            bx0, by0, bx1, by1 = f.box
            box = (
                rx0 + bx0 / scale,
                ry0 + by0 / scale,
                rx0 + bx1 / scale,
                ry0 + by1 / scale,
            )
            landmarks = (f.landmarks / np.float32(scale) + np.float32((rx0, ry0))).astype(
                np.float32
            )
            faces.append(Face(box=box, landmarks=landmarks, score=f.score))
        return self._match(faces), scale < 1.0

    def _match(self, faces: list[Face]) -> Face | None:
        """The plausible face overlapping the previous box best (IoU > min_iou), if any."""
        if self._box is None:
            return None
        best, best_iou = None, self.min_iou
        for face in self._plausible_faces(faces):
            iou = box_iou(face.box, self._box)
            if iou > best_iou:
                best, best_iou = face, iou
        return best

    def _plausible_faces(self, faces: list[Face]) -> list[Face]:
        return [f for f in faces if self._plausible(f.landmarks, f.box)]

    @staticmethod
    def _plausible(landmarks: np.ndarray, box: Box) -> bool:
        """Reject garbage fits: finite points whose bounding box overlaps the face box."""
        if landmarks.shape != (68, 2) or not np.all(np.isfinite(landmarks)):
            return False
        return box_iou(_landmark_box(landmarks), box) > 0.25
