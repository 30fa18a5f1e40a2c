"""Launchers: an experiment description -> doit task dicts.

    lab(exp)          single GPU, headless, `--device cuda:N`; plus its `-mgpu` twin
    lab_mgpu(exp)     only the multi-GPU variant (torch.distributed.run ... --distributed)
    lab_debug(exp)    GUI (no --headless), 64 envs; no -mgpu twin (a GUI run is for looking at)
lab() and newton() also add `<variant>-play`: evaluate a checkpoint of the variant (lights_out_dev.run.evaluate).
    newton(exp)       lab() + the Newton selector token (config `newton_selector`, e.g. physics=newton)
    newton_mgpu(exp)  only the multi-GPU Newton variant

Each task is a sub-task of its family group (`basename` family, `name` variant): `cartpole:base`.
Its action calls `lights_out_dev.run.supervisor.run_task(spec, target)` (imported lazily so that
`doit list` stays fast); its target `<logs_dir>/targets/<task with ':'→'__'>.json` is written by
the supervisor at the end; it is up to date while that target exists and the resolved spec
(command-line overrides included) is unchanged.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path

from doit.exceptions import InvalidDodoFile
from doit.tools import config_changed

from lights_out_dev.core import overrides
from lights_out_dev.core.command import isaac_env_defaults
from lights_out_dev.core.config import (
    ConfigError,
    LauncherConfig,
    ProjectConfig,
    load_config,
    project_root,
)
from lights_out_dev.core.profiles import TrainerProfile
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.doit.outcome import action
from lights_out_dev.host.nvml import gpu_count
from lights_out_dev.run.evaluate import PLAY_SUFFIX
from lights_out_dev.run.tasks_index import DEP_META, SPEC_META, checkpoint_from_target

MGPU_SUFFIX = "-mgpu"
DEBUG_NUM_ENVS = 64
# Launcher kinds fall back to a configured simpler kind, so one [launchers.lab] table serves all.
_FALLBACK = {"lab_mgpu": "lab", "lab_debug": "lab", "newton": "lab", "newton_mgpu": "newton"}


@dataclass(frozen=True)
class Experiment:
    """One experiment variant as a family file writes it."""

    family: str
    name: str
    trainer_task: str
    doc: str
    num_envs: int | None = None
    max_iterations: int | None = None
    seed: int | None = None
    extra_args: tuple[str, ...] = ()
    experiment_name: str | None = None
    depends_on: str | None = None  # variant of the same family whose final checkpoint this one starts from
    gpus: int | None = None  # for the -mgpu twin; None = every visible GPU (2 when none is visible)
    env: dict[str, str] = field(default_factory=dict)
    launcher: LauncherConfig | None = None  # None = the project's [tool.lights_out.launchers.<kind>]
    trainer: str | None = None  # trainer profile name; None = the launcher's (`trainer` in its table)


@functools.lru_cache(maxsize=1)
def project() -> tuple[Path, ProjectConfig]:
    root = project_root()
    try:
        return root, load_config(root)
    except ConfigError as e:
        raise InvalidDodoFile(str(e)) from None  # doit prints "ERROR: <sentence>" and exits 3


@functools.lru_cache(maxsize=64)
def _profile(cfg_json: str, name: str) -> TrainerProfile:
    return ProjectConfig.model_validate_json(cfg_json).trainer_profile(name)


def trainer_profile(cfg: ProjectConfig, name: str) -> TrainerProfile:
    """A trainer profile by name (resolved once per configuration: the graph asks for it per task)."""
    from lights_out_dev.core.profiles import ProfileError

    try:
        return _profile(cfg.model_dump_json(), name)
    except ProfileError as e:
        raise InvalidDodoFile(str(e)) from None  # doit prints "ERROR: <sentence>" and exits 3


def launcher_config(cfg: ProjectConfig, kind: str) -> LauncherConfig:
    while kind not in cfg.launchers and kind in _FALLBACK:
        kind = _FALLBACK[kind]
    return cfg.launcher(kind)


def task_id(family: str, variant: str) -> str:
    return f"{family}:{variant}"


def target_path(root: Path, cfg: ProjectConfig, task: str) -> Path:
    return cfg.path(root, cfg.logs_dir) / "targets" / (task.replace(":", "__") + ".json")


def resolve_spec(exp: Experiment, kind: str, variant: str, cfg: ProjectConfig,
                 ov: overrides.Overrides) -> RunSpec:
    """Experiment + project config + this invocation's overrides -> RunSpec (pure)."""
    lcfg = exp.launcher or launcher_config(cfg, kind)
    multi = kind.endswith("_mgpu")
    headless = lcfg.headless if lcfg.headless is not None else kind != "lab_debug"
    num_envs = DEBUG_NUM_ENVS if kind == "lab_debug" else exp.num_envs
    time_limit = ov.time_limit_s if ov.time_limit_set else cfg.monitor.time_limit
    profile = trainer_profile(cfg, exp.trainer or lcfg.trainer)
    # The launcher says where the trainer is installed; the profile how it is spelled.
    if lcfg.module or lcfg.script:
        module, script = lcfg.module, None if lcfg.module else lcfg.script
    else:
        module, script = profile.module, profile.script
    return RunSpec(
        task=task_id(exp.family, variant),
        family=exp.family,
        launcher=kind,
        trainer=profile,
        prefix=list(lcfg.prefix if profile.prefix is None else profile.prefix),
        script=script,
        module=module,
        script_args=list(profile.script_args if lcfg.script_args is None else lcfg.script_args),
        trainer_task=exp.trainer_task,
        experiment_name=exp.experiment_name,
        num_envs=ov.num_envs or num_envs,
        max_iterations=ov.max_iterations or exp.max_iterations,
        seed=ov.seed if ov.seed is not None else exp.seed,
        headless=headless,
        newton_selector=(lcfg.newton_selector or profile.newton_selector) if kind.startswith("newton") else None,
        gpus=(exp.gpus or gpu_count() or 2) if multi else 1,
        nodes=ov.nodes or 1,
        time_limit_s=time_limit,
        extra_args=[*exp.extra_args, *ov.trainer_args],
        env={**isaac_env_defaults(lcfg.isaac_env_defaults, lcfg.prefix, script or module or ""), **profile.env,
             **lcfg.env,
             **cfg.experiment_env.get(exp.family, {}), **exp.env},
        secret_env=list(cfg.secrets),
        smoke=ov.smoke,
    )


