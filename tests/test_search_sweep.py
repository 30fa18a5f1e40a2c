"""Search sweeps end to end: real `doit sweep` processes, the reference trainer on CPU (2 CPU slots).

An Optuna (TPE) search over a runner key that the trainer takes as its --num_envs flag and a Hydra key
(agent.algorithm.learning_rate=...), 3 seeds per configuration, ASHA on Train/mean_reward, a compute
budget, and one run whose learning rate turns NaN for real; SIGKILLed half-way and resumed.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lights_out_dev.host import procs
from tests.test_sweep import (
    all_pids,
    cleanup,
    doit_argv,
    env_for,
    ledger_rows,
    make_repo,
    start,
    states,
)

SEARCH = """\
name: search
mode: parallel
time_limit: 5m
budget: 60 gpu_min
health: {bounds: {Loss/value: 1.0e6}}
runs:
  - task: cartpole:base
    overrides: {max_iterations: 10, seed: 1, trainer_args: [--inject, "slow=0.4"]}
    search:
      method: optuna
      samples: 2
      repeats: 3
      seed: 7
      space:
        num_envs: {choice: [16, 24]}
        agent.algorithm.learning_rate: {log_uniform: [1.0e-4, 3.0e-3]}
      prune: {rule: asha, rungs: [4], reduction_factor: 3, min_runs: 3}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 10, seed: 9, trainer_args: [--inject, "nan@3"]}
"""

BUDGET = """\
name: budget
mode: parallel
budget: 1 gpu_s
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 2}
    search:
      method: grid
      space: {num_envs: {choice: [16, 24]}}
      repeats: 2
