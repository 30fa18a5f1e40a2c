"""Bad inputs a user (or an agent) can feed lights-out, each answered by one sentence naming the value.

    python bench/bad_inputs.py            # every case; prints one row per case and the totals
    python bench/bad_inputs.py --fast     # without the cases that start real doit / trainer processes

Categories: sweep plans, project configuration, command-line overrides, run-state files, doit command
lines and trainer flags. For each case the answer must be one line (one sentence, no traceback),
contain the expected fragment (the offending value or field), and leave the files it
was given unchanged (and, for doit, launch nothing). tests/chaos/test_chaos_bad_inputs.py runs the same
table under pytest.
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from project_copy import copy_project  # noqa: E402  (bench/project_copy.py)

GOOD_RUN = "  - task: cartpole:base\n    overrides: {num_envs: 16, max_iterations: 2}\n"


@dataclass(frozen=True)
class Case:
    kind: str  # plan | config | override | state | doit | trainer
    name: str
    data: object  # plan/config/state: file content (str or bytes); override/doit/trainer: argv tokens
    expect: str  # fragment the one sentence must contain


def plan(name: str, text: str | bytes, expect: str) -> Case:
    return Case("plan", name, text, expect)


PLANS = [
    plan("time limit is a list", "name: p\ntime_limit: [1, 2]\nruns:\n" + GOOD_RUN, "time_limit"),
    plan("non-UTF-8 bytes", b"name: p\n# caf\xe9\nruns:\n" + GOOD_RUN.encode(), "not UTF-8"),
    plan("num_envs: true", "name: p\nruns:\n  - task: cartpole:base\n    overrides: {num_envs: true}\n", "num_envs"),
    plan("duplicate key in one run", "name: p\nruns:\n  - task: cartpole:base\n    gpus: 1\n    gpus: 2\n",
         "'gpus' is given twice"),
    plan("duplicate top-level key", "name: p\nname: q\nruns:\n" + GOOD_RUN, "'name' is given twice"),
    plan("no name", "runs:\n" + GOOD_RUN, "'name' is required"),
    plan("no runs", "name: p\n", "'runs' is required"),
    plan("empty runs", "name: p\nruns: []\n", "runs"),
    plan("unknown top-level field", "name: p\nfoo: 1\nruns:\n" + GOOD_RUN, "'foo' is not a plan field"),
    plan("misspelt run field", "name: p\nruns:\n  - task: cartpole:base\n    gpu: 1\n",
         "'runs.0.gpu' is not a plan field"),
    plan("unknown mode", "name: p\nmode: fast\nruns:\n" + GOOD_RUN, "mode"),
    plan("zero envs", "name: p\nruns:\n  - task: cartpole:base\n    overrides: {num_envs: 0}\n", "num_envs"),
    plan("negative envs", "name: p\nruns:\n  - task: cartpole:base\n    overrides: {num_envs: -5}\n", "num_envs"),
    plan("iterations not a number", "name: p\nruns:\n  - task: cartpole:base\n    overrides: {max_iterations: many}\n",
         "max_iterations"),
    plan("zero GPUs", "name: p\nruns:\n  - task: cartpole:base\n    gpus: 0\n", "gpus"),
    plan("phase 0", "name: p\nruns:\n  - task: cartpole:base\n    phase: 0\n", "phase"),
    plan("duration in words", "name: p\ntime_limit: 10 minutes\nruns:\n" + GOOD_RUN, "'10 minutes' is not a duration"),
    plan("duration true", "name: p\nruns:\n  - task: cartpole:base\n    time_limit: true\n", "True is not a duration"),
    plan("empty grid axis", "name: p\nruns:\n  - task: cartpole:base\n    grid: {num_envs: []}\n", "has no values"),
    plan("grid on an unknown key", "name: p\nruns:\n  - task: cartpole:base\n    grid: {lr: [1]}\n", "grid"),
    plan("grid value true", "name: p\nruns:\n  - task: cartpole:base\n    grid: {seed: [1, true]}\n", "grid"),
    plan("promotion before its source", "name: p\nruns:\n" + GOOD_RUN + "promote: {from_phase: 1, phase: 1}\n",
         "phase"),
    plan("promotion from an empty phase", "name: p\nruns:\n" + GOOD_RUN + "promote: {from_phase: 3, phase: 4}\n",
         "has no runs"),
    plan("name with a space", "name: my plan\nruns:\n" + GOOD_RUN, "name"),
    plan("a list, not a mapping", "- task: cartpole:base\n", "must be a YAML mapping"),
    plan("empty file", "", "must be a YAML mapping"),
    plan("broken YAML", "name: p\nruns: [\n", "is not valid YAML"),
    plan("tab indentation", "name: p\nruns:\n\t- task: cartpole:base\n", "is not valid YAML"),
    plan("trainer_args as a string", "name: p\nruns:\n  - task: cartpole:base\n    overrides: {trainer_args: --foo}\n",
         "trainer_args"),
    plan("env cap zero", "name: p\nmax_envs_per_gpu_gb: 0\nruns:\n" + GOOD_RUN, "max_envs_per_gpu_gb"),
    plan("evaluate none", "name: p\nruns:\n" + GOOD_RUN + "evaluate: {best: 0}\n", "best"),
    plan("fractional seed", "name: p\nruns:\n  - task: cartpole:base\n    overrides: {seed: 1.5}\n", "seed"),
    plan("smoke maybe", "name: p\nsmoke: maybe\nruns:\n" + GOOD_RUN, "smoke"),
    plan("promotion mode", "name: p\nruns:\n" + GOOD_RUN + "promote: {mode: best}\n", "mode"),
    plan("unknown task", "name: p\nruns:\n  - task: cartpol:base\n", "unknown task 'cartpol:base'; did you mean"),
    plan("gpus true", "name: p\nruns:\n  - task: cartpole:base\n    gpus: true\n", "gpus"),
    Case("plan-path", "plan path is a directory", "sweeps", "is a directory"),
    Case("plan-path", "plan path does not exist", "sweeps/nope.yaml", "does not exist"),
]


def config(name: str, text: str | bytes, expect: str) -> Case:
    return Case("config", name, text, expect)


CONFIGS = [
    config("misspelt key", '[tool.lights_out]\nlogs_dirr = "x"\n', "'logs_dirr' is not a known setting"),
    config("zero CPU slots", "[tool.lights_out]\ncpu_slots = 0\n", "cpu_slots"),
    config("CPU slots in words", '[tool.lights_out]\ncpu_slots = "two"\n', "cpu_slots"),
    config("non-UTF-8 bytes", b'[tool.lights_out]\nledger = "caf\xe9.md"\n', "not UTF-8"),
    config("invalid TOML", "[tool.lights_out\ncpu_slots = 2\n", "is not valid TOML"),
    config("unknown executor", '[tool.lights_out]\nexecutor = "kubernetes"\n', "executor"),
    config("unknown monitor key", "[tool.lights_out.monitor]\nstal_s = 5\n", "'monitor.stal_s' is not a known setting"),
    config("unknown launcher", '[tool.lights_out.launchers.foo]\nscript = "x.py"\n', "unknown launcher 'foo'"),
    config("policy for no verdict", '[tool.lights_out.policy.explode]\naction = "retry"\n',
           "policy for unknown verdict 'explode'"),
    config("unknown policy action", '[tool.lights_out.policy.oom]\naction = "pray"\n', "policy.oom.action"),
    config("failures in words", '[tool.lights_out]\nmax_consecutive_failures = "x"\n', "max_consecutive_failures"),
    config("hook as a string", '[tool.lights_out]\nevents_command = "notify"\n', "events_command"),
    config("secrets as a string", '[tool.lights_out]\nsecrets = "WANDB_API_KEY"\n', "secrets"),
    config("locks dir a number", "[tool.lights_out]\nlocks_dir = 5\n", "locks_dir"),
    config("busy action", '[tool.lights_out.monitor]\nbusy_gpu_action = "panic"\n', "busy_gpu_action"),
    config("stall limit in words", '[tool.lights_out.monitor]\nstall_s = "long"\n', "stall_s"),
    Case("config-overlay", "overlay file missing", "/nonexistent/overlay.toml", "cannot read config file"),
]

OVERRIDES = [Case("override", " ".join(t), t, e) for t, e in [
    (["--num_envs", "0"], "--num_envs 0 is not valid"),
    (["--num_envs", "lots"], "--num_envs lots is not valid"),
    (["--num_envs", "-8"], "--num_envs -8 is not valid"),
    (["--max_iterations", "0"], "--max_iterations 0 is not valid"),
    (["--max_iterations", "1e3"], "--max_iterations 1e3 is not valid"),
    (["--seed", "-1"], "--seed -1 is not valid"),
    (["--gpu", "-1"], "--gpu -1 is not valid"),
    (["--gpu", "x"], "--gpu x is not valid"),
    (["--time_limit"], "--time_limit needs a duration"),
    (["--time_limit", "forever"], "'forever' is not a duration"),
    (["--executor", "k8s"], "--executor k8s is not known"),
    (["--plan"], "--plan needs a path"),
]]

STATES = [Case("state", n, d, e) for n, d, e in [
    ("truncated JSON", '{"run_key": "x", "rid": ', "not valid JSON"),
    ("non-UTF-8 bytes", b'{"run_key": "\xff"}', "not UTF-8"),
    ("a list", "[1, 2]", "not a run state"),
    ("missing fields", '{"run_key": "x"}', "not a run state"),
    ("empty file", "", "not valid JSON"),
    ("wrong type", '{"run_key": 1, "rid": "r", "run_name": "n", "task": "t", "spec": 5}', "not a run state"),
]]

DOIT = [Case("doit", " ".join(t), t, e) for t, e in [
    (["cartpole:base", "--continue", "--wipe"], "contradict"),
    (["sweep", "--continue", "--wipe"], "contradict"),
    (["sweep", "--plan", "sweeps"], "is a directory"),
    (["sweep", "--plan", "sweeps/nope.yaml"], "does not exist"),
    (["top_dg:base"], "'top_dg:base' is not a task"),
    ([], "name the task(s) to run"),
    (["cartpole:base", "--num_envs", "0"], "--num_envs 0 is not valid"),
    (["--num_envs", "8", "cartpole:base"], "doit's own options go before the task name"),
]]

TRAINER = [Case("trainer", " ".join(t), t, e) for t, e in [
    (["--inject", "melt@1"], "invalid --inject 'melt@1'"),
    (["--inject", "slow@1"], "only slow and progress_cr take =SECONDS"),
    (["--video"], "--video is not supported"),
    (["--device", "tpu"], "invalid device 'tpu'"),
]]

CASES = PLANS + CONFIGS + OVERRIDES + STATES + DOIT + TRAINER
SLOW_KINDS = ("doit", "trainer")


def one_sentence(text: str) -> bool:
    lines = [x for x in text.strip().splitlines() if x.strip()]
    return len(lines) == 1 and "Traceback" not in text


def _write(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())


def _check_plan(case: Case, tmp: Path) -> str:
    from lights_out_dev.sweep.plan import PlanError, check_tasks, load_plan

    if case.kind == "plan-path":
        (tmp / "sweeps").mkdir(exist_ok=True)
        target = tmp / case.data
    else:
        target = tmp / "sweeps" / "p.yaml"
        _write(target, case.data)
    before = target.read_bytes() if target.is_file() else None
    try:
        check_tasks(load_plan(target), ["cartpole:base", "cartpole:base-mgpu", "top_dog:base"])
        return "ACCEPTED"
    except PlanError as e:
        assert (target.read_bytes() if target.is_file() else None) == before, "the plan file was changed"
        return str(e)


def _check_config(case: Case, tmp: Path) -> str:
    from lights_out_dev.core.config import ConfigError, load_config

    py = tmp / "pyproject.toml"
    old = os.environ.pop("LIGHTS_OUT_CONFIG", None)
    try:
        if case.kind == "config-overlay":
            _write(py, "[tool.lights_out]\n")
            os.environ["LIGHTS_OUT_CONFIG"] = str(case.data)
        else:
            _write(py, case.data)
        before = py.read_bytes()
        try:
            load_config(tmp)
            return "ACCEPTED"
        except ConfigError as e:
            assert py.read_bytes() == before, "the config file was changed"
            return str(e)
    finally:
        os.environ.pop("LIGHTS_OUT_CONFIG", None)
        if old is not None:
            os.environ["LIGHTS_OUT_CONFIG"] = old


def _check_override(case: Case, tmp: Path) -> str:
    from lights_out_dev.core.overrides import OverrideError, parse

    try:
        parse(list(case.data))
        return "ACCEPTED"
    except OverrideError as e:
        return str(e)


def _check_state(case: Case, tmp: Path) -> str:
    from lights_out_dev.core.state import DamagedState, load_state

    path = tmp / "runs" / "01.json"
    _write(path, case.data)
    before = path.read_bytes()
    try:
        load_state(path)
        return "ACCEPTED"
    except DamagedState as e:
        assert path.read_bytes() == before, "the state file was changed by reading it"
        return f"{e}."


_REPO: Path | None = None


def _repo() -> Path:
    """One copy of the repository for the doit cases (they launch nothing, so they can share it)."""
    global _REPO
    if _REPO is None:
        _REPO = copy_project(Path(tempfile.mkdtemp(prefix="lights-out-bad-inputs-")) / "repo")
    return _REPO


def _check_doit(case: Case, tmp: Path) -> str:
    repo = _repo()
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    env.pop("LIGHTS_OUT_ROOT", None)
    p = subprocess.run([sys.executable, "-m", "doit", *case.data], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=180)
    out = p.stdout + p.stderr
    if p.returncode == 0:
        return "ACCEPTED"
    runs = repo / "local_experiment_logs" / "runs"
    if (runs.exists() and any(runs.iterdir())) or list((repo / "local_experiment_logs").glob("*.log")):
        return "LAUNCHED something: " + out[-500:]
    if "Traceback" in out:
        return out
    # doit adds its own "TaskFailed ... the lines above say why" after our sentence; ours is the one that names it
    ours = [x for x in out.splitlines() if case.expect in x]
    return ours[0].removeprefix("ERROR: ") if len(ours) == 1 else out


def _check_trainer(case: Case, tmp: Path) -> str:
    p = subprocess.run([sys.executable, str(ROOT / "workloads" / "train.py"), "--num_envs", "16", *case.data],
                       cwd=tmp, capture_output=True, text=True, timeout=180)
    if p.returncode == 0:
        return "ACCEPTED"
    return p.stderr.strip().removeprefix("train.py: error: ")


CHECKS = {"plan": _check_plan, "plan-path": _check_plan, "config": _check_config, "config-overlay": _check_config,
          "override": _check_override, "state": _check_state, "doit": _check_doit, "trainer": _check_trainer}


def answer(case: Case, tmp: Path) -> str:
    """The sentence lights-out answers `case` with (or 'ACCEPTED ...' when it took the bad input)."""
    return CHECKS[case.kind](case, tmp)


def verdict(case: Case, said: str) -> str | None:
    """None when `said` is a proper answer to `case`, else what is wrong with it."""
    if said.startswith(("ACCEPTED", "LAUNCHED")):
        return said
    if not one_sentence(said):
        return f"not one sentence: {said[-300:]!r}"
    if case.expect not in said:
        return f"does not name {case.expect!r}: {said!r}"
    return None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--fast", action="store_true", help="skip the cases that start doit or the trainer")
    args = ap.parse_args()
    cases = [c for c in CASES if not (args.fast and c.kind in SLOW_KINDS)]
    bad = 0
    for case in cases:
        with tempfile.TemporaryDirectory() as tmp:
            said = answer(case, Path(tmp))
        problem = verdict(case, said)
        bad += problem is not None
        print(f"{'ok ' if problem is None else 'BAD'} {case.kind:<8} {case.name:<34} {problem or said}")
    print(f"\n{len(cases)} bad inputs, {len(cases) - bad} answered in one sentence naming the value, {bad} not")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
