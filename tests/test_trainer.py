"""Reference trainer (workloads/train.py): real processes on CPU, tiny sizes."""

from __future__ import annotations

import glob
import importlib.util
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN = str(ROOT / "workloads" / "train.py")
BASE = ["--num_envs", "16", "--device", "cpu", "--headless", "--seed", "1"]


def clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTS_OUT_")}
    env.update(PYTHONUNBUFFERED="1", **extra)
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK"):
        env.pop(k, None)
    return env


def run_group(cmd: list[str], cwd: Path, timeout: float, env: dict) -> subprocess.CompletedProcess:
    """subprocess.run in its own process group, killed as a whole on timeout (torchrun has children)."""
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        raise AssertionError(f"{cmd} timed out after {timeout}s:\n{(out + err)[-3000:]}") from None
    finally:
        try:  # whatever the group left behind (e.g. a torchrun worker), including on success
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err)


def train(cwd: Path, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess:
    return run_group([sys.executable, TRAIN, *args], cwd, timeout, clean_env(**env))


class Live:
    """A trainer whose stdout+stderr is read line by line as it runs."""

    def __init__(self, cwd: Path, *args: str, **env: str):
        self.proc = subprocess.Popen([sys.executable, TRAIN, *args], cwd=cwd, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=clean_env(**env),
                                     start_new_session=True)
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self):
        for line in self.proc.stdout:
            self.lines.put(line)

    def wait_for(self, pattern: str, timeout: float) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.2)
            except queue.Empty:
                continue
            self.seen.append(line)
            if re.search(pattern, line):
                return line
        raise AssertionError(f"no line matching {pattern!r} within {timeout}s; got:\n{''.join(self.seen[-30:])}")

    def quiet_for(self, seconds: float) -> list[str]:
        time.sleep(seconds)
        new = []
        while not self.lines.empty():
            new.append(self.lines.get())
        self.seen += new
        return new

    def finish(self, timeout: float = 30) -> tuple[int, str]:
        rc = self.proc.wait(timeout=timeout)
        time.sleep(0.2)
        while not self.lines.empty():
            self.seen.append(self.lines.get())
        return rc, "".join(self.seen)

    def kill(self):
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


def run_dirs(cwd: Path, experiment: str = "cartpole") -> list[str]:
    return sorted(glob.glob(str(cwd / "logs" / "rsl_rl" / experiment / "*")))


