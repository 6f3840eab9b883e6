"""The MTCNN judge: our network on facenet-pytorch's weights, checked against dlib."""

import importlib.util
import math

import numpy as np
import pytest
from skimage import data

from codec.errors import BackendUnavailableError, InputError
from codec.evaluation import metrics, mtcnn


@pytest.fixture(scope="module")
def detector() -> mtcnn.MtcnnDetector:
    try:
        return mtcnn.MtcnnDetector()
    except BackendUnavailableError as e:
        pytest.skip(str(e))


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # 512x512 RGB, one frontal face


def _dlib_five(image: np.ndarray) -> np.ndarray:
    """dlib's 68 points reduced to MTCNN's 5: eye centres, nose tip, mouth corners."""
    from encoder.landmarks import DlibDetector

    lm = DlibDetector().detect(image)[0].landmarks
    return np.stack([lm[36:42].mean(0), lm[42:48].mean(0), lm[30], lm[48], lm[54]])


def test_finds_the_face_where_dlib_does(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1 and faces[0].score > 0.9
    points = faces[0].landmarks
    assert points.shape == (5, 2) and points.dtype == np.float32
    # Two independent models of the same face agree to a few pixels (eye distance ~60 px).
    err = np.linalg.norm(points - _dlib_five(astronaut), axis=1)
    assert err.max() < 0.12 * np.linalg.norm(points[1] - points[0])


def test_no_face_in_a_flat_or_a_noise_image(detector):
    assert detector.detect(np.full((200, 200, 3), 90, np.uint8)) == []
    noise = np.random.default_rng(0).integers(0, 256, (160, 160, 3), dtype=np.uint8)
    assert detector.detect(noise) == []


@pytest.mark.parametrize("d", [4, 10])
def test_landmarks_in_a_fixed_box_follow_the_face(detector, astronaut, d):
    box = detector.detect(astronaut)[0].box
    before = detector.landmarks_in_box(astronaut, box)
    after = detector.landmarks_in_box(np.roll(astronaut, d, axis=1), box)
    shift = (after - before).mean(0)
    assert shift[0] == pytest.approx(d, abs=0.35 * d)
    assert abs(shift[1]) < 1.5


def test_bad_input_is_an_input_error(detector, astronaut):
    with pytest.raises(InputError):
        detector.detect(astronaut.astype(np.float32))
    with pytest.raises(InputError):
        detector.landmarks_in_box(astronaut, (10, 10, float("nan"), 50))


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 9, 9], [1, 1, 10, 10], [50, 50, 59, 59], [2, 2, 5, 5]], float)
    scores = np.array([0.8, 0.9, 0.7, 0.95])
    assert list(mtcnn._nms(boxes, scores, 0.5)) == [3, 1, 2]
    # Over the smaller box, the small box inside box 1 counts as a full overlap.
    assert list(mtcnn._nms(boxes, scores, 0.7, over_min=True)) == [3, 2]


def test_square_keeps_the_centre():
    sq = mtcnn._square(np.array([[10.0, 20.0, 30.0, 60.0]]))
    np.testing.assert_allclose(sq, [[0.0, 20.0, 40.0, 60.0]])


def test_missing_package_says_how_to_install(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(BackendUnavailableError, match="--no-deps facenet-pytorch"):
        mtcnn.weight_paths()


def test_akd_mt_scores_each_original_once(detector, astronaut):
    calls = []

    class Counting:
        def detect(self, image):
            calls.append(1)
            return detector.detect(image)

        landmarks_in_box = staticmethod(detector.landmarks_in_box)

    run = metrics.akd_independent(Counting())
    blank = np.zeros_like(astronaut)
    originals = np.stack([astronaut, blank])
    first = run(originals, np.stack([astronaut, blank]))
    second = run(originals, np.stack([np.roll(astronaut, 6, axis=0), blank]))
    assert len(calls) == 2  # one detection per distinct original, not per call
    assert first[0] == pytest.approx(0.0, abs=1e-5) and math.isnan(first[1])
    assert second[0] > 3.0 and math.isnan(second[1])
