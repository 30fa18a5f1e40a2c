"""Read training progress and failures from the files runs leave behind (script and module).

    python lights_out_dev/read_logs.py tb-list                 # runs with TensorBoard events, newest first
    python lights_out_dev/read_logs.py tb-latest               # newest run: every scalar's latest value + trend
    python lights_out_dev/read_logs.py tb-run DIR              # the same for one run directory
    python lights_out_dev/read_logs.py stdout-latest [-n 40]   # tail of the newest trainer stdout log
    python lights_out_dev/read_logs.py errors LOG              # failure signatures with line numbers
    python lights_out_dev/read_logs.py export-csv DIR [--out metrics.csv]

Exit status: 0 done, 1 nothing to show (no runs, no log), 2 a usage or configuration error.
"""
from __future__ import annotations

import argparse
import csv
import math
import os
import sys
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script from any directory: make the package importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lights_out_dev import tb  # noqa: E402
from lights_out_dev.config import load_project_or_report  # noqa: E402
from lights_out_dev.signatures import scan_errors  # noqa: E402

TREND_POINTS = 10
TAIL_CHUNK = 64 * 1024


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


def tail_lines(path: Path, n: int) -> list[str]:
    """The last n lines of a (possibly huge, possibly growing) text file, reading from its end."""
    with path.open("rb") as f:
        f.seek(0, os.SEEK_END)
        pos = f.tell()
        data = b""
        while pos > 0 and data.count(b"\n") <= n:
            step = min(TAIL_CHUNK, pos)
            pos -= step
            f.seek(pos)
            data = f.read(step) + data
    return data.decode("utf-8", "replace").splitlines()[-n:]


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


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="read_logs.py", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for name, help_ in (("tb-list", "runs with TensorBoard events, newest first"),
                        ("tb-latest", "latest value and trend of every scalar of the newest run")):
        s = sub.add_parser(name, help=help_)
        s.add_argument("--logs", action="append", type=Path,
                       help="directory to search (repeatable); default: logs/ and the trainer logs dir")
        if name == "tb-latest":
            s.add_argument("--points", type=int, default=TREND_POINTS, help="points in the trend")
    s = sub.add_parser("tb-run", help="latest value and trend of every scalar of one run")
    s.add_argument("dir", type=Path)
    s.add_argument("--points", type=int, default=TREND_POINTS)
    s = sub.add_parser("stdout-latest", help="tail of the newest trainer stdout log")
    s.add_argument("-n", type=int, default=40, help="lines (default 40)")
    s = sub.add_parser("errors", help="failure signatures and traceback exceptions in a log, with line numbers")
    s.add_argument("log", type=Path)
    s = sub.add_parser("export-csv", help="all scalars of a run as CSV")
    s.add_argument("dir", type=Path)
    s.add_argument("--out", type=Path, help="default: DIR/metrics.csv")
    return p


def _default_roots(root: Path, cfg) -> list[Path]:
    roots = [root / "logs"]
    trainer = cfg.path(root, cfg.trainer_logs_dir)
    if not any(trainer == r or r in trainer.parents for r in roots):
        roots.append(trainer)
    return [r for r in roots if r.is_dir()]


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    project = load_project_or_report("read_logs: ", file=sys.stderr)
    if project is None:
        return 3
    root, cfg = project

    if args.cmd in ("tb-list", "tb-latest"):
        roots = args.logs or _default_roots(root, cfg)
        runs = find_runs(roots)
        if not runs:
            where = ", ".join(str(r) for r in roots) or f"{root / 'logs'} (missing)"
            print(f"no TensorBoard runs under {where}; pass --logs DIR to search elsewhere", file=sys.stderr)
            return 1
        if args.cmd == "tb-list":
            for mtime, run in runs:
                print(f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(mtime))}  {run}")
        else:
            print("\n".join(summarize_run(runs[0][1], args.points)))
        return 0
    if args.cmd == "tb-run":
        if not args.dir.exists():
            print(f"read_logs: {args.dir} does not exist; pick a run from `read_logs.py tb-list`", file=sys.stderr)
            return 2
        print("\n".join(summarize_run(args.dir, args.points)))
        return 0
    if args.cmd == "stdout-latest":
        logs_dir = cfg.path(root, cfg.logs_dir)
        logs = sorted(logs_dir.glob("*.log"), key=lambda p: p.stat().st_mtime) if logs_dir.is_dir() else []
        if not logs:
            print(f"no *.log files in {logs_dir}", file=sys.stderr)
            return 1
        print(f"==> {logs[-1]} <==")
        print("\n".join(tail_lines(logs[-1], max(args.n, 1))))
        return 0
    if args.cmd == "errors":
        if not args.log.is_file():
            print(f"read_logs: {args.log} is not a file; pass a trainer stdout log", file=sys.stderr)
            return 2
        with args.log.open(errors="replace") as f:
            found = scan_errors(f)
        for no, cls, line in found:
            print(f"{no}: [{cls}] {line.strip()}")
        print(f"{len(found)} finding(s) in {args.log}")
        return 0
    # export-csv
    if not args.dir.exists():
        print(f"read_logs: {args.dir} does not exist; pick a run from `read_logs.py tb-list`", file=sys.stderr)
        return 2
    out = args.out or args.dir / "metrics.csv"
    rows = export_csv(args.dir, out)
    print(f"wrote {rows} rows to {out}")
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except BrokenPipeError:  # `read_logs.py tb-list | head`: the reader left, which is fine
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
