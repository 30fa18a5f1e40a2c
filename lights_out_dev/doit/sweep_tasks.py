"""The sweep tasks: `doit sweep [--plan sweeps/<name>.yaml] [--continue|--wipe] [--executor slurm]`.

For a plan named P with phases 1 and 2 the group `sweep` runs, in this order:

    sweep:P-p1      the scheduler for every phase-1 run (task_dep gpu_guard)
    sweep:P-01..    one task per run (task_dep sweep:P-p1); target <logs_dir>/sweeps/P/targets/NN.json,
                    written when the run reaches a final state; up to date while that target exists.
                    `doit sweep:P-03` brings run 3 up to date through its phase's scheduler, which
                    skips the runs of that phase that are already final.
    sweep:P-p2      the scheduler for phase 2 (task_dep sweep:P-p1, then power_check when the phase
                    holds the multi-GPU promotion), then its per-run tasks
    sweep:P-report  ledger + report + the `sweep_finished` event

`doit sweep_report [--plan ...]` rebuilds the report on demand. The plan comes from --plan or
[tool.lights_out] default_plan; a plan that cannot be read turns into a `sweep` task that fails
with the one-sentence reason, so every other task keeps working.
"""
from __future__ import annotations

from lights_out_dev.doit.outcome import action
from lights_out_dev.errors import LightsOutError

__all__ = ["task_sweep", "task_sweep_report"]


def _context():
    from lights_out_dev.core import overrides
    from lights_out_dev.doit.launchers import project

    root, cfg = project()
    return root, cfg, overrides.current()


def _fail(sentence: str) -> bool:
    print(f"lights-out sweep: {sentence}")
    return False


def _os_sentence(e: OSError) -> str:
    return (f"cannot write {e.filename or 'a sweep file'} ({e.strerror or e}); free disk space or fix permissions "
            f"and rerun `doit sweep` - finished runs are kept.")


def _open(plan: str | None, executor: str | None = None, check: bool = True):
    from lights_out_dev.sweep.scheduler import open_sweep

    root, cfg, _ = _context()
    return open_sweep(root, cfg, plan, executor=executor, check=check)


@action
def run_phase(plan: str | None, phase: int) -> bool:
    """doit action: prepare (ledger ownership, --continue/--wipe) once, then schedule the phase."""
    from lights_out_dev.host import events, stopping
    from lights_out_dev.sweep.scheduler import SweepBusy

    root, cfg, ov = _context()
    try:
        sweep = _open(plan, ov.executor)
        if phase == sweep.loaded.phases()[0]:
            sweep.prepare(continue_=ov.continue_, wipe=ov.wipe)
        sweep.continue_ = ov.continue_
        ok = sweep.run_phase(phase)
    except SweepBusy as e:  # the sweep goes on in the other process: not its sweep_finished, a refusal of this launch
        events.emit(root, cfg, "refused", plan=plan, sweep=_name_of(plan, root, cfg), reason=str(e))
        return _fail(str(e))
    except KeyboardInterrupt:  # Ctrl-C / SIGTERM: the trainers were stopped; say so to whoever waits on events
        events.emit(root, cfg, "sweep_finished", sweep=_name_of(plan, root, cfg), ok=False, stopped=True,
                    reason="stopped by the user (Ctrl-C or SIGTERM); its runs are interrupted and the next "
                           "`doit sweep` continues them")
        raise
    except LightsOutError as e:
        events.emit(root, cfg, "sweep_finished", plan=plan, sweep=_name_of(plan, root, cfg), ok=False, reason=str(e))
        return _fail(str(e))
    except BrokenPipeError:  # our stdout went away (a closed pipe or terminal), not a file problem
        events.emit(root, cfg, "sweep_finished", plan=plan, ok=False,
                    reason="the sweep's output was closed (pipe or terminal gone); start it detached with "
                           "setsid nohup ... > file, and rerun `doit sweep` - finished runs are kept.")
        return False
    except OSError as e:  # e.g. disk full while claiming the ledger or writing the sweep's metadata
        sentence = _os_sentence(e)
        events.emit(root, cfg, "sweep_finished", plan=plan, ok=False, reason=sentence)
        return _fail(sentence)
    if not ok and stopping.requested():  # Ctrl-C / SIGTERM: every trainer was stopped gracefully
        events.emit(root, cfg, "sweep_finished", sweep=sweep.loaded.name, ok=False, stopped=True,
                    reason=f"stopped by {stopping.signal_name()}; its runs are interrupted and the next "
                           f"`doit sweep` continues them")
    elif not ok:
        events.emit(root, cfg, "sweep_finished", sweep=sweep.loaded.name, ok=False,
                    reason=f"phase {phase} stopped; see the doit output")
    return ok


def _name_of(plan: str | None, root, cfg) -> str | None:
    """The plan's name for an event (None when the plan cannot be read)."""
    from lights_out_dev.sweep.paths import plan_path
    from lights_out_dev.sweep.plan import PlanError, load_plan

    try:
        return load_plan(plan_path(root, cfg, plan)).name
    except (PlanError, OSError):
        return None


