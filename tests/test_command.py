"""Pure cores of the task graph: overrides parsing, flag merging, argv building, redaction, token recovery."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

from lights_out_dev.core import overrides
from lights_out_dev.core.command import (
    build_argv,
    format_command,
    gpu_env,
    launch_problem,
    merge_flags,
    redact_argv,
    secret_values,
    shell_join,
    trainer_env,
)
from lights_out_dev.core.profiles import resolve_profile
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.doit.run_command import recover_tokens, split_selection
from lights_out_dev.run.tasks_index import unknown_task_sentence

pytestmark = pytest.mark.timeout(30)


def spec(**kw) -> RunSpec:
    base = dict(task="top_dog:base", family="top_dog", launcher="lab", prefix=[], script="workloads/train.py",
                trainer_task="Lo-Reacher-v0", num_envs=4096, max_iterations=300)
    return RunSpec(**{**base, **kw})


@pytest.mark.parametrize("base, over, expected", [
    (["--num_envs", "4096", "--headless"], ["--num_envs", "64"], ["--num_envs", "64", "--headless"]),
    (["--task", "A", "--distributed"], ["--resume"], ["--task", "A", "--distributed", "--resume"]),
    (["--lr=1e-3", "--x", "1"], ["--lr", "3e-4"], ["--lr", "3e-4", "--x", "1"]),
    (["physics=torch", "--a", "1"], ["physics=newton"], ["physics=newton", "--a", "1"]),
    (["+agent.x=1"], ["agent.x=2"], ["agent.x=2"]),
    ([], ["--foo", "bar", "--foo", "baz"], ["--foo", "baz"]),
    (["--seed", "1"], ["--seed", "-3"], ["--seed", "-3"]),
    (["--a", "1", "--a", "2"], ["--a", "3"], ["--a", "3"]),
    (["--env", "x"], ["key=v", "--flag"], ["--env", "x", "key=v", "--flag"]),
])
def test_merge_flags_last_wins_in_place(base, over, expected):
    assert merge_flags(base, over) == expected


@pytest.mark.parametrize("tokens, field, value", [
    (["--num_envs", "64"], "num_envs", 64),
    (["--num_envs=64", "--num_envs", "128"], "num_envs", 128),
    (["--max_iterations", "2"], "max_iterations", 2),
    (["--seed", "0"], "seed", 0),
    (["--gpu", "3"], "gpu", 3),
    (["--time_limit", "1h30m"], "time_limit_s", 5400.0),
    (["--time_limit", "none"], "time_limit_s", None),
    (["--executor", "slurm"], "executor", "slurm"),
    (["--nodes", "2"], "nodes", 2),
    (["--nodes=4", "--foo"], "nodes", 4),
    (["--smoke"], "smoke", True),
    (["--continue"], "continue_", True),
    (["--wipe"], "wipe", True),
    (["--plan", "sweeps/a.yaml"], "plan", "sweeps/a.yaml"),
    (["--foo", "bar", "physics=newton", "--lr=3e-4", "--resume"], "trainer_args",
     ["--foo", "bar", "physics=newton", "--lr=3e-4", "--resume"]),
    (["--gpu", "1", "--resume", "--num_envs", "8", "x=1"], "trainer_args", ["--resume", "x=1"]),
    (["--", "--foo", "--", "bar"], "trainer_args", ["--foo", "bar"]),
])
def test_overrides_parse(tokens, field, value):
    assert getattr(overrides.parse(tokens), field) == value


@pytest.mark.parametrize("tokens, fragment", [
    (["--num_envs", "0"], "--num_envs 0 is not valid"),
    (["--num_envs", "-5"], "--num_envs -5 is not valid"),
    (["--num_envs", "1.5"], "--num_envs 1.5 is not valid"),
    (["--num_envs"], "--num_envs (no value) is not valid"),
    (["--gpu", "x"], "--gpu x is not valid"),
    (["--time_limit", "soon"], "'soon' is not a duration"),
    (["--executor", "k8s"], "--executor k8s is not known"),
    (["--nodes", "0"], "--nodes 0 is not valid; give a positive whole number of Slurm nodes"),
])
def test_overrides_reject_bad_values(tokens, fragment):
    with pytest.raises(overrides.OverrideError) as e:
        overrides.parse(tokens)
    assert fragment in str(e.value)
    assert str(e.value).count(".") >= 1 and "\n" not in str(e.value)


def test_build_argv_single_gpu_pins_with_device_flag():
    argv = build_argv(spec(extra_args=["--num_envs", "64", "--foo", "bar"]), [3], rid="r" * 36, run_name="n")
    assert argv[:2] == [sys.executable, "workloads/train.py"]
    assert argv[argv.index("--device") + 1] == "cuda:3"
    assert argv.count("--num_envs") == 1 and argv[argv.index("--num_envs") + 1] == "64"
    assert argv[-2:] == ["--foo", "bar"] and "--headless" in argv
    assert argv[argv.index("--rid") + 1] == "r" * 36 and argv[argv.index("--run_name") + 1] == "n"
    assert gpu_env(spec(), [3]) == {}


def test_build_argv_cpu_and_run_name():
    argv = build_argv(spec(), None, rid="abcdef123")
    assert argv[argv.index("--device") + 1] == "cpu"
    assert argv[argv.index("--run_name") + 1] == "top_dog_base_4096_cpu_abcdef"


def test_build_argv_multi_gpu_uses_torch_distributed_run():
    s = spec(task="top_dog:base-mgpu", launcher="lab_mgpu", gpus=4, prefix=["./IsaacLab/isaaclab.sh", "-p"])
    argv = build_argv(s, [4, 5, 6, 7], extra=["--resume"], master_port=29555)
    assert argv[:8] == ["./IsaacLab/isaaclab.sh", "-p", "-m", "torch.distributed.run", "--nnodes=1",
                        "--nproc_per_node=4", "--master_port=29555", "workloads/train.py"]
    assert "--device" not in argv and argv[-2:] == ["--distributed", "--resume"]
    assert gpu_env(s, [4, 5, 6, 7]) == {"CUDA_VISIBLE_DEVICES": "4,5,6,7"}
    other = build_argv(s, [0, 1, 2, 3])  # a free rendezvous port each time
    assert any(t.startswith("--master_port=") for t in other)


def isaac3_spec(**kw) -> RunSpec:
    profile = resolve_profile("isaaclab3", {})
    return spec(trainer=profile, script=None, module=profile.module, script_args=profile.script_args, **kw)


def test_isaaclab3_command_is_what_real_isaaclab3_parses():
    """`python -m isaaclab train --rl_library rsl_rl`; no --headless, no --rid (both exit 2 in 3.0); the
    policy follows the environment onto the run's GPU (agent.device), fine-tuning is --checkpoint FILE."""
    argv = build_argv(isaac3_spec(load_checkpoint="/ck/2026_x/model_9.pt", newton_selector="physics=newton_mjwarp"),
                      [3], rid="abc", run_name="r1")
    assert argv[1:6] == ["-m", "isaaclab", "train", "--rl_library", "rsl_rl"]
    assert "--headless" not in argv and "--rid" not in argv and "--resume" not in argv
    assert argv[argv.index("--device") + 1] == "cuda:3" and "agent.device=cuda:3" in argv
    assert argv[argv.index("--checkpoint") + 1] == "/ck/2026_x/model_9.pt" and "physics=newton_mjwarp" in argv
    assert argv[argv.index("--run_name") + 1] == "r1"
    cpu = build_argv(isaac3_spec(), None)
    assert "agent.device=cpu" in cpu and cpu[cpu.index("--device") + 1] == "cpu"
    # an override of the device token wins in place (last flag wins)
    over = build_argv(isaac3_spec(extra_args=["agent.device=cuda:1"]), [3])
    assert "agent.device=cuda:1" in over and "agent.device=cuda:3" not in over


