"""Plan validation and expansion: table-driven, pure (no processes)."""
from __future__ import annotations

import pytest

from lights_out_dev.sweep.plan import (
    PlanError,
    check_tasks,
    expand,
    load_plan,
    parse_plan,
    varied_text,
)

pytestmark = pytest.mark.timeout(30)

GOOD = """\
name: t
time_limit: 5m
runs:
  - task: cartpole:base
    overrides: {max_iterations: 3, trainer_args: [--foo, bar]}
    grid: {num_envs: [16, 32], seed: [1, 2]}
  - task: top_dog:base
    phase: 2
    gpus: 2
    time_limit: 1h
    smoke: true
promote:
  from_phase: 2
  phase: 3
"""

# (description, text, expected substrings of the one-sentence error)
BAD = [
    ("not yaml", "name: t\nruns: [\n", ["line", "not valid YAML"]),
    ("not a mapping", "- a\n- b\n", ["must be a YAML mapping"]),
    ("missing runs", "name: t\n", ["'runs' is required"]),
    ("missing task", "name: t\nruns:\n  - phase: 1\n", ["line 3", "runs.0.task", "required"]),
    ("unknown field", "name: t\nruns:\n  - task: a\n    num_env: 3\n", ["line 4", "runs.0.num_env", "not a plan field"]),
    ("bad envs", "name: t\nruns:\n  - task: a\n    overrides:\n      num_envs: 0\n",
     ["line 5", "runs.0.overrides.num_envs", "greater than or equal to 1"]),
    ("bad duration", "name: t\nruns:\n  - task: a\n    time_limit: 5x\n", ["line 4", "'5x' is not a duration"]),
    ("bad grid key", "name: t\nruns:\n  - task: a\n    grid: {gpus: [1, 2]}\n", ["line 4", "runs.0.grid", "grid key 'gpus'"]),
    ("empty grid", "name: t\nruns:\n  - task: a\n    grid: {seed: []}\n", ["line 4", "has no values"]),
    ("bad mode", "name: t\nmode: both\nruns:\n  - task: a\n", ["line 2", "mode"]),
    ("bad name", "name: 'a b'\nruns:\n  - task: a\n", ["line 1", "name"]),
    ("promote order", "name: t\nruns:\n  - task: a\npromote: {from_phase: 2, phase: 2}\n", ["line 4", "must come after"]),
    ("promote no source", "name: t\nruns:\n  - task: a\npromote: {from_phase: 3, phase: 4}\n", ["from_phase 3 has no runs"]),
    ("zero nodes", "name: t\nruns:\n  - task: a-mgpu\n    nodes: 0\n", ["line 4", "runs.0.nodes"]),
    ("zero array cap", "name: t\nslurm_array: 0\nruns:\n  - task: a\n", ["line 2", "slurm_array"]),
    ("promote before runs", "name: t\nruns:\n  - {task: a, phase: 3}\npromote: {from_phase: 3, phase: 2}\n",
     ["must come after"]),
]


@pytest.mark.parametrize("desc,text,expected", BAD, ids=[b[0] for b in BAD])
def test_bad_plans_name_line_and_field(desc, text, expected):
    with pytest.raises(PlanError) as e:
        parse_plan(text, "sweeps/x.yaml")
    msg = str(e.value)
    assert msg.startswith("sweeps/x.yaml")
    for part in expected:
        assert part in msg, (desc, msg)
    assert "\n" not in msg


def test_expansion_order_grid_and_defaults():
    plan, lines = parse_plan(GOOD, "p.yaml")
    runs = expand(plan, lines)
    got = [(r.index, r.phase, r.task, r.num_envs, r.seed, r.max_iterations, r.gpus, r.time_limit_s, r.smoke)
           for r in runs]
    assert got == [
        (1, 1, "cartpole:base", 16, 1, 3, 1, 300.0, False),
        (2, 1, "cartpole:base", 16, 2, 3, 1, 300.0, False),
        (3, 1, "cartpole:base", 32, 1, 3, 1, 300.0, False),
        (4, 1, "cartpole:base", 32, 2, 3, 1, 300.0, False),
        (5, 2, "top_dog:base", None, None, None, 2, 3600.0, True),
        (6, 3, None, None, None, None, 0, 300.0, False),
    ]
    assert runs[0].trainer_args == ["--foo", "bar"]
    assert runs[0].line == 4 and runs[4].line == 7
    assert runs[5].promotion.metric == "Train/mean_reward" and runs[5].promotion.suffix == "-mgpu"
    assert [r.key for r in runs][:2] == ["01", "02"]


