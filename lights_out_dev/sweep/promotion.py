"""Promotion: the best finished run of one phase goes on, as its multi-GPU variant, in a later phase.

    choose(...)  the decision, pure: which run won, on which metric value, and what the promoted run is
    apply(...)   the decision applied to the planned run (task, envs, GPUs, the winner's configuration)

A decision is written beside the sweep's state (one JSON per promoted run) the moment it is taken, so a
restarted sweep promotes the same run instead of choosing again on newer numbers.
"""
from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

from pydantic import ValidationError

from lights_out_dev.core.command import merge_flags
from lights_out_dev.core.state import RunState, atomic_write_text
from lights_out_dev.sweep import ledger
from lights_out_dev.sweep.plan import PlannedRun, Promoted, promoted_task

FINISHED = ("completed", "timeout")


def metric_value(state: RunState, metric: str) -> float | None:
    """Last value of a TensorBoard tag of the run; falls back to the run state's final numbers."""
    last = state.current
    tags = state.spec.trainer.metrics
    if last and last.tb_dir:
        try:
            from lights_out_dev.core.tb import (
                read_scalars,  # the TensorBoard reader is heavy: only when needed
            )

            series = read_scalars(last.tb_dir).get(tags.resolve(metric))
            if series:
                return float(series[-1][2])
        except Exception:  # unreadable events file: fall back, the state has the stdout numbers
            pass
    fallback = {tags.reward: state.final.mean_reward, tags.fps: state.final.steps_per_s,
                tags.episode_length: state.final.mean_episode_length}
    return fallback.get(tags.resolve(metric))


def choose(run: PlannedRun, runs: Iterable[PlannedRun], states: dict[int, RunState], *, n_gpu: int,
           known_tasks: set[str], value_of: Callable[[RunState, str], float | None] = metric_value) -> Promoted | str:
    """The promotion of `run` (a planned run with a `promote` block): the best finished run of the source
    phase, or one sentence saying why there is nothing to promote. Pure but for `value_of`."""
    p = run.promotion
    scored = []
    for src in runs:
        s = states.get(src.index)
        if src.phase == p.from_phase and s and s.status in FINISHED:
            v = value_of(s, p.metric)
            if v is not None:
                scored.append((v, src, s))
    if not scored:
        return f"no run of phase {p.from_phase} finished with a {p.metric} value"
    value, best, best_state = (max if p.mode == "max" else min)(scored, key=lambda x: x[0])
    gpus = (n_gpu if p.gpus == "all" else p.gpus) if n_gpu else p.cpu_ranks
    task = promoted_task(best.task, p.suffix)
    note = f"promoted from run {best.index} ({p.metric} {value:.2f}, {p.mode})"
    if task not in known_tasks:
        if n_gpu:
            return f"run {best.index} is best but its multi-GPU variant '{task}' is not a task; add it (lab() makes one)"
        task = best.task  # documented CPU-only fallback: single-process variant with scaled envs
        note += f"; no '{promoted_task(best.task, p.suffix)}' task, single-process variant on CPU"
    envs = ledger.effective_envs(best_state, best)
    if p.scale_envs and envs:
        envs *= gpus
    if p.overrides.num_envs:
        envs = p.overrides.num_envs
    # the best run's configuration (seed, iterations, trainer flags) goes with it; the promote block's own
    # overrides win, last flag wins
    return Promoted(task=task, num_envs=envs, gpus=gpus, source=best.index, value=value, note=note,
                    seed=p.overrides.seed if p.overrides.seed is not None else best.seed,
                    max_iterations=p.overrides.max_iterations or best.max_iterations,
                    trainer_args=merge_flags(best.trainer_args, p.overrides.trainer_args))


def apply(run: PlannedRun, promoted: Promoted) -> None:
    run.task, run.num_envs, run.gpus = promoted.task, promoted.num_envs, promoted.gpus
    run.seed = promoted.seed if promoted.seed is not None else run.seed
    run.max_iterations = promoted.max_iterations or run.max_iterations
    run.trainer_args = promoted.trainer_args or run.trainer_args
    run.notes = promoted.note
    run.promoted = promoted


def save(path: Path, promoted: Promoted) -> None:
    atomic_write_text(path, promoted.model_dump_json(indent=2))


def load(path: Path) -> Promoted | None:
    """A decision taken earlier; None when there is none (or its file is unreadable: it is taken again)."""
    try:
        return Promoted.model_validate_json(path.read_text())
    except (OSError, ValueError, ValidationError):
        return None
