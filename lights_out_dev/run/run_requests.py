"""Requests to a running supervisor from another process: stop this run, give it more time.

A request is a small file beside the run's state file, so it reaches the supervisor whichever
process runs it (a sweep, `doit <task>`, a restarted sweep that adopted the trainer):

    <state>.stop          stop the run gracefully (SIGINT, the trainer saves a checkpoint); the run is
                          marked interrupted, "stopped by the user", and a `stopped` event is written
    <state>.limit.json    {"time_limit_s": S}: the run's time limit is S from now on (counted like the
                          original limit: over all attempts)
    <state>.overrides.json  a sweep run's changed settings (num_envs, max_iterations, seed, trainer_args,
                          time_limit) on top of its plan entry: written by the MCP server's retry_with,
                          applied by the sweep every time it builds that run's spec

The supervisor polls the stop file with the other stop conditions and reads the limit file when the
current limit runs out, so neither costs anything while nobody asks.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

from lights_out_dev.core.config import parse_duration
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import atomic_write_text


def stop_path(state_path: Path) -> Path:
    return Path(str(state_path) + ".stop")


def limit_path(state_path: Path) -> Path:
    return Path(str(state_path) + ".limit.json")


def request_stop(state_path: Path, reason: str) -> None:
    atomic_write_text(stop_path(state_path), json.dumps({"at": time.time(), "reason": reason}) + "\n")


def stop_requested(state_path: Path) -> bool:
    return stop_path(state_path).exists()


def clear_stop(state_path: Path) -> None:
    stop_path(state_path).unlink(missing_ok=True)


def clear(state_path: Path) -> None:
    """Forget the stop and time-limit requests of a run that reached a final state."""
    stop_path(state_path).unlink(missing_ok=True)
    limit_path(state_path).unlink(missing_ok=True)


def set_time_limit(state_path: Path, seconds: float) -> None:
    atomic_write_text(limit_path(state_path), json.dumps({"time_limit_s": seconds, "at": time.time()}) + "\n")


def time_limit_override(state_path: Path) -> float | None:
    """The time limit asked for through `set_time_limit`, or None."""
    try:
        return float(json.loads(limit_path(state_path).read_text())["time_limit_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def overrides_path(state_path: Path) -> Path:
    return Path(str(state_path) + ".overrides.json")


def set_overrides(state_path: Path, overrides: dict) -> None:
    atomic_write_text(overrides_path(state_path), json.dumps(overrides, indent=2) + "\n")


def with_overrides(spec: RunSpec, state_path: Path) -> RunSpec:
    """`spec` with the run's recorded overrides applied (trainer flags: last flag wins); unchanged without."""
    from lights_out_dev.core.command import merge_flags

    try:
        ov = json.loads(overrides_path(state_path).read_text())
    except (OSError, ValueError):
        return spec
    update = {k: ov[k] for k in ("num_envs", "max_iterations", "seed") if ov.get(k) is not None}
    if ov.get("trainer_args"):
        update["extra_args"] = merge_flags(spec.extra_args, list(ov["trainer_args"]))
    if ov.get("time_limit") is not None:
        update["time_limit_s"] = parse_duration(ov["time_limit"])
    return spec.model_copy(update=update)
