"""Every supervisor capability against real Isaac Lab 3.0 (kit-less, Newton physics, rsl_rl) on the CPU.

The trainer is `python -m isaaclab train --rl_library rsl_rl` from .venv-isaaclab3 (tools/isaaclab3_env.sh),
launched by real doit through the `isaac_cartpole` family and its `isaaclab3_local` profile. Faults are
real: signals sent to the real trainer process, a real bad Hydra override, a real time limit. Where no
Python 3.12 exists the module is skipped with the reason; under CI=true that is a failure.
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

from lights_out_dev.host import procs
from tests.test_graph import DOIT, make_repo, out, run_state

ROOT = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("LIGHTS_OUT_ISAACLAB3_VENV", ROOT / ".venv-isaaclab3"))
TASK = "isaac_cartpole:base"
STATE = "isaac_cartpole__base"
# 16 envs on the CPU: an iteration takes ~0.2 s, the start ~10-20 s (Warp kernels cached in ~/.cache/warp).
SMALL = ["--num_envs", "16"]

pytestmark = [pytest.mark.isaaclab, pytest.mark.timeout(600)]


def _isaaclab_ready() -> str | None:
    python = VENV / "bin" / "python"
    if not python.exists():
        return f"no {VENV}; run tools/isaaclab3_env.sh (needs Python 3.12)"
    probe = subprocess.run([str(python), "-c", "import isaaclab, isaaclab_rl, rsl_rl, newton"], capture_output=True)
    return None if probe.returncode == 0 else f"{VENV} does not import Isaac Lab; rerun tools/isaaclab3_env.sh"


@pytest.fixture(scope="module", autouse=True)
def isaaclab_venv():
    why = _isaaclab_ready()
    if why:
        if os.environ.get("CI") == "true":
            pytest.fail(f"real Isaac Lab 3.0 is required in CI: {why}")
        pytest.skip(why)


def make_isaac_repo(tmp_path: Path, **monitor) -> Path:
    limits = {"stall_s": 60, "startup_stall_s": 300, "grace_s": 10, "status_interval_s": 5, "time_limit": "none",
              **monitor}
    toml = "[tool.lights_out.monitor]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in limits.items())
    repo = make_repo(tmp_path / "repo", toml)
    (repo / ".venv-isaaclab3").symlink_to(VENV)  # the profile's prefix is relative to the project root
    return repo


def env_for(repo: Path) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTS_OUT_ROOT", None)
    return env


def start_doit(repo: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen([*DOIT, *args], cwd=repo, env=env_for(repo), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def doit_run(repo: Path, *args: str, timeout: float = 500) -> subprocess.CompletedProcess:
    return subprocess.run([*DOIT, *args], cwd=repo, env=env_for(repo), capture_output=True, text=True,
                          timeout=timeout)


def state_of(repo: Path) -> dict | None:
    try:
        return run_state(repo, TASK)
    except (OSError, ValueError):
        return None


def wait_for(repo: Path, condition, timeout: float = 300) -> dict:
    """Poll the run state until condition(state) holds; the state file is the supervisor's truth."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = state_of(repo)
        if st and condition(st):
            return st
        time.sleep(0.3)
    raise AssertionError(f"condition not reached within {timeout}s; state: {json.dumps(state_of(repo))[:2000]}")


def current(st: dict) -> dict:
    return st["attempts"][-1]


def at_iteration(n: int, attempt: int = 1):
    """The state once attempt `attempt` has finished n iterations (read from the trainer's own log)."""
    return lambda st: (len(st["attempts"]) == attempt and current(st).get("progress", {}).get("iteration") or 0) >= n


def checkpoint_in(st: dict, name: str) -> bool:
    run_dir = current(st).get("tb_dir")
    return bool(run_dir) and (Path(run_dir) / name).exists()


def finish(proc: subprocess.Popen, timeout: float = 500) -> str:
    text, _ = proc.communicate(timeout=timeout)
    return text


def flag(argv: list[str], name: str) -> str | None:
    return argv[argv.index(name) + 1] if name in argv else None


def verdicts(st: dict) -> list[str]:
    return [a["verdict"] for a in st["attempts"]]


def assert_no_trainer_left(st: dict) -> None:
    for a in st["attempts"]:
        assert a["survivors"] == []
        assert not procs.alive(a["pid"]), f"attempt {a['number']}: trainer pid {a['pid']} still runs"
        assert procs.run_pids(a["pgid"]) == []


