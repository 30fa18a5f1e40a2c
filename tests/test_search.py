"""Search spaces, pruning rules, the compute ledger and the per-configuration report: pure, table-driven."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import Attempt, RunState
from lights_out_dev.sweep import compute, pruning, search_report
from lights_out_dev.sweep.plan import LoadedPlan, PlanError, expand, parse_plan
from lights_out_dev.sweep.pruning import PruneRule
from lights_out_dev.sweep.search import (
    Search,
    TrialResult,
    TrialStore,
    apply_params,
    ask,
    fixed_configurations,
)

ROOT = Path(__file__).resolve().parents[1]

PLAN = """\
name: s
runs:
  - task: cartpole:base
    overrides: {{max_iterations: 8, seed: 10, trainer_args: [--foo, a]}}
    search:
      method: {method}
      samples: 3
      repeats: 2
      space:
        num_envs: {{choice: [16, 32]}}
        agent.algorithm.learning_rate: {{log_uniform: [1.0e-4, 1.0e-2]}}
        --clip: {{int: [1, 4]}}
"""


def plan_of(text: str) -> LoadedPlan:
    plan, lines = parse_plan(text, "sweeps/s.yaml")
    return LoadedPlan(plan=plan, path=Path("sweeps/s.yaml"), runs=expand(plan, lines))


def test_random_search_expands_configurations_times_seeds_the_same_way_every_time():
    runs = plan_of(PLAN.format(method="random")).runs
    assert len(runs) == 6 and [r.seed for r in runs] == [10, 11] * 3
    again = plan_of(PLAN.format(method="random")).runs
    assert [r.trainer_args for r in runs] == [r.trainer_args for r in again]
    first = runs[0]
    params = first.params
    assert first.num_envs == params["num_envs"]  # a runner key goes to the spec
    assert first.trainer_args[:2] == ["--foo", "a"]
    assert f"agent.algorithm.learning_rate={params['agent.algorithm.learning_rate']:.6g}" in first.trainer_args
    assert first.trainer_args[-2:] == ["--clip", str(params["--clip"])]
    assert 1e-4 <= params["agent.algorithm.learning_rate"] <= 1e-2
    assert runs[0].params == runs[1].params  # repeats share the configuration


def test_optuna_runs_are_left_open_until_launch():
    runs = plan_of(PLAN.format(method="optuna")).runs
    assert len(runs) == 6 and all(r.params is None for r in runs)
    assert [r.search.trial for r in runs] == [0, 0, 1, 1, 2, 2]


def test_grid_search_is_every_combination():
    s = Search(method="grid", space={"num_envs": {"choice": [16, 32]}, "--k": {"int": [1, 3]}}, repeats=1)
    assert fixed_configurations(s) == [{"num_envs": n, "--k": k} for n in (16, 32) for k in (1, 2, 3)]


@pytest.mark.parametrize("space,words", [
    ("{x: {uniform: [1, 0]}}", "low < high"),
    ("{x: {log_uniform: [0, 1]}}", "low bound > 0"),
    ("{x: {choice: [1], uniform: [0, 1]}}", "exactly one"),
    ("{seed: {choice: [1, 2]}}", "repeats"),
    ("{-x: {choice: [1, 2]}}", "must start with '--'"),
])
def test_bad_spaces_are_one_sentence_with_the_line(space, words):
    text = f"name: s\nruns:\n  - task: cartpole:base\n    search:\n      samples: 2\n      space: {space}\n"
    with pytest.raises(PlanError) as e:
        parse_plan(text, "sweeps/s.yaml")
    assert words in str(e.value) and "sweeps/s.yaml line" in str(e.value), str(e.value)


def test_grid_of_a_continuous_range_and_random_without_samples_are_refused():
    with pytest.raises(PlanError, match="continuous range"):
        parse_plan("name: s\nruns:\n  - task: t\n    search: {method: grid, space: {x: {uniform: [0, 1]}}}\n")
    with pytest.raises(PlanError, match="samples"):
        parse_plan("name: s\nruns:\n  - task: t\n    search: {method: random, space: {x: {uniform: [0, 1]}}}\n")
    with pytest.raises(PlanError, match="either grid or search"):
        parse_plan("name: s\nruns:\n  - task: t\n    grid: {seed: [1]}\n"
                   "    search: {samples: 1, space: {x: {uniform: [0, 1]}}}\n")


def test_apply_params_by_key_kind():
    runner, args = apply_params({"num_envs": 64, "--lr": 0.001, "env.gravity": 9.0, "agent.flag": True}, ["--a", "b"])
    assert runner == {"num_envs": 64}
    assert args == ["--a", "b", "--lr", "0.001", "env.gravity=9", "agent.flag=true"]


def test_optuna_ask_is_the_same_question_after_a_restart():
    """The study is rebuilt from the trial files and results: same inputs, same next trial."""
    s = Search(method="optuna", samples=8, seed=3, startup_trials=2,
               space={"x": {"uniform": [0, 1]}, "n": {"choice": [16, 32]}})
    results = [TrialResult(0, {"x": 0.2, "n": 16}, [1.0], False, False, False),
               TrialResult(1, {"x": 0.8, "n": 32}, [5.0, 6.0], False, False, False),
               TrialResult(2, {"x": 0.5, "n": 16}, [], False, False, True)]
    a, b = ask(s, results), ask(s, results)
    assert a == b and 0 <= a["x"] <= 1 and a["n"] in (16, 32)
    assert ask(s, results[:1]) != a  # another history, another question


def test_trial_store_round_trip(tmp_path):
    store = TrialStore(tmp_path / "search")
    assert store.load("entry1", 0) is None
    store.save("entry1", 0, {"x": 0.5})
    assert store.load("entry1", 0) == {"x": 0.5}
    assert store.path("entry1", 0).name == "entry1_trial000.json"


ASHA = PruneRule(rule="asha", rungs=[5], reduction_factor=3, min_runs=3)
MEDIAN = PruneRule(rule="median", rungs=[5], min_runs=3)
MIN = PruneRule(rule="asha", rungs=[5], reduction_factor=2, min_runs=2, mode="min")


@pytest.mark.parametrize("rule,value,others,pruned", [
    (ASHA, 1.0, [5.0], False),  # too few runs at the rung
    (ASHA, 1.0, [5.0, 6.0], True),  # 3 values, keep the best 1
    (ASHA, 7.0, [5.0, 6.0], False),
    (ASHA, 5.0, [5.0, 6.0, 1.0, 2.0, 3.0], False),  # 6 values, keep the best 2: 6 and 5
    (ASHA, 3.0, [5.0, 6.0, 1.0, 2.0, 4.0], True),
    (MEDIAN, 4.0, [5.0, 6.0], True),
    (MEDIAN, 5.5, [5.0, 6.0], False),
    (MEDIAN, 1.0, [5.0], False),
    (MIN, 1.0, [5.0], False),  # lower is better
    (MIN, 9.0, [5.0], True),
    (ASHA, float("nan"), [5.0, 6.0], False),  # NaN is for learning health
])
def test_prune_table(rule, value, others, pruned):
    found = pruning.judge_rung(value, others, rule, 5)
    assert (found is not None) == pruned, found
    if found:
        assert found.verdict == "pruned" and found.iteration == 5


def test_rung_values():
    pts = [(0, 1.0), (3, 2.0), (4, 3.0), (7, 4.0)]
    assert pruning.rung_value(pts, 5) == 3.0  # last value at or before the rung, once past it
    assert pruning.rung_value(pts, 8) is None
    assert pruning.highest_rung(pts, PruneRule(rungs=[2, 5, 10])) == 5
    with pytest.raises(ValueError, match="ascending"):
        PruneRule(rungs=[5, 2])


@pytest.mark.parametrize("text,seconds", [("20 gpu_h", 72000.0), ("30 gpu_min", 1800.0), ("1.5gpu_s", 1.5),
                                          (90, 90.0), (None, None)])
def test_budget_units(text, seconds):
    assert compute.budget_seconds(text) == seconds


def test_bad_budget_is_one_sentence():
    with pytest.raises(PlanError, match="20 gpu_h"):
        parse_plan("name: s\nbudget: 20 hours\nruns:\n  - task: t\n")


def spec() -> RunSpec:
    return RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=[], script="train.py",
                   trainer_task="Lo-Cartpole-v0", num_envs=16, seed=1)


def state_with(*attempts, extra=None, status="completed", seed=1) -> RunState:
    return RunState(run_key="k", rid="r", run_name="n", task="cartpole:base", spec=spec().model_copy(update={"seed": seed}),
                    status=status, attempts=list(attempts), extra=extra or {})


def att(n, start, end, verdict, gpus=None) -> Attempt:
    return Attempt(number=n, argv=[], started_at=start, ended_at=end, verdict=verdict, gpus=gpus)


def test_run_compute_counts_every_kind_of_attempt():
    st = state_with(att(1, 100, 110, "nan", gpus=[0, 1]), att(2, 110, 140, "completed", gpus=[0, 1]),
                    extra={"smoke": {"started_at": 90, "ended_at": 95}, "eval": {"started_at": 150, "finished_at": 160}})
    c = compute.run_compute(st, now=1000)
    assert (c.failed_s, c.trainer_s, c.smoke_s, c.eval_s) == (20, 60, 10, 10)  # x2 GPUs for attempts and smoke
    assert c.total_s == 100 and (c.first_start, c.last_end) == (90, 160)
    running = compute.run_compute(state_with(att(1, 100, None, None)), now=130)
    assert running.trainer_s == 30


def test_sweep_idle_time():
    sts = {1: state_with(att(1, 0, 10, "completed")), 2: state_with(att(1, 0, 4, "pruned"))}
    c = compute.sweep_compute(sts, slots=2, now=100, gpu=False)
    assert (c.busy_s, c.wall_s, c.idle_s) == (14, 10, 6)
    assert c.as_dict()["unit"] == "slot_s" and c.as_dict()["pruned_s"] == 4


def test_configuration_table_is_mean_std_over_finished_seeds():
    loaded = plan_of(PLAN.format(method="random"))
    series = {i: {"Train/mean_reward": [(0, 0.0, 1.0), (7, 0.0, v)]} for i, v in ((1, 10.0), (2, 20.0), (3, 5.0))}
    states = {1: state_with(att(1, 0, 10, "completed"), seed=10), 2: state_with(att(1, 0, 10, "completed"), seed=11),
              3: state_with(att(1, 0, 5, "pruned"), status="pruned", seed=10)}
    c = compute.sweep_compute(states, 2, 100, gpu=False)
    table = search_report.configuration_table(loaded, states, series, c)
    rows = [line for line in table.splitlines() if line.startswith("| cartpole")]
    assert len(rows) == 3
    assert "| 10, 11 | 15.00 ± 7.07 | 20.00 | 2 completed | 20 |" in rows[0]
    assert "1 pending, 1 pruned" in rows[1] and "| - |" in rows[1]
    win = search_report.winner_line(loaded, states, series)
    assert win.startswith("Run 2 (") and "seed=11" in win and "20.00" in win and "runner-up run 1" in win
    assert "1 stopped early by pruning" in win


@pytest.mark.timeout(300)
def test_trainer_takes_hydra_keys_and_refuses_unknown_ones(tmp_path):
    import yaml

    base = [sys.executable, str(ROOT / "workloads/train.py"), "--device", "cpu", "--num_envs", "8", "--max_iterations", "1"]
    ok = subprocess.run([*base, "agent.algorithm.learning_rate=3e-5", "env.pole_mass=0.2"], cwd=tmp_path,
                        capture_output=True, text=True, timeout=240)
    assert ok.returncode == 0, ok.stderr[-2000:]
    params = next(tmp_path.glob("logs/rsl_rl/*/*/params"))
    assert yaml.safe_load((params / "agent.yaml").read_text())["algorithm"]["learning_rate"] == 3e-5  # a number
    assert yaml.safe_load((params / "env.yaml").read_text())["pole_mass"] == 0.2
    bad = subprocess.run([*base, "agent.algorithm.learning_rat=0.1"], cwd=tmp_path, capture_output=True, text=True,
                         timeout=120)
    assert bad.returncode == 2
    assert "agent.algorithm has no 'learning_rat'" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("peak,residents,total,used,max_runs,fits,words", [
    (None, [1000.0], 80000, 2000, None, False, "not measured"),
    (1000.0, [None], 80000, 2000, None, False, "no measured peak"),
    (1000.0, [1000.0], 80000, 2000, None, True, "2 runs"),
    (1000.0, [1000.0], 80000, 2000, 1, False, "runs_per_gpu is 1"),
    (30000.0, [30000.0, 30000.0], 80000, 40000, None, False, "peaks would need"),  # residents will grow
    (10000.0, [10000.0], 80000, 75000, None, False, "NVML shows 75000 MB"),  # someone else came in
    (10000.0, [], 80000, 0, None, True, "1 runs"),
])
def test_packing_decision(peak, residents, total, used, max_runs, fits, words):
    from lights_out_dev.sweep.packing import decide

    d = decide(peak, residents, total, used, margin_mb=1024, max_runs=max_runs)
    assert d.fits is fits and words in d.reason, d


def test_written_files_are_readable_by_the_group(tmp_path):
    from lights_out_dev.core.state import atomic_write_text

    atomic_write_text(tmp_path / "report.md", "x")
    assert (tmp_path / "report.md").stat().st_mode & 0o777 == 0o644


def test_best_so_far_follows_the_compute_spent():
    sts = {1: state_with(att(1, 0, 10, "completed")), 2: state_with(att(1, 0, 20, "completed")),
           3: state_with(att(1, 10, 25, "completed"))}
    series = {1: {"Train/mean_reward": [(0, 0.0, 5.0)]}, 2: {"Train/mean_reward": [(0, 0.0, 3.0)]},
              3: {"Train/mean_reward": [(0, 0.0, 9.0)]}}
    c = compute.sweep_compute(sts, slots=2, now=100, gpu=False)
    assert search_report.best_so_far(sts, series, c) == [(10 + 10, 5.0, 1), (10 + 20 + 10, 5.0, 1),
                                                         (10 + 20 + 15, 9.0, 3)]


def ramp(values, start=0):
    return [(start + i, float(v)) for i, v in enumerate(values)]


def test_optuna_median_pruner_on_rebuilt_studies():
    rule = PruneRule(rule="optuna_median", rungs=[3], min_runs=3)
    finished = [(ramp([1, 2, 3, 4, 5]), "completed"), (ramp([1, 3, 5, 7, 9]), "completed")]
    assert pruning.judge_with_optuna(ramp([0, 0, 0, 0]), finished, rule, 3).verdict == "pruned"
    assert pruning.judge_with_optuna(ramp([5, 6, 7, 8]), finished, rule, 3) is None
    assert pruning.judge_with_optuna(ramp([0, 0, 0, 0]), finished[:1], rule, 3) is None  # before 2 finished
    running = [(ramp([9, 9, 9, 9]), "running")] * 3  # MedianPruner only counts finished trials
    assert pruning.judge_with_optuna(ramp([0, 0, 0, 0]), running, rule, 3) is None


def test_optuna_successive_halving_on_rebuilt_studies():
    rule = PruneRule(rule="optuna_sha", rungs=[2, 6], reduction_factor=3)
    others = [(ramp([5] * 8), "completed"), (ramp([6] * 8), "pruned"), (ramp([7] * 4), "running")]
    assert pruning.judge_with_optuna(ramp([1, 1, 1]), others, rule, 2).verdict == "pruned"
    assert pruning.judge_with_optuna(ramp([9, 9, 9]), others, rule, 2) is None
    with pytest.raises(ValueError, match=r"\[2, 6\]"):
        PruneRule(rule="optuna_sha", rungs=[2, 5], reduction_factor=3)
