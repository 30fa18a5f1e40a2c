"""Block until something needs a decision: `python -m lights_out_dev.cli.watch --until-event [--timeout S]`.

Prints one status line every --interval seconds and returns at the first event of
<logs_dir>/events.jsonl whose kind needs a decision or a report, printing the event and the last
lines of that run's log, then `cursor N`. Which events count:

    --cursor N     every event after byte offset N of the event file: take N with --print-cursor
                   before launching a sweep (or from the last watch's `cursor N` line) and no event
                   is missed, even one written before this watch started
    --since TS     every event with a timestamp >= TS (unix seconds, e.g. `date +%s` before launching)
    (neither)      only events appended after this watch started

The exit code says which kind it was, so a script or an agent can branch without parsing:

    code  event             meaning
    0     sweep_finished    every run of the sweep reached a final state (read the report)
    1     sweep_finished    the sweep stopped early (ok=false: bad plan, disk full, ...)
    10    completed         a run completed
    11    timeout           a run hit its time limit (not a failure; checkpoints kept)
    12    retry             a run failed and is being retried by policy
    13    gave_up           a run failed and the policy gave up on it
    14    failed            a run ended failed (after gave_up, or refused to start)
    15    preflight_failed  a pre-flight check (gpu_guard, power_check) failed
    16    refused           a sweep launch was refused: another process runs that plan
    17    stopped           a run was stopped by the user (MCP `stop`, Ctrl-C, SIGTERM)
    2                       usage error (a bad flag; --only naming a kind that ends no watch)
    3                       configuration error ([tool.lights_out]), nothing read
    124                     --timeout passed with no such event

--only KIND,... returns on those kinds only (e.g. `--only gave_up,sweep_finished,preflight_failed`
for an overnight sweep: completed runs and retries are then just counted in the status lines).
Without --until-event it only prints status lines until --timeout.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from lights_out_dev.run.monitor import tail_lines

EXIT_CODES = {"completed": 10, "timeout": 11, "retry": 12, "gave_up": 13, "failed": 14, "preflight_failed": 15,
              "refused": 16, "stopped": 17}
EXIT_TIMEOUT = 124
LOG_LINES = 15
POLL_S = 0.5


def exit_code(event: dict) -> int | None:
    """The exit code for an event, or None when it does not end the watch. Pure."""
    kind = event.get("kind")
    if kind == "sweep_finished":
        return 0 if event.get("ok", True) else 1
    return EXIT_CODES.get(kind)


def describe(event: dict) -> str:
    """One line for an event. Pure."""
    kind = event.get("kind", "?")
    who = event.get("task") or event.get("sweep") or event.get("plan") or ""
    if event.get("index") is not None:
        who = f"run {event['index']} {who}"
    bits = [f"event {kind}", who]
    for key in ("verdict", "reason", "action", "attempts", "counts", "report"):
        if event.get(key) not in (None, "", {}):
            bits.append(f"{key}={event[key]}")
    return " ".join(str(b) for b in bits if b)


def read_new(path: Path, offset: int) -> tuple[list[dict], int]:
    """Complete JSON lines after `offset` (a half-written last line waits for the next call)."""
    found, offset = read_after(path, offset)
    return [ev for ev, _ in found], offset


def read_after(path: Path, offset: int) -> tuple[list[tuple[dict, int]], int]:
    """(event, the cursor just after it) for each complete JSON line after `offset`, and the new offset.

    A cursor beyond the end means the file was replaced (deleted, restored from a backup): it is read
    from the start."""
    try:
        with open(path, "rb") as f:
            if offset > os.fstat(f.fileno()).st_size:
                offset = 0
            f.seek(offset)
            data = f.read()
    except FileNotFoundError:
        return [], offset
    found, pos = [], offset
    for raw in data[:data.rfind(b"\n") + 1].splitlines(keepends=True):
        pos += len(raw)
        try:
            found.append((json.loads(raw), pos))
        except ValueError:
            continue  # a foreign/corrupt line never stops the watch
    return found, pos


def log_tail(event: dict, n: int = LOG_LINES) -> list[str]:
    log = event.get("log_path")
    if not log and event.get("state_path"):
        try:
            from lights_out_dev.core.state import load_state

            st = load_state(Path(event["state_path"]))
            log = st.current.log_path if st and st.current else None
        except Exception:
            log = None
    return tail_lines(log, n)
