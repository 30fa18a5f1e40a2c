"""Third-party trainers through their profiles alone, end to end with the real packages on the CPU.

Stable-Baselines3 PPO (`sb3`, workloads/third_party/sb3_ppo.py on gymnasium CartPole-v1), the same script
under `generic` (exit code and output only), and a profile written only in TOML for a small trainer of this
test's own. Each run goes through real doit and the real supervisor; faults are real signals to the real
trainer process."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lights_out_dev import procs
from lights_out_dev.classify import classify
from lights_out_dev.profiles import resolve_profile
from lights_out_dev.scan import LogScanner
from tests.test_graph import DOIT, make_repo, out, run_state

SB3 = "gym_cartpole:sb3"
FAST = {"stall_s": 120, "startup_stall_s": 300, "grace_s": 10, "status_interval_s": 5, "time_limit": "none"}


def repo_with(tmp_path: Path, toml: str = "") -> Path:
    monitor = "[tool.lights_out.monitor]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in FAST.items())
    return make_repo(tmp_path / "repo", monitor + toml)


def env_for(repo: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTS_OUT_ROOT", None)
    return env


def doit_run(repo: Path, *args: str, timeout: float = 400) -> subprocess.CompletedProcess:
    return subprocess.run([*DOIT, *args], cwd=repo, env=env_for(repo), capture_output=True, text=True,
                          timeout=timeout)


def start_doit(repo: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*DOIT, *args], cwd=repo, env=env_for(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def wait_for(repo: Path, task: str, condition, timeout: float = 300) -> dict:
    end = time.monotonic() + timeout
    st = None
    while time.monotonic() < end:
        try:
            st = run_state(repo, task)
        except (OSError, ValueError):
            st = None
        if st and condition(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"condition not reached within {timeout}s; state: {json.dumps(st)[:2000]}")


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def verdicts(st: dict) -> list[str]:
    return [a["verdict"] for a in st["attempts"]]


def assert_no_trainer_left(st: dict) -> None:
    for a in st["attempts"]:
        assert a["survivors"] == [] and not procs.alive(a["pid"])


# -- pure: the sb3 profile reads SB3's own output ----------------------------------------------------

SB3_LINES = """Using cpu device
Logging to logs/sb3/r1/tb_1
-----------------------------------------
| rollout/                |             |
|    ep_len_mean          | 23.8        |
|    ep_rew_mean          | 23.8        |
| time/                   |             |
|    fps                  | 136         |
|    iterations           | 4           |
|    total_timesteps      | 2048        |
-----------------------------------------""".splitlines()


def test_sb3_profile_reads_progress_fps_reward_and_run_dir_from_sb3s_table(tmp_path: Path):
    s = LogScanner(profile=resolve_profile("sb3", {}), root=tmp_path, default_total=4096, run_name="r1")
    for line in SB3_LINES:
        s.feed(line)
    p = s.progress
    assert (p.iteration, p.total, p.steps_per_s, p.mean_reward, p.mean_episode_length) == (2048, 4096, 136, 23.8, 23.8)
    assert s.tb_dir == str(tmp_path / "logs/sb3/r1/tb_1") and s.first_iteration_seen
    assert s.checkpoint_dir == str(tmp_path / "logs/sb3/r1/checkpoints")
    # no marker: exit 0 is completion, and the reason says so; a progress line alone is not
    assert classify(s.observations(None, None))[0] == "healthy"
    from lights_out_dev.executor import ExitStatus
    verdict, reason = classify(s.observations(ExitStatus(exit_code=0), None))
    assert verdict == "completed" and "completion = 'exit0'" in reason and "timestep 2048/4096" in reason
    verdict, reason = classify(s.observations(ExitStatus(exit_code=None, signal=9), None))
    assert verdict == "crash" and "timestep 2048/4096" in reason


def test_generic_profile_shows_progress_as_unknown_not_as_before_the_first_iteration():
    from lights_out_dev.executor import ExitStatus
    s = LogScanner(profile=resolve_profile("generic", {}))
    for line in SB3_LINES:
        s.feed(line)
    assert s.progress.iteration is None and s.progress.mean_reward is None and s.tb_dir is None
    assert classify(s.observations(ExitStatus(exit_code=1), None)) == (
        "crash", "exit 1 (progress not observed) with no known error signature")
    assert classify(s.observations(ExitStatus(exit_code=0), None))[0] == "completed"


def test_the_reason_names_the_completion_marker_that_matched():
    profile = resolve_profile("mine", {"mine": {"extends": "reference",
                                                "observe": {"completion": ["Training time:", r"all \d+ done"]}}})
    from lights_out_dev.executor import ExitStatus
    s = LogScanner(profile=profile)
    s.feed("all 12 done in 3 s")
    assert classify(s.observations(ExitStatus(exit_code=0), None)) == ("completed", "finished: 'all 12 done', exit 0")
    bare = LogScanner(profile=profile)
    assert "without 'Training time:' or 'all \\\\d+ done'" in classify(bare.observations(ExitStatus(exit_code=0),
                                                                                          None))[1]


# -- end to end: Stable-Baselines3 through the `sb3` profile ------------------------------------------

@pytest.mark.timeout(600)
def test_sb3_completes_with_its_own_numbers_checkpoints_and_tensorboard_tags(tmp_path: Path):
    repo = repo_with(tmp_path)
    listed = doit_run(repo, "list", "--all")
    names = {line.split()[0] for line in listed.stdout.splitlines() if line.strip()}
    assert SB3 in names and f"{SB3}-mgpu" not in names and f"{SB3}-play" not in names  # only twins that work
    p = doit_run(repo, SB3, "--max_iterations", "1024", "--save_freq", "512")
    assert p.returncode == 0, out(p)
    st = run_state(repo, SB3)
    assert st["status"] == "completed" and verdicts(st) == ["completed"]
    a = st["attempts"][0]
    assert "exit 0 (its profile's completion = 'exit0') at timestep 1024/1024" in a["reason"]
    assert a["argv"][1:] == ["workloads/third_party/sb3_ppo.py", "--env", "CartPole-v1", "--n_envs", "4",
                             "--total_timesteps", "1024", "--device", "cpu", "--run_name", st["run_name"],
                             "--save_freq", "512"]
    assert Path(a["tb_dir"]) == repo / "logs/sb3" / st["run_name"] / "tb_1"
    assert [Path(c).name for c in st["checkpoints"]] == ["rl_model_512_steps.zip", "rl_model_1024_steps.zip"]
    final = st["final"]
    assert final["iteration"] == 1024 and final["steps_per_s"] > 0 and final["mean_reward"] > 0
    assert "steps/s reward" in p.stdout and " it 1024/1024 " in p.stdout  # the status line shows its numbers
    from lights_out_dev.tb import read_scalars
    assert {"rollout/ep_rew_mean", "time/fps"} <= set(read_scalars(a["tb_dir"]))
    assert_no_trainer_left(st)


def _progress(st: dict, attempt: int) -> int:
    return (len(st["attempts"]) == attempt and st["attempts"][-1].get("progress", {}).get("iteration")) or 0


def _has_checkpoint(repo: Path, st: dict, steps: int) -> bool:
    a = st["attempts"][-1]
    return bool(a.get("checkpoint_dir")) and (Path(a["checkpoint_dir"]) / f"rl_model_{steps}_steps.zip").exists()


@pytest.mark.timeout(600)
def test_sb3_sigkill_is_retried_from_its_own_checkpoint_and_ends_at_the_requested_total(tmp_path: Path):
    repo = repo_with(tmp_path)
    proc = start_doit(repo, SB3, "--max_iterations", "3072", "--save_freq", "512")
    st = wait_for(repo, SB3, lambda s: _progress(s, 1) >= 1536 and _has_checkpoint(repo, s, 1024))
    os.kill(st["attempts"][0]["pid"], signal.SIGKILL)
    text, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, text
    st = run_state(repo, SB3)
    assert verdicts(st) == ["crash", "completed"]
    first, second = st["attempts"]
    assert "SIGKILL" in first["reason"] and "timestep" in first["reason"]
    resumed_from = flag(second["argv"], "--resume")
    assert resumed_from and Path(resumed_from).parent == Path(first["checkpoint_dir"])  # its own checkpoint
    done = int(Path(resumed_from).name.split("_")[2])
    assert done >= 1024 and flag(second["argv"], "--total_timesteps") == str(3072 - done)
    assert second["progress"]["iteration"] == 3072 and st["final"]["total"] == 3072  # not 3072 + done
    assert Path(st["checkpoints"][-1]).name == "rl_model_3072_steps.zip"
    assert_no_trainer_left(st)


@pytest.mark.timeout(600)
def test_sb3_sweep_with_a_grid_over_a_trainer_flag_runs_and_reports_its_tags(tmp_path: Path):
    repo = repo_with(tmp_path)
    (repo / "sweeps/lr.yaml").write_text(
        "name: lr\nmode: parallel\nruns:\n  - task: gym_cartpole:sb3\n"
        "    overrides: {max_iterations: 1024}\n    grid: {--lr: [0.0003, 0.001]}\n")
    p = doit_run(repo, "sweep", "--plan", "sweeps/lr.yaml", timeout=500)
    assert p.returncode == 0, out(p)
    sweep_dir = repo / "local_experiment_logs/sweeps/lr"
    states = {i: json.loads((sweep_dir / f"runs/{i:02d}.json").read_text()) for i in (1, 2)}
    assert [flag(s["attempts"][-1]["argv"], "--lr") for s in states.values()] == ["0.0003", "0.001"]
    assert all(s["status"] == "completed" and s["final"]["mean_reward"] for s in states.values())
    report = (sweep_dir / "report.md").read_text()
    rows = [line.split("|") for line in report.splitlines() if line.startswith("| 1 ") or line.startswith("| 2 ")]
    assert len(rows) == 2 and all(r[8].strip() != "-" and r[9].strip() != "-" for r in rows), report  # FPS, reward
    assert "--lr=0.001" in report and "reward.png" in report
    csv = next((sweep_dir / "artifacts").glob("01_*")) / "metrics.csv"
    assert "rollout/ep_rew_mean," in csv.read_text()
    ledger = (repo / "lights_out_dev/sweep_log.md").read_text()
    assert "--lr=0.0003" in ledger
