"""Temporal replay: unchanged motion replays tiles (and skips the generator when every
tile replays), changed motion recomputes, a key frame clears the cache, threshold 0 is
the plain generator; the benches run."""

import numpy as np
import pytest

from codec.generators import make_generator
from codec.motion import default_shape_model
from decoder_fpga.replay import ReplayGenerator, tile_scores

SIZE = 64


def face(shift=(0.0, 0.0), mouth=0.0) -> np.ndarray:
    sm = default_shape_model()
    k = SIZE / 256
    pts = sm.mean.reshape(68, 2) * sm.scale0 * k + SIZE / 2 + np.array(shift) * k
    pts[57:60, 1] += mouth * k
    return pts.astype(np.float32)


def image(seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (8, 8, 3)).astype(np.uint8).repeat(8, 0).repeat(8, 1)


class Counting:
    name = "counting"

    def __init__(self):
        self.gen = make_generator("warp")
        self.renders = 0

    def set_reference(self, img, lm):
        self.gen.set_reference(img, lm)

    def render(self, lm):
        self.renders += 1
        return self.gen.render(lm)


def test_tile_scores():
    a = np.zeros((2, 64, 64))
    b = a.copy()
    b[1, 40, 5] = 0.7
    s = tile_scores(b, a, 32)
    assert s.shape == (2, 2) and s[1, 0] == pytest.approx(0.7) and s.sum() == pytest.approx(0.7)


def test_static_motion_replays_and_skips_the_generator():
    inner = Counting()
    rg = ReplayGenerator(inner, threshold_px=0.5, tile=16)
    rg.set_reference(image(), face())
    first = rg.render(face((4.0, 0.0)))
    again = rg.render(face((4.0, 0.0)))  # the same motion: every tile replays
    np.testing.assert_array_equal(first, again)
    assert inner.renders == 1 and rg.stats.frames_skipped == 1
    moved = rg.render(face((4.0, 0.0), mouth=12.0))  # the mouth moves: its tiles recompute
    assert inner.renders == 2
    assert 0 < rg.stats.per_frame[-1] < 1  # some tiles replayed, not all
    plain = inner.gen.render(face((4.0, 0.0), mouth=12.0))
    changed = np.abs(moved.astype(int) - plain.astype(int)).max(axis=2) > 0
    assert not changed.any() or changed.mean() < 0.5
    rg.set_reference(image(1), face())  # a key frame clears the cache
    rg.render(face((4.0, 0.0)))
    assert inner.renders == 3


def test_threshold_zero_is_the_plain_generator_and_max_age_refreshes():
    rg = ReplayGenerator(make_generator("warp"), threshold_px=0.0, tile=16)
    plain = make_generator("warp")
    for g in (rg, plain):
        g.set_reference(image(), face())
    for shift in ((0.0, 0.0), (1.0, 0.5), (1.0, 0.5)):
        np.testing.assert_array_equal(rg.render(face(shift)), plain.render(face(shift)))
    inner = Counting()
    rg = ReplayGenerator(inner, threshold_px=10.0, tile=16, max_age=2)
    rg.set_reference(image(), face())
    for _ in range(5):
        rg.render(face())
    assert inner.renders == 2  # computed, replayed twice, recomputed, replayed


def test_render_before_reference():
    with pytest.raises(RuntimeError):
        ReplayGenerator(make_generator("warp")).render(face())


def test_replay_bench_skips_without_data(tmp_path, capsys):
    from decoder_fpga import replay_bench

    assert replay_bench.main(["--data", str(tmp_path)]) == 0
    assert "skipped" in capsys.readouterr().err


def test_board_bench_runs(capsys):
    pytest.importorskip("torch")
    import shutil

    if shutil.which("g++") is None:
        pytest.skip("needs g++")
    from decoder_fpga import board_bench

    assert board_bench.main(["--size", "64", "--frames", "1"]) == 0
    out = capsys.readouterr().out
    assert "pack" in out and "modelled" in out and "frame 0" in out
