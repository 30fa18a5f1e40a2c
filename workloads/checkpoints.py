"""Where runs and checkpoints live: Isaac Lab's layout logs/rsl_rl/<experiment>/<stamp>[_<run_name>]/model_<it>.pt."""

from __future__ import annotations

import os
import re
from datetime import datetime


def log_root(experiment_name: str) -> str:
    """Experiment root, relative to the current directory like Isaac Lab, made absolute."""
    return os.path.abspath(os.path.join("logs", "rsl_rl", experiment_name))


def run_stamp(now: datetime | None = None) -> str:
    return (now or datetime.now()).strftime("%Y-%m-%d_%H-%M-%S")


def checkpoint_iteration(name: str) -> int:
    m = re.fullmatch(r"model_(\d+)\.pt", os.path.basename(name))
    return int(m.group(1)) if m else -1


def get_checkpoint_path(root: str, run_dir: str = ".*", checkpoint: str = "model_.*.pt") -> str:
    """Isaac Lab's get_checkpoint_path: newest run matching run_dir (names sort by time), then the
    matching checkpoint sorted like Isaac Lab (zero-padded name, i.e. highest iteration).
    Raises FileNotFoundError with one sentence naming what is missing and the fix."""
    runs = sorted(e.name for e in os.scandir(root) if e.is_dir() and re.match(run_dir, e.name)) if os.path.isdir(root) else []
    if not runs:
        raise FileNotFoundError(
            f"no run in {root} matches --load_run {run_dir!r}; train once without --resume or fix --load_run"
        )
    run_path = os.path.join(root, runs[-1])
    models = [f for f in os.listdir(run_path) if re.match(checkpoint, f)]
    if not models:
        raise FileNotFoundError(
            f"no checkpoint in {run_path} matches --checkpoint {checkpoint!r}; pick another run with --load_run or fix --checkpoint"
        )
    models.sort(key=lambda m: f"{m:0>15}")
    return os.path.join(run_path, models[-1])
