"""workloads/play.py: evaluation metrics and video of a checkpoint trained in the test (real processes, CPU)."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TRAIN, PLAY = str(ROOT / "workloads" / "train.py"), str(ROOT / "workloads" / "play.py")


def run(script: str, cwd: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIGHTS_OUT_")}
    return subprocess.run([sys.executable, script, *args], cwd=cwd, capture_output=True, text=True, timeout=timeout,
                          env=env)


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A cart-pole run of 30 iterations: model_0.pt (untrained) and model_29.pt (trained)."""
    cwd = tmp_path_factory.mktemp("play")
    r = run(TRAIN, cwd, "--num_envs", "64", "--max_iterations", "30", "--seed", "3", "--device", "cpu",
            "--run_name", "play")
    assert r.returncode == 0, r.stderr[-2000:]
    (run_dir,) = glob.glob(str(cwd / "logs" / "rsl_rl" / "cartpole" / "*_play"))
    assert os.path.isfile(os.path.join(run_dir, "model_0.pt")) and os.path.isfile(os.path.join(run_dir, "model_29.pt"))
    return Path(run_dir)


def metrics_of(out_dir: Path) -> dict:
    assert not [f for f in os.listdir(out_dir) if f.startswith(".tmp")]  # no half-written file left
    csv_lines = (out_dir / "eval_metrics.csv").read_text().splitlines()
    assert csv_lines[0].startswith("task,physics,checkpoint,iteration,num_episodes,mean_return") and len(csv_lines) == 2
    return json.loads((out_dir / "eval_metrics.json").read_text())


@pytest.mark.timeout(180)
def test_trained_policy_beats_untrained_and_video_decodes(trained):
    cwd = trained.parents[3]
    latest = run(PLAY, cwd, "--checkpoint", "latest", "--num_episodes", "16", "--device", "cpu", "--video",
                 "--video_length", "40")
    assert latest.returncode == 0, latest.stderr[-2000:]
    m = metrics_of(trained / "eval")
    assert m["checkpoint"] == str(trained / "model_29.pt") and m["iteration"] == 29 and m["num_episodes"] == 16
    assert 0.0 <= m["success_rate"] <= 1.0 and m["std_return"] >= 0

    base = run(PLAY, cwd, "--checkpoint", str(trained / "model_0.pt"), "--num_episodes", "16", "--device", "cpu",
               "--output", str(cwd / "untrained"))
    assert base.returncode == 0, base.stderr[-2000:]
    u = metrics_of(cwd / "untrained")
    assert m["mean_return"] > 2 * u["mean_return"] and m["mean_episode_length"] > 2 * u["mean_episode_length"], (m, u)

    from PIL import Image

    (gif,) = glob.glob(str(trained / "eval" / "*.gif"))
    with Image.open(gif) as im:
        assert im.n_frames > 1 and im.size == (320, 240)


@pytest.mark.timeout(120)
def test_best_picks_checkpoint_by_train_mean_reward(trained, tmp_path):
    cwd = trained.parents[3]
    r = run(PLAY, cwd, "--checkpoint", "best", "--load_run", ".*_play", "--num_episodes", "4", "--device", "cpu",
            "--output", str(tmp_path))
    assert r.returncode == 0, r.stderr[-2000:]
    assert metrics_of(tmp_path)["iteration"] == 29  # the trained one logged the higher mean reward


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    "args,text",
    [
        (["--checkpoint", "/nonexistent/model_1.pt"], "is not a file"),
        (["--checkpoint", "latest", "--experiment_name", "nothing"], "no run in"),
        (["--checkpoint", "best", "--experiment_name", "nothing"], "no run in"),
        (["--checkpoint", "GARBAGE"], "cannot load checkpoint"),
        (["--num_episodes", "0"], "invalid value '0'"),
        (["--task", "Lo-Reacher-v0", "--checkpoint", "CARTPOLE"], "cannot load checkpoint"),
    ],
    ids=lambda v: str(v),
)
def test_bad_checkpoints_exit_2_with_one_sentence(trained, tmp_path, args, text):
    garbage = tmp_path / "model_7.pt"
    garbage.write_bytes(b"not a checkpoint")
    args = [str(garbage) if a == "GARBAGE" else str(trained / "model_29.pt") if a == "CARTPOLE" else a for a in args]
    r = run(PLAY, tmp_path, *args, "--device", "cpu")
    assert r.returncode == 2, r.stdout[-1000:] + r.stderr[-1000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("play.py: error: ") and text in lines[0], r.stderr


@pytest.mark.timeout(60)
def test_best_without_metrics_is_one_sentence(trained, tmp_path):
    run_dir = tmp_path / "logs" / "rsl_rl" / "cartpole" / "2020-01-01_00-00-00"
    run_dir.mkdir(parents=True)
    (run_dir / "model_0.pt").write_bytes((trained / "model_0.pt").read_bytes())
    r = run(PLAY, tmp_path, "--checkpoint", "best", "--device", "cpu")
    assert r.returncode == 2 and "no Train/mean_reward" in r.stderr and len(r.stderr.strip().splitlines()) == 1
