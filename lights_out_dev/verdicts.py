"""The closed set of verdicts a run's observations can lead to (DESIGN.md §3.5)."""
from __future__ import annotations

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
        return self.is_final and not self.is_cluster_fault and self not in (Verdict.completed, Verdict.timeout)


# Run status as the ledger shows it.
RUN_STATUSES = ("pending", "running", "completed", "timeout", "failed", "interrupted", "skipped")
FINAL_STATUSES = frozenset({"completed", "timeout", "failed", "skipped"})
