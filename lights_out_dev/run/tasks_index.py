"""The task graph as data, for the runner's own commands (doit_run, extract_cmd).

Experiment tasks carry their resolved RunSpec in doit's `Task.meta[SPEC_META]`, and the target JSON
whose checkpoint they start from in `Task.meta[DEP_META]`.
"""
from __future__ import annotations

import difflib
import json
import os
from pathlib import Path

SPEC_META = "lights_out_spec"
DEP_META = "lights_out_checkpoint_from"


def load_tasks(root: Path) -> dict:
    """name -> doit Task, from <root>/dodo.py, with the current overrides applied. No action runs."""
    from doit import loader

    cwd = os.getcwd()
    try:
        module = loader.get_module(str(root / "dodo.py"), str(root))  # chdir's into root, like doit
        namespace = dict(vars(module))
        return {t.name: t for t in loader.load_tasks(namespace, [], allow_delayed=False, args=[])}
    finally:
        os.chdir(cwd)


def closure(tasks: dict, selected: list[str]) -> list:
    """The selected tasks and everything they depend on (task_dep, setup, file_dep on a target)."""
    by_target = {t: task for task in tasks.values() for t in task.targets}
    seen: dict[str, object] = {}
    todo = list(selected)
    while todo:
        name = todo.pop()
        if name in seen or name not in tasks:
            continue
        task = seen[name] = tasks[name]
        todo += task.task_dep + task.setup_tasks
        todo += [by_target[f].name for f in task.file_dep if f in by_target]
    return list(seen.values())


def spec_of(task):
    return (task.meta or {}).get(SPEC_META)


def checkpoint_from_target(target: Path) -> str:
    """The final checkpoint recorded (key `checkpoint`) in a finished run's target JSON (supervisor.write_target)."""
    path = json.loads(Path(target).read_text()).get("checkpoint")
    if not path:
        raise ValueError(f"{target} records no checkpoint; rerun the task it belongs to so that it saves one")
    return path


def unknown_task_sentence(name: str, known: list[str]) -> str:
    close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
    hint = f"did you mean {', '.join(close)}?" if close else "`doit list --all` shows every task."
    return f"'{name}' is not a task; {hint}"