def test_completes_with_policy_on_the_run_device_and_its_tensorboard_files_read(tmp_path):
    repo = make_isaac_repo(tmp_path)
    p = doit_run(repo, TASK, *SMALL, "--max_iterations", "4")
    assert p.returncode == 0, out(p)
    st = run_state(repo, TASK)
    assert st["status"] == "completed" and verdicts(st) == ["completed"]
    assert "Training time:" in st["attempts"][0]["reason"]
    argv = st["attempts"][0]["argv"]
    assert argv[1:6] == ["-m", "isaaclab", "train", "--rl_library", "rsl_rl"]
    assert "agent.device=cpu" in argv and "--rid" not in argv and "--headless" not in argv
    run_dir = Path(st["attempts"][0]["tb_dir"])
    # Isaac Lab prints only <root> and <stamp>; the directory is <stamp>_<run_name>
    assert run_dir.name.endswith("_" + flag(argv, "--run_name")) and run_dir.is_dir()
    assert st["final"]["iteration"] == 4 and st["final"]["total"] == 4
    assert [Path(c).name for c in st["checkpoints"]] == ["model_0.pt", "model_3.pt"]
    logs = subprocess.run([sys.executable, "-m", "lights_out_dev.cli.read_logs", "tb-run", str(run_dir)],
                          cwd=repo, env=env_for(repo), capture_output=True, text=True, timeout=120)
    assert logs.returncode == 0 and "Train/mean_reward" in logs.stdout, logs.stdout + logs.stderr
    assert_no_trainer_left(st)


def test_crash_is_retried_from_its_own_checkpoint_and_ends_at_the_requested_iteration(tmp_path):
    repo = make_isaac_repo(tmp_path)
    proc = start_doit(repo, TASK, *SMALL, "--max_iterations", "12", "agent.save_interval=2")
    st = wait_for(repo, lambda s: at_iteration(6)(s) and checkpoint_in(s, "model_4.pt"))
    os.kill(current(st)["pid"], signal.SIGKILL)
    text = finish(proc)
    assert proc.returncode == 0, text
    st = run_state(repo, TASK)
    assert verdicts(st) == ["crash", "completed"]
    first, second = st["attempts"]
    resumed_from = flag(second["argv"], "--checkpoint")
    assert resumed_from and Path(resumed_from).parent == Path(first["tb_dir"])  # its own run, an absolute file
    done = int(Path(resumed_from).stem.split("_")[1])
    assert done >= 4 and flag(second["argv"], "--max_iterations") == str(12 - done)
    assert "--resume" not in second["argv"] and "--load_run" not in second["argv"]  # 3.0 has neither
    assert second["progress"]["total"] == 12 and st["final"]["iteration"] == 12  # not 12 + done
    assert_no_trainer_left(st)


def test_segfault_and_stall_are_told_apart_and_retried(tmp_path):
    repo = make_isaac_repo(tmp_path, stall_s=8)
    proc = start_doit(repo, TASK, *SMALL, "--max_iterations", "40", "agent.save_interval=5")
    st = wait_for(repo, at_iteration(3))
    os.kill(current(st)["pid"], signal.SIGSEGV)
    st = wait_for(repo, at_iteration(3, attempt=2))
    os.kill(current(st)["pid"], signal.SIGSTOP)  # alive but silent: only the stall limit can tell
    text = finish(proc)
    st = run_state(repo, TASK)
    assert verdicts(st)[:2] == ["segfault", "stall"], text
    assert st["attempts"][0]["signal"] == signal.SIGSEGV
    assert "silent" in st["attempts"][1]["reason"] or "no output" in st["attempts"][1]["reason"]
    assert verdicts(st)[-1] == "completed" and proc.returncode == 0, text
    assert_no_trainer_left(st)


def test_bad_hydra_override_is_a_config_error_and_not_retried(tmp_path):
    repo = make_isaac_repo(tmp_path)
    p = doit_run(repo, TASK, *SMALL, "--max_iterations", "4", "agent.algorithm.no_such_key=1")
    assert p.returncode != 0
    st = run_state(repo, TASK)
    assert verdicts(st) == ["config_error"] and st["status"] == "failed", out(p)
    assert "Traceback" not in p.stdout.splitlines()[-1]


def test_its_own_sigint_swallow_is_not_success(tmp_path):
    """Real 3.0 suppresses KeyboardInterrupt and exits 0 without 'Training time:': a SIGINT that was not
    ours leaves an unfinished run, which is retried from its checkpoint, not recorded as completed."""
    repo = make_isaac_repo(tmp_path)
    proc = start_doit(repo, TASK, *SMALL, "--max_iterations", "12", "agent.save_interval=2")
    st = wait_for(repo, lambda s: at_iteration(5)(s) and checkpoint_in(s, "model_2.pt"))
    os.kill(current(st)["pid"], signal.SIGINT)
    text = finish(proc)
    st = run_state(repo, TASK)
    first = st["attempts"][0]
    assert first["exit_code"] == 0 and first["verdict"] != "completed", text
    assert flag(st["attempts"][1]["argv"], "--checkpoint") and verdicts(st)[-1] == "completed"
    assert st["final"]["iteration"] == 12
    assert_no_trainer_left(st)


