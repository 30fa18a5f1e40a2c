"""Evaluate / play: checkpoint choice table-tested on files made here, and `doit <variant>-play`
through real processes on a policy trained in the test."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from test_graph import DOIT, executed, make_repo, out, run_state

from lights_out_dev.run import evaluate
from lights_out_dev.run.evaluate import PlayError, resolve_checkpoint, split_checkpoint


def _run_dir(tmp_path: Path, iterations=(0, 5, 10)) -> Path:
    d = tmp_path / "logs/rsl_rl/exp/2026-01-01_00-00-00_run"
    d.mkdir(parents=True)
    for it in iterations:
        (d / f"model_{it}.pt").write_bytes(b"x")
    return d


def test_checkpoint_choice(tmp_path: Path):
    d = _run_dir(tmp_path)
    (tmp_path / "elsewhere.pt").write_bytes(b"x")
    recorded = str(d / "model_5.pt")
    assert resolve_checkpoint(None, d, recorded, tmp_path, "t:v") == d / "model_5.pt"  # the target's own
    assert resolve_checkpoint("auto", d, None, tmp_path, "t:v") == d / "model_10.pt"  # highest iteration
    assert resolve_checkpoint("latest", d, recorded, tmp_path, "t:v") == d / "model_10.pt"
    assert resolve_checkpoint("model_0.pt", d, recorded, tmp_path, "t:v") == (d / "model_0.pt").resolve()
    assert resolve_checkpoint("elsewhere.pt", d, None, tmp_path, "t:v") == (tmp_path / "elsewhere.pt").resolve()
    assert resolve_checkpoint(str(d / "model_5.pt"), None, None, tmp_path, "t:v") == (d / "model_5.pt").resolve()
    assert evaluate.newest_run_dir(tmp_path / "logs/rsl_rl/exp") == d


def test_best_checkpoint_follows_the_metric(tmp_path: Path):
    from torch.utils.tensorboard import SummaryWriter

    d = _run_dir(tmp_path)
    w = SummaryWriter(str(d))
    for it, reward, length in [(0, 1.0, 90.0), (5, 9.0, 20.0), (10, 4.0, 30.0)]:
        w.add_scalar("Train/mean_reward", reward, it)
        w.add_scalar("Train/mean_episode_length", length, it)
    w.close()
    assert resolve_checkpoint("best", d, None, tmp_path, "t:v") == d / "model_5.pt"
    assert resolve_checkpoint("best:Train/mean_episode_length", d, None, tmp_path, "t:v") == d / "model_0.pt"
    with pytest.raises(PlayError, match="hold no 'Loss/nope' values"):
        resolve_checkpoint("best:Loss/nope", d, None, tmp_path, "t:v")


@pytest.mark.parametrize("selector, run_dir, words", [
    ("nope.pt", True, "checkpoint 'nope.pt' does not exist"),
    ("/abs/missing/model_1.pt", True, "does not exist"),
    ("latest", False, "no checkpoint of t:v found yet; run `doit t:v` first"),
    ("best", True, "hold no 'Train/mean_reward' values"),  # no TensorBoard events at all
])
def test_bad_checkpoint_is_one_sentence(tmp_path: Path, selector, run_dir, words):
    d = _run_dir(tmp_path) if run_dir else None
    with pytest.raises(PlayError, match=words.replace("(", r"\(").replace("`", "`")) as e:
        resolve_checkpoint(selector, d, None, tmp_path, "t:v")
    assert str(e.value).count(". ") == 0 and str(e.value).endswith(".")


@pytest.mark.parametrize("args, selector, rest", [
    (["--num_episodes", "5", "--checkpoint", "best", "--video"], "best", ["--num_episodes", "5", "--video"]),
    (["--checkpoint=model_3.pt"], "model_3.pt", []),
    (["--video"], None, ["--video"]),
])
def test_split_checkpoint(args, selector, rest):
    assert split_checkpoint(args) == (selector, rest)


def test_eval_text():
    assert evaluate.eval_text(None) == ""
    assert evaluate.eval_text({"mean_return": 231.23, "std_return": 20.06, "num_episodes": 16,
                               "success_rate": 0.5}) == "eval return 231.2±20.1 (16 ep), success 0.50"


# -- real processes ---------------------------------------------------------------------------------

def doit(repo: Path, *args: str, env_extra: dict | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    env.pop("LIGHTS_OUT_ROOT", None)
    return subprocess.run([*DOIT, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


@pytest.mark.timeout(240)
def test_play_task_evaluates_the_trained_checkpoint(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    target = repo / "local_experiment_logs/targets/cartpole__base-play.json"

    none_yet = doit(repo, "cartpole:base-play")
    assert none_yet.returncode != 0 and "no checkpoint of cartpole:base found yet" in out(none_yet)
    assert "Traceback" not in out(none_yet) and not target.exists()

    train = doit(repo, "cartpole:base", "--num_envs", "64", "--max_iterations", "20", timeout=150)
    assert train.returncode == 0, out(train)
    trained = json.loads((repo / "local_experiment_logs/targets/cartpole__base.json").read_text())
    run_dir = Path(trained["run_dir"])
    metrics_file = run_dir / "eval" / "eval_metrics.json"

    # Bad input first, while no result exists: one sentence each, no result file, no target.
    fake_pil = tmp_path / "nopil" / "PIL"
    fake_pil.mkdir(parents=True)
    (fake_pil / "__init__.py").write_text("raise ImportError('no renderer on this machine')\n")
    cannot_render = doit(repo, "cartpole:base-play", "--num_episodes", "4", "--video",
                         env_extra={"PYTHONPATH": f"{fake_pil.parent}:{repo}"})
    assert cannot_render.returncode != 0 and "--video cannot render on this machine" in out(cannot_render)
    (tmp_path / "bad.pt").write_text("not a checkpoint")
    unloadable = doit(repo, "cartpole:base-play", "--checkpoint", str(tmp_path / "bad.pt"))
    assert unloadable.returncode != 0 and "cannot load checkpoint" in out(unloadable), out(unloadable)
    missing = doit(repo, "cartpole:base-play", "--checkpoint", "model_999.pt")
    assert missing.returncode != 0 and "checkpoint 'model_999.pt' does not exist" in out(missing)
    too_slow = doit(repo, "cartpole:base-play", "--time_limit", "1s")  # killed by the runner's timer
    assert too_slow.returncode != 0 and "did not finish within 1s" in out(too_slow), out(too_slow)
    for p in (cannot_render, unloadable, missing, too_slow):
        assert "Traceback" not in out(p)
    assert not metrics_file.exists() and not target.exists() and not (tmp_path / "eval").exists()

    # The experiment's own final checkpoint (auto) vs the untrained one (a path relative to the run dir).
    good = doit(repo, "cartpole:base-play", "--num_episodes", "16")
    assert good.returncode == 0 and executed(good, "cartpole:base-play"), out(good)
    rec = json.loads(target.read_text())
    assert rec["checkpoint"] == trained["checkpoint"] and rec["metrics_path"] == str(metrics_file)
    trained_metrics = json.loads(metrics_file.read_text())
    assert trained_metrics["num_episodes"] == 16 and rec["metrics"] == trained_metrics
    assert (run_dir / "eval" / "eval_metrics.csv").read_text().startswith("task,physics,checkpoint")
    assert run_state(repo, "cartpole:base")["evaluation"]["metrics"] == trained_metrics  # for the ledger

    untrained = doit(repo, "cartpole:base-play", "--num_episodes", "16", "--checkpoint", "model_0.pt", "--video",
                     "--video_length", "30")
    assert untrained.returncode == 0, out(untrained)
    rec0 = json.loads(target.read_text())
    assert rec0["checkpoint"] == str(run_dir / "model_0.pt")
    # A policy after one update acts about at random: the trained one balances far longer.
    assert trained_metrics["mean_return"] > rec0["metrics"]["mean_return"] + 50, (trained_metrics, rec0)

    from PIL import Image

    with Image.open(rec0["video"]) as gif:
        assert gif.format == "GIF" and gif.n_frames > 1 and gif.size == (320, 240)
        gif.seek(gif.n_frames - 1)
        gif.convert("RGB")  # decodes to the last frame

    best = doit(repo, "cartpole:base-play", "--num_episodes", "4", "--checkpoint", "best")
    assert best.returncode == 0, out(best)
    assert json.loads(target.read_text())["checkpoint"] != str(run_dir / "model_0.pt")


@pytest.mark.timeout(60)
@pytest.mark.parametrize("toml, words", [
    ('[tool.lights_out.launchers.lab]\nprefix = ["./IsaacLab/isaaclab.sh", "-p"]',
     "launcher prefix './IsaacLab/isaaclab.sh' was not found"),
    ('[tool.lights_out.launchers.lab]\nscript = "tasks/train.py"',  # a training script with no play.py beside it
     "play script 'tasks/play.py' (beside the training script) does not exist"),
])
def test_a_play_command_that_cannot_start_is_one_sentence(tmp_path: Path, toml, words):
    repo = make_repo(tmp_path / "repo", toml)
    (repo / "tasks/train.py").write_text("")
    p = doit(repo, "cartpole:base-play")
    assert p.returncode != 0 and words in out(p), out(p)
    assert "Traceback" not in out(p)


def test_ledger_and_report_show_an_eval_result(tmp_path: Path):
    from lights_out_dev.core.spec import RunSpec
    from lights_out_dev.core.state import Attempt, RunState
    from lights_out_dev.sweep import ledger, report
    from lights_out_dev.sweep.plan import LoadedPlan, Plan, PlannedRun

    plan = Plan.model_validate({"name": "p", "runs": [{"task": "cartpole:base"}, {"task": "cartpole:base"}]})
    runs = [PlannedRun(index=i, phase=1, task="cartpole:base", num_envs=64, max_iterations=None, seed=None,
                       trainer_args=[], gpus=1, time_limit_s=None, smoke=False) for i in (1, 2)]
    loaded = LoadedPlan(plan=plan, path=tmp_path / "p.yaml", runs=runs)
    spec = RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=[], script="workloads/train.py",
                   trainer_task="Lo-Cartpole-v0", num_envs=64)
    metrics = {"mean_return": 231.23, "std_return": 20.06, "num_episodes": 16, "mean_episode_length": 240.0,
               "success_rate": 0.5}
    run_dir = tmp_path / "run2"
    (run_dir / "eval").mkdir(parents=True)
    (run_dir / "eval/eval_metrics.json").write_text(json.dumps({**metrics, "mean_return": 12.0}))
    states = {
        1: RunState(run_key="01", rid="r", run_name="n", task="cartpole:base", spec=spec, status="completed",
                    attempts=[Attempt(number=1, argv=[], started_at=1.0, ended_at=2.0, verdict="completed")],
                    extra={"eval": {"metrics": metrics, "checkpoint": "/x/model_9.pt"}}),
        2: RunState(run_key="02", rid="r", run_name="n", task="cartpole:base", spec=spec, status="completed",
                    attempts=[Attempt(number=1, argv=[], started_at=1.0, ended_at=2.0, verdict="completed",
                                      tb_dir=str(run_dir))]),
    }
    text = ledger.render(loaded, states)
    assert "eval return 231.2±20.1 (16 ep), success 0.50" in text
    assert "- Eval: eval return 231.2±20.1 (16 ep), success 0.50 of /x/model_9.pt" in text
    evals = {i: report.eval_metrics(st) for i, st in states.items()}
    assert evals[2]["mean_return"] == 12.0  # found beside the run's checkpoints
    table = report.table(loaded, states, {}, evals).splitlines()
    assert table[0].endswith("| Eval return | Eval episode length | Eval success |")
    assert table[2].endswith("| 231.23 ± 20.06 | 240.0 | 0.50 |") and "| 12.00 ± 20.06 |" in table[3]
    assert "Eval" not in report.table(loaded, states, {}).splitlines()[0]  # no eval: the table is unchanged


EVALUATED = """
name: evaluated
runs:
  - task: cartpole:base
    overrides: {num_envs: 64, max_iterations: 2}
  - task: cartpole:base
    overrides: {num_envs: 64, max_iterations: 15}
evaluate: {best: 1, num_episodes: 8}
"""


@pytest.mark.timeout(150)
def test_a_sweep_ends_with_an_evaluation_of_its_best_run(tmp_path: Path):
    repo = make_repo(tmp_path / "repo")
    (repo / "sweeps/evaluated.yaml").write_text(EVALUATED)
    p = doit(repo, "sweep", "--plan", "sweeps/evaluated.yaml", timeout=140)
    assert p.returncode == 0, out(p)
    runs = repo / "local_experiment_logs/sweeps/evaluated/runs"
    short, long_ = (json.loads((runs / f"{i:02d}.json").read_text()) for i in (1, 2))
    assert not short["evaluation"]  # only the best run is evaluated
    ev = long_["evaluation"]
    assert ev["checkpoint"] == long_["checkpoints"][-1] and ev["metrics"]["num_episodes"] == 8
    assert "eval return" in (repo / "local_experiment_logs/sweep_log.md").read_text()
    report_md = (repo / "local_experiment_logs/sweeps/evaluated/report.md").read_text()
    assert "| Eval return |" in report_md
