"""`gracecodec eval`: BD-rate, clip discovery, failures reported, and a quick run on real clips."""

import csv
import dataclasses
import json
import math
from fractions import Fraction

import numpy as np
import pytest

from codec.cli import main
from codec.errors import InputError
from codec.evaluation.runner import QUICK, bd_rate, find_clips, run_eval
from codec.video import VideoWriter


def test_bd_rate_of_a_curve_at_half_the_rate_is_minus_50_percent():
    rate = [10.0, 20.0, 40.0, 80.0]
    quality = [30.0, 32.0, 34.5, 36.0]
    assert bd_rate(rate, quality, [r / 2 for r in rate], quality) == pytest.approx(-50.0)
    assert bd_rate(rate, quality, rate, quality) == pytest.approx(0.0, abs=1e-9)
    # Lower is better (AKD): the same curve shape on a negated axis gives the same answer.
    neg = [-q for q in quality]
    assert bd_rate(rate, neg, [r * 2 for r in rate], neg, higher_is_better=False) == pytest.approx(
        100.0
    )


def test_bd_rate_only_over_the_shared_quality_interval():
    anchor = ([10.0, 20.0, 40.0], [30.0, 33.0, 36.0])
    # The last curve shares only 34..36 with the anchor: BD-rate is taken there.
    assert bd_rate(*anchor, [100.0, 1000.0], [37.0, 40.0]) is None  # no overlap
    assert bd_rate(*anchor, [100.0], [34.0]) is None  # one point is no curve
    assert math.isfinite(bd_rate(*anchor, [100.0, 200.0], [34.0, 38.0]))


def test_clip_counts_compare_each_clip_with_its_own_x265_point():
    from codec.evaluation.runner import _clip_counts

    def row(clip, codec, op, kbps, ms_ssim, akd, qp=""):
        return dict(
            clip=clip, codec=codec, operating_point=op, qp=qp, kbps=kbps, ms_ssim=ms_ssim, akd=akd
        )

    rows = [
        row("a", "x265", "qp=42", 20.0, 0.95, 1.0, 42),
        row("a", "x265", "qp=47", 10.0, 0.90, 2.0, 47),
        row("b", "x265", "qp=47", 8.0, 0.80, 3.0, 47),
        row("a", "gracecodec/torch", "kq=30", 5.0, 0.91, 2.5),  # better MS-SSIM, worse AKD
        row("b", "gracecodec/torch", "kq=30", 9.0, 0.80, 2.0),  # more bits, ties MS-SSIM
    ]
    counts = _clip_counts(rows, ["a", "b"], ["ms_ssim", "akd"])
    assert counts["anchor"] == "x265 qp=47"
    assert counts["counts"] == [
        dict(
            codec="gracecodec/torch",
            operating_point="kq=30",
            clips=2,
            lower_rate=1,
            ms_ssim=2,
            akd=1,
        )
    ]
    # Without QP 47 in the run the anchor is its highest QP.
    assert _clip_counts(rows[:1] + rows[3:4], ["a"], ["akd"])["anchor"] == "x265 qp=42"
    assert _clip_counts(rows[3:], ["a", "b"], ["akd"]) == {}  # no x265: no table


def test_find_clips_from_a_manifest_and_a_folder(tmp_path):
    (tmp_path / "a.mp4").write_bytes(b"x")
    (tmp_path / "b.mkv").write_bytes(b"x")
    (tmp_path / "notes.txt").write_text("x")
    assert [p.name for p in find_clips(tmp_path)] == ["a.mp4", "b.mkv"]
    (tmp_path / "manifest.csv").write_text("file,split\na.mp4,train\nb.mkv,val\n")
    assert [p.name for p in find_clips(tmp_path, "val")] == ["b.mkv"]
    assert [p.name for p in find_clips(tmp_path / "manifest.csv", "all")] == ["a.mp4", "b.mkv"]
    with pytest.raises(InputError, match="no clips"):
        find_clips(tmp_path, "test")
    with pytest.raises(InputError):
        find_clips(tmp_path / "missing")


def test_a_clip_without_a_face_is_reported_not_dropped(tmp_path):
    noise = tmp_path / "noface.mkv"
    rng = np.random.default_rng(0)
    with VideoWriter(noise, Fraction(25), 96, 96) as w:
        for _ in range(4):
            w.write(rng.integers(0, 256, (96, 96, 3), dtype=np.uint8))
    result = run_eval([noise], tmp_path / "out", config=QUICK, progress=False)
    assert result["rows"] and all(r["status"] == "error" for r in result["rows"])
    assert "no face" in result["rows"][0]["error"]
    codecs = {r["codec"] for r in result["rows"]}
    assert {"gracecodec/warp", "x264", "x265"} <= codecs  # every codec reports the clip
    assert all(c in ("x264", "x265") or c.startswith("gracecodec/") for c in codecs)
    summary = (tmp_path / "out" / "summary.md").read_text()
    assert "noface" in summary.split("## Failures")[1]


