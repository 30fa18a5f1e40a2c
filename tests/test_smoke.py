"""Smoke gates: the pure parts (command identity, reuse rule, ledger text) table-tested, and the gate
through real `doit` processes on the reference trainer in a fresh copy of the repository."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_graph import doit, executed, make_repo, out, run_state

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import RunState
from lights_out_dev.run import smoke
from lights_out_dev.sweep import ledger
from lights_out_dev.sweep.plan import LoadedPlan, Plan, PlannedRun

ARGV = ["python", "train.py", "--task", "T", "--num_envs", "64", "--device", "cuda:0", "--rid", "abc",
        "--run_name", "t_64_gpu0_abc", "physics=newton"]


def _with(argv: list[str], old: str, new: str) -> list[str]:
    return [new if t == old else t for t in argv]


@pytest.mark.parametrize("other, same", [
    (_with(ARGV, "abc", "def"), True),  # a new RID on every launch
    (_with(ARGV, "t_64_gpu0_abc", "t_64_gpu0_abc_smoke"), True),  # the smoke's own run name
    (_with(ARGV, "cuda:0", "cuda:1"), True),  # another GPU index, same shape
    (ARGV[:-1] + ["--master_port=1234"], False),
    (_with(ARGV, "64", "128"), False),  # num_envs is the shape
    (_with(ARGV, "physics=newton", "physics=torch"), False),
    (_with(ARGV, "cuda:0", "cpu"), False),
])
def test_argv_hash_ignores_only_what_changes_per_launch(other, same):
    assert (smoke.argv_hash(other) == smoke.argv_hash(ARGV)) is same


def test_argv_hash_covers_env_and_ignores_the_rendezvous_port():
    mgpu = ["python", "-m", "torch.distributed.run", "--master_port=41000", "train.py", "--distributed"]
    assert smoke.argv_hash(mgpu) == smoke.argv_hash(_with(mgpu, "--master_port=41000", "--master_port=52000"))
    assert smoke.argv_hash(ARGV, {"A": "1"}) != smoke.argv_hash(ARGV, {"A": "2"})
    assert smoke.argv_hash(ARGV, {"A": "1", "B": "2"}) == smoke.argv_hash(ARGV, {"B": "2", "A": "1"})


SPEC = RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=[], script="workloads/train.py",
               trainer_task="Lo-Cartpole-v0", num_envs=64, smoke=True)


def _state(**kw) -> RunState:
    return RunState(run_key="cartpole__base", rid="r", run_name="n", task="cartpole:base", spec=SPEC, **kw)


@pytest.mark.parametrize("state, needed", [
    (None, True),
    (_state(), True),
    (_state(smoke="passed", smoke_argv_hash="h"), False),
    (_state(smoke="passed", smoke_argv_hash="other"), True),  # the command changed
    (_state(smoke="failed: crash", smoke_argv_hash="h"), True),  # a failed gate is never reused
])
def test_smoke_needed(state, needed):
    assert smoke.smoke_needed(state, "h") is needed


@pytest.mark.parametrize("verdict, text", [("completed", "passed"), ("config_error", "failed: config_error"),
                                           ("timeout", "failed: timeout"), ("stall", "failed: stall")])
def test_verdict_text(verdict, text):
    assert smoke.verdict_text(verdict) == text


def test_ledger_shows_a_failed_gate_of_a_run_that_never_started_its_long_attempt(tmp_path: Path):
    plan = Plan.model_validate({"name": "p", "smoke": True, "runs": [{"task": "cartpole:base"}]})
    run = PlannedRun(index=1, phase=1, task="cartpole:base", num_envs=64, max_iterations=None, seed=None,
                     trainer_args=[], gpus=1, time_limit_s=None, smoke=True)
    loaded = LoadedPlan(plan=plan, path=tmp_path / "p.yaml", runs=[run])
    st = _state(status="failed", final_verdict="config_error", smoke="failed: config_error",
                reason="smoke failed: config_error: traceback ends in KeyError",
                extra={"smoke": {"log_path": str(tmp_path / "x_smoke.log")}})
    text = ledger.render(loaded, {1: st})
    row = next(line for line in text.splitlines() if line.startswith("| 1 "))
    assert "| failed |" in row and "smoke failed: config_error" in row
    assert "### Run 1: cartpole:base" in text and "- Smoke: failed: config_error (log " in text
    assert "smoke gate" in ledger.render(loaded, {})  # planned, not started yet


# -- real processes ---------------------------------------------------------------------------------

ARGS = ["cartpole:base", "--smoke", "--num_envs", "16", "--max_iterations", "3"]


def smoke_logs(repo: Path) -> list[Path]:
    return sorted((repo / "local_experiment_logs").glob("*_smoke.log"))


def trainer_logs(repo: Path) -> list[Path]:
    return sorted((repo / "local_experiment_logs").glob("*.log"))


@pytest.mark.timeout(150)
def test_a_passed_smoke_precedes_the_long_attempt_and_is_reused_while_the_command_is_unchanged(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    first = doit(repo, *ARGS)
    assert first.returncode == 0 and executed(first, "cartpole:base"), out(first)
    st = run_state(repo, "cartpole:base")
    assert st["smoke"] == "passed" and st["status"] == "completed", st
    rec = st["smoke_record"]
    assert rec["verdict"] == "completed" and "reused" not in rec
    assert rec["progress"]["iteration"] >= 1  # evidence: a finished training update, not just start-up
    assert rec["ended_at"] <= st["attempts"][0]["started_at"]  # the gate came first
    assert rec["argv"][rec["argv"].index("--num_envs") + 1] == "16"  # the full-shape command
    assert rec["argv"][-1].endswith("_smoke") and rec["argv"][-1] != st["attempts"][0]["argv"][-1]
    assert len(smoke_logs(repo)) == 1 and "Learning iteration" in smoke_logs(repo)[0].read_text()
    assert "smoke passed" in first.stdout

    # Forced rerun (-a), same command: the run starts afresh, the gate is not run again.
    again = doit(repo, "-a", *ARGS)
    assert again.returncode == 0 and executed(again, "cartpole:base"), out(again)
    st2 = run_state(repo, "cartpole:base")
    assert st2["rid"] != st["rid"] and st2["status"] == "completed"
    assert st2["smoke"] == "passed" and st2["smoke_record"].get("reused"), st2["smoke_record"]
    assert st2["smoke_argv_hash"] == st["smoke_argv_hash"]
    assert "not run again" in again.stdout
    assert len(smoke_logs(repo)) == 1

    # A changed command (another seed) needs a new gate.
    changed = doit(repo, *ARGS, "--seed", "7")
    assert changed.returncode == 0, out(changed)
    st3 = run_state(repo, "cartpole:base")
    assert st3["smoke"] == "passed" and not st3["smoke_record"].get("reused")
    assert st3["smoke_argv_hash"] != st["smoke_argv_hash"]
    assert len(smoke_logs(repo)) == 2


@pytest.mark.timeout(90)
def test_a_failed_smoke_stops_the_run_before_its_long_attempt(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    p = doit(repo, *ARGS, "--inject", "config_error@0:always")
    assert p.returncode != 0, out(p)
    st = run_state(repo, "cartpole:base")
    assert st["status"] == "failed" and st["smoke"] == "failed: config_error", st
    assert st["attempts"] == []  # no long attempt was started
    assert st["reason"].startswith("smoke failed: config_error")
    assert trainer_logs(repo) == smoke_logs(repo) and len(smoke_logs(repo)) == 1
    assert "smoke failed: config_error" in p.stdout
    assert not (repo / "local_experiment_logs/targets/cartpole__base.json").exists()
    events = [json.loads(line) for line in (repo / "local_experiment_logs/events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events if e.get("task") == "cartpole:base"] == ["smoke", "failed"]


SMOKES_FIRST = """
name: smokes
smoke: true
smoke_first: true
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 3}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 3, trainer_args: ["--inject", "config_error@0:always"]}
"""


@pytest.mark.timeout(120)
def test_a_sweep_runs_the_smokes_of_a_phase_first_and_the_ledger_shows_their_verdicts(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    (repo / "sweeps/smokes.yaml").write_text(SMOKES_FIRST)
    p = doit(repo, "sweep", "--plan", "sweeps/smokes.yaml", timeout=100)
    runs = repo / "local_experiment_logs/sweeps/smokes/runs"
    good, bad = (json.loads((runs / f"{i:02d}.json").read_text()) for i in (1, 2))
    assert bad["status"] == "failed" and bad["smoke"] == "failed: config_error" and bad["attempts"] == [], out(p)
    assert good["status"] == "completed" and good["smoke"] == "passed", out(p)
    assert good["smoke_record"].get("reused")  # the long pass reused the gate of the smoke pass
    # both gates were judged before the first long attempt started
    archived = [json.loads(f.read_text()) for f in sorted((runs / "archive").glob("*.json"))]
    gate_ends = [a["smoke_record"]["ended_at"] for a in archived] + [bad["smoke_record"]["ended_at"]]
    assert max(gate_ends) <= good["attempts"][0]["started_at"]
    text = (repo / "local_experiment_logs/sweep_log.md").read_text()
    rows = [line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert "smoke passed" in rows[0] and "smoke failed: config_error" in rows[1], text


@pytest.mark.timeout(90)
def test_a_smoke_trainer_left_by_a_killed_supervisor_is_stopped_by_the_next_gate(tmp_path: Path):
    import os
    import signal
    import subprocess
    import time

    from test_graph import DOIT

    from lights_out_dev.host import procs

    repo = make_repo(tmp_path / "repo")
    overlay = tmp_path / "limits.toml"
    overlay.write_text("[tool.lights_out.monitor]\nstartup_stall_s = 3\n")
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1", "LIGHTS_OUT_CONFIG": str(overlay)}
    args = [*DOIT, *ARGS, "--inject", "stall@0:always"]  # the smoke never gets its first iteration
    first = subprocess.Popen(args, cwd=repo, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                             start_new_session=True)
    state_file = repo / "local_experiment_logs/runs/cartpole__base.json"
    leftover = None
    try:
        deadline = time.monotonic() + 30
        while leftover is None and time.monotonic() < deadline:
            time.sleep(0.2)
            try:
                leftover = json.loads(state_file.read_text())["smoke_record"]["handle"]
            except (OSError, ValueError, KeyError):
                pass
        assert leftover and procs.alive(leftover["pid"], leftover["start_time"])
        os.killpg(first.pid, signal.SIGKILL)  # the supervisor dies; its trainer (own session) lives on
        first.wait()
        assert procs.alive(leftover["pid"], leftover["start_time"])

        second = subprocess.run(args, cwd=repo, env=env, capture_output=True, text=True, timeout=60)
        # stopped by whichever comes first: the archiving of the old state or the new gate
        assert f"(pid {leftover['pid']}) left running" in second.stdout, out(second)
        assert not procs.alive(leftover["pid"], leftover["start_time"])
        st = run_state(repo, "cartpole:base")
        # the new gate judged its own trainer: no first iteration within the start-up limit
        assert st["smoke"] == "failed: timeout" and st["attempts"] == [], st
        assert "no first iteration within the start-up limit of 3s" in st["reason"]
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
        if leftover and procs.alive(leftover["pid"], leftover["start_time"]):
            os.killpg(leftover["pgid"], signal.SIGKILL)
