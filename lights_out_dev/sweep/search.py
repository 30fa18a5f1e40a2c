"""Search spaces of a sweep plan: grid, random and Optuna (TPE) over any trainer input.

A plan entry's `search` block names parameters by how the trainer takes them:
- `num_envs`, `max_iterations`: the runner's own keys (they become `--num_envs N`, ... and the spec);
- `--flag`: a trainer flag, appended as `--flag VALUE` (last flag wins);
- anything else, e.g. `agent.algorithm.learning_rate`: a Hydra token `key=VALUE`.
Each parameter is one of `choice: [..]`, `uniform: [lo, hi]`, `log_uniform: [lo, hi]`, `int: [lo, hi]`
(`log: true` for a log-spaced int). `samples: N` configurations (grid: every combination) times
`repeats: K` seeds each (seed, seed+1, ...).

Grid and random configurations are fixed when the plan is expanded (random from `seed`), so a rerun
expands to the same runs. Optuna configurations depend on the results so far: each trial's parameters
are asked for when its first run is launched and written atomically to `<sweep dir>/search/` before
that launch; the study is rebuilt from those trial files and the runs' states at every ask (the files
are the sampler's state), so a sweep killed at any moment resumes the same study: a trial with a file
keeps its parameters, none is asked twice, none is lost. Pure apart from `TrialStore`.
"""
from __future__ import annotations

import itertools
import json
import math
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from lights_out_dev.core.models import StrictModel
from lights_out_dev.core.state import atomic_write_text
from lights_out_dev.sweep.pruning import PruneRule

RUNNER_KEYS = ("num_envs", "max_iterations")
SIGNIFICANT_DIGITS = 6  # sampled floats are rounded so that argv, state and report show the same value


