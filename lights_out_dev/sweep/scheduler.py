"""Run a sweep plan: a work-conserving scheduler over GPU (or CPU-slot) leases, in one process.

Why an in-process scheduler and not `doit -n`: doit's parallel runner forks workers that know
nothing about GPUs, keeps its success records in memory until the whole run ends (a killed doit
loses them) and cannot hand a freed GPU to "the next pending run" - it only knows task order. Here
one thread per active run calls `supervisor.supervise` with a `gpu_lock` lease; the main loop
starts the next pending run the moment a lease is released. The doit graph stays truthful
through one file target per run (`<sweep dir>/targets/NN.json`), written atomically when the run
reaches a final state (lights_out_dev/doit/sweep_tasks.py).

Durability and exclusion:
- each run's state is `<logs_dir>/sweeps/<plan>/runs/NN.json` (written by the supervisor); a
  rerun skips final runs, and a `running` state left by a dead process is adopted or retried by
  the supervisor;
- a per-run flock (`NN.lock`, held for the run's lifetime, released by the kernel if we die) means
  a run is never launched twice, whoever asks (a second sweep, `doit sweep:<plan>-NN`);
- a per-sweep flock makes a second `doit sweep` on the same plan say who runs it and exit non-zero.
"""
from __future__ import annotations

import functools
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Callable

from filelock import FileLock, Timeout

from lights_out_dev.core.command import merge_flags
from lights_out_dev.core.config import ProjectConfig
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import RunState, atomic_write_text, read_state, status_of
from lights_out_dev.core.verdicts import FINAL_STATUSES, counts_text, status_counts
from lights_out_dev.errors import LightsOutError
from lights_out_dev.host import procs, stopping
from lights_out_dev.host.nvml import gpu_count
from lights_out_dev.run.supervisor import spec_fingerprint
from lights_out_dev.sweep import ledger, promotion
from lights_out_dev.sweep.ownership import HOLDER_WAIT_S, holder, live_holder, try_lock
from lights_out_dev.sweep.paths import (
    SweepPaths,
    ledger_lock,
    ledger_path,
    paths_for,
    plan_path,
    run_key,
    sweeps_root,
)
from lights_out_dev.sweep.plan import (
    LoadedPlan,
    PlannedRun,
    check_tasks,
    entry_search,
    load_plan,
    set_params,
)

TICK_S = 0.5  # how often the scheduler looks for a free slot when nothing else woke it
BUSY_RECHECK_S = 5.0  # a run owned by another live supervisor is looked at again this often
LEDGER_REFRESH_S = 30.0  # ledger rewrite for progress only (starts and ends rewrite at once)


class SweepError(LightsOutError):
    """A user-facing sweep problem; str() is one sentence naming the cause and the fix."""


class SweepBusy(SweepError):
    """Another live process runs this plan (or this run): the sweep goes on there."""


# --- experiment tasks -> RunSpec ---------------------------------------------------------------

@functools.lru_cache(maxsize=4)
def _dodo_tasks(root: str) -> dict:
    """All doit tasks of the project's dodo.py by name (loaded the way `doit` loads them), cached."""
    from lights_out_dev.run.tasks_index import load_tasks

    return load_tasks(Path(root))


def known_tasks(root: Path) -> list[str]:
    from lights_out_dev.run.tasks_index import spec_of

    return [name for name, t in _dodo_tasks(str(root)).items() if spec_of(t) is not None]


def base_spec(root: Path, task: str) -> RunSpec:
    from lights_out_dev.run.tasks_index import spec_of

    t = _dodo_tasks(str(root)).get(task)
    spec = spec_of(t) if t is not None else None
    if spec is None:
        raise SweepError(f"task '{task}' is not an experiment task of {root / 'dodo.py'}; "
                         f"run `doit list --all` for the names.")
    return spec


def spec_for(run: PlannedRun, root: Path, cfg: ProjectConfig) -> RunSpec:
    """The experiment task's spec with the plan's overrides applied (last flag wins)."""
    spec = base_spec(root, run.task)
    update = {"extra_args": merge_flags(spec.extra_args, run.trainer_args), "smoke": run.smoke}
    for key in ("num_envs", "max_iterations", "seed"):
        if getattr(run, key) is not None:
            update[key] = getattr(run, key)
    update["time_limit_s"] = run.time_limit_s if run.time_limit_s is not None else cfg.monitor.time_limit
    if run.gpus and spec.multi_gpu:
        update["gpus"] = run.gpus
    if run.nodes > 1:
        update["nodes"] = run.nodes
    return spec.model_copy(update=update)


def check_placement(loaded: "LoadedPlan", root: Path, cfg: ProjectConfig, executor: str | None) -> None:
    """Every multi-node entry must be an -mgpu task run on Slurm (one sentence with the line, else)."""
    from lights_out_dev.executors.slurm.executor import placement_problem

    for run in loaded.runs:
        if run.nodes > 1 and run.task is not None:
            problem = placement_problem(spec_for(run, root, cfg), executor or cfg.executor)
            if problem:
                where = f" line {run.line}" if run.line else ""
                raise SweepError(f"{loaded.path}{where}: {problem}")


