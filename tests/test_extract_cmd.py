"""extract_cmd: the exact argv a task would run, printed without running anything (real processes)."""
from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)


def extract(*args: str, module: bool = False, env: dict | None = None, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    how = [sys.executable, "-m", "lights_out_dev.cli.extract_cmd"] if module else \
        [str(Path(sys.executable).parent / "lights-out"), "extract-cmd"]  # the console script
    full_env = {**os.environ, **(env or {})}
    if module:
        full_env["PYTHONPATH"] = str(ROOT)
    return subprocess.run([*how, *args], cwd=cwd, env=full_env, capture_output=True, text=True)


def test_done_when_check_gpu_envs_and_passthrough():
    p = extract("top_dog:with-transfer", "--gpu", "3", "--num_envs", "2048", "--", "--foo", "bar", "physics=newton")
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout.strip())
    assert argv[argv.index("--device") + 1] == "cuda:3"
    assert argv[argv.index("--num_envs") + 1] == "2048" and argv.count("--num_envs") == 1
    assert argv[argv.index("--foo") + 1] == "bar" and argv.index("physics=newton") > argv.index("--foo")
    assert argv[argv.index("--task") + 1] == "Lo-Reacher-v0" and "--checkpoint" in argv
    assert "--rid" in argv and argv[argv.index("--run_name") + 1].startswith("top_dog_with-transfer_2048_gpu3_")


def test_module_form_json_and_redaction_of_secrets():
    p = extract("top_dog:base-mgpu", "--json", "--max_iterations", "5", "--", "--wandb_key", "topsecret-123",
                module=True, env={"WANDB_API_KEY": "topsecret-123"})
    assert p.returncode == 0, p.stderr
    assert "topsecret" not in p.stdout
    data = json.loads(p.stdout)
    argv = data["argv"]
    assert argv[1:4] == ["-m", "torch.distributed.run", "--nnodes=1"]
    assert argv[-3:] == ["--distributed", "--wandb_key", "***"]
    assert data["env"]["WANDB_API_KEY"] == "***" and "CUDA_VISIBLE_DEVICES" in data["env"]
    assert data["command"].startswith("CUDA_VISIBLE_DEVICES=")


def test_overrides_may_come_without_the_double_dash_and_last_flag_wins(tmp_path: Path):
    p = extract("cartpole:newton", "--num_envs", "8", "--lr=1", "--lr", "2", "physics=mujoco", cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    argv = shlex.split(p.stdout)
    assert argv[argv.index("--lr") + 1] == "2" and "--lr=1" not in argv
    assert "physics=mujoco" in argv and "physics=newton" not in argv


@pytest.mark.parametrize("args, fragment", [
    (["cartpol:base"], "'cartpol:base' is not a task; did you mean cartpole:base"),
    (["top_dog"], "'top_dog' is a group; pick one variant"),
    (["gpu_guard"], "is a check, not an experiment"),
    (["cartpole:base-play"], "'cartpole:base-play' evaluates a checkpoint of cartpole:base; extract_cmd shows training"),
    (["cartpole:base", "--num_envs", "0"], "--num_envs 0 is not valid"),
    (["--gpu", "1"], "name the task first"),
])
def test_errors_are_one_sentence(args, fragment):
    p = extract(*args)
    assert p.returncode == 3
    assert fragment in p.stderr and "Traceback" not in p.stderr and p.stdout == ""


def test_importing_extract_cmd_does_not_import_torch():
    code = ("import sys; sys.argv=['x','cartpole:base']; import lights_out_dev.cli.extract_cmd as e; e.main(); "
            "assert 'torch' not in sys.modules, 'torch imported'")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
                       capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
