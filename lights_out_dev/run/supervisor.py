"""The supervisor: runs one experiment to a final state (completed / timeout / failed).

    spec -> argv -> process -> watch -> classify -> decide -> next attempt | final

Everything it learns goes into the run-state JSON (state.RunState), written atomically on every
change, so a supervisor that dies at any moment loses nothing: a restarted one adopts a trainer that
is still running (same pid *and* same process start time) and keeps reading its log from the
recorded offset, or marks a dead one interrupted and retries it by policy. A file lock beside the
state file keeps two supervisors off one run; the trainer never inherits it (close-on-exec).

Every launch is written ahead: the state records the launch's run token (which every process of the
launch carries in its environment) before the process exists, so a supervisor killed between starting
the trainer and recording it leaves a trainer the rerun finds and adopts (or stops), never a second one.
Stops by the user or of the supervisor itself are not the trainer's failures: they never count towards
`max_consecutive_failures`. A run state is reused only for the same spec (its fingerprint is stored).
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path

from filelock import FileLock, Timeout

from lights_out_dev import executors
from lights_out_dev.core import command, overrides
from lights_out_dev.core.config import ProjectConfig, load_project_or_report
from lights_out_dev.core.profiles import (
    DEFAULT_CHECKPOINT_PATTERN,
    checkpoint_iteration,
    checkpoint_values,
    checkpoints_in,
    fill,
)
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import (
    Attempt,
    DamagedState,
    LaunchIntent,
    Progress,
    RunState,
    atomic_write_text,
    load_state,
    quarantine,
    save_state,
)
from lights_out_dev.core.verdicts import FINAL_STATUSES, StopRequest, Verdict
from lights_out_dev.errors import LightsOutError
from lights_out_dev.executors.base import Executor, Handle
from lights_out_dev.host import events, gpu_lock, procs, stopping
from lights_out_dev.run import run_requests
from lights_out_dev.run.attempt import (
    classify_end,
    environment,
    limits_for,
    new_scanner,
    process_environment,
    watch_to_end,
)
from lights_out_dev.run.monitor import LogTail, WatchResult, tail_lines

PROGRESS_SAVE_S = 1.0  # progress-only changes are persisted at most this often (start/health/end at once)
LOG_TAIL_LINES = 20
RESEED_STEP = 1000  # a reseeded attempt n runs with seed + RESEED_STEP * (n - 1): never a seed of its siblings
Judge = Callable[[RunState], StopRequest | None]
# Every trainer carries the path of its run state: a trainer whose state file was damaged is still found.
STATE_VAR = "LIGHTS_OUT_STATE"
# Fields that say how a run is launched or stopped, not what it trains: changing them keeps the run.
_OPERATIONAL_FIELDS = {"time_limit_s", "smoke", "secret_env", "prefix"}


class SupervisorError(LightsOutError):
    """A problem the user can fix; str() is one sentence naming it and the fix."""


class SupervisorBusy(SupervisorError):
    """Another live supervisor owns this run."""


def run_key(task: str) -> str:
    return task.replace(":", "__")


def spec_fingerprint(spec: RunSpec) -> str:
    """Hash of what a run trains (task, script, envs, iterations, seed, trainer flags, env, GPUs...)."""
    data = spec.model_dump(mode="json", exclude=_OPERATIONAL_FIELDS)
    return hashlib.sha256(json.dumps(data, sort_keys=True).encode()).hexdigest()[:16]


def spec_difference(old: RunSpec, new: RunSpec) -> str:
    """'max_iterations 300 -> 4, seed 77 -> 11': the fields that make two specs different runs."""
    a = old.model_dump(mode="json", exclude=_OPERATIONAL_FIELDS)
    b = new.model_dump(mode="json", exclude=_OPERATIONAL_FIELDS)
    return ", ".join(f"{k} {a.get(k)!r} -> {b.get(k)!r}" for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))


def redact(lines: list[str], secrets: list[str]) -> list[str]:
    """The lines with the values of the configured secret environment variables shown as ***."""
    values = sorted({v for name in secrets if len(v := os.environ.get(name, "")) >= 4}, key=len, reverse=True)
    if not values:
        return lines
    out = []
    for line in lines:
        for v in values:
            line = line.replace(v, "***")
        out.append(line)
    return out


def lock_path(state_path: Path) -> Path:
    return Path(str(state_path) + ".lock")


def state_path_for(root: Path, cfg: ProjectConfig, task: str) -> Path:
    return cfg.path(root, cfg.logs_dir) / "runs" / f"{run_key(task)}.json"


def _checkpoints_before(checkpoints: list[str], iteration: int | None,
                        pattern: str = DEFAULT_CHECKPOINT_PATTERN) -> list[str]:
    """The checkpoints saved before `iteration` (all of them when it is None): a reseed must not load
    weights that already hold the NaN or the blow-up."""
    if iteration is None:
        return list(checkpoints)
    return [c for c in checkpoints if (it := checkpoint_iteration(c, pattern)) is not None and it < iteration]


def resume_flags(spec: RunSpec, checkpoint: str) -> list[str]:
    """Trainer flags that continue from exactly `checkpoint` (one inside the run's own log dir, not always
    its newest: a reseed goes back before a NaN), from the trainer profile's `resume_args`.

    They replace a fine-tuning start checkpoint's flags (last flag wins): the run's own progress wins."""
    return fill(spec.trainer.resume_args, **checkpoint_values(checkpoint))


def remaining_iterations(target: int | None, checkpoint: str,
                         pattern: str = DEFAULT_CHECKPOINT_PATTERN, budget: str = "remaining",
                         offset: int = 0) -> int | None:
    """--max_iterations for a run resumed from `checkpoint` that should still end at iteration `target`.

    rsl_rl (and so Isaac Lab's train.py) counts --max_iterations from the loaded checkpoint's iteration:
    passing the original value again would train past the target by the checkpoint's iteration.
    A profile's `resume_budget` says otherwise for trainers that count from their checkpoint themselves
    ("total": the target as asked) or take no budget on resume ("none"). `offset`: the steps done before the
    attempt that wrote the checkpoint, for a trainer that names checkpoints from 0 in every attempt."""
    if budget == "total":
        return target
    if budget == "none":
        return None
    done = checkpoint_iteration(checkpoint, pattern)
    if target is None or done is None:
        return None
    return max(1, target - done - offset)


def _fmt_rate(x: float | None) -> str:
    if x is None:
        return "-"
    return f"{x / 1e6:.1f}M" if x >= 1e6 else f"{x / 1e3:.1f}k" if x >= 1e3 else f"{x:.0f}"


def _fmt_clock(s: float | None) -> str:
    if s is None:
        return "none"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"




class _Run:
    """One supervise() call: the state, the lease and the current attempt."""

    def __init__(self, spec: RunSpec, cfg: ProjectConfig, root: Path, state_path: Path, executor: Executor,
                 lease: gpu_lock.Lease | None, key: str, status_line: Callable[[str], None],
                 sweep: str | None, index: int | None, phase: int | None,
                 should_stop: Callable[[], bool], judge: Judge | None = None, on_spec_change: str = "refuse",
                 fingerprint: str | None = None):
        self.spec, self.cfg, self.root, self.path = spec, cfg, root, state_path
        self.on_spec_change = on_spec_change
        self.fingerprint = fingerprint or spec_fingerprint(spec)
        self.executor, self.lease, self.key = executor, lease, key
        self.say, self.judge = status_line, judge
        self.should_stop = lambda: should_stop() or run_requests.stop_requested(state_path)
        self.stop_request: StopRequest | None = None  # the judge's verdict on the current attempt
        self.where = dict(sweep=sweep, index=index, phase=phase)
        self.logs_dir = cfg.path(root, cfg.logs_dir)
        self.planned_limit = spec.time_limit_s if spec.time_limit_s is not None else cfg.monitor.time_limit
        self.state: RunState | None = None
        self.scanner = None
        self.tail: LogTail | None = None
        self.handle: Handle | None = None
        self._last_save = 0.0
        self.previous_supervisor: int | None = None

    # -- state ---------------------------------------------------------------------------------
    def save(self, force: bool = True) -> None:
        now = time.monotonic()
        if not force and now - self._last_save < PROGRESS_SAVE_S:
            return
        if self.tail is not None:
            self.state.log_offset = self.tail.offset
        if self.handle is not None and self.state.handle is not None:  # what the executor learned since (node, ...)
            self.state.handle = self.handle.to_dict()
        try:
            save_state(self.state, self.path)
        except OSError as e:
            raise SupervisorError(f"could not write the run state {self.path} ({e.strerror or e}); free disk space "
                                  f"or fix permissions under {self.path.parent}, then rerun.") from None
        self._last_save = now

    def emit(self, kind: str, **data) -> None:
        events.emit(self.root, self.cfg, kind, task=self.spec.task, run_key=self.key, state_path=str(self.path),
                    **{k: v for k, v in self.where.items() if v is not None}, **data)

    def _load_or_new(self) -> RunState:
        try:
            old = load_state(self.path)
        except DamagedState as e:
            bad = quarantine(self.path)
            # its trainer, if one still runs, is found by the state path it carries; it cannot be adopted
            stray = procs.kill_marked(STATE_VAR, str(self.path))
            self.say(f"lights-out: the run state {self.path} is damaged ({e.why}); it was kept as {bad.name}"
                     f"{f', its trainer (pid {stray[0]}) was stopped' if stray else ''} and the run starts "
                     f"over (copy {bad.name} back to {self.path.name} to recover it by hand).")
            old = None
        if old is not None and self.on_spec_change == "wipe" and old.status not in FINAL_STATUSES:
            self._archive_state()  # --wipe: start afresh even with the same spec (its trainer is stopped first)
            old = None
        if old is not None and (old.fingerprint or spec_fingerprint(old.spec)) != self.fingerprint:
            changed = spec_difference(old.spec, self.spec) or "the plan entry"
            if self.on_spec_change == "continue":
                self.spec = old.spec  # continue the recorded run as it was started
                self.fingerprint = old.fingerprint or spec_fingerprint(old.spec)
            elif self.on_spec_change == "wipe" or old.status in FINAL_STATUSES:
                self._archive_state()  # a finished run is kept in the archive; a new spec is a new run
                old = None
            else:
                raise SupervisorError(f"the unfinished run in {self.path} was started with a different spec "
                                      f"({changed}); pass --continue to finish it as it was started, or --wipe to "
                                      f"archive it and start this spec afresh.")
        if old is not None and old.status not in FINAL_STATUSES and (old.attempts or old.intent):
            if old.status == "running" and old.supervisor_host not in (None, socket.gethostname()):
                raise SupervisorBusy(f"{self.spec.task} is being supervised on host {old.supervisor_host} "
                                     f"(pid {old.supervisor_pid}); stop it there or wait for it to finish.")
            return old  # continue it: adopt or retry
        if old is not None:  # a finished run: keep its record beside the new one
            self._archive_state()
        rid = command.new_rid()
        return RunState(run_key=self.key, rid=rid, task=self.spec.task, spec=self.spec,
                        run_name=command.default_run_name(self.spec, self.lease.gpus if self.lease else None, rid),
                        fingerprint=self.fingerprint, **self.where)

    def _archive_state(self) -> None:
        """Move the state to runs/archive/. A trainer a dead supervisor left running would be nobody's once
        its record is gone: it is stopped first (found by the state path it carries)."""
        left = procs.pids_with_env(STATE_VAR, str(self.path))
        if left:
            procs.kill_marked(STATE_VAR, str(self.path))
            self.say(f"[{self.spec.task}] stopped the trainer (pid {', '.join(map(str, left))}) left running by a "
                     f"dead supervisor of this run before archiving its state.")
        archive = self.path.parent / "archive" / f"{self.key}_{time.strftime('%Y%m%d_%H%M%S')}.json"
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self.path, archive)

    def start_trainer(self, argv: list[str], env: dict[str, str], log_path: Path, gpus: list[int] | None, *,
                      purpose: str, env_overrides: dict[str, str] | None = None, job_name: str,
                      time_limit_s: float | None = None, **placement) -> Handle:
        """executor.start() behind a write-ahead record (`placement`: the executor's nodes/exclusions). The state names the launch (its token, argv and log)
        before the process exists; the caller records the handle and drops state.intent in its
        next save. A supervisor that dies in between leaves a trainer that _recover_intent() finds."""
        token = uuid.uuid4().hex
        env = {**env, procs.RUN_TOKEN_VAR: token, STATE_VAR: str(self.path)}
        self.state.intent = LaunchIntent(purpose=purpose, token=token, argv=argv, log_path=str(log_path), gpus=gpus,
                                         env_overrides=env_overrides or {}, at=time.time(), boot=procs.boot_id())
        self.save()
        try:
            self.handle = self.executor.start(argv, env, log_path, gpus, job_name=job_name,
                                              time_limit_s=self.limit if time_limit_s is None else time_limit_s,
                                              **placement)
        except Exception:  # nothing was started: the record must not send a rerun looking for it
            self.state.intent = None
            self.save()
            raise
        return self.handle

    def _recover_intent(self) -> None:
        """A launch was written ahead but never recorded (the supervisor died in between): adopt its trainer
        as the attempt it was meant to be, or stop what is left of it. Its processes are proven ours by the
        launch's token, never by a pid or a group id alone."""
        st = self.state
        intent, st.intent = st.intent, None
        if not intent:
            return
        found = self.executor.recover_launch(intent.token, intent.log_path, intent.gpus, intent.boot,
                                             adopt=intent.purpose == "attempt")
        if found.handle is not None:
            handle, leader = found.handle, found.handle.pid
            st.attempts.append(Attempt(number=len(st.attempts) + 1, argv=intent.argv, gpus=intent.gpus,
                                       env_overrides=intent.env_overrides, started_at=intent.at, pid=leader,
                                       pgid=leader, job_id=handle.job_id, node=handle.node,
                                       log_path=intent.log_path))
            st.status = "running"
            st.handle, st.log_offset = handle.to_dict(), 0
            which = f"Slurm job {handle.job_id}" if handle.job_id else f"pid {leader}"
            self.say(f"lights-out: found {st.task}'s trainer ({which}) started by a supervisor that died "
                     f"before recording it; adopting it as attempt {len(st.attempts)}.")
        elif found.stopped:
            left = found.survivors
            self.say(f"lights-out: stopped {found.stopped} process(es) of a launch of {st.task} that its supervisor "
                     f"never recorded" + (f"; pids {left} survive" if left else "") + ".")
        self.save()

    # -- attempts ------------------------------------------------------------------------------
    def _gpus(self) -> list[int] | None:
        """GPUs the attempt runs on: the local lease's, or under a scheduler the job's own cuda:0..N-1."""
        return self.executor.attempt_gpus(self.spec.gpus, self.lease.gpus if self.lease else None)

    def _effective_spec(self) -> RunSpec:
        eff = self.state.effective
        return self.spec.model_copy(update={k: v for k, v in eff.items() if k in ("num_envs", "seed")})

    def _target_iteration(self) -> int | None:
        """The iteration the run ends at: what its attempts count to (which includes a fine-tuning start
        checkpoint's iterations; the first that printed one, as an OOM may end an attempt before that), else
        the requested --max_iterations."""
        counted = next((a.progress.total for a in self.state.attempts if a.progress.total), None)
        return counted or self.spec.max_iterations

    @property
    def limit(self) -> float | None:
        """The run's time limit: the planned one, or what `run_requests.set_time_limit` asked for since."""
        override = run_requests.time_limit_override(self.path)
        return override if override is not None else self.planned_limit

    def _time_left(self) -> float | None:
        return None if self.limit is None else self.limit - self._used_s()

    def _used_s(self) -> float:
        now = time.time()
        return sum((a.ended_at or now) - a.started_at for a in self.state.attempts if a.started_at)

    def placement(self, spec: RunSpec) -> dict:
        """executor.start()'s keywords for where the run goes; only a Slurm run on several nodes or away from
        failed nodes has any, so executors without them are called as before."""
        placement = {}
        if spec.nodes > 1:
            placement["nodes"] = spec.nodes
        if self.state.exclude_nodes:
            placement["exclude_nodes"] = list(self.state.exclude_nodes)
        return placement

    def _launch(self) -> Attempt:
        st = self.state
        n = len(st.attempts) + 1
        gpus = self._gpus()
        spec = self._effective_spec()
        extra: list[str] = []
        resume_from, st.resume_from, st.stopping = st.resume_from, None, None
        offset = 0
        if resume_from:
            extra = resume_flags(spec, resume_from)
            budget = spec.trainer.resume_budget
            before = self._steps_before(resume_from)
            left = remaining_iterations(self._target_iteration(), resume_from, spec.trainer.checkpoint_pattern, budget,
                                        before)
            if spec.trainer.counts_from_zero:
                offset = before + (spec.trainer.checkpoint_iteration(resume_from) or 0)
            spec = spec.model_copy(update={"max_iterations": None if budget == "none" else left or spec.max_iterations})
        run_name = st.run_name if n == 1 else f"{st.run_name}_a{n}"  # unique trainer log dir per attempt
        argv = command.build_argv(spec, self.executor.trainer_gpus(gpus), rid=st.rid, run_name=run_name, extra=extra)
        env_over = environment(spec, self.executor, gpus, n, spec.trainer.attempt_environment(st.rid, run_name, n))
        env = process_environment(spec, env_over)
        stamp = time.strftime("%Y%m%d_%H%M%S")
        log_path = self.logs_dir / f"{stamp}_{self.key}{'' if n == 1 else f'_a{n}'}.log"
        self.start_trainer(argv, env, log_path, gpus, purpose="attempt", env_overrides=env_over,
                           job_name=f"lo-{self.key}", **self.placement(spec))
        attempt = Attempt(number=n, argv=argv, gpus=gpus, env_overrides=env_over, started_at=time.time(),
                          pid=self.handle.pid, pgid=self.handle.pgid, job_id=self.handle.job_id,
                          node=self.handle.node, log_path=self.handle.log_path, step_offset=offset)
        st.attempts.append(attempt)
        st.status = "running"
        st.handle = self.handle.to_dict()
        st.intent = None
        self.scanner = new_scanner(self.cfg, argv, self.spec, self.root, self._target_iteration(), offset)
        self.tail = LogTail(self.handle.log_path, 0)
        self.save()
        self.emit("started", attempt=n, gpus=gpus, log_path=attempt.log_path, argv=argv)
        self.say(self.status_text("started"))
        return attempt

    def _steps_before(self, checkpoint: str) -> int:
        """Steps done before the attempt that wrote `checkpoint` (0 unless the trainer counts from 0 on resume)."""
        if not self.spec.trainer.counts_from_zero:
            return 0
        folder = Path(checkpoint).parent
        return next((a.step_offset for a in self.state.attempts
                     if a.checkpoint_dir and Path(a.checkpoint_dir) == folder), 0)

    def _adopt(self) -> bool:
        """Continue a run left 'running' by a dead supervisor. True if its trainer is still ours."""
        st = self.state
        attempt = st.current
        hd = st.handle
        handle = Handle.from_dict(hd) if hd else None
        self.scanner = new_scanner(self.cfg, attempt.argv, self.spec, self.root, self._target_iteration(),
                                    attempt.step_offset)
        offset = int((st.log_offset or 0))
        if attempt.log_path:  # rebuild the scanner's view (tb dir, health, progress) up to the offset, once
            try:
                with open(attempt.log_path, "rb") as f:
                    seen = f.read(offset)
            except OSError:
                seen = b""
            for line in seen.decode(errors="replace").splitlines():
                self.scanner.feed(line)
        self.tail = LogTail(attempt.log_path, offset) if attempt.log_path else None
        ours = handle is not None and self.executor.adoptable(handle)
        if ours:
            self.handle = handle
            which = f"Slurm job {handle.job_id}" if handle.job_id else f"pid {handle.pid}"
            self.say(f"lights-out: adopting {st.task} attempt {attempt.number} ({which}) left running "
                     f"by supervisor pid {self.previous_supervisor}.")
            return True
        # The trainer ended while nobody watched: finish that attempt from its log, then go on by policy.
        if handle:
            attempt.survivors = self.executor.stop(handle, graceful=False, grace_s=0)  # strays of a dead leader
        if self.tail is not None:  # what it wrote after the last recorded offset counts too
            for line in self.tail.read_lines(final=True):
                self.scanner.feed(line)
            self.tail.close()
            self.tail = None
        verdict, reason = classify_end(self.scanner, None, None)
        stopping, st.stopping = st.stopping, None
        if stopping == "user" and verdict not in (Verdict.completed, Verdict.timeout):
            # a stop was under way when its supervisor died: what the trainer printed while being stopped
            # (an import cut short, say) is not its failure
            verdict, reason = Verdict.killed, f"stopped on request; its supervisor ended before the stop did ({reason})"
            attempt.interrupted = True
        elif verdict in (Verdict.crash, Verdict.killed):
            verdict, reason = Verdict.killed, f"trainer ended while no supervisor watched it ({reason})"
            attempt.interrupted = True  # no evidence against the trainer: not one of its failures
        self._record_end(attempt, verdict, reason, None, None)
        st.status = "interrupted"
        self.save()
        return False

    def _record_end(self, attempt: Attempt, verdict: Verdict, reason: str, result: WatchResult | None,
                    exit_status) -> None:
        attempt.ended_at = attempt.ended_at or time.time()
        attempt.verdict, attempt.reason = verdict.value, reason
        handle = getattr(self, "handle", None)
        if handle is not None and handle.node:  # a job still pending at start() learns its node later
            attempt.node = handle.node
        if exit_status is not None:
            attempt.exit_code, attempt.signal = exit_status.exit_code, exit_status.signal
            attempt.failed_nodes = list(getattr(exit_status, "failed_nodes", None) or [])
        if result is not None:
            attempt.survivors = result.survivors
            attempt.peak_vram_mb = result.peak_vram_mb
            attempt.cleanup_s = result.cleanup_s
            attempt.imbalance = result.imbalance
            attempt.healthy_at = attempt.healthy_at or result.healthy_at
        self._sync_from_scanner(attempt)
        attempt.log_tail = redact(tail_lines(attempt.log_path, LOG_TAIL_LINES), self.cfg.secrets + self.spec.secret_env)
        st = self.state
        st.checkpoints = [c for a in st.attempts for c in checkpoints_in(a.checkpoint_dir or a.tb_dir,
                                                                          self.spec.trainer.checkpoint_pattern)]
        vram = [a.peak_vram_mb for a in st.attempts if a.peak_vram_mb]
        st.peak_vram_mb = max(vram) if vram else None
        st.handle, st.log_offset = None, 0

    def _sync_from_scanner(self, attempt: Attempt) -> None:
        sc = self.scanner
        attempt.progress = Progress(**sc.progress.model_dump())
        attempt.tb_dir = sc.tb_dir or attempt.tb_dir
        attempt.checkpoint_dir = sc.checkpoint_dir or attempt.checkpoint_dir
        attempt.tracker_url = sc.tracker_url or attempt.tracker_url
        attempt.warnings = list(sc.warnings)[:20]
        r = attempt.progress.mean_reward
        if r is not None and (self.state.best_reward is None or r > self.state.best_reward):
            self.state.best_reward = r

    def _should_stop(self) -> bool:
        """watch()'s stop test: the user's stop (written ahead, _stop_requested), or the judge's (early
        stopping, learning health), which stops the trainer the same graceful way and names the verdict."""
        if self._stop_requested():
            return True
        if self.judge is not None and self.stop_request is None and self.state.current is not None:
            self._sync_from_scanner(self.state.current)
            self.stop_request = self.judge(self.state)
        return self.stop_request is not None

    # -- status line ---------------------------------------------------------------------------
    def status_text(self, what: str | None = None) -> str:
        st, a = self.state, self.state.current
        where = "cpu" if not a or a.gpus is None else "gpu" + ",".join(map(str, a.gpus))
        p = self.scanner.progress if self.scanner else Progress()
        unit = self.spec.trainer.observe.unit_label
        it = f"{unit} {p.iteration if p.iteration is not None else '-'}/{p.total if p.total is not None else '-'}"
        reward = "-" if p.mean_reward is None else f"{p.mean_reward:.3g}"
        parts = [f"[{st.task} a{a.number if a else 0} {where}]", it, f"{_fmt_rate(p.steps_per_s)} steps/s",
                 f"reward {reward}", f"{_fmt_clock(self._used_s())}/{_fmt_clock(self.limit)}"]
        if what:
            parts.append(what)
        return " ".join(parts)

    def _notify(self, kind: str) -> None:
        attempt = self.state.current
        self._sync_from_scanner(attempt)
        if kind == "healthy":
            attempt.healthy_at = time.time()
            self.save()
            self.emit("healthy", attempt=attempt.number, progress=attempt.progress.model_dump())
            self.say(self.status_text("healthy"))
        elif kind == "tb_dir":
            self.save()
        elif kind == "status":
            self.say(self.status_text())
            self.save(force=False)
        else:
            self.save(force=False)

    # -- the loop ------------------------------------------------------------------------------
    def run(self, smoke_only: bool = False) -> RunState:
        self.state = self._load_or_new()
        st = self.state
        self.previous_supervisor = st.supervisor_pid
        st.supervisor_pid, st.supervisor_host = os.getpid(), socket.gethostname()
        st.fingerprint = self.fingerprint
        self._recover_intent()
        adopted = False
        if st.attempts and st.current.verdict is not None and st.checkpoints:
            st.resume_from = st.resume_from or st.checkpoints[-1]  # an interrupted run continues its training
        if st.attempts and st.current.verdict is None:
            adopted = self._adopt()
            if not adopted:
                decision_final = self._decide(st.current)
                if decision_final:
                    return self._finish()
        self.save()
        if self.spec.smoke and not st.attempts:
            from lights_out_dev.run.smoke import (
                gate,  # first-update smoke gate before the long attempt
            )
            if not gate(self):
                return self._finish() if st.status == "failed" else st
        if smoke_only:  # a plan's `smoke_first` pass: the long attempt comes later and reuses the gate
            if not st.attempts:
                st.status = "pending"
            self.save()
            return st
        while True:
            if not adopted and self.should_stop():  # stopped before this attempt started: launch nothing
                st.status, st.reason = "interrupted", "stopped by the user"
                self.save()
                return st
            try:
                attempt = st.current if adopted else self._launch()
                adopted = False
                self.stop_request = None
                ended = watch_to_end(self.executor, self.handle, self.scanner,
                                     limits_for(self.cfg, self.executor, self._time_left(), self.spec), self.tail,
                                     gpus=attempt.gpus, notify=self._notify, should_stop=self._should_stop,
                                     time_left=self._time_left)
            except BaseException:
                self._abort()
                raise
            verdict, reason, result = ended.verdict, ended.reason, ended.watched
            if result.stopped_after_checkpoint:
                reason += (f", right after its checkpoint {result.stopped_after_checkpoint} (its next save would "
                           f"have come after the limit, and it saves nothing when stopped)")
            if self.stop_request and result.stopped_by == "user" and not self.should_stop():
                verdict, reason = Verdict(self.stop_request.verdict), self.stop_request.reason
                if self.stop_request.iteration is not None:
                    st.bad_iteration = self.stop_request.iteration
            elif verdict is Verdict.nan and self.scanner.progress.iteration is not None:
                st.bad_iteration = self.scanner.progress.iteration  # the trainer's own NaN failure
            stopping, st.stopping = st.stopping, None
            if (stopping == "user" and result.stopped_by is None
                    and verdict not in (Verdict.completed, Verdict.timeout)):
                # adopted while an earlier supervisor's stop was under way: the trainer was ending on request
                verdict, reason = Verdict.killed, f"stopped on request by an earlier supervisor ({reason})"
                attempt.interrupted = True
            self._record_end(attempt, verdict, reason, result, result.exit)
            self.tail = None
            self.handle = None
            if result.stopped_by == "user" and verdict is Verdict.killed:  # not a judge's stop (pruned, nan, ...)
                attempt.interrupted = True
                st.status = "interrupted"
                st.reason = "stopped by the user"
                self.save()
                run_requests.clear_stop(self.path)
                self.emit("stopped", attempt=attempt.number, reason=st.reason, log_path=attempt.log_path)
                return st
            if self._decide(attempt):
                return self._finish()
            self.save()

    def _stop_requested(self) -> bool:
        """should_stop(), with the stop written ahead: a supervisor that dies while its trainer is being
        stopped leaves the next one knowing that what the trainer did meanwhile was on request."""
        if not self.should_stop():
            return False
        if self.state.stopping != "user":
            self.state.stopping = "user"
            self.save()
        return True

    def _abort(self) -> None:
        """The supervisor itself is going down (error, Ctrl-C, SIGTERM): leave no trainer behind."""
        graceful = not isinstance(sys.exc_info()[1], Exception)  # Ctrl-C / SIGTERM: let it save; errors: kill
        if self.handle is None:
            return
        survivors = self.executor.stop(self.handle, graceful=graceful, grace_s=self.cfg.monitor.grace_s)
        attempt = self.state.current
        if attempt is not None and attempt.pid == self.handle.pid and attempt.verdict is None:
            attempt.survivors = survivors
            attempt.ended_at = time.time()
            attempt.verdict, attempt.reason = Verdict.killed.value, "the supervisor was stopped"
            attempt.interrupted = True
            if self.scanner is not None:  # what it saved on the way out is what the rerun resumes from
                self._sync_from_scanner(attempt)
            self.state.checkpoints = [c for a in self.state.attempts for c in checkpoints_in(a.tb_dir)]
        self.state.status = "interrupted"
        self.state.handle = None
        self.handle = None
        try:
            save_state(self.state, self.path)
        except OSError:
            pass  # the old state file is intact (atomic write); the error that brought us here is reported

    def _decide(self, attempt: Attempt) -> bool:
        """Apply the policy to a finished attempt; True when the run reached a final state."""
        from lights_out_dev.core.policy import decide

        st = self.state
        verdict = Verdict(attempt.verdict)
        if verdict in (Verdict.completed, Verdict.timeout, Verdict.pruned):
            st.status, st.final_verdict, st.reason = verdict.value, verdict.value, attempt.reason
            attempt.decision = {Verdict.completed: "done", Verdict.timeout: "accept"}.get(
                verdict, "pruned: stopped early, checkpoints kept")
            return True
        # attempts a user or a dying supervisor ended say nothing about the trainer: not failures
        if attempt.interrupted:  # the supervisor died under it: go on from its checkpoint, nothing counted
            attempt.decision = "retry: ended while no supervisor watched it (not a failure)"
            if st.checkpoints:
                st.resume_from = st.checkpoints[-1]
            st.status = "running"
            return False
        history = [Verdict(a.verdict) for a in st.attempts[:-1] if a.verdict and not a.interrupted]
        spec = self._effective_spec()
        gpus = len(attempt.gpus) if attempt.gpus else spec.gpus
        d = decide(verdict, history, self.cfg.recovery_policy(), self.cfg.max_consecutive_failures,
                   spec.num_envs, gpus, bool(st.checkpoints))
        attempt.decision = f"{d.action}: {d.reason}"
        if d.action in ("done", "accept"):
            # a plateau is the end of learning, not of time: an accepted one completes the run
            st.status = "completed" if d.action == "done" or verdict is Verdict.plateau else "timeout"
            st.final_verdict, st.reason = verdict.value, attempt.reason
            return True
        if d.action == "give_up":
            st.status, st.final_verdict, st.reason = "failed", verdict.value, f"{attempt.reason}; {d.reason}"
            self.emit("gave_up", attempt=attempt.number, verdict=verdict.value, reason=st.reason)
            return True
        eff = st.effective
        if d.action == "halve_envs" and d.num_envs:
            eff["num_envs"] = d.num_envs
        if d.action == "other_gpu" and self.lease and self.lease.gpus:
            self._move_gpu()
        if verdict is Verdict.oom and self.lease and getattr(self.lease, "packed", False):
            self.say(f"lights-out: {st.task} ran out of memory on a shared GPU: "
                     f"{gpu_lock.unpack(self.lease, self.cfg, self.root)}.")
        if d.action == "fewer_gpus" and self.lease and d.gpus:
            self.lease.shrink(d.gpus)
        if d.action == "exclude_node" and attempt.failed_nodes:
            st.exclude_nodes = sorted({*(st.exclude_nodes or []), *attempt.failed_nodes})
            attempt.decision += f" (excluding {', '.join(st.exclude_nodes)})"
        if d.action == "reseed":
            eff["seed"] = (spec.seed or 0) + RESEED_STEP * (len(st.attempts))
            good = _checkpoints_before(st.checkpoints, st.bad_iteration, self.spec.trainer.checkpoint_pattern)
            if good:
                st.resume_from = good[-1]
        elif d.resume and st.checkpoints:
            st.resume_from = st.checkpoints[-1]
        st.status = "running"
        self.emit("retry", attempt=attempt.number, verdict=verdict.value, reason=attempt.reason,
                  action=d.action, decision=d.reason)
        self.say(self.status_text(f"{verdict.value}: {attempt.reason} -> {d.action}"))
        return False

    def _move_gpu(self) -> None:
        old = self.lease
        try:
            new = gpu_lock.acquire(len(old.gpus), self.cfg, self.root, exclude=old.gpus, wait=False)
        except gpu_lock.GpuLockError as e:
            self.say(f"lights-out: no other GPU free ({e}); retrying on {old.label}.")
            return
        old.release()
        old.gpus, old._locks = new.gpus, new._locks  # the caller's lease object follows the run

    def _finish(self) -> RunState:
        st = self.state
        run_requests.clear(self.path)  # a stop or a new limit asked for too late must not reach a later rerun
        last = st.current
        st.final = Progress(**last.progress.model_dump()) if last else Progress()
        tb_dir = next((a.tb_dir for a in reversed(st.attempts) if a.tb_dir), None)
        try:
            from lights_out_dev.core import tb
            latest = tb.latest_scalars(tb_dir) if tb_dir else {}
        except Exception:  # metrics from stdout are enough; TensorBoard is a bonus here
            latest = {}
        tags = self.spec.trainer.metrics
        for field, tag in (("steps_per_s", tags.fps), ("mean_reward", tags.reward),
                           ("mean_episode_length", tags.episode_length)):
            if getattr(st.final, field) is None and tag in latest:
                setattr(st.final, field, latest[tag][2])
        self.save()
        kind = {"completed": "completed", "timeout": "timeout", "pruned": "pruned"}.get(st.status, "failed")
        self.emit(kind, verdict=st.final_verdict, reason=st.reason, attempts=len(st.attempts),
                  final=st.final.model_dump(), checkpoints=st.checkpoints[-1:])
        self.say(self.status_text(f"{st.status}: {st.reason}"))
        return st


def supervise(spec: RunSpec, cfg: ProjectConfig, root: Path, state_path: Path, *, executor: Executor | None = None,
              lease: gpu_lock.Lease | None = None, run_key: str | None = None,
              status_line: Callable[[str], None] = print, sweep: str | None = None, index: int | None = None,
              phase: int | None = None, should_stop: Callable[[], bool] = lambda: False,
              smoke_only: bool = False, judge: Judge | None = None, on_spec_change: str = "refuse",
              fingerprint: str | None = None) -> RunState:
    """Run `spec` through attempts until completed / timeout / failed; the state is written on every change.

    A run left 'running' by a dead supervisor is adopted (trainer alive and ours) or marked interrupted
    and retried; one held by a live supervisor is refused (SupervisorBusy). `lease` is the GPU/CPU slot
    the caller holds; without one the run is not pinned to a GPU. With spec.smoke the smoke gate
    (smoke.py) runs before the first attempt; smoke_only stops after it. `judge(state)` is asked while an
    attempt runs; a StopRequest it returns stops the trainer gracefully with that verdict (a sweep's early
    stopping: `pruned`, final; learning health: `nan`, ... answered by the policy). A recorded run of another
    spec (`fingerprint`, default spec_fingerprint(spec)) is refused unless on_spec_change is 'continue'
    (finish it as recorded) or 'wipe' (archive it, start afresh); a finished one is archived. Raises SupervisorError / LaunchError
    with one sentence for user-fixable problems, never leaving a trainer behind.
    """
    root = Path(root)
    state_path = Path(state_path)
    key = run_key or state_path.stem
    try:
        state_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise SupervisorError(f"cannot create {state_path.parent} ({e.strerror}); make it writable or set "
                              f"[tool.lights_out] logs_dir to a writable path.") from None
    lock = FileLock(str(lock_path(state_path)), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        try:
            owner = load_state(state_path)
        except Exception:
            owner = None
        who = f"pid {owner.supervisor_pid}" if owner and owner.supervisor_pid else "another process"
        raise SupervisorBusy(f"{spec.task} is already supervised by {who} (lock {lock_path(state_path)}); "
                             f"wait for it to finish or stop that process first.") from None
    except OSError as e:
        raise SupervisorError(f"cannot lock {lock_path(state_path)} ({e.strerror}); make "
                              f"{state_path.parent} writable.") from None
    try:
        run = _Run(spec, cfg, root, state_path, executor or executors.make("local", cfg, root), lease, key, status_line,
                   sweep, index, phase, should_stop, judge, on_spec_change, fingerprint)
        return run.run(smoke_only)
    finally:
        lock.release()


# -- doit entry point -------------------------------------------------------------------------------

def write_target(target: Path, state: RunState, state_path: Path) -> None:
    tb_dir = next((a.tb_dir for a in reversed(state.attempts) if a.tb_dir), None)
    data = {"task": state.task, "status": state.status, "run_dir": tb_dir,
            "checkpoint": state.checkpoints[-1] if state.checkpoints else None,
            "final": state.final.model_dump(), "best_reward": state.best_reward,
            "attempts": len(state.attempts), "state_path": str(state_path)}
    atomic_write_text(Path(target), json.dumps(data, indent=2) + "\n")


def run_task(spec: RunSpec, target: Path) -> bool:
    """doit python-action: supervise the run, write `target` atomically on completed/timeout; True on success."""
    project = load_project_or_report("lights-out: ")
    if project is None:
        return False
    root, cfg = project
    ov = overrides.current()
    if ov.time_limit_set and ov.time_limit_s is None and spec.time_limit_s is None:
        cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"time_limit": None})})
    state_path = state_path_for(root, cfg, spec.task)
    executor_name = ov.executor or cfg.executor
    pin = ov.gpu
    lease = None
    if ov.continue_ and ov.wipe:
        print("lights-out: --continue and --wipe contradict each other; pass one of them (--continue finishes "
              "the recorded run as it was started, --wipe archives it and starts afresh).")
        return False
    on_change = "continue" if ov.continue_ else "wipe" if ov.wipe else "refuse"
    with stopping.handling():
        try:
            from lights_out_dev.executors.slurm.executor import placement_problem

            gpus_here = executors.executor_class(executor_name).visible_gpus(spec.gpus, gpu_lock.gpu_count())
            problem = placement_problem(spec, executor_name) or command.launch_problem(spec, root, pin, gpus_here)
            if problem:
                raise SupervisorError(problem)
            executor = executors.make(executor_name, cfg, root)
            prefer = [pin] if pin is not None else _running_gpus(state_path)
            lease = executor.lease(spec.gpus, prefer=prefer, wait=cfg.monitor.busy_gpu_action == "wait")
            Path(target).unlink(missing_ok=True)  # a target from an earlier run must not outlive this one's failure
            state = supervise(spec, cfg, root, state_path, executor=executor, lease=lease, run_key=run_key(spec.task),
                              should_stop=stopping.requested, on_spec_change=on_change)
        except LightsOutError as e:
            print(f"lights-out: {e}")
            return False
        finally:
            if lease is not None:
                lease.release()
        if stopping.requested() and state.status == "interrupted":
            print(f"lights-out: {spec.task} stopped by {stopping.signal_name()}; its trainer was stopped "
                  f"{'after saving a checkpoint' if state.checkpoints else 'before its first checkpoint'} and the "
                  f"run marked interrupted; rerun the same command to continue it.")
            return False
    ok = state.status in ("completed", "timeout")
    if ok:
        try:
            write_target(target, state, state_path)
        except OSError as e:
            print(f"lights-out: could not write {target} ({e.strerror}); free disk space and rerun.")
            return False
    a = state.current
    print(f"lights-out: {spec.task} {state.status} ({state.reason}) after {len(state.attempts)} attempt(s); "
          f"reward {state.final.mean_reward if state.final.mean_reward is not None else '-'}; "
          f"log {a.log_path if a else '-'}; state {state_path}")
    return ok


def _running_gpus(state_path: Path) -> list[int] | None:
    """A run being adopted must keep the GPU its trainer is on."""
    try:
        st = load_state(state_path)
    except Exception:
        return None
    if st and st.status == "running" and st.current and st.current.verdict is None and st.current.gpus:
        return list(st.current.gpus)
    return None
