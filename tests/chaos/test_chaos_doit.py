"""Chaos through real `doit` processes in copies of the repository: signals at the wrong moment, Ctrl-C of
one task, state made for another spec, a damaged state file, a sweep whose trainer script is missing."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
from conftest import processes_with
from filelock import FileLock
from test_sweep import cleanup, doit_argv, env_for, make_repo, states

from lights_out_dev.host import procs

SLOW_PAIR = """\
name: pair
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 400, trainer_args: [--inject, "slow=0.3@1"]}
    grid: {seed: [1, 2]}
"""

ONE = """\
name: one
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 2, seed: SEED}
"""


def doit(repo: Path, *args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run(doit_argv(*args), cwd=repo, env=env_for(repo), capture_output=True, text=True,
                          timeout=timeout)


def text(p: subprocess.CompletedProcess) -> str:
    return p.stdout + p.stderr


def no_traceback(output: str) -> None:
    assert "Traceback" not in output and "KeyboardInterrupt" not in output, output[-3000:]


def run_state(repo: Path, task: str = "cartpole:base") -> dict | None:
    path = repo / "local_experiment_logs" / "runs" / f"{task.replace(':', '__')}.json"
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def wait_for(pred, timeout: float, what: str):
    assert procs.wait_until(pred, timeout, max_sleep=0.5), f"timed out waiting for {what}"


def nothing_of(sts: list[dict]) -> None:
    for s in sts:
        assert processes_with(s["rid"]) == [], f"a trainer of {s['task']} (rid {s['rid']}) is still running"


@pytest.mark.timeout(400)
def test_03_sigterm_while_the_sweep_is_outside_its_wait_stops_every_trainer(tmp_path):
    """The scheduler's main thread is held inside refresh_ledger (its lock is taken here) when SIGTERM
    lands: the signal must still reach every trainer, and doit ends with 143, without a traceback."""
    repo = make_repo(tmp_path / "repo", {"pair": SLOW_PAIR})
    ledger_lock = FileLock(str(repo / "local_experiment_logs" / "locks" / "ledger.lock"))
    (repo / "local_experiment_logs" / "locks").mkdir(parents=True)
    ledger_lock.acquire()
    p = subprocess.Popen(doit_argv("sweep", "--plan", "sweeps/pair.yaml"), cwd=repo, env=env_for(repo),
                         stdout=open(repo / "out.log", "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        # both trainers started: the main thread went on to its first ledger write and waits for the lock
        wait_for(lambda: len(sts := states(repo, "pair")) == 2 and all(s["attempts"] for s in sts.values()),
                 50, "two started runs")
        assert "cannot write the ledger" not in (repo / "out.log").read_text()  # still waiting (60 s lock timeout)
        os.kill(p.pid, signal.SIGTERM)
        time.sleep(1.0)  # the signal lands while the main thread still waits for the ledger lock
        ledger_lock.release()
        rc = p.wait(timeout=120)
    finally:
        ledger_lock.release()
        cleanup(p)
    out = (repo / "out.log").read_text()
    assert rc == 128 + signal.SIGTERM, out[-3000:]
    no_traceback(out)
    sts = list(states(repo, "pair").values())
    assert [s["status"] for s in sts] == ["interrupted", "interrupted"]
    assert all(s["attempts"][-1]["interrupted"] for s in sts)
    nothing_of(sts)


@pytest.mark.timeout(400)
def test_13_ctrl_c_of_one_task_resumes_from_its_checkpoint(tmp_path):
    repo = make_repo(tmp_path / "repo", {})
    args = ("cartpole:base", "--num_envs", "16", "--max_iterations", "30", "--seed", "77", "--inject", "slow=0.3@1")
    p = subprocess.Popen(doit_argv(*args), cwd=repo, env=env_for(repo), stdout=open(repo / "first.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        wait_for(lambda: (s := run_state(repo)) and s["attempts"] and
                 (s["attempts"][-1]["progress"].get("iteration") or 0) >= 3, 240, "iteration 3")
        os.kill(p.pid, signal.SIGINT)  # what a terminal's Ctrl-C delivers to doit (the trainer has its own session)
        rc = p.wait(timeout=120)
    finally:
        cleanup(p)
    out = (repo / "first.log").read_text()
    assert rc == 128 + signal.SIGINT, out[-3000:]
    no_traceback(out)
    first = run_state(repo)
    assert first["status"] == "interrupted" and first["checkpoints"], first["checkpoints"]
    nothing_of([first])

    again = doit(repo, *args)
    assert again.returncode == 0, text(again)[-3000:]
    st = run_state(repo)
    resumed = st["attempts"][1]["argv"]
    assert "--resume" in resumed and "--load_run" in resumed  # continues the checkpoint, not iteration 0
    assert st["status"] == "completed" and st["final"]["iteration"] == 30
    assert st["attempts"][0]["interrupted"] and not st["attempts"][1]["interrupted"]


@pytest.mark.timeout(400)
def test_05_a_changed_spec_is_refused_then_wiped_or_continued(tmp_path):
    repo = make_repo(tmp_path / "repo", {})
    old = ("cartpole:base", "--num_envs", "16", "--max_iterations", "300", "--seed", "77")
    p = subprocess.Popen(doit_argv(*old), cwd=repo, env=env_for(repo), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for(lambda: (s := run_state(repo)) and s["attempts"] and s["attempts"][-1].get("healthy_at"), 240,
                 "a healthy first run")
        os.kill(p.pid, signal.SIGINT)
        p.wait(timeout=120)
    finally:
        cleanup(p)
    before = run_state(repo)
    assert before["status"] == "interrupted"

    new = ("cartpole:base", "--num_envs", "16", "--max_iterations", "4", "--seed", "11")
    refused = doit(repo, *new)
    assert refused.returncode != 0
    line = [x for x in refused.stdout.splitlines() if x.startswith("lights-out:")]
    assert len(line) == 1 and "max_iterations 300 -> 4" in line[0] and "seed 77 -> 11" in line[0], text(refused)
    assert "--continue" in line[0] and "--wipe" in line[0]
    no_traceback(text(refused))
    assert run_state(repo) == before  # nothing launched, nothing rewritten

    both = doit(repo, *new, "--continue", "--wipe")
    assert both.returncode != 0 and "contradict" in both.stdout, text(both)
    assert run_state(repo) == before

    wiped = doit(repo, *new, "--wipe")
    assert wiped.returncode == 0, text(wiped)[-3000:]
    st = run_state(repo)
    assert st["status"] == "completed" and st["spec"]["seed"] == 11 and st["final"]["iteration"] == 4
    archived = list((repo / "local_experiment_logs" / "runs" / "archive").glob("cartpole__base_*.json"))
    assert [json.loads(a.read_text())["spec"]["seed"] for a in archived] == [77]  # the old run is kept


@pytest.mark.timeout(400)
def test_05_two_plans_with_one_name_do_not_share_results(tmp_path):
    repo = make_repo(tmp_path / "repo", {"one": ONE.replace("SEED", "1"), "one_b": ONE.replace("SEED", "2")})
    first = doit(repo, "sweep", "--plan", "sweeps/one.yaml")
    assert first.returncode == 0, text(first)[-3000:]
    done = states(repo, "one")[1]

    other = doit(repo, "sweep", "--plan", "sweeps/one_b.yaml")
    assert other.returncode != 0
    assert "seed 1 -> 2" in other.stdout and "--continue" in other.stdout, text(other)[-3000:]
    no_traceback(text(other))
    assert states(repo, "one")[1] == done

    kept = doit(repo, "sweep", "--plan", "sweeps/one_b.yaml", "--continue")
    assert kept.returncode == 0, text(kept)[-3000:]
    assert states(repo, "one")[1]["rid"] == done["rid"]  # kept as it was: --continue

    wiped = doit(repo, "sweep", "--plan", "sweeps/one_b.yaml", "--wipe")
    assert wiped.returncode == 0, text(wiped)[-3000:]
    fresh = states(repo, "one")[1]
    assert fresh["rid"] != done["rid"] and fresh["spec"]["seed"] == 2 and fresh["status"] == "completed"


@pytest.mark.timeout(400)
def test_04_a_damaged_state_is_kept_aside_named_and_the_run_redone(tmp_path):
    repo = make_repo(tmp_path / "repo", {"one": ONE.replace("SEED", "1")})
    assert doit(repo, "sweep", "--plan", "sweeps/one.yaml").returncode == 0
    path = repo / "local_experiment_logs" / "sweeps" / "one" / "runs" / "01.json"
    good = path.read_bytes()
    path.write_bytes(good[: len(good) // 2])  # truncated, as after a filesystem crash

    again = doit(repo, "sweep", "--plan", "sweeps/one.yaml")
    assert again.returncode == 0, text(again)[-3000:]
    no_traceback(text(again))
    said = [x for x in again.stdout.splitlines() if "is damaged" in x]
    assert len(said) == 1 and str(path) in said[0] and "not valid JSON" in said[0], text(again)[-3000:]
    kept = list(path.parent.glob("01.json.damaged-*"))
    assert len(kept) == 1 and kept[0].read_bytes() == good[: len(good) // 2]  # recoverable: nothing deleted
    assert json.loads(path.read_text())["status"] == "completed"


@pytest.mark.timeout(200)
def test_07_a_sweep_whose_trainer_script_is_missing_launches_nothing(tmp_path):
    repo = make_repo(tmp_path / "repo", {"one": ONE.replace("SEED", "1")})
    with open(repo / "pyproject.toml", "a") as f:
        f.write('\n[tool.lights_out.launchers.lab]\nscript = "missing/train.py"\n')
    p = doit(repo, "sweep", "--plan", "sweeps/one.yaml")
    assert p.returncode != 0
    said = [x for x in p.stdout.splitlines() if x.startswith("lights-out sweep:")]
    assert len(said) == 1 and "trainer script 'missing/train.py' does not exist" in said[0], text(p)[-3000:]
    no_traceback(text(p))
    assert not list((repo / "local_experiment_logs").glob("*.log"))  # no trainer ever started
    assert all(not s["attempts"] for s in states(repo, "one").values())
