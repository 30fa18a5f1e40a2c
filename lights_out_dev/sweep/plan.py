"""Sweep plans: `sweeps/<name>.yaml`, validated by pydantic, expanded into numbered runs.

A plan is data: a list of run entries (task + trainer overrides + GPUs + time limit + phase),
optionally multiplied by a `grid` of override values, plus an optional promotion rule that
turns the best run of one phase into its `-mgpu` variant on all GPUs. Errors name the file,
the line and the field (YAML node marks map a pydantic error location back to a line).
Pure apart from reading the file.
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Iterable, Literal

import yaml
from pydantic import (
    BaseModel,
    Field,
    Strict,
    ValidationError,
    field_validator,
    model_validator,
)

from lights_out_dev.core.command import merge_flags
from lights_out_dev.core.config import Duration
from lights_out_dev.core.models import StrictModel
from lights_out_dev.errors import LightsOutError
from lights_out_dev.sweep.compute import budget_seconds
from lights_out_dev.sweep.health import HealthRule
from lights_out_dev.sweep.search import (
    Search,
    apply_params,
    fixed_configurations,
    params_text,
)

GRID_KEYS = ("num_envs", "max_iterations", "seed")


class PlanError(LightsOutError):
    """A user-caused plan problem; str() is one sentence naming file, line, field and the fix."""


# YAML reads `true` as a boolean, which pydantic would take as the number 1: counts must be written as numbers
Int = Annotated[int, Strict()]


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that refuses a key given twice in one mapping (plain YAML keeps the last silently)."""

    def construct_mapping(self, node, deep=False):
        seen: dict = {}
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, (str, int, float, bool)) and key in seen:
                raise PlanError(f"line {key_node.start_mark.line + 1}: key '{key}' is given twice in one entry "
                                f"(first on line {seen[key]}); keep one of them.")
            seen[key] = key_node.start_mark.line + 1
        return super().construct_mapping(node, deep=deep)


class RunOverrides(StrictModel):
    num_envs: Int | None = Field(default=None, ge=1)
    max_iterations: Int | None = Field(default=None, ge=1)
    seed: Int | None = None
    trainer_args: list[str] = Field(default_factory=list, description="extra trainer flags, last flag wins")


class RunEntry(StrictModel):
    task: str = Field(min_length=1, description="doit task name, e.g. cartpole:base")
    overrides: RunOverrides = Field(default_factory=RunOverrides)
    grid: dict[str, list[Int | float | str]] = Field(
        default_factory=dict, description="each combination becomes one run (cartesian product, keys in order); "
        "keys: num_envs, max_iterations, seed, a trainer flag ('--lr') or a Hydra key ('agent.entropy_coef')")
    gpus: Int = Field(default=1, ge=1)
    nodes: Int = Field(default=1, ge=1, description="Slurm nodes of an -mgpu run (gpus per node)")
    time_limit: Duration = Field(default=None, description="e.g. 1h; default: the plan's time_limit")
    phase: Int = Field(default=1, ge=1)
    smoke: bool | None = None
    notes: str = ""
    search: Search | None = Field(default=None, description="grid / random / optuna over trainer inputs (search.py)")

    @model_validator(mode="after")
    def _grid_or_search(self):
        if self.grid and self.search:
            raise ValueError("an entry takes either grid or search, not both; move the grid into search.space")
        return self

    @field_validator("grid")
    @classmethod
    def _non_empty(cls, v):
        for key, values in v.items():
            if not values:
                raise ValueError(f"grid '{key}' has no values; list at least one")
            if key in GRID_KEYS:
                if not all(isinstance(x, int) and not isinstance(x, bool) for x in values):
                    raise ValueError(f"grid '{key}' takes whole numbers only, got {values}")
            elif not (key.startswith("-") or "." in key) or any(c.isspace() or c == "=" for c in key):
                raise ValueError(f"grid key '{key}' is none of {', '.join(GRID_KEYS)}, a trainer flag ('--lr') "
                                 f"or a Hydra key ('agent.entropy_coef'); spell it as one of those")
        return v


