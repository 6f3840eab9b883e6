"""Causal landmark smoothing: a One-Euro filter (Casiez et al., CHI 2012).

At rest the cutoff is low (jitter removed); when the face moves fast the cutoff rises
with the speed, so the track does not lag behind real motion. Speeds are measured in
face sizes per second, so the same settings work at any resolution.
"""

from __future__ import annotations

import numpy as np


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2 * np.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Smooths a float (N, 2) point set frame after frame.

    min_cutoff: Hz at rest; beta: cutoff gain per (face size / s) of speed.
    """

    def __init__(
        self, fps: float, min_cutoff: float = 2.0, beta: float = 1.0, d_cutoff: float = 1.0
    ):
        self.dt = 1.0 / fps
        self.min_cutoff = min_cutoff
        self.beta = beta
        self.d_cutoff = d_cutoff
        self.value: np.ndarray | None = None
        self.speed: np.ndarray | None = None

    def reset(self) -> None:
        self.value = None
        self.speed = None

    def __call__(self, points: np.ndarray) -> np.ndarray:
        x = np.asarray(points, np.float64)
        if self.value is None:
            self.value = x.copy()
            self.speed = np.zeros_like(x)
            return x.astype(np.float32)
        size = max(np.ptp(x[:, 0]), np.ptp(x[:, 1]), 1.0)
        raw_speed = (x - self.value) / (self.dt * size)
        a_d = _alpha(self.d_cutoff, self.dt)
        self.speed = a_d * raw_speed + (1 - a_d) * self.speed
        cutoff = self.min_cutoff + self.beta * np.abs(self.speed)
        a = _alpha(cutoff, self.dt)
        self.value = a * x + (1 - a) * self.value
        return self.value.astype(np.float32)
