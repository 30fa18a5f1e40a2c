"""Learning-health verdicts (health.py): table-driven on series, then on real TensorBoard files: written by
SummaryWriter, and by the reference trainer with the nan / diverge / collapse injections; plus the NaN
signatures, the policy's reseed and the supervisor's choice of a checkpoint before the NaN."""
from __future__ import annotations

import glob
import math
import subprocess
import sys
from pathlib import Path

import pytest

from lights_out_dev.core.classify import Observations, classify
from lights_out_dev.core.config import default_policy
from lights_out_dev.core.policy import decide
from lights_out_dev.core.tb import read_scalars
from lights_out_dev.core.verdicts import Verdict
from lights_out_dev.run.scan import LogScanner
from lights_out_dev.run.supervisor import _checkpoints_before
from lights_out_dev.sweep.health import HealthRule, judge
from lights_out_dev.sweep.judging import points

ROOT = Path(__file__).resolve().parents[1]
R, V = "Train/mean_reward", "Loss/value"


def ramp(values):
    return [(i, float(v)) for i, v in enumerate(values)]


CASES = [
    ("healthy ramp", {R: ramp(range(20))}, HealthRule(collapse_fraction=0.5, plateau_iterations=5), None),
    ("nan reward", {R: ramp([1, 2, math.nan])}, HealthRule(), ("nan", 2)),
    ("inf value loss", {R: ramp([1, 2]), V: ramp([3, math.inf])}, HealthRule(), ("nan", 1)),
    ("nan ignored when off", {R: ramp([1, math.nan])}, HealthRule(nan=False), None),
    ("value loss beyond its bound", {V: ramp([30, 40, 2e6, 3e6])}, HealthRule(bounds={V: 1e5}), ("diverged", 2)),
    ("within the bound", {V: ramp([30, 40, 50])}, HealthRule(bounds={V: 1e5}), None),
    ("collapse that stays", {R: ramp([0, 5, 10, 2, 2, 2, 2])}, HealthRule(collapse_fraction=0.5, collapse_patience=3),
     ("collapsed", 4)),
    ("a dip that recovers is no collapse", {R: ramp([0, 5, 10, 2, 2, 9, 9])},
     HealthRule(collapse_fraction=0.5, collapse_patience=3), None),
    ("too short a dip", {R: ramp([0, 5, 10, 2, 2])}, HealthRule(collapse_fraction=0.5, collapse_patience=3), None),
    ("never learned, never collapses", {R: ramp([5, 4, 3, 2, 1, 0])},
     HealthRule(collapse_fraction=0.5, collapse_patience=3), None),
    ("plateau", {R: ramp([1, 5, 5, 5.05, 5, 5, 5])}, HealthRule(plateau_iterations=4, plateau_min_delta=0.1),
     ("plateau", None)),
    ("plateau is opt-in", {R: ramp([1, 5, 5, 5, 5, 5, 5])}, HealthRule(), None),
]


@pytest.mark.parametrize("series,rule,expected", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_judge_table(series, rule, expected):
    found = judge(series, rule)
    if expected is None:
        assert found is None
    else:
        assert (found.verdict, found.iteration) == expected, found
        assert found.reason


def test_nan_in_a_real_tensorboard_file(tmp_path):
    from torch.utils.tensorboard import SummaryWriter

    w = SummaryWriter(str(tmp_path))
    for it, v in enumerate([1.0, 2.0, float("nan"), 3.0]):
        w.add_scalar(V, v, it)
        w.add_scalar(R, it, it)
    w.close()
    series = read_scalars(tmp_path)
    found = judge({t: points(series, t) for t in (R, V)}, HealthRule())
    assert found.verdict == "nan" and found.iteration == 2 and V in found.reason


def train(tmp_path: Path, *args: str) -> tuple[dict, str]:
    tmp_path.mkdir(parents=True, exist_ok=True)
    out = subprocess.run([sys.executable, str(ROOT / "workloads/train.py"), "--task", "Lo-Cartpole-v0", "--num_envs",
                          "32", "--max_iterations", "30", "--headless", "--device", "cpu", *args],
                         cwd=tmp_path, capture_output=True, text=True, timeout=300)
    run_dir = glob.glob(str(tmp_path / "logs/rsl_rl/*/*"))[0]
    series = read_scalars(run_dir)
    return {t: points(series, t) for t in series}, out.stdout + out.stderr


@pytest.mark.timeout(600)
def test_the_trainers_learning_faults_give_their_verdicts(tmp_path):
    healthy, _ = train(tmp_path / "healthy")
    rule = HealthRule(bounds={V: 1e5}, collapse_fraction=0.5, collapse_patience=8)
    assert judge(healthy, rule) is None  # the reference run learns: no verdict

    diverged, _ = train(tmp_path / "diverge", "--inject", "diverge@5")
    found = judge(diverged, rule)
    assert found.verdict == "diverged" and found.iteration >= 5, found

    collapsed, _ = train(tmp_path / "collapse", "--inject", "collapse@8")
    found = judge(collapsed, rule)
    assert found.verdict == "collapsed" and found.iteration >= 8, found
    found = judge(collapsed, HealthRule(plateau_iterations=10))  # flat after the collapse: a plateau too
    assert found.verdict == "plateau"

    _, log = train(tmp_path / "nan", "--inject", "nan@3")
    scanner = LogScanner()
    for line in log.splitlines():
        scanner.feed(line)
    verdict, reason = classify(scanner.observations(None, None))
    assert verdict is Verdict.nan, (verdict, reason, log[-2000:])


@pytest.mark.parametrize("line", [
    "RuntimeError: normal expects all elements of std >= 0.0",
    "ValueError: The observation group 'policy' returned by the environment contains NaN values. This usually",
    "                        Mean value loss: nan",
    "                            Mean reward: -inf",
])
def test_nan_lines_are_a_fatal_signature(line):
    scanner = LogScanner()
    scanner.feed(line)
    assert "nan" in scanner.hits
    assert classify(Observations(exit_code=1, hits=scanner.hits))[0] is Verdict.nan


def test_ordinary_lines_are_not_nan():
    scanner = LogScanner()
    for line in ("Mean reward: 12.50", "Mean value loss: 0.1234", "[INFO] finance nanny", "Mean reward: nan_guard ok"):
        scanner.feed(line)
    assert "nan" not in scanner.hits


def test_policy_reseeds_a_nan_once_then_gives_up():
    rules = default_policy()
    first = decide(Verdict.nan, [], rules, 3, 64, 1, has_checkpoint=True)
    assert first.action == "reseed" and first.resume
    second = decide(Verdict.nan, [Verdict.nan], rules, 3, 64, 1, has_checkpoint=True)
    assert second.action == "give_up"
    assert decide(Verdict.collapsed, [], rules, 3, 64, 1, True).action == "give_up"
    assert decide(Verdict.plateau, [], rules, 3, 64, 1, True).action == "accept"
    assert not Verdict.pruned.is_failure and not Verdict.plateau.is_failure and Verdict.nan.is_failure


def test_reseed_goes_back_before_the_bad_iteration():
    ckpts = ["run/model_0.pt", "run/model_50.pt", "run/model_100.pt"]
    assert _checkpoints_before(ckpts, 60) == ckpts[:2]
    assert _checkpoints_before(ckpts, 0) == []
    assert _checkpoints_before(ckpts, None) == ckpts
