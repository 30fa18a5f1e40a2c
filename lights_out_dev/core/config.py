"""Project configuration: `[tool.lights_out]` in pyproject.toml, validated by pydantic.

Every field has a default, so an empty table is a working configuration for the reference
trainer. Errors name the offending key and the fix in one sentence (`ConfigError`).
"""
from __future__ import annotations

import os
import re
import sys
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from lights_out_dev.core.models import StrictModel
from lights_out_dev.errors import LightsOutError

LAUNCHER_KINDS: tuple[str, ...] = ("lab", "lab_mgpu", "lab_debug", "newton", "newton_mgpu")


class ConfigError(LightsOutError):
    """A user-caused configuration problem; str() is one sentence naming the value and the fix."""


def parse_duration(value: str | int | float | None) -> float | None:
    """'90', '90s', '15m', '1h', '1h30m', '2d' -> seconds; None/'none'/0 -> None (no limit)."""
    if value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value) if value > 0 else None
    text = value.strip().lower()
    if text in ("", "none", "0", "inf", "unlimited"):
        return None
    if re.fullmatch(r"\d+(\.\d+)?", text):
        return float(text)
    parts = re.findall(r"(\d+(?:\.\d+)?)([smhd])", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"'{value}' is not a duration; write e.g. 90s, 15m, 1h or 1h30m")
    scale = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    return float(sum(float(n) * scale[u] for n, u in parts))


def _duration_field(value):
    if isinstance(value, bool) or not isinstance(value, (str, int, float, type(None))):  # YAML/TOML true, a list
        raise ValueError(f"{value!r} is not a duration; write e.g. 90s, 15m, 1h or none")
    return parse_duration(value)


# A field of seconds that also takes '15m', '1h30m' or 'none' (no limit), as configuration and plans write it.
Duration = Annotated[float | None, BeforeValidator(_duration_field)]


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "none"
    seconds = int(round(seconds))
    if seconds % 3600 == 0 and seconds:
        return f"{seconds // 3600}h"
    if seconds % 60 == 0 and seconds:
        return f"{seconds // 60}m"
    return f"{seconds}s"


class LauncherConfig(StrictModel):
    """How one launcher kind turns into a command line: a trainer profile plus where it is installed."""

    trainer: str = Field(default="reference", description="trainer profile: reference, isaaclab2, isaaclab3 "
                         "or one of [tool.lights_out.trainers]")
    prefix: list[str] = Field(default_factory=list, description="e.g. ['./IsaacLab/isaaclab.sh', '-p']; empty = this Python")
    script: str | None = Field(default=None, description="trainer script; None = the profile's")
    module: str | None = Field(default=None, description="run as `python -m <module>`; None = the profile's")
    script_args: list[str] | None = Field(default=None, description="fixed args after the script/module; None = the profile's")
    headless: bool | None = None  # None: the launcher kind decides (lab_debug is the only GUI one)
    newton_selector: str | None = None  # None = the profile's (isaaclab3: physics=newton_mjwarp)
    env: dict[str, str] = Field(default_factory=dict)
    isaac_env_defaults: bool | None = None  # Isaac Lab env defaults (command.ISAAC_ENV_DEFAULTS); None = auto from prefix/script


class PowerPolicy(StrictModel):
    watts: float | None = None
    sm_clock_mhz: int | None = None
    required_for_mgpu: bool = True
    tolerance_watts: float = 1.0


class GpuGuard(StrictModel):
    allowed_models: list[str] = Field(default_factory=list, description="regexes; empty = any model")
    expected_count: int | None = None


class MonitorConfig(StrictModel):
    stall_s: float = 300.0
    startup_stall_s: float = 900.0
    idle_gpu_stall_s: float = 300.0
    time_limit: Duration = 3600.0
    grace_s: float = 20.0
    status_interval_s: float = 30.0
    imbalance_util_pct: float = 30.0
    imbalance_mem_pct: float = 30.0
    busy_gpu_mem_mb: float = 1024.0
    busy_gpu_action: Literal["refuse", "wait"] = "refuse"
    extra_patterns: dict[str, list[str]] = Field(default_factory=dict, description="verdict -> regexes")