class Param(StrictModel):
    """One search dimension; exactly one of the range kinds is given."""

    model_config = ConfigDict(populate_by_name=True)
    choice: list[int | float | str | bool] | None = Field(default=None, min_length=1)
    uniform: tuple[float, float] | None = None
    log_uniform: tuple[float, float] | None = None
    int_range: tuple[int, int] | None = Field(default=None, alias="int")
    log: bool = Field(default=False, description="int only: sample on a log scale")

    @model_validator(mode="after")
    def _one_kind(self):
        kinds = [k for k in ("choice", "uniform", "log_uniform", "int_range") if getattr(self, k) is not None]
        if len(kinds) != 1:
            raise ValueError("give exactly one of choice: [..], uniform: [lo, hi], log_uniform: [lo, hi], int: [lo, hi]")
        lo_hi = getattr(self, kinds[0]) if kinds[0] != "choice" else None
        if lo_hi is not None and not lo_hi[0] < lo_hi[1]:
            raise ValueError(f"{kinds[0].removesuffix('_range')} range [{lo_hi[0]}, {lo_hi[1]}] must have low < high")
        if self.log_uniform is not None and self.log_uniform[0] <= 0:
            raise ValueError(f"log_uniform needs a low bound > 0, not {self.log_uniform[0]}")
        if self.log and (self.int_range is None or self.int_range[0] < 1):
            raise ValueError("log: true is for int ranges with a low bound >= 1")
        return self

    @property
    def kind(self) -> str:
        return next(k for k in ("choice", "uniform", "log_uniform", "int_range") if getattr(self, k) is not None
                    ).removesuffix("_range")

    def grid_values(self) -> list:
        if self.choice is not None:
            return list(self.choice)
        if self.int_range is not None:
            return list(range(self.int_range[0], self.int_range[1] + 1))
        raise ValueError("a grid needs choice or int parameters")

    def sample(self, rng: random.Random):
        if self.choice is not None:
            return rng.choice(self.choice)
        if self.int_range is not None:
            lo, hi = self.int_range
            if self.log:
                return min(hi, max(lo, round(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
            return rng.randint(lo, hi)
        if self.uniform is not None:
            return _round(rng.uniform(*self.uniform))
        lo, hi = self.log_uniform
        return _round(math.exp(rng.uniform(math.log(lo), math.log(hi))))

    def distribution(self):
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.choice is not None:
            return CategoricalDistribution(self.choice)
        if self.int_range is not None:
            return IntDistribution(*self.int_range, log=self.log)
        if self.uniform is not None:
            return FloatDistribution(*self.uniform)
        return FloatDistribution(*self.log_uniform, log=True)


class Search(StrictModel):
    """`search:` of a plan entry."""

    method: Literal["grid", "random", "optuna"] = "random"
    space: dict[str, Param] = Field(min_length=1)
    samples: int | None = Field(default=None, ge=1, description="configurations (grid: all combinations)")
    repeats: int = Field(default=1, ge=1, description="seeds per configuration: seed, seed+1, ...")
    seed: int = Field(default=0, description="seed of the sampler (random, optuna)")
    metric: str = Field(default="Train/mean_reward", description="what a configuration is judged by (optuna, report)")
    mode: Literal["max", "min"] = "max"
    startup_trials: int = Field(default=4, ge=1, description="optuna: random trials before TPE takes over")
    prune: PruneRule | None = None

    @model_validator(mode="after")
    def _check(self):
        for key in self.space:
            if key in ("seed", "--seed"):
                raise ValueError("the seed is set by `repeats`; remove it from the space")
            if key.startswith("-") and not key.startswith("--"):
                raise ValueError(f"trainer flag {key!r} must start with '--'")
        if self.method == "grid":
            bad = [k for k, p in self.space.items() if p.kind not in ("choice", "int")]
            if bad:
                raise ValueError(f"a grid needs choice or int parameters; {', '.join(bad)} is a continuous range "
                                 f"(use method: random or optuna)")
        elif self.samples is None:
            raise ValueError(f"method {self.method} needs samples: N (how many configurations)")
        return self

    def n_configurations(self) -> int:
        if self.method == "grid":
            n = math.prod(len(p.grid_values()) for p in self.space.values())
            return min(n, self.samples) if self.samples else n
        return self.samples


def _round(x: float) -> float:
    return float(f"{x:.{SIGNIFICANT_DIGITS}g}")


def fixed_configurations(search: Search) -> list[dict] | None:
    """Grid and random: the configurations in order; Optuna: None (asked for at launch)."""
    if search.method == "grid":
        keys = list(search.space)
        combos = itertools.product(*(search.space[k].grid_values() for k in keys))
        return [dict(zip(keys, c)) for c in combos][:search.n_configurations()]
    if search.method == "random":
        rng = random.Random(search.seed)
        return [{k: p.sample(rng) for k, p in search.space.items()} for _ in range(search.samples)]
    return None


def value_text(value) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, float):
        return f"{value:.{SIGNIFICANT_DIGITS}g}"
    return str(value)


def apply_params(params: dict, trainer_args: list[str]) -> tuple[dict, list[str]]:
    """A configuration -> (runner keys for the spec, trainer args with flags and Hydra tokens appended)."""
    runner, args = {}, list(trainer_args)
    for key, value in params.items():
        if key in RUNNER_KEYS:
            runner[key] = int(value)
        elif key.startswith("--"):
            args += [key, value_text(value)]
        else:
            args.append(f"{key}={value_text(value)}")
    return runner, args


def params_text(params: dict) -> str:
    """'num_envs=32, agent.algorithm.learning_rate=0.0012' for ledger, report and legends."""
    return ", ".join(f"{k.lstrip('-')}={value_text(v)}" for k, v in params.items())


# --- Optuna ------------------------------------------------------------------------------------

@dataclass
class TrialResult:
    """What the runs of one trial came to, for the study."""

    number: int
    params: dict
    values: list[float]  # the metric of its finished (completed/timeout) runs
    pruned: bool  # every run of it is final and at least one was pruned, none finished
    failed: bool  # every run of it is final and none gave a value
    running: bool  # some run of it is not final yet


def ask(search: Search, results: list[TrialResult]) -> dict:
    """The next trial's parameters, from a study rebuilt from `results` (trials 0..n-1 in order).

    The sampler is seeded with the search seed plus the trial number: a rebuilt study asks the same
    question as one that never stopped. Running trials are told to TPE as running (constant liar),
    so parallel slots do not all sample the same point."""
    import optuna
    from optuna.trial import TrialState, create_trial

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    dists = {k: p.distribution() for k, p in search.space.items()}
    with warnings.catch_warnings():  # constant_liar is marked experimental; it is what parallel slots need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        sampler = optuna.samplers.TPESampler(seed=search.seed + len(results), n_startup_trials=search.startup_trials,
                                             constant_liar=True)
    study = optuna.create_study(direction="maximize" if search.mode == "max" else "minimize", sampler=sampler)
    for r in results:
        if r.values and not r.running:
            state, value = TrialState.COMPLETE, sum(r.values) / len(r.values)
        elif r.running:
            state, value = TrialState.RUNNING, None
        elif r.pruned:
            state, value = TrialState.PRUNED, None
        else:
            state, value = TrialState.FAIL, None
        study.add_trial(create_trial(params=r.params, distributions=dists, value=value, state=state))
    trial = study.ask(dists)
    return {k: _round(v) if isinstance(v, float) else v for k, v in trial.params.items()}


class TrialStore:
    """`<sweep dir>/search/<group>_trial<NN>.json`: one file per asked trial, written before its first launch."""

    def __init__(self, directory: Path):
        self.dir = Path(directory)

    def path(self, group: str, trial: int) -> Path:
        return self.dir / f"{group}_trial{trial:03d}.json"

    def load(self, group: str, trial: int) -> dict | None:
        try:
            return json.loads(self.path(group, trial).read_text())["params"]
        except (OSError, ValueError, KeyError):
            return None

    def save(self, group: str, trial: int, params: dict) -> None:
        atomic_write_text(self.path(group, trial), json.dumps({"group": group, "trial": trial, "params": params},
                                                              indent=2))
