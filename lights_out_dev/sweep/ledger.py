"""The sweep ledger: markdown rendered purely from the plan and the run states.

The run-state JSON files are the truth; this file is a view. `render` is pure, so a ledger that
was deleted or edited by hand is simply rebuilt at the next update. `write` is the only I/O:
under a file lock (several threads and processes update it) and atomic (tmp + rename), so a
reader never sees half a ledger.
"""
from __future__ import annotations

import re
import time
from pathlib import Path

from filelock import FileLock

from lights_out_dev.core.config import format_duration
from lights_out_dev.core.state import RunState, atomic_write_text, status_of
from lights_out_dev.core.verdicts import counts_text, status_counts
from lights_out_dev.run.evaluate import eval_text
from lights_out_dev.sweep.plan import LoadedPlan, PlannedRun, varied, varied_text

HEADER = "| # | Phase | Task | Envs | GPUs | Time Limit | Status | FPS | Reward | Notes |"
RULE = "|---|-------|------|------|------|------------|--------|-----|--------|-------|"
_SWEEP_RE = re.compile(r"^# Sweep: (.+)$", re.MULTILINE)
# classify()'s reason for a stop on request, and the supervisor's when it was itself stopped (Ctrl-C, SIGTERM)
USER_STOP_REASONS = ("stopped on request", "the supervisor was stopped")


