"""Watch events: one JSON line per event in <logs_dir>/events.jsonl, plus an optional user hook.

An agent or a person waits on this file (or on `events_command`, e.g. a notifier) instead of polling
runs. Kinds (KINDS): started, healthy, smoke (a smoke gate's result), retry, gave_up, completed,
timeout, failed, stopped (a run stopped by the user), refused (a sweep launch refused because another
process runs that plan), pruned, budget_spent, sweep_finished, preflight_failed. Hooks run in the background (hooks.py); a failing one
is logged to stderr and never stops or delays a run.

The file is append-only, so a byte offset into it is a cursor: `cursor()` before launching
something, then read every event after that offset (watch.py --cursor, the MCP server's
wait_for_event), and no event written in between is missed.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from filelock import FileLock

from lights_out_dev.core.config import ProjectConfig

# Every kind the package emits (a test reads the emit calls to keep this true); agents validate against it.
KINDS = ("started", "healthy", "smoke", "retry", "gave_up", "completed", "timeout", "failed", "stopped", "refused",
         "pruned", "budget_spent", "sweep_finished", "preflight_failed")


def events_path(root: Path, cfg: ProjectConfig) -> Path:
    return cfg.path(root, cfg.logs_dir) / "events.jsonl"


def cursor(root: Path, cfg: ProjectConfig) -> int:
    """The current end of the event stream: every event appended later lies after this offset."""
    try:
        return events_path(root, cfg).stat().st_size
    except FileNotFoundError:
        return 0


def emit(root: Path, cfg: ProjectConfig, kind: str, **data) -> dict:
    """Append the event (with `ts` and `kind`) and run cfg.events_command with it on stdin."""
    event = {"ts": round(time.time(), 3), "kind": kind, **data}
    line = json.dumps(event, default=str)
    path = events_path(root, cfg)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with FileLock(str(path) + ".lock", timeout=10):
            with open(path, "a") as f:
                f.write(line + "\n")
    except OSError as e:  # e.g. disk full: the run state is the truth, the event stream is a convenience
        print(f"lights-out: could not append event {kind!r} to {path}: {e}", file=sys.stderr)
    if cfg.events_command:  # asynchronous and bounded: a slow hook never delays supervision
        from lights_out_dev.host import hooks

        hooks.submit(cfg.events_command, line + "\n", kind)
    return event
