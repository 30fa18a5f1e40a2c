"""Durable run state: one JSON file per run, written atomically (tmp + fsync + rename).

This file is the truth; the markdown ledger is rendered from it. A file damaged anyway (a filesystem
crash, a hand edit) raises DamagedState naming it; the supervisor moves it aside (quarantine) and the
run starts over, readers treat it as not started. A writer killed mid-write leaves a temporary file
that names its pid; the next write beside it removes it once that pid is gone.
"""
from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError, model_validator

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.errors import LightsOutError


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
    failed_nodes: list[str] = Field(default_factory=list)  # Slurm: nodes that failed under the job
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
    interrupted: bool = False  # ended by a user's stop or the supervisor's own end: not a trainer failure


# state files written before these were fields kept them in an `extra` dict: key there -> field
_MOVED_FROM_EXTRA = {**{k: k for k in ("fingerprint", "intent", "handle", "log_offset", "resume_from", "stopping",
                                      "exclude_nodes", "bad_iteration", "effective", "judged_rungs",
                                      "resumed_after_pruning")},
                     "smoke": "smoke_record", "eval": "evaluation"}


class LaunchIntent(BaseModel):
    """A launch written ahead of the process it starts: a supervisor that dies between starting the trainer
    and recording it leaves this, and the next one finds the trainer by `token` (in its environment)."""
    purpose: str  # "attempt" | "smoke"
    token: str
    argv: list[str]
    log_path: str
    gpus: list[int] | None = None
    env_overrides: dict[str, str] = Field(default_factory=dict)
    at: float
    boot: str | None = None


class RunState(BaseModel):
    run_key: str
    rid: str
    run_name: str
    task: str
    spec: RunSpec
    status: str = "pending"  # pending, running, interrupted or one of verdicts.FINAL_STATUSES
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
    # -- supervision: what a restarted supervisor needs to go on where the last one stopped
    fingerprint: str | None = None  # of the spec the run was started with (a changed spec is a new run)
    intent: LaunchIntent | None = None  # a launch under way, not yet recorded as an attempt
    handle: dict[str, Any] | None = None  # the executor's handle of the running attempt, as data
    log_offset: int = 0  # bytes of the running attempt's log already read
    resume_from: str | None = None  # the checkpoint the next attempt starts from
    stopping: str | None = None  # "user" while a stop by the user is under way
    exclude_nodes: list[str] = Field(default_factory=list)  # Slurm nodes that failed under this run
    bad_iteration: int | None = None  # where it diverged (NaN, a judge's stop): retries resume before it
    effective: dict[str, int] = Field(default_factory=dict)  # num_envs / seed changed by the policy
    # the smoke gate's and the evaluation's records (argv, log, verdict, metrics ...), shown by the ledger
    smoke_record: dict[str, Any] = Field(default_factory=dict)
    evaluation: dict[str, Any] = Field(default_factory=dict)
    # -- sweep decisions about it
    judged_rungs: list[int] = Field(default_factory=list)  # early-stopping rungs it has passed
    resumed_after_pruning: bool = False  # a pruned run that a later phase resumed

    @model_validator(mode="before")
    @classmethod
    def _from_extra(cls, data: Any) -> Any:
        """States written before these fields existed kept them in `extra`."""
        if isinstance(data, dict) and isinstance(data.get("extra"), dict):
            extra = data["extra"]
            data = {k: v for k, v in data.items() if k != "extra"}
            for old, new in _MOVED_FROM_EXTRA.items():
                if old in extra and new not in data:
                    data[new] = extra[old]
        return data

    @property
    def current(self) -> Attempt | None:
        return self.attempts[-1] if self.attempts else None


def atomic_write_text(path: Path, text: str) -> None:
    """Write so that readers see the old or the new content, never a torn file.

    On failure (e.g. disk full) the old file is left untouched and the error propagates.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_dead_writers_tmp(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; states, ledger and report are for the group, like params/
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


def _remove_dead_writers_tmp(path: Path) -> None:
    """Temporary files of `path` left by writers that were killed (their pid is in the name, and gone).

    Only the pid's existence is checked: a reused pid or a zombie merely keeps a stray file."""

    prefix = f".{path.name}."
    try:
        names = [n for n in os.listdir(path.parent) if n.startswith(prefix) and n.endswith(".tmp")]
    except OSError:
        return
    for name in names:
        pid = name[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not Path(f"/proc/{pid}").exists():
            try:
                os.unlink(path.parent / name)
            except OSError:
                pass


def status_of(state: RunState | None) -> str:
    """A planned run's status: its state's, or 'pending' before it has one."""
    return state.status if state else "pending"


class DamagedState(LightsOutError, ValueError):
    """A run-state file that exists but cannot be read as one; `why` says how it is damaged."""

    def __init__(self, path: Path, why: str):
        super().__init__(f"the run state {path} is damaged ({why})")
        self.path, self.why = Path(path), why


def quarantine(path: Path) -> Path:
    """Move a damaged state aside (kept, never deleted) so the run can start over; returns the new path."""
    bad = Path(path).with_name(f"{Path(path).name}.damaged-{time.strftime('%Y%m%d_%H%M%S')}")
    os.replace(path, bad)
    return bad


def save_state(state: RunState, path: Path) -> None:
    state.updated_at = time.time()
    atomic_write_text(path, state.model_dump_json(indent=2))


def load_state(path: Path) -> RunState | None:
    """The run state, None when there is none; DamagedState when the file is not a readable one."""
    try:
        raw = Path(path).read_bytes()
    except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
        return None
    try:
        return RunState.model_validate(json.loads(raw.decode()))
    except UnicodeDecodeError:
        raise DamagedState(path, "not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise DamagedState(path, f"not valid JSON: {e.msg} at byte {e.pos}") from None
    except ValidationError as e:
        first = e.errors()[0]
        where = ".".join(map(str, first["loc"])) or "the top level"
        raise DamagedState(path, f"not a run state: {where}: {first['msg']}") from None


def read_state(path: Path) -> RunState | None:
    """load_state for readers (schedulers, status screens): a damaged file reads as no state; only the
    supervisor of that run, holding its lock, quarantines it."""
    try:
        return load_state(path)
    except DamagedState:
        return None
