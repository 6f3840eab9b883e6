"""FaceTracker: locking on the largest face, following it, losing and regaining it."""

from __future__ import annotations

import csv
from pathlib import Path

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from codec.errors import InputError
from encoder.landmarks import Face, make_detector
from encoder.tracker import FaceTracker, box_iou

DATA = Path("/work/shared/data")


@pytest.fixture(scope="module")
def detector():
    return make_detector("dlib")


@pytest.fixture(scope="module")
def head() -> np.ndarray:
    """The astronaut's head and shoulders, 240x250 RGB, face of about 90 px."""
    return np.ascontiguousarray(skdata.astronaut()[20:260, 100:350])


def paste(canvas: np.ndarray, patch: np.ndarray, x: int, y: int) -> np.ndarray:
    out = canvas.copy()
    out[y : y + patch.shape[0], x : x + patch.shape[1]] = patch
    return out


def landmark_center(pts: np.ndarray) -> np.ndarray:
    return pts.mean(axis=0)


class SmallestFirst:
    """Wraps a detector and lists its faces smallest first (the tracker must not care)."""

    def __init__(self, inner) -> None:
        self.inner = inner
        self.name = inner.name
        self.calls: list[tuple[int, int]] = []

    def detect(self, image: np.ndarray) -> list[Face]:
        self.calls.append(image.shape[:2])
        return sorted(self.inner.detect(image), key=lambda f: f.area)

    def landmarks_in_box(self, image, box):
        return self.inner.landmarks_in_box(image, box)


@pytest.fixture(scope="module")
def two_faces(head):
    """Canvas 480x800 with a 1.5x astronaut on the right, a 1x one on the left."""
    big = cv2.resize(head, None, fx=1.5, fy=1.5, interpolation=cv2.INTER_LINEAR)
    canvas = np.full((480, 800, 3), 128, np.uint8)
    both = paste(paste(canvas, big, 400, 60), head, 40, 140)
    small_only = paste(canvas, head, 40, 140)
    return both, small_only


def test_box_iou():
    assert box_iou((0, 0, 10, 10), (0, 0, 10, 10)) == 1.0
    assert box_iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    assert box_iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(1 / 3)


def test_takes_larger_face_consistently(detector, two_faces):
    both, _ = two_faces
    wrapped = SmallestFirst(detector)
    faces = wrapped.detect(both)
    assert len(faces) == 2 and faces[0].area < faces[1].area  # smaller listed first
    tracker = FaceTracker(wrapped)
    for shift in range(0, 12, 2):  # the scene drifts right a little each frame
        frame = np.roll(both, shift, axis=1)
        pts = tracker.track(frame)
        assert pts is not None and pts.shape == (68, 2) and pts.dtype == np.float32
        assert pts[:, 0].min() > 400 + shift  # every point on the larger (right) face
        assert tracker.lost_frames == 0
    # After the first frame the tracker searched a region, not the whole 480x800 canvas.
    assert all(shape != (480, 800) for shape in wrapped.calls[2:])


def test_does_not_jump_to_other_person(detector, two_faces):
    both, small_only = two_faces
    tracker = FaceTracker(detector, max_lost=2)
    big_pts = tracker.track(both)
    assert big_pts is not None
    # The tracked (larger) face leaves: None, even though another face is in view.
    for k in range(1, 4):
        assert tracker.track(small_only) is None
        assert tracker.lost_frames == k
    # Gone for more than max_lost frames: the tracker takes the largest face left.
    pts = tracker.track(small_only)
    assert pts is not None and pts[:, 0].max() < 400
    assert tracker.lost_frames == 0


def test_face_removed_then_back(detector, head):
    canvas = np.full((360, 480, 3), 40, np.uint8)
    tracker = FaceTracker(detector)
    results = []
    for i in range(9):
        frame = canvas if 3 <= i < 6 else paste(canvas, head, 100 + 3 * i, 60 + i)
        results.append(tracker.track(frame))
        if 3 <= i < 6:
            assert tracker.lost_frames == i - 2
    assert [r is None for r in results] == [False] * 3 + [True] * 3 + [False] * 3
    # The same face comes back where it now is (it moved 3 px right, 1 px down per frame).
    shift = landmark_center(results[6]) - landmark_center(results[2])
    np.testing.assert_allclose(shift, (12, 4), atol=3)
    assert tracker.lost_frames == 0


def test_no_face_at_all(detector):
    tracker = FaceTracker(detector)
    for k in range(1, 3):
        assert tracker.track(np.zeros((120, 160, 3), np.uint8)) is None
        assert tracker.lost_frames == k


def test_redetect_every_follows_motion(detector, head):
    canvas = np.full((360, 480, 3), 40, np.uint8)
    every_frame, sparse = FaceTracker(detector), FaceTracker(detector, redetect_every=4)
    for i in range(6):
        frame = paste(canvas, head, 100 + 4 * i, 60 + 2 * i)
        a, b = every_frame.track(frame), sparse.track(frame)
        assert a is not None and b is not None
        assert np.abs(landmark_center(a) - landmark_center(b)).max() < 3


@pytest.mark.parametrize("zoom", [1.0, 2.0, 3.0])
def test_still_face_keeps_its_box_and_landmarks(detector, head, zoom):
    """A face that does not move is fitted in the same box every frame. The search region
    once followed the last box's exact size and place, and the detector's stepped boxes
    fed back: at zoom 2 the box shrank frame after frame and dlib's fit moved with it."""
    frame = cv2.resize(head, None, fx=zoom, fy=zoom, interpolation=cv2.INTER_LINEAR)
    frame = paste(np.full((int(300 * zoom), int(330 * zoom), 3), 40, np.uint8), frame, 17, 23)
    tracker = FaceTracker(detector)
    # The first frame searches the whole frame, the next ones a region around the face,
    # which settles on the grid within two frames.
    for _ in range(3):
        first = tracker.track(frame)
    box = tracker.box
    for _ in range(6):
        assert np.array_equal(tracker.track(frame), first)
        assert tracker.box == box


def test_bad_arguments(detector):
    with pytest.raises(InputError):
        FaceTracker(detector, redetect_every=0)
    with pytest.raises(InputError):
        FaceTracker(detector).track(np.zeros((10, 10), np.uint8))


def _needs_crop_clip() -> Path | None:
    manifest = DATA / "manifest.csv"
    if not manifest.is_file():
        return None
    with manifest.open(newline="") as f:
        for row in csv.DictReader(f):
            if row["kind"] == "needs-crop" and (DATA / row["file"]).is_file():
                return DATA / row["file"]
    return None


def test_real_clip_tracked_smoothly(detector):
    clip = _needs_crop_clip()
    if clip is None:
        pytest.skip(f"no needs-crop clip: {DATA} (shared talking-head data) is absent")
    av = pytest.importorskip("av")
    tracker = FaceTracker(detector)
    tracks = []
    with av.open(str(clip)) as container:
        for i, frame in enumerate(container.decode(video=0)):
            if i == 20:
                break
            tracks.append(tracker.track(frame.to_ndarray(format="rgb24")))
    assert len(tracks) == 20
    assert all(t is not None for t in tracks), f"face lost in {clip.name}"
    size = float(np.ptp(tracks[0], axis=0).max())  # face size in px
    assert size > 80
    for prev, cur in zip(tracks, tracks[1:], strict=False):
        # Per point, consecutive frames differ by far less than the face size (measured
        # max about 0.07 on these clips, mostly jaw jitter).
        assert np.abs(cur - prev).max() < 0.15 * size
        assert np.linalg.norm(landmark_center(cur) - landmark_center(prev)) < 0.05 * size