class PolicyRule(StrictModel):
    """What to do for one verdict; attempts are counted per verdict within a run."""

    # reseed: restart from the newest checkpoint saved before the learning went wrong, with a new seed;
    # exclude_node: resubmit without the Slurm nodes that failed under the job
    action: Literal["retry", "halve_envs", "other_gpu", "fewer_gpus", "exclude_node", "give_up", "accept",
                    "reseed"] = "retry"
    max_attempts: int = 3
    then: Literal["retry", "halve_envs", "other_gpu", "fewer_gpus", "exclude_node", "give_up", "accept",
                  "reseed"] | None = None
    after: int = 1  # how many attempts use `action` before `then` applies


def default_policy() -> dict[str, PolicyRule]:
    """The recovery policy per verdict when the project sets none (README "Policy")."""
    return {
        "crash": PolicyRule(action="retry", max_attempts=3),
        "stall": PolicyRule(action="retry", max_attempts=3),
        "nccl": PolicyRule(action="retry", max_attempts=3),
        "oom": PolicyRule(action="retry", max_attempts=3, after=1, then="halve_envs"),
        "segfault": PolicyRule(action="retry", max_attempts=1),
        "cuda_error": PolicyRule(action="retry", max_attempts=2, after=1, then="other_gpu"),
        "imbalance": PolicyRule(action="retry", max_attempts=2, after=1, then="fewer_gpus"),
        "config_error": PolicyRule(action="give_up", max_attempts=0),
        "killed": PolicyRule(action="retry", max_attempts=3),
        "timeout": PolicyRule(action="accept", max_attempts=0),
        # learning health (health.py): a NaN or a blow-up gets one fresh seed from the last good checkpoint
        "nan": PolicyRule(action="reseed", max_attempts=1),
        "diverged": PolicyRule(action="reseed", max_attempts=1),
        "collapsed": PolicyRule(action="give_up", max_attempts=0),
        "plateau": PolicyRule(action="accept", max_attempts=0),
        # The cluster's doing, not the run's: resume from the checkpoint, not counted as failures.
        "preempted": PolicyRule(action="retry", max_attempts=20),
        "node_fail": PolicyRule(action="exclude_node", max_attempts=5),
    }


class SlurmConfig(StrictModel):
    partition: str | None = None
    account: str | None = None
    constraint: str | None = None
    nodelist: str | None = None
    gres_per_gpu: str = "gpu"
    signal: str = "USR1"
    signal_lead_s: int = 60
    requeue: bool = False
    pending_timeout_s: float = 1800.0
    extra_sbatch: list[str] = Field(default_factory=list)
    # Jobs always ask Slurm for the run's GPUs (--gres); Slurm picks them and the trainer sees cuda:0..N-1.
    # "cpu" keeps the trainer on the CPU inside such a job: for test clusters whose GPUs are fake.
    trainer_device: Literal["cuda", "cpu"] = "cuda"


class ProjectConfig(StrictModel):
    logs_dir: str = "local_experiment_logs"
    ledger: str | None = Field(default=None, description="the sweep ledger (markdown); default <logs_dir>/sweep_log.md")
    default_plan: str = "sweeps/default.yaml"
    trainer_logs_dir: str = "logs/rsl_rl"
    cpu_slots: int = Field(default=2, ge=1)
    locks_dir: str | None = Field(default=None, description="GPU / CPU-slot leases, shared by every checkout on the "
                                  "machine; default $LIGHTS_OUT_LOCKS_DIR, else <tmp>/lights-out-<uid>/locks")
    executor: Literal["local", "slurm"] = "local"
    launchers: dict[str, LauncherConfig] = Field(default_factory=dict)
    trainers: dict[str, dict] = Field(default_factory=dict, description="name -> trainer profile table "
                                      "(lights_out_dev.core.profiles.TrainerProfile keys, plus `extends`)")
    power: PowerPolicy = Field(default_factory=PowerPolicy)
    gpu_guard: GpuGuard = Field(default_factory=GpuGuard)
    monitor: MonitorConfig = Field(default_factory=MonitorConfig)
    policy: dict[str, PolicyRule] = Field(default_factory=dict)
    max_consecutive_failures: int = 3
    experiment_env: dict[str, dict[str, str]] = Field(default_factory=dict, description="family -> literal env vars")
    secrets: list[str] = Field(default_factory=lambda: ["WANDB_API_KEY"], description="env var names passed through, never written")
    slurm: SlurmConfig = Field(default_factory=SlurmConfig)
    events_command: list[str] = Field(default_factory=list, description="run on every watch event, the event JSON on stdin")

    @field_validator("launchers")
    @classmethod
    def _known_launchers(cls, v: dict[str, LauncherConfig]):
        unknown = sorted(set(v) - set(LAUNCHER_KINDS))
        if unknown:
            raise ValueError(f"unknown launcher {unknown[0]!r}; use one of {', '.join(LAUNCHER_KINDS)}")
        return v

    @field_validator("policy")
    @classmethod
    def _known_verdicts(cls, v: dict[str, PolicyRule]):
        from lights_out_dev.core.verdicts import Verdict

        unknown = sorted(set(v) - {x.value for x in Verdict})
        if unknown:
            raise ValueError(f"policy for unknown verdict {unknown[0]!r}; use one of {', '.join(x.value for x in Verdict)}")
        return v

    @model_validator(mode="after")
    def _profiles_resolve(self):
        from lights_out_dev.core.profiles import ProfileError, resolve_profile

        for name in sorted({*self.trainers, *(lc.trainer for lc in self.launchers.values())}):
            try:
                resolve_profile(name, self.trainers)
            except ProfileError as e:
                raise ValueError(str(e).rstrip(".")) from None
        return self

    def trainer_profile(self, name: str):
        from lights_out_dev.core.profiles import resolve_profile

        return resolve_profile(name, self.trainers)

    def launcher(self, kind: str) -> LauncherConfig:
        return self.launchers.get(kind) or LauncherConfig()

    def recovery_policy(self) -> dict[str, PolicyRule]:
        return {**default_policy(), **self.policy}

    def path(self, root: Path, rel: str) -> Path:
        p = Path(rel)
        return p if p.is_absolute() else root / p