def gpu_memory_gb(index: int) -> float | None:
    try:
        from lights_out_dev.host.nvml import query_gpus

        return next(g.mem_total_mb for g in query_gpus() if g.index == index) / 1024.0
    except Exception:  # no driver / GPU vanished: no cap rather than no run
        return None


def capped_envs(num_envs: int | None, mem_gb: float | None, envs_per_gb: float | None) -> int | None:
    """Parallel mode on a smaller GPU: at most `envs_per_gb` envs per GB of its memory. Pure."""
    if num_envs is None or mem_gb is None or not envs_per_gb:
        return num_envs
    return max(1, min(num_envs, int(mem_gb * envs_per_gb)))


def slots_text(cfg: ProjectConfig) -> str:
    n = gpu_count()
    return f"{n} GPU(s)" if n else f"no GPU: {cfg.cpu_slots} CPU slots"


def print_line(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


# --- the sweep ---------------------------------------------------------------------------

def _started(state: RunState | None) -> bool:
    """The run has had a long attempt (its smoke gate, if any, is behind it)."""
    return state is not None and bool(state.attempts)


def is_final(state: RunState | None) -> bool:
    return state is not None and state.status in FINAL_STATUSES


class Sweep:
    """One plan on disk: its states, ledger, promotion decisions and scheduler."""

    def __init__(self, loaded: LoadedPlan, cfg: ProjectConfig, root: Path, *, executor: str | None = None,
                 status_line: Callable[[str], None] = print_line):
        self.loaded, self.cfg, self.root = loaded, cfg, root
        self.paths = paths_for(root, cfg, loaded.name)
        self.executor_kind = executor or cfg.executor
        self._array = None  # the running phase's Slurm job array (plan slurm_array), see _job_array
        say_lock = threading.Lock()

        def say(line: str) -> None:  # one whole line at a time from many run threads
            with say_lock:
                status_line(line)
        self.say = say
        self._cv = threading.Condition()
        self._ledger_mutex = threading.Lock()
        self._ledger_warned = False
        self._errors: list[str] = []
        self._busy: dict[int, float] = {}  # run -> when a live supervisor elsewhere was found owning it
        self._lease_blocker: str | None = None  # why the last lease was refused (e.g. a foreign process)
        self._freed = False  # set when a run thread ends (guarded by _cv)
        self._stop = threading.Event()  # Ctrl-C / SIGTERM: supervisors stop their trainers gracefully
        from lights_out_dev.sweep.judging import ScalarCache

        self._scalars = ScalarCache()  # TensorBoard series of the runs, shared by their judges
        self._budget_said = False
        self._on_gpu: dict[int, tuple[int, float | None]] = {}  # active run -> (its GPU, measured peak MB)
        self.continue_ = False  # --continue: runs recorded with another spec are kept as they are
        self._load_promotions()
        self._load_trials()

    # -- state -------------------------------------------------------------------------
    def states(self) -> dict[int, RunState]:
        out = {}
        for run in self.loaded.runs:
            try:
                s = read_state(self.paths.state(run.index))
            except OSError:
                s = None
            if s:
                out[run.index] = s
        return out

    def started_at(self) -> float | None:
        try:
            return json.loads(self.paths.meta.read_text()).get("started_at")
        except (OSError, ValueError):
            return None

    def render(self) -> str:
        rel = lambda p: os.path.relpath(p, self.root)  # noqa: E731 - ledger shows repo-relative paths
        return ledger.render(self.loaded, self.states(), started_at=self.started_at(),
                             state_dir=rel(self.paths.runs), report=rel(self.paths.report), root=str(self.root),
                             compute=self.compute())

    def compute(self):
        """GPU-seconds (slot-seconds without GPUs) of every run and of the sweep (compute.py)."""
        from lights_out_dev.sweep.compute import sweep_compute

        n = gpu_count()
        return sweep_compute(self.states(), n or self.cfg.cpu_slots, time.time(), gpu=bool(n))

    def refresh_ledger(self) -> None:
        """Rewrite the ledger from state (a deleted or hand-edited ledger is rebuilt here), and compute.json."""
        with self._ledger_mutex:
            try:
                if self.paths.dir.exists():
                    atomic_write_text(self.paths.compute, json.dumps(self.compute().as_dict(), indent=2))
                ledger.write(ledger_path(self.root, self.cfg), self.render(), ledger_lock(self.root, self.cfg))
                self._ledger_warned = False
            except (OSError, Timeout) as e:
                if not self._ledger_warned:  # once per outage, not on every tick
                    self.say(f"[sweep {self.loaded.name}] cannot write the ledger {ledger_path(self.root, self.cfg)} "
                             f"({getattr(e, 'strerror', None) or e}); runs go on, their state is kept in "
                             f"{self.paths.runs} and the ledger is rebuilt once it can be written.")
                    self._ledger_warned = True

    def write_target(self, index: int, state: RunState) -> None:
        last = state.current
        data = {"sweep": self.loaded.name, "index": index, "task": state.task, "status": state.status,
                "verdict": state.final_verdict, "state": str(self.paths.state(index)),
                "tb_dir": last.tb_dir if last else None, "log": last.log_path if last else None,
                "final": state.final.model_dump(), "checkpoints": state.checkpoints}
        try:
            atomic_write_text(self.paths.target(index), json.dumps(data, indent=2))
        except OSError as e:
            self.say(f"[sweep {self.loaded.name}] cannot write target {self.paths.target(index)} ({e.strerror}); "
                     f"the run's state is final, the target is rewritten at the next `doit sweep`.")

    # -- starting, --continue / --wipe --------------------------------------------------
    def prepare(self, continue_: bool = False, wipe: bool = False) -> None:
        """Claim the ledger for this plan; refuse (one sentence) when it belongs to another plan, or when runs
        recorded under this plan's name were made from other specs (an edited plan, or another plan with
        the same `name:`): --continue keeps them as they are, --wipe archives them."""
        if continue_ and wipe:
            raise SweepError("--continue and --wipe contradict each other; pass --continue to keep the recorded "
                             "runs or --wipe to archive them and start afresh, not both.")
        self.continue_ = continue_
        path = ledger_path(self.root, self.cfg)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        try:
            existing = ledger.sweep_name(path.read_text())
        except (OSError, UnicodeDecodeError):
            existing = None
        if existing and existing != self.loaded.name:
            other = paths_for(self.root, self.cfg, existing)
            live = live_holder(other)
            if live:
                raise SweepError(f"the ledger {path} belongs to sweep '{existing}', which process {live} is running "
                                 f"now; wait for it to finish or set a different [tool.lights_out] ledger.")
            if not (continue_ or wipe):
                raise SweepError(f"the ledger {path} belongs to sweep '{existing}', not '{self.loaded.name}'; "
                                 f"pass --continue to keep that sweep's state and start this one, or --wipe to "
                                 f"archive its ledger and state first.")
            self._archive(path, f"{existing}.{stamp}")
            if wipe and other.dir.exists():
                self._archive_dir(other, stamp)
        changed = [] if continue_ or wipe else self.changed_runs()
        if changed:
            listed = "; ".join(f"run {i}: {what}" for i, what in changed[:3]) + ("; ..." if len(changed) > 3 else "")
            raise SweepError(f"{self.paths.runs} holds runs of sweep '{self.loaded.name}' made from other specs "
                             f"({listed}); pass --continue to keep them as they are, or --wipe to archive them and "
                             f"run this plan afresh.")
        if wipe and self.paths.dir.exists():
            live = live_holder(self.paths)
            if live:
                raise SweepError(f"sweep '{self.loaded.name}' is being run by process {live}; stop it before --wipe.")
            if path.exists() and existing == self.loaded.name:
                self._archive(path, f"{existing}.{stamp}")
            self._archive_dir(self.paths, stamp)
            self.loaded = load_plan(self.loaded.path)  # runs without the archived sweep's trials and promotions
            self._load_promotions()
            self._load_trials()
        self.paths.runs.mkdir(parents=True, exist_ok=True)
        if not self.paths.meta.exists():
            atomic_write_text(self.paths.meta, json.dumps({"name": self.loaded.name, "plan": str(self.loaded.path),
                                                           "started_at": time.time()}, indent=2))
        atomic_write_text(sweeps_root(self.root, self.cfg) / "current", self.loaded.name + "\n")

    def changed_runs(self) -> list[tuple[int, str]]:
        """(index, what differs) for every recorded run whose spec is not what the plan now asks for."""
        out = []
        for index, state in self.states().items():
            what = self.spec_change(index, state)
            if what:
                out.append((index, what))
        return out

    def spec_change(self, index: int, state: RunState) -> str | None:
        """What differs between run `index`'s recorded spec and the plan's, None when it is the same run."""
        from lights_out_dev.run.supervisor import spec_difference

        run = self.loaded.run(index)
        if state.status == "skipped" or run.task is None:
            return None
        try:
            spec = self.spec(run)
        except SweepError:
            return None  # an unknown task is reported by the task check, in its own sentence
        if (state.fingerprint or spec_fingerprint(state.spec)) == spec_fingerprint(spec):
            return None
        return spec_difference(state.spec, spec) or "another plan entry"

    @staticmethod
    def _archive_dir(p: SweepPaths, stamp: str) -> None:
        """Archive a sweep's directory (--wipe). Trainers its dead supervisors left running would be nobody's
        once their states move: they are stopped first (each carries its state path)."""
        from lights_out_dev.run.supervisor import STATE_VAR

        for state in p.runs.glob("[0-9][0-9].json"):
            procs.kill_marked(STATE_VAR, str(state))
        p.dir.rename(p.dir.with_name(f"{p.dir.name}.{stamp}"))

    def _archive(self, ledger_file: Path, suffix: str) -> None:
        if ledger_file.exists():
            ledger_file.rename(ledger_file.with_name(f"{ledger_file.stem}.{suffix}{ledger_file.suffix}"))

    # -- promotion (promotion.py) ------------------------------------------------------------
    def _load_promotions(self) -> None:
        """Reapply promotion decisions already taken (a restarted sweep promotes the same run)."""
        for run in self.loaded.runs:
            if run.promotion and (taken := promotion.load(self.paths.promotion(run.index))) is not None:
                promotion.apply(run, taken)

    def decide_promotion(self, run: PlannedRun) -> str | None:
        """Choose the best run of the source phase and record it; returns why there is nothing to promote."""
        if run.task is not None:
            return None
        chosen = promotion.choose(run, self.loaded.runs, self.states(), n_gpu=gpu_count(),
                                  known_tasks=set(known_tasks(self.root)))
        if isinstance(chosen, str):
            return chosen
        promotion.save(self.paths.promotion(run.index), chosen)
        promotion.apply(run, chosen)
        return None

    # -- search (search.py) and budget ------------------------------------------------------
    def _trial_store(self):
        from lights_out_dev.sweep.search import TrialStore

        return TrialStore(self.paths.search)

    def _load_trials(self) -> None:
        """Put the parameters of trials already asked (Optuna) back on their runs: a resumed sweep keeps them."""
        store = self._trial_store()
        for run in self.loaded.runs:
            sr = run.search
            if sr and run.params is None:
                params = store.load(sr.group, sr.trial)
                if params is not None:
                    set_params(run, params)

    def _assign_trial(self, run: PlannedRun) -> None:
        """An Optuna run about to launch without parameters: ask the study (rebuilt from the trial files and
        the runs' states) for its trial, and write the trial file before anything starts."""
        from lights_out_dev.sweep.search import TrialResult, ask

        sr = run.search
        if not sr or run.params is not None:
            return
        store = self._trial_store()
        params = store.load(sr.group, sr.trial)
        if params is None:
            search = entry_search(self.loaded.plan, run)
            states = self.states()
            results = []
            for t in range(sr.trial):
                asked = store.load(sr.group, t)
                if asked is None:
                    continue  # never asked (its runs were skipped): not part of the study
                runs = [r for r in self.loaded.runs if r.search is not None and r.search.group == sr.group
                        and r.search.trial == t]
                sts = [states.get(r.index) for r in runs]
                values = [v for st in sts if st and st.status in ("completed", "timeout")
                          and (v := promotion.metric_value(st, search.metric)) is not None]
                running = any(not is_final(st) for st in sts)
                results.append(TrialResult(t, asked, values, pruned=any(st and st.status == "pruned" for st in sts),
                                           failed=not values and not running, running=running))
            params = ask(search, results)
            store.save(sr.group, sr.trial, params)
            self.say(f"[sweep {self.loaded.name}] run {run.index}: optuna trial {sr.trial}: "
                     + ", ".join(f"{k}={v}" for k, v in params.items()))
        for other in self.loaded.runs:  # every repeat of the trial gets the same configuration
            o = other.search
            if o and o.group == sr.group and o.trial == sr.trial and other.params is None:
                set_params(other, params)

    def _resume_best(self, indices: list[int]) -> list[int]:
        """Plan `prune.resume_best`: once every run of a search is final, its best configuration's pruned
        seeds (best by the mean final metric of its finished seeds) are made to continue from their
        checkpoints, unpruned, so that configuration's mean ± std covers all its seeds. Returns them."""
        from lights_out_dev.core.state import save_state

        states, groups = self.states(), {}
        for i in indices:
            run = self.loaded.run(i)
            sr, search = run.search, entry_search(self.loaded.plan, run)
            if sr and search and search.prune and search.prune.resume_best:
                groups.setdefault(sr.group, (search, {}))[1].setdefault(sr.trial, []).append(i)
        resumed = []
        for search, trials in groups.values():
            if not all(is_final(states.get(i)) for runs in trials.values() for i in runs):
                continue
            means = {}
            for trial, runs in trials.items():
                values = [v for i in runs if states[i].status in ("completed", "timeout")
                          and (v := promotion.metric_value(states[i], search.metric)) is not None]
                if values:
                    means[trial] = sum(values) / len(values)
            if not means:
                continue
            best = (max if search.mode == "max" else min)(means, key=means.get)
            for i in trials[best]:
                st = states[i]
                if st.status != "pruned" or not st.checkpoints or st.resumed_after_pruning:
                    continue
                st.status, st.resumed_after_pruning = "interrupted", True
                st.reason = f"resumed after pruning: configuration {best} is the best ({means[best]:.4g} {search.metric})"
                save_state(st, self.paths.state(i))
                self.paths.target(i).unlink(missing_ok=True)  # not final any more: the doit graph must agree
                self.say(f"[sweep {self.loaded.name}] run {i}: {st.reason}; continuing from {st.checkpoints[-1]}.")
                resumed.append(i)
        return resumed

    def _over_budget(self) -> str | None:
        """Why no new run may start (the plan's budget is spent), or None."""
        from lights_out_dev.sweep.compute import seconds_text

        budget = self.loaded.plan.budget
        if budget is None:
            return None
        c = self.compute()
        if c.busy_s < budget:
            return None
        why = f"budget spent: {seconds_text(c.busy_s, c.gpu)} of {seconds_text(budget, c.gpu)}"
        if not self._budget_said:
            from lights_out_dev.host import events

            self._budget_said = True
            events.emit(self.root, self.cfg, "budget_spent", sweep=self.loaded.name, spent_s=round(c.busy_s, 1),
                        budget_s=budget)
            self.say(f"[sweep {self.loaded.name}] {why}; no new run starts (running ones finish).")
        return why

    def _skip(self, run: PlannedRun, reason: str) -> None:
        """Record a run that cannot be started (no promotion source, too many GPUs) as final 'skipped'."""
        spec = RunSpec(task=run.task or "(promotion)", family="-", launcher="lab", prefix=[], script="-",
                       trainer_task="-", num_envs=run.num_envs, time_limit_s=run.time_limit_s)
        state = RunState(run_key=run_key(self.loaded.name, run.index), rid="-", run_name="-", task=spec.task,
                         spec=spec, status="skipped", final_verdict="skipped", reason=reason,
                         sweep=self.loaded.name, index=run.index, phase=run.phase)
        from lights_out_dev.core.state import save_state

        save_state(state, self.paths.state(run.index))
        self.write_target(run.index, state)
        self.say(f"[sweep {self.loaded.name}] run {run.index} skipped: {reason}.")

    # -- scheduling ---------------------------------------------------------------------
    def _needed_gpus(self, run: PlannedRun) -> int:
        return max(1, run.gpus or 1)

    def _launch(self, run: PlannedRun, run_lock: FileLock, lease, active: dict, smoke_only: bool = False) -> None:
        def body():
            from lights_out_dev.run.supervisor import SupervisorBusy

            try:
                self._supervise(run, lease, smoke_only)
            except SupervisorBusy as e:  # a live supervisor elsewhere owns it: never launch it twice
                self.say(f"[sweep {self.loaded.name}] run {run.index}: {e}")
                self._busy[run.index] = time.monotonic()
            except BaseException as e:  # noqa: BLE001 - reported, then the sweep stops launching
                msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                self._errors.append(f"run {run.index} ({run.task}): {msg}")
            finally:
                lease.release()
                run_lock.release()
                with self._cv:
                    active.pop(run.index, None)
                    self._on_gpu.pop(run.index, None)
                    self._freed = True  # a notify while the loop is busy must not be lost
                    self._cv.notify_all()
                self.refresh_ledger()

        t = threading.Thread(target=body, name=f"sweep-{run.key}", daemon=True)
        active[run.index] = t
        t.start()

    def _supervise(self, run: PlannedRun, lease, smoke_only: bool = False) -> None:
        from lights_out_dev.run.supervisor import supervise
        from lights_out_dev.sweep.judging import RunJudge

        spec = self.spec(run)
        if self.loaded.plan.mode == "parallel" and lease.gpus and self.loaded.plan.max_envs_per_gpu_gb:
            capped = capped_envs(spec.num_envs, gpu_memory_gb(lease.gpus[0]), self.loaded.plan.max_envs_per_gpu_gb)
            if capped != spec.num_envs:
                self.say(f"[sweep {self.loaded.name}] run {run.index}: num_envs {spec.num_envs} -> {capped} "
                         f"for GPU {lease.gpus[0]} (max_envs_per_gpu_gb {self.loaded.plan.max_envs_per_gpu_gb}).")
                spec = spec.model_copy(update={"num_envs": capped})
        state = supervise(spec, self.cfg, self.root, self.paths.state(run.index), executor=self._executor(),
                          lease=lease, run_key=run_key(self.loaded.name, run.index),
                          status_line=lambda line: self.say(f"[{run.key}] {line}"),
                          sweep=self.loaded.name, index=run.index, phase=run.phase,
                          should_stop=self._stopping, smoke_only=smoke_only,
                          judge=judge if (judge := RunJudge(self, run, self._scalars)).active else None,
                          on_spec_change="continue" if self.continue_ else "refuse",
                          fingerprint=spec_fingerprint(self.spec(run)))
        if is_final(state):
            self.write_target(run.index, state)

    def _stopping(self) -> bool:
        return self._stop.is_set() or stopping.requested()

    def spec(self, run: PlannedRun) -> RunSpec:
        """The run's RunSpec: its experiment task's spec with the plan's overrides, then the ones recorded for
        it by a retry (run_requests.with_overrides)."""
        from lights_out_dev.run.run_requests import with_overrides

        return with_overrides(spec_for(run, self.root, self.cfg), self.paths.state(run.index))

    def _executor(self):
        """As supervisor.run_task builds it; with the plan's slurm_array, sharing the phase's job array."""
        from lights_out_dev import executors

        return executors.make(self.executor_kind, self.cfg, self.root,
                              **({"array": self._array} if self._array is not None else {}))

    @staticmethod
    def _measured_peak(state: RunState | None) -> float | None:
        """Peak VRAM of the run measured so far: its attempts', else its smoke gate's."""
        if state is None:
            return None
        return state.peak_vram_mb or state.smoke_record.get("peak_vram_mb")

    def _packed_lease(self, run: PlannedRun, state: RunState | None):
        """Plan `runs_per_gpu`: a share of a GPU our own measured runs use, when this run's peak fits
        (packing.decide, checked against NVML now); None otherwise."""
        from lights_out_dev.host.gpu_lock import acquire_packed
        from lights_out_dev.host.nvml import query_gpus
        from lights_out_dev.sweep.packing import decide

        plan = self.loaded.plan
        peak = self._measured_peak(state)
        if plan.runs_per_gpu == 1 or peak is None or self._needed_gpus(run) != 1:
            return None
        max_runs = None if plan.runs_per_gpu == "auto" else plan.runs_per_gpu
        try:
            gpus = {g.index: g for g in query_gpus()}
        except Exception:  # no NVML now: no packing rather than a guess
            return None
        on_gpu = list(self._on_gpu.values())  # run threads remove their entry when they end
        for index in sorted({g for g, _ in on_gpu}):
            info = gpus.get(index)
            if info is None:
                continue
            residents = [p for g, p in on_gpu if g == index]
            d = decide(peak, residents, info.mem_total_mb, info.mem_used_mb, plan.pack_margin_mb, max_runs)
            if d.fits and (lease := acquire_packed(index, self.cfg, self.root)) is not None:
                self.say(f"[sweep {self.loaded.name}] run {run.index} packed onto GPU {index}: {d.reason}.")
                return lease
        return None

    def _job_array(self, pending: list[PlannedRun], smoke_only: bool):
        """The phase's Slurm job array (plan `slurm_array: K`): the first launches of its single-GPU runs
        that have not started yet join it; None when the plan has none or its executor batches nothing."""
        from lights_out_dev import executors

        k = self.loaded.plan.slurm_array
        if not k or smoke_only:
            return None
        fresh = [r for r in pending if r.task is not None and r.gpus <= 1 and r.nodes == 1
                 and not _started(read_state(self.paths.state(r.index)))]
        name = f"lo-sweep__{self.loaded.name}-p{fresh[0].phase}" if fresh else ""
        if len(fresh) <= 1:
            return None
        return executors.executor_class(self.executor_kind).job_array(k, expected=len(fresh), name=name)

    def _try_lease(self, n: int, state: RunState | None, run: PlannedRun | None = None):
        """A lease, or None when no slot is free now. A run whose trainer may still be alive (left
        'running' by a killed sweep) gets the GPUs it is on, so an adopted trainer keeps its GPU."""
        from lights_out_dev.host.gpu_lock import GpuLockError

        prefer = None
        if state and state.status == "running" and state.current and state.current.verdict is None:
            prefer = list(state.current.gpus) if state.current.gpus else None
        try:  # a scheduler's executor (Slurm) hands out a lease that holds nothing here: it allocates the GPUs
            return self._executor().lease(n, prefer=prefer, wait=False)
        except GpuLockError as e:
            self._lease_blocker = str(e)
            return self._packed_lease(run, state) if run is not None and prefer is None else None

    def schedule(self, indices: list[int], smoke_only: bool = False) -> bool:
        """Run the given runs to a final state, one per lease, work-conserving. True = none errored.

        smoke_only: only the smoke gates of the runs that have one and no attempt yet (plan `smoke_first`);
        a failed gate fails its run, a passed one is reused by the run's long attempt."""
        from lights_out_dev import executors

        _warm_imports()
        runs = [self.loaded.run(i) for i in indices]
        pending = [r for r in runs if not is_final(read_state(self.paths.state(r.index)))]
        self._array = self._job_array(pending, smoke_only)
        if smoke_only:
            pending = [r for r in pending if r.smoke and r.task is not None
                       and not _started(read_state(self.paths.state(r.index)))]
        self.check_launchable(pending)
        active: dict[int, threading.Thread] = {}
        waiting_on: dict[int, int | None] = {}
        last_line = 0.0
        last_seen: dict[int, tuple] = {}
        n_gpu = gpu_count()
        try:  # whatever ends this loop, no trainer of ours outlives it
            while pending or active:  # the ledger is first written right after the first launches
                launched_blocked = False
                if self._stopping():
                    self._stop_all(active)
                    break
                for run in list(pending):
                    if self._errors or self._stopping():
                        break
                    state = read_state(self.paths.state(run.index))
                    if is_final(state):
                        pending.remove(run)
                        continue
                    if self.loaded.plan.mode == "sequential" and active:
                        break
                    if run.promotion and run.task is None:
                        why = self.decide_promotion(run)
                        if why:
                            self._skip(run, why)
                            pending.remove(run)
                            continue
                    if not _started(state):
                        spent = self._over_budget()
                        if spent:
                            self._skip(run, spent)
                            pending.remove(run)
                            continue
                    need = self._needed_gpus(run) if n_gpu else 1  # CPU: one slot per run (ranks share it)
                    if n_gpu and need > executors.executor_class(self.executor_kind).visible_gpus(need, n_gpu):
                        self._skip(run, f"it needs {need} GPUs and this machine has {n_gpu}")
                        pending.remove(run)
                        continue
                    run_lock = try_lock(self.paths.run_lock(run.index), self.paths.run_owner(run.index))
                    if run_lock is None:
                        waiting_on[run.index] = holder(self.paths.run_owner(run.index))
                        continue
                    waiting_on.pop(run.index, None)
                    if time.monotonic() - self._busy.get(run.index, -BUSY_RECHECK_S) < BUSY_RECHECK_S:
                        run_lock.release()  # its owner is alive; look again later (adopt it if the owner died)
                        continue
                    lease = self._try_lease(need, state, run)
                    if lease is None:
                        run_lock.release()
                        launched_blocked = True
                        break
                    try:
                        self._assign_trial(run)
                    except Exception as e:  # noqa: BLE001 - reported; nothing was launched
                        lease.release()
                        run_lock.release()
                        self._errors.append(f"run {run.index} ({run.task}): cannot ask the search for its trial: {e}")
                        break
                    pending.remove(run)
                    if lease.gpus and len(lease.gpus) == 1:
                        self._on_gpu[run.index] = (lease.gpus[0], self._measured_peak(state))
                    self._launch(run, run_lock, lease, active, smoke_only)
                if self._errors and not active:
                    break
                if not pending and not active:
                    break
                now = time.monotonic()
                seen = {i: (status_of(s), len(s.attempts)) for i, s in self.states().items()}
                if seen != last_seen or now - last_line >= LEDGER_REFRESH_S:
                    self.refresh_ledger()
                    last_seen = seen
                if now - last_line >= self.cfg.monitor.status_interval_s:
                    self.say(self.status_line(len(active), len(pending), waiting_on, launched_blocked))
                    last_line = now
                with self._cv:
                    if not self._freed:
                        self._cv.wait(timeout=TICK_S)
                    self._freed = False
        except BaseException:
            self._stop_all(active)
            raise
        self.refresh_ledger()
        if self._stopping():
            self.say(f"[sweep {self.loaded.name}] stopped by {stopping.signal_name()}: the stopped runs are marked "
                     f"interrupted and continue from their checkpoints at the next `doit sweep`.")
            return False
        if self._errors:
            self.say(f"[sweep {self.loaded.name}] stopped: {self._errors[0]}; fix that and rerun `doit sweep` "
                     f"- finished runs are kept.")
            return False
        return True

    def check_launchable(self, runs: list[PlannedRun]) -> None:
        """Refuse (one sentence, nothing launched) when a run's launcher prefix or trainer script is missing:
        every attempt of it would fail the same way. Too few GPUs is not checked here: such a run is skipped."""
        from lights_out_dev.core.command import launch_problem

        for run in runs:
            if run.task is None:
                continue
            spec = self.spec(run)
            problem = launch_problem(spec, self.root, None, max(spec.gpus, gpu_count()))
            if problem:
                raise SweepError(f"run {run.index}: {problem}")

    def _stop_all(self, active: dict) -> None:
        """Ask every supervisor to stop its trainer (graceful) and wait for them: no orphan."""
        self._stop.set()
        if active:
            self.say(f"[sweep {self.loaded.name}] stopping {len(active)} run(s); they are marked interrupted and "
                     f"retried by the next `doit sweep`.")
        for t in list(active.values()):
            t.join()

    def status_line(self, n_active: int, n_pending: int, waiting_on: dict, blocked: bool) -> str:
        counts = status_counts(status_of(read_state(self.paths.state(run.index))) for run in self.loaded.runs)
        line = (f"[sweep {self.loaded.name}] " + counts_text(counts)
                + f" | {slots_text(self.cfg)}")
        if waiting_on:
            who = ", ".join(f"run {i} (pid {p})" for i, p in sorted(waiting_on.items()))
            line += f" | held by another process: {who}"
        elif blocked and n_pending:
            # with none of our runs active, only someone else's process can free the slot: say whose
            blocker = self._lease_blocker
            line += f" | waiting: {blocker}" if blocker and not n_active else " | waiting for a free slot"
        return line

    # -- entry points used by the doit tasks ---------------------------------------------
    def run_phase(self, phase: int) -> bool:
        """Every run of `phase`, under the sweep lock (a second sweep process refuses, naming us)."""
        lock = try_lock(self.paths.lock, self.paths.owner)
        if lock is None:
            pid = holder(self.paths.owner, wait_s=HOLDER_WAIT_S)
            who = f"another sweep process {pid}" if pid else "another sweep process"
            raise SweepBusy(f"{who} is running plan '{self.loaded.name}'; watch it with "
                             f"`python -m lights_out_dev.cli.watch --until-event` or stop that process first.")
        try:
            with stopping.handling():  # SIGINT / SIGTERM: the scheduler stops every run, nothing raises
                indices = [r.index for r in self.loaded.runs if r.phase == phase]
                if self.loaded.plan.smoke_first and not self.schedule(indices, smoke_only=True):
                    return False  # fail fast: a config bug shows in every smoke before any long run starts
                if not self.schedule(indices):
                    return False
                resumed = self._resume_best(indices)
                return self.schedule(resumed) if resumed else True
        finally:
            lock.release()

    def ensure_run(self, index: int) -> bool:
        """One run to a final state (skips it when final; refuses when another process holds it)."""
        state = read_state(self.paths.state(index))
        if not is_final(state):
            probe = try_lock(self.paths.run_lock(index), self.paths.run_owner(index))
            if probe is None:
                held = holder(self.paths.run_owner(index), wait_s=HOLDER_WAIT_S)
                who = f"process {held}" if held else "another process"
                raise SweepBusy(f"run {index} of sweep '{self.loaded.name}' is being run by {who}; "
                                f"wait for it (python -m lights_out_dev.cli.watch --until-event).")
            probe.release()
            if not self.schedule([index]):
                return False
            state = read_state(self.paths.state(index))
        if is_final(state):
            if not self.paths.target(index).exists():
                self.write_target(index, state)
            return True
        return False


def _warm_imports() -> None:
    """Import what run threads import lazily, once, up front: a first import inside a thread costs
    ~100 ms while a slot sits idle (measured by bench/sweep_schedule.py)."""
    import importlib

    for name in ("run.supervisor", "host.gpu_lock", "run.scan", "core.classify", "core.policy", "core.tb",
                 "executors.local", "host.events"):
        importlib.import_module(f"lights_out_dev.{name}")


# --- helpers for the doit tasks and scripts -----------------------------------------------------

def open_sweep(root: Path, cfg: ProjectConfig, plan: str | None, *, executor: str | None = None,
               check: bool = True, status_line: Callable[[str], None] = print_line) -> Sweep:
    """Load + validate a plan (unknown tasks name the closest ones) -> Sweep."""
    loaded = load_plan(plan_path(root, cfg, plan))
    if check:
        check_tasks(loaded, known_tasks(root))
        check_placement(loaded, root, cfg, executor)
    return Sweep(loaded, cfg, root, executor=executor, status_line=status_line)


def evaluate_best(sweep: Sweep) -> None:
    """Plan `evaluate`: the final checkpoints of the best finished runs through the trainer's play script;
    each result goes into its run's state (ledger, report). A run evaluated on its final checkpoint
    already is not evaluated again; a failed evaluation is reported and the sweep goes on."""
    from lights_out_dev.run.evaluate import (
        PlayError,
        eval_text,
        evaluate_checkpoint,
        record_in_state,
    )

    ev, name = sweep.loaded.plan.evaluate, sweep.loaded.name
    if ev is None:
        return
    scored = []
    for index, st in sweep.states().items():
        if st.status in ("completed", "timeout") and st.checkpoints:
            value = promotion.metric_value(st, ev.metric)
            if value is not None:
                scored.append((value, index, st))
    scored.sort(key=lambda x: x[0], reverse=ev.mode == "max")
    for value, index, st in scored[:ev.best]:
        checkpoint = Path(st.checkpoints[-1])
        if st.evaluation.get("checkpoint") == str(checkpoint):
            continue
        try:
            record = evaluate_checkpoint(st.spec, checkpoint, ["--num_episodes", str(ev.num_episodes), *ev.args],
                                         sweep.cfg, sweep.root, f"sweep:{name}-{index:02d}-eval")
        except PlayError as e:
            sweep.say(f"[sweep {name}] run {index}: evaluation failed: {e}")
            continue
        note = record_in_state(sweep.paths.state(index), record)
        sweep.say(f"[sweep {name}] run {index} ({ev.metric} {value:.2f}): {eval_text(record['metrics'])}"
                  + (f" ({note})" if note else ""))


def finish(sweep: Sweep) -> bool:
    """End of a sweep: evaluation of its best runs (plan `evaluate`), ledger, report, `sweep_finished`
    event. True when every run is final."""
    from lights_out_dev.host import events
    from lights_out_dev.sweep.report import write_report

    evaluate_best(sweep)
    states = sweep.states()
    sweep.refresh_ledger()
    report = None
    try:
        report = write_report(sweep)
    except OSError as e:
        sweep.say(f"[sweep {sweep.loaded.name}] cannot write the report ({e.strerror}); free disk space and run "
                  f"`doit sweep_report`.")
    counts = status_counts(status_of(states.get(run.index)) for run in sweep.loaded.runs)
    done = all(is_final(states.get(r.index)) for r in sweep.loaded.runs)
    events.emit(sweep.root, sweep.cfg, "sweep_finished", sweep=sweep.loaded.name, ok=done, counts=counts,
                report=str(report) if report else None, ledger=str(ledger_path(sweep.root, sweep.cfg)))
    sweep.say(f"[sweep {sweep.loaded.name}] finished: " + counts_text(counts)
              + (f"; report {report}" if report else ""))
    return done


__all__ = ["Sweep", "SweepError", "SweepBusy", "SweepPaths", "open_sweep", "finish", "paths_for", "spec_for", "known_tasks",
           "capped_envs", "ledger_path", "sweeps_root"]
