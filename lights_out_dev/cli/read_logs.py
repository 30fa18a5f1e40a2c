"""The `read_logs` command (console script `lights-out read-logs`, or `python -m lights_out_dev.cli.read_logs`).

Read training progress and failures from the files runs leave behind (script and module).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from lights_out_dev.core.config import load_project_or_report
from lights_out_dev.core.signatures import scan_errors
from lights_out_dev.run.monitor import tail_lines
from lights_out_dev.views.read_logs import (
    TREND_POINTS,
    default_roots,
    export_csv,
    find_runs,
    summarize_run,
)


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


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    project = load_project_or_report("read_logs: ", file=sys.stderr)
    if project is None:
        return 3
    root, cfg = project

    if args.cmd in ("tb-list", "tb-latest"):
        roots = args.logs or default_roots(root, cfg)
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
    sys.exit(main())
