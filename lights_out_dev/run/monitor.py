"""The watch loop for one attempt: event-driven, one loop per run, no fixed long tick.

Each turn blocks in executor.wait() for at most `tick` seconds (a pidfd poll locally, so an exit ends
the wait at once), then reads only the bytes the log gained since the last turn (LogTail keeps the
offset and any partial last line) and feeds them to the LogScanner. Decisions the loop takes:

- process exit                     -> done (the caller classifies)
- a fatal signature line (oom, segfault, nccl, cuda_error) while the process lives on -> SIGKILL now
- time limit                       -> graceful stop (SIGINT, grace, SIGTERM, SIGKILL), stopped_by='timeout';
  for a trainer that saves nothing when interrupted, right after its last checkpoint before the limit
- stall: no new output bytes (a `\r` progress bar counts, a newline is not needed) for
  startup_stall_s before the first iteration, for stall_s after it, or
  (with a GPU) all processes asleep at 0 % GPU for idle_gpu_stall_s -> SIGKILL, stopped_by='stall'
- multi-GPU load imbalance (gpu_check.imbalance) lasting idle_gpu_stall_s -> SIGKILL, stopped_by='imbalance'
  (the GPU checks use executor.sample_gpus(); an executor that cannot see the run's GPUs skips them)
- silent for stall_s after training finished (its completion marker, or its progress at its total: the
  only sign an exit-0 or rsl_rl profile gives): a hang at exit -> graceful stop, stopped_by='hang_exit',
  so the finished run is classified completed, not killed and retried
Numbers the log does not print (skrl's reward) are read from the run's TensorBoard tags every TB_POLL_S.
After any end the run's whole group/session is killed and waited for (survivors reported by pid).
"""
from __future__ import annotations

import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lights_out_dev.core.signatures import (
    FATAL_CLASSES,  # the run is lost even if its process lives on
)
from lights_out_dev.executors.base import Executor, ExitStatus, GpuSample, Handle
from lights_out_dev.host import procs

GPU_POLL_S = 2.0  # NVML per-process memory / utilisation sampling period
TB_POLL_S = 2.0  # TensorBoard reads for the numbers a trainer logs only there
READ_CHUNK = 1 << 20
# A line ends at \n, and also at a lone \r: a progress bar redrawn with \r is read as it goes, not kept
# in memory until a newline that may never come.
_LINE_END = re.compile(rb"\r\n|\r|\n")


class LogTail:
    """Incremental reader of a growing log file: remembers its offset, never re-reads."""

    def __init__(self, path: Path | str, offset: int = 0):
        self.path = Path(path)
        self.offset = offset  # bytes consumed up to the end of the last complete line
        self.received = 0  # bytes read so far, complete lines or not: what liveness is judged on
        self._fd: int | None = None
        self._partial = b""

    def _open(self) -> bool:
        if self._fd is None:
            try:
                self._fd = os.open(self.path, os.O_RDONLY)
            except FileNotFoundError:
                return False
            os.lseek(self._fd, self.offset, os.SEEK_SET)
        return True

    def read_lines(self, final: bool = False) -> list[str]:
        """New complete lines; with final=True also the unterminated last line."""
        if not self._open():
            return []
        chunks = []
        while True:
            data = os.read(self._fd, READ_CHUNK)
            if not data:
                break
            chunks.append(data)
        new = b"".join(chunks)
        self.received += len(new)
        data = self._partial + new
        if not data:
            return []
        *complete, self._partial = _LINE_END.split(data)
        if final and self._partial:
            complete.append(self._partial)
            self._partial = b""
        self.offset += len(data) - len(self._partial)
        # a "\r" right after "\n" (a progress bar starting) or split reads of "\r\n" leave empty pieces: no lines
        return [c.decode(errors="replace") for c in complete if c]

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


TAIL_CHUNK = 64 * 1024
TAIL_MAX_BYTES = 1 << 20


