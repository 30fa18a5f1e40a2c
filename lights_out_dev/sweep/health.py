"""Learning-health verdicts from a run's TensorBoard scalars. Pure.

The process can be healthy while the learning is not:
- nan:       a NaN or inf in the reward or a loss (stdout's own NaN lines are signatures, signatures.py);
- diverged:  a tag's absolute value beyond its configured bound (e.g. `Loss/value: 1.0e4`);
- collapsed: the reward fell by `collapse_fraction` of what it had gained (best minus first value) and
             stayed below that for `collapse_patience` logged iterations;
- plateau:   (opt-in) no improvement of the reward by more than `plateau_min_delta` for `plateau_iterations`.
Tag names are parameters (trainers name them differently); the defaults are rsl_rl's.
"""
from __future__ import annotations

import math

from pydantic import Field

from lights_out_dev.core.models import StrictModel
from lights_out_dev.core.verdicts import StopRequest

Points = list[tuple[int, float]]  # (step, value), step ascending


class HealthRule(StrictModel):
    """`health:` of a plan (every run of it); each verdict has a policy entry (`[tool.lights_out.policy.nan]`)."""

    reward_tag: str = "Train/mean_reward"
    nan_tags: list[str] = Field(default_factory=lambda: ["Train/mean_reward", "Loss/value", "Loss/surrogate"])
    nan: bool = True
    bounds: dict[str, float] = Field(default_factory=dict, description="tag -> largest sane |value|")
    collapse_fraction: float | None = Field(default=None, gt=0, le=1)
    collapse_patience: int = Field(default=10, ge=1)
    plateau_iterations: int | None = Field(default=None, ge=1, description="opt-in")
    plateau_min_delta: float = Field(default=0.0, ge=0)


def _finite(v: float) -> bool:
    return not (math.isnan(v) or math.isinf(v))


def judge(series: dict[str, Points], rule: HealthRule) -> StopRequest | None:
    """The first learning-health problem the scalars show, or None."""
    if rule.nan:
        for tag in rule.nan_tags:
            bad = next(((s, v) for s, v in series.get(tag, []) if not _finite(v)), None)
            if bad:
                return StopRequest("nan", f"{tag} is {bad[1]} at iteration {bad[0]}", bad[0])
    for tag, bound in rule.bounds.items():
        bad = next(((s, v) for s, v in series.get(tag, []) if _finite(v) and abs(v) > bound), None)
        if bad:
            return StopRequest("diverged", f"{tag} reached {bad[1]:.4g} at iteration {bad[0]} (bound {bound:g})",
                               bad[0])
    reward = [(s, v) for s, v in series.get(rule.reward_tag, []) if _finite(v)]
    if rule.collapse_fraction is not None and len(reward) > rule.collapse_patience:
        first = reward[0][1]
        best_i = max(range(len(reward)), key=lambda i: reward[i][1])
        best = reward[best_i][1]
        threshold = best - rule.collapse_fraction * (best - first)
        tail = reward[best_i + 1:][-rule.collapse_patience:]
        if best > first and len(tail) >= rule.collapse_patience and all(v < threshold for _, v in tail):
            return StopRequest("collapsed", f"{rule.reward_tag} fell from its best {best:.4g} (iteration "
                                            f"{reward[best_i][0]}) below {threshold:.4g} and stayed there for "
                                            f"{len(tail)} iterations (now {tail[-1][1]:.4g})", tail[0][0])
    if rule.plateau_iterations is not None and reward:
        best, best_step = reward[0][1], reward[0][0]
        for s, v in reward[1:]:
            if v > best + rule.plateau_min_delta:
                best, best_step = v, s
        if reward[-1][0] - best_step >= rule.plateau_iterations:
            return StopRequest("plateau", f"{rule.reward_tag} has not improved on {best:.4g} (iteration {best_step}) "
                                          f"for {reward[-1][0] - best_step} iterations", None)
    return None