def test_time_limit_stops_right_after_a_checkpoint_and_keeps_the_work(tmp_path):
    """3.0 saves nothing on SIGINT/SIGTERM: a stop at the limit would lose up to a save_interval of
    iterations. The run is stopped right after a checkpoint instead: the iteration whose line proves the save
    is lost, and on a loaded machine one or two more may finish before the signal lands, never an interval."""
    repo = make_isaac_repo(tmp_path)
    p = doit_run(repo, TASK, *SMALL, "--max_iterations", "5000", "agent.save_interval=20", "--time_limit", "80s")
    assert p.returncode == 0, out(p)  # a timeout is not a failure
    st = run_state(repo, TASK)
    assert st["status"] == "timeout" and verdicts(st) == ["timeout"]
    trained = st["final"]["iteration"]
    kept = max(int(Path(c).stem.split("_")[1]) for c in st["checkpoints"])
    a = st["attempts"][0]
    assert f"right after its checkpoint model_{kept}.pt" in a["reason"], (a["reason"], st["checkpoints"])
    # `trained` counts finished iterations; model_<i>.pt holds iteration i (0-based): i + 1 finished
    assert trained - (kept + 1) <= 3, f"trained {trained} iterations, last checkpoint model_{kept}.pt"
    assert a["ended_at"] - a["started_at"] <= 80 + 10, "the limit was overrun"
    assert_no_trainer_left(st)


def test_adopts_its_trainer_after_the_supervisor_is_sigkilled(tmp_path):
    repo = make_isaac_repo(tmp_path)
    proc = start_doit(repo, TASK, *SMALL, "--max_iterations", "60", "agent.save_interval=10")
    st = wait_for(repo, at_iteration(2))
    trainer = current(st)["pid"]
    os.killpg(proc.pid, signal.SIGKILL)  # doit and its supervisor: the trainer has its own session
    proc.wait(timeout=30)
    assert procs.alive(trainer)
    p = doit_run(repo, TASK, *SMALL, "--max_iterations", "60", "agent.save_interval=10")
    assert p.returncode == 0, out(p)
    assert "adopting" in out(p)
    st = run_state(repo, TASK)
    assert len(st["attempts"]) == 1 and st["attempts"][0]["pid"] == trainer and st["status"] == "completed"
    assert st["final"]["iteration"] == 60
    assert_no_trainer_left(st)


def test_smoke_gate_then_full_run(tmp_path):
    repo = make_isaac_repo(tmp_path)
    p = doit_run(repo, TASK, *SMALL, "--max_iterations", "6", "--smoke")
    assert p.returncode == 0, out(p)
    st = run_state(repo, TASK)
    assert st["status"] == "completed" and st["smoke"] == "passed", st.get("smoke")
    assert len(st["attempts"]) == 1 and st["final"]["iteration"] == 6  # the gate is not one of the attempts
    assert_no_trainer_left(st)


def test_sweep_with_promotion(tmp_path):
    repo = make_isaac_repo(tmp_path)
    plan = repo / "sweeps" / "isaac.yaml"
    plan.write_text(
        "name: isaac\n"
        "runs:\n"
        "  - {task: isaac_cartpole:base, overrides: {num_envs: 16, max_iterations: 4}, grid: {seed: [1, 2]}}\n"
        "promote: {metric: Train/mean_reward, suffix: '', scale_envs: false, overrides: {max_iterations: 6}}\n")
    p = doit_run(repo, "sweep", "--plan", str(plan))
    assert p.returncode == 0, out(p)
    report = (repo / "local_experiment_logs" / "sweeps" / "isaac" / "report.md").read_text()
    assert report.count("| isaac_cartpole:base |") == 3, report  # two seeds, then the promoted run
    ledger = (repo / "local_experiment_logs" / "sweep_log.md").read_text()
    assert "promoted from run" in ledger, ledger


def test_direct_workflow_variant_completes(tmp_path):
    repo = make_isaac_repo(tmp_path)
    p = doit_run(repo, "isaac_cartpole:direct", *SMALL, "--max_iterations", "3")
    assert p.returncode == 0, out(p)
    st = run_state(repo, "isaac_cartpole:direct")
    assert st["status"] == "completed" and flag(st["attempts"][0]["argv"], "--task") == "Isaac-Cartpole-Direct"