"""


def trial_files(repo: Path, name: str) -> dict[str, dict]:
    d = repo / "local_experiment_logs/sweeps" / name / "search"
    return {f.name: json.loads(f.read_text()) for f in sorted(d.glob("*.json"))}


@pytest.mark.timeout(600)
def test_optuna_search_with_asha_nan_budget_survives_sigkill(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"search": SEARCH})
    first = start(repo, "sweep", "--plan", "sweeps/search.yaml", log="first.log")
    try:
        deadline = time.time() + 300
        while time.time() < deadline:  # kill once a run is final and another is training
            sts = states(repo, "search")
            final = [i for i, s in sts.items() if s["status"] in ("completed", "pruned", "failed")]
            running = [i for i, s in sts.items() if s["status"] == "running" and s["attempts"]
                       and procs.alive(s["attempts"][-1]["pid"])]
            if final and running:
                break
            assert first.poll() is None, (repo / "first.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never got half-way:\n" + (repo / "first.log").read_text())
        os.kill(first.pid, signal.SIGKILL)
        first.wait()
        trials_before = trial_files(repo, "search")
        before = states(repo, "search")
        assert trials_before, "the first trial's parameters were not written before its launch"
        second = subprocess.run(doit_argv("sweep", "--plan", "sweeps/search.yaml"), cwd=repo, env=env_for(repo),
                                capture_output=True, text=True, timeout=400)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
    finally:
        cleanup(first)

    after = states(repo, "search")
    assert sorted(after) == list(range(1, 8)), out
    # the study resumed: trials asked before the kill kept their parameters, each trial asked once
    trials = trial_files(repo, "search")
    assert sorted(trials) == ["entry1_trial000.json", "entry1_trial001.json"], trials
    for name, doc in trials_before.items():
        assert trials[name] == doc
    for i, s in before.items():
        if s["status"] in ("completed", "pruned", "failed"):
            assert after[i]["attempts"] == s["attempts"], f"run {i} was rerun"
    # every repeat of a trial ran its configuration, seeds 1, 2, 3; the Hydra token reached the trainer
    for t, runs in enumerate(([1, 2, 3], [4, 5, 6])):
        params = trials[f"entry1_trial{t:03d}.json"]["params"]
        for seed, i in enumerate(runs, start=1):
            argv = after[i]["attempts"][0]["argv"]
            assert argv[argv.index("--num_envs") + 1] == str(params["num_envs"])
            assert argv[argv.index("--seed") + 1] == str(seed)
            assert f"agent.algorithm.learning_rate={params['agent.algorithm.learning_rate']:.6g}" in argv
    # ASHA pruned runs: status pruned (not failed), stopped at the rung, checkpoint kept
    pruned = [i for i in range(1, 7) if after[i]["status"] == "pruned"]
    assert pruned, {i: s["status"] for i, s in after.items()}
    for i in pruned:
        s = after[i]
        assert s["final_verdict"] == "pruned" and "ASHA at iteration 4" in s["reason"], s["reason"]
        assert s["attempts"][-1]["progress"]["iteration"] < 9
        assert s["checkpoints"] and all(Path(c).exists() for c in s["checkpoints"])
    assert all(after[i]["status"] in ("completed", "pruned") for i in range(1, 7))
    # the NaN run: its first attempt judged nan from the trainer's real NaN failure, then one reseeded retry
    nan_run = after[7]
    assert nan_run["attempts"][0]["verdict"] == "nan", nan_run["attempts"][0]
    assert "reseed" in nan_run["attempts"][0]["decision"]
    retry = nan_run["attempts"][1]["argv"]
    assert retry[retry.index("--seed") + 1] == str(9 + 1000)
    assert nan_run["status"] == "completed"
    for pid in all_pids(after):
        assert not procs.alive(pid), f"orphan process {pid}"
    # ledger, report and compute ledger
    rows = ledger_rows(repo)
    assert {i: r[6] for i, r in rows.items()} == {i: s["status"] for i, s in after.items()}
    sweep_dir = repo / "local_experiment_logs/sweeps/search"
    report = (sweep_dir / "report.md").read_text()
    assert "## Configurations (over seeds)" in report and " ± " in report, report
    assert report.count("agent.algorithm.learning_rate=") >= 2 and "won: final Train/mean_reward" in report
    assert "## Compute" in report and "slot-s" in report
    assert "best.png" in report and (sweep_dir / "best.png").stat().st_size > 1000
    assert "seed=3" in rows[3][9] and "learning_rate=" in rows[3][9]  # varied parameters in the ledger notes
    compute = json.loads((sweep_dir / "compute.json").read_text())
    assert compute["unit"] == "slot_s" and compute["total_s"] > 0 and compute["pruned_s"] > 0
    assert compute["failed_s"] > 0  # the NaN attempt
    assert set(compute["runs"]) == {str(i) for i in range(1, 8)}
    status = subprocess.run([*doit_argv()[:1], "-m", "lights_out_dev.cli.status", "--json"], cwd=repo, env=env_for(repo),
                            capture_output=True, text=True, timeout=120)
    data = json.loads(status.stdout)
    assert data["compute"]["total_s"] == pytest.approx(compute["total_s"], rel=0.05)
    assert "seed=1" in data["runs"][0]["varied"]


@pytest.mark.timeout(300)
def test_a_spent_compute_limit_stops_new_launches_with_an_event(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"budget": BUDGET})
    done = subprocess.run(doit_argv("sweep", "--plan", "sweeps/budget.yaml"), cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    sts = states(repo, "budget")
    launched = [i for i, s in sts.items() if s["attempts"]]
    skipped = [i for i, s in sts.items() if s["status"] == "skipped"]
    assert len(launched) == 2 and len(skipped) == 2, out  # the two first runs took both slots at 0 spent
    assert all("budget spent" in sts[i]["reason"] for i in skipped)
    events = [json.loads(x) for x in (repo / "local_experiment_logs/events.jsonl").read_text().splitlines()]
    spent = [e for e in events if e["kind"] == "budget_spent"]
    assert len(spent) == 1 and spent[0]["budget_s"] == 1.0


DIVERGE = """\
name: diverge
health: {bounds: {Loss/value: 1.0e5}}
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 40, seed: 4, trainer_args: [--inject, "diverge@3"]}
"""


@pytest.mark.timeout(300)
def test_a_diverged_run_is_stopped_from_its_tensorboard_file_and_reseeded_from_before_the_blow_up(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"diverge": DIVERGE})
    done = subprocess.run(doit_argv("sweep", "--plan", "sweeps/diverge.yaml"), cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    st = states(repo, "diverge")[1]
    first, second = st["attempts"]
    assert first["verdict"] == "diverged" and "Loss/value reached" in first["reason"], first
    assert first["progress"]["iteration"] < 39  # stopped while training, not at the end
    assert first["decision"].startswith("reseed")
    argv = second["argv"]
    assert argv[argv.index("--seed") + 1] == "1004"
    # Isaac Lab 2.x resume (the reference trainer's profile): exact regexes for the run and the file
    resumed, run_dir = argv[argv.index("--checkpoint") + 1], argv[argv.index("--load_run") + 1]
    assert re.fullmatch(resumed, "model_0.pt") and re.fullmatch(run_dir, Path(first["tb_dir"]).name)  # before the blow-up
    assert st["status"] == "completed" and second["verdict"] == "completed"


OPTUNA_SHA = """\
name: sha
runs:
  - task: cartpole:base
    overrides: {max_iterations: 8, seed: 1, trainer_args: [--inject, "slow=0.4"]}
    search:
      method: random
      samples: 3
      repeats: 2
      space: {agent.algorithm.learning_rate: {log_uniform: [1.0e-5, 3.0e-3]}}
      prune: {rule: optuna_sha, rungs: [3], reduction_factor: 2}
