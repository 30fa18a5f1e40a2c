"""A scratch copy of this project (its task graph, runner, reference trainer and plans) for benchmarks
that run doit and sweeps where they may write, kill and wipe freely."""
from __future__ import annotations

import shutil
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dodo.py", "pyproject.toml", "tasks", "lights_out_dev", "workloads", "sweeps")


def copy_project(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    for name in PROJECT_FILES:
        src = ROOT / name
        if src.is_dir():
            shutil.copytree(src, dest / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            shutil.copy2(src, dest / name)
    return dest
