"""Sweep report: `<logs_dir>/sweeps/<plan>/report.md` plus, per run, metrics.csv, plots and a copy of
its resolved configuration. Built at the end of a sweep and on demand (`doit sweep_report`).

    report.md                    comparative table + links (the ledger links here)
    reward.png, throughput.png   reward and FPS over steps, one line per run (each run's tags are its
                                 trainer profile's `metrics`: Train/mean_reward, rollout/ep_rew_mean, ...)
    artifacts/NN_<task>/         metrics.csv (every scalar: tag,step,wall_time,value), spec.json (the
                                 RunSpec), argv.txt (last attempt), params/*.yaml (trainer's copy)

`table` is pure (table-tested); the rest reads TensorBoard files and writes files.
"""
from __future__ import annotations

import csv
import io
import json
import shutil
from pathlib import Path

from lights_out_dev.core.state import RunState, atomic_write_text
from lights_out_dev.core.tb import read_scalars
from lights_out_dev.sweep.ledger import effective_envs, gpus_text, notes, stamp
from lights_out_dev.sweep.plan import LoadedPlan, safe_name

REWARD = "Train/mean_reward"
FPS = "Perf/total_fps"
EPISODE = "Train/mean_episode_length"

Series = dict[str, list[tuple[int, float, float]]]  # tag -> [(step, wall_time, value)]

COLUMNS = ("#", "Task", "Envs", "GPUs", "Status", "Attempts", "Wall time", "Steps/s", "Final reward",
           "Best reward", "Episode length", "Peak VRAM", "Verdict", "Notes")
NOTES_MAX = 120  # the ledger has the full notes; the table stays one screen wide
EVAL_COLUMNS = ("Eval return", "Eval episode length", "Eval success")


def _f(v: float | None, digits: int = 2) -> str:
    return "-" if v is None else f"{v:.{digits}f}"


def _short(text: str) -> str:
    text = text.replace("\\|", "|")  # the ledger's cell escaping; the table escapes every cell itself
    return text if len(text) <= NOTES_MAX else text[:NOTES_MAX - 3] + "..."


def wall_time_s(state: RunState) -> float | None:
    spans = [a.ended_at - a.started_at for a in state.attempts if a.started_at and a.ended_at]
    return sum(spans) if spans else None


def summary(state: RunState, series: Series) -> dict:
    """Numbers of one run for the table: TensorBoard first, the run state's stdout numbers second."""
    tags = state.spec.trainer.metrics
    rewards = [v for _, _, v in series.get(tags.resolve(REWARD), [])]
    fps = [v for _, _, v in series.get(tags.resolve(FPS), [])]
    episode = [v for _, _, v in series.get(tags.resolve(EPISODE), [])]
    best = max(rewards) if rewards else state.best_reward
    return {
        "final_reward": rewards[-1] if rewards else state.final.mean_reward,
        "best_reward": best,
        "steps_per_s": (fps[-1] if fps else None) or state.final.steps_per_s,
        "episode_length": episode[-1] if episode else state.final.mean_episode_length,
        "wall_s": wall_time_s(state),
    }


def table(plan: LoadedPlan, states: dict[int, RunState], series: dict[int, Series],
          evals: dict[int, dict] | None = None) -> str:
    """The comparative markdown table (all planned runs; runs not started show as pending). Pure.

    `evals` (run -> eval metrics, see evaluate.py) adds the eval columns when any run has one."""
    columns = COLUMNS + (EVAL_COLUMNS if evals else ())
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for run in plan.runs:
        st = states.get(run.index)
        if st is None:
            cells = [str(run.index), run.task or "(promotion)", str(run.num_envs or "-"), gpus_text(None, run),
                     "pending", "0"] + ["-"] * 7 + [_short(notes(None, run)) or "-"]
        else:
            s = summary(st, series.get(run.index, {}))
            wall = "-" if s["wall_s"] is None else f"{s['wall_s']:.0f}s"
            cells = [str(run.index), st.task, str(effective_envs(st, run) or "-"), gpus_text(st, run), st.status,
                     str(len(st.attempts)), wall, _f(s["steps_per_s"], 0), _f(s["final_reward"]),
                     _f(s["best_reward"]), _f(s["episode_length"], 1),
                     "-" if st.peak_vram_mb is None else f"{st.peak_vram_mb:.0f}MB",
                     st.final_verdict or "-", _short(notes(st, run)) or "-"]
        if evals:
            ev = evals.get(run.index) or {}
            ret = "-" if ev.get("mean_return") is None else f"{_f(ev['mean_return'])} ± {_f(ev.get('std_return'))}"
            cells += [ret, _f(ev.get("mean_episode_length"), 1), _f(ev.get("success_rate"))]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def eval_metrics(state: RunState) -> dict | None:
    """The run's evaluation: recorded by a play task in its state, else found beside its checkpoints."""
    from lights_out_dev.run.evaluate import read_eval

    recorded = state.evaluation.get("metrics")
    if recorded:
        return recorded
    tb = next((a.tb_dir for a in reversed(state.attempts) if a.tb_dir), None)
    return read_eval(tb)


def read_series(state: RunState) -> Series:
    """Every scalar of every attempt's TensorBoard dir, merged by step (a resumed attempt continues)."""
    merged: Series = {}
    dirs = list(dict.fromkeys(a.tb_dir for a in state.attempts if a.tb_dir))
    for d in dirs:
        if not Path(d).exists():
            continue
        for tag, points in _scalars(d).items():
            merged.setdefault(tag, []).extend(points)
    for tag in merged:
        by_step = {p[0]: p for p in sorted(merged[tag], key=lambda p: p[1])}  # later attempt wins a step
        merged[tag] = sorted(by_step.values())
    return merged


