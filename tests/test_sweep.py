"""Sweeps through real `doit` processes and the reference trainer on CPU (2 CPU slots).

Each test works in a fresh copy of the repository, so states, ledgers and doit's database never
mix with another test or with the developer's own runs.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_graph import make_repo as copy_project  # the project copied, without plans

from lights_out_dev.host import procs

ROOT = Path(__file__).resolve().parents[1]

# Phase 1: five cart-pole runs (one recovers from a crash by retry, one gives up on a config
# error); phase 2: the best by final reward promoted to cartpole:base-mgpu, 2 ranks (gloo) on CPU.
CHAOS = """\
name: chaos
mode: parallel
time_limit: 5m
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 1, trainer_args: [--inject, "crash@1"]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 2, trainer_args: [--inject, "config_error@1:always"]}
  - task: cartpole:base
    overrides: {max_iterations: 4, trainer_args: [--inject, "slow=0.5@1"]}
    grid: {num_envs: [16, 32], seed: [3]}
  - task: cartpole:base
    overrides: {num_envs: 32, max_iterations: 4, seed: 4, trainer_args: [--logger, tensorboard]}
promote:
  metric: Train/mean_reward
  mode: max
  from_phase: 1
  phase: 2
  overrides: {max_iterations: 3}
"""

TWIN = """\
name: twin
runs:
  - task: cartpole:base
    overrides: {max_iterations: 2}
    grid: {num_envs: [16, 32], seed: [1]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 2, seed: 2}
