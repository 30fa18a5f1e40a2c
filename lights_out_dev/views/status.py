"""One compact screen about the current sweep: `python -m lights_out_dev.cli.status [--json] [--plan P]`.

Per run: state, GPU, progress/total (in its trainer's unit: `it` or `steps`), steps/s, reward,
elapsed/limit, attempts; then the runs started outside the sweep (`doit <task>`) that are running; then
the GPUs (NVML) or "no GPU: N CPU slots". Reads only the run-state JSON files, never the trainer: cheap to call.
The sweep is --plan (a plan file or a plan name), else the last one started
(<logs_dir>/sweeps/current).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

from lights_out_dev.core.config import (
    ProjectConfig,
    format_duration,
)
from lights_out_dev.core.state import RunState, load_state
from lights_out_dev.core.verdicts import counts_text, status_counts
from lights_out_dev.host.nvml import NvmlUnavailable, query_gpus
from lights_out_dev.sweep.plan import varied, varied_text


def _clock(s: float | None) -> str:
    if s is None:
        return "-"
    s = int(s)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


SILENT_SHOWN_S = 30.0  # a running trainer quiet for longer gets "silent for N s" in its line


def log_age_s(log: str | None, now: float) -> float | None:
    """Seconds since the run's log was last written (None without a log)."""
    try:
        return max(0.0, now - os.stat(log).st_mtime) if log else None
    except OSError:
        return None


def run_row(index: int | None, st: RunState | None, task: str, now: float, params: str = "",
            silent_s: float | None = None) -> dict:
    """The status of one run as plain data (also the --json shape). Pure given `now` and `silent_s` (seconds
    since a running run's log last grew). `params`: what tells it apart from its grid siblings."""
    if st is None:
        return {"index": index, "task": task, "params": params, "status": "pending", "where": "-", "iteration": None,
                "total": None, "unit": "it", "steps_per_s": None, "reward": None, "elapsed_s": None, "limit_s": None, "attempts": 0,
                "silent_s": None}
    a = st.current
    p = a.progress if a else None
    running = st.status == "running"
    elapsed = sum((x.ended_at or (now if running else x.started_at)) - x.started_at
                  for x in st.attempts if x.started_at) if st.attempts else None
    return {
        "index": index, "task": st.task, "params": params, "status": st.status,
        "where": "-" if not a else ("cpu" if a.gpus is None else "gpu" + ",".join(map(str, a.gpus))),
        "iteration": p.iteration if p else None, "total": p.total if p else None,
        "unit": st.spec.trainer.observe.unit_label,  # what its progress counts: it(erations) or (time)steps
        "steps_per_s": (p.steps_per_s if p and p.steps_per_s is not None else st.final.steps_per_s),
        "reward": (p.mean_reward if p and p.mean_reward is not None else st.final.mean_reward),
        "elapsed_s": elapsed, "limit_s": st.spec.time_limit_s, "attempts": len(st.attempts),
        "reason": st.reason if st.status in ("failed", "timeout", "skipped", "interrupted") else None,
        "log": a.log_path if a else None,
        "silent_s": silent_s if running else None,
    }


def progress_text(r: dict) -> str:
    """'it 12/100' or 'steps 2048/50000': done/total in the unit the run's trainer counts."""
    return (f"{r.get('unit', 'it')} {r['iteration'] if r['iteration'] is not None else '-'}/"
            f"{r['total'] if r['total'] is not None else '-'}")


def format_row(r: dict) -> str:
    it = progress_text(r)
    sps = "-" if r["steps_per_s"] is None else f"{r['steps_per_s']:.0f}"
    reward = "-" if r["reward"] is None else f"{r['reward']:.3g}"
    idx = f"{r['index']:>2}" if r["index"] is not None else " *"
    who = f"{r['task']} {r['params']}" if r.get("params") else r["task"]
    line = (f"{idx} {r['status']:<11} {who:<28} {r['where']:<6} {it:<10} {sps:>7} steps/s  "
            f"reward {reward:<7} {_clock(r['elapsed_s'])}/{format_duration(r['limit_s'])}  a{r['attempts']}")
    if silence(r):
        line += f"  {silence(r)}"
    if r.get("reason"):
        line += f"  ({r['reason'][:80]})"
    return line


def silence(r: dict) -> str:
    """'silent for 95 s' for a running run whose log has not grown for SILENT_SHOWN_S, else ''."""
    quiet = r.get("silent_s")
    return f"silent for {quiet:.0f} s" if quiet is not None and quiet >= SILENT_SHOWN_S else ""


def _row(index: int | None, st: RunState | None, task: str, now: float, params: str = "") -> dict:
    """run_row with the log's age read from disk."""
    log = st.current.log_path if st and st.current else None
    return run_row(index, st, task, now, params, log_age_s(log, now) if st and st.status == "running" else None)