def tail_lines(path: str | Path | None, n: int, max_bytes: int = TAIL_MAX_BYTES) -> list[str]:
    """The last n lines of a (possibly huge, possibly growing) log, read from its end and never more than
    its last max_bytes, so a log that is one endless `\r` progress bar costs no more; [] when there is none.
    Lines end as LogTail ends them (\n, \r\n or a lone \r)."""
    if not path or n <= 0:
        return []
    try:
        with open(path, "rb") as f:
            end = pos = f.seek(0, os.SEEK_END)
            floor, data = max(0, end - max_bytes), b""
            while pos > floor and len(_LINE_END.findall(data)) <= n:
                step = min(TAIL_CHUNK, pos - floor)
                pos -= step
                f.seek(pos)
                data = f.read(step) + data
    except OSError:
        return []
    pieces = _LINE_END.split(data)
    if pieces and pieces[-1] == b"":  # the file ends with a line end: no unterminated last line
        pieces.pop()
    return [p.decode("utf-8", "replace") for p in pieces[-n:]]


@dataclass
class Limits:
    stall_s: float
    startup_stall_s: float
    idle_gpu_stall_s: float
    time_left_s: float | None  # what is left of the run's time limit for this attempt
    grace_s: float
    status_interval_s: float
    tick_s: float = 0.1
    imbalance_util_pct: float = 30.0
    imbalance_mem_pct: float = 30.0
    # Set for trainers that save nothing when interrupted: the time limit then stops the run right after
    # a checkpoint it saved itself (see CheckpointClock) instead of losing what it trained since.
    checkpoint_pattern: str | None = None
    save_proven_after: int = 2  # the profile's: progress past a checkpoint's number that proves its save done

    @classmethod
    def from_config(cls, monitor, time_left_s: float | None, tick_s: float = 0.1,
                    checkpoint_pattern: str | None = None, save_proven_after: int = 2) -> "Limits":
        return cls(stall_s=monitor.stall_s, startup_stall_s=monitor.startup_stall_s,
                   idle_gpu_stall_s=monitor.idle_gpu_stall_s, time_left_s=time_left_s, grace_s=monitor.grace_s,
                   status_interval_s=monitor.status_interval_s, tick_s=tick_s,
                   imbalance_util_pct=monitor.imbalance_util_pct, imbalance_mem_pct=monitor.imbalance_mem_pct,
                   checkpoint_pattern=checkpoint_pattern, save_proven_after=save_proven_after)


class CheckpointClock:
    """When a trainer saves checkpoints, and whether the next one would come after the time limit.

    Isaac Lab's trainers save only every `save_interval` iterations and nothing on SIGINT/SIGTERM, so a
    stop at the limit loses up to a whole interval. This clock learns the interval in seconds from the
    checkpoints it sees appear, and says "stop now" right after a save has completed (the trainer's progress
    is `save_proven_after` past the checkpoint's number, which it prints only after `save()` returned: 2 for
    rsl_rl, 0 for SB3, whose table comes after the rollout that saved) when waiting for the next one
    would overrun the limit: nothing trained is lost and the limit is kept. Without two checkpoints seen
    there is no estimate, and the limit itself stops the run."""

    POLL_S = 0.5

    def __init__(self, pattern: str, save_proven_after: int = 2):
        self._pattern = re.compile(pattern)
        self._proven_after = save_proven_after
        self._seen: dict[int, float] = {}  # checkpoint iteration -> monotonic time first seen
        self._names: dict[int, str] = {}
        self._next_poll = 0.0
        self._polled_at: int | None = None  # the trainer's progress at the last listing
        self._decided_for: int | None = None

    @property
    def newest(self) -> str | None:
        return self._names[max(self._names)] if self._names else None

    def _poll(self, run_dir: str | None, finished_iterations: int | None, now: float) -> None:
        # A save is proven by the next progress line, so the directory is listed at every new iteration
        # too: the stop then lands within a tick of that line, not up to POLL_S later (iterations can be
        # shorter than that, and each one signalled late is one trained and lost).
        if run_dir is None or (now < self._next_poll and finished_iterations == self._polled_at):
            return
        self._next_poll = now + self.POLL_S
        self._polled_at = finished_iterations
        try:
            names = os.listdir(run_dir)
        except OSError:
            return
        for name in names:
            m = self._pattern.fullmatch(name)
            if m and m.groups():
                self._seen.setdefault(int(m.group(1)), now)
                self._names.setdefault(int(m.group(1)), name)

    def period_s(self) -> float | None:
        times = [self._seen[i] for i in sorted(self._seen)]
        gaps = [b - a for a, b in zip(times, times[1:]) if b > a]
        return max(gaps[-3:]) if gaps else None  # the longest recent gap: never promise too early a save

    def stop_now(self, run_dir: str | None, finished_iterations: int | None, now: float, deadline: float) -> bool:
        self._poll(run_dir, finished_iterations, now)
        if not self._seen or finished_iterations is None:
            return False
        newest = max(self._seen)
        if newest == self._decided_for or finished_iterations < newest + self._proven_after:  # may still be saving
            return False
        self._decided_for = newest
        period = self.period_s()
        # the next chance to stop comes up to a poll after the next save: it must not fall after the limit
        return period is not None and now + period + self.POLL_S > deadline


