"""The executor seam: where a run's processes live (local process groups, Slurm jobs).

The supervisor, the smoke gate and the sweep only talk to this interface; every decision that
depends on where the trainer runs (which GPUs it is told to use, who leases them, how a launch is
found again after a supervisor restart, how its GPUs are sampled) is a method here, so no module
outside executors/ asks which executor it has. A `Handle` is plain typed data so that it can be
stored in the run state and re-adopted by a restarted supervisor.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Protocol

from lights_out_dev.core.spec import RunSpec


@dataclass
class Handle:
    """One launch. Common: kind, log_path, node. Local: pid, pgid, sid, start_time, token, boot (the
    identity that proves a process is the run's). Slurm: job_id, script, submitted_at, nodes and what
    the executor learned while watching that must survive a supervisor restart (ran, pending_since)."""

    kind: str  # the registry name of the executor that made it
    log_path: str
    gpus: list[int] | None = None  # the GPU indexes the trainer addresses (None = CPU)
    pid: int | None = None
    pgid: int | None = None
    sid: int | None = None  # session id; the leader's pid unless it said otherwise
    start_time: float | None = None  # process start time (to tell a reused pid from ours)
    token: str | None = None  # the run token every process of the launch carries in its environment
    boot: str | None = None  # boot id at launch: after a reboot a recorded pid is never ours
    job_id: str | None = None
    node: str | None = None
    nodes: int = 1
    script: str | None = None  # the batch script that was submitted
    submitted_at: float | None = None
    pending_since: float | None = None  # start of the current pending spell (a requeue starts a new one)
    ran: bool = False  # the job was seen RUNNING: back to PENDING after that means Slurm requeued it

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "Handle":
        """A stored handle; also the older layout that kept the kind-specific fields in an `extra` dict
        (where a Slurm job's `gpus` was a count)."""
        data = dict(data)
        old = data.pop("extra", None) or {}
        known = {f.name for f in fields(cls)}
        merged = {**{k: v for k, v in old.items() if k in known}, **{k: v for k, v in data.items() if k in known}}
        if isinstance(merged.get("gpus"), int):
            merged["gpus"] = list(range(merged["gpus"])) or None
        return cls(**merged)


@dataclass
class ExitStatus:
    exit_code: int | None  # None when killed by a signal
    signal: int | None = None
    scheduler_state: str | None = None  # Slurm: COMPLETED, FAILED, TIMEOUT, ...
    reason: str | None = None
    failed_nodes: list[str] = field(default_factory=list)  # Slurm: the nodes that failed under the job


@dataclass
class GpuSample:
    """One look at a run's GPUs: NVML's records of those GPUs (host.nvml.GpuInfo, with their processes)
    and the pids of the run's processes, from which the monitor reads VRAM, utilisation and imbalance."""

    gpus: list[Any]
    pids: set[int]


@dataclass
class Recovered:
    """What an executor found of a launch that was written ahead but never recorded: `handle` when its
    trainer still runs and was adopted; otherwise how many of its processes were stopped (and survived)."""

    handle: Handle | None = None
    stopped: int = 0
    survivors: list[int] = field(default_factory=list)


class SchedulerLease:
    """The lease of an executor whose job scheduler allocates the GPUs: it holds nothing on this machine
    (gpus None), so the sweep's slot counting works unchanged and nothing here is locked or shrunk."""

    gpus = None
    packed = False
    label = "the scheduler's allocation"

    def release(self) -> None:
        pass

    def shrink(self, n: int) -> None:
        pass


class Executor(Protocol):
    """Built by executors.make(name, cfg, root, **options): every executor takes the project's config
    and root (the trainer's working directory) first."""

    kind: str  # the registry name (executors.EXECUTORS)
    poll_interval_s: float  # how long the monitor's wait() blocks between log reads

    # -- before a launch -------------------------------------------------------------------------
    @classmethod
    def visible_gpus(cls, needed: int, here: int) -> int:
        """How many GPUs a launch asking for `needed` can count on, checked before it starts, when this
        machine has `here`."""

    @classmethod
    def job_array(cls, max_parallel: int, expected: int, name: str):
        """A batch that gathers the first launches of `expected` runs (a plan's `slurm_array`), to pass to
        the constructor as `array=`; None when this executor launches every run on its own."""

    def lease(self, n_gpus: int, *, prefer: list[int] | None = None, wait: bool = False):
        """The slot a run holds while it runs: a local GPU lease (host.gpu_lock; GpuLockError when none is
        free), or a SchedulerLease where the scheduler allocates the GPUs."""

    def attempt_gpus(self, spec_gpus: int, lease_gpus: list[int] | None) -> list[int] | None:
        """The GPU indexes an attempt runs on (None = CPU), given the run's GPU count and its lease's GPUs."""

    def trainer_gpus(self, gpus: list[int] | None) -> list[int] | None:
        """The GPUs the trainer's command is told to use (its device flag): normally `gpus`."""

    def gpu_env(self, spec: RunSpec, gpus: list[int] | None) -> dict[str, str]:
        """Environment the launch sets for its GPUs (CUDA_VISIBLE_DEVICES), unless the scheduler sets it."""

    # -- the launch -------------------------------------------------------------------------------
    def start(self, argv: list[str], env: dict[str, str], log_path: Path, gpus: list[int] | None,
              time_limit_s: float | None = None, job_name: str = "lights-out") -> Handle:
        """Launch detached; output (stdout+stderr) appended to log_path. Never blocks on the run.
        The Slurm executor also takes `nodes=N` (a multi-node run) and `exclude_nodes=[...]`; the
        supervisor passes them only when a run needs them."""

    def wait(self, handle: Handle, timeout: float) -> ExitStatus | None:
        """Block up to `timeout` seconds; the exit status as soon as the run ends, else None."""

    def alive(self, handle: Handle) -> bool:
        """True while any process of the run exists."""

    def adoptable(self, handle: Handle) -> bool:
        """True when the launch's trainer still runs and is proven ours, so that a restarted supervisor
        watches it on instead of finishing the attempt (and stopping what is left of it)."""

    def recover_launch(self, token: str, log_path: str, gpus: list[int] | None, boot: str | None, *,
                       adopt: bool) -> Recovered:
        """A launch written ahead (its run token) that its supervisor died before recording: adopt its
        trainer when `adopt` and it still runs, else stop whatever of it is left."""

    def sample_gpus(self, handle: Handle, gpus: list[int]) -> GpuSample | None:
        """The run's GPUs and processes now, for VRAM, idle-GPU and imbalance checks; None when this
        executor cannot see them (the checks are then skipped)."""

    def stop(self, handle: Handle, graceful: bool, grace_s: float) -> list[int]:
        """Stop the whole run (graceful: SIGINT, grace, SIGTERM, SIGKILL; else SIGKILL at once) and
        wait until its processes are gone. Returns the pids that survived (empty = clean)."""

    def forget(self, handle: Handle) -> None:
        """Drop the bookkeeping kept for a finished launch."""
