"""A/B of two `gracecodec eval` runs: how one curve moved between them, clip by clip.

    python -m codec.evaluation.compare BEFORE/results.csv AFTER/results.csv \
        --curve "gracecodec/torch ki=0"

Prints, per metric, the BD-rate of the curve in AFTER against the same curve in BEFORE
(the same clips, `runner.bd_rate` per clip, then the mean over the clips where both
curves share a quality interval), the BD-rate of the mean curves (rate and quality
averaged over the clips at each operating point: no clip is left out, which matters
when a change moves some clips' curves clear of their old quality range and the
per-clip mean then counts only the clips it helped least), and the mean change of rate
and quality at each operating point. Unlike the BD-rates against x265 in each run's
summary, whose clip counts can differ between runs, this compares like with like.
"""

from __future__ import annotations

import argparse
import csv
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from ..errors import InputError
from .metrics import CORE_METRICS as METRICS
from .metrics import DIGITS, HIGHER_IS_BETTER, LABELS
from .runner import bd_rate


def read_rows(path: str | Path, curve: str) -> dict[str, list[dict]]:
    """The ok rows of `curve` in a results.csv, by clip."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such file (a results.csv of gracecodec eval)")
    by_clip: dict[str, list[dict]] = defaultdict(list)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            if r.get("curve") == curve and r.get("status") == "ok":
                by_clip[r["clip"]].append(r)
    if not by_clip:
        raise InputError(f"{path}: no rows of curve {curve!r}")
    return by_clip


def _value(row: dict, key: str) -> float:
    try:
        return float(row[key])
    except (KeyError, ValueError):
        return float("nan")


def compare(before: dict[str, list[dict]], after: dict[str, list[dict]]) -> dict:
    """BD-rate per metric (mean, clip count) and mean deltas per operating point."""
    clips = sorted(set(before) & set(after))
    bd = {}
    for m in METRICS:
        values = []
        for clip in clips:
            a, t = before[clip], after[clip]
            v = bd_rate(
                [_value(r, "kbps") for r in a],
                [_value(r, m) for r in a],
                [_value(r, "kbps") for r in t],
                [_value(r, m) for r in t],
                HIGHER_IS_BETTER[m],
            )
            if v is not None:
                values.append(v)
        bd[m] = (float(np.mean(values)) if values else None, len(values))
    points: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
    for clip in clips:
        old = {r["operating_point"]: r for r in before[clip]}
        for r in after[clip]:
            if r["operating_point"] in old:
                for key in ("kbps", *METRICS):
                    d = _value(r, key) - _value(old[r["operating_point"]], key)
                    points[r["operating_point"]][key].append(d)
    deltas = {op: {k: float(np.nanmean(v)) for k, v in d.items()} for op, d in points.items()}
    a, t = _mean_curve(before, clips), _mean_curve(after, clips)
    pooled = {m: bd_rate(a["kbps"], a[m], t["kbps"], t[m], HIGHER_IS_BETTER[m]) for m in METRICS}
    return {"clips": len(clips), "bd_rate": bd, "pooled_bd_rate": pooled, "deltas": deltas}


def _mean_curve(rows: dict[str, list[dict]], clips: list[str]) -> dict[str, list[float]]:
    """Rate and each metric averaged over `clips` at each operating point all of them have."""
    by_op: dict[str, list[dict]] = defaultdict(list)
    for clip in clips:
        for r in rows[clip]:
            by_op[r["operating_point"]].append(r)
    ops = sorted(op for op, rs in by_op.items() if len(rs) == len(clips))
    return {
        key: [float(np.mean([_value(r, key) for r in by_op[op]])) for op in ops]
        for key in ("kbps", *METRICS)
    }


def markdown(result: dict, curve: str) -> str:
    lines = [
        f"`{curve}`, {result['clips']} clips in both runs.",
        "",
        "BD-rate of the second run against the first (%, negative: fewer bits for the same "
        "quality; clips where the curves overlap in brackets):",
        "",
        "| " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "|" + "---:|" * len(METRICS),
        "| "
        + " | ".join(
            "n/a" if v is None else f"{v:+.1f} ({n})" for v, n in result["bd_rate"].values()
        )
        + " |",
        "| "
        + " | ".join(
            "n/a" if v is None else f"{v:+.1f} (mean curves)"
            for v in result["pooled_bd_rate"].values()
        )
        + " |",
        "",
        "Mean change at each operating point (second run minus first):",
        "",
        "| operating point | kbit/s | " + " | ".join(LABELS[m] for m in METRICS) + " |",
        "|---|---:|" + "---:|" * len(METRICS),
    ]
    for op, d in sorted(result["deltas"].items()):
        cells = [f"{d['kbps']:+.2f}"] + [f"{d[m]:+.{DIGITS[m]}f}" for m in METRICS]
        lines.append(f"| {op} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("before", help="results.csv of the first run")
    p.add_argument("after", help="results.csv of the second run")
    p.add_argument("--curve", default="gracecodec/torch ki=0", help="the curve to compare")
    args = p.parse_args(argv)
    try:
        result = compare(read_rows(args.before, args.curve), read_rows(args.after, args.curve))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(markdown(result, args.curve))
    return 0


if __name__ == "__main__":
    sys.exit(main())
