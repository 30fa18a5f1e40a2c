"""One attempt of a trainer process: its environment, its log scanner, watch until it ends, classify, let go.

    environment(...) -> executor.start(...) -> watch_to_end(...) -> Ended(verdict, reason, watch result)

The supervisor's long attempts (launched or adopted), the smoke gate before them and a checkpoint's
evaluation (`-play` tasks, sweep promotion) all go through here, so the environment a trainer gets, the
way its log is read, how it is stopped and how its end is judged are one code path, not three.
Write-ahead launch records live with the run state (supervisor.start_trainer); this module holds no state.
"""
from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from lights_out_dev.core import command
from lights_out_dev.core.classify import classify
from lights_out_dev.core.config import ProjectConfig
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.verdicts import Verdict
from lights_out_dev.executors.base import Executor, ExitStatus, Handle
from lights_out_dev.run.monitor import Limits, LogTail, WatchResult, watch
from lights_out_dev.run.scan import LogScanner

# the attempt number the trainer sees; 0 is the smoke gate (the reference trainer's fault injections fire
# on attempt 1 unless `:always`, so a gate does not trip a fault meant for the run)
ATTEMPT_VAR = "LIGHTS_OUT_ATTEMPT"


@dataclass
class Ended:
    """How an attempt ended: the verdict, one sentence why, and what watching it observed."""
    verdict: Verdict
    reason: str
    watched: WatchResult


def environment(spec: RunSpec, executor: Executor, gpus: list[int] | None, number: int | None,
                profile_env: dict[str, str] | None = None) -> dict[str, str]:
    """The variables an attempt sets on top of the supervisor's environment (recorded in the run state):
    the spec's own, the profile's per-attempt ones (`profile_env`), GPU pinning where the executor leaves
    it to us (a scheduler pins its own allocation), the attempt number (None: not a training attempt, e.g.
    an evaluation), unbuffered Python output."""
    pinning = executor.gpu_env(spec, gpus)
    numbered = {} if number is None else {ATTEMPT_VAR: str(number)}
    return {**spec.env, **(profile_env or {}), **pinning, **numbered, "PYTHONUNBUFFERED": "1"}


def process_environment(spec: RunSpec, overrides: dict[str, str]) -> dict[str, str]:
    """The whole environment of the trainer process: ours, the trainer's defaults, the attempt's overrides."""
    return {**os.environ, **command.trainer_env(spec), **overrides}


def argv_value(argv: list[str], flag: str) -> str | None:
    """The last value given to `flag` in argv (`--flag v` or `--flag=v`): the last flag wins, as argparse."""
    value = None
    for i, tok in enumerate(argv):
        if tok == flag and i + 1 < len(argv):
            value = argv[i + 1]
        elif tok.startswith(flag + "="):
            value = tok.split("=", 1)[1]
    return value


def new_scanner(cfg: ProjectConfig, argv: list[str], spec: RunSpec | None = None, root: Path | None = None,
                total: int | None = None, offset: int = 0) -> LogScanner:
    """A scanner reading the log as the run's trainer profile says; `total` is the run's target, for
    trainers that print only what they have done."""
    profile = spec.trainer if spec is not None else None
    flag = profile.flags.run_name if profile is not None else "--run_name"
    # The run name we passed completes the run directory Isaac Lab prints only as root + stamp.
    return LogScanner(extra_patterns=cfg.monitor.extra_patterns or None,
                      run_name=argv_value(argv, flag) if flag else None, profile=profile, root=root,
                      default_total=total if total is not None else (spec.max_iterations if spec else None),
                      progress_offset=offset)


def classify_end(scanner: LogScanner, exit_status: ExitStatus | None, stopped_by: str | None) -> tuple[Verdict, str]:
    """classify() on the scanner's observations; an ended process is never 'running'."""
    verdict, reason = classify(scanner.observations(exit_status, stopped_by))
    verdict = Verdict(verdict)
    if verdict in (Verdict.running, Verdict.healthy):
        # Only an adopted trainer (not our child) ends with an unknown exit code; judge it by its log.
        unknown = (exit_status.reason if exit_status and exit_status.reason else "exit code unknown")
        if scanner.end_marker or (scanner.training_finished and not scanner.exit0_completes):
            what = (repr(scanner.end_marker_text) if scanner.end_marker else
                    f"progress {scanner.progress.iteration}/{scanner.progress.total}")
            return Verdict.completed, f"finished: {what} in the log ({unknown})"
        return Verdict.crash, f"ended with no end marker and no known error signature ({unknown})"
    return verdict, reason


def limits_for(cfg: ProjectConfig, executor: Executor, time_left_s: float | None,
               spec: RunSpec | None = None) -> Limits:
    """The watch limits of an attempt: the project's, the time left, the executor's polling pace, and for a
    trainer that saves nothing when stopped, its checkpoint pattern (stop right after its own save)."""
    if spec is None or spec.trainer.saves_on_interrupt:
        return Limits.from_config(cfg.monitor, time_left_s, tick_s=executor.poll_interval_s)
    return Limits.from_config(cfg.monitor, time_left_s, tick_s=executor.poll_interval_s,
                              checkpoint_pattern=spec.trainer.checkpoint_pattern,
                              save_proven_after=spec.trainer.save_proven_after)


def watch_to_end(executor: Executor, handle: Handle, scanner: LogScanner, limits: Limits, tail: LogTail, *,
                 gpus: list[int] | None = None, notify: Callable[[str], None] = lambda kind: None,
                 should_stop: Callable[[], bool] = lambda: False,
                 time_left: Callable[[], float | None] | None = None,
                 echo: Callable[[str], None] | None = None) -> Ended:
    """Watch a started (or adopted) attempt until it ends or is stopped, classify it, and let the executor
    forget it. The tail is closed on the way out, whatever happens."""
    try:
        watched = watch(executor, handle, scanner, limits, tail, gpus=gpus, notify=notify, should_stop=should_stop,
                        time_left=time_left, echo=echo)
    finally:
        tail.close()
    executor.forget(handle)
    verdict, reason = classify_end(scanner, watched.exit, watched.stopped_by)
    return Ended(verdict, reason, watched)
