"""Durable run state: one JSON file per run, written atomically (tmp + fsync + rename).

This file is the truth; the markdown ledger is rendered from it.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field

from lights_out_dev.spec import RunSpec


class Progress(BaseModel):
    iteration: int | None = None
    total: int | None = None
    steps_per_s: float | None = None
    mean_reward: float | None = None
    mean_episode_length: float | None = None


class Attempt(BaseModel):
    number: int
    argv: list[str]
    gpus: list[int] | None = None  # None = CPU
    env_overrides: dict[str, str] = Field(default_factory=dict)
    started_at: float | None = None
    ended_at: float | None = None
    pid: int | None = None
    pgid: int | None = None
    job_id: str | None = None  # Slurm
    node: str | None = None
    log_path: str | None = None
    tb_dir: str | None = None
    checkpoint_dir: str | None = None  # where its trainer profile says its checkpoints are (None: tb_dir)
    tracker_url: str | None = None  # the experiment tracker's run URL its log printed (W&B)
    step_offset: int = 0  # steps done before it, for a trainer that counts a resumed run from 0 (skrl)
    exit_code: int | None = None
    signal: int | None = None
    verdict: str | None = None
    reason: str | None = None
    warnings: list[str] = Field(default_factory=list)
    progress: Progress = Field(default_factory=Progress)
    healthy_at: float | None = None
    peak_vram_mb: float | None = None
    decision: str | None = None
    log_tail: list[str] = Field(default_factory=list)
    survivors: list[int] = Field(default_factory=list)
    cleanup_s: float | None = None  # kill -> processes gone from the process table (and NVML)
    imbalance: str | None = None  # multi-GPU imbalance seen while running


class RunState(BaseModel):
    run_key: str
    rid: str
    run_name: str
    task: str
    spec: RunSpec
    status: str = "pending"  # see verdicts.RUN_STATUSES
    final_verdict: str | None = None
    reason: str | None = None
    attempts: list[Attempt] = Field(default_factory=list)
    created_at: float = Field(default_factory=time.time)
    updated_at: float = Field(default_factory=time.time)
    supervisor_pid: int | None = None
    supervisor_host: str | None = None
    checkpoints: list[str] = Field(default_factory=list)
    final: Progress = Field(default_factory=Progress)
    best_reward: float | None = None
    peak_vram_mb: float | None = None
    smoke: str | None = None  # 'passed' | 'failed: <verdict>' | None
    smoke_argv_hash: str | None = None
    sweep: str | None = None
    index: int | None = None
    phase: int | None = None
    extra: dict[str, Any] = Field(default_factory=dict)

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write so that readers see the old or the new content, never a torn file.

    On failure (e.g. disk full) the old file is left untouched and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def save_state(state: RunState, path: Path) -> None:
    state.updated_at = time.time()
    atomic_write_text(path, state.model_dump_json(indent=2))


def load_state(path: Path) -> RunState | None:
    try:
        return RunState.model_validate(json.loads(Path(path).read_text()))
    except FileNotFoundError:
        return None
