"""Third-party trainers through their profiles alone, end to end with the real packages on the CPU.

Stable-Baselines3 PPO (`sb3`, workloads/third_party/sb3_ppo.py on gymnasium CartPole-v1), the same script
under `generic` (exit code and output only), and a profile written only in TOML for a small trainer of this
test's own. Each run goes through real doit and the real supervisor; faults are real signals to the real
trainer process."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from lights_out_dev.core.classify import classify
from lights_out_dev.core.profiles import resolve_profile
from lights_out_dev.host import procs
from lights_out_dev.run.scan import LogScanner
from tests.test_graph import DOIT, make_repo, out, run_state

SB3 = "gym_cartpole:sb3"
FAST = {"stall_s": 120, "startup_stall_s": 300, "grace_s": 10, "status_interval_s": 5, "time_limit": "none"}


def repo_with(tmp_path: Path, toml: str = "", **limits) -> Path:
    monitor = "[tool.lights_out.monitor]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in {**FAST, **limits}.items())
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


# A steady pace for tests that must act while a real trainer is at a given point (a kill inside the run, a
# time limit between two of its checkpoints), whether the machine is idle or loaded by other work: gymnasium's
# CartPole with 2 ms per step (gymnasium imports `module:` in an env id); everything else the trainer's own.
SLOW_CARTPOLE = """import time
import gymnasium as gym
from gymnasium.envs.classic_control.cartpole import CartPoleEnv


class SlowCartPole(CartPoleEnv):
    def step(self, action):
        time.sleep(0.002)
        return super().step(action)