def _scalars(run_dir: str) -> Series:
    return {t: [tuple(p) for p in pts] for t, pts in read_scalars(run_dir).items()}


def metrics_csv(series: Series) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["tag", "step", "wall_time", "value"])
    for tag in sorted(series):
        for step, wall, value in series[tag]:
            w.writerow([tag, step, f"{wall:.3f}", repr(float(value))])
    return buf.getvalue()


def _pyplot():
    """matplotlib's pyplot on the headless Agg backend, or None where matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")  # no display on a headless box
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    return plt


def _save(plt, fig, path: Path) -> None:
    """Write the figure atomically (a reader never sees half a PNG) and free it."""
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=90)
    plt.close(fig)
    tmp.replace(path)


def _plot(path: Path, title: str, tags: dict[int, str], series: dict[int, Series], labels: dict[int, str],
          xlabel: str) -> bool:
    """One line per run of its own tag (`tags`: run -> the tag its trainer profile names) over its steps
    (`xlabel`: what they count, iterations or timesteps)."""
    if not any(series.get(i, {}).get(tags[i]) for i in series):
        return False
    plt = _pyplot()
    if plt is None:
        return False
    from matplotlib.ticker import MaxNLocator

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for i, s in sorted(series.items()):
        pts = s.get(tags[i])
        if pts:  # a run that logged one point (failed early) is drawn as a dot; a pruned one up to its stop
            ax.plot([p[0] for p in pts], [p[2] for p in pts], label=labels[i], marker="o" if len(pts) == 1 else None)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # iterations and timesteps are whole numbers
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(" / ".join(sorted(set(tags.values()))))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    _save(plt, fig, path)
    return True


def _plot_best(path: Path, title: str, points: list[tuple[float, float, int]], xlabel: str) -> bool:
    """Best-so-far step curve over the compute spent, each step labelled with the run that set it."""
    if not points:
        return False
    plt = _pyplot()
    if plt is None:
        return False
    fig, ax = plt.subplots(figsize=(8, 4.5))
    ax.step([p[0] for p in points], [p[1] for p in points], where="post", marker="o")
    last = None
    for x, y, run in points:
        if run != last:
            ax.annotate(f"run {run}", (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
            last = run
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(REWARD)
    ax.grid(alpha=0.3)
    _save(plt, fig, path)
    return True


def _copy_config(state: RunState, dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    atomic_write_text(dest / "spec.json", state.spec.model_dump_json(indent=2))
    if state.current:
        atomic_write_text(dest / "argv.txt", " ".join(state.current.argv) + "\n")
    tb = next((a.tb_dir for a in reversed(state.attempts) if a.tb_dir), None)
    params = Path(tb) / "params" if tb else None
    if params and params.is_dir():
        shutil.copytree(params, dest / "params", dirs_exist_ok=True)


def write_report(sweep) -> Path:
    """Write report.md, plots, per-run metrics.csv and config copies for a `sweep.Sweep`; returns report.md."""
    loaded: LoadedPlan = sweep.loaded
    out = sweep.paths.dir
    states = sweep.states()
    series = {i: read_series(st) for i, st in states.items()}
    evals = {i: ev for i, st in states.items() if (ev := eval_metrics(st))}
    from lights_out_dev.sweep.search_report import (
        best_so_far,
        compute_section,
        configuration_table,
        label,
        winner_line,
    )

    labels = {i: label(loaded.run(i), st) for i, st in states.items()}
    links = []
    for i, st in sorted(states.items()):
        art = out / "artifacts" / f"{i:02d}_{safe_name(st.task)}"
        _copy_config(st, art)
        atomic_write_text(art / "metrics.csv", metrics_csv(series[i]))
        links.append(f"- Run {i}: [{art.relative_to(out)}]({art.relative_to(out)}) "
                     f"(metrics.csv, spec.json, params/)" + (f", log {st.current.log_path}" if st.current else ""))
    plots = []
    reward = {i: st.spec.trainer.metrics.resolve(REWARD) for i, st in states.items()}
    fps = {i: st.spec.trainer.metrics.resolve(FPS) for i, st in states.items()}
    steps = " / ".join(sorted({st.spec.trainer.observe.unit for st in states.values()})) or "iteration"
    if _plot(out / "reward.png", f"{loaded.name}: mean reward", reward, series, labels, steps):
        plots.append("![reward](reward.png)")
    if _plot(out / "throughput.png", f"{loaded.name}: throughput", fps, series, labels, steps):
        plots.append("![throughput](throughput.png)")
    started = json.loads(sweep.paths.meta.read_text()).get("started_at") if sweep.paths.meta.exists() else None
    compute = sweep.compute()
    if _plot_best(out / "best.png", f"{loaded.name}: best final {REWARD} so far", best_so_far(states, series, compute),
                  "GPU-seconds spent" if compute.gpu else "slot-seconds spent"):
        plots.append("![best so far](best.png)")
    configs = configuration_table(loaded, states, series, compute)
    winner = winner_line(loaded, states, series)
    text = "\n".join([
        f"# Sweep report: {loaded.name}", "",
        f"Plan: {loaded.path} · Started: {stamp(started)} · Mode: {loaded.plan.mode}", "",
        table(loaded, states, series, evals), "",
        *([winner, ""] if winner else []),
        *(["## Configurations (over seeds)", "", configs, ""] if configs else []),
        "## Compute", "", *compute_section(compute), "",
        *(plots + [""] if plots else []),
        "## Runs", *links, "",
    ])
    path = sweep.paths.report
    atomic_write_text(path, text)
    return path