def test_isaaclab3_multi_gpu_runs_the_rank_module_with_one_timestamp():
    argv = build_argv(isaac3_spec(task="c:b-mgpu", launcher="lab_mgpu", gpus=2), [0, 1], master_port=29500)
    i = argv.index("--master_port=29500")
    assert argv[i + 1:i + 5] == ["-m", "isaaclab_rl.entrypoints.multigpu", "--rl_library", "rsl_rl"]
    assert "train" not in argv and "--distributed" in argv and "--device" not in argv
    assert sum(t.startswith("--run_timestamp=") for t in argv) == 1


def test_isaaclab2_resume_and_finetune_are_regexes_inside_the_experiment():
    """2.x resolves --load_run/--checkpoint as regexes inside logs/rsl_rl/<experiment>/ and ignores a bare
    --checkpoint without --resume: an absolute path would find nothing or train from scratch."""
    from lights_out_dev.run.supervisor import resume_flags

    profile = resolve_profile("isaaclab2", {})
    s2 = spec(trainer=profile, load_checkpoint="/l/rsl_rl/exp/2026-01-01_00-00-00_a.b/model_5.pt")
    argv = build_argv(s2, [0])
    assert argv[argv.index("--load_run") + 1] == r"^2026\-01\-01_00\-00\-00_a\.b$" and "--resume" in argv
    assert argv[argv.index("--checkpoint") + 1] == r"^model_5\.pt$" and "--headless" in argv
    assert "agent.device=cuda:0" in argv
    resumed = build_argv(s2, [0], extra=resume_flags(s2, "/l/rsl_rl/exp/run_x/model_40.pt"))
    assert resumed.count("--checkpoint") == 1 and resumed[resumed.index("--checkpoint") + 1] == r"^model_40\.pt$"
    assert resumed[resumed.index("--load_run") + 1] == "^run_x$"