# The directory that holds the lights_out_dev package (this checkout, or site-packages). Processes that
# import the package without this process's sys.path (Slurm job steps, torchrun workers) get it on PYTHONPATH.
PACKAGE_PARENT = Path(__file__).resolve().parents[2]


def project_root(start: Path | None = None) -> Path:
    """The directory holding dodo.py + pyproject.toml; LIGHTS_OUT_ROOT overrides."""
    env = os.environ.get("LIGHTS_OUT_ROOT")
    if env:
        return Path(env).resolve()
    here = (start or Path.cwd()).resolve()
    for d in (here, *here.parents):
        if (d / "pyproject.toml").exists() and (d / "dodo.py").exists():
            return d
    return here


def _format_validation_error(err: ValidationError, source: str) -> str:
    first = err.errors()[0]
    loc = ".".join(str(p) for p in first["loc"])
    msg = first["msg"].removeprefix("Value error, ")
    where = f"{source} [tool.lights_out]" + (f" key '{loc}'" if loc else "")
    if first["type"] == "extra_forbidden":
        return f"{where} is not a known setting; remove it or check its spelling (see README 'Configuration')."
    return f"{where}: {msg}; fix that value in {source}."


def _read_table(path: Path) -> dict:
    try:
        data = tomllib.loads(path.read_bytes().decode())
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (byte {e.object[e.start]:#04x} at offset {e.start}); "
                          f"save it as UTF-8.") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path} is not valid TOML ({e}); fix the file.") from None
    except OSError as e:
        raise ConfigError(f"cannot read config file {path} ({e.strerror}); check the path.") from None
    return data.get("tool", {}).get("lights_out", data if "tool" not in data else {})


def _deep_merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def load_config(root: Path | None = None) -> ProjectConfig:
    """[tool.lights_out] of pyproject.toml, with the TOML file named by LIGHTS_OUT_CONFIG (if set)
    merged over it — so a machine or a test can change limits without editing the project."""
    root = root or project_root()
    pyproject = root / "pyproject.toml"
    table = _read_table(pyproject) if pyproject.exists() else {}
    source = str(pyproject)
    overlay = os.environ.get("LIGHTS_OUT_CONFIG")
    if overlay:
        table = _deep_merge(table, _read_table(Path(overlay)))
        source = f"{pyproject} + {overlay}"
    try:
        return ProjectConfig.model_validate(table)
    except ValidationError as e:
        raise ConfigError(_format_validation_error(e, source)) from None


def load_project_or_report(prefix: str = "", file=None) -> tuple[Path, ProjectConfig] | None:
    """The project root and its config, or None after printing the config problem (one sentence):
    the entry points report a malformed table the same way and stop without touching any state."""
    root = project_root()
    try:
        return root, load_config(root)
    except ConfigError as e:
        print(f"{prefix}{e}", file=file or sys.stdout)
        return None