def gpu_summary(root: Path, cfg: ProjectConfig) -> tuple[str, list[dict]]:
    try:
        gpus = query_gpus()
    except NvmlUnavailable:
        gpus = []
    if not gpus:
        busy = _cpu_slots_in_use(root, cfg)
        return f"no GPU: {cfg.cpu_slots} CPU slots ({busy} in use)", []
    rows = [{"index": g.index, "name": g.name, "util_pct": g.util_pct, "mem_used_mb": g.mem_used_mb,
             "mem_total_mb": g.mem_total_mb, "power_w": g.power_w, "processes": len(g.processes)} for g in gpus]
    text = " | ".join(f"GPU{g.index} {g.util_pct or 0:.0f}% {g.mem_used_mb / 1024:.1f}/{g.mem_total_mb / 1024:.0f}GB"
                      f" {g.power_w or 0:.0f}W {len(g.processes)}p" for g in gpus)
    return text, rows


def _cpu_slots_in_use(root: Path, cfg: ProjectConfig) -> int:
    from filelock import FileLock, Timeout

    from lights_out_dev.host.gpu_lock import locks_dir

    ldir = locks_dir(root, cfg)
    used = 0
    for k in range(cfg.cpu_slots):
        path = ldir / f"cpu{k}.lock"
        if not path.exists():
            continue
        lock = FileLock(str(path), timeout=0, thread_local=False)
        try:
            lock.acquire(timeout=0)
            lock.release()
        except Timeout:
            used += 1
    return used


def current_sweep(root: Path, cfg: ProjectConfig, plan: str | None) -> str | None:
    if plan:
        p = cfg.path(root, plan)
        if p.suffix in (".yaml", ".yml") and p.exists():
            from lights_out_dev.sweep.plan import load_plan

            return load_plan(p).name
        return plan
    try:
        return (cfg.path(root, cfg.logs_dir) / "sweeps" / "current").read_text().strip() or None
    except OSError:
        return None


def collect(root: Path, cfg: ProjectConfig, plan: str | None = None, now: float | None = None) -> dict:
    """Everything status shows, as data."""
    from lights_out_dev.sweep.paths import paths_for
    from lights_out_dev.sweep.scheduler import Sweep

    now = now or time.time()
    name = current_sweep(root, cfg, plan)
    runs: list[dict] = []
    compute = None
    if name:
        sp = paths_for(root, cfg, name)
        loaded = None
        try:
            from lights_out_dev.sweep.plan import load_plan

            meta = json.loads(sp.meta.read_text())
            loaded = load_plan(cfg.path(root, meta["plan"]))
        except Exception:  # plan moved/edited: show what the state files say
            loaded = None
        if loaded is not None and loaded.name == name:
            sweep = Sweep(loaded, cfg, root, status_line=lambda _: None)
            states = sweep.states()
            # a search run's parameters and seed, else what tells its grid run apart from its siblings
            runs = [_row(r.index, states.get(r.index), r.task or "(promotion)", now, varied(r) or varied_text(r))
                    | {"varied": varied(r) or None} for r in loaded.runs]
            compute = sweep.compute().as_dict()  # GPU-seconds (slot-seconds without GPUs) per run and in all
        else:
            for f in sorted(sp.runs.glob("[0-9]*.json")) if sp.runs.exists() else []:
                st = _safe_load(f)
                if st:
                    runs.append(_row(st.index, st, st.task, now, f"seed={st.spec.seed}" if st.spec.seed is not None else ""))
    others = []
    single = cfg.path(root, cfg.logs_dir) / "runs"
    for f in sorted(single.glob("*.json")) if single.exists() else []:
        st = _safe_load(f)
        if st and st.status == "running":
            others.append(_row(None, st, st.task, now))
    gpu_text, gpus = gpu_summary(root, cfg)
    return {"sweep": name, "counts": status_counts(r["status"] for r in runs), "runs": runs, "other_runs": others, "gpus": gpus, "gpu_summary": gpu_text,
            "time": now, "compute": compute}


def _safe_load(path: Path) -> RunState | None:
    try:
        return load_state(path)
    except Exception:  # a state being replaced right now: skip it this time
        return None


def summary_line(data: dict) -> str:
    counts = counts_text(data["counts"]) or "no runs"
    active = [r for r in data["runs"] + data["other_runs"] if r["status"] == "running"]
    bits = [" ".join(b for b in (r["task"], r.get("params"), progress_text(r), silence(r)) if b) for r in active][:4]
    head = f"sweep {data['sweep']}: {counts}" if data["sweep"] else f"no sweep: {len(active)} run(s) running"
    return f"{time.strftime('%H:%M:%S')} {head}" + (f" | {'; '.join(bits)}" if bits else "") + f" | {data['gpu_summary']}"


def render(data: dict) -> str:
    lines = [f"sweep {data['sweep'] or '(none)'}: " + (counts_text(data["counts"]) or "no runs")]
    lines += [format_row(r) for r in data["runs"]]
    if data["other_runs"]:
        lines.append("other runs:")
        lines += [format_row(r) for r in data["other_runs"]]
    lines.append(data["gpu_summary"])
    return "\n".join(lines)