def test_a_profile_can_drop_and_rename_every_flag():
    profile = resolve_profile("mine", {"mine": {"extends": "reference", "script": "t.py", "flags": {
        "task": "--env", "num_envs": None, "seed": "--rng", "device": None, "run_name": None, "run_id": None,
        "headless": None, "max_iterations": "--iters", "experiment_name": None}}})
    argv = build_argv(spec(trainer=profile, seed=3, experiment_name="e"), [0])
    assert argv[2:] == ["--env", "Lo-Reacher-v0", "--iters", "300", "--rng", "3"]


def test_build_argv_newton_checkpoint_and_debug():
    newton = build_argv(spec(launcher="newton", newton_selector="physics=newton",
                             load_checkpoint="/ck/model_9.pt"), [0])
    assert "physics=newton" in newton and newton[newton.index("--checkpoint") + 1] == "/ck/model_9.pt"
    assert "--headless" not in build_argv(spec(launcher="lab_debug", headless=False), [0])


def test_secrets_reach_the_trainer_but_are_redacted(monkeypatch):
    monkeypatch.setenv("WANDB_API_KEY", "s3cr3t-value")
    s = spec(env={"A": "1"}, secret_env=["WANDB_API_KEY", "ABSENT_SECRET"],
             extra_args=["--wandb_key", "s3cr3t-value"])
    assert trainer_env(s) == {"A": "1", "WANDB_API_KEY": "s3cr3t-value"}
    argv = build_argv(s, [0])
    shown = format_command(argv, trainer_env(s), secret_values(s))
    assert "s3cr3t" not in shown and "WANDB_API_KEY='***'" in shown and "--wandb_key '***'" in shown
    assert redact_argv(["x=s3cr3t-value"], secret_values(s)) == ["x=***"]
    assert shell_join(["a b", "c"]) == "'a b' c"


def test_launch_problems(tmp_path: Path):
    (tmp_path / "workloads").mkdir()
    (tmp_path / "workloads/train.py").write_text("")
    assert launch_problem(spec(), tmp_path, None, 0) is None
    assert launch_problem(spec(), tmp_path, 1, 2) is None
    assert "has no NVIDIA GPU" in launch_problem(spec(), tmp_path, 0, 0)
    assert "GPUs 0-1" in launch_problem(spec(), tmp_path, 7, 2)
    assert "does not exist" in launch_problem(spec(script="nope/train.py"), tmp_path, None, 0)
    assert launch_problem(spec(script=None, module="json"), tmp_path, None, 0) is None  # importable by this Python
    assert "'no_such_trainer_xyz.train' cannot be imported" in launch_problem(
        spec(script=None, module="no_such_trainer_xyz.train"), tmp_path, None, 0)
    assert "was not found" in launch_problem(spec(prefix=["./IsaacLab/isaaclab.sh", "-p"]), tmp_path, None, 0)
    assert "was not found" in launch_problem(spec(prefix=["no-such-pixi-xyz", "run"]), tmp_path, None, 0)
    mgpu = spec(task="x:y-mgpu", launcher="lab_mgpu", gpus=2)
    assert "needs 2 GPUs but this machine has 1; run the single-GPU variant x:y" in launch_problem(mgpu, tmp_path, None, 1)


