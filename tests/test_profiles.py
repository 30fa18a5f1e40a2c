"""Trainer profiles as data: resolution, validation sentences, and the twins the graph generates."""
from __future__ import annotations

from pathlib import Path

import pytest

from lights_out_dev.core.config import ConfigError, load_config
from lights_out_dev.core.profiles import BUILTIN_PROFILES, ProfileError, resolve_profile
from tests.test_graph import doit, make_repo, out


def test_builtins_resolve_and_extends_merges_nested_tables():
    spelled = {"sb3": "--env", "skrl": "--env", "rsl_rl": "--env", "generic": None}
    for name in BUILTIN_PROFILES:
        assert resolve_profile(name, {}).flags.task == spelled.get(name, "--task")
    mine = resolve_profile("mine", {"mine": {"extends": "isaaclab3", "flags": {"seed": "--rng", "run_name": ""},
                                             "env": {"A": "1"}}})
    assert mine.module == "isaaclab" and mine.flags.seed == "--rng" and mine.flags.run_name is None
    assert mine.flags.num_envs == "--num_envs"  # nested table merged, not replaced
    assert mine.env == {**BUILTIN_PROFILES["isaaclab3"]["env"], "A": "1"}


@pytest.mark.parametrize("tables,name,fragment", [
    ({}, "nope", "unknown trainer profile 'nope'"),
    ({"a": {"extends": "b"}, "b": {"extends": "a"}}, "a", "loop (a -> b -> a)"),
    ({"a": {"extends": "reference", "resume_args": ["--from", "{ckpt}"]}}, "a", "unknown placeholder {ckpt}"),
    ({"a": {"extends": "reference", "multi_gpu": "mpi"}}, "a", "key 'multi_gpu'"),
    ({"a": {"flags": {}}}, "a", "neither 'module' nor 'script'"),
    ({"a": {"extends": "sb3", "observe": {"reward": "ep_rew_mean ([)"}}}, "a", "key 'observe.reward'"),
    ({"a": {"extends": "sb3", "checkpoint_dir": "{run}/ckpt"}}, "a", "unknown placeholder {run} in '{run}/ckpt'"),
    ({"a": {"extends": "sb3", "attempt_env": {"WANDB_RUN_ID": "{id}"}}}, "a", "unknown placeholder {id}"),
    ({"a": {"extends": "sb3", "observe": {"completion": "exit1"}}}, "a", "'exit1' is neither 'exit0' nor a list"),
    ({"a": {"extends": "sb3", "observe": {"completion": ["done ("]}}}, "a", "'done (' is not a regular expression"),
    ({"a": {"extends": "sb3", "resume_budget": "half"}}, "a", "key 'resume_budget'"),
])
def test_bad_profiles_are_one_sentence(tables, name, fragment):
    with pytest.raises(ProfileError) as e:
        resolve_profile(name, tables)
    assert fragment in str(e.value) and str(e.value).endswith(".") and "\n" not in str(e.value)


def test_config_names_the_bad_profile(tmp_path: Path):
    (tmp_path / "pyproject.toml").write_text('[tool.lights_out.launchers.lab]\ntrainer = "isaaclab4"\n')
    with pytest.raises(ConfigError) as e:
        load_config(tmp_path)
    assert "unknown trainer profile 'isaaclab4'" in str(e.value)


@pytest.mark.timeout(120)
def test_graph_offers_only_twins_the_profile_supports(tmp_path: Path):
    """A single-GPU trainer without a play script gets neither -mgpu nor -play; Isaac Lab 3 gets no -play."""
    repo = make_repo(tmp_path / "repo", '[tool.lights_out.trainers.solo]\nextends = "reference"\n'
                                        'multi_gpu = "none"\nplay_script = ""\n'
                                        '[tool.lights_out.launchers.lab]\ntrainer = "solo"\n')
    p = doit(repo, "list", "--all")
    assert p.returncode == 0, out(p)
    names = {line.split()[0] for line in p.stdout.splitlines() if line.strip()}
    assert "cartpole:base" in names and "cartpole:base-mgpu" not in names and "cartpole:base-play" not in names
    assert "isaac_cartpole:base-mgpu" in names and "isaac_cartpole:base-play" not in names
