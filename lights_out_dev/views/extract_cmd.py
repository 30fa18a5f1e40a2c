"""Print the exact command a doit task would run, without running anything.

    python -m lights_out_dev.cli.extract_cmd TASK [--gpu N] [--num_envs N] [--json] [-- trainer flags...]
    python -m lights_out_dev.cli.extract_cmd ...

Overrides follow the same rules as `doit TASK ...` (lights_out_dev.core.overrides): --gpu pins the run
(`--device cuda:N`), --num_envs/--max_iterations/--seed set the spec, anything else (before or
after `--`, including Hydra `key=value` tokens) goes to the trainer, last flag wins.
Output: `KEY=value ... argv`, shell-quoted, secrets shown as ***, run from the repo root.
Without --gpu the command uses GPU 0 when one is visible, else the CPU; an -mgpu task shows
GPUs N..N+k-1 (N = --gpu or 0). The GPU index is not
checked against this machine: nothing runs here (only `doit TASK` refuses an absent GPU).
A fresh RID and run name are shown; every real launch gets its own.
"""
from __future__ import annotations

import json
from pathlib import Path

from lights_out_dev.core import overrides
from lights_out_dev.core.command import (
    build_argv,
    format_command,
    gpu_env,
    redact_argv,
    redact_text,
    secret_values,
    trainer_env,
)
from lights_out_dev.core.config import PACKAGE_PARENT, project_root
from lights_out_dev.errors import LightsOutError
from lights_out_dev.run.evaluate import PLAY_SUFFIX
from lights_out_dev.run.tasks_index import (
    DEP_META,
    checkpoint_from_target,
    load_tasks,
    spec_of,
)

USAGE = "usage: extract_cmd.py TASK [--gpu N] [--num_envs N] [--json] [-- trainer flags...]"


class UsageError(LightsOutError):
    """A bad invocation; str() is one sentence."""


def split_args(argv: list[str]) -> tuple[str, list[str], bool]:
    """-> (task, override tokens, json?). Pure."""
    before, after = (argv[:argv.index("--")], argv[argv.index("--") + 1:]) if "--" in argv else (argv, [])
    as_json = "--json" in before
    before = [a for a in before if a != "--json"]
    if not before or overrides.is_override_token(before[0]):
        raise UsageError(f"name the task first; {USAGE}")
    return before[0], before[1:] + after, as_json


def choose_gpus(spec, gpu: int | None, visible: int) -> list[int] | None:
    if spec.multi_gpu:
        first = gpu or 0
        return list(range(first, first + spec.gpus))
    if gpu is not None:
        return [gpu]
    return [0] if visible else None


def checkpoint_shown(dep_target: str | None, dep_task: str) -> str | None:
    if not dep_target:
        return None
    try:
        return checkpoint_from_target(Path(dep_target))
    except (OSError, ValueError):
        return f"<final checkpoint of {dep_task}>"


def extract(argv: list[str]) -> str:
    import difflib

    task_name, tokens, as_json = split_args(argv)
    ov = overrides.parse(tokens)
    overrides.set_current(ov)
    root = project_root()
    if not (root / "dodo.py").exists():  # called from elsewhere: use the repository this file belongs to
        root = PACKAGE_PARENT
    tasks = load_tasks(root)
    if task_name not in tasks:
        close = difflib.get_close_matches(task_name, sorted(tasks), n=3, cutoff=0.5)
        raise UsageError(f"'{task_name}' is not a task; " + (f"did you mean {', '.join(close)}?" if close
                                                            else "`doit list --all` shows every task."))
    task = tasks[task_name]
    spec = spec_of(task)
    if spec is None:
        subs = [n for n in tasks if n.startswith(task_name + ":")]
        if subs:
            raise UsageError(f"'{task_name}' is a group; pick one variant, e.g. {subs[0]}.")
        if task_name.endswith(PLAY_SUFFIX):
            raise UsageError(f"'{task_name}' evaluates a checkpoint of {task_name[:-len(PLAY_SUFFIX)]}; "
                             f"extract_cmd shows training commands, so ask for that task instead.")
        raise UsageError(f"'{task_name}' is a check, not an experiment; it runs "
                         f"`python -m lights_out_dev.cli.preflight {task_name}`.")
    dep_target = task.meta.get(DEP_META)
    if dep_target:
        dep_task = next((t.name for t in tasks.values() if dep_target in t.targets), "its dependency")
        spec = spec.model_copy(update={"load_checkpoint": checkpoint_shown(dep_target, dep_task)})
    from lights_out_dev.host.nvml import gpu_count

    gpus = choose_gpus(spec, ov.gpu, 0 if ov.gpu is not None else gpu_count())
    cmd = build_argv(spec, gpus)
    env = {**trainer_env(spec), **gpu_env(spec, gpus)}
    secrets = secret_values(spec)
    if as_json:
        return json.dumps({"task": task_name, "cwd": str(root), "gpus": gpus,
                           "env": {k: redact_text(v, secrets) for k, v in env.items()},
                           "argv": redact_argv(cmd, secrets),
                           "command": format_command(cmd, env, secrets)}, indent=2)
    return format_command(cmd, env, secrets)
