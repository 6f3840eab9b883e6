"""The capture-side face pipeline: track -> smooth -> stable crop, frame by frame.

Shared by the Encoder and by the tools that prepare data (shape-model fitting, training
caches, evaluation crops), so all of them see exactly the crops and landmarks the codec
sends.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import numpy as np

from codec.errors import InputError

from .crop import CropBox, CropConfig, StableCrop
from .landmarks import make_detector
from .smoothing import OneEuroFilter
from .tracker import FaceTracker


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
    detector: str = "dlib"
    crop: CropConfig = CropConfig()
    # 5 Hz at rest: 1 Hz lagged the mouth by frames (1.85 px from the frame, bench-motion)
    smooth_min_cutoff: float = 5.0  # Hz
    smooth_beta: float = 5.0
    max_wait_frames: int = 250  # frames held while no face has been seen yet


@dataclasses.dataclass(frozen=True)
class FaceFrame:
    """One source frame made ready for coding.

    image: uint8 (H, W, 3) source RGB frame; box: the crop box in source px;
    landmarks: float32 (68, 2) smoothed landmarks in crop px; recentred: the box moved;
    lost: the face was not found in this frame (the last pose is held).
    """

    index: int
    image: np.ndarray
    box: CropBox
    landmarks: np.ndarray
    recentred: bool
    lost: bool
    crop_size: int = 256

    def crop(self) -> np.ndarray:
        """uint8 (crop_size, crop_size, 3) crop of the source frame."""
        return self.box.cut(self.image, self.crop_size)


class FacePipeline:
    """Feeds source frames in, gets FaceFrames out (in order, one per input frame).

    Until the first face is found, frames are held (up to `max_wait_frames`) and later
    released with the first face's pose; a video with no face raises `InputError`.
    """

    def __init__(
        self, fps: float, width: int, height: int, config: PipelineConfig = PipelineConfig()
    ):
        self.config = config
        self.tracker = FaceTracker(make_detector(config.detector))
        self.smoother = OneEuroFilter(fps, config.smooth_min_cutoff, config.smooth_beta)
        self.crop = StableCrop(width, height, config.crop)
        self._waiting: list[np.ndarray] = []
        self._last: np.ndarray | None = None  # last smoothed landmarks, source px
        self._count = 0
        self.lost_frames = 0  # frames where the face was not found (after the first face)

    def process(self, frame: np.ndarray) -> list[FaceFrame]:
        """frame: uint8 (H, W, 3) RGB source frame."""
        found = self.tracker.track(frame)
        if found is None and self._last is None:
            self._waiting.append(frame)
            if len(self._waiting) > self.config.max_wait_frames:
                raise InputError(
                    f"no face found in the first {len(self._waiting)} frames of the video"
                )
            return []
        if found is not None:
            self._last = self.smoother(found)
        else:
            self.lost_frames += 1
        held, self._waiting = self._waiting, []
        out = [self._make(f, lost=True) for f in held]
        out.append(self._make(frame, lost=found is None))
        return out

    def finish(self) -> None:
        """Checks the end of the video: raises InputError when no face was ever found."""
        if self._last is None:
            if self._count == 0 and not self._waiting:
                raise InputError("the video holds no frames")
            raise InputError(f"no face found in any of the {len(self._waiting)} frames")

    def _make(self, frame: np.ndarray, lost: bool) -> FaceFrame:
        box, recentred = self.crop.update(self._last)
        size = self.config.crop.size
        index = self._count
        self._count += 1
        return FaceFrame(index, frame, box, box.to_crop(self._last, size), recentred, lost, size)


def face_frames(frames: Iterator[np.ndarray], pipeline: FacePipeline) -> Iterator[FaceFrame]:
    """Runs a whole frame iterator through the pipeline."""
    for frame in frames:
        yield from pipeline.process(frame)
    pipeline.finish()
