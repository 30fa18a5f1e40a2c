"""Early stopping of sweep runs: the median rule and ASHA (asynchronous successive halving). Pure.

A rule looks at one TensorBoard metric (default `Train/mean_reward`; tag names are parameters because
trainers name them differently) at rungs of iterations. A run reaches rung R when it has logged a step
>= R; its rung value is the metric at the last step <= R. It is judged once per rung, when it gets
there, against the runs of its search group that got there before it (finished and pruned runs count:
their TensorBoard files stay):
- median: pruned when its value is worse than the median of the others' values at that rung;
- asha:   pruned when it is not in the best 1/reduction_factor of all values recorded at that rung
          (itself included), as Ray Tune's ASHA does when it stops trials.
Neither prunes before `min_runs` runs (itself included) have a value at the rung.
"""
from __future__ import annotations

import statistics
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lights_out_dev.verdicts import StopRequest

Points = list[tuple[int, float]]  # (step, value), step ascending


class PruneRule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    rule: Literal["median", "asha"] = "asha"
    metric: str = "Train/mean_reward"
    mode: Literal["max", "min"] = "max"
    rungs: list[int] = Field(min_length=1, description="iterations at which runs are compared, ascending")
    reduction_factor: float = Field(default=3.0, gt=1.0, description="asha: keep the best 1/reduction_factor")
    min_runs: int = Field(default=3, ge=2, description="values needed at a rung before anyone is pruned there")

    @field_validator("rungs")
    @classmethod
    def _ascending(cls, v):
        if any(b <= a for a, b in zip(v, v[1:])) or v[0] < 1:
            raise ValueError(f"rungs {v} must be iterations >= 1 in ascending order, e.g. [10, 30, 90]")
        return v


def rung_value(points: Points, rung: int) -> float | None:
    """The metric at the last step <= rung, once the run has a step >= rung; else None."""
    if not points or points[-1][0] < rung:
        return None
    before = [v for s, v in points if s <= rung]
    return before[-1] if before else None


def highest_rung(points: Points, rule: PruneRule) -> int | None:
    reached = [r for r in rule.rungs if points and points[-1][0] >= r]
    return reached[-1] if reached else None


def _worse(a: float, b: float, mode: str) -> bool:
    return a < b if mode == "max" else a > b


def judge_rung(value: float, others: list[float], rule: PruneRule, rung: int) -> StopRequest | None:
    """Prune or keep a run whose value at `rung` is `value`; `others`: the values other runs had there."""
    if value != value:  # NaN: learning health deals with it
        return None
    others = [o for o in others if o == o]
    if len(others) + 1 < rule.min_runs:
        return None
    name = rule.metric
    if rule.rule == "median":
        median = statistics.median(others)
        if _worse(value, median, rule.mode):
            return StopRequest("pruned", f"median rule at iteration {rung}: {name} {value:.4g} is worse than "
                                         f"the median {median:.4g} of {len(others)} other run(s)", rung)
        return None
    values = sorted(others + [value], reverse=rule.mode == "max")  # best first
    keep = max(1, int(len(values) / rule.reduction_factor))
    cutoff = values[keep - 1]
    if _worse(value, cutoff, rule.mode):
        return StopRequest("pruned", f"ASHA at iteration {rung}: {name} {value:.4g} is not in the best {keep} of "
                                     f"{len(values)} (cutoff {cutoff:.4g})", rung)
    return None