def test_rate_targets_are_a_curve_of_their_own(tmp_path):
    """`eval --target-kbps` codes gracecodec streams under rate control: only those points
    (no key qualities unless asked for too), each near its target, and a command that
    reruns the same plan."""
    from codec.example import write_example_clip

    (tmp_path / "clips").mkdir()
    write_example_clip(tmp_path / "clips" / "example.mp4", seconds=2, fps=25)
    out = tmp_path / "eval"
    argv = ["eval", str(tmp_path / "clips"), "--out", str(out), "--quiet", "--backends", "warp"]
    argv += ["--face-stride", "25"]
    argv += ["--qps", "51", "--keyframe-intervals", "0", "--target-kbps", "4", "8"]
    assert main(argv) == 0
    rows = json.loads((out / "results.json").read_text())["rows"]
    grace = [r for r in rows if r["codec"] == "gracecodec/warp"]
    assert [r["operating_point"] for r in grace] == ["target=4 ki=0", "target=8 ki=0"]
    assert {r["curve"] for r in grace} == {"gracecodec/warp ki=0 target"}
    for r in grace:
        assert r["status"] == "ok" and r["kbps"] == pytest.approx(r["target_kbps"], rel=0.15)
    command = json.loads((out / "results.json").read_text())["command"]
    assert "## Clip by clip against x265 qp=51" in (out / "summary.md").read_text()
    assert "--target-kbps 4 8" in command and "--key-qualities" not in command


def test_the_key_search_runs_once_per_clip(tmp_path, monkeypatch):
    """Every operating point of a clip holds the same frames: the key frame is searched
    once, each point gets the same answer and is charged the search's time."""
    import encoder.encoder as encoder_module
    from codec.evaluation.runner import GRACE, EvalConfig, Run, _code_grace, _prepare
    from codec.example import write_example_clip

    write_example_clip(tmp_path / "example.mp4", seconds=2, fps=25)
    clip = _prepare(tmp_path / "example.mp4", None)
    calls = []

    def counted(faces):
        calls.append(len(faces))
        return 20

    monkeypatch.setattr(encoder_module, "choose_key", counted)
    codings = [
        _code_grace(clip, Run(GRACE, "warp", key_quality=q, keyframe_interval=0), EvalConfig())
        for q in (20, 60)
    ]
    window = tuple(range(len(clip.faces)))
    assert calls == [len(window)] and clip.key_choices[window][0] == 20
    search_seconds = clip.key_choices[window][1]
    for coded in codings:
        assert len(coded.frames) == len(window)
        assert coded.encode_seconds >= clip.pipeline_seconds + search_seconds


@pytest.mark.slow
def test_quick_eval_on_two_real_clips(data_dir, tmp_path):
    out = tmp_path / "eval"
    argv = ["eval", str(data_dir / "manifest.csv"), "--out", str(out), "--quick"]
    argv += ["--max-frames", "10", "--quiet"]
    assert main(argv) == 0
    for name in ["results.csv", "results.json", "summary.md", "strip.png"]:
        assert (out / name).is_file(), name
    for metric in ["psnr", "ssim", "ms_ssim", "akd", "aed"]:
        assert (out / f"rd_{metric}.png").stat().st_size > 1000
    with open(out / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    clips = {r["clip"] for r in rows}
    assert len(clips) == 2
    plan = dataclasses.asdict(QUICK)
    backends = {r["codec"] for r in rows if r["codec"].startswith("gracecodec/")}
    assert "gracecodec/warp" in backends
    grace_points = len(plan["key_qualities"]) * len(plan["keyframe_intervals"])
    per_clip = len(backends) * grace_points + 2 * len(plan["qps"])
    assert len(rows) == 2 * per_clip  # one row per clip x codec x operating point
    for clip in clips:
        codecs = {r["codec"] for r in rows if r["clip"] == clip}
        assert codecs == backends | {"x264", "x265"}
    assert all(r["status"] == "ok" and r["frames"] == "10" for r in rows), rows
    for r in rows:
        assert float(r["kbps"]) > 0 and 15 < float(r["psnr"]) < 60
        if r["codec"] == "x264":
            assert int(r["sei_bytes_removed"]) > 0
        if r["codec"].startswith("gracecodec"):
            assert float(r["payload_kbps"]) < float(r["kbps"])  # framing counted in the total
    result = json.loads((out / "results.json").read_text())
    assert result["command"].startswith("gracecodec eval ") and "--quick" in result["command"]
    summary = (out / "summary.md").read_text()
    assert result["command"] in summary and "BD-rate" in summary