"""


@pytest.mark.timeout(300)
def test_optunas_successive_halving_pruner_stops_runs_of_a_real_sweep(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"sha": OPTUNA_SHA})
    done = subprocess.run(doit_argv("sweep", "--plan", "sweeps/sha.yaml"), cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    sts = states(repo, "sha")
    assert all(s["status"] in ("completed", "pruned") for s in sts.values()), out
    pruned = [s for s in sts.values() if s["status"] == "pruned"]
    # with reduction factor 2, a run worse than the best of those at iteration 3 before it is stopped there
    # (none pruned would need each of 6 runs to beat all before it: about 1 in 720)
    assert pruned and all("Optuna SuccessiveHalvingPruner at iteration 3" in s["reason"] for s in pruned), out


RESUME = """\
name: resume
runs:
  - task: cartpole:base
    overrides: {max_iterations: 10, seed: 1, trainer_args: [--inject, "slow=0.4"]}
    search:
      method: grid
      repeats: 6
      space: {num_envs: {choice: [16]}}
      prune: {rule: asha, rungs: [3], reduction_factor: 100, min_runs: 2, resume_best: true}
"""


@pytest.mark.timeout(300)
def test_resume_best_continues_the_pruned_seeds_of_the_best_configuration(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"resume": RESUME})
    done = subprocess.run(doit_argv("sweep", "--plan", "sweeps/resume.yaml"), cwd=repo, env=env_for(repo),
                          capture_output=True, text=True, timeout=280)
    out = done.stdout + done.stderr
    assert done.returncode == 0, out
    sts = states(repo, "resume")
    assert all(s["status"] == "completed" for s in sts.values()), {i: s["status"] for i, s in sts.items()}
    resumed = [s for s in sts.values() if s["resumed_after_pruning"]]
    # one configuration, 6 seeds, only the best so far kept at the rung: none pruned would need each seed to
    # beat all before it (about 1 in 720)
    assert resumed, out
    for s in resumed:
        pruned, cont = s["attempts"][-2], s["attempts"][-1]
        assert pruned["verdict"] == "pruned" and cont["verdict"] == "completed"
        assert "--resume" in cont["argv"] and cont["progress"]["iteration"] == cont["progress"]["total"]
    for i in sts:
        assert (repo / f"local_experiment_logs/sweeps/resume/targets/{i:02d}.json").exists()
