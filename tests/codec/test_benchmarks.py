"""bench-motion's measures on a synthetic track: the coder's error against the track it
sends, and the distance from each frame's own landmarks."""

import numpy as np

from codec.benchmarks import code_track
from codec.motion import MotionConfig, mean_face


def _track(frames=40):
    rng = np.random.default_rng(0)
    base = mean_face(256)
    talk = np.zeros((frames, 68, 2))
    talk[:, 48:68, 1] = 3 * np.sin(np.arange(frames) / 3)[:, None]  # the mouth opens and shuts
    lms = (base + talk + rng.normal(0, 0.2, (frames, 68, 2))).astype(np.float32)
    return {"landmarks": lms, "recentred": np.zeros(frames, bool), "fps": np.float64(25)}


def test_frame_error_measures_the_distance_from_the_frames_own_landmarks():
    track = _track()
    own = np.full_like(track["landmarks"], np.nan)
    own[::5] = track["landmarks"][::5]
    exact = code_track({**track, "frame_landmarks": own}, MotionConfig(camera=False))
    assert exact.frame_err < 1.0 and exact.bits > 0
    own[::5, :, 0] += 4.0  # the frames' own landmarks 4 px to the right of the sent track
    moved = code_track({**track, "frame_landmarks": own}, MotionConfig(camera=False))
    assert 3.0 < moved.frame_err < 5.0
    assert moved.rms == exact.rms  # the coder's own error does not see it
    assert np.isnan(code_track(track, MotionConfig(camera=False)).frame_err)  # not measured