@dataclass
class WatchResult:
    exit: ExitStatus | None
    stopped_by: str | None  # None | 'stall' | 'timeout' | 'user' | 'imbalance' | 'hang_exit'
    trigger: str  # exit | signature:<cls> | stall | startup_stall | idle_gpu | hang_exit | timeout | user
    detected_at: float  # wall time the loop noticed the end condition (benchmarks use it)
    survivors: list[int] = field(default_factory=list)
    peak_vram_mb: float | None = None
    healthy_at: float | None = None
    cleanup_s: float | None = None  # stop() until the run's processes left the process table (and NVML)
    imbalance: str | None = None  # the last multi-GPU imbalance sentence seen
    stopped_after_checkpoint: str | None = None  # the file a time-limit stop waited for (CheckpointClock)


def _gpu_figures(sample: GpuSample, limits: Limits) -> tuple[float, float, str | None]:
    """(VRAM MB used by the run's processes, max utilisation % of its GPUs, imbalance sentence or None)."""
    from lights_out_dev.host.gpu_check import imbalance
    used = sum(p.used_mb or 0 for i in sample.gpus for p in i.processes if p.pid in sample.pids)
    util = max((i.util_pct or 0 for i in sample.gpus), default=0)
    return used, util, imbalance(sample.gpus, limits.imbalance_util_pct, limits.imbalance_mem_pct)


def _extended(time_left: Callable[[], float | None] | None) -> bool:
    """The run's limit was raised (or removed) while this attempt ran."""
    if time_left is None:
        return False
    left = time_left()
    return left is None or left > 0


def _raised(time_left: Callable[[], float | None] | None, left_now: float) -> bool:
    """The run's limit was raised (or removed) beyond the deadline this loop still holds."""
    if time_left is None:
        return False
    left = time_left()
    return left is None or left > left_now + 1.0