class Promotion(StrictModel):
    """Promote the best run of `from_phase` to its multi-GPU variant in `phase`."""

    metric: str = "Train/mean_reward"
    mode: Literal["max", "min"] = "max"
    from_phase: Int = Field(default=1, ge=1)
    phase: Int = Field(default=2, ge=2)
    suffix: str = Field(default="-mgpu", description="task name suffix of the multi-GPU variant")
    gpus: Int | Literal["all"] = "all"
    cpu_ranks: Int = Field(default=2, ge=1, description="ranks (CPU slots) when the machine has no GPU")
    scale_envs: bool = Field(default=True, description="num_envs of the promoted run = best run's num_envs x GPUs")
    time_limit: Duration = None
    overrides: RunOverrides = Field(default_factory=RunOverrides)
    smoke: bool | None = None


    @model_validator(mode="after")
    def _order(self):
        if self.phase <= self.from_phase:
            raise ValueError(f"promote.phase ({self.phase}) must come after from_phase ({self.from_phase})")
        return self


class Evaluation(StrictModel):
    """After the last phase: evaluate the final checkpoints of the best finished runs (evaluate.py)."""

    best: Int = Field(default=1, ge=1, description="how many runs, best first")
    metric: str = "Train/mean_reward"
    mode: Literal["max", "min"] = "max"
    num_episodes: Int = Field(default=20, ge=1)
    args: list[str] = Field(default_factory=list, description="more play flags, e.g. ['--video']")


class Plan(StrictModel):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    description: str = ""
    mode: Literal["parallel", "sequential"] = Field(
        default="parallel", description="parallel: one run per GPU (or CPU slot) at a time; sequential: one run at a time")
    smoke: bool = Field(default=False, description="recorded on every run's spec (per-run `smoke` wins)")
    smoke_first: bool = Field(
        default=False, description="run the smoke gates of all runs of a phase before any long attempt of it")
    time_limit: Duration = Field(default=None, description="default per-run limit; none = project monitor.time_limit")
    max_envs_per_gpu_gb: float | None = Field(
        default=None, gt=0, description="parallel mode: cap num_envs at this many envs per GB of the assigned GPU's memory")
    slurm_array: int | None = Field(
        default=None, ge=1, description="Slurm: submit each phase's single-GPU runs as one job array, at most "
                                        "this many running at once (%K)")
    runs: list[RunEntry] = Field(min_length=1)
    promote: Promotion | None = None
    evaluate: Evaluation | None = None
    health: HealthRule | None = Field(default=None, description="learning-health verdicts for every run (health.py)")
    budget: float | None = Field(default=None, description="e.g. '20 gpu_h': no new launch once the sweep spent it")
    runs_per_gpu: int | Literal["auto"] = Field(
        default=1, description="1: one run per GPU; auto or N: pack runs whose measured peak VRAM fits (packing.py)")
    pack_margin_mb: float = Field(default=2048.0, ge=0, description="headroom per packed run above its measured peak")

    _budget = field_validator("budget", mode="before")(classmethod(lambda cls, v: budget_seconds(v)))

    @field_validator("runs_per_gpu")
    @classmethod
    def _at_least_one(cls, v):
        if v != "auto" and v < 1:
            raise ValueError(f"runs_per_gpu {v} must be auto or a number >= 1")
        return v

    @model_validator(mode="after")
    def _promotion_phase(self):
        if self.promote:
            phases = {r.phase for r in self.runs}
            if self.promote.from_phase not in phases:
                raise ValueError(f"promote.from_phase {self.promote.from_phase} has no runs; use one of {sorted(phases)}")
            if any(p >= self.promote.phase for p in phases):
                raise ValueError(f"promote.phase {self.promote.phase} must come after every run's phase ({max(phases)})")
        return self


