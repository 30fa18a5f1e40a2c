"""Slurm batch scripts for one attempt: pure text generation, no Slurm calls.

The script is the whole contract with the cluster: `#SBATCH` lines carry the request (so the
saved script alone reproduces a submission), the body exports the trainer's environment, runs
the GPU-type guard and an optional runtime preflight, then runs the trainer as a child that is
stopped gracefully (SIGINT) when Slurm warns of the time limit or of a preemption
(`--signal=B:<sig>@<lead>`), or someone signals the batch shell, and the trainer's own exit status
becomes the job's.

A multi-node request (`nodes` > 1, a torch.distributed.run command) becomes one job of N nodes:
the checks run once per node (`srun --ntasks-per-node=1`), and `srun` starts one
torch.distributed.run per node whose launcher flags are rewritten to a c10d rendezvous on the
first node (`--nnodes=$SLURM_NNODES --node_rank=$SLURM_NODEID --rdzv_backend=c10d
--rdzv_endpoint=<first node>:<free port> --rdzv_id=<job id>-<restart count>`, so every attempt
and every requeue meets in a rendezvous of its own). `--kill-on-bad-exit=1`: when any node's
ranks fail, srun ends every node's processes and the job ends.

`render_array` puts several single-node requests into one job array (`--array=0-<n-1>%K`): each
element selects its own command, environment and log by `$SLURM_ARRAY_TASK_ID`.

Exit codes of the script besides the trainer's: 42 wrong GPU count, 43 disallowed GPU model
(the GPU-type guard), 44 runtime preflight failed; 128+N when the trainer died by signal N.
"""
from __future__ import annotations

import math
import re
import shlex
from dataclasses import dataclass, field

from lights_out_dev.core.config import SlurmConfig
from lights_out_dev.errors import LightsOutError
from lights_out_dev.host.preflight import EXIT_COUNT_MISMATCH, EXIT_DISALLOWED_MODEL

EXIT_PREFLIGHT = 44
EXIT_REASONS = {
    EXIT_COUNT_MISMATCH: "the GPU guard refused the allocation: wrong number of GPUs (see the log)",
    EXIT_DISALLOWED_MODEL: "the GPU guard refused the allocation: a GPU model not in gpu_guard.allowed_models (see the log)",
    EXIT_PREFLIGHT: "the runtime preflight failed inside the allocation (see the log)",
}
# Lines the script prints; the executor reads them back from the log (banner = one job start,
# time-limit marker = the trainer was stopped because Slurm's time limit was near).
BANNER = "lights-out: Slurm job"
TIME_LIMIT_MARKER = "lights-out: Slurm time-limit signal"
NODE_MARKER = "lights-out: node"  # one line per node of a multi-node job, as its torch.distributed.run starts

_NAME_RE = re.compile(r"[^A-Za-z0-9._:+-]")
_ENV_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_NODE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._\[\],-]*")
# torch.distributed.run's options that say where the rendezvous is; a multi-node job sets its own.
_RDZV_FLAGS = ("--nnodes", "--node_rank", "--master_addr", "--master_port", "--rdzv_backend", "--rdzv_endpoint",
               "--rdzv_id", "--rdzv-backend", "--rdzv-endpoint", "--rdzv-id", "--standalone", "--node-rank",
               "--master-addr", "--master-port")
# Set by Slurm for the allocation; a value inherited from the submitting shell would be wrong.
_SLURM_OWNED_ENV = frozenset({"CUDA_VISIBLE_DEVICES"})


class JobScriptError(LightsOutError, ValueError):
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
    nodes: int = 1  # > 1: one torch.distributed.run per node, c10d rendezvous on the first node
    exclude: tuple[str, ...] = ()  # nodes this job must not run on (--exclude), e.g. after a node failure
    python: str = "python3"  # picks the rendezvous port on the first node (multi-node only)


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
        f"--nodes={max(1, req.nodes)}",
        # one task (per node); multi-GPU runs use torch.distributed.run inside it
        "--ntasks=1" if req.nodes <= 1 else "--ntasks-per-node=1",
    ]
    if req.exclude:
        for node in req.exclude:
            if not _NODE_RE.fullmatch(node):
                raise JobScriptError(f"node name {node!r} cannot be excluded (--exclude); it is not a host name")
        opts.append(f"--exclude={','.join(req.exclude)}")
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


def _check_lines(argv: list[str], what: str, exit_code: int | None, nodes: int = 1) -> list[str]:
    """Run a check inside the allocation (on every node of a multi-node job); refuse to train when it
    fails (exit_code None: keep its own; srun returns the highest exit code of the nodes)."""
    code = "$rc" if exit_code is None else str(exit_code)
    run = shlex.join(argv) if nodes <= 1 else "srun --ntasks-per-node=1 --kill-on-bad-exit=0 " + shlex.join(argv)
    return [
        f"{run} || {{",
        f"    rc=$?; echo \"lights-out: {what} failed (exit $rc); refusing to train\" >&2; exit {code}; }}",
    ]


