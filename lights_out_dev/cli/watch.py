"""The `watch` command (console script `lights-out watch`, or `python -m lights_out_dev.cli.watch`).

Block until something needs a decision: `python lights_out_dev/watch.py --until-event [--timeout S]`.
"""
from __future__ import annotations

import argparse
import sys
import time

from lights_out_dev.core.config import load_project_or_report
from lights_out_dev.views.watch import (
    EXIT_CODES,
    EXIT_TIMEOUT,
    POLL_S,
    describe,
    exit_code,
    log_tail,
    read_after,
)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Wait for the next sweep/run event that needs a decision.")
    ap.add_argument("--until-event", action="store_true", help="return at the first decision event")
    ap.add_argument("--timeout", type=float, default=None, help="give up after S seconds (exit 124)")
    ap.add_argument("--interval", type=float, default=60.0, help="seconds between status lines (default 60)")
    ap.add_argument("--sweep", help="only events of this sweep (plan name)")
    ap.add_argument("--only", help="comma-separated kinds to return on (default: all of the table), e.g. "
                                   "gave_up,sweep_finished,preflight_failed,refused for an overnight sweep")
    start_at = ap.add_mutually_exclusive_group()
    start_at.add_argument("--cursor", type=int, help="read every event after this byte offset of the event file "
                                                     "(from --print-cursor or the previous watch's `cursor N`)")
    start_at.add_argument("--since", type=float, help="read every event with ts >= this unix time (date +%%s)")
    start_at.add_argument("--print-cursor", action="store_true", help="print the current cursor and exit")
    args = ap.parse_args(argv)
    if args.cursor is not None and args.cursor < 0:
        ap.error(f"--cursor {args.cursor} is negative; pass an offset printed by --print-cursor")
    project = load_project_or_report(file=sys.stderr)
    if project is None:
        return 3
    root, cfg = project
    from lights_out_dev.views import status

    only = set(args.only.split(",")) if args.only else None
    unknown = sorted((only or set()) - set(EXIT_CODES) - {"sweep_finished"})
    if unknown:
        print(f"--only {unknown[0]} is not an event kind that ends a watch; use some of "
              f"{', '.join([*EXIT_CODES, 'sweep_finished'])}.", file=sys.stderr)
        return 2
    from lights_out_dev.host import events as event_stream

    path = event_stream.events_path(root, cfg)
    if args.print_cursor:
        print(event_stream.cursor(root, cfg))
        return 0
    offset = args.cursor if args.cursor is not None else 0 if args.since is not None else event_stream.cursor(root, cfg)
    start = time.monotonic()
    next_line = start
    while True:
        found, offset = read_after(path, offset)
        for ev, after in found:
            if args.since is not None and float(ev.get("ts") or 0) < args.since:
                continue
            if args.sweep and ev.get("sweep", ev.get("plan")) not in (args.sweep, None):
                continue
            code = exit_code(ev)
            if args.until_event and code is not None and (only is None or ev.get("kind") in only):
                print(describe(ev), flush=True)
                tail = log_tail(ev)
                if tail:
                    print(f"--- last {len(tail)} lines of {ev.get('log_path') or 'the run log'} ---")
                    print("\n".join(tail), flush=True)
                print(f"cursor {after}", flush=True)
                return code
        now = time.monotonic()
        if now >= next_line:
            try:
                print(status.summary_line(status.collect(root, cfg, args.sweep)), flush=True)
            except Exception as e:  # status is a convenience; the watch goes on
                print(f"(status unavailable: {e})", flush=True)
            next_line = now + args.interval
        if args.timeout is not None and now - start >= args.timeout:
            print(f"no decision event within {args.timeout:g}s; the sweep goes on (exit {EXIT_TIMEOUT}).\n"
                  f"cursor {offset}", flush=True)
            return EXIT_TIMEOUT
        time.sleep(POLL_S)


if __name__ == "__main__":
    sys.exit(main())