class Promoted(BaseModel):
    """What a promoted run becomes: the winner's configuration, scaled to its GPUs."""
    task: str
    num_envs: int | None
    gpus: int
    source: int  # the winning run's index
    value: float  # its metric value
    note: str  # one line for the ledger: why this run, and any fallback taken
    seed: int | None = None
    max_iterations: int | None = None
    trainer_args: list[str] = []


@dataclass(frozen=True)
class SearchSlot:
    group: str  # "entry<N>": the plan entry whose search this run belongs to
    trial: int
    repeat: int


@dataclass
class PlannedRun:
    """One concrete run of a plan, numbered from 1 in plan order (promotion runs last)."""

    index: int
    phase: int
    task: str | None  # None for a promotion run until its source run is chosen
    num_envs: int | None
    max_iterations: int | None
    seed: int | None
    trainer_args: list[str]
    gpus: int
    time_limit_s: float | None
    smoke: bool
    line: int | None = None
    nodes: int = 1
    notes: str = ""
    promotion: Promotion | None = None
    search: SearchSlot | None = None  # its place in a search: entry group, trial, repeat
    params: dict[str, Any] | None = None  # the search configuration applied to it (None: not sampled yet)
    varied: dict[str, Any] = field(default_factory=dict)  # what tells it apart from its grid siblings
    promoted: Promoted | None = None  # the promotion decision applied to it (promotion.py)

    @property
    def key(self) -> str:
        return f"{self.index:02d}"


@dataclass
class LoadedPlan:
    plan: Plan
    path: Path
    runs: list[PlannedRun]

    @property
    def name(self) -> str:
        return self.plan.name

    def phases(self) -> list[int]:
        return sorted({r.phase for r in self.runs})

    def run(self, index: int) -> PlannedRun:
        return self.runs[index - 1]


# --- YAML with line numbers -------------------------------------------------------------------

def _node_at(node: yaml.Node | None, loc: tuple) -> yaml.Node | None:
    """Deepest YAML node along a pydantic error location (stops where the path leaves the file)."""
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            nxt = next((v for k, v in node.value if k.value == str(part)), None)
            if nxt is None:  # unknown key: point at the key itself
                nxt = next((k for k, _ in node.value if k.value == str(part)), None)
                return nxt or node
            node = nxt
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) and part < len(node.value):
            node = node.value[part]
        else:
            return node
    return node