# torch.distributed.run's options that take no value (everything else it has takes one).
_LAUNCHER_SWITCHES = frozenset({"--standalone", "--no-python", "--no_python", "--run-path", "--run_path", "-m",
                                "--module"})


def _torchrun_split(argv: list[str]) -> tuple[list[str], list[list[str]], list[str]] | None:
    """argv -> (up to and including torch.distributed.run, its options as [flag] / [flag, value] items,
    the script and after); None when argv does not run torch.distributed.run."""
    for i, tok in enumerate(argv):
        launcher = (tok == "torch.distributed.run" and i > 0 and argv[i - 1] == "-m") or \
            tok.rsplit("/", 1)[-1] == "torchrun"
        if not launcher:
            continue
        items: list[list[str]] = []
        j = i + 1
        while j < len(argv) and argv[j].startswith("-"):
            takes_value = "=" not in argv[j] and argv[j] not in _LAUNCHER_SWITCHES and j + 1 < len(argv)
            items.append(argv[j: j + (2 if takes_value else 1)])
            j += len(items[-1])
        return argv[: i + 1], items, argv[j:]
    return None


def multinode_command(argv: list[str]) -> str:
    """The per-node command of a multi-node job (expanded by each node's shell): the launcher's own
    rendezvous flags replaced by a c10d rendezvous on the first node."""
    parts = _torchrun_split(argv)
    if parts is None:
        raise JobScriptError("a multi-node run needs a torch.distributed.run command; use an -mgpu variant "
                             "(its launcher is torch.distributed.run) or drop --nodes")
    head, options, tail = parts
    kept = [tok for item in options if item[0].split("=", 1)[0] not in _RDZV_FLAGS for tok in item]
    rdzv = ('--nnodes="$SLURM_NNODES" --node_rank="$SLURM_NODEID" --rdzv_backend=c10d '
            '--rdzv_endpoint="$LIGHTS_OUT_RDZV_HOST:$LIGHTS_OUT_RDZV_PORT" --rdzv_id="$LIGHTS_OUT_RDZV_ID"')
    hello = (f'echo "{NODE_MARKER} $SLURM_NODEID of $SLURM_NNODES on $(hostname): torch.distributed.run, '
             'rendezvous $LIGHTS_OUT_RDZV_HOST:$LIGHTS_OUT_RDZV_PORT id $LIGHTS_OUT_RDZV_ID"')
    launch = " ".join(x for x in (shlex.join(head), rdzv, shlex.join(kept), shlex.join(tail)) if x)
    return f"{hello}; exec {launch}"


_FREE_PORT = "import socket; s = socket.socket(); s.bind(('', 0)); print(s.getsockname()[1])"


def _header(req: JobRequest, slurm: SlurmConfig, extra_directives: list[str] = ()) -> list[str]:
    out = ["#!/bin/bash"]
    out += [f"#SBATCH {opt}" for opt in [*directives(req, slurm), *extra_directives]]
    out += [
        "# Generated by lights-out (lights_out_dev/executors/slurm/jobscript.py) for one attempt.",
        "set -u",
        # Job control: without it a backgrounded child starts with SIGINT ignored, and the
        # graceful stop below could never reach the trainer.
        "set -m",
    ]
    return out


def _banner() -> str:
    return (f'echo "{BANNER} ${{SLURM_JOB_ID:-?}} on $(hostname) (restart ${{SLURM_RESTART_COUNT:-0}}),'
            ' nodes ${SLURM_JOB_NODELIST:-?}, CUDA_VISIBLE_DEVICES=${CUDA_VISIBLE_DEVICES-unset}"')


def _checks(req: JobRequest) -> list[str]:
    out = []
    if req.guard_argv:
        out.append("# GPU-type guard: refuse a wrong allocation before anything expensive runs.")
        out += _check_lines(req.guard_argv, "the GPU guard", None, req.nodes)  # keeps its 42/43
    if req.preflight_argv:
        out.append("# Runtime preflight inside the allocation, with the trainer's environment.")
        out += _check_lines(req.preflight_argv, "the runtime preflight", EXIT_PREFLIGHT, req.nodes)
    return out


