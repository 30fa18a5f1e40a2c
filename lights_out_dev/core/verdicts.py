"""The closed set of verdicts a run's observations can lead to."""
from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from enum import Enum


class Verdict(str, Enum):
    running = "running"
    healthy = "healthy"
    completed = "completed"
    timeout = "timeout"
    oom = "oom"
    crash = "crash"
    segfault = "segfault"
    stall = "stall"
    nccl = "nccl"
    cuda_error = "cuda_error"
    imbalance = "imbalance"
    config_error = "config_error"
    killed = "killed"
    # decided by the sweep scheduler, not by the process: early stopping and learning health (health.py)
    pruned = "pruned"
    nan = "nan"
    diverged = "diverged"
    collapsed = "collapsed"
    plateau = "plateau"
    preempted = "preempted"  # Slurm took the job back (PREEMPTED, requeued): not the run's fault
    node_fail = "node_fail"  # a node under the job failed (NODE_FAIL, BOOT_FAIL): not the run's fault

    @property
    def is_final(self) -> bool:
        return self not in (Verdict.running, Verdict.healthy)

    @property
    def is_cluster_fault(self) -> bool:
        """Preemption and node failure: the cluster's doing, neither a failure nor a success of the run."""
        return self in (Verdict.preempted, Verdict.node_fail)

    @property
    def is_failure(self) -> bool:
        """Counts towards max_consecutive_failures."""
        return self.is_final and not self.is_cluster_fault and self not in (
            Verdict.completed, Verdict.timeout, Verdict.pruned, Verdict.plateau)


# Learning-health verdicts: the process is fine, the learning is not (health.py judges them).
HEALTH_VERDICTS = frozenset({Verdict.nan, Verdict.diverged, Verdict.collapsed, Verdict.plateau})


# A run's status (RunState.status) is one of pending, running, interrupted and these final ones;
# `pruned`: stopped early by the sweep's early-stopping rule (pruning.py); final, not a failure.
FINAL_STATUSES = frozenset({"completed", "timeout", "failed", "skipped", "pruned"})


def status_counts(statuses: Iterable[str]) -> dict[str, int]:
    """How many runs are in each status, by status name. Pure."""
    return dict(sorted(Counter(statuses).items()))


def counts_text(counts: dict[str, int]) -> str:
    """'1 running, 2 completed' as '2 completed, 1 running' (by status name); '' for none. Pure."""
    return ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))


@dataclass(frozen=True)
class StopRequest:
    """A verdict reached on a live run from its metrics (early stopping, learning health): the
    supervisor stops the trainer gracefully (it saves a checkpoint) and records this verdict."""

    verdict: str  # 'pruned' or a HEALTH_VERDICTS value
    reason: str
    iteration: int | None = None  # where the learning went wrong (a reseed resumes from before it)