def _format_error(err: ValidationError, source: str, root: yaml.Node | None) -> str:
    first = err.errors()[0]
    loc = tuple(p for p in first["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    node = _node_at(root, loc)
    line = f" line {node.start_mark.line + 1}" if node is not None else ""
    dotted = ".".join(str(p) for p in loc) or "(top level)"
    msg = first["msg"].removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        return f"{source}{line}: '{dotted}' is not a plan field; remove it or check its spelling (see README 'Sweeps')."
    if first["type"] == "missing":
        return f"{source}{line}: field '{dotted}' is required; add it."
    return f"{source}{line}: field '{dotted}': {msg}; fix that value."


def parse_plan(text: str, source: str = "<plan>") -> tuple[Plan, dict[int, int]]:
    """YAML text -> (plan, {run entry index: line number})."""
    try:
        root = yaml.compose(text)
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except PlanError as e:
        raise PlanError(f"{source} {e}") from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" line {mark.line + 1}" if mark else ""
        problem = getattr(e, "problem", None) or str(e)
        raise PlanError(f"{source}{where} is not valid YAML ({problem}); fix the syntax.") from None
    if not isinstance(data, dict):
        raise PlanError(f"{source} must be a YAML mapping with at least 'name' and 'runs'; see sweeps/default.yaml.")
    try:
        plan = Plan.model_validate(data)
    except ValidationError as e:
        raise PlanError(_format_error(e, source, root)) from None
    lines = {}
    runs_node = _node_at(root, ("runs",))
    if isinstance(runs_node, yaml.SequenceNode):
        lines = {i: n.start_mark.line + 1 for i, n in enumerate(runs_node.value)}
    return plan, lines


def search_group(entry_index: int) -> str:
    """The name of a plan entry's search (its trial files, its pruning competitors)."""
    return f"entry{entry_index + 1}"


def _search_runs(plan: Plan, i: int, entry: RunEntry, line: int | None) -> list[PlannedRun]:
    """An entry with `search`: configurations x repeats, trial-major (a configuration's seeds together).
    Optuna configurations are left open (params None) until their first run is launched (sweep.py)."""
    sr = entry.search
    configs = fixed_configurations(sr) or [None] * sr.n_configurations()
    base_seed = entry.overrides.seed if entry.overrides.seed is not None else 0
    out = []
    for trial, params in enumerate(configs):
        for repeat in range(sr.repeats):
            run = PlannedRun(
                index=0, phase=entry.phase, task=entry.task, num_envs=entry.overrides.num_envs,
                max_iterations=entry.overrides.max_iterations, seed=base_seed + repeat,
                trainer_args=list(entry.overrides.trainer_args), gpus=entry.gpus,
                time_limit_s=entry.time_limit if entry.time_limit is not None else plan.time_limit,
                smoke=plan.smoke if entry.smoke is None else entry.smoke, line=line, notes=entry.notes,
                search=SearchSlot(search_group(i), trial, repeat))
            if params is not None:
                set_params(run, params)
            out.append(run)
    return out


def set_params(run: PlannedRun, params: dict) -> None:
    """Apply a search configuration to a planned run (runner keys, trainer flags, Hydra tokens)."""
    runner, run.trainer_args = apply_params(params, run.trainer_args)
    for key, value in runner.items():
        setattr(run, key, value)
    run.params = dict(params)


def varied(run: PlannedRun) -> str:
    """The run's search parameters and seed as text (ledger, report, legends); '' for a plain run."""
    params = run.params
    if params is None and run.search is None:
        return ""
    text = params_text(params) if params else "(configuration asked at launch)"
    return f"{text}, seed={run.seed}"


def entry_search(plan: Plan, run: PlannedRun) -> Search | None:
    if run.search is None:
        return None
    return plan.runs[int(run.search.group.removeprefix("entry")) - 1].search


def expand(plan: Plan, lines: dict[int, int] | None = None) -> list[PlannedRun]:
    """Entries x grid (or search) -> numbered runs, ordered by phase then plan order; promotion runs last."""
    lines = lines or {}
    out: list[PlannedRun] = []
    flag_values: list[dict[str, int | float | str]] = []  # per run, the trainer flags its grid set
    ordered = sorted(enumerate(plan.runs), key=lambda ie: ie[1].phase)
    for i, entry in ordered:
        if entry.search is not None:
            out += _search_runs(plan, i, entry, lines.get(i))
            continue
        keys = list(entry.grid)
        combos = itertools.product(*(entry.grid[k] for k in keys)) if keys else [()]
        for combo in combos:
            values = {k: getattr(entry.overrides, k) for k in GRID_KEYS} | dict(zip(keys, combo))
            flags = {k: v for k, v in zip(keys, combo) if k not in GRID_KEYS}
            flag_values.append(flags)
            grid_args = [tok for k, v in flags.items() for tok in ([k, str(v)] if k.startswith("-") else [f"{k}={v}"])]
            out.append(PlannedRun(
                index=0, phase=entry.phase, task=entry.task, num_envs=values["num_envs"],
                max_iterations=values["max_iterations"], seed=values["seed"],
                trainer_args=merge_flags(list(entry.overrides.trainer_args), grid_args), gpus=entry.gpus,
                nodes=entry.nodes,
                time_limit_s=entry.time_limit if entry.time_limit is not None else plan.time_limit,
                smoke=plan.smoke if entry.smoke is None else entry.smoke, line=lines.get(i), notes=entry.notes))
    if plan.promote:
        p = plan.promote
        out.append(PlannedRun(
            index=0, phase=p.phase, task=None, num_envs=p.overrides.num_envs,
            max_iterations=p.overrides.max_iterations, seed=p.overrides.seed,
            trainer_args=list(p.overrides.trainer_args), gpus=0,
            time_limit_s=p.time_limit if p.time_limit is not None else plan.time_limit,
            smoke=plan.smoke if p.smoke is None else p.smoke, promotion=p,
            notes=f"promotion: best {p.metric} ({p.mode}) of phase {p.from_phase}"))
    for n, run in enumerate(out, start=1):
        run.index = n
    flag_values += [{}] * (len(out) - len(flag_values))
    for run, values, flags in zip(out, varied_values(out), flag_values):
        peers = [f for r, f in zip(out, flag_values) if r.task == run.task]
        values = {**values, **{k: v for k, v in flags.items() if len({str(p.get(k)) for p in peers}) > 1}}
        if values:
            run.varied = values
    return out


def varied_values(runs: list[PlannedRun]) -> list[dict[str, int]]:
    """Per run, the run numbers (seed, num_envs, max_iterations) whose values differ between the plan's
    runs of its task: what tells grid runs apart in a status line. Pure."""
    by_task: dict[str | None, list[PlannedRun]] = {}
    for run in runs:
        by_task.setdefault(run.task, []).append(run)
    out = []
    for run in runs:
        peers = by_task[run.task]
        keys = [k for k in ("seed", *GRID_KEYS[:2]) if len({getattr(p, k) for p in peers}) > 1]
        out.append({k: getattr(run, k) for k in keys if getattr(run, k) is not None})
    return out


def varied_text(run: PlannedRun, skip: tuple[str, ...] = ()) -> str:
    """'seed=2 num_envs=32' for a run of a grid ('' when nothing varies). Pure."""
    return " ".join(f"{k}={v}" for k, v in run.varied.items() if k not in skip)


def load_plan(path: Path | str) -> LoadedPlan:
    path = Path(path)
    try:
        text = path.read_bytes().decode()
    except FileNotFoundError:
        here = sorted(p.name for p in path.parent.glob("*.yaml")) if path.parent.is_dir() else []
        hint = f" (plans in {path.parent}: {', '.join(here)})" if here else ""
        raise PlanError(f"plan file {path} does not exist{hint}; pass an existing file with --plan.") from None
    except IsADirectoryError:
        raise PlanError(f"plan {path} is a directory, not a file; pass a plan file such as "
                        f"{path / 'default.yaml'} with --plan.") from None
    except UnicodeDecodeError as e:
        line = path.read_bytes()[:e.start].count(b"\n") + 1
        raise PlanError(f"{path} line {line} is not UTF-8 text (byte {e.object[e.start]:#04x}); save the plan "
                        f"as UTF-8.") from None
    except OSError as e:
        raise PlanError(f"cannot read the plan {path} ({e.strerror or e}); check the path and its permissions.") from None
    plan, lines = parse_plan(text, str(path))
    return LoadedPlan(plan=plan, path=path, runs=expand(plan, lines))


def check_tasks(loaded: LoadedPlan, known: Iterable[str]) -> None:
    """Every task of the plan must be a known doit task; the error suggests the closest names."""
    known = sorted(set(known))
    for run in loaded.runs:
        if run.task is None or run.task in known:
            continue
        close = difflib.get_close_matches(run.task, known, n=3, cutoff=0.5)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}" if close else "run `doit list --all` for the task names"
        where = f" line {run.line}" if run.line else ""
        raise PlanError(f"{loaded.path}{where}: unknown task '{run.task}'; {hint}?")


def promoted_task(task: str, suffix: str) -> str:
    return task if task.endswith(suffix) else task + suffix


_SAFE = re.compile(r"[^A-Za-z0-9_.-]+")


def safe_name(text: str) -> str:
    """Task name -> file-name-safe token ('cartpole:base' -> 'cartpole__base')."""
    return _SAFE.sub("_", text.replace(":", "__"))