def scalars(run_dir: str) -> dict[str, list[float]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [e.value for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


@pytest.mark.timeout(120)
def test_cartpole_learns_with_isaac_lab_layout_and_markers(tmp_path):
    # Repeated flags: the last one wins (--num_envs 64, --max_iterations 25).
    r = train(tmp_path, "--task", "Lo-Cartpole-v0", "--num_envs", "8", "--num_envs", "64", "--max_iterations", "2",
              "--max_iterations", "25", "--device", "cpu",
              "--seed", "3", "--run_name", "learn", "--headless", "--rid", "abc", "--logger", "tensorboard")
    assert r.returncode == 0, r.stderr[-2000:]
    out = r.stdout.splitlines()
    root = str(tmp_path / "logs" / "rsl_rl" / "cartpole")
    assert out[0] == f"[INFO] Logging experiment in directory: {root}"
    stamp = re.fullmatch(r"Exact experiment name requested from command line: (\S+)", out[1]).group(1)
    assert re.fullmatch(r"\d{4}-\d\d-\d\d_\d\d-\d\d-\d\d", stamp)
    assert re.search(r"Learning iteration 0/25", r.stdout) and re.search(r"Learning iteration 24/25", r.stdout)
    assert "Steps per second:" in r.stdout and "Mean reward:" in r.stdout
    assert "Total steps: 1024 " in r.stdout  # 64 envs x 16 steps
    assert re.fullmatch(r"Training time: [\d.]+ seconds", out[-1])

    (run,) = run_dirs(tmp_path)
    assert os.path.basename(run) == f"{stamp}_learn"
    for rel in ("params/env.yaml", "params/agent.yaml", "model_0.pt", "model_24.pt"):
        assert os.path.isfile(os.path.join(run, rel)), rel
    assert glob.glob(os.path.join(run, "events.out.tfevents.*"))
    assert glob.glob(os.path.join(run, "git", "*.diff"))  # the repo's diff (we run inside a git checkout)

    s = scalars(run)
    for tag in ("Train/mean_reward", "Train/mean_episode_length", "Perf/total_fps", "Loss/value", "Loss/surrogate",
                "Policy/mean_std"):
        assert tag in s, tag
    length = s["Train/mean_episode_length"]
    assert len(length) == 25
    # Learning: the episode length (max 250) grows several-fold within 25 small iterations.
    assert max(length[-3:]) > 2.5 * length[0] and length[-1] > 50, length


@pytest.mark.timeout(120)
def test_resume_continues_from_checkpoint_iteration_and_fine_tune_restarts(tmp_path):
    first = train(tmp_path, *BASE, "--max_iterations", "3")
    assert first.returncode == 0, first.stderr[-2000:]
    (run1,) = run_dirs(tmp_path)
    assert os.path.isfile(os.path.join(run1, "model_2.pt"))
    time.sleep(1.1)  # a new run directory gets a new time stamp
    resumed = train(tmp_path, *BASE, "--max_iterations", "2", "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"[INFO]: Loading model checkpoint from: {os.path.join(run1, 'model_2.pt')}" in resumed.stdout
    assert "Learning iteration 2/4" in resumed.stdout and "Learning iteration 3/4" in resumed.stdout
    assert "Learning iteration 0/" not in resumed.stdout
    run2 = run_dirs(tmp_path)[-1]
    assert os.path.isfile(os.path.join(run2, "model_3.pt"))

    tuned = train(tmp_path, *BASE, "--max_iterations", "2", "--checkpoint", os.path.join(run2, "model_3.pt"))
    assert tuned.returncode == 0, tuned.stderr[-2000:]
    assert "Loading model weights for fine-tuning from:" in tuned.stdout
    assert "Learning iteration 0/2" in tuned.stdout


INJECTIONS = [
    # (inject args, env, expected return code, text expected in the output)
    (["crash@1"], {}, -signal.SIGKILL, "crash at iteration 1"),
    (["segfault@1"], {}, -signal.SIGSEGV, "Fatal Python error: Segmentation fault"),
    (["oom@1"], {}, 1, "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate"),
    (["config_error@1"], {}, 1, "KeyError: 'policy'"),
    (["exit0_early@1"], {}, 0, "exit0_early at iteration 1"),
    (["crash@1"], {"LIGHTS_OUT_ATTEMPT": "2"}, 0, "Training time:"),  # first attempt only
    (["crash@1:always"], {"LIGHTS_OUT_ATTEMPT": "2"}, -signal.SIGKILL, "crash at iteration 1"),
]


@pytest.mark.timeout(120)
def test_injection_signatures(tmp_path):
    # All cases at once: each process is mostly interpreter start-up, so running them side by side is faster.
    with ThreadPoolExecutor(len(INJECTIONS)) as pool:
        futures = []
        for n, (spec, env, _, _) in enumerate(INJECTIONS):
            (tmp_path / str(n)).mkdir()
            args = [a for s in spec for a in ("--inject", s)]
            futures.append(pool.submit(train, tmp_path / str(n), *BASE, "--max_iterations", "3", *args, **env))
        results = [f.result() for f in futures]
    for (spec, env, rc, text), r in zip(INJECTIONS, results):
        out = r.stdout + r.stderr
        case = f"{spec} {env}"
        assert r.returncode == rc, f"{case}: {out[-2000:]}"
        assert text in out, case
        assert "Learning iteration 0/3" in out, case  # fires at the start of ITER, after earlier iterations
        if text != "Training time:":
            assert "Learning iteration 1/3" not in out and "Training time:" not in out, case


@pytest.mark.timeout(60)
def test_stall_then_sigterm_saves_checkpoint_and_exits_143(tmp_path):
    live = Live(tmp_path, *BASE, "--max_iterations", "50", "--inject", "stall@2")
    try:
        live.wait_for(r"stall at iteration 2", 40)
        assert live.quiet_for(2.0) == [] and live.proc.poll() is None  # alive, silent
        live.proc.send_signal(signal.SIGTERM)
        rc, out = live.finish()
    finally:
        live.kill()
    assert rc == 143, out[-2000:]
    line = re.search(r"\[INFO\] Received SIGTERM at iteration (\d+): saved checkpoint (\S+); exiting with code 143\.", out)
    assert line and os.path.isfile(line.group(2)) and line.group(2).endswith(f"model_{line.group(1)}.pt")


@pytest.mark.timeout(240)
def test_sigint_during_training_saves_checkpoint_and_exits_130(tmp_path):
    live = Live(tmp_path, *BASE, "--max_iterations", "200", "--inject", "slow=0.3@1")
    try:
        live.wait_for(r"Learning iteration 2/200", 150)  # generous: start-up on a loaded machine is slow
        live.proc.send_signal(signal.SIGINT)
        rc, out = live.finish(timeout=60)
    finally:
        live.kill()
    assert rc == 130, out[-2000:]
    saved = re.search(r"Received SIGINT at iteration \d+: saved checkpoint (\S+);", out).group(1)
    assert os.path.isfile(saved)
    times = [float(t) for t in re.findall(r"Iteration time: ([\d.]+)s", out)]
    assert min(times[1:]) >= 0.3, times  # slow=0.3@1 sleeps in every iteration from 1 on (no upper bound: load)


@pytest.mark.timeout(60)
def test_hang_exit_prints_training_time_and_stays_alive(tmp_path):
    live = Live(tmp_path, *BASE, "--max_iterations", "2", "--inject", "hang_exit")
    try:
        live.wait_for(r"^Training time: [\d.]+ seconds", 40)
        time.sleep(1.5)
        assert live.proc.poll() is None
        live.proc.send_signal(signal.SIGTERM)
        rc, _ = live.finish()
    finally:
        live.kill()
    assert rc == 143


BAD = [
    (["--video"], "--video is not supported"),
    (["--num_envs", "0"], "invalid value '0'"),
    (["--num_envs", "many"], "invalid value 'many'"),
    (["--bogus", "1"], "unknown flag '--bogus'"),
    (["--task", "Nope-v0"], "unknown task 'Nope-v0'"),
    (["physics=mujoco"], "unknown physics 'mujoco'"),
    (["env.scene=3"], "unknown configuration key 'env.scene': env has no 'scene'"),
    (["scene=3"], "unsupported override 'scene=3'"),
    (["--inject", "melt@1"], "invalid --inject 'melt@1'"),
    (["--inject", "crash"], "crash needs the iteration"),
    (["--inject", "nccl@1"], "--inject nccl needs a multi-process run"),
    (["--logger", "wandb"], "invalid choice: 'wandb'"),
    (["--device", "tpu"], "invalid device 'tpu'"),
    (["--resume"], "no run in"),
    (["--checkpoint", "/nonexistent/model_3.pt"], "checkpoint file '/nonexistent/model_3.pt' does not exist"),
]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("args,text", BAD, ids=lambda v: str(v))
def test_bad_flags_exit_2_with_one_sentence(tmp_path, args, text):
    r = train(tmp_path, "--num_envs", "16", "--device", "cpu", *args)
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("train.py: error: ") and text in lines[0], r.stderr


@pytest.mark.timeout(60)
def test_reacher_trains_and_reports_success_rate_free_layout(tmp_path):
    r = train(tmp_path, "--task", "Lo-Reacher", "--num_envs", "32", "--max_iterations", "2", "--device", "cpu")
    assert r.returncode == 0, r.stderr[-2000:]
    assert run_dirs(tmp_path, "reacher") and "Training time:" in r.stdout


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(cwd: Path, *args: str, timeout: float, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", f"--master_port={free_port()}",
           TRAIN, *args]
    return run_group(cmd, cwd, timeout, clean_env(OMP_NUM_THREADS="1", **env))


@pytest.mark.timeout(120)
def test_distributed_gloo_two_ranks_only_rank0_logs(tmp_path):
    r = torchrun(tmp_path, *BASE, "--max_iterations", "2", "--distributed", timeout=100)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    assert r.stdout.count("Training time:") == 2
    assert r.stdout.count("Learning iteration 1/2") == 1  # rank 0 only
    (run,) = run_dirs(tmp_path)
    assert len(glob.glob(os.path.join(run, "events.out.tfevents.*"))) == 1


@pytest.mark.timeout(120)
def test_nccl_injection_gives_a_real_collective_failure(tmp_path):
    r = torchrun(tmp_path, *BASE, "--max_iterations", "5", "--distributed", "--inject", "nccl@1", timeout=100,
                 LIGHTS_OUT_NCCL_TIMEOUT_S="3")
    out = r.stdout + r.stderr
    assert r.returncode != 0
    assert "rank 1 leaves the collective" in out
    assert re.search(r"\[ERROR\] rank 0: collective operation failed: \w+: .*(Timed out|Connection closed)", out), out[-3000:]
    assert "ChildFailedError" in out


@pytest.mark.timeout(300)
@pytest.mark.skipif(importlib.util.find_spec("newton") is None, reason="newton (pip install newton) not installed")
def test_newton_cartpole_runs(tmp_path):
    # Warp caches compiled kernels (~/.cache/warp or WARP_CACHE_PATH): only a cold cache compiles (~30 s).
    r = train(tmp_path, *BASE, "--max_iterations", "3", "physics=newton", timeout=280)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Learning iteration 2/3" in r.stdout and "Training time:" in r.stdout
    (run,) = run_dirs(tmp_path)
    assert "physics: newton" in Path(run, "params", "env.yaml").read_text()
