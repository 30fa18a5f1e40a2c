"""The executors, found by name: `--executor NAME` and `[tool.lights_out] executor` pick one of EXECUTORS.

A new backend is a module here with a class implementing base.Executor, registered below; nothing
outside executors/ changes (the config's `executor` Literal and core.overrides.EXECUTORS list the names).
"""
from __future__ import annotations

from pathlib import Path

from lights_out_dev.core.config import ProjectConfig
from lights_out_dev.executors.base import Executor
from lights_out_dev.executors.local import LocalExecutor
from lights_out_dev.executors.slurm.executor import SlurmExecutor

EXECUTORS: dict[str, type] = {cls.kind: cls for cls in (LocalExecutor, SlurmExecutor)}


def executor_class(name: str) -> type:
    """The class registered as `name` (the names come validated from the config or the command line)."""
    return EXECUTORS[name]


def make(name: str, cfg: ProjectConfig, root: Path, **options) -> Executor:
    """An executor of kind `name` for the project at `root`; `options` are that kind's own (Slurm: array=)."""
    return executor_class(name)(cfg, root, **options)
