"""Pure ledger rendering (title, Started, Plan, Progress, the Run Plan table, the Run Log) and the report
table: table-driven."""
from __future__ import annotations

from pathlib import Path

import pytest

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import Attempt, Progress, RunState
from lights_out_dev.sweep import ledger, report
from lights_out_dev.sweep.plan import LoadedPlan, expand, parse_plan

pytestmark = pytest.mark.timeout(30)

PLAN = """\
name: demo
time_limit: 1h
runs:
  - task: cartpole:base
    grid: {num_envs: [64, 128]}
  - task: top_dog:base
    overrides: {num_envs: 256}
    time_limit: 30m
promote: {from_phase: 1, phase: 2}
"""
T0 = 1_700_000_000.0


def loaded() -> LoadedPlan:
    plan, lines = parse_plan(PLAN, "sweeps/demo.yaml")
    return LoadedPlan(plan=plan, path=Path("sweeps/demo.yaml"), runs=expand(plan, lines))


def spec(task="cartpole:base", envs=64, limit=3600.0) -> RunSpec:
    return RunSpec(task=task, family=task.split(":")[0], launcher="lab", prefix=["python"], script="train.py",
                   trainer_task="Lo-Cartpole-v0", num_envs=envs, time_limit_s=limit)


def attempt(n, verdict=None, reason=None, decision=None, gpus=(0,), envs=64, fps=None, reward=None, job=None):
    return Attempt(number=n, argv=["python", "train.py", "--num_envs", str(envs)], gpus=list(gpus) if gpus is not None else None,
                   started_at=T0 + 100 * n, ended_at=T0 + 100 * n + 50 if verdict else None,
                   log_path=f"local_experiment_logs/r_a{n}.log", tb_dir=f"logs/rsl_rl/cartpole/run{n}",
                   verdict=verdict, reason=reason, decision=decision, job_id=job,
                   progress=Progress(iteration=3, total=5, steps_per_s=fps, mean_reward=reward))


def state(index, status, attempts, task="cartpole:base", envs=64, final=None, reason=None, vram=None, verdict=None):
    return RunState(run_key=f"sweep:demo-{index:02d}", rid="r", run_name="n", task=task, spec=spec(task, envs),
                    status=status, attempts=attempts, final=final or Progress(), reason=reason,
                    peak_vram_mb=vram, final_verdict=verdict, sweep="demo", index=index)


# (description, states, row index -> expected ledger row)
CASES = [
    ("nothing started", {}, {
        1: "| 1 | 1 | cartpole:base | 64 | 1 GPU | 1h | pending | - | - | |",
        3: "| 3 | 1 | top_dog:base | 256 | 1 GPU | 30m | pending | - | - | |",
        4: "| 4 | 2 | (best of phase 1)-mgpu | - | all GPUs | 1h | pending | - | - | promotion: best Train/mean_reward (max) of phase 1 |",
    }),
    ("running on GPU 1 with live progress", {1: state(1, "running", [attempt(1, gpus=(1,), fps=1200.0, reward=3.5)])}, {
        1: "| 1 | 1 | cartpole:base | 64 | GPU 1 | 1h | running | 1200 | 3.50 | |",
    }),
    ("completed after one crash, halved envs on CPU", {2: state(
        2, "completed", [attempt(1, "crash", "exit 1", "retry: crash 1/3", gpus=None, envs=128),
                         attempt(2, "completed", gpus=None, envs=64)], envs=128,
        final=Progress(steps_per_s=900.0, mean_reward=4.25), verdict="completed", vram=2048.0)}, {
        2: "| 2 | 1 | cartpole:base | 64 | CPU | 1h | completed | 900 | 4.25 | failed attempts: crash |",
    }),
    ("gave up on a config error, pipe in the reason escaped", {3: state(
        3, "failed", [attempt(1, "config_error", "KeyError: 'a|b'", "give_up: never retried", envs=256)], task="top_dog:base",
        envs=256, reason="KeyError: 'a|b'; never retried", verdict="config_error")}, {
        3: "| 3 | 1 | top_dog:base | 256 | GPU 0 | 1h | failed | - | - | failed attempts: config_error; "
           "KeyError: 'a\\|b'; never retried |",
    }),
    ("interrupted", {1: state(1, "interrupted", [attempt(1, "killed", "supervisor gone")])}, {
        1: "| 1 | 1 | cartpole:base | 64 | GPU 0 | 1h | interrupted | - | - | failed attempts: killed |",
    }),
]


@pytest.mark.parametrize("desc,states,rows", CASES, ids=[c[0] for c in CASES])
def test_plan_table_rows(desc, states, rows):
    text = ledger.render(loaded(), states, started_at=T0)
    for index, row in rows.items():
        assert row in text.splitlines(), (desc, row, text)


def test_ledger_sections_in_order():
    text = ledger.render(loaded(), {}, started_at=T0, state_dir="local_experiment_logs/sweeps/demo/runs",
                         report="local_experiment_logs/sweeps/demo/report.md")
    lines = text.splitlines()
    assert lines[0] == "# Sweep: demo"
    assert lines[1] == f"Started: {ledger.stamp(T0)}"
    assert ledger.HEADER in lines and ledger.RULE in lines
    assert lines.index("## Run Plan") < lines.index(ledger.HEADER) < lines.index("## Run Log")
    assert "report.md" in text and "Progress: 4 pending" in text
    assert ledger.sweep_name(text) == "demo"


