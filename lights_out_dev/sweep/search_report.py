"""Report sections for searches and seeds (report.py calls these): per-configuration mean ± std over
seeds, why the winning run won, and the compute ledger. Pure: plan, states and TensorBoard series in,
markdown out.
"""
from __future__ import annotations

import statistics

from lights_out_dev.core.state import RunState, status_of
from lights_out_dev.core.verdicts import counts_text, status_counts
from lights_out_dev.sweep.compute import SweepCompute, seconds_text
from lights_out_dev.sweep.plan import LoadedPlan, PlannedRun, varied
from lights_out_dev.sweep.search import params_text

FINISHED = ("completed", "timeout")


def configuration(run: PlannedRun, state: RunState | None) -> str:
    """What a run's seeds share: its task and every varied parameter but the seed."""
    params = run.params
    if params is not None:
        return f"{run.task}: {params_text(params)}"
    if run.search is not None:
        return f"{run.task}: (not asked yet)"
    envs = state.spec.num_envs if state else run.num_envs
    args = " ".join(run.trainer_args)
    return f"{run.task}: {envs or 'default'} envs, {run.max_iterations or 'default'} it" + (f", {args}" if args else "")


def label(run: PlannedRun, state: RunState | None) -> str:
    """Plot legend / table label: index, task, and the varied parameters with the seed."""
    text = varied(run)
    if not text:
        envs = state.spec.num_envs if state else run.num_envs
        text = f"{envs or '?'} envs, seed={state.spec.seed if state else run.seed}"
    return f"{run.index}: {text}"


def mean_std(values: list[float]) -> str:
    if not values:
        return "-"
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values):.2f}"


def final_value(series: dict, metric: str) -> float | None:
    pts = series.get(metric) or []
    return float(pts[-1][2]) if pts else None


def configuration_table(plan: LoadedPlan, states: dict[int, RunState], series: dict[int, dict],
                        compute: SweepCompute | None, metric: str = "Train/mean_reward") -> str | None:
    """One row per configuration with more than one seed (or from a search); None when there is none.

    mean ± std is over the seeds that finished (completed or timeout): a pruned seed stopped early and
    would pull the mean toward its rung value; it is counted in the statuses instead."""
    groups: dict[str, list[PlannedRun]] = {}
    for run in plan.runs:
        if run.promotion is None:
            groups.setdefault(configuration(run, states.get(run.index)), []).append(run)
    shown = {k: v for k, v in groups.items() if len(v) > 1 or v[0].search is not None}
    if not shown:
        return None
    unit = "GPU-s" if compute is None or compute.gpu else "slot-s"
    lines = [f"| Configuration | Seeds | Final {metric} (mean ± std) | Best | Statuses | {unit} |",
             "|---|---|---|---|---|---|"]
    for key, runs in shown.items():
        finals = [v for r in runs if (st := states.get(r.index)) and st.status in FINISHED
                  and (v := final_value(series.get(r.index, {}), metric)) is not None]
        counts = status_counts(status_of(states.get(r.index)) for r in runs)
        spent = sum(compute.runs[r.index].total_s for r in runs if compute and r.index in compute.runs)
        seeds = ", ".join(str(states[r.index].spec.seed if r.index in states else r.seed) for r in runs)
        cells = [key, seeds, mean_std(finals), "-" if not finals else f"{max(finals):.2f}",
                 counts_text(counts), f"{spent:.0f}"]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def winner_line(plan: LoadedPlan, states: dict[int, RunState], series: dict[int, dict]) -> str | None:
    """Why the promoted (else the best finished) run won: its value, the runner-up, how many competed."""
    promo = next((r for r in plan.runs if r.promotion and r.promoted), None)
    if promo is not None:
        p, d = promo.promotion, promo.promoted
        metric, mode, pool = p.metric, p.mode, [r for r in plan.runs if r.phase == p.from_phase]
    else:
        metric, mode, pool = "Train/mean_reward", "max", [r for r in plan.runs if r.promotion is None]
    scored = sorted(((v, r) for r in pool if (st := states.get(r.index)) and st.status in FINISHED
                     and (v := final_value(series.get(r.index, {}), metric)) is not None),
                    key=lambda x: x[0], reverse=mode == "max")
    if not scored:
        return None
    (value, best), rest = scored[0], scored[1:]
    if promo is not None:
        value, best = d.value, plan.run(d.source)
    others = len(pool) - 1
    pruned = sum(1 for r in pool if (st := states.get(r.index)) and st.status == "pruned")
    text = (f"Run {best.index} ({label(best, states.get(best.index)).split(': ', 1)[1]}) won: final {metric} "
            f"{value:.2f} ({mode}) against {others} other run(s) of its phase")
    if rest:
        text += f"; runner-up run {rest[0][1].index} with {rest[0][0]:.2f}"
    if pruned:
        text += f"; {pruned} stopped early by pruning"
    if promo is not None:
        text += f"; promoted as run {promo.index} ({promo.task})"
    return text + "."


def best_so_far(states: dict[int, RunState], series: dict[int, dict], compute: SweepCompute,
                metric: str = "Train/mean_reward", mode: str = "max") -> list[tuple[float, float, int]]:
    """(compute spent when a run finished, best final metric of the finished runs so far, that run), in
    order of finishing: how fast the sweep's compute bought its result."""
    ends = sorted((c.last_end, i) for i, c in compute.runs.items()
                  if c.last_end is not None and i in states and states[i].status in FINISHED)
    out, best, who = [], None, None
    for end, i in ends:
        v = final_value(series.get(i, {}), metric)
        if v is not None and (best is None or (v > best if mode == "max" else v < best)):
            best, who = v, i
        if best is not None:
            spent = sum(sum(max(0.0, min(e, end) - s) * n for s, e, n in c.spans) for c in compute.runs.values())
            out.append((spent, best, who))
    return out


def compute_section(compute: SweepCompute) -> list[str]:
    g = compute.gpu
    d = compute.as_dict()
    return [
        f"Total {seconds_text(compute.busy_s, g)} on {compute.slots} {'GPU(s)' if g else 'CPU slot(s)'} over "
        f"{compute.wall_s:.0f}s: trainer {d['trainer_s']:.0f}, failed {d['failed_s']:.0f}, pruned {d['pruned_s']:.0f}, "
        f"smoke {d['smoke_s']:.0f}, evaluation {d['eval_s']:.0f}; idle {seconds_text(compute.idle_s, g)}.",
        "", "| # | " + ("GPU-s" if g else "slot-s") + " |", "|---|---|",
        *[f"| {i} | {r.total_s:.0f} |" for i, r in sorted(compute.runs.items())],
    ]