"""


def make_repo(dest: Path, plans: dict[str, str]) -> Path:
    copy_project(dest)
    for name, text in plans.items():
        (dest / "sweeps" / f"{name}.yaml").write_text(text)
    return dest


def doit_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "doit", *args]


def env_for(repo: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTS_OUT_ROOT", None)
    return env


def start(repo: Path, *args: str, log: str) -> subprocess.Popen:
    return subprocess.Popen(doit_argv(*args), cwd=repo, env=env_for(repo), stdout=open(repo / log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


def states(repo: Path, name: str) -> dict[int, dict]:
    out = {}
    for f in sorted((repo / "local_experiment_logs/sweeps" / name / "runs").glob("[0-9][0-9].json")):
        try:
            out[int(f.stem)] = json.loads(f.read_text())
        except ValueError:
            continue
    return out


def all_pids(sts: dict[int, dict]) -> list[int]:
    return [a[k] for s in sts.values() for a in s["attempts"] for k in ("pid", "pgid") if a.get(k)]


def max_concurrency(sts: dict[int, dict]) -> int:
    """Most attempts alive at one moment (from their recorded start/end times)."""
    marks = []
    for s in sts.values():
        for a in s["attempts"]:
            if a.get("started_at") and a.get("ended_at"):
                marks += [(a["started_at"], 1), (a["ended_at"], -1)]
    level = peak = 0
    for _, d in sorted(marks, key=lambda m: (m[0], m[1])):
        level += d
        peak = max(peak, level)
    return peak


def ledger_rows(repo: Path) -> dict[int, list[str]]:
    text = (repo / "local_experiment_logs/sweep_log.md").read_text()
    rows = {}
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| ") and cells[0].isdigit():
            rows[int(cells[0])] = cells
    return rows


def cleanup(*popens: subprocess.Popen) -> None:
    for p in popens:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()


@pytest.mark.timeout(420)
def test_two_phase_sweep_with_failures_sigkill_and_restart(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"chaos": CHAOS})
    first = start(repo, "sweep", "--plan", "sweeps/chaos.yaml", log="first.log")
    try:
        # Kill half-way: run 1 has crashed once, run 2 gave up, some run completed and one is running.
        deadline = time.time() + 200
        while time.time() < deadline:
            sts = states(repo, "chaos")
            done = [i for i, s in sts.items() if s["status"] == "completed"]
            running = [i for i, s in sts.items() if s["status"] == "running" and s["attempts"]
                       and procs.alive(s["attempts"][-1]["pid"])]
            crashed = any(a["verdict"] == "crash" for a in sts.get(1, {}).get("attempts", []))
            if crashed and sts.get(2, {}).get("status") == "failed" and done and running:
                break
            assert first.poll() is None, (repo / "first.log").read_text()
            time.sleep(0.2)
        else:
            pytest.fail("the sweep never reached the half-way point:\n" + (repo / "first.log").read_text())
        os.kill(first.pid, signal.SIGKILL)  # the doit process only: its trainers live on in their sessions
        first.wait()
        before = states(repo, "chaos")
        finished_before = {i: s for i, s in before.items() if s["status"] in ("completed", "failed")}
        interrupted = [i for i, s in before.items() if s["status"] == "running"]
        assert interrupted

        second = subprocess.run(doit_argv("sweep", "--plan", "sweeps/chaos.yaml"), cwd=repo, env=env_for(repo),
                                capture_output=True, text=True, timeout=300)
        out = second.stdout + second.stderr
        assert second.returncode == 0, out
    finally:
        cleanup(first)

    after = states(repo, "chaos")
    assert sorted(after) == [1, 2, 3, 4, 5, 6], out
    # finished runs were not rerun
    for i, s in finished_before.items():
        assert after[i]["attempts"] == s["attempts"], f"run {i} was rerun"
    # the interrupted ones were adopted or retried, and completed
    for i in interrupted:
        assert after[i]["status"] == "completed", after[i]
        for a in after[i]["attempts"][:-1]:
            assert a["verdict"] in ("killed", "crash"), a
    # run 1 recovered from its crash by retry; run 2 gave up on the config error at once
    assert after[1]["status"] == "completed"
    assert [a["verdict"] for a in after[1]["attempts"]][0] == "crash"
    assert after[2]["status"] == "failed" and after[2]["final_verdict"] == "config_error"
    assert len(after[2]["attempts"]) == 1
    # promotion: the best phase-1 run (by final reward) as its -mgpu variant with 2 ranks, envs x 2
    best = max((s for i, s in after.items() if i <= 5 and s["status"] == "completed"),
               key=lambda s: s["final"]["mean_reward"])
    promo = after[6]
    assert promo["task"] == "cartpole:base-mgpu" and promo["status"] == "completed", promo
    assert promo["spec"]["gpus"] == 2
    assert promo["spec"]["num_envs"] == 2 * best["spec"]["num_envs"]
    argv = promo["attempts"][-1]["argv"]
    assert "--nproc_per_node=2" in argv and "--distributed" in argv
    # the best run's configuration goes with it (seen missing on 2x H200: the grid's seed was dropped);
    # the promote block's max_iterations wins over the best run's
    assert argv[argv.index("--seed") + 1] == str(best["spec"]["seed"])
    assert argv[argv.index("--max_iterations") + 1] == "3"
    assert best["spec"]["extra_args"] and " ".join(best["spec"]["extra_args"]) in " ".join(argv)
    decision = json.loads((repo / "local_experiment_logs/sweeps/chaos/runs/06.promotion.json").read_text())
    assert after[decision["source"]]["final"]["mean_reward"] == best["final"]["mean_reward"]
    # never more runs at once than CPU slots; nothing left running
    assert max_concurrency(after) <= 2
    for pid in all_pids(after):
        assert not procs.alive(pid), f"orphan process {pid}"
    # every run has its doit target
    for i in after:
        assert (repo / f"local_experiment_logs/sweeps/chaos/targets/{i:02d}.json").exists()
    # the ledger and the report agree with the state
    rows = ledger_rows(repo)
    assert {i: r[6] for i, r in rows.items()} == {i: s["status"] for i, s in after.items()}
    assert rows[6][2] == "cartpole:base-mgpu" and "promoted from run" in rows[6][9]
    report = (repo / "local_experiment_logs/sweeps/chaos/report.md").read_text()
    assert report.count("| cartpole:base") == 6 and "reward.png" in report
    assert (repo / "local_experiment_logs/sweeps/chaos/reward.png").stat().st_size > 1000
    for i in after:
        art = next((repo / "local_experiment_logs/sweeps/chaos/artifacts").glob(f"{i:02d}_*"))
        assert (art / "spec.json").exists() and (art / "metrics.csv").exists()
    assert "params/agent.yaml" in " ".join(str(p.relative_to(art)) for p in art.rglob("*.yaml"))
    events = [json.loads(x) for x in (repo / "local_experiment_logs/events.jsonl").read_text().splitlines()]
    assert events[-1]["kind"] == "sweep_finished" and events[-1]["ok"] is True
    # a third `doit sweep` has nothing left to do
    third = subprocess.run(doit_argv("sweep", "--plan", "sweeps/chaos.yaml"), cwd=repo, env=env_for(repo),
                           capture_output=True, text=True, timeout=120)
    assert third.returncode == 0, third.stdout + third.stderr
    assert states(repo, "chaos") == after


@pytest.mark.timeout(240)
def test_two_sweeps_on_one_plan_never_launch_a_run_twice(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"twin": TWIN})
    a = start(repo, "sweep", "--plan", "sweeps/twin.yaml", log="a.log")
    b = start(repo, "sweep", "--plan", "sweeps/twin.yaml", log="b.log")
    try:
        a.wait(timeout=200)
        b.wait(timeout=200)
    finally:
        cleanup(a, b)
    outs = {p: (repo / log).read_text() for p, log in ((a, "a.log"), (b, "b.log"))}
    loser = [p for p in (a, b) if "another sweep process" in outs[p]]
    assert len(loser) == 1, outs
    assert loser[0].returncode != 0
    winner = a if loser[0] is b else b
    assert winner.returncode == 0, outs[winner]
    assert f"another sweep process {winner.pid} is running plan 'twin'" in outs[loser[0]]
    evs = [json.loads(line) for line in (repo / "local_experiment_logs/events.jsonl").read_text().splitlines()]
    refused = [e for e in evs if e["kind"] == "refused"]  # the loser's launch ends in an event, not in silence
    assert len(refused) == 1 and refused[0]["sweep"] == "twin" and "another sweep process" in refused[0]["reason"]
    assert [e["ok"] for e in evs if e["kind"] == "sweep_finished"] == [True]  # the winner's, only
    sts = states(repo, "twin")
    assert sorted(sts) == [1, 2, 3]
    assert all(s["status"] == "completed" and len(s["attempts"]) == 1 for s in sts.values()), sts
    logs = list((repo / "local_experiment_logs").glob("*_sweep__twin-*.log"))
    assert len(logs) == 3


@pytest.mark.timeout(120)
def test_bad_plans_and_foreign_ledger_are_one_sentence(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {
        "typo": "name: typo\nruns:\n  - task: cartpol:base\n    overrides: {max_iterations: 1}\n",
        "broken": "name: broken\nruns:\n  - task: cartpole:base\n    envs: 3\n",
        "other": "name: other\nruns:\n  - task: cartpole:base\n    overrides: {max_iterations: 1, num_envs: 8}\n",
    })
    run = lambda *a: subprocess.run(doit_argv(*a), cwd=repo, env=env_for(repo), capture_output=True,  # noqa: E731
                                    text=True, timeout=100)
    p = run("sweep", "--plan", "sweeps/typo.yaml")
    assert p.returncode != 0
    assert "line 3: unknown task 'cartpol:base'; did you mean 'cartpole:base'" in p.stdout + p.stderr
    p = run("sweep", "--plan", "sweeps/broken.yaml")
    assert p.returncode != 0 and "line 4: 'runs.0.envs' is not a plan field" in p.stdout + p.stderr
    assert "Traceback" not in p.stdout + p.stderr
    # a ledger of another sweep: refuse without --continue/--wipe; --wipe archives it
    (repo / "local_experiment_logs/sweep_log.md").write_text("# Sweep: older\nStarted: -\n")
    p = run("sweep", "--plan", "sweeps/other.yaml")
    assert p.returncode != 0 and "belongs to sweep 'older'" in p.stdout and "--wipe" in p.stdout
    assert not (repo / "local_experiment_logs/sweeps/other/runs/01.json").exists()
    p = run("sweep", "--plan", "sweeps/other.yaml", "--wipe")
    assert p.returncode == 0, p.stdout + p.stderr
    assert list((repo / "local_experiment_logs").glob("sweep_log.older.*.md"))
    assert (repo / "local_experiment_logs/sweep_log.md").read_text().startswith("# Sweep: other")
    # a deleted ledger is rebuilt from state by the next update
    (repo / "local_experiment_logs/sweep_log.md").unlink()
    p = run("sweep", "--plan", "sweeps/other.yaml")
    assert p.returncode == 0
    assert "| 1 | 1 | cartpole:base | 8 | CPU | 1h | completed |" in (repo / "local_experiment_logs/sweep_log.md").read_text()


@pytest.mark.timeout(30)
@pytest.mark.parametrize("envs,mem_gb,per_gb,expected", [
    (8192, 24.0, 300.0, 7200),   # a 24 GB GPU caps a parallel run
    (4096, 24.0, 300.0, 4096),   # under the cap: unchanged
    (8192, 80.0, 300.0, 8192),   # a big GPU: unchanged
    (8192, None, 300.0, 8192),   # no NVML: no cap
    (8192, 24.0, None, 8192),    # the plan asks for none
    (None, 24.0, 300.0, None),   # the task's own default
    (64, 0.1, 1.0, 1),           # never below one env
])
def test_parallel_env_cap(envs, mem_gb, per_gb, expected):
    from lights_out_dev.sweep.scheduler import capped_envs

    assert capped_envs(envs, mem_gb, per_gb) == expected


@pytest.mark.timeout(30)
def test_unwritable_ledger_is_one_warning_and_the_sweep_goes_on(tmp_path: Path):
    from lights_out_dev.core.config import ProjectConfig
    from lights_out_dev.sweep.plan import load_plan
    from lights_out_dev.sweep.scheduler import Sweep

    (tmp_path / "blocker").write_text("a file where the ledger's directory should be")
    plan = tmp_path / "p.yaml"
    plan.write_text("name: p\nruns:\n  - task: cartpole:base\n")
    cfg = ProjectConfig(logs_dir=str(tmp_path / "logs"), ledger=str(tmp_path / "blocker" / "sweep_log.md"))
    said: list[str] = []
    sweep = Sweep(load_plan(plan), cfg, tmp_path, status_line=said.append)
    sweep.refresh_ledger()
    sweep.refresh_ledger()
    assert len(said) == 1 and "cannot write the ledger" in said[0] and "runs go on" in said[0]
    (tmp_path / "blocker").unlink()
    sweep.refresh_ledger()  # writable again: rebuilt from state
    assert (tmp_path / "blocker" / "sweep_log.md").read_text().startswith("# Sweep: p")


@pytest.mark.timeout(180)
def test_a_sweep_blocked_by_someone_elses_slots_says_so_then_goes_on(tmp_path: Path):
    """While another process holds every slot, the status line names why the sweep waits (not a bare
    'waiting'); once the slots free up, the waiting run starts at once."""
    from filelock import FileLock

    repo = make_repo(tmp_path / "repo", {"twin": TWIN})
    overlay = tmp_path / "fast_status.toml"
    locks = tmp_path / "locks"
    overlay.write_text(f"cpu_slots = 1\nlocks_dir = '{locks}'\n[monitor]\nstatus_interval_s = 1\n")
    locks.mkdir(parents=True)
    held = FileLock(str(locks / "cpu0.lock"))
    held.acquire()
    p = subprocess.Popen(doit_argv("sweep", "--plan", "sweeps/twin.yaml"), cwd=repo,
                         env={**env_for(repo), "LIGHTS_OUT_CONFIG": str(overlay)}, stdout=open(repo / "out.log", "w"),
                         stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while "waiting: " not in (repo / "out.log").read_text() and time.monotonic() < deadline:
            time.sleep(0.5)
        text = (repo / "out.log").read_text()
        assert "waiting: no free CPU slot for this run: all 1 CPU slots are taken" in text, text[-2000:]
        assert not states(repo, "twin") or all(not s["attempts"] for s in states(repo, "twin").values())
        held.release()
        assert p.wait(timeout=150) == 0, (repo / "out.log").read_text()[-3000:]
        assert all(s["status"] == "completed" for s in states(repo, "twin").values())
    finally:
        held.release()
        cleanup(p)


def test_busy_sweep_names_a_holder_that_writes_its_pid_late(tmp_path: Path):
    # The race seen in CI: the loser looked between the winner's flock and its owner-file write and
    # named nobody. A stale owner file of a dead process must not be named either.
    import socket
    import threading

    from lights_out_dev.sweep.ownership import holder

    owner = tmp_path / "sweep.owner"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    owner.write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    assert holder(owner) is None
    assert holder(owner, wait_s=0.3) is None
    writer = threading.Timer(0.3, lambda: owner.write_text(json.dumps({"pid": os.getpid(),
                                                                        "host": socket.gethostname()})))
    writer.start()
    try:
        assert holder(owner, wait_s=5) == os.getpid()
    finally:
        writer.join()
    owner.write_text(json.dumps({"pid": 4242, "host": "another-node"}))
    assert holder(owner) == 4242  # on another host we cannot check; the recorded pid is still the best name