def _trainer_line(req: JobRequest) -> list[str]:
    """The trainer, started in the background: directly, or by srun once per node."""
    if req.nodes <= 1:
        return [f"{shlex.join(req.argv)} &"]
    return [
        "# c10d rendezvous on this (the first) node; a fresh rendezvous id per attempt and per requeue.",
        "export LIGHTS_OUT_RDZV_HOST=\"$(hostname)\"",
        f"export LIGHTS_OUT_RDZV_PORT=\"$({shlex.quote(req.python)} -c {shlex.quote(_FREE_PORT)})\"",
        "export LIGHTS_OUT_RDZV_ID=\"${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}\"",
        f"srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c {shlex.quote(multinode_command(req.argv))} &",
    ]


def _run_and_forward(sig: str, lead: int, nodes: int, trainer: list[str]) -> list[str]:
    # srun does not pass a single SIGINT on (it prints the tasks' state); Slurm signals the job's
    # steps on every node instead (no --batch: the batch shell itself is not signalled).
    forward = 'kill -INT "$child" 2>/dev/null' if nodes <= 1 else \
        'scancel --signal=INT "$SLURM_JOB_ID" 2>/dev/null'
    return [
        "# The trainer runs as a child so that this shell can forward a graceful stop to it:",
        f"# Slurm's B:{sig} {lead} s before the time limit (or before a preemption), or SIGINT/SIGTERM sent",
        "# to the batch shell.",
        "child=''",
        "stop_pending=0",
        "interrupted=0",
        "stop_child() {",
        "    interrupted=1",
        f"    if [ -n \"$child\" ]; then {forward}; else stop_pending=1; fi",
        "}",
        f"trap 'echo \"{TIME_LIMIT_MARKER} {sig} ({lead} s before the limit): stopping the trainer with SIGINT\"; "
        f"stop_child' {sig}",
        "trap 'echo \"lights-out: batch shell got a stop signal: stopping the trainer with SIGINT\"; stop_child' "
        + " ".join(s for s in ("INT", "TERM") if s != sig),
        *trainer,
        "child=$!",
        f"[ \"$stop_pending\" = 1 ] && {forward}",
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


def render(req: JobRequest, slurm: SlurmConfig) -> str:
    """The complete batch script for `req` (bash; check it with `bash -n`)."""
    if not req.argv:
        raise JobScriptError("the trainer command is empty; the launcher produced no argv")
    sig = normalize_signal(slurm.signal)
    out = _header(req, slurm) + [_banner()] + _env_lines(req) + _checks(req)
    out += _run_and_forward(sig, max(0, slurm.signal_lead_s), req.nodes, _trainer_line(req))
    return "\n".join(out) + "\n"


def render_array(reqs: list[JobRequest], slurm: SlurmConfig, max_parallel: int, name: str | None = None) -> str:
    """One job array for several single-node requests, at most `max_parallel` elements running at once.

    The #SBATCH request (GPUs, checks) is the first request's, the time limit the longest, the job name
    `name` (default: the first request's); element i runs
    reqs[i]'s command with its environment, appending to its own log."""
    if not reqs:
        raise JobScriptError("a job array needs at least one run")
    first = reqs[0]
    for r in reqs:
        if not r.argv:
            raise JobScriptError("the trainer command is empty; the launcher produced no argv")
        if r.nodes > 1 or r.gpus != first.gpus:
            raise JobScriptError("a job array holds single-node runs that ask for the same GPUs; "
                                 "submit multi-node or mixed runs as jobs of their own")
    sig = normalize_signal(slurm.signal)
    limit = max((r.time_limit_s for r in reqs if r.time_limit_s is not None), default=None)
    shared = JobRequest(argv=first.argv, log_path="/dev/null", workdir=first.workdir, job_name=name or first.job_name,
                        gpus=first.gpus, time_limit_s=limit, guard_argv=first.guard_argv,
                        preflight_argv=first.preflight_argv)
    cap = f"%{max_parallel}" if max_parallel > 0 else ""
    out = _header(shared, slurm, [f"--array=0-{len(reqs) - 1}{cap}"])
    out.append("# Each element: its own log, environment and trainer command.")
    out.append('case "${SLURM_ARRAY_TASK_ID:-}" in')
    for i, r in enumerate(reqs):
        body = [f"exec >>{shlex.quote(r.log_path)} 2>&1", *_env_lines(r), f"trainer=({shlex.join(r.argv)})"]
        out.append(f"    {i})")
        out += [f"        {line}" for line in body]
        out.append("        ;;")
    out += ['    *) echo "lights-out: no array element ${SLURM_ARRAY_TASK_ID:-unset} in this script" >&2; exit 2 ;;',
            "esac", _banner()]
    out += _checks(shared)
    out += _run_and_forward(sig, max(0, slurm.signal_lead_s), 1, ['"${trainer[@]}" &'])
    return "\n".join(out) + "\n"