def watch(executor: Executor, handle: Handle, scanner, limits: Limits, tail: LogTail, *,
          gpus: list[int] | None = None, notify: Callable[[str], None] = lambda kind: None,
          should_stop: Callable[[], bool] = lambda: False,
          time_left: Callable[[], float | None] | None = None,
          echo: Callable[[str], None] | None = None) -> WatchResult:
    """Watch one attempt until it ends or is stopped; notify('progress'|'healthy'|'status'|'tb_dir').

    time_left: asked when the time limit runs out; more time left (the limit was extended) moves it.
    echo: given every line of the log as it is read (a foreground evaluation shows its output)."""
    start = last_output = last_status = time.monotonic()
    deadline = None if limits.time_left_s is None else start + max(0.0, limits.time_left_s)
    healthy_at = peak = idle_since = imbalanced_since = imbalance = None
    next_gpu = next_tb = start
    tb_dir = scanner.tb_dir
    last_progress = scanner.progress.model_dump()
    received = tail.received
    use_gpu = bool(gpus)
    clock = (CheckpointClock(limits.checkpoint_pattern, limits.save_proven_after)
             if (limits.checkpoint_pattern and deadline) else None)
    stop: tuple[str, str | None, bool] | None = None  # (trigger, stopped_by, graceful)
    exit_status: ExitStatus | None = None

    while True:
        exit_status = executor.wait(handle, limits.tick_s)
        now = time.monotonic()
        lines = tail.read_lines(final=exit_status is not None)
        if tail.received != received:  # any byte is a sign of life, newline or not
            received = tail.received
            last_output = now
        for line in lines:
            scanner.feed(line)
            if echo is not None:
                echo(line)
        if lines and scanner.tb_dir != tb_dir:
            tb_dir = scanner.tb_dir
            notify("tb_dir")
        tb_read = False
        if now >= next_tb:
            next_tb = now + TB_POLL_S
            tb_read = scanner.read_tensorboard()
        if lines or tb_read:
            progress = scanner.progress.model_dump()
            if progress != last_progress:
                last_progress = progress
                notify("progress")
            if healthy_at is None and scanner.first_iteration_seen:
                healthy_at = time.time()
                notify("healthy")
        if exit_status is not None:
            trigger = "exit"
            break
        fatal = sorted(FATAL_CLASSES & set(scanner.hits))
        if fatal:
            stop = (f"signature:{fatal[0]}", None, False)
        elif should_stop():
            stop = ("user", "user", True)
        elif deadline is not None and now >= deadline and not _extended(time_left):
            stop = ("timeout", "timeout", True)
        elif (clock is not None and deadline is not None
              and clock.stop_now(scanner.checkpoint_dir, scanner.own_iteration, now, deadline)
              and not _raised(time_left, deadline - now)):
            stop = ("timeout_at_checkpoint", "timeout", True)
        elif not scanner.first_iteration_seen and now - last_output >= limits.startup_stall_s:
            stop = ("startup_stall", "stall", False)
        elif scanner.training_finished and now - last_output >= limits.stall_s:
            # Training finished and saved; the process hangs on its way out (Isaac Sim does): a clean-up
            # stop, not a stall, so the run still counts as completed.
            stop = ("hang_exit", "hang_exit", True)
        elif scanner.first_iteration_seen and now - last_output >= limits.stall_s:
            stop = ("stall", "stall", False)
        if stop is None and deadline is not None and now >= deadline:  # extended: the new limit counts from now
            left = time_left()
            deadline = None if left is None else now + left
        if stop is None and use_gpu and now >= next_gpu:
            next_gpu = now + GPU_POLL_S
            try:
                sample = executor.sample_gpus(handle, gpus)
                if sample is None:  # this executor cannot see the run's GPUs: no GPU checks from now on
                    use_gpu = False
                used, util, unbalanced = _gpu_figures(sample, limits) if sample else (0.0, 1.0, None)
                pids = sample.pids if sample else set()
            except Exception:  # NVML hiccups must not end a healthy run
                used, util, unbalanced, pids = 0.0, 1.0, None, set()
            if used:
                peak = max(peak or 0.0, used)
            # GPU-observed problems must last idle_gpu_stall_s (one sample proves nothing) after health
            if scanner.first_iteration_seen and util == 0 and procs.sleeping(pids):
                idle_since = idle_since or now
                if now - idle_since >= limits.idle_gpu_stall_s:
                    stop = ("idle_gpu", "stall", False)
            else:
                idle_since = None
            if scanner.first_iteration_seen and unbalanced and len(gpus) > 1:
                imbalance = unbalanced
                imbalanced_since = imbalanced_since or now
                if stop is None and now - imbalanced_since >= limits.idle_gpu_stall_s:
                    stop = ("imbalance", "imbalance", False)
            else:
                imbalanced_since = None
        if stop is not None:
            trigger = stop[0]
            break
        if now - last_status >= limits.status_interval_s:
            last_status = now
            notify("status")

    detected_at = time.time()
    stopped_by = stop[1] if stop else None
    t_stop = time.monotonic()
    survivors = executor.stop(handle, graceful=bool(stop and stop[2]), grace_s=limits.grace_s)
    cleanup_s = time.monotonic() - t_stop
    if exit_status is None:
        exit_status = executor.wait(handle, 1.0)
    for line in tail.read_lines(final=True):
        scanner.feed(line)
        if echo is not None and stop is None:  # what a stopped process prints on its way out stays in the log
            echo(line)
    return WatchResult(exit=exit_status, stopped_by=stopped_by, trigger=trigger, detected_at=detected_at,
                       survivors=survivors, peak_vram_mb=peak, healthy_at=healthy_at, cleanup_s=cleanup_s,
                       imbalance=imbalance,
                       stopped_after_checkpoint=clock.newest if trigger == "timeout_at_checkpoint" else None)
