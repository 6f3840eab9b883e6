"""A/B of two eval runs: BD-rate of one curve against itself, clip by clip."""

import csv

import pytest

from codec.evaluation import compare

FIELDS = ["clip", "curve", "operating_point", "status", "kbps", *compare.METRICS]


def write_run(path, rate_scale: float, psnr_gain: float, extra_clip: bool = False) -> None:
    clips = ["a", "b"] + (["c"] if extra_clip else [])
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, FIELDS)
        w.writeheader()
        for clip in clips:
            for i, kq in enumerate((15, 30, 45)):
                w.writerow({
                    "clip": clip, "curve": "gracecodec/torch ki=0", "status": "ok",
                    "operating_point": f"kq={kq} ki=0", "kbps": (4 + 2 * i) * rate_scale,
                    "psnr": 24 + i + psnr_gain, "ssim": 0.7 + 0.02 * i, "ms_ssim": 0.8 + 0.01 * i,
                    "akd": 2 - 0.1 * i, "aed": 0.4 - 0.02 * i,
                })  # fmt: skip
                w.writerow({"clip": clip, "curve": "x265", "status": "ok", "kbps": 8,
                            "operating_point": "qp=47", "psnr": 27})  # fmt: skip


def test_the_same_curve_at_half_the_rate_is_minus_50_percent(tmp_path, capsys):
    write_run(tmp_path / "a.csv", 1.0, 0.0)
    write_run(tmp_path / "b.csv", 0.5, 0.0, extra_clip=True)  # a clip only in b: not counted
    result = compare.compare(
        compare.read_rows(tmp_path / "a.csv", "gracecodec/torch ki=0"),
        compare.read_rows(tmp_path / "b.csv", "gracecodec/torch ki=0"),
    )
    assert result["clips"] == 2
    for metric in compare.METRICS:
        value, clips = result["bd_rate"][metric]
        assert value == pytest.approx(-50.0) and clips == 2
        assert result["pooled_bd_rate"][metric] == pytest.approx(-50.0)
    assert result["deltas"]["kq=15 ki=0"]["kbps"] == pytest.approx(-2.0)
    assert compare.main([str(tmp_path / "a.csv"), str(tmp_path / "b.csv")]) == 0
    assert "-50.0 (2)" in capsys.readouterr().out


def test_mean_curves_count_the_clips_whose_curves_no_longer_overlap(tmp_path):
    """Clip b's new curve is far above its old one (no shared quality interval): the
    per-clip mean leaves it out, the mean curves do not."""
    write_run(tmp_path / "a.csv", 1.0, 0.0)
    write_run(tmp_path / "b.csv", 1.0, 0.0)
    rows = compare.read_rows(tmp_path / "b.csv", "gracecodec/torch ki=0")
    for r in rows["b"]:
        r["psnr"] = str(float(r["psnr"]) + 2)  # 26..28 against 24..26
    result = compare.compare(compare.read_rows(tmp_path / "a.csv", "gracecodec/torch ki=0"), rows)
    value, clips = result["bd_rate"]["psnr"]
    assert clips == 1 and value == pytest.approx(0.0)  # only clip a, unchanged
    assert result["pooled_bd_rate"]["psnr"] < -20  # b's gain counts


def test_missing_file_or_curve_is_a_clear_error(tmp_path, capsys):
    write_run(tmp_path / "a.csv", 1.0, 0.0)
    assert compare.main([str(tmp_path / "nope.csv"), str(tmp_path / "a.csv")]) == 1
    assert "no such file" in capsys.readouterr().err
    assert compare.main([str(tmp_path / "a.csv"), str(tmp_path / "a.csv"), "--curve", "x"]) == 1
    assert "no rows of curve" in capsys.readouterr().err
