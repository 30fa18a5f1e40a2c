"""The task graph through real `doit` processes, each in a fresh copy of the repository (so runs,
targets and doit's database never mix with another test or with the developer's own runs)."""
from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOIT = [sys.executable, "-m", "doit"]
COPIED = ("dodo.py", "pyproject.toml", "tasks", "lights_out_dev", "workloads", "sweeps")


def make_repo(dest: Path, lights_out_toml: str = "") -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in COPIED:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        elif src.exists():
            shutil.copy2(src, dest / name)
    if lights_out_toml:
        with open(dest / "pyproject.toml", "a") as f:
            f.write("\n" + lights_out_toml + "\n")
    return dest


def doit(repo: Path, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTS_OUT_ROOT", None)
    return subprocess.run([*DOIT, *args], cwd=repo, env=env, capture_output=True, text=True, timeout=timeout)


def out(p: subprocess.CompletedProcess) -> str:
    return p.stdout + p.stderr


def nothing_launched(repo: Path) -> bool:
    logs = repo / "local_experiment_logs"
    return not (logs / "runs").exists() and not (logs / "targets").exists() and not (repo / "logs").exists()


def executed(p: subprocess.CompletedProcess, task: str) -> bool:
    """doit prints '.  task' when it runs a task and '-- task' when it is up to date."""
    return re.search(rf"^\.  {re.escape(task)}$", p.stdout, re.M) is not None


def up_to_date(p: subprocess.CompletedProcess, task: str) -> bool:
    return re.search(rf"^-- {re.escape(task)}$", p.stdout, re.M) is not None


def run_state(repo: Path, task: str) -> dict:
    return json.loads((repo / "local_experiment_logs/runs" / (task.replace(":", "__") + ".json")).read_text())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.mark.timeout(60)
def test_list_shows_every_variant_with_its_mgpu_twin_and_a_doc(repo: Path):
    p = doit(repo, "list", "--all")
    assert p.returncode == 0, out(p)
    lines = dict(re.split(r"\s{2,}", line.strip(), maxsplit=1) for line in p.stdout.splitlines() if line.strip())
    for variant in ("cartpole:base", "cartpole:long", "cartpole:newton", "top_dog:base", "top_dog:with-transfer"):
        assert variant in lines and f"{variant}-mgpu" in lines, p.stdout
        assert lines[variant] and lines[f"{variant}-mgpu"].endswith("GPUs]")
    assert "cartpole:debug" in lines and "cartpole:debug-mgpu" not in lines
    for check in ("gpu_guard", "power_check", "runtime_check"):
        assert lines.get(check)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("args, fragment", [
    (["top_dg:with-transfer"], "'top_dg:with-transfer' is not a task; did you mean top_dog:with-transfer"),
    (["cartpole:base", "--num_envs", "0"], "--num_envs 0 is not valid"),
    (["cartpole:base", "--num_envs", "-8"], "--num_envs -8 is not valid"),
    (["cartpole:base", "--num_envs", "lots"], "--num_envs lots is not valid"),
    (["cartpole:base", "--gpu", "7"], "--gpu 7 is out of range"),
    (["top_dog:base-mgpu", "--num_envs", "8"], "needs 2 GPUs"),
    (["--num_envs", "8", "cartpole:base"], "doit's own options go before the task name"),
    (["nosuch*"], "'nosuch*' matches no task"),
    ([], "name the task(s) to run"),
])
def test_bad_input_is_one_sentence_and_launches_nothing(repo: Path, args, fragment):
    if "--gpu" in args:
        from lights_out_dev.host.nvml import gpu_count

        if gpu_count() > 7:
            pytest.skip("this machine has a GPU 7")
    if "needs 2 GPUs" in fragment:
        from lights_out_dev.host.nvml import gpu_count

        if gpu_count() != 0:  # an -mgpu twin uses every visible GPU: with 1 GPU it asks for 1, not 2
            pytest.skip("on a GPU machine an -mgpu twin asks for the GPUs it sees")
    p = doit(repo, *args)
    assert p.returncode != 0
    assert fragment in p.stderr, out(p)
    assert "Traceback" not in out(p)
    assert nothing_launched(repo)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("args, fragment", [
    (["cartpole:base-mgpu", "--nodes", "2"], "cartpole:base-mgpu asks for 2 nodes, which needs the Slurm executor"),
    (["cartpole:base", "--nodes", "2", "--executor", "slurm"], "only an -mgpu variant (torch.distributed.run)"),
])
def test_nodes_without_slurm_or_torchrun_is_one_sentence(repo: Path, args, fragment):
    p = doit(repo, *args)
    assert p.returncode != 0
    assert fragment in out(p)
    assert "Traceback" not in out(p)
    assert nothing_launched(repo)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("toml, args, fragment", [
    ('[tool.lights_out]\nlogs_dirr = "x"', ["list"], "'logs_dirr' is not a known setting"),
    ('[tool.lights_out]\ncpu_slots = 0', ["cartpole:base"], "cpu_slots"),
    ('[tool.lights_out.launchers.lab]\nscript = "missing/train.py"', ["cartpole:base"],
     "trainer script 'missing/train.py' does not exist"),
    ('[tool.lights_out.launchers.lab]\nprefix = ["./IsaacLab/isaaclab.sh", "-p"]', ["cartpole:base"],
     "launcher prefix './IsaacLab/isaaclab.sh' was not found"),
    ('[tool.lights_out.launchers.lab]\nprefix = ["pixi-not-installed-here", "run", "-e", "gsi", "python"]',
     ["top_dog:with-transfer"], "launcher prefix 'pixi-not-installed-here' was not found"),
])
def test_bad_configuration_is_one_sentence_and_launches_nothing(tmp_path: Path, toml, args, fragment):
    repo = make_repo(tmp_path / "repo", toml)
    p = doit(repo, *args)
    assert p.returncode != 0
    assert fragment in p.stderr, out(p)
    assert "Traceback" not in out(p)
    assert nothing_launched(repo)


@pytest.mark.timeout(120)
def test_trainer_flags_and_hydra_tokens_pass_through_in_order(repo: Path):
    # The trainer refuses --foo with its own sentence: proof that doit let it through to the trainer.
    p = doit(repo, "cartpole:base", "--num_envs", "16", "--max_iterations", "2", "--foo", "bar",
             "physics=newton", "--lr=3e-4", "--num_envs", "24", "--gpu_x=1")
    assert p.returncode != 0
    assert "unknown flag '--foo'" in out(p), out(p)
    argv = run_state(repo, "cartpole:base")["attempts"][0]["argv"]
    assert argv[argv.index("--num_envs") + 1] == "24" and argv.count("--num_envs") == 1
    tail = argv[argv.index("--foo"):]
    assert tail == ["--foo", "bar", "physics=newton", "--lr=3e-4", "--gpu_x=1"]
    assert argv[argv.index("--device") + 1] in ("cpu", "cuda:0")


@pytest.mark.timeout(150)
def test_changed_overrides_rerun_and_unchanged_ones_do_not(repo: Path):
    args = ["cartpole:base", "--num_envs", "16", "--max_iterations", "1"]
    first = doit(repo, *args)
    assert first.returncode == 0 and executed(first, "cartpole:base"), out(first)
    again = doit(repo, *args)
    assert again.returncode == 0 and up_to_date(again, "cartpole:base"), out(again)
    changed = doit(repo, *args, "physics=torch")
    assert changed.returncode == 0 and executed(changed, "cartpole:base"), out(changed)
    assert run_state(repo, "cartpole:base")["attempts"][-1]["argv"][-1] == "physics=torch"


@pytest.mark.timeout(30)
@pytest.mark.parametrize("tokens", [["--num_envs", "32"], ["--max_iterations", "3"], ["--seed", "1"],
                                    ["--foo", "bar"], ["physics=newton"], ["--smoke"], ["--time_limit", "5m"],
                                    ["--gpu", "0"], ["--executor", "slurm"], ["--nodes", "2"]])
def test_every_override_changes_the_up_to_date_digest(monkeypatch, tokens):
    from doit.tools import config_changed

    from lights_out_dev.core import overrides
    from lights_out_dev.doit.launchers import Experiment, lab

    exp = Experiment(family="t", name="base", trainer_task="Lo-Cartpole-v0", doc="d", num_envs=16)

    def digest(tok):
        overrides.set_current(overrides.parse(tok))
        try:
            task = next(t for t in lab(exp) if t["name"] == "base")
        finally:
            overrides.set_current(overrides.Overrides())
        check = next(u for u in task["uptodate"] if isinstance(u, config_changed))
        return check._calc_digest()

    monkeypatch.chdir(ROOT)
    assert digest(tokens) != digest([])


@pytest.mark.timeout(240)
def test_transfer_trains_base_then_fine_tunes_and_a_rerun_retrains_nothing(repo: Path):
    args = ["top_dog:with-transfer", "--num_envs", "64", "--max_iterations", "2"]
    p = doit(repo, *args, timeout=200)
    assert p.returncode == 0, out(p)
    assert executed(p, "top_dog:base") and executed(p, "top_dog:with-transfer")
    assert p.stdout.index(".  top_dog:base") < p.stdout.index(".  top_dog:with-transfer")
    base_target = json.loads((repo / "local_experiment_logs/targets/top_dog__base.json").read_text())
    base_argv = run_state(repo, "top_dog:base")["attempts"][-1]["argv"]
    assert base_argv[base_argv.index("--num_envs") + 1] == "64"  # overrides reach dependencies too
    ft_argv = run_state(repo, "top_dog:with-transfer")["attempts"][-1]["argv"]
    assert base_target["checkpoint"] and ft_argv[ft_argv.index("--checkpoint") + 1] == base_target["checkpoint"]
    runs_before = sorted((repo / "logs").rglob("model_*.pt"))

    again = doit(repo, *args)
    assert again.returncode == 0, out(again)
    assert up_to_date(again, "top_dog:base") and up_to_date(again, "top_dog:with-transfer"), out(again)
    assert sorted((repo / "logs").rglob("model_*.pt")) == runs_before


@pytest.mark.timeout(30)
def test_resolve_spec_from_experiment_config_and_overrides():
    from lights_out_dev.core import overrides
    from lights_out_dev.core.config import LauncherConfig, ProjectConfig
    from lights_out_dev.doit.launchers import Experiment, resolve_spec

    cfg = ProjectConfig.model_validate({
        "launchers": {"lab": {"prefix": ["./IsaacLab/isaaclab.sh", "-p"], "script": "scripts/rsl_rl/train.py",
                              "env": {"OMNI_KIT_ACCEPT_EULA": "YES"}, "newton_selector": "physics=newton_mjwarp"}},
        "experiment_env": {"fam": {"FAM": "1"}}, "secrets": ["WANDB_API_KEY"]})
    exp = Experiment(family="fam", name="v", trainer_task="T", doc="d", num_envs=4096, max_iterations=10,
                     extra_args=("--foo", "1"), gpus=3, env={"E": "2"})
    none = overrides.Overrides()
    single = resolve_spec(exp, "lab", "v", cfg, none)
    assert single.prefix == ["./IsaacLab/isaaclab.sh", "-p"] and single.headless and single.gpus == 1
    # Isaac Lab env defaults (isaaclab.sh prefix) under the launcher's own env: config wins
    assert single.env == {"OMNI_KIT_ACCEPT_EULA": "YES", "PYTHONNOUSERSITE": "1", "FAM": "1", "E": "2"}
    assert single.secret_env == ["WANDB_API_KEY"] and single.time_limit_s == 3600.0
    mgpu = resolve_spec(exp, "newton_mgpu", "v-mgpu", cfg, none)  # falls back newton_mgpu -> newton -> lab
    assert mgpu.script == "scripts/rsl_rl/train.py" and mgpu.gpus == 3 and mgpu.multi_gpu
    assert mgpu.newton_selector == "physics=newton_mjwarp" and mgpu.task == "fam:v-mgpu"
    debug = resolve_spec(exp, "lab_debug", "v", cfg, none)
    assert debug.num_envs == 64 and not debug.headless
    ov = overrides.parse(["--num_envs", "8", "--seed", "0", "--time_limit", "none", "--smoke", "--foo", "2"])
    over = resolve_spec(exp, "lab", "v", cfg, ov)
    assert (over.num_envs, over.seed, over.time_limit_s, over.smoke) == (8, 0, None, True)
    assert over.extra_args == ["--foo", "1", "--foo", "2"]  # merged later: last flag wins
    own = Experiment(family="f", name="v", trainer_task="T", doc="d",
                     launcher=LauncherConfig(script="other/train.py", trainer="isaaclab3"))
    mine = resolve_spec(own, "lab", "v", cfg, none)
    assert mine.script == "other/train.py" and mine.module is None and mine.trainer.flags.headless is None
    isaac3 = resolve_spec(Experiment(family="f", name="v", trainer_task="T", doc="d",
                                     launcher=LauncherConfig(trainer="isaaclab3")), "newton", "v", cfg, none)
    assert (isaac3.module, isaac3.script_args) == ("isaaclab", ["train", "--rl_library", "rsl_rl"])
    assert isaac3.newton_selector == "physics=newton_mjwarp" and isaac3.env["GIT_PYTHON_REFRESH"] == "quiet"


def test_failed_preflight_stops_the_run_and_is_an_event(tmp_path: Path):
    """A guard that cannot pass (64 GPUs expected) fails the task before any launch, and
    an agent waiting in watch.py hears of it through events.jsonl."""
    repo = make_repo(tmp_path / "repo", "[tool.lights_out.gpu_guard]\nexpected_count = 64\n")
    p = doit(repo, "cartpole:base", "--num_envs", "16", "--max_iterations", "1")
    assert p.returncode != 0, out(p)
    assert not (repo / "logs").exists(), "the trainer must not start after a failed preflight"
    events = [json.loads(line) for line in (repo / "local_experiment_logs/events.jsonl").read_text().splitlines()]
    assert [e["kind"] for e in events] == ["preflight_failed"]
    assert events[0]["check"] == "gpu_guard" and events[0]["exit_code"] == 42


# An Isaac Lab-like trainer: Python's own SIGINT behaviour (KeyboardInterrupt), no handlers of its own.
ISAAC_LIKE = """
import sys, time
try:
    for it in range(1000):
        print(f"Learning iteration {it}/1000", flush=True)
        print("Steps per second: 1000", flush=True)
        time.sleep(0.2)
except KeyboardInterrupt:
    print(f"KeyboardInterrupt at iteration {it}: saved checkpoint", flush=True)
    sys.exit(130)
"""


@pytest.mark.timeout(120)
def test_time_limit_sigint_reaches_a_trainer_when_doit_was_started_ignoring_it(tmp_path: Path):
    # `nohup doit ... &` from a script or an agent's shell starts doit with SIGINT ignored, and an
    # ignored signal is inherited across exec: the trainer must still get the graceful SIGINT.
    import signal

    repo = make_repo(tmp_path / "repo", '[tool.lights_out.launchers.lab]\nscript = "isaac_like.py"\n'
                                        '[tool.lights_out.monitor]\ngrace_s = 20')
    (repo / "isaac_like.py").write_text(ISAAC_LIKE)
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTS_OUT_ROOT", None)
    p = subprocess.run([*DOIT, "cartpole:base", "--time_limit", "4s"], cwd=repo, env=env, capture_output=True,
                       text=True, timeout=100, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_IGN))
    assert p.returncode == 0, out(p)
    state = run_state(repo, "cartpole:base")
    attempt = state["attempts"][-1]
    assert state["status"] == "timeout" and len(state["attempts"]) == 1
    assert attempt["exit_code"] == 130, attempt  # not SIGTERM after the 20 s grace
    assert "KeyboardInterrupt at iteration" in Path(attempt["log_path"]).read_text()
