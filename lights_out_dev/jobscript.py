"""Slurm batch scripts for one attempt: pure text generation, no Slurm calls.

The script is the whole contract with the cluster: `#SBATCH` lines carry the request (so the
saved script alone reproduces a submission), the body exports the trainer's environment, runs
the GPU-type guard and an optional runtime preflight, then runs the trainer as a child that is
stopped gracefully (SIGINT) when Slurm warns of the time limit or someone signals the batch
shell, and the trainer's own exit status becomes the job's.

Exit codes of the script besides the trainer's: 42 wrong GPU count, 43 disallowed GPU model
(the guard of seeds/003), 44 runtime preflight failed; 128+N when the trainer died by signal N.
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

from lights_out_dev.config import SlurmConfig

EXIT_GPU_COUNT = 42
EXIT_GPU_MODEL = 43
EXIT_PREFLIGHT = 44
EXIT_REASONS = {
    EXIT_GPU_COUNT: "the GPU guard refused the allocation: wrong number of GPUs (see the log)",
    EXIT_GPU_MODEL: "the GPU guard refused the allocation: a GPU model not in gpu_guard.allowed_models (see the log)",
    EXIT_PREFLIGHT: "the runtime preflight failed inside the allocation (see the log)",
}
# Lines the script prints; the executor reads them back from the log (banner = one job start,
# time-limit marker = the trainer was stopped because Slurm's time limit was near).
BANNER = "lights-out: Slurm job"
TIME_LIMIT_MARKER = "lights-out: Slurm time-limit signal"

_NAME_RE = re.compile(r"[^A-Za-z0-9._:+-]")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Set by Slurm for the allocation; a value inherited from the submitting shell would be wrong.
_SLURM_OWNED_ENV = frozenset({"CUDA_VISIBLE_DEVICES"})


class JobScriptError(ValueError):
    """A request that cannot become a valid batch script; str() names the value and the fix."""


@dataclass(frozen=True)
class JobRequest:
    argv: list[str]
    log_path: str  # absolute; stdout+stderr of the job, appended
    workdir: str  # absolute; the trainer's cwd
    job_name: str = "lights-out"
    gpus: int = 0  # 0 = CPU job, no GPU request and no guard
    time_limit_s: float | None = None
    env: dict[str, str] = field(default_factory=dict)  # literal values, written into the script
    secret_names: tuple[str, ...] = ()  # exported by reference; values never written
    guard_argv: list[str] | None = None  # GPU-type guard (exits 42/43), run first in the allocation
    preflight_argv: list[str] | None = None  # runtime check run before the trainer


def normalize_signal(name: str) -> str:
    """'USR1', 'SIGUSR1', 'usr1' -> 'USR1' (the spelling sbatch and bash's trap both accept)."""
    sig = name.strip().upper().removeprefix("SIG")
    if not re.fullmatch(r"[A-Z0-9]+", sig):
        raise JobScriptError(f"slurm.signal {name!r} is not a signal name; use e.g. USR1 or TERM")
    if sig == "INT":  # the runner's own graceful stop; the time-limit warning must be told apart
        raise JobScriptError("slurm.signal INT is the signal lights-out stops trainers with; use USR1 (the default)")
    return sig


def time_minutes(time_limit_s: float | None, signal_lead_s: int) -> int | None:
    """Slurm's --time in whole minutes: the run's limit plus the signal lead, rounded up.

    The lead makes Slurm's warning signal land at about the run's own limit, so the trainer
    stops gracefully (with a checkpoint) instead of being killed at the hard limit.
    """
    if time_limit_s is None:
        return None
    return max(1, math.ceil((time_limit_s + max(0, signal_lead_s)) / 60))


def format_minutes(minutes: int) -> str:
    """Minutes -> sbatch's D-HH:MM:SS."""
    days, rest = divmod(minutes, 24 * 60)
    hours, mins = divmod(rest, 60)
    return f"{days}-{hours:02d}:{mins:02d}:00" if days else f"{hours:02d}:{mins:02d}:00"


def job_name(name: str) -> str:
    """A job name safe on an #SBATCH line and in squeue output."""
    return _NAME_RE.sub("_", name)[:128] or "lights-out"


def _directive_value(value: str, what: str) -> str:
    """Quote a value for an #SBATCH line (sbatch understands double quotes, not escapes)."""
    if any(c in value for c in '"\n\r\\'):
        raise JobScriptError(f"{what} {value!r} contains a quote, backslash or newline, which an #SBATCH line "
                             f"cannot carry; choose a plainer value")
    return f'"{value}"' if re.search(r"\s", value) else value


def directives(req: JobRequest, slurm: SlurmConfig) -> list[str]:
    """The sbatch options of the request, in the order they appear in the script."""
    sig = normalize_signal(slurm.signal)
    opts = [
        f"--job-name={job_name(req.job_name)}",
        f"--output={_directive_value(req.log_path, 'log path')}",
        "--open-mode=append",  # a requeued job appends instead of overwriting its log
        f"--chdir={_directive_value(req.workdir, 'working directory')}",
        "--export=ALL",  # secrets are exported by name from the submitting environment
        "--nodes=1",
        "--ntasks=1",  # one task; multi-GPU runs use torch.distributed.run inside it
    ]
    minutes = time_minutes(req.time_limit_s, slurm.signal_lead_s)
    if minutes is not None:
        opts.append(f"--time={format_minutes(minutes)}")
    if req.gpus > 0:
        opts.append(f"--gres={slurm.gres_per_gpu}:{req.gpus}")
    for key in ("partition", "account", "constraint", "nodelist"):
        value = getattr(slurm, key)
        if value:
            opts.append(f"--{key}={_directive_value(value, f'slurm.{key}')}")
    opts.append(f"--signal=B:{sig}@{max(0, slurm.signal_lead_s)}")
    opts.append("--requeue" if slurm.requeue else "--no-requeue")
    for extra in slurm.extra_sbatch:
        if not extra.startswith("-") or "\n" in extra:
            raise JobScriptError(f"slurm.extra_sbatch entry {extra!r} is not an sbatch option; "
                                 f"write it like '--qos=high'")
        opts.append(extra)
    return opts


def _env_lines(req: JobRequest) -> list[str]:
    lines = []
    for name, value in req.env.items():
        if not _ENV_NAME_RE.fullmatch(name):
            raise JobScriptError(f"environment variable name {name!r} is not valid in a shell; rename it")
        if name in _SLURM_OWNED_ENV or name in req.secret_names:
            continue
        lines.append(f"export {name}={shlex.quote(value)}")
    for name in req.secret_names:
        if not _ENV_NAME_RE.fullmatch(name):
            raise JobScriptError(f"secret name {name!r} is not a valid environment variable name; rename it")
        # By reference: the value travels in the submit environment (--export=ALL), never on disk.
        lines.append(f'export {name}="${{{name}}}"')
    return lines


def _check_lines(argv: list[str], what: str, exit_code: int | None) -> list[str]:
    """Run a check inside the allocation; refuse to train when it fails (exit_code None: keep its own)."""
    code = "$rc" if exit_code is None else str(exit_code)
    return [
        f"{shlex.join(argv)} || {{",
        f"    rc=$?; echo \"lights-out: {what} failed (exit $rc); refusing to train\" >&2; exit {code}; }}",
    ]


def render(req: JobRequest, slurm: SlurmConfig) -> str:
    """The complete batch script for `req` (bash; check it with `bash -n`)."""
    if not req.argv:
        raise JobScriptError("the trainer command is empty; the launcher produced no argv")
    sig = normalize_signal(slurm.signal)
    lead = max(0, slurm.signal_lead_s)
    out = ["#!/bin/bash"]
    out += [f"#SBATCH {opt}" for opt in directives(req, slurm)]
    out += [
        "# Generated by lights-out (lights_out_dev/jobscript.py) for one attempt.",
        "set -u",
        # Job control: without it a backgrounded child starts with SIGINT ignored, and the
        # graceful stop below could never reach the trainer.
        "set -m",
        f'echo "{BANNER} ${{SLURM_JOB_ID:-?}} on $(hostname) (restart ${{SLURM_RESTART_COUNT:-0}}),'
        ' CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"',
    ]
    out += _env_lines(req)
    if req.guard_argv:
        out.append("# GPU-type guard (seeds/003): refuse a wrong allocation before anything expensive runs.")
        out += _check_lines(req.guard_argv, "the GPU guard", None)  # keeps its 42/43
    if req.preflight_argv:
        out.append("# Runtime preflight inside the allocation, with the trainer's environment.")
        out += _check_lines(req.preflight_argv, "the runtime preflight", EXIT_PREFLIGHT)
    out += [
        "# The trainer runs as a child so that this shell can forward a graceful stop to it:",
        f"# Slurm's B:{sig} {lead} s before the time limit, or SIGINT/SIGTERM sent to the batch shell.",
        "child=''",
        "stop_pending=0",
        "interrupted=0",
        "stop_child() {",
        "    interrupted=1",
        "    if [ -n \"$child\" ]; then kill -INT \"$child\" 2>/dev/null; else stop_pending=1; fi",
        "}",
        f"trap 'echo \"{TIME_LIMIT_MARKER} {sig} ({lead} s before the limit): stopping the trainer with SIGINT\"; "
        f"stop_child' {sig}",
        "trap 'echo \"lights-out: batch shell got a stop signal: stopping the trainer with SIGINT\"; stop_child' "
        + " ".join(s for s in ("INT", "TERM") if s != sig),
    ]
    out += [
        f"{shlex.join(req.argv)} &",
        "child=$!",
        "[ \"$stop_pending\" = 1 ] && kill -INT \"$child\" 2>/dev/null",
        "rc=0",
        "first=1",
        "while :; do",
        "    interrupted=0",
        "    wait \"$child\"",
        "    status=$?",
        "    # 127 after a trapped signal: the child was already reaped and rc holds its status.",
        "    if [ \"$status\" -eq 127 ] && [ \"$first\" = 0 ]; then break; fi",
        "    rc=$status",
        "    first=0",
        "    # A trapped signal interrupts `wait` (status 128+N) while the trainer still runs.",
        "    [ \"$interrupted\" = 1 ] || break",
        "done",
        "echo \"lights-out: trainer exited with status $rc\"",
        "exit \"$rc\"",
    ]
    return "\n".join(out) + "\n"
