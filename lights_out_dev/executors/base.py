"""The executor seam: where a run's processes live (local process groups, Slurm jobs).

The supervisor and the sweep only talk to this interface. A `Handle` is plain data so that
it can be stored in the run state and re-adopted by a restarted supervisor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol


@dataclass
class Handle:
    kind: str  # "local" | "slurm"
    log_path: str
    pid: int | None = None
    pgid: int | None = None
    start_time: float | None = None  # process start time (to tell a reused pid from ours)
    job_id: str | None = None
    node: str | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class ExitStatus:
    exit_code: int | None  # None when killed by a signal
    signal: int | None = None
    scheduler_state: str | None = None  # Slurm: COMPLETED, FAILED, TIMEOUT, ...
    reason: str | None = None
    failed_nodes: list[str] = field(default_factory=list)  # Slurm: the nodes that failed under the job


class Executor(Protocol):
    kind: str
    poll_interval_s: float  # how long wait() blocks per call: the watch loop's tick
    pins_gpus_itself: bool  # True when the backend pins the allocation's GPUs (Slurm); else the attempt does

    def start(self, argv: list[str], env: dict[str, str], log_path: Path, gpus: list[int] | None,
              time_limit_s: float | None = None, job_name: str = "lights-out") -> Handle:
        """Launch detached; output (stdout+stderr) appended to log_path. Never blocks on the run.
        The Slurm executor also takes `nodes=N` (a multi-node run) and `exclude_nodes=[...]`; the
        supervisor passes them only when a run needs them."""

    def wait(self, handle: Handle, timeout: float) -> ExitStatus | None:
        """Block up to `timeout` seconds; the exit status as soon as the run ends, else None."""

    def alive(self, handle: Handle) -> bool:
        """True while any process of the run exists (used to adopt after a supervisor restart)."""

    def stop(self, handle: Handle, graceful: bool, grace_s: float) -> list[int]:
        """Stop the whole run (graceful: SIGINT, grace, SIGTERM, SIGKILL; else SIGKILL at once) and
        wait until its processes are gone. Returns the pids that survived (empty = clean)."""

    def forget(self, handle: Handle) -> None:
        """Drop what the executor keeps about a run that has ended (child objects, cached job states)."""