def test_multi_node_entry_and_array_cap():
    plan, lines = parse_plan("name: t\nslurm_array: 3\nruns:\n  - {task: top_dog:base-mgpu, gpus: 4, nodes: 2}\n"
                             "  - {task: cartpole:base}\n", "p.yaml")
    runs = expand(plan, lines)
    assert plan.slurm_array == 3
    assert [(r.task, r.gpus, r.nodes) for r in runs] == [("top_dog:base-mgpu", 4, 2), ("cartpole:base", 1, 1)]


def test_phases_sorted_even_when_written_out_of_order():
    plan, lines = parse_plan("name: t\nruns:\n  - {task: b, phase: 2}\n  - {task: a, phase: 1}\n")
    assert [(r.index, r.task, r.phase) for r in expand(plan, lines)] == [(1, "a", 1), (2, "b", 2)]


@pytest.mark.parametrize("task,expected", [
    ("cartpol:base", "did you mean 'cartpole:base'"),
    ("zzz", "doit list --all"),
])
def test_unknown_task_suggests_closest(tmp_path, task, expected):
    p = tmp_path / "p.yaml"
    p.write_text(f"name: t\nruns:\n  - task: cartpole:base\n  - task: {task}\n")
    loaded = load_plan(p)
    with pytest.raises(PlanError) as e:
        check_tasks(loaded, ["cartpole:base", "cartpole:long", "top_dog:base"])
    assert f"line 4: unknown task '{task}'" in str(e.value) and expected in str(e.value)


def test_missing_plan_file_lists_plans(tmp_path):
    (tmp_path / "default.yaml").write_text("name: d\nruns: [{task: a}]\n")
    with pytest.raises(PlanError) as e:
        load_plan(tmp_path / "nope.yaml")
    assert "does not exist" in str(e.value) and "default.yaml" in str(e.value)


@pytest.mark.parametrize("path", ["sweeps/default.yaml", "sweeps/rendering.yaml"])
def test_shipped_plans_are_valid(root, path):
    loaded = load_plan(root / path)
    assert loaded.runs and all(r.task or r.promotion for r in loaded.runs)


@pytest.mark.parametrize("text,expected", [
    ("runs:\n  - task: cartpole:base\n    grid: {num_envs: [16, 32], seed: [1, 2]}\n",
     ["seed=1 num_envs=16", "seed=2 num_envs=16", "seed=1 num_envs=32", "seed=2 num_envs=32"]),
    ("runs:\n  - task: cartpole:base\n    overrides: {seed: 1}\n  - task: top_dog:base\n    overrides: {seed: 2}\n",
     ["", ""]),  # different tasks: nothing to tell apart
    ("runs:\n  - task: cartpole:base\n    overrides: {seed: 1, max_iterations: 5}\n"
     "  - task: cartpole:base\n    overrides: {seed: 1, max_iterations: 9}\n",
     ["max_iterations=5", "max_iterations=9"]),
])
def test_varied_values_tell_grid_runs_apart(text, expected):
    plan, lines = parse_plan("name: v\n" + text)
    assert [varied_text(r) for r in expand(plan, lines)] == expected


def test_grid_over_trainer_flags_and_hydra_keys_sets_the_trainer_args_last_flag_wins():
    plan, lines = parse_plan("name: g\nruns:\n  - task: a\n    overrides: {seed: 1, trainer_args: [--lr, '1', --x, y]}\n"
                             "    grid: {--lr: [0.0001, 0.0003], agent.algorithm.entropy_coef: [0.0]}\n", "g.yaml")
    runs = expand(plan, lines)
    assert [r.trainer_args for r in runs] == [["--lr", "0.0001", "--x", "y", "agent.algorithm.entropy_coef=0.0"],
                                              ["--lr", "0.0003", "--x", "y", "agent.algorithm.entropy_coef=0.0"]]
    assert [varied_text(r) for r in runs] == ["--lr=0.0001", "--lr=0.0003"]  # only what differs between them


@pytest.mark.parametrize("grid,fragment", [
    ("{lr: [1]}", "grid key 'lr' is none of num_envs"),
    ("{seed: [1.5]}", "grid 'seed' takes whole numbers only"),
    ("{'--lr=3': [1]}", "grid key '--lr=3'"),
])
def test_bad_grid_keys_are_one_sentence(grid, fragment):
    with pytest.raises(PlanError) as e:
        parse_plan(f"name: g\nruns:\n  - task: a\n    grid: {grid}\n", "g.yaml")
    assert fragment in str(e.value) and "\n" not in str(e.value)
