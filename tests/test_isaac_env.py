"""Isaac Lab environment defaults (command.ISAAC_ENV_DEFAULTS): detection, config overrides, what extract_cmd shows, and
the classifier recognising the failures they prevent."""
from __future__ import annotations

import os
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_graph import make_repo

from lights_out_dev.core.classify import classify
from lights_out_dev.core.command import (
    ISAAC_ENV_DEFAULTS,
    isaac_env_defaults,
    trainer_env,
)
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.verdicts import Verdict
from lights_out_dev.executors.base import ExitStatus
from lights_out_dev.run.scan import LogScanner

ISAAC_PREFIX = ["./IsaacLab/isaaclab.sh", "-p"]
ISAAC_SCRIPT = "scripts/reinforcement_learning/rsl_rl/train.py"


@pytest.mark.parametrize("enabled, prefix, script, on", [
    (None, ISAAC_PREFIX, ISAAC_SCRIPT, True),  # isaaclab.sh
    (None, ["pixi", "run", "-e", "gsi", "python"], "IsaacLab/" + ISAAC_SCRIPT, True),  # script under IsaacLab/
    (None, [], "workloads/train.py", False),  # the reference trainer
    (None, ["pixi", "run", "python"], "train.py", False),
    (False, ISAAC_PREFIX, ISAAC_SCRIPT, False),  # switched off in config
    (True, [], "workloads/train.py", True),  # switched on for a wrapper detection cannot see
])
def test_detection_and_config_switch(enabled, prefix, script, on):
    assert isaac_env_defaults(enabled, prefix, script) == (ISAAC_ENV_DEFAULTS if on else {})


def _spec(env: dict[str, str]) -> RunSpec:
    return RunSpec(task="f:v", family="f", launcher="lab", prefix=ISAAC_PREFIX, script=ISAAC_SCRIPT,
                   trainer_task="T", env=env)


def test_term_is_defaulted_only_when_unset_and_only_for_isaac_runs(monkeypatch):
    monkeypatch.delenv("TERM", raising=False)
    assert trainer_env(_spec(dict(ISAAC_ENV_DEFAULTS)))["TERM"] == "xterm"
    assert "TERM" not in trainer_env(_spec({}))  # not an Isaac Lab run
    assert trainer_env(_spec({**ISAAC_ENV_DEFAULTS, "TERM": "dumb"}))["TERM"] == "dumb"  # config wins
    monkeypatch.setenv("TERM", "screen")
    assert "TERM" not in trainer_env(_spec(dict(ISAAC_ENV_DEFAULTS)))  # the caller's own TERM is inherited


def extract(repo: Path, *args: str, term: str | None = None) -> str:
    env = {k: v for k, v in os.environ.items() if k not in ("TERM", "LIGHTS_OUT_ROOT")}
    env["PYTHONPATH"] = str(repo)
    if term:
        env["TERM"] = term
    p = subprocess.run([sys.executable, "-m", "lights_out_dev.cli.extract_cmd", *args], cwd=repo, env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stdout + p.stderr
    return p.stdout.strip()


def env_of(command: str) -> dict[str, str]:
    """The leading KEY=value words of an extract_cmd line."""
    out = {}
    for word in shlex.split(command):
        key, eq, value = word.partition("=")
        if not eq or not key.isidentifier() or not key.isupper():
            break
        out[key] = value
    return out


ISAAC_TOML = '[tool.lights_out.launchers.lab]\nprefix = ["./IsaacLab/isaaclab.sh", "-p"]\n'


@pytest.mark.timeout(120)
def test_extract_cmd_shows_the_defaults_for_isaac_lab_and_not_for_the_reference_trainer(tmp_path: Path):
    isaac = make_repo(tmp_path / "isaac", ISAAC_TOML)
    for task in ("cartpole:base", "cartpole:base-mgpu"):
        cmd = extract(isaac, task)
        env = env_of(cmd)
        assert env["OMNI_KIT_ACCEPT_EULA"] == "yes" and env["PYTHONNOUSERSITE"] == "1", cmd
        assert env["TERM"] == "xterm", cmd
        assert "--headless" in shlex.split(cmd) and "./IsaacLab/isaaclab.sh" in cmd
    assert "TERM" not in env_of(extract(isaac, "cartpole:base", term="xterm-256color"))

    reference = make_repo(tmp_path / "reference")
    cmd = extract(reference, "cartpole:base")
    assert not {"OMNI_KIT_ACCEPT_EULA", "PYTHONNOUSERSITE", "TERM"} & set(env_of(cmd)), cmd
    assert "--headless" in shlex.split(cmd)  # the lab launcher is headless for every trainer


@pytest.mark.timeout(120)
@pytest.mark.parametrize("toml, expected", [
    (ISAAC_TOML + 'env = { OMNI_KIT_ACCEPT_EULA = "Y", PYTHONNOUSERSITE = "" }\n',
     {"OMNI_KIT_ACCEPT_EULA": "Y", "PYTHONNOUSERSITE": "", "TERM": "xterm"}),
    (ISAAC_TOML + "isaac_env_defaults = false\n", {}),
    ('[tool.lights_out.launchers.lab]\nisaac_env_defaults = true\n',
     {"OMNI_KIT_ACCEPT_EULA": "yes", "PYTHONNOUSERSITE": "1", "TERM": "xterm"}),
    (ISAAC_TOML + 'env = { TERM = "dumb" }\n', {"OMNI_KIT_ACCEPT_EULA": "yes", "PYTHONNOUSERSITE": "1",
                                                  "TERM": "dumb"}),
])
def test_each_default_is_overridable_in_config(tmp_path: Path, toml, expected):
    repo = make_repo(tmp_path / "repo", toml)
    env = env_of(extract(repo, "cartpole:base"))
    assert {k: v for k, v in env.items() if k in ("OMNI_KIT_ACCEPT_EULA", "PYTHONNOUSERSITE", "TERM")} == expected


@pytest.mark.parametrize("lines", [
    ["[Error] [omni.kit.app] The NVIDIA Omniverse License Agreement (EULA) must be accepted before",
     "Omniverse Kit can start. Set OMNI_KIT_ACCEPT_EULA to YES to accept it."],
    ["Do you accept the EULA? (Yes/No): Traceback (most recent call last):",
     "EOFError: EOF when reading a line"],
    ["Traceback (most recent call last):", '  File "scripts/reinforcement_learning/rsl_rl/train.py", line 40',
     "    import omni.isaac.core", "ModuleNotFoundError: No module named 'omni.isaac'"],
    ["Traceback (most recent call last):", "    from isaaclab.envs import ManagerBasedRLEnvCfg",
     "ModuleNotFoundError: No module named 'isaaclab.envs'"],
])
def test_eula_and_import_order_failures_are_config_errors(lines):
    scanner = LogScanner()
    for line in lines:
        scanner.feed(line)
    verdict, reason = classify(scanner.observations(ExitStatus(exit_code=1), None))
    assert verdict == Verdict.config_error, reason


def test_an_env_dump_with_the_eula_accepted_is_not_a_failure():
    scanner = LogScanner()
    for line in ["OMNI_KIT_ACCEPT_EULA=YES", "Learning iteration 0/1", "Training time: 1.0 seconds"]:
        scanner.feed(line)
    assert classify(scanner.observations(ExitStatus(exit_code=0), None))[0] == Verdict.completed
