"""The compute ledger: GPU-seconds (slot-seconds on a machine without GPUs) per attempt, run and sweep.

Every process a run cost is counted: its trainer attempts (failed, pruned and interrupted ones
included), its smoke gate and its evaluation, each for as long as it held its slots times the number
of GPUs (one slot on the CPU). A sweep's idle time is what its slots were not used for between its
first launch and its last end. Pure: numbers from run states; `budget_seconds` parses a plan's budget.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from lights_out_dev.core.state import Attempt, RunState

_BUDGET = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(gpu_h|gpu_min|gpu_s)\s*$")
_UNIT_S = {"gpu_h": 3600.0, "gpu_min": 60.0, "gpu_s": 1.0}


def budget_seconds(value) -> float | None:
    """'20 gpu_h' / '30 gpu_min' / '90 gpu_s' (or a number of GPU-seconds) -> GPU-seconds; ValueError otherwise."""
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    m = _BUDGET.match(str(value))
    if not m:
        raise ValueError(f"budget {value!r} is not an amount of compute; write e.g. '20 gpu_h', '30 gpu_min' or "
                         f"'90 gpu_s' (slot-seconds on a machine without GPUs)")
    return float(m[1]) * _UNIT_S[m[2]]


def _slots(gpus: list[int] | None) -> int:
    return max(1, len(gpus or []))


def attempt_seconds(a: Attempt, now: float) -> float:
    if a.started_at is None:
        return 0.0
    return max(0.0, (a.ended_at or now) - a.started_at) * _slots(a.gpus)


@dataclass
class RunCompute:
    """GPU-seconds of one run by what they were spent on."""

    trainer_s: float = 0.0  # attempts that completed or timed out
    failed_s: float = 0.0  # attempts that failed, were killed or judged unhealthy
    pruned_s: float = 0.0  # the attempt an early-stopping rule stopped
    smoke_s: float = 0.0
    eval_s: float = 0.0
    first_start: float | None = None
    last_end: float | None = None
    spans: list[tuple[float, float, int]] = field(default_factory=list)  # (start, end, slots) of each process

    @property
    def total_s(self) -> float:
        return self.trainer_s + self.failed_s + self.pruned_s + self.smoke_s + self.eval_s


def run_compute(state: RunState, now: float) -> RunCompute:
    c = RunCompute()
    spans = c.spans
    for a in state.attempts:
        s = attempt_seconds(a, now)
        if a.verdict in ("completed", "timeout", None):
            c.trainer_s += s
        elif a.verdict == "pruned":
            c.pruned_s += s
        else:
            c.failed_s += s
        if a.started_at is not None:
            spans.append((a.started_at, a.ended_at or now, _slots(a.gpus)))
    smoke = state.smoke_record or {}
    if smoke.get("started_at") is not None and smoke.get("reused") is None:
        gpus = state.attempts[0].gpus if state.attempts else None  # the gate runs on the run's own slots
        end = smoke.get("ended_at") or now
        c.smoke_s = max(0.0, end - smoke["started_at"]) * _slots(gpus)
        spans.append((smoke["started_at"], end, _slots(gpus)))
    ev = state.evaluation or {}
    if ev.get("started_at") is not None and ev.get("finished_at") is not None:
        c.eval_s = max(0.0, ev["finished_at"] - ev["started_at"])
        spans.append((ev["started_at"], ev["finished_at"], 1))
    if spans:
        c.first_start = min(s for s, _, _ in spans)
        c.last_end = max(e for _, e, _ in spans)
    return c


@dataclass
class SweepCompute:
    runs: dict[int, RunCompute] = field(default_factory=dict)
    busy_s: float = 0.0
    idle_s: float = 0.0
    slots: int = 1
    wall_s: float = 0.0
    gpu: bool = True  # False: slot-seconds of a machine without GPUs

    def as_dict(self) -> dict:
        kinds = ("trainer_s", "failed_s", "pruned_s", "smoke_s", "eval_s")
        return {"unit": "gpu_s" if self.gpu else "slot_s", "total_s": round(self.busy_s, 1),
                "idle_s": round(self.idle_s, 1), "slots": self.slots, "wall_s": round(self.wall_s, 1),
                **{k: round(sum(getattr(r, k) for r in self.runs.values()), 1) for k in kinds},
                "runs": {str(i): round(r.total_s, 1) for i, r in sorted(self.runs.items())}}


def sweep_compute(states: dict[int, RunState], slots: int, now: float, gpu: bool = True) -> SweepCompute:
    """Totals over a sweep's runs; idle = slots x (first start .. last end) - busy, never below 0."""
    runs = {i: run_compute(st, now) for i, st in states.items()}
    busy = sum(r.total_s for r in runs.values())
    starts = [r.first_start for r in runs.values() if r.first_start is not None]
    ends = [r.last_end for r in runs.values() if r.last_end is not None]
    wall = (max(ends) - min(starts)) if starts and ends else 0.0
    return SweepCompute(runs=runs, busy_s=busy, idle_s=max(0.0, slots * wall - busy), slots=slots, wall_s=wall,
                        gpu=gpu)


def seconds_text(s: float, gpu: bool = True) -> str:
    unit = "GPU" if gpu else "slot"
    return f"{s / 3600:.2f} {unit}-h" if s >= 3600 else f"{s:.0f} {unit}-s"