gym.register("SlowCartPole-v1", entry_point=SlowCartPole, max_episode_steps=500)
"""
PACED = ["--env", "slow_cartpole:SlowCartPole-v1"]


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
    from lights_out_dev.executors.base import ExitStatus
    verdict, reason = classify(s.observations(ExitStatus(exit_code=0), None))
    assert verdict == "completed" and "completion = 'exit0'" in reason and "timestep 2048/4096" in reason
    verdict, reason = classify(s.observations(ExitStatus(exit_code=None, signal=9), None))
    assert verdict == "crash" and "timestep 2048/4096" in reason


def test_generic_profile_shows_progress_as_unknown_not_as_before_the_first_iteration():
    from lights_out_dev.executors.base import ExitStatus
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
    from lights_out_dev.executors.base import ExitStatus
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
    assert "steps/s reward" in p.stdout and " steps 1024/1024 " in p.stdout  # its numbers, in its unit
    from lights_out_dev.core.state import load_state
    from lights_out_dev.views.status import format_row, run_row
    row = format_row(run_row(None, load_state(repo / "local_experiment_logs/runs/gym_cartpole__sb3.json"), SB3,
                             time.time()))
    assert " steps 1024/1024 " in row and " it " not in row  # `lights-out status` too
    from lights_out_dev.core.tb import read_scalars
    assert {"rollout/ep_rew_mean", "time/fps"} <= set(read_scalars(a["tb_dir"]))
    assert_no_trainer_left(st)


def _progress(st: dict, attempt: int) -> int:
    """Progress of attempt `attempt` while it still runs (0 once it ended: too late to kill it)."""
    a = st["attempts"][-1] if len(st["attempts"]) == attempt else {}
    return (a.get("verdict") is None and a.get("progress", {}).get("iteration")) or 0


def _has_checkpoint(repo: Path, st: dict, steps: int) -> bool:
    a = st["attempts"][-1]
    return bool(a.get("checkpoint_dir")) and (Path(a["checkpoint_dir"]) / f"rl_model_{steps}_steps.zip").exists()


@pytest.mark.timeout(600)
def test_sb3_sigkill_is_retried_from_its_own_checkpoint_and_ends_at_the_requested_total(tmp_path: Path):
    repo = repo_with(tmp_path)
    (repo / "slow_cartpole.py").write_text(SLOW_CARTPOLE)
    proc = start_doit(repo, SB3, "--max_iterations", "4096", "--save_freq", "512", *PACED)  # killed inside it
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
    assert done >= 1024 and flag(second["argv"], "--total_timesteps") == str(4096 - done)
    assert second["progress"]["iteration"] == 4096 and st["final"]["total"] == 4096  # not 4096 + done
    assert Path(st["checkpoints"][-1]).name == "rl_model_4096_steps.zip"
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
    rows = [line.split("|") for line in report.splitlines()
            if line.startswith(("| 1 ", "| 2 ")) and "gym_cartpole:sb3" in line]  # the runs table, not the configurations
    assert len(rows) == 2 and all(r[8].strip() != "-" and r[9].strip() != "-" for r in rows), report  # FPS, reward
    assert "--lr=0.001" in report and "reward.png" in report
    csv = next((sweep_dir / "artifacts").glob("01_*")) / "metrics.csv"
    assert "rollout/ep_rew_mean," in csv.read_text()
    ledger = (repo / "local_experiment_logs/sweep_log.md").read_text()
    assert "--lr=0.0003" in ledger


# -- a profile written only in TOML, for a small trainer of this test's own ---------------------------

MY_TRAINER = '''"""Least-squares fit by SGD in torch: its own flags, log lines, checkpoints and TensorBoard tags."""
import argparse, os, time
from pathlib import Path
import torch
from torch.utils.tensorboard import SummaryWriter

ap = argparse.ArgumentParser()
ap.add_argument("--problem", required=True)
ap.add_argument("--batch", type=int, default=64)
ap.add_argument("--steps", type=int, required=True)  # the total: a resumed run continues to it
ap.add_argument("--seed", type=int, default=0)
ap.add_argument("--name", required=True)
ap.add_argument("--from", dest="start", default=None)
ap.add_argument("--every", type=int, default=2)
args = ap.parse_args()
torch.manual_seed(args.seed)
run = Path("runs") / args.name
(run / "ckpt").mkdir(parents=True, exist_ok=True)
print(f"tracker run {os.environ.get('MYTRACKER_RUN')} resume={os.environ.get('MYTRACKER_RESUME')}", flush=True)
print(f"run dir: {run}", flush=True)
print(f"wandb: View run at https://wandb.ai/me/p/runs/{os.environ.get('MYTRACKER_RUN')}", flush=True)
w = torch.zeros(4, requires_grad=True)
opt = torch.optim.SGD([w], lr=0.05)
step = 0
if args.start:
    saved = torch.load(args.start)
    w.data.copy_(saved["w"]); opt.load_state_dict(saved["opt"]); step = saved["step"]
true = torch.tensor([1.0, -2.0, 0.5, 3.0])
tb = SummaryWriter(str(run))
while step < args.steps:
    t0 = time.time()
    x = torch.randn(min(args.batch, 256), 4)
    loss = ((x @ w - x @ true) ** 2).mean()
    opt.zero_grad(); loss.backward(); opt.step()
    step += 1
    if step == int(os.environ.get("HANG_AT", "-1")) and os.environ.get("LIGHTS_OUT_ATTEMPT") == "1":
        time.sleep(3600)  # silent and alive: a stall
    time.sleep(0.3)
    rate = x.shape[0] / (time.time() - t0)
    score = -float(loss)
    tb.add_scalar("metrics/score", score, step); tb.add_scalar("perf/samples_per_s", rate, step); tb.flush()
    print(f"[step {step} of {args.steps}] score={score:.4f} throughput={rate:.1f}/s", flush=True)
    if step % args.every == 0:
        torch.save({"w": w.data, "opt": opt.state_dict(), "step": step}, run / "ckpt" / f"ckpt-{step:04d}.pt")
tb.close()
print("=== all steps done ===", flush=True)
'''

MY_PROFILE = r'''
[tool.lights_out.trainers.mine]
script = "mytrainer.py"
multi_gpu = "none"
flags = { task = "--problem", num_envs = "--batch", max_iterations = "--steps", seed = "--seed", device = "", run_name = "--name", experiment_name = "", distributed = "" }
resume_args = ["--from", "{checkpoint}"]
resume_budget = "total"
checkpoint_pattern = 'ckpt-(\d+)\.pt'
checkpoint_dir = "{run_dir}/ckpt"
attempt_env = { MYTRACKER_RUN = "{rid}", MYTRACKER_RESUME = "allow" }
observe = { parser = "none", progress = '^\[step (?P<done>\d+) of (?P<total>\d+)\]', reward = 'score=(?P<value>\S+)', fps = 'throughput=(?P<value>[\d.]+)', run_dir = '^run dir: (?P<path>.+)$', completion = ['=== all steps done ==='] }
metrics = { reward = "metrics/score", fps = "perf/samples_per_s", episode_length = "" }
[tool.lights_out.launchers.lab]
trainer = "mine"
'''


def toml_repo(tmp_path: Path, **limits) -> Path:
    repo = repo_with(tmp_path, MY_PROFILE, **limits)
    (repo / "mytrainer.py").write_text(MY_TRAINER)
    return repo


@pytest.mark.timeout(600)
def test_a_toml_profile_completes_resumes_from_its_checkpoint_and_keeps_one_tracker_run(tmp_path: Path):
    repo = toml_repo(tmp_path)
    task = "cartpole:base"  # any family on the lab launcher now runs the TOML profile's trainer
    names = {line.split()[0] for line in doit_run(repo, "list", "--all").stdout.splitlines() if line.strip()}
    assert task in names and f"{task}-mgpu" not in names and f"{task}-play" not in names
    proc = start_doit(repo, task, "--max_iterations", "30", "--num_envs", "32")
    st = wait_for(repo, task, lambda s: _progress(s, 1) >= 6 and bool(s["attempts"][-1].get("checkpoint_dir"))
                  and (Path(s["attempts"][-1]["checkpoint_dir"]) / "ckpt-0004.pt").exists())
    os.kill(st["attempts"][0]["pid"], signal.SIGKILL)
    text, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, text
    st = run_state(repo, task)
    assert verdicts(st) == ["crash", "completed"]
    first, second = st["attempts"]
    assert second["reason"] == "finished: '=== all steps done ===', exit 0"
    assert first["argv"][2:] == ["--problem", "Lo-Cartpole-v0", "--batch", "32", "--steps", "30", "--name",
                                 st["run_name"]]
    resumed_from = flag(second["argv"], "--from")
    assert Path(resumed_from).parent == Path(first["checkpoint_dir"]) == repo / "runs" / st["run_name"] / "ckpt"
    assert flag(second["argv"], "--steps") == "30"  # resume_budget = "total": it counts from its checkpoint
    assert st["final"]["iteration"] == 30 and st["final"]["total"] == 30
    assert st["final"]["steps_per_s"] > 0 and st["final"]["mean_reward"] is not None
    # one tracker run across attempts: the same {rid} in both, read back from the trainer's own log
    logs = [Path(a["log_path"]).read_text() for a in st["attempts"]]
    assert all(f"tracker run {st['rid']} resume=allow" in log for log in logs)
    assert {a["tracker_url"] for a in st["attempts"]} == {f"https://wandb.ai/me/p/runs/{st['rid']}"}
    target = json.loads((repo / "local_experiment_logs/targets/cartpole__base.json").read_text())
    assert Path(target["checkpoint"]).name == "ckpt-0030.pt"
    assert_no_trainer_left(st)


@pytest.mark.timeout(600)
def test_a_toml_profile_stall_is_caught_by_stall_s_and_retried_from_its_checkpoint(tmp_path: Path):
    repo = toml_repo(tmp_path, stall_s=6)
    p = subprocess.run([*DOIT, "cartpole:base", "--max_iterations", "8"], cwd=repo,
                       env={**env_for(repo), "HANG_AT": "5"}, capture_output=True, text=True, timeout=500)
    assert p.returncode == 0, out(p)
    st = run_state(repo, "cartpole:base")
    assert verdicts(st) == ["stall", "completed"]
    first = st["attempts"][0]
    # its own progress lines made it healthy, so stall_s (6 s) applied, not the 300 s start-up limit
    assert first["healthy_at"] is not None and "stall limit at iteration 4/8" in first["reason"]
    assert Path(flag(st["attempts"][1]["argv"], "--from")).name == "ckpt-0004.pt"
    assert st["final"]["iteration"] == 8


@pytest.mark.timeout(600)
def test_a_toml_profile_smoke_gate_then_time_limit_right_after_its_own_checkpoint(tmp_path: Path):
    repo = toml_repo(tmp_path)
    p = doit_run(repo, "cartpole:base", "--max_iterations", "400", "--every", "3", "--smoke", "--time_limit", "12s")
    assert p.returncode == 0, out(p)
    st = run_state(repo, "cartpole:base")
    assert st["smoke"] == "passed" and verdicts(st) == ["timeout"]
    reason = st["attempts"][0]["reason"]
    assert "right after its checkpoint ckpt-" in reason, reason
    saved = int(reason.split("ckpt-")[1][:4])
    assert saved % 3 == 0 and st["final"]["iteration"] - saved <= 2  # at most the steps since that save lost


# -- `generic`: exit code and output only ---------------------------------------------------------------

GENERIC = '''
[tool.lights_out.trainers.plain]
extends = "generic"
script = "workloads/third_party/sb3_ppo.py"
script_args = ["--run_name", "plain", "--total_timesteps", "4096"]
[tool.lights_out.launchers.lab]
trainer = "plain"
'''


@pytest.mark.timeout(600)
def test_generic_judges_by_exit_code_shows_unknowns_as_unknown_and_retries_a_crash_from_scratch(tmp_path: Path):
    repo = repo_with(tmp_path, GENERIC)
    task = "cartpole:base"
    proc = start_doit(repo, task)
    st = wait_for(repo, task, lambda s: bool(s["attempts"]) and s["attempts"][-1]["verdict"] is None
                  and Path(s["attempts"][-1]["log_path"]).exists()
                  and "total_timesteps" in Path(s["attempts"][-1]["log_path"]).read_text())
    os.kill(st["attempts"][0]["pid"], signal.SIGKILL)
    text, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, text
    st = run_state(repo, task)
    assert verdicts(st) == ["crash", "completed"]
    first, second = st["attempts"]
    assert first["argv"][1:] == ["workloads/third_party/sb3_ppo.py", "--run_name", "plain", "--total_timesteps", "4096"]
    assert second["argv"] == first["argv"]  # no checkpoint it can see: the retry starts over
    assert "SIGKILL" in first["reason"] and "(progress not observed)" in first["reason"]
    assert second["reason"] == "finished: exit 0 (its profile's completion = 'exit0') (progress not observed)"
    assert st["final"]["iteration"] is None and st["final"]["mean_reward"] is None and st["checkpoints"] == []
    assert " it -/- - steps/s reward - " in text  # unknown, not a wrong number


# -- skrl: progress from a \r-only tqdm bar, checkpoints named from 0 in every attempt ------------------

SKRL = "gym_cartpole:skrl"


@pytest.mark.timeout(600)
def test_skrl_completes_on_its_full_progress_bar_with_its_tensorboard_tags(tmp_path: Path):
    repo = repo_with(tmp_path, startup_stall_s=60)  # a \r-only bar must count as output, or this is a stall
    p = doit_run(repo, SKRL, "--max_iterations", "500")
    assert p.returncode == 0, out(p)
    st = run_state(repo, SKRL)
    assert verdicts(st) == ["completed"]
    a = st["attempts"][0]
    assert a["reason"] == "finished: '| 500/500 [', exit 0" and a["healthy_at"] is not None
    assert Path(a["tb_dir"]) == repo / "runs/skrl" / st["run_name"]
    assert [Path(c).name for c in st["checkpoints"]] == ["agent_250.pt", "agent_500.pt"]
    final = st["final"]
    assert (final["iteration"], final["total"]) == (500, 500) and final["steps_per_s"] > 0
    assert final["mean_reward"] is not None  # from its TensorBoard tag: skrl prints no reward
    assert_no_trainer_left(st)


@pytest.mark.timeout(600)
def test_skrl_sigkill_is_retried_from_its_own_checkpoint_and_counts_on_from_it(tmp_path: Path):
    repo = repo_with(tmp_path)
    (repo / "slow_cartpole.py").write_text(SLOW_CARTPOLE)
    proc = start_doit(repo, SKRL, "--max_iterations", "2000", *PACED)  # paced: the kill lands inside the run
    # skrl prints no reward: while the attempt runs, its reward comes from its TensorBoard tag
    st = wait_for(repo, SKRL, lambda s: _progress(s, 1) >= 300 and bool(s["attempts"][-1].get("checkpoint_dir"))
                  and (Path(s["attempts"][-1]["checkpoint_dir"]) / "agent_250.pt").exists()
                  and s["attempts"][-1]["progress"]["mean_reward"] is not None)
    os.kill(st["attempts"][0]["pid"], signal.SIGKILL)
    text, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, text
    # the live status line: timesteps in its unit, and the reward read from TensorBoard
    assert re.search(r"\[gym_cartpole:skrl a[12] cpu\] steps \d+/2000 \S+ steps/s reward -?\d", text), text
    st = run_state(repo, SKRL)
    assert verdicts(st) == ["crash", "completed"]
    first, second = st["attempts"]
    resumed_from = flag(second["argv"], "--checkpoint")
    assert Path(resumed_from).parent == Path(first["checkpoint_dir"])
    done = int(Path(resumed_from).stem.split("_")[1])
    assert done >= 250 and flag(second["argv"], "--timesteps") == str(2000 - done)
    # skrl counts the resumed run from 0; the runner counts on from the checkpoint
    assert second["step_offset"] == done and second["progress"]["iteration"] == 2000 == st["final"]["total"]
    assert_no_trainer_left(st)


def test_a_carriage_return_ends_a_line_so_a_progress_bar_is_output_and_progress(tmp_path: Path):
    from lights_out_dev.run.monitor import LogTail
    log = tmp_path / "bar.log"
    log.write_bytes(b"[skrl:INFO] Seed: 0\n\r  0%|          | 0/600 [00:00<?, ?it/s]\r  1%|          | 7/600 [00:00<00:08, 66.64it/s]\r  2%")
    tail = LogTail(log)
    lines = tail.read_lines()
    assert lines == ["[skrl:INFO] Seed: 0", "  0%|          | 0/600 [00:00<?, ?it/s]",
                     "  1%|          | 7/600 [00:00<00:08, 66.64it/s]"]
    assert tail.offset == log.stat().st_size - len(b"  2%")  # the unfinished segment is read again later
    s = LogScanner(profile=resolve_profile("skrl", {}), progress_offset=250)
    s.feed(lines[1])
    assert not s.first_iteration_seen  # a bar at 0 has trained nothing: no smoke pass, not healthy yet
    for line in lines:
        s.feed(line)
    assert s.first_iteration_seen
    assert (s.progress.iteration, s.progress.total, s.progress.steps_per_s) == (257, 850, 66.64)
    assert s.own_iteration == 7  # what its checkpoint names count: the time-limit clock compares these
    assert not s.end_marker
    s.feed("100%|██████████| 600/600 [00:09<00:00, 61.35it/s]")
    assert s.end_marker_text == "| 600/600 ["


# -- rsl_rl: a plain script of its own, no Isaac Lab command line -------------------------------------

RSL = "gym_cartpole:rsl_rl"


@pytest.mark.timeout(600)
def test_rsl_rl_script_completes_at_its_final_iteration_and_resumes_a_sigkill_from_its_model_file(tmp_path: Path):
    repo = repo_with(tmp_path)
    proc = start_doit(repo, RSL, "--max_iterations", "80", "--num_envs", "16")
    st = wait_for(repo, RSL, lambda s: _progress(s, 1) >= 8 and bool(s["attempts"][-1].get("checkpoint_dir"))
                  and (Path(s["attempts"][-1]["checkpoint_dir"]) / "model_6.pt").exists())
    os.kill(st["attempts"][0]["pid"], signal.SIGKILL)
    text, _ = proc.communicate(timeout=500)
    assert proc.returncode == 0, text
    st = run_state(repo, RSL)
    assert verdicts(st) == ["crash", "completed"]
    first, second = st["attempts"]
    assert first["argv"][1:9] == ["workloads/third_party/rsl_rl_example.py", "--env", "Lo-Cartpole-v0",
                                  "--num_envs", "16", "--iterations", "80", "--device"]
    assert second["reason"] == "finished: final iteration 80/80, exit 0"
    resumed_from = flag(second["argv"], "--load")
    assert Path(resumed_from).parent == Path(first["tb_dir"])  # its own model_<it>.pt
    done = int(Path(resumed_from).stem.split("_")[1])
    assert done >= 6 and flag(second["argv"], "--iterations") == str(80 - done)
    assert st["final"]["iteration"] == 80 and st["final"]["steps_per_s"] > 0 and st["final"]["mean_reward"] is not None
    assert_no_trainer_left(st)


# -- time limit and smoke gate on the real third-party trainers, as for Isaac Lab ------------------------

# The clock that stops a trainer right after its own checkpoint learns the save period from the saves it sees:
# the paced CartPole keeps that period steady.
# (task, its own flags for a save every second or so, the checkpoint interval in its progress unit)
SAVING_OFTEN = {
    "sb3": (SB3, [*PACED, "--save_freq", "512"], 512),  # each 512-step rollout
    "skrl": (SKRL, [*PACED, "--checkpoint_interval", "250"], 250),
    "rsl_rl": (RSL, ["--num_envs", "16", "--save_interval", "50"], 50),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile", sorted(SAVING_OFTEN))
def test_smoke_gate_passes_on_its_own_progress_then_the_time_limit_stops_right_after_its_checkpoint(
        tmp_path: Path, profile: str):
    task, own_flags, interval = SAVING_OFTEN[profile]
    repo = repo_with(tmp_path)
    (repo / "slow_cartpole.py").write_text(SLOW_CARTPOLE)
    p = doit_run(repo, task, "--max_iterations", "1000000", *own_flags, "--smoke", "--time_limit", "30s")
    assert p.returncode == 0, out(p)
    st = run_state(repo, task)
    gate = st["smoke_record"]
    assert st["smoke"] == "passed" and gate["progress"]["iteration"] > 0, gate  # its own progress, not a 0/N bar
    assert "first update completed" in gate["reason"] and flag(gate["argv"], "--run_name").endswith("_smoke")
    assert verdicts(st) == ["timeout"] and st["status"] == "timeout"
    a = st["attempts"][0]
    assert a["started_at"] >= gate["ended_at"]  # the long run came after the gate
    # none of these trainers saves when interrupted: stopped right after a checkpoint it saved itself
    assert not resolve_profile(profile, {}).saves_on_interrupt
    reason = a["reason"]
    assert reason.startswith("stopped at the time limit at ") and "right after its checkpoint " in reason, reason
    saved_name = reason.split("right after its checkpoint ")[1].split(" ")[0]
    assert Path(st["checkpoints"][-1]).name == saved_name  # kept, and nothing newer was saved before the stop
    assert (Path(a["checkpoint_dir"]) / saved_name).exists()
    saved = resolve_profile(profile, {}).checkpoint_iteration(saved_name)
    assert 0 < saved <= st["final"]["iteration"] <= saved + interval  # at most one interval of training lost
    assert_no_trainer_left(st)


# (task, what makes its gate unable to pass, what the reason says)
NEVER_PASSES = {
    # its first rollout (800k steps) does not end within the start-up limit
    "sb3": (SB3, ["--n_steps", "200000"], "timeout: no first timestep within the start-up limit of 15s"),
    "skrl": (SKRL, ["--env", "NoSuchEnv-v0"], "NoSuchEnv"),  # argparse: the last --env wins
    "rsl_rl": (RSL, ["--env", "NoSuchEnv-v0"], "NoSuchEnv"),
}


@pytest.mark.timeout(600)
@pytest.mark.parametrize("profile", sorted(NEVER_PASSES))
def test_a_smoke_gate_that_cannot_pass_fails_the_run_before_its_long_attempt(tmp_path: Path, profile: str):
    task, breaking, why = NEVER_PASSES[profile]
    repo = repo_with(tmp_path, startup_stall_s=15)
    p = doit_run(repo, task, "--max_iterations", "1000000", *breaking, "--smoke")
    assert p.returncode != 0
    st = run_state(repo, task)
    assert st["smoke"].startswith("failed: ") and st["status"] == "failed", st["smoke"]
    assert st["attempts"] == [] and st["reason"].startswith("smoke failed: ")  # no long attempt started
    assert why in st["reason"], st["reason"]
    assert Path(st["smoke_record"]["log_path"]).exists()


# -- a trainer that finished but hangs at exit is completed, not killed and retried ----------------------

HANG_AFTER = '''"""Runs a trainer script to its end, then hangs on the way out (as Isaac Sim can)."""
import runpy, sys, time
script = sys.argv[1]
sys.argv = sys.argv[1:]
runpy.run_path(script, run_name="__main__")
print("trainer returned; hanging at exit", flush=True)
time.sleep(3600)
'''
SB3_HANGS = '''
[tool.lights_out.trainers.sb3_hangs]
extends = "sb3"
script = "hang_after.py"
script_args = ["workloads/third_party/sb3_ppo.py"]
flags = { task = "" }
[tool.lights_out.launchers.lab]
trainer = "sb3_hangs"
'''


@pytest.mark.timeout(600)
@pytest.mark.parametrize("completion", ["exit0", "final progress", "sb3 (real)"])
def test_a_trainer_that_finished_and_hangs_at_exit_is_stopped_and_completed(tmp_path: Path, completion: str):
    """Known only from its progress at its total (exit-0 and rsl_rl-style profiles print no end marker)."""
    task = "cartpole:base"
    if completion == "sb3 (real)":
        repo = repo_with(tmp_path, SB3_HANGS, stall_s=5)
        (repo / "hang_after.py").write_text(HANG_AFTER)
        args, env, total = ["--max_iterations", "1024", "--num_envs", "4"], {}, 1024
    else:
        marker = "completion = ['=== all steps done ===']"
        repo = repo_with(tmp_path, MY_PROFILE.replace(marker, "completion = " + (
            '"exit0"' if completion == "exit0" else "[]")), stall_s=5)
        (repo / "mytrainer.py").write_text(MY_TRAINER.replace(
            'print("=== all steps done ===", flush=True)',
            'print("=== all steps done ===", flush=True)\nif os.environ.get("HANG_AT_EXIT"):\n    time.sleep(3600)'))
        args, env, total = ["--max_iterations", "6"], {"HANG_AT_EXIT": "1"}, 6
    p = subprocess.run([*DOIT, task, *args], cwd=repo, env={**env_for(repo), **env}, capture_output=True,
                       text=True, timeout=500)
    assert p.returncode == 0, out(p)
    st = run_state(repo, task)
    assert verdicts(st) == ["completed"] and st["status"] == "completed"  # not killed, crash or stall, no retry
    a = st["attempts"][0]
    assert "then hung at exit and was stopped" in a["reason"] and f"{total}/{total}" in a["reason"], a["reason"]
    assert a["signal"] == signal.SIGINT or a["exit_code"] in (1, 128 + signal.SIGINT)  # the graceful stop
    assert st["final"]["iteration"] == total and st["checkpoints"]
    assert_no_trainer_left(st)
