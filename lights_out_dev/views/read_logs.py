"""Read training progress and failures from the files runs leave behind (script and module).

    python -m lights_out_dev.cli.read_logs tb-list                 # runs with TensorBoard events, newest first
    python -m lights_out_dev.cli.read_logs tb-latest               # newest run: every scalar's latest value + trend
    python -m lights_out_dev.cli.read_logs tb-run DIR              # the same for one run directory
    python -m lights_out_dev.cli.read_logs stdout-latest [-n 40]   # tail of the newest trainer stdout log
    python -m lights_out_dev.cli.read_logs errors LOG              # failure signatures with line numbers
    python -m lights_out_dev.cli.read_logs export-csv DIR [--out metrics.csv]

Exit status: 0 done, 1 nothing to show (no runs, no log), 2 a usage or configuration error.
"""
from __future__ import annotations

import csv
import math
import os
from pathlib import Path

from lights_out_dev.core import tb

TREND_POINTS = 10


def find_runs(roots: list[Path]) -> list[tuple[float, Path]]:
    """(mtime of the newest events file, run dir) for every dir holding events files; newest first."""
    runs: dict[Path, float] = {}
    for root in roots:
        for dirpath, _dirs, files in os.walk(root):
            stamps = [os.stat(os.path.join(dirpath, f)).st_mtime for f in files if f.startswith("events.out.tfevents.")]
            if stamps:
                runs[Path(dirpath)] = max(stamps)
    return sorted(((m, d) for d, m in runs.items()), key=lambda x: x[0], reverse=True)


def trend(points: list[tb.Scalar]) -> str:
    """'first -> last (+x%) over n pts' for the recent points of one tag."""
    if len(points) < 2:
        return "-"
    first, last = points[0][2], points[-1][2]
    change = f" ({(last - first) / abs(first) * 100:+.1f}%)" if first != 0 and math.isfinite(first) else ""
    return f"{first:.6g} -> {last:.6g}{change} over {len(points)} pts"


def summarize_run(run: Path, points: int = TREND_POINTS) -> list[str]:
    """Lines describing every scalar tag of a run: latest value, step, trend."""
    scalars = tb.read_scalars(run, last=points)
    if not scalars:
        return [f"{run}: no scalars yet (events file empty or still being written)"]
    width = max(len(t) for t in scalars)
    lines = [f"run: {run}", f"{'tag':<{width}}  {'value':>12}  {'step':>10}  trend (last {points})"]
    for tag in sorted(scalars):
        step, _wall, value = scalars[tag][-1]
        lines.append(f"{tag:<{width}}  {value:>12.6g}  {step:>10}  {trend(scalars[tag])}")
    return lines


def _write_rows(scalars: dict, tags: list[str], out: Path, first: str) -> int:
    rows: dict[int, dict[str, float]] = {}
    for tag in tags:
        for step, wall, value in scalars[tag]:
            row = rows.setdefault(step, {"wall_time": wall})
            row["wall_time"] = max(row["wall_time"], wall)
            row[tag] = value
    out.parent.mkdir(parents=True, exist_ok=True)
    with out.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([first, "wall_time", *tags])
        for step in sorted(rows):
            row = rows[step]
            w.writerow([step, f"{row['wall_time']:.3f}", *(row.get(t, "") for t in tags)])
    return len(rows)


def export_csv(run: Path, out: Path) -> int:
    """One row per iteration: step, wall_time (latest at that step), one column per tag. Returns rows.

    rsl_rl also logs `<tag>/time` series whose step is seconds since the start, not an iteration; mixed
    into the iteration rows they would make wall_time go backwards, so they go to `<out>_time.csv`
    (first column `seconds`)."""
    scalars = tb.read_scalars(run)
    time_tags = sorted(t for t in scalars if t.endswith("/time"))
    if time_tags:
        _write_rows(scalars, time_tags, out.with_name(f"{out.stem}_time{out.suffix}"), "seconds")
    return _write_rows(scalars, sorted(t for t in scalars if t not in time_tags), out, "step")




def default_roots(root: Path, cfg) -> list[Path]:
    roots = [root / "logs"]
    trainer = cfg.path(root, cfg.trainer_logs_dir)
    if not any(trainer == r or r in trainer.parents for r in roots):
        roots.append(trainer)
    return [r for r in roots if r.is_dir()]
