"""Landmark detectors: dlib on a real face photo, and face-alignment failing cleanly offline."""

from __future__ import annotations

import importlib.machinery
import os
import sys
import types

import cv2
import numpy as np
import pytest
from skimage import data as skdata

from codec.errors import BackendUnavailableError, GraceError, InputError
from encoder import landmarks as lm_mod
from encoder.landmarks import DETECTOR_NAMES, Face, make_detector

FA_FILES = ("2DFAN4-cd938726ad.zip", "s3fd-619a316812.pth")


@pytest.fixture(scope="module")
def detector():
    return make_detector("dlib")


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return skdata.astronaut()  # 512x512 RGB, one face of about 90 px


def assert_plausible_face(face: Face, image: np.ndarray) -> None:
    pts = face.landmarks
    assert pts.shape == (68, 2) and pts.dtype == np.float32
    h, w = image.shape[:2]
    assert np.all((pts >= 0) & (pts < (w, h)))
    # dlib boxes are tight (brows to lip); the jaw may reach a little outside.
    x0, y0, x1, y1 = face.box
    mx, my = 0.3 * (x1 - x0), 0.3 * (y1 - y0)
    assert np.all((pts[:, 0] > x0 - mx) & (pts[:, 0] < x1 + mx))
    assert np.all((pts[:, 1] > y0 - my) & (pts[:, 1] < y1 + my))
    # iBUG-68 layout: eyes above the nose tip above the mouth; image-left eye is 36-41.
    eyes_y = pts[36:48, 1].mean()
    assert eyes_y < pts[30, 1] < pts[48:68, 1].mean()
    assert pts[36:42, 0].mean() < pts[42:48, 0].mean()
    assert pts[8, 1] > pts[48:68, 1].max()  # chin below the mouth


def test_names():
    assert DETECTOR_NAMES == ("dlib", "face-alignment")
    with pytest.raises(InputError, match="unknown landmark detector"):
        make_detector("nope")


def test_dlib_finds_astronaut(detector, astronaut):
    faces = detector.detect(astronaut)
    assert len(faces) == 1
    face = faces[0]
    assert detector.name == "dlib"
    assert_plausible_face(face, astronaut)
    # The astronaut's face is around (180..270, 80..175) in the 512x512 photo.
    x0, y0, x1, y1 = face.box
    assert 150 < (x0 + x1) / 2 < 300 and 60 < (y0 + y1) / 2 < 200
    assert face.score > 0


def test_landmarks_in_box_matches_detect(detector, astronaut):
    face = detector.detect(astronaut)[0]
    pts = detector.landmarks_in_box(astronaut, face.box)
    assert pts.dtype == np.float32 and pts.shape == (68, 2)
    np.testing.assert_array_equal(pts, face.landmarks)


@pytest.mark.parametrize("size", [256, 1024])
def test_dlib_small_and_large_images(detector, astronaut, size):
    # 256: the face is ~45 px, only found by the upsampled retry; 1024: downscaled search.
    image = cv2.resize(astronaut, (size, size), interpolation=cv2.INTER_AREA)
    faces = detector.detect(image)
    assert len(faces) == 1
    assert_plausible_face(faces[0], image)
    ref = detector.detect(astronaut)[0].landmarks * (size / 512)
    assert np.abs(faces[0].landmarks - ref).mean() < 0.03 * size


def test_no_face_in_blank_or_noise(detector):
    rng = np.random.default_rng(0)
    assert detector.detect(np.zeros((240, 320, 3), np.uint8)) == []
    assert detector.detect(rng.integers(0, 256, (300, 300, 3), dtype=np.uint8)) == []


@pytest.mark.parametrize(
    "image",
    [np.zeros((32, 32), np.uint8), np.zeros((32, 32, 3), np.float32), [[0, 0, 0]]],
)
def test_bad_image_is_input_error(detector, image):
    with pytest.raises(InputError):
        detector.detect(image)


def test_bad_box_is_input_error(detector, astronaut):
    with pytest.raises(InputError):
        detector.landmarks_in_box(astronaut, (10, 10, 5, 20))
    with pytest.raises(InputError):
        detector.landmarks_in_box(astronaut, (10, 10))


def test_face_alignment_unavailable_names_files(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    # An empty hub cache: whether or not the package is installed, nothing may download.
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    if lm_mod.importlib.util.find_spec("face_alignment") is None:
        with pytest.raises(BackendUnavailableError) as info:
            make_detector("face-alignment")
        assert "pip install face-alignment" in str(info.value)
    else:
        with pytest.raises(BackendUnavailableError) as info:
            make_detector("face-alignment")
    message = str(info.value)
    assert str(tmp_path / "checkpoints") in message
    assert isinstance(info.value, GraceError) and isinstance(info.value, ImportError)
    assert "\n" not in message
    for name in lm_mod.face_alignment_weight_files():
        assert name in message


def _stub_face_alignment() -> types.ModuleType:
    """A stand-in face_alignment package whose FaceAlignment must never be constructed."""
    stub = types.ModuleType("face_alignment")
    stub.__spec__ = importlib.machinery.ModuleSpec("face_alignment", None)

    def no_download(*args, **kwargs):
        raise AssertionError("FaceAlignment was constructed (it would try to download)")

    stub.FaceAlignment = no_download
    stub.LandmarksType = types.SimpleNamespace(TWO_D=1)
    return stub


def test_face_alignment_missing_weights_with_package(monkeypatch, tmp_path):
    torch = pytest.importorskip("torch")
    monkeypatch.setitem(sys.modules, "face_alignment", _stub_face_alignment())
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    checkpoints = tmp_path / "checkpoints"
    with pytest.raises(BackendUnavailableError) as info:
        make_detector("face-alignment")
    message = str(info.value)
    assert str(checkpoints) in message
    assert all(name in message for name in FA_FILES)

    # With one file present only the other is named.
    checkpoints.mkdir()
    (checkpoints / FA_FILES[1]).write_bytes(b"")
    with pytest.raises(BackendUnavailableError) as info:
        make_detector("face-alignment")
    assert FA_FILES[0] in str(info.value) and FA_FILES[1] not in str(info.value)
    assert os.listdir(checkpoints) == [FA_FILES[1]]  # nothing was fetched