@pytest.mark.parametrize("in_args, argv, doit_vars, expected", [
    # normal CLI: key=value put back where the user wrote it
    (["t:a", "--foo", "--x", "1"], ["t:a", "--foo", "k=v", "--x", "1"], {"k": "v"},
     ["t:a", "--foo", "k=v", "--x", "1"]),
    # explicit `run` command name and a doit var before it stay out
    (["-v", "2", "t:a"], ["g=1", "run", "-v", "2", "t:a", "p=q"], {"g": "1", "p": "q"}, ["-v", "2", "t:a", "p=q"]),
    # API use (argv unrelated): doit's vars appended
    (["t:a", "--n", "1"], ["pytest", "-q"], {"k": "v"}, ["t:a", "--n", "1", "k=v"]),
    ([], ["k=v"], {"k": "v"}, []),
])
def test_recover_tokens(in_args, argv, doit_vars, expected):
    assert recover_tokens(in_args, argv, doit_vars) == expected


@pytest.mark.parametrize("rest, names, extra", [
    (["a:b", "c:d", "--n", "1"], ["a:b", "c:d"], ["--n", "1"]),
    (["a:b", "x=1", "c:d"], ["a:b"], ["x=1", "c:d"]),
    (["a:b"], ["a:b"], []),
])
def test_split_selection(rest, names, extra):
    assert split_selection(rest) == (names, extra)


def test_unknown_task_sentence_suggests_close_names():
    msg = unknown_task_sentence("top_dg:base", ["top_dog:base", "cartpole:base", "gpu_guard"])
    assert msg.startswith("'top_dg:base' is not a task; did you mean top_dog:base")
    assert "doit list --all" in unknown_task_sentence("zzz", ["top_dog:base"])


def test_checkpoint_clock_stops_right_after_a_save_when_the_next_would_overrun(tmp_path: Path):
    """Learns the save period from checkpoints appearing; decides only once the save is surely complete
    (a later iteration printed) and only when waiting for the next save would pass the deadline."""
    from lights_out_dev.run.monitor import CheckpointClock

    clock = CheckpointClock(r"model_(\d+)\.pt")
    clock.POLL_S = 0.0
    d = str(tmp_path)
    (tmp_path / "model_0.pt").write_bytes(b"")
    assert not clock.stop_now(d, 2, now=0.0, deadline=100.0)  # one checkpoint: no period known
    (tmp_path / "model_10.pt").write_bytes(b"")
    assert not clock.stop_now(d, 11, now=30.0, deadline=100.0)  # saved, but iteration 11 may still be writing it
    assert not clock.stop_now(d, 12, now=31.0, deadline=100.0)  # period 30 s: the next save comes at ~61 s < 100
    (tmp_path / "model_20.pt").write_bytes(b"")
    assert not clock.stop_now(d, 21, now=75.0, deadline=100.0)
    assert clock.stop_now(d, 22, now=76.0, deadline=100.0)  # next save ~121 s > 100 s: stop now, nothing lost
    assert clock.newest == "model_20.pt"
    assert not clock.stop_now(d, 23, now=77.0, deadline=100.0)  # decided once per checkpoint


def test_checkpoint_clock_sees_a_save_at_the_next_iteration_not_the_next_poll(tmp_path: Path):
    """Iterations can be shorter than the directory poll: the save is looked for at every new iteration, so
    the stop comes at the line that proves the save, not one poll (and several trained iterations) later."""
    from lights_out_dev.run.monitor import CheckpointClock

    clock = CheckpointClock(r"model_(\d+)\.pt")
    d = str(tmp_path)
    (tmp_path / "model_0.pt").write_bytes(b"")
    assert not clock.stop_now(d, 2, now=0.0, deadline=0.5)
    (tmp_path / "model_5.pt").write_bytes(b"")
    assert not clock.stop_now(d, 6, now=0.1, deadline=0.5)  # within POLL_S, but iteration 6 is new: listed
    assert clock.stop_now(d, 7, now=0.2, deadline=0.5)  # save proven, next one would overrun: stop now
    assert clock.newest == "model_5.pt"
