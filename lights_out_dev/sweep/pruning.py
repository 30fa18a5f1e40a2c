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
Optuna's own pruners on the same data: `optuna_median` (MedianPruner: against the runs that finished,
after `min_runs - 1` of them) and `optuna_sha` (SuccessiveHalvingPruner; its rungs are
rungs[0] x reduction_factor^k). Each judgement rebuilds a study from the runs' TensorBoard values
(one trial per run), so nothing but the files is needed after a restart.
"""
from __future__ import annotations

import statistics
from typing import Literal

from pydantic import Field, field_validator, model_validator

from lights_out_dev.core.models import StrictModel
from lights_out_dev.core.verdicts import StopRequest

Points = list[tuple[int, float]]  # (step, value), step ascending


class PruneRule(StrictModel):
    rule: Literal["median", "asha", "optuna_median", "optuna_sha"] = "asha"
    metric: str = "Train/mean_reward"
    mode: Literal["max", "min"] = "max"
    rungs: list[int] = Field(min_length=1, description="iterations at which runs are compared, ascending")
    reduction_factor: float = Field(default=3.0, gt=1.0, description="asha: keep the best 1/reduction_factor")
    min_runs: int = Field(default=3, ge=2, description="values needed at a rung before anyone is pruned there")
    resume_best: bool = Field(default=False, description="when the search is over, the pruned seeds of the best "
                                                       "configuration continue from their checkpoints, unpruned")

    @field_validator("rungs")
    @classmethod
    def _ascending(cls, v):
        if any(b <= a for a, b in zip(v, v[1:])) or v[0] < 1:
            raise ValueError(f"rungs {v} must be iterations >= 1 in ascending order, e.g. [10, 30, 90]")
        return v

    @model_validator(mode="after")
    def _sha_rungs(self):
        if self.rule == "optuna_sha":
            rf = int(self.reduction_factor)
            want = [self.rungs[0] * rf ** k for k in range(len(self.rungs))]
            if rf != self.reduction_factor or self.rungs != want:
                raise ValueError(f"optuna_sha takes a whole reduction_factor and rungs rungs[0] x reduction_factor^k, "
                                 f"e.g. {want}")
        return self


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


def judge_with_optuna(mine: Points, others: list[tuple[Points, str]], rule: PruneRule, rung: int) -> StopRequest | None:
    """Optuna's pruner (`rule.rule` optuna_median / optuna_sha) on a study rebuilt from the runs' values:
    `others` are (points, status) of the other runs of the search, `mine` the judged run's points."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    if rule.rule == "optuna_median":
        pruner = optuna.pruners.MedianPruner(n_startup_trials=rule.min_runs - 1, n_warmup_steps=0)
    else:
        pruner = optuna.pruners.SuccessiveHalvingPruner(min_resource=rule.rungs[0],
                                                        reduction_factor=int(rule.reduction_factor))
    study = optuna.create_study(direction="maximize" if rule.mode == "max" else "minimize", pruner=pruner)

    def rungs_passed(points: Points, below: int | None) -> dict:  # SHA's record of the rungs a trial passed
        if rule.rule != "optuna_sha":
            return {}
        return {f"completed_rung_{k}": v for k, r in enumerate(rule.rungs)
                if (below is None or r < below) and (v := rung_value(points, r)) is not None}

    states = {"completed": TrialState.COMPLETE, "timeout": TrialState.COMPLETE, "pruned": TrialState.PRUNED}
    for points, status in others:
        clean = [(s, v) for s, v in points if v == v]
        if not clean:
            continue
        state = states.get(status, TrialState.RUNNING)
        study.add_trial(create_trial(state=state, value=clean[-1][1] if state is TrialState.COMPLETE else None,
                                     intermediate_values=dict(clean), system_attrs=rungs_passed(clean, None)))
    upto = [(s, v) for s, v in mine if s <= rung]
    study.add_trial(create_trial(state=TrialState.RUNNING, intermediate_values=dict(upto),
                                 system_attrs=rungs_passed(upto, rung)))
    trial = study.get_trials(deepcopy=False)[-1]
    if not study.pruner.prune(study, trial):
        return None
    name = "MedianPruner" if rule.rule == "optuna_median" else "SuccessiveHalvingPruner"
    return StopRequest("pruned", f"Optuna {name} at iteration {rung}: {rule.metric} {upto[-1][1]:.4g} "
                                 f"against {len(others)} other run(s)", rung)