@action
def run_experiment(spec: dict, target: str, checkpoint_from: str | None = None) -> bool:
    """doit python-action. Imports the supervisor lazily so that loading the graph stays fast."""
    run_spec = RunSpec.model_validate(spec)
    if checkpoint_from:
        try:
            run_spec = run_spec.model_copy(update={"load_checkpoint": checkpoint_from_target(Path(checkpoint_from))})
        except (OSError, ValueError) as e:
            print(f"lights-out: {run_spec.task} cannot start: {e}")
            return False
    from lights_out_dev.run.supervisor import (
        run_task,  # checks the launch (GPU index, script, prefix) itself
    )

    return run_task(run_spec, Path(target))


def _task(exp: Experiment, kind: str, suffix: str = "") -> dict:
    root, cfg = project()
    ov = overrides.current()
    variant = exp.name + suffix
    spec = resolve_spec(exp, kind, variant, cfg, ov)
    target = target_path(root, cfg, spec.task)
    dep_target = None
    if exp.depends_on:
        dep_target = str(target_path(root, cfg, task_id(exp.family, exp.depends_on + suffix)))
    dumped = spec.model_dump(mode="json")
    digest = {"spec": dumped, "overrides": ov.digest_fields()}
    task_dep = ["gpu_guard"] + (["power_check"] if spec.multi_gpu and cfg.power.required_for_mgpu else [])
    return {
        "name": variant,
        "doc": exp.doc + (f" [{spec.gpus} GPUs]" if spec.multi_gpu else ""),
        "actions": [(run_experiment, [dumped, str(target), dep_target])],
        "targets": [str(target)],
        "file_dep": [dep_target] if dep_target else [],
        "task_dep": task_dep,
        "uptodate": [config_changed(digest)],
        "verbosity": 2,
        "meta": {SPEC_META: spec, DEP_META: dep_target},
    }


def _play_task(exp: Experiment, kind: str) -> dict:
    """`<variant>-play`: evaluate a checkpoint of the variant (lights_out_dev.run.evaluate); always runs."""
    root, cfg = project()
    spec = resolve_spec(exp, kind, exp.name, cfg, overrides.current())
    play = task_id(exp.family, exp.name + PLAY_SUFFIX)
    experiment_root = cfg.path(root, cfg.trainer_logs_dir) / (exp.experiment_name or exp.family)
    return {
        "name": exp.name + PLAY_SUFFIX,
        "doc": f"Evaluate a checkpoint of {spec.task} (--checkpoint latest|best|PATH, --num_episodes N, --video).",
        "actions": [(run_play, [spec.model_dump(mode="json"), play, str(target_path(root, cfg, spec.task)),
                                str(target_path(root, cfg, play)), str(experiment_root)])],
        "targets": [str(target_path(root, cfg, play))],
        "uptodate": [False],  # an evaluation is asked for each time
        "verbosity": 2,
    }


@action
def run_play(*args) -> bool:
    from lights_out_dev.run.evaluate import (
        run_play as run,  # lazily, like run_experiment
    )

    return run(*args)


def _profile_of(exp: Experiment, kind: str) -> TrainerProfile:
    _, cfg = project()
    return trainer_profile(cfg, exp.trainer or (exp.launcher or launcher_config(cfg, kind)).trainer)


def _mgpu_twin(exp: Experiment, kind: str) -> list[dict]:
    """The -mgpu variant, unless the trainer profile runs on one GPU only."""
    if _profile_of(exp, kind).multi_gpu == "none":
        return []
    return [_task(exp, kind, MGPU_SUFFIX)]


def _play_twin(exp: Experiment, kind: str) -> list[dict]:
    """The -play variant, when the trainer profile has a play entry point."""
    profile = _profile_of(exp, kind)
    return [_play_task(exp, kind)] if (profile.play_module or profile.play_script) else []


def lab_mgpu(exp: Experiment) -> list[dict]:
    return _mgpu_twin(exp, "lab_mgpu")


def newton_mgpu(exp: Experiment) -> list[dict]:
    return _mgpu_twin(exp, "newton_mgpu")


def lab(exp: Experiment) -> list[dict]:
    return [_task(exp, "lab"), *lab_mgpu(exp), *_play_twin(exp, "lab")]


def newton(exp: Experiment) -> list[dict]:
    return [_task(exp, "newton"), *newton_mgpu(exp), *_play_twin(exp, "newton")]


def lab_debug(exp: Experiment) -> list[dict]:
    return [_task(exp, "lab_debug")]