def test_run_log_section():
    st = state(2, "completed", [attempt(1, "oom", "CUDA out of memory", "retry: oom 1/3", envs=128),
                                attempt(2, "completed", envs=64, job="4242")], envs=128,
               final=Progress(steps_per_s=900.0, mean_reward=4.25), verdict="completed", vram=18432.0)
    text = ledger.render(loaded(), {2: st}, started_at=T0)
    section = text.split("### Run 2: cartpole:base (64 envs, GPU 0)\n", 1)[1].split("\n\n")[0].splitlines()
    assert section == [
        f"- Started: {ledger.stamp(T0 + 100)}",
        f"- Finished: {ledger.stamp(T0 + 250)} (completed)",
        "- Stdout log: local_experiment_logs/r_a2.log",
        "- TB dir: logs/rsl_rl/cartpole/run2",
        "- Final FPS: 900",
        "- Final reward: 4.25",
        "- Peak VRAM: 18432MB",
        "- Retries: 1",
        "  - attempt 1: oom (CUDA out of memory) -> retry: oom 1/3",
        "- Slurm job ids: 4242",
    ]
    assert "### Run 1" not in text  # not started: no run log entry yet


def test_render_is_pure_and_deterministic():
    st = {1: state(1, "running", [attempt(1)])}
    assert ledger.render(loaded(), st, started_at=T0) == ledger.render(loaded(), st, started_at=T0)


REPORT_CASES = [
    ("pending", {}, "| 1 | cartpole:base | 64 | 1 GPU | pending | 0 | - | - | - | - | - | - | - | - |"),
    ("tb series win over stdout numbers", {1: (state(
        1, "completed", [attempt(1, "completed")], final=Progress(steps_per_s=10.0, mean_reward=1.0), vram=100.0, verdict="completed"),
        {"Train/mean_reward": [(0, 0.0, 2.0), (1, 1.0, 5.0), (2, 2.0, 4.0)], "Perf/total_fps": [(2, 2.0, 777.0)],
         "Train/mean_episode_length": [(2, 2.0, 33.0)]})},
     "| 1 | cartpole:base | 64 | GPU 0 | completed | 1 | 50s | 777 | 4.00 | 5.00 | 33.0 | 100MB | completed | - |"),
    ("no tb: falls back to the state", {1: (state(
        1, "failed", [attempt(1, "crash"), attempt(2, "crash")], final=Progress(steps_per_s=10.0, mean_reward=1.0),
        verdict="crash"),
        {})}, "| 1 | cartpole:base | 64 | GPU 0 | failed | 2 | 100s | 10 | 1.00 | - | - | - | crash | failed attempts: crash, crash |"),
]


@pytest.mark.parametrize("desc,data,row", REPORT_CASES, ids=[c[0] for c in REPORT_CASES])
def test_report_table(desc, data, row):
    states = {i: s for i, (s, _) in data.items()}
    series = {i: ser for i, (_, ser) in data.items()}
    text = report.table(loaded(), states, series)
    assert text.splitlines()[0].startswith("| # | Task | Envs | GPUs | Status | Attempts | Wall time")
    assert row in text.splitlines(), (desc, text)


def test_metrics_csv():
    csv_text = report.metrics_csv({"Train/mean_reward": [(1, 10.0, 2.5)], "Perf/total_fps": [(1, 10.0, 100.0)]})
    assert csv_text.splitlines() == ["tag,step,wall_time,value", "Perf/total_fps,1,10.000,100.0",
                                     "Train/mean_reward,1,10.000,2.5"]


def test_a_user_stop_is_labelled_not_counted_as_a_failure():
    st = state(1, "interrupted", [attempt(1, "crash", "killed by SIGKILL", "retry: crash"),
                                  attempt(2, "killed", "stopped on request at iteration 3/5")],
               reason="stopped by the user")
    row = next(line for line in ledger.render(loaded(), {1: st}).splitlines() if line.startswith("| 1 |"))
    assert "failed attempts: crash; stopped by the user" in row and "killed" not in row
    assert ledger.retries(st) == ["attempt 1: crash (killed by SIGKILL) -> retry: crash",
                                  "attempt 2: stopped by the user (stopped on request at iteration 3/5)"]


def test_the_tracker_run_its_log_printed_is_in_the_run_section():
    tracked = attempt(2, "completed").model_copy(update={"tracker_url": "https://wandb.ai/me/p/runs/r"})
    st = state(2, "completed", [attempt(1, "crash", "SIGKILL", "retry"), tracked], verdict="completed")
    section = ledger.render(loaded(), {2: st}, started_at=T0).split("### Run 2:", 1)[1].split("\n\n")[0]
    assert "- Tracker run: https://wandb.ai/me/p/runs/r\n- Retries: 1" in section


@pytest.mark.parametrize("statuses, counts, text", [
    ([], {}, ""),
    (["running", "completed", "pending", "completed"], {"completed": 2, "pending": 1, "running": 1},
     "2 completed, 1 pending, 1 running"),
])
def test_status_counts_are_by_status_name(statuses, counts, text):
    from lights_out_dev.core.verdicts import counts_text, status_counts

    got = status_counts(statuses)
    assert got == counts and list(got) == sorted(got) and counts_text(got) == text