def stamp(t: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def _num(v: float | None, digits: int = 0) -> str:
    if v is None:
        return "-"
    return f"{v:.{digits}f}" if digits else f"{v:.0f}"


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def effective_envs(state: RunState | None, run: PlannedRun) -> int | None:
    """num_envs of the latest attempt (the policy may have halved it), else the planned value."""
    if state and state.current:
        argv = state.current.argv
        for i in range(len(argv) - 1, -1, -1):
            if argv[i] == "--num_envs" and i + 1 < len(argv):
                try:
                    return int(argv[i + 1])
                except ValueError:
                    break
            if argv[i].startswith("--num_envs="):
                return int(argv[i].split("=", 1)[1])
    if state:
        return state.spec.num_envs
    return run.num_envs


def gpus_text(state: RunState | None, run: PlannedRun) -> str:
    if state and state.current and state.current.started_at:
        gpus = state.current.gpus
        return "CPU" if gpus is None else "GPU " + ",".join(str(g) for g in gpus)
    if run.promotion:
        p = run.promotion
        return "all GPUs" if p.gpus == "all" else f"{p.gpus} GPUs"
    return f"{run.gpus} GPU" + ("s" if run.gpus > 1 else "")


def task_text(state: RunState | None, run: PlannedRun) -> str:
    if state:
        return state.task
    if run.task:
        return run.task
    return f"(best of phase {run.promotion.from_phase}){run.promotion.suffix}" if run.promotion else "-"


def user_stopped(attempt) -> bool:
    """The attempt ended because a person (or an agent) asked: not a failure of the run."""
    return attempt.verdict == "killed" and (attempt.reason or "").startswith(USER_STOP_REASONS)


def failed_attempts(state: RunState) -> list:
    return [a for a in state.attempts if a.verdict and a.verdict not in ("completed", "timeout", "running", "healthy",
                                                                         "pruned", "plateau")
            and not user_stopped(a)]


def retries(state: RunState) -> list[str]:
    """One entry per failed attempt: 'attempt 1: crash (reason) -> retry'."""
    out = []
    for a in state.attempts:
        if user_stopped(a):
            out.append(f"attempt {a.number}: stopped by the user ({a.reason})")
            continue
        if a not in failed_attempts(state):
            continue
        what = f"attempt {a.number}: {a.verdict}"
        if a.reason:
            what += f" ({a.reason})"
        if a.decision:
            what += f" -> {a.decision}"
        out.append(what)
    return out


def notes(state: RunState | None, run: PlannedRun) -> str:
    parts = []
    if varied_text(run, skip=("num_envs",)):  # the Envs column shows num_envs
        parts.append(varied_text(run, skip=("num_envs",)))
    if run.notes:
        parts.append(run.notes)
    if varied(run):
        parts.append(varied(run))
    if state:
        fails = failed_attempts(state)
        if fails:
            parts.append("failed attempts: " + ", ".join(a.verdict for a in fails))
        if any(user_stopped(a) for a in state.attempts):
            parts.append("stopped by the user")
        if state.status in ("failed", "timeout", "pruned") and state.reason:
            parts.append(state.reason)
        if state.smoke and not (state.reason or "").startswith("smoke "):  # a failed gate is the reason
            parts.append(f"smoke {state.smoke}")
        elif state.spec.smoke:
            parts.append("smoke gate")
        evaluated = eval_text(state.evaluation.get("metrics"))
        if evaluated:
            parts.append(evaluated)
    elif run.smoke:
        parts.append("smoke gate")
    return _cell("; ".join(parts))


def plan_row(run: PlannedRun, state: RunState | None) -> str:
    final = state.final if state else None
    fps = final.steps_per_s if final and final.steps_per_s is not None else None
    reward = final.mean_reward if final and final.mean_reward is not None else None
    if state and fps is None and state.current:
        fps = state.current.progress.steps_per_s
        reward = state.current.progress.mean_reward if reward is None else reward
    limit = state.spec.time_limit_s if state else run.time_limit_s
    envs = effective_envs(state, run)
    cells = [str(run.index), str(run.phase), _cell(task_text(state, run)), str(envs) if envs else "-",
             gpus_text(state, run), format_duration(limit), status_of(state), _num(fps), _num(reward, 2),
             notes(state, run)]
    return "|" + "|".join(f" {c} " if c else " " for c in cells) + "|"


def _rel(path: str | None, root: str | None) -> str:
    """A path under the project root shown relative to it (shorter, same on every clone)."""
    if not path:
        return "-"
    if root and path.startswith(root.rstrip("/") + "/"):
        return path[len(root.rstrip("/")) + 1:]
    return path


def run_section(run: PlannedRun, state: RunState, root: str | None = None) -> list[str]:
    envs = effective_envs(state, run)
    title = f"### Run {run.index}: {state.task} ({envs if envs else '?'} envs, {gpus_text(state, run)})"
    first = state.attempts[0] if state.attempts else None
    last = state.current
    smoke = state.smoke_record  # a run that failed its smoke gate has no attempt: show the gate
    lines = [title, f"- Started: {stamp(first.started_at if first else smoke.get('started_at'))}"]
    if state.status in ("completed", "timeout", "failed", "skipped", "pruned"):
        why = state.final_verdict or state.status
        if state.reason and state.status != "completed":
            why += f": {state.reason}"
        lines.append(f"- Finished: {stamp(last.ended_at if last else state.updated_at)} ({_cell(why)})")
    else:
        lines.append(f"- Finished: - ({state.status})")
    lines += [
        f"- Stdout log: {_rel(last.log_path if last else smoke.get('log_path'), root)}",
        f"- TB dir: {_rel(last.tb_dir if last else None, root)}",
        f"- Final FPS: {_num(state.final.steps_per_s)}",
        f"- Final reward: {_num(state.final.mean_reward, 2)}",
        f"- Peak VRAM: {_num(state.peak_vram_mb) + 'MB' if state.peak_vram_mb is not None else '-'}",
    ]
    tracker = next((a.tracker_url for a in reversed(state.attempts) if a.tracker_url), None)
    if tracker:
        lines.append(f"- Tracker run: {tracker}")
    fails = retries(state)
    lines.append(f"- Retries: {max(len(state.attempts) - 1, 0)}")
    lines += [f"  - {_cell(f)}" for f in fails]
    jobs = [a.job_id for a in state.attempts if a.job_id]
    if jobs:
        lines.append(f"- Slurm job ids: {', '.join(jobs)}")
    if state.smoke:
        how = f"log {_rel(smoke.get('log_path'), root)}"
        if smoke.get("reused"):
            how = f"reused: passed earlier for the same command, {how}"
        lines.append(f"- Smoke: {state.smoke} ({how})")
    evaluated = state.evaluation
    if evaluated and eval_text(evaluated.get("metrics")):
        lines.append(f"- Eval: {eval_text(evaluated['metrics'])} of {_rel(evaluated.get('checkpoint'), root)}")
    if state.status == "failed" and last and last.log_tail:
        lines.append("- Last log lines:")
        lines += ["  ```"] + [f"  {t}" for t in last.log_tail[-10:]] + ["  ```"]
    return lines + [""]


def render(plan: LoadedPlan, states: dict[int, RunState], *, started_at: float | None = None,
           state_dir: str | None = None, report: str | None = None, root: str | None = None,
           compute=None) -> str:
    """Ledger markdown for `plan` given the run states by run index. Pure. `compute`: compute.SweepCompute."""
    out = [f"# Sweep: {plan.name}", f"Started: {stamp(started_at)}"]
    out.append(f"Plan: {_rel(str(plan.path), root)} ({plan.plan.mode})" + (f" · Report: {report}" if report else ""))
    if state_dir:
        out.append(f"State: {state_dir} (this file is rendered from it; edits are overwritten)")
    out.append("Progress: " + counts_text(status_counts(status_of(states.get(run.index)) for run in plan.runs)))
    if compute is not None:
        from lights_out_dev.sweep.compute import seconds_text

        budget = plan.plan.budget
        out.append(f"Compute: {seconds_text(compute.busy_s, compute.gpu)}"
                   + (f" of a {seconds_text(budget, compute.gpu)} budget" if budget else "")
                   + f", idle {seconds_text(compute.idle_s, compute.gpu)} (compute.json)")
    out += ["", "## Run Plan", HEADER, RULE]
    out += [plan_row(run, states.get(run.index)) for run in plan.runs]
    out += ["", "## Run Log"]
    for run in plan.runs:
        state = states.get(run.index)
        if state and (state.attempts or state.smoke):  # a failed smoke gate ends a run with no attempt
            out += run_section(run, state, root)
    return "\n".join(out).rstrip() + "\n"


def sweep_name(text: str) -> str | None:
    """The plan name in an existing ledger's '# Sweep: <name>' header, or None."""
    m = _SWEEP_RE.search(text)
    return m.group(1).strip() if m else None


def write(path: Path, text: str, lock_path: Path) -> None:
    """Replace the ledger atomically under its lock (other sweeps' threads/processes write it too)."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path), timeout=60):
        atomic_write_text(path, text)
