"""The encoder's landmark smoothing at its default settings: it must take the jitter out
without making the mouth lag (a lagging track is drawn a frame or more late, which AKD and
every pixel metric see)."""

import numpy as np

from codec.motion import mean_face
from encoder.pipeline import PipelineConfig
from encoder.smoothing import OneEuroFilter


def _filter(fps=30.0):
    c = PipelineConfig()
    return OneEuroFilter(fps, c.smooth_min_cutoff, c.smooth_beta)


def test_jitter_at_rest_is_reduced():
    rng = np.random.default_rng(0)
    face = mean_face(256)
    raw = face + rng.normal(0, 0.5, (120, 68, 2))
    f = _filter()
    out = np.array([f(x) for x in raw])[20:]
    assert np.std(out - face) < 0.7 * np.std(raw[20:] - face)


def test_a_mouth_that_opens_is_followed_within_three_frames():
    face = mean_face(256)
    opened = face.copy()
    opened[57:60, 1] += 6.0  # the lower lip drops 6 px between two frames
    f = _filter()
    for _ in range(15):
        f(face)
    out = [f(opened) for _ in range(3)]
    assert np.abs(out[-1] - opened).max() < 1.0
