"""What the MCP server's tools do (`lights-out mcp`), as plain functions over the project on disk.

Every tool returns an `Answer`: a short text summary (at most MAX_LINES lines, what a model reads)
and structured data (JSON, what a program reads), both bounded. The MCP layer (mcp_server.py) only
registers these and moves them over stdio; tests and bench/agent_calls.py call them through the
SDK's own client.

Starting work is two-step: `start_sweep` / `start_run` / `retry_with` without `confirm` check
everything, change nothing and return a token; the same call with `confirm=<token>` starts it
(detached, in its own session: it outlives this server) and returns the event cursor taken just
before the launch. `wait_for_event(cursor)` then sees every event after that cursor, including
events written before the wait began (a sweep refused in under a second), so an agent never polls.
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from lights_out_dev.core.config import ProjectConfig, format_duration, parse_duration
from lights_out_dev.core.profiles import UNIT_LABELS
from lights_out_dev.core.state import RunState, load_state
from lights_out_dev.errors import LightsOutError
from lights_out_dev.host import events
from lights_out_dev.run import run_requests
from lights_out_dev.sweep.ownership import live_holder
from lights_out_dev.sweep.plan import PlanError, check_tasks, load_plan, varied_text
from lights_out_dev.views import status as status_mod
from lights_out_dev.views import watch

MAX_LINES = 40  # every text answer
LOG_LINES = 12  # log tail lines in an event answer
TOKEN_TTL_S = 900.0  # a dry run's confirmation token expires after this long
MAX_WAIT_S = 3600.0  # one wait_for_event call blocks at most this long
WAIT_POLL_S = 0.5
# events that need a decision or end something: what wait_for_event returns on by default
DECISION_KINDS = ("gave_up", "failed", "stopped", "refused", "sweep_finished", "preflight_failed")
DEFAULT_TAGS = ("Train/mean_reward", "Train/mean_episode_length", "Perf/total_fps", "Loss/value_function")
RUN_FIELDS = ("num_envs", "max_iterations", "seed", "trainer_args", "time_limit")


class AgentError(LightsOutError):
    """A problem the caller can fix; str() is one sentence naming the value and the fix."""


@dataclass
class Answer:
    summary: str
    data: dict

    def __post_init__(self):
        self.summary = clip(self.summary.splitlines())


def clip(lines: list[str], limit: int = MAX_LINES) -> str:
    """At most `limit` lines, the last one saying how many were left out. Pure."""
    if len(lines) <= limit:
        return "\n".join(lines)
    return "\n".join(lines[:limit - 1] + [f"... {len(lines) - limit + 1} more lines left out"])


def error(sentence: str, **data) -> Answer:
    return Answer(f"error: {sentence}", {"ok": False, "error": sentence, **data})


@dataclass
class RunRef:
    """One run as the tools name it: a sweep run by index, or a `doit <task>` run by task name."""

    label: str
    state_path: Path
    state: RunState | None
    sweep: object | None = None  # sweep.Sweep
    index: int | None = None


@dataclass
class Pending:
    """A dry run waiting for its confirmation."""

    kind: str
    argv: list[str]
    summary: str
    fingerprint: str  # the plan's _digest at the dry run
    expires: float
    plan: str | None = None
    prepare: dict = field(default_factory=dict)  # retry_with: what to do to the run's files on confirm


@dataclass
class Launch:
    """A process a confirmation started, until a wait has told the caller it ended."""

    proc: subprocess.Popen
    output: Path
    what: str
    cursor: int  # the event cursor taken just before it started
    reported: bool = False


class Agent:
    """The tools over one project root. Holds the dry runs' tokens and the processes it started."""

    def __init__(self, root: Path, cfg: ProjectConfig, read_only: bool = False):
        self.root, self.cfg, self.read_only = root, cfg, read_only
        self.pending: dict[str, Pending] = {}
        self.launches: list[Launch] = []
        self.last_cursor: int | None = None

    # -- reading ------------------------------------------------------------------------------
    def list_experiments(self) -> Answer:
        from lights_out_dev.sweep.scheduler import known_tasks

        tasks = sorted(known_tasks(self.root))
        plans = []
        for p in sorted((self.root / "sweeps").glob("*.y*ml")):
            try:
                loaded = load_plan(p)
                plans.append({"path": str(p.relative_to(self.root)), "name": loaded.name, "runs": len(loaded.runs),
                              "error": None})
            except PlanError as e:
                plans.append({"path": str(p.relative_to(self.root)), "name": None, "runs": 0, "error": str(e)})
        current = status_mod.current_sweep(self.root, self.cfg, None)
        lines = [f"{len(tasks)} experiment tasks (run one with start_run, or list them in a plan):"]
        lines += _wrap(", ".join(tasks), 20)
        lines.append(f"{len(plans)} plans in sweeps/ (check_plan, then start_sweep):")
        lines += [f"  {p['path']}: " + (f"{p['name']}, {p['runs']} runs" if not p["error"] else f"ERROR {p['error']}")
                  for p in plans[:12]]
        lines.append(f"current sweep: {current or '(none)'}")
        return Answer("\n".join(lines), {"ok": True, "tasks": tasks, "plans": plans, "current_sweep": current})

    def check_plan(self, plan: str) -> Answer:
        try:
            loaded, runs, est = self._plan(plan)
        except AgentError as e:
            return error(str(e), plan=plan)
        blocker = self._ledger_blocker(loaded.name)
        lines = [f"plan {loaded.name} ({loaded.path}): {len(runs)} runs, {loaded.plan.mode}, "
                 f"phases {loaded.phases()}; at most {est['hours']:.2f} {est['unit']}-hours "
                 f"(time limit x {est['unit']}s per run; {est['unknown']} run(s) without a limit)"]
        lines += [_run_line(r) for r in runs[:MAX_LINES - 4]]
        if len(runs) > MAX_LINES - 4:
            lines.append(f"... {len(runs) - (MAX_LINES - 4)} more runs")
        lines.append(blocker["sentence"] if blocker else "start_sweep would start it as it is.")
        return Answer("\n".join(lines), {"ok": True, "name": loaded.name, "path": str(loaded.path), "runs": runs[:200],
                                         "estimate": est, "needs": blocker["needs"] if blocker else None,
                                         "blocker": blocker["sentence"] if blocker else None})

    def status(self, plan: str | None = None) -> Answer:
        data = status_mod.collect(self.root, self.cfg, plan)
        rows = data["runs"]
        shown = rows if len(rows) <= MAX_LINES - 4 else _most_relevant(rows, MAX_LINES - 5)
        lines = [status_mod.render({**data, "runs": shown, "other_runs": data["other_runs"][:3]})]
        text = lines[0].splitlines()
        if len(shown) < len(rows):
            text.insert(1 + len(shown), f"... {len(rows) - len(shown)} more runs (completed/pending) left out")
        slim = {k: data[k] for k in ("sweep", "counts", "gpu_summary", "time")}
        slim["runs"] = [_slim_row(r) for r in shown]
        slim["other_runs"] = [_slim_row(r) for r in data["other_runs"][:3]]
        return Answer("\n".join(text), {"ok": True, **slim, "runs_left_out": len(rows) - len(shown)})

    async def wait_for_event(self, cursor: int | None = None, timeout_s: float = 600.0,
                             kinds: list[str] | None = None, sweep: str | None = None) -> Answer:
        """Block until an event of `kinds` after `cursor` (or `timeout_s`); what else happened meanwhile is
        summarised. `cursor` defaults to the one the last start returned, else the end of the event file."""
        import anyio

        wanted = set(kinds or DECISION_KINDS)
        unknown = sorted(wanted - set(events.KINDS))
        if unknown:
            return error(f"kinds {unknown[0]!r} is not an event kind; use some of {', '.join(events.KINDS)}")
        if cursor is None:
            cursor = self.last_cursor if self.last_cursor is not None else events.cursor(self.root, self.cfg)
        if cursor < 0:
            return error(f"cursor {cursor} is negative; pass a cursor a start or an earlier wait returned")
        timeout_s = max(0.0, min(float(timeout_s), MAX_WAIT_S))
        path = events.events_path(self.root, self.cfg)
        deadline = time.monotonic() + timeout_s
        ours = [la for la in self.launches if la.cursor >= cursor]  # started after the point this wait reads from
        seen: dict[str, int] = {}
        notable: list[str] = []
        while True:
            ended = [la for la in ours if not la.reported and la.proc.poll() is not None]  # polled before reading
            found, cursor = watch.read_after(path, cursor)
            for ev, after in found:
                if sweep and ev.get("sweep") not in (sweep, None):
                    continue
                if ev.get("kind") in wanted:
                    self.last_cursor = after
                    self._seen_exits()
                    return self._event_answer(ev, after, seen, notable)
                seen[ev.get("kind", "?")] = seen.get(ev.get("kind", "?"), 0) + 1
                if ev.get("kind") in ("retry", "gave_up", "timeout", "stopped", "preflight_failed"):  # (failed repeats gave_up)
                    notable.append(watch.describe(ev)[:160])
            if ended:  # what this server started is gone and wrote no awaited event: waiting longer is pointless
                self.last_cursor = cursor
                return self._exit_answer(ended[0], cursor, wanted, seen, notable)
            if time.monotonic() >= deadline:
                break
            await anyio.sleep(WAIT_POLL_S)
        self.last_cursor = cursor
        line = status_mod.summary_line(status_mod.collect(self.root, self.cfg, sweep))
        lines = [f"no {'/'.join(sorted(wanted))} event within {timeout_s:g}s; cursor {cursor} "
                 "(pass it to the next wait_for_event).", line]
        lines += _seen_lines(seen, notable)
        return Answer("\n".join(lines), {"ok": True, "event": None, "cursor": cursor, "timed_out": True,
                                         "seen": seen, "notable": notable[-20:], "status": line})

    def _seen_exits(self) -> None:
        for launch in self.launches:
            if launch.proc.poll() is not None:
                launch.reported = True

    def _exit_answer(self, launch: Launch, cursor: int, wanted: set, seen: dict, notable: list[str]) -> Answer:
        self._seen_exits()
        code = launch.proc.returncode
        try:
            tail = launch.output.read_text(errors="replace").splitlines()[-LOG_LINES:]
        except OSError:
            tail = []
        lines = [f"the process of '{launch.what}' (pid {launch.proc.pid}) exited with code {code} without a "
                 f"{'/'.join(sorted(wanted))} event; cursor {cursor}."]
        lines += _seen_lines(seen, notable)
        lines += [f"--- last {len(tail)} lines of {launch.output} ---"] + [t[:200] for t in tail] if tail else []
        return Answer("\n".join(lines), {"ok": True, "event": None, "cursor": cursor, "timed_out": False,
                                         "exited": {"pid": launch.proc.pid, "code": code, "output": str(launch.output),
                                                    "tail": tail}, "seen": seen, "notable": notable[-20:]})

    def _event_answer(self, ev: dict, cursor: int, seen: dict, notable: list[str]) -> Answer:
        lines = [watch.describe(ev)[:300], f"cursor {cursor} (pass it to the next wait_for_event)"]
        lines += _seen_lines(seen, notable)
        data = {"ok": True, "event": _slim_event(ev), "cursor": cursor, "timed_out": False, "seen": seen,
                "notable": notable[-20:]}
        if ev.get("kind") == "sweep_finished" and ev.get("report"):
            table = _report_table(Path(ev["report"]))
            if table:
                lines += [f"report {ev['report']}:"] + table[:MAX_LINES - len(lines) - 1]
                data["report_table"] = table
        else:
            tail = watch.log_tail(ev, LOG_LINES)
            if tail:
                lines += [f"--- last {len(tail)} lines of the run's log ---"] + [t[:200] for t in tail]
                data["log_tail"] = tail
        return Answer("\n".join(lines), data)

    def diagnose(self, run: str, plan: str | None = None) -> Answer:
        from lights_out_dev.core.policy import decide
        from lights_out_dev.core.signatures import scan_errors
        from lights_out_dev.core.verdicts import Verdict

        try:
            ref = self._run(run, plan)
        except AgentError as e:
            return error(str(e))
        st = ref.state
        if st is None:
            return Answer(f"{ref.label}: pending (not started yet).", {"ok": True, "run": ref.label, "status": "pending"})
        attempts = [{"attempt": a.number, "verdict": a.verdict, "reason": a.reason, "decision": a.decision,
                     "exit_code": a.exit_code, "signal": a.signal, "log": a.log_path} for a in st.attempts]
        last_failed = next((a for a in reversed(st.attempts) if a.verdict and Verdict(a.verdict).is_failure), None)
        evidence: list[str] = []
        if last_failed and last_failed.log_path and Path(last_failed.log_path).is_file():
            with open(last_failed.log_path, errors="replace") as f:
                evidence = [f"{no}: [{cls}] {line.strip()[:160]}" for no, cls, line in scan_errors(f)][-8:]
        if not evidence and last_failed:
            evidence = [t[:160] for t in last_failed.log_tail[-5:]]
        verdict = st.final_verdict or (last_failed.verdict if last_failed else None)
        if st.status == "failed":
            next_step = _fix_hint(verdict)
        elif st.status == "running" and last_failed:
            next_step = "the policy retries it; nothing to do"
        elif st.status == "interrupted":
            next_step = ("it is continued (from its checkpoint) by the next `doit sweep`, or start it now with "
                         "retry_with")
        else:
            next_step = "nothing to do"
        will = None
        if verdict and Verdict(verdict).is_failure and st.status != "failed":
            history = [Verdict(a.verdict) for a in st.attempts if a.verdict]
            d = decide(Verdict(verdict), history, self.cfg.recovery_policy(), self.cfg.max_consecutive_failures,
                       st.spec.num_envs, st.spec.gpus, bool(st.checkpoints))
            will = f"if it fails with {verdict} again: {d.action} ({d.reason})"
        lines = [f"{ref.label}: {st.status}" + (f", verdict {verdict}" if verdict else "")
                 + (f": {st.reason}" if st.reason else "")]
        lines += [f"  attempt {a['attempt']}: {a['verdict'] or 'running'}"
                  + (f" ({a['reason'][:140]})" if a["reason"] else "")
                  + (f" -> {a['decision'][:120]}" if a["decision"] else "") for a in attempts[-8:]]
        if evidence:
            lines.append(f"evidence ({last_failed.log_path}):")
            lines += [f"  {e}" for e in evidence]
        if will:
            lines.append(will)
        lines.append(f"next: {next_step}")
        return Answer("\n".join(lines), {"ok": True, "run": ref.label, "status": st.status, "verdict": verdict,
                                         "reason": st.reason, "attempts": attempts[-8:], "evidence": evidence,
                                         "policy_next": will, "next_step": next_step,
                                         "state_path": str(ref.state_path)})

    def metrics(self, run: str, tags: list[str] | None = None, points: int = 5, plan: str | None = None) -> Answer:
        from lights_out_dev.sweep.report import read_series
        from lights_out_dev.views.read_logs import trend

        try:
            ref = self._run(run, plan)
        except AgentError as e:
            return error(str(e))
        if ref.state is None or not any(a.tb_dir for a in ref.state.attempts):
            return error(f"{ref.label} has no TensorBoard directory yet; wait until it has logged an iteration")
        series = read_series(ref.state)
        metrics = ref.state.spec.trainer.metrics  # the run's own reward/FPS tags (rollout/ep_rew_mean, ...)
        defaults = dict.fromkeys(metrics.resolve(t) for t in DEFAULT_TAGS)
        chosen = list(tags) if tags else [t for t in defaults if t in series] or sorted(series)[:8]
        missing = [t for t in chosen if t not in series]
        points = max(2, min(int(points), 50))
        rows = []
        for tag in chosen[:MAX_LINES - 3]:
            pts = series.get(tag)
            if not pts:
                continue
            step, _, value = pts[-1]
            rows.append({"tag": tag, "step": step, "value": value, "trend": trend(pts[-points:]),
                         "recent": [round(p[2], 6) for p in pts[-points:]]})
        lines = [f"{ref.label}: {len(series)} tags" + (f"; not logged: {', '.join(missing)}" if missing else "")]
        lines += [f"  {r['tag']}: {r['value']:.6g} at step {r['step']} ({r['trend']})" for r in rows]
        return Answer("\n".join(lines), {"ok": True, "run": ref.label, "metrics": rows, "missing": missing,
                                         "available": sorted(series)[:100]})

    # -- starting --------------------------------------------------------------------------------
    def start_sweep(self, plan: str, continue_: bool = False, wipe: bool = False,
                    confirm: str | None = None) -> Answer:
        if confirm:
            return self._confirm(confirm, "sweep")
        if continue_ and wipe:
            return error("pass continue_ or wipe, not both")
        try:
            loaded, runs, est = self._plan(plan)
        except AgentError as e:
            return error(str(e), plan=plan)
        blocker = self._ledger_blocker(loaded.name)
        if blocker and (blocker["needs"] == "wait" or not (continue_ or wipe)):
            return error(blocker["sentence"], plan=plan, needs=blocker["needs"])
        argv = [*self._doit(), "sweep", "--plan", str(loaded.path)] + (["--continue"] if continue_ else []) \
            + (["--wipe"] if wipe else [])
        what = (f"start sweep {loaded.name}: {len(runs)} runs, at most {est['hours']:.2f} {est['unit']}-hours"
                + ("; the other plan's ledger is kept (--continue)" if continue_ else "")
                + ("; the old ledger and state are archived (--wipe)" if wipe else ""))
        return self._offer("sweep", argv, what, _digest(loaded.path), plan=str(loaded.path),
                           extra_lines=[_run_line(r) for r in runs[:MAX_LINES - 6]])

    def start_run(self, task: str, overrides: list[str] | None = None, confirm: str | None = None) -> Answer:
        from lights_out_dev.core import overrides as ov
        from lights_out_dev.run.tasks_index import unknown_task_sentence
        from lights_out_dev.sweep.scheduler import known_tasks

        if confirm:
            return self._confirm(confirm, "run")
        known = known_tasks(self.root)
        if task not in known:
            return error(unknown_task_sentence(task, sorted(known)))
        tokens = list(overrides or [])
        try:
            parsed = ov.parse(tokens)
        except ov.OverrideError as e:
            return error(str(e))
        if parsed.plan or parsed.continue_ or parsed.wipe:
            return error("--plan, --continue and --wipe belong to start_sweep; remove them from the overrides")
        from lights_out_dev.core.command import launch_problem
        from lights_out_dev.host.nvml import gpu_count
        from lights_out_dev.sweep.scheduler import base_spec

        problem = launch_problem(base_spec(self.root, task), self.root, parsed.gpu, gpu_count())
        if problem:
            return error(problem)
        argv = [*self._doit(), task, *tokens]
        return self._offer("run", argv, f"start {task}" + (f" with {' '.join(tokens)}" if tokens else ""),
                           _digest(None))

    def retry_with(self, run: str, overrides: dict | None = None, plan: str | None = None,
                   confirm: str | None = None) -> Answer:
        """Run a finished or stopped run again with changed numbers or trainer flags (a sweep run: the rest of
        its sweep is kept; a task: `doit <task> <overrides>`)."""
        if confirm:
            return self._confirm(confirm, "retry")
        overrides = dict(overrides or {})
        bad = sorted(set(overrides) - set(RUN_FIELDS))
        if bad:
            return error(f"override {bad[0]!r} is not one of {', '.join(RUN_FIELDS)}; trainer flags go in trainer_args")
        try:
            ref = self._run(run, plan)
            tokens = _override_tokens(overrides)
        except AgentError as e:
            return error(str(e))
        if ref.sweep is None:  # a `doit <task>` run: its own overrides
            argv = [*self._doit(), ref.state.task if ref.state else run, *tokens]
            return self._offer("retry", argv, f"rerun {ref.label} with {' '.join(tokens) or 'the same settings'}",
                               _digest(None))
        sw = ref.sweep
        if ref.state is not None and ref.state.status == "running":
            return error(f"{ref.label} is running; stop it first (stop), or wait_for_event for its end")
        live = live_holder(sw.paths)
        if live:
            return error(f"sweep {sw.loaded.name} is being run by process {live}; retry_with works once it has "
                         f"finished: wait_for_event(kinds=['sweep_finished']) and call again")
        argv = [*self._doit(), "sweep", "--plan", str(sw.loaded.path), "--continue"]
        what = (f"rerun {ref.label} of sweep {sw.loaded.name} with {_override_text(overrides) or 'the same settings'}"
                "; its earlier record is archived, the sweep's other runs are kept")
        return self._offer("retry", argv, what, _digest(sw.loaded.path),
                           plan=str(sw.loaded.path),
                           prepare={"state_path": str(ref.state_path), "target": str(sw.paths.target(ref.index)),
                                    "overrides": overrides})

    def _offer(self, kind: str, argv: list[str], what: str, fingerprint: str, plan: str | None = None,
               extra_lines: list[str] | None = None, prepare: dict | None = None) -> Answer:
        if self.read_only:
            return error("this server is read-only (--read-only); start it without --read-only to start work")
        token = secrets.token_hex(4)
        self.pending[token] = Pending(kind, argv, what, fingerprint, time.time() + TOKEN_TTL_S, plan, prepare or {})
        call = {"sweep": "start_sweep", "run": "start_run", "retry": "retry_with"}[kind]
        lines = [f"dry run: would {what}.", *(extra_lines or []),
                 f"command: {' '.join(argv[2:])}", f"to start it: {call}(confirm='{token}') within {TOKEN_TTL_S / 60:.0f} min"]
        return Answer("\n".join(lines), {"ok": True, "dry_run": True, "confirm": token, "command": argv,
                                         "would": what})

    def _confirm(self, token: str, kind: str) -> Answer:
        if self.read_only:
            return error("this server is read-only (--read-only); start it without --read-only to start work")
        p = self.pending.get(token)
        if p is None or p.kind != kind:
            return error(f"confirm={token!r} is not a token of a {kind} dry run of this server; call it without "
                         "confirm first")
        if time.time() > p.expires:
            self.pending.pop(token, None)
            return error(f"confirm={token!r} has expired; make the dry run again")
        if p.plan and _digest(Path(p.plan)) != p.fingerprint:
            self.pending.pop(token, None)
            return error(f"the plan {p.plan} changed since the dry run; make the dry run again")
        self.pending.pop(token, None)
        if p.prepare:
            _prepare_retry(p.prepare)
        cursor = events.cursor(self.root, self.cfg)
        out = self._out_path(kind)
        with open(out, "ab") as f:
            proc = subprocess.Popen(p.argv, cwd=self.root, stdin=subprocess.DEVNULL, stdout=f, stderr=subprocess.STDOUT,
                                    start_new_session=True, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        self.launches.append(Launch(proc, out, p.summary, cursor))
        self.last_cursor = cursor
        lines = [f"started: {p.summary} (pid {proc.pid}, output {out}).",
                 f"cursor {cursor}: wait_for_event(cursor={cursor}) returns at the next decision, even one "
                 "written before the wait starts."]
        return Answer("\n".join(lines), {"ok": True, "started": True, "pid": proc.pid, "cursor": cursor,
                                         "output": str(out), "command": p.argv})

    # -- changing a running run ------------------------------------------------------------------
    def stop(self, run: str | None = None, plan: str | None = None, reason: str = "stopped by the user") -> Answer:
        if self.read_only:
            return error("this server is read-only (--read-only); start it without --read-only to stop runs")
        if run is not None:
            try:
                ref = self._run(run, plan)
            except AgentError as e:
                return error(str(e))
            if ref.state is None or ref.state.status != "running":
                return error(f"{ref.label} is {ref.state.status if ref.state else 'pending'}, not running; "
                             "nothing to stop")
            run_requests.request_stop(ref.state_path, reason)
            return Answer(f"stop requested for {ref.label}: its trainer gets SIGINT (saves a checkpoint), the run is "
                          "marked interrupted; wait_for_event(kinds=['stopped']) confirms it.",
                          {"ok": True, "run": ref.label, "requested": True})
        sw = self._sweep(plan)
        pid = live_holder(sw.paths)
        if not pid:
            return error(f"sweep {sw.loaded.name} is not running; nothing to stop")
        if pid < 0:
            return error(f"sweep {sw.loaded.name}'s lock is held by a process that recorded no pid in "
                         f"{sw.paths.owner}; nothing was signalled - stop it where it was started")
        owner = _owner(sw.paths.owner)
        if not _same_process(pid, owner.get("since")):
            return error(f"process {pid} named in {sw.paths.owner} is not the sweep that took the lock (its start "
                         "time does not match); nothing was signalled")
        os.kill(pid, signal.SIGTERM)
        return Answer(f"sent SIGTERM to sweep {sw.loaded.name} (pid {pid}): its trainers are stopped gracefully and "
                      "marked interrupted; the next `doit sweep` continues them. wait_for_event(kinds=['sweep_finished']) "
                      "confirms it.", {"ok": True, "sweep": sw.loaded.name, "pid": pid})

    def extend_time_limit(self, run: str, time_limit: str, plan: str | None = None) -> Answer:
        if self.read_only:
            return error("this server is read-only (--read-only); start it without --read-only to change runs")
        try:
            ref = self._run(run, plan)
        except AgentError as e:
            return error(str(e))
        st = ref.state
        if st is None or st.status != "running":
            return error(f"{ref.label} is {st.status if st else 'pending'}, not running; a new limit for a run that "
                         "has not started goes in its plan (time_limit) or retry_with(time_limit=...)")
        current = run_requests.time_limit_override(ref.state_path) or st.spec.time_limit_s or self.cfg.monitor.time_limit
        text = time_limit.strip()
        try:
            value = parse_duration(text.lstrip("+"))
        except ValueError:
            value = -1.0
        if value is None or value <= 0:
            return error(f"time_limit {time_limit!r} is not a duration; write e.g. '2h' (new limit) or '+30m' (more time)")
        new = (current or 0.0) + value if text.startswith("+") else value
        used = sum((a.ended_at or time.time()) - a.started_at for a in st.attempts if a.started_at)
        if new <= used:
            return error(f"time_limit {format_duration(new)} is less than the {format_duration(used)} the run has "
                         "used; give more, e.g. '+30m'")
        run_requests.set_time_limit(ref.state_path, new)
        return Answer(f"{ref.label}: time limit {format_duration(current)} -> {format_duration(new)} "
                      f"({format_duration(new - used)} left).", {"ok": True, "run": ref.label, "time_limit_s": new,
                                                                 "previous_s": current, "left_s": new - used})

    def evaluate(self, run: str, checkpoint: str = "final", num_episodes: int = 10, plan: str | None = None) -> Answer:
        from lights_out_dev.run.evaluate import (
            PlayError,
            eval_text,
            evaluate_checkpoint,
            record_in_state,
            resolve_checkpoint,
        )

        if self.read_only:
            return error("this server is read-only (--read-only); start it without --read-only to evaluate")
        try:
            ref = self._run(run, plan)
        except AgentError as e:
            return error(str(e))
        st = ref.state
        if st is None or not st.checkpoints:
            return error(f"{ref.label} has no checkpoint yet; evaluate it after it has saved one")
        run_dir = next((Path(a.tb_dir) for a in reversed(st.attempts) if a.tb_dir), None)
        try:
            ckpt = Path(st.checkpoints[-1]) if checkpoint == "final" else \
                resolve_checkpoint(checkpoint, run_dir, st.checkpoints[-1], self.root)
            record = evaluate_checkpoint(st.spec, ckpt, ["--num_episodes", str(int(num_episodes))], self.cfg,
                                         self.root, f"{ref.label.replace(' ', '_')}-eval")
        except PlayError as e:
            return error(str(e), run=ref.label)
        note = record_in_state(ref.state_path, record)
        text = eval_text(record["metrics"])
        return Answer(f"{ref.label}: {text} on {ckpt.name}" + (f" ({note})" if note else ""),
                      {"ok": True, "run": ref.label, "checkpoint": str(ckpt), "metrics": record["metrics"],
                       "log": record["log"]})

    # -- helpers ------------------------------------------------------------------------------------
    def _doit(self) -> list[str]:
        return [sys.executable, "-m", "doit"]

    def _out_path(self, kind: str) -> Path:
        d = self.cfg.path(self.root, self.cfg.logs_dir) / "agent"
        d.mkdir(parents=True, exist_ok=True)
        return d / f"{time.strftime('%Y%m%d_%H%M%S')}_{kind}_{secrets.token_hex(2)}.out"

    def _plan(self, plan: str):
        from lights_out_dev.host.nvml import gpu_count
        from lights_out_dev.sweep.paths import plan_path
        from lights_out_dev.sweep.scheduler import base_spec, known_tasks

        try:
            loaded = load_plan(plan_path(self.root, self.cfg, plan))
            check_tasks(loaded, known_tasks(self.root))
        except PlanError as e:
            raise AgentError(str(e)) from None
        n_gpu = gpu_count()
        unit = "GPU" if n_gpu else "CPU-slot"
        # what max_iterations counts (iterations or timesteps) is the task's trainer profile's: once per task
        progress_unit = {task: base_spec(self.root, task).trainer.observe.unit_label
                         for task in {r.task for r in loaded.runs if r.task}}
        runs, hours, unknown = [], 0.0, 0
        for r in loaded.runs:
            gpus = r.gpus if r.task else ((n_gpu if r.promotion.gpus == "all" else r.promotion.gpus) if n_gpu
                                          else r.promotion.cpu_ranks)
            limit = r.time_limit_s if r.time_limit_s is not None else self.cfg.monitor.time_limit
            if limit is None:
                unknown += 1
            else:
                hours += limit * max(1, gpus if n_gpu else 1) / 3600.0
            runs.append({"index": r.index, "phase": r.phase, "task": r.task or "(promotion)", "num_envs": r.num_envs,
                         "max_iterations": r.max_iterations, "seed": r.seed, "varied": varied_text(r),
                         "progress_unit": progress_unit.get(r.task, UNIT_LABELS["iteration"]),
                         "trainer_args": r.trainer_args, "gpus": gpus, "unit": unit, "time_limit_s": limit,
                         "smoke": r.smoke})
        return loaded, runs, {"hours": round(hours, 3), "unit": unit, "unknown": unknown, "gpus_here": n_gpu}

    def _ledger_blocker(self, name: str) -> dict | None:
        """Why `doit sweep` of plan `name` would be refused now, read-only (the same rules as Sweep.prepare)."""
        from lights_out_dev.sweep import ledger
        from lights_out_dev.sweep.paths import ledger_path, paths_for

        live = live_holder(paths_for(self.root, self.cfg, name))
        if live:
            return {"needs": "wait", "sentence": f"sweep {name} is being run by process {live} now; "
                                                 "wait_for_event for its sweep_finished, or stop it"}
        path = ledger_path(self.root, self.cfg)
        try:
            existing = ledger.sweep_name(path.read_text())
        except (OSError, UnicodeDecodeError):
            existing = None
        if existing and existing != name:
            if live_holder(paths_for(self.root, self.cfg, existing)):
                return {"needs": "wait", "sentence": f"the ledger {path} belongs to sweep '{existing}', which is "
                                                     "running now; wait for it or set a different ledger"}
            return {"needs": "continue_or_wipe",
                    "sentence": f"the ledger {path} belongs to sweep '{existing}'; start_sweep with continue_=true "
                                "keeps that sweep's state, wipe=true archives it first"}
        return None

    def _sweep(self, plan: str | None):
        from lights_out_dev.sweep.paths import paths_for
        from lights_out_dev.sweep.scheduler import Sweep

        name = status_mod.current_sweep(self.root, self.cfg, plan)
        if not name:
            raise AgentError("no sweep has been started here; name one with plan=")
        try:
            meta = json.loads(paths_for(self.root, self.cfg, name).meta.read_text())
            loaded = load_plan(self.cfg.path(self.root, meta["plan"]))
        except (OSError, ValueError, KeyError, PlanError) as e:
            raise AgentError(f"sweep {name}'s plan cannot be read ({e}); pass plan= with its file") from None
        return Sweep(loaded, self.cfg, self.root, status_line=lambda _: None)

    def _run(self, run: str | int, plan: str | None) -> RunRef:
        """A sweep run by number ('3', 3) in `plan` (default: the current sweep), or a task's own run by name."""
        from lights_out_dev.run.supervisor import state_path_for

        text = str(run).strip()
        if text.isdigit():
            sw = self._sweep(plan)
            index = int(text)
            if not 1 <= index <= len(sw.loaded.runs):
                raise AgentError(f"run {index} is not in sweep {sw.loaded.name} (runs 1-{len(sw.loaded.runs)})")
            path = sw.paths.state(index)
            return RunRef(f"run {index} ({sw.loaded.run(index).task or 'promotion'})", path, _load(path), sw, index)
        path = state_path_for(self.root, self.cfg, text)
        st = _load(path)
        if st is None:
            raise AgentError(f"'{text}' is neither a run number of the current sweep nor a task with a run state "
                             f"({path} does not exist); status lists the runs")
        return RunRef(text, path, st)

    def close(self) -> None:
        """Reap started processes that have ended (they run on after this server exits otherwise)."""
        for launch in self.launches:
            launch.proc.poll()


# --- pure helpers ------------------------------------------------------------------------------------

def _load(path: Path) -> RunState | None:
    try:
        return load_state(path)
    except (ValueError, OSError):
        return None


def _wrap(text: str, per_line: int) -> list[str]:
    items = [t for t in text.split(", ") if t]
    return ["  " + ", ".join(items[i:i + per_line]) for i in range(0, len(items), per_line)]


def _run_line(r: dict) -> str:
    bits = [f"{r['index']:>2} p{r['phase']} {r['task']}", f"{r['num_envs'] or '-'} envs"]
    if r["max_iterations"]:
        bits.append(f"{r['max_iterations']} {r['progress_unit']}")
    if r["seed"] is not None:
        bits.append(f"seed {r['seed']}")
    bits.append(f"{r['gpus']} {r['unit']}" + ("s" if r["gpus"] != 1 else ""))
    bits.append(format_duration(r["time_limit_s"]))
    if r["trainer_args"]:
        bits.append(" ".join(r["trainer_args"])[:60])
    return ", ".join(bits)


def _most_relevant(rows: list[dict], n: int) -> list[dict]:
    """Running, failed and interrupted runs first, then the rest in plan order, at most n, in plan order. Pure."""
    order = {"running": 0, "failed": 1, "interrupted": 2, "timeout": 3}
    keep = sorted(rows, key=lambda r: (order.get(r["status"], 9), r["index"] or 0))[:n]
    return sorted(keep, key=lambda r: r["index"] or 0)


def _slim_row(r: dict) -> dict:
    return {k: r.get(k) for k in ("index", "task", "params", "status", "where", "iteration", "total", "unit",
                                  "steps_per_s", "reward", "elapsed_s", "limit_s", "attempts", "reason", "silent_s")}


def _slim_event(ev: dict) -> dict:
    """The event without its bulky fields (argv, full metrics)."""
    return {k: v for k, v in ev.items() if k not in ("argv", "final", "progress")}


def _seen_lines(seen: dict, notable: list[str]) -> list[str]:
    if not seen:
        return []
    lines = ["meanwhile: " + ", ".join(f"{n} {k}" for k, n in sorted(seen.items()))]
    return lines + [f"  {n}" for n in notable[-10:]]


def _report_table(path: Path) -> list[str]:
    try:
        return [line for line in path.read_text().splitlines() if line.startswith("|")]
    except OSError:
        return []


def _fix_hint(verdict: str | None) -> str:
    return {
        "config_error": "fix the configuration or code the evidence names; retry_with(run, overrides) reruns it",
        "oom": "retry_with(run, {'num_envs': <smaller>}) reruns it with fewer envs",
        "stall": "look at the log tail (a hang or a deadlock); retry_with reruns it",
        "nccl": "check the GPUs and interconnect (gpu_check); retry_with reruns it",
        "crash": "the evidence names where it died; retry_with reruns it",
    }.get(verdict or "", "retry_with reruns it")


def _override_tokens(overrides: dict) -> list[str]:
    tokens: list[str] = []
    for key in ("num_envs", "max_iterations", "seed"):
        if overrides.get(key) is not None:
            if not isinstance(overrides[key], int) or overrides[key] < (0 if key == "seed" else 1):
                raise AgentError(f"{key} {overrides[key]!r} is not a valid count; give a positive integer")
            tokens += [f"--{key}", str(overrides[key])]
    if overrides.get("time_limit") is not None:
        try:
            parse_duration(overrides["time_limit"])
        except ValueError as e:
            raise AgentError(f"time_limit {overrides['time_limit']!r}: {e}") from None
        tokens += ["--time_limit", str(overrides["time_limit"])]
    args = overrides.get("trainer_args") or []
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise AgentError("trainer_args must be a list of strings, e.g. ['--lr', '3e-4']")
    return tokens + list(args)


def _override_text(overrides: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in overrides.items() if v not in (None, []))


def _prepare_retry(prep: dict) -> None:
    """Before a sweep run is rerun: its overrides beside its state, its old record archived, its target gone
    (so the sweep's doit tasks are no longer up to date and the scheduler starts it again)."""
    state_path = Path(prep["state_path"])
    run_requests.set_overrides(state_path, prep["overrides"])
    if state_path.exists():
        archive = state_path.parent / "archive" / f"{state_path.stem}_{time.strftime('%Y%m%d_%H%M%S')}.json"
        archive.parent.mkdir(parents=True, exist_ok=True)
        os.replace(state_path, archive)
    Path(prep["target"]).unlink(missing_ok=True)


def _digest(plan: Path | None) -> str:
    """The plan file's content hash: a confirmation is refused when the plan changed since its dry run."""
    return hashlib.sha256(Path(plan).read_bytes()).hexdigest()[:16] if plan and Path(plan).exists() else "-"


def _owner(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _same_process(pid: int, since: float | None) -> bool:
    """`pid` is the process that recorded `since` (when it took the sweep lock): it must have started
    before then. A pid reused by a later process started after it."""
    from lights_out_dev.host import procs

    start = procs.start_time(pid)
    return since is not None and start is not None and start <= float(since) + 1.0
