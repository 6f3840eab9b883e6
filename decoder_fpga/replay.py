"""Temporal replay (after FastCar's cache-attentive replay): reuse cached output tiles
where the motion has not changed.

The motion-change score of a tile is the largest change, in pixels, of the landmark
backward map (`codec.generators.flow.backward_map`: where each output pixel samples the
key frame) over the tile since that tile was last computed. A tile whose score is below
`threshold_px` (and younger than `max_age` frames) replays its cached pixels; a key frame
clears the cache. Comparing against the map at the tile's last computation, not the
previous frame's, keeps slow drifts from accumulating unseen.

What is skipped, and what is only counted:
* when every tile replays, the generator is not run at all (real: no work for the frame);
* otherwise the frame is rendered whole and the replayed tiles are pasted from the cache;
  their share of the 256-px decoder stage's work is *counted* (`skippable_tiles`), the
  saving an engine-level tile skip would give (not implemented in hw/ or the program:
  it needs per-tile halos through the decoder's receptive field; modelled).
Works over any backend (the Generator contract), so its quality cost is measured with
the fastest one and applies to int8 / csim / pynq alike up to their own differences.
"""

from __future__ import annotations

import dataclasses

import numpy as np

DEFAULT_THRESHOLD_PX = 0.5  # replay_bench, grace-s provisional: +0.006 dB (docs/board.md §7)
DEFAULT_TILE = 32
DEFAULT_MAX_AGE = 30  # frames: a tile is recomputed at least once a second at 30 fps


@dataclasses.dataclass
class ReplayStats:
    frames: int = 0
    frames_skipped: int = 0  # every tile replayed: the generator did not run
    tiles: int = 0
    tiles_replayed: int = 0
    per_frame: list = dataclasses.field(default_factory=list)  # replayed fraction per frame

    @property
    def tile_fraction(self) -> float:
        return self.tiles_replayed / max(self.tiles, 1)

    @property
    def frame_fraction(self) -> float:
        return self.frames_skipped / max(self.frames, 1)


def tile_scores(map_now: np.ndarray, map_then: np.ndarray, tile: int) -> np.ndarray:
    """max |map_now - map_then| per tile: (2, H, W) float -> (H/tile, W/tile) float."""
    d = np.abs(map_now - map_then).max(axis=0)
    h, w = d.shape
    return d.reshape(h // tile, tile, w // tile, tile).max(axis=(1, 3))


class ReplayGenerator:
    """Wraps a Generator; same contract (`set_reference`, `render`)."""

    def __init__(
        self,
        gen,
        threshold_px: float = DEFAULT_THRESHOLD_PX,
        tile: int = DEFAULT_TILE,
        max_age: int = DEFAULT_MAX_AGE,
    ):
        self.gen = gen
        self.name = f"{gen.name}+replay"
        self.threshold_px = float(threshold_px)
        self.tile = int(tile)
        self.max_age = int(max_age)
        self.stats = ReplayStats()
        self._ref_lm: np.ndarray | None = None
        self._frame: np.ndarray | None = None

    def set_reference(self, image: np.ndarray, landmarks: np.ndarray) -> None:
        self.gen.set_reference(image, landmarks)
        self._ref_lm = np.asarray(landmarks, np.float64)
        self._frame = None  # the cache belongs to the previous key frame
        self._size = np.asarray(image).shape[:2]

    def _map(self, landmarks: np.ndarray) -> np.ndarray:
        from codec.generators.flow import backward_map

        h, w = self._size
        return np.stack(backward_map(self._ref_lm, landmarks, w, h)).astype(np.float64)

    def render(self, landmarks: np.ndarray) -> np.ndarray:
        """landmarks: float32 (68, 2) -> uint8 (H, W, 3), replaying unchanged tiles."""
        if self._ref_lm is None:
            raise RuntimeError("render() before set_reference()")
        now = self._map(landmarks)
        t = self.tile
        h, w = self._size
        if h % t or w % t:
            raise ValueError(f"the frame ({h}x{w}) is not a whole number of {t}-px tiles")
        self.stats.frames += 1
        self.stats.tiles += (h // t) * (w // t)
        if self._frame is None:
            self._frame = self.gen.render(landmarks)
            self._then = now
            self._age = np.zeros((h // t, w // t), np.int64)
            self.stats.per_frame.append(0.0)
            return self._frame.copy()
        replay = (tile_scores(now, self._then, t) < self.threshold_px) & (self._age < self.max_age)
        self.stats.tiles_replayed += int(replay.sum())
        self.stats.per_frame.append(float(replay.mean()))
        if replay.all():
            self.stats.frames_skipped += 1
            self._age += 1
            return self._frame.copy()
        fresh = self.gen.render(landmarks)
        keep = np.repeat(np.repeat(replay, t, 0), t, 1)
        self._frame = np.where(keep[..., None], self._frame, fresh)
        then_keep = np.broadcast_to(keep, now.shape)
        self._then = np.where(then_keep, self._then, now)
        self._age = np.where(replay, self._age + 1, 0)
        return self._frame.copy()