def plan_failed(plan: str | None, sentence: str) -> bool:
    """A plan that cannot be read: one sentence, and a `sweep_finished` event so a waiting agent returns."""
    from lights_out_dev.host import events

    root, cfg, _ = _context()
    events.emit(root, cfg, "sweep_finished", plan=plan, ok=False, reason=sentence)
    return _fail(sentence)


@action
def ensure_run(plan: str | None, index: int) -> bool:
    _, _, ov = _context()
    try:
        sweep = _open(plan, ov.executor)
        return sweep.ensure_run(index)
    except LightsOutError as e:
        return _fail(str(e))
    except OSError as e:
        return _fail(_os_sentence(e))


@action
def finish(plan: str | None) -> bool:
    from lights_out_dev.sweep.scheduler import finish as finish_sweep

    try:
        return finish_sweep(_open(plan, check=False))
    except LightsOutError as e:
        return _fail(str(e))


@action
def report(plan: str | None) -> bool:
    from lights_out_dev.sweep.report import write_report

    try:
        path = write_report(_open(plan, check=False))
    except (LightsOutError, OSError) as e:
        return _fail(str(e))
    print(f"lights-out sweep: report {path}")
    return True


def _final_target(plan: str | None, index: int, target: str, state: str):
    """Up to date while the run's target exists, its run state is readable (a damaged one is kept aside
    by its supervisor and the run done again) and made from the spec the plan asks for now (an edited
    plan, or another plan with the same name, is not up to date: the phase refuses it in one sentence
    unless --continue or --wipe says what to do)."""
    from pathlib import Path

    from lights_out_dev.core.state import DamagedState, load_state

    def done() -> bool:
        if not Path(target).exists():
            return False
        try:
            recorded = load_state(Path(state))
        except (DamagedState, OSError):
            return False
        ov = _context()[2]
        if ov.wipe:  # asked to start afresh: the phase archives the recorded runs first
            return False
        if recorded is None or ov.continue_:
            return True
        return _cached_sweep(plan).spec_change(index, recorded) is None
    return done


_SWEEPS: dict = {}


def _cached_sweep(plan: str | None):
    if plan not in _SWEEPS:
        _SWEEPS[plan] = _open(plan, check=False)
    return _SWEEPS[plan]


def task_sweep():
    """Run a sweep plan (--plan sweeps/<name>.yaml; default [tool.lights_out] default_plan)."""
    from lights_out_dev.sweep.paths import paths_for, plan_path
    from lights_out_dev.sweep.plan import PlanError, load_plan

    root, cfg, ov = _context()
    try:
        loaded = load_plan(plan_path(root, cfg, ov.plan))
    except PlanError as e:
        yield {"name": "plan", "doc": "the sweep plan could not be read",
               "actions": [(action(plan_failed), [ov.plan, str(e)])]}
        return
    name, plan = loaded.name, ov.plan
    paths = paths_for(root, cfg, name)
    previous_phase: str | None = None
    all_runs: list[str] = []
    for phase in loaded.phases():
        runs = [r for r in loaded.runs if r.phase == phase]
        needs_power = cfg.power.required_for_mgpu and any(r.promotion or r.gpus > 1 for r in runs)
        preflight = ["gpu_guard"] + (["power_check"] if needs_power else [])
        phase_task = f"{name}-p{phase}"
        yield {
            "name": phase_task,
            "doc": f"phase {phase} of sweep {name}: {len(runs)} run(s), one per GPU/CPU slot",
            "actions": [(run_phase, [plan, phase])],
            "task_dep": ([f"sweep:{previous_phase}"] if previous_phase else []) + preflight,
            "uptodate": [_final_target(plan, r.index, str(paths.target(r.index)), str(paths.state(r.index)))
                         for r in runs],
            "verbosity": 2,
        }
        for r in runs:
            target = str(paths.target(r.index))
            yield {
                "name": f"{name}-{r.key}",
                "doc": f"run {r.index} of sweep {name}: {r.task or 'promotion'}",
                "actions": [(ensure_run, [plan, r.index])],
                "targets": [target],
                # doit runs a group's tasks in its own order, not the order yielded: without this dep
                # it would run the per-run tasks one by one before the parallel phase scheduler.
                "task_dep": [f"sweep:{phase_task}"],
                "uptodate": [_final_target(plan, r.index, target, str(paths.state(r.index)))],
                "verbosity": 2,
            }
            all_runs.append(f"sweep:{name}-{r.key}")
        previous_phase = phase_task
    yield {
        "name": f"{name}-report",
        "doc": f"ledger, report and sweep_finished event of sweep {name}",
        "actions": [(finish, [plan])],
        "task_dep": all_runs,
        "uptodate": [False],
        "verbosity": 2,
    }


def task_sweep_report():
    """Rebuild a sweep's report (<logs_dir>/sweeps/<plan>/report.md, plots, metrics.csv, configs)."""
    _, _, ov = _context()
    return {"actions": [(report, [ov.plan])], "uptodate": [False], "verbosity": 2}
