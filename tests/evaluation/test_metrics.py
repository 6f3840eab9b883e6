"""The metrics against values computed by hand on synthetic and stock images."""

import math

import numpy as np
import pytest
from skimage import data

from codec.errors import InputError
from codec.evaluation import metrics


@pytest.fixture(scope="module")
def astronaut() -> np.ndarray:
    return data.astronaut()  # 512x512 RGB, one frontal face


def _noisy(image: np.ndarray, sigma: float = 12.0, seed: int = 0) -> np.ndarray:
    noise = np.random.default_rng(seed).normal(0, sigma, image.shape)
    return np.clip(image + noise, 0, 255).astype(np.uint8)


def test_psnr_of_a_known_mse():
    a = np.full((32, 48, 3), 100, np.uint8)
    b = a + 10  # every sample off by 10: MSE 100
    assert metrics.psnr(a, b) == pytest.approx(10 * math.log10(255**2 / 100))
    c = a.copy()
    c[:16] += 20  # half the samples off by 20: MSE 200
    assert metrics.psnr(a, c) == pytest.approx(10 * math.log10(255**2 / 200))
    assert metrics.psnr(a, a) == math.inf


def test_psnr_counts_8_bit_differences_without_overflow():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 255, np.uint8)
    assert metrics.psnr(a, b) == pytest.approx(0.0)


def test_ssim_is_one_for_identical_and_less_for_noisy(astronaut):
    assert metrics.ssim(astronaut, astronaut) == pytest.approx(1.0)
    assert metrics.ssim(astronaut, _noisy(astronaut)) < 0.9


def test_ms_ssim_is_one_for_identical_and_less_for_noisy(astronaut):
    pytest.importorskip("pytorch_msssim")
    crop = astronaut[:256, 128:384]
    assert metrics.ms_ssim(crop, crop) == pytest.approx(1.0, abs=1e-5)
    noisy = metrics.ms_ssim(crop, _noisy(crop))
    assert noisy < 0.99
    assert metrics.ms_ssim(crop, _noisy(crop, 30.0)) < noisy  # more noise, lower score


def test_ms_ssim_refuses_small_frames():
    pytest.importorskip("pytorch_msssim")
    small = np.zeros((128, 128, 3), np.uint8)
    with pytest.raises(InputError, match="160"):
        metrics.ms_ssim(small, small)


def test_pairs_must_match():
    with pytest.raises(InputError):
        metrics.psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 9, 3), np.uint8))
    with pytest.raises(InputError):
        metrics.ssim(np.zeros((8, 8, 3), np.float32), np.zeros((8, 8, 3), np.float32))


def test_akd_and_aed_are_zero_for_identical(astronaut):
    assert metrics.akd(astronaut, astronaut) == 0.0
    assert metrics.aed(astronaut, astronaut) == 0.0


@pytest.mark.parametrize("d", [2, 4, 8])
def test_akd_follows_a_shift_of_d_pixels(astronaut, d):
    # The landmarks are fitted in the ORIGINAL's box on both images, so they follow the
    # shifted face: about d px each.
    shifted = np.roll(astronaut, d, axis=1)
    assert metrics.akd(astronaut, shifted) == pytest.approx(d, abs=0.25 * d)
    assert 0 < metrics.aed(astronaut, shifted) < 0.2  # still the same person


def test_aed_grows_with_damage(astronaut):
    mild = metrics.aed(astronaut, _noisy(astronaut, 8.0))
    assert 0 < mild < metrics.aed(astronaut, _noisy(astronaut, 60.0))


def test_no_face_gives_nan_not_an_error():
    blank = np.full((128, 128, 3), 90, np.uint8)
    ref = metrics.face_reference(blank)
    assert ref.box is None
    assert all(math.isnan(v) for v in metrics.face_scores(ref, blank))


def test_clip_scores_averages_per_frame_values(astronaut):
    pytest.importorskip("pytorch_msssim")
    crop = astronaut[:256, 128:384]
    originals = [crop, crop]
    decoded = [crop, np.clip(crop.astype(int) + 10, 0, 255).astype(np.uint8)]
    refs = [metrics.face_reference(crop), None]  # second frame left out of AKD/AED
    got = metrics.clip_scores(originals, decoded, refs)
    assert got["face_frames"] == 1
    assert got["akd"] == 0.0 and got["aed"] == 0.0
    # PSNR is the mean of the per-frame values (identical frames: inf).
    assert got["psnr"] == math.inf
    got = metrics.clip_scores(originals[1:], decoded[1:], refs[1:])
    assert got["psnr"] == pytest.approx(metrics.psnr(crop, decoded[1]))
    assert math.isnan(got["akd"]) and got["face_frames"] == 0
    assert got["ssim"] == pytest.approx(metrics.ssim(crop, decoded[1]))
    assert got["ms_ssim"] == pytest.approx(metrics.ms_ssim(crop, decoded[1]), abs=1e-6)


def test_clip_scores_checks_alignment(astronaut):
    with pytest.raises(InputError, match="frame counts differ"):
        metrics.clip_scores([astronaut], [astronaut, astronaut])


def test_optional_metrics_never_download():
    found, notes = metrics.optional_metrics()
    # Each of AKD-MT / AKD-FA / LPIPS / DISTS is usable from local weights or skipped with a note.
    assert len(found) + len(notes) == 4
    assert all("skipped" in n for n in notes)
    if "akd_fa" not in found:  # the note says which files to put where
        assert any(n.startswith("AKD-FA") and "checkpoints" in n for n in notes)


def test_independent_akd_runs_any_detector(astronaut):
    """akd_independent works over the detector interface (here dlib stands in for
    face_alignment, whose weights cannot be fetched here): 0 for the same frame, more
    for a moved face, NaN where the original has no face."""
    from encoder.landmarks import DlibDetector

    run = metrics.akd_independent(DlibDetector())
    moved = np.roll(astronaut, 6, axis=1)
    blank = np.zeros_like(astronaut)
    out = run(np.stack([astronaut, astronaut, blank]), np.stack([astronaut, moved, blank]))
    assert out[0] == pytest.approx(0.0, abs=1e-6)
    assert out[1] > 2.0
    assert math.isnan(out[2])
