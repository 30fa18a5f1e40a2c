"""Observations of one attempt -> verdict + one-line reason. Pure.

Exit code 0 is not success: Isaac Lab can exit 0 after an OOM, and a trainer can exit 0 early.
Success needs a completion marker of the trainer's profile ("Training time:" by default; the reason
quotes the text that matched) or the final iteration, and no traceback or fatal signature. A profile
with `completion = "exit0"` (a trainer that prints no marker) succeeds on exit 0 alone. A trainer the
runner stopped because it hung at exit after training finished (`stopped_by='hang_exit'`: marker seen or
progress at its total) is completed whatever its exit, exit-0 profiles included. Between failure
classes the more specific evidence wins: oom > nccl > cuda_error > segfault > config_error > crash.
"""
from __future__ import annotations

import signal as _signal
from dataclasses import dataclass, field

from lights_out_dev.core.signatures import exception_name
from lights_out_dev.core.verdicts import Verdict

# Exceptions that mean a bug in code or configuration: retrying cannot help.
CONFIG_EXCEPTIONS = frozenset({
    "KeyError", "ValueError", "TypeError", "AttributeError", "ImportError", "ModuleNotFoundError",
    "NameError", "IndexError", "AssertionError", "FileNotFoundError", "SyntaxError", "IndentationError",
    "NotImplementedError", "UnboundLocalError", "LookupError", "IsADirectoryError", "NotADirectoryError",
    "ArgumentError", "ValidationError",
    # hydra / omegaconf
    "HydraException", "ConfigCompositionException", "MissingConfigException", "InstantiationException",
    "OverrideParseException", "ConfigKeyError", "ConfigAttributeError", "ConfigTypeError", "ConfigValueError",
    "MissingMandatoryValue", "InterpolationResolutionError", "KeyValidationError", "ReadonlyConfigError",
})
# Signals by which a process dies of a bad memory access or instruction.
SEGFAULT_SIGNALS = frozenset({_signal.SIGSEGV, _signal.SIGILL, _signal.SIGBUS})
# Failure classes found in the log, strongest evidence first.
PRECEDENCE = ("oom", "nccl", "cuda_error", "segfault", "config_error", "nan")
# Slurm job states (sacct) that decide the verdict without looking at the log.
SCHEDULER_VERDICTS = {
    "TIMEOUT": (Verdict.timeout, "Slurm ended the job at its time limit"),
    "DEADLINE": (Verdict.timeout, "Slurm ended the job at its deadline"),
    "OUT_OF_MEMORY": (Verdict.oom, "Slurm state OUT_OF_MEMORY: the job exceeded its memory allocation"),
    "NODE_FAIL": (Verdict.node_fail, "Slurm state NODE_FAIL: a node failed under the job"),
    "BOOT_FAIL": (Verdict.node_fail, "Slurm state BOOT_FAIL: a node failed to boot"),
    "PREEMPTED": (Verdict.preempted, "Slurm state PREEMPTED: the job was preempted"),
    # Not a Slurm end state: the Slurm executor's word for a job Slurm put back in the queue after it ran.
    "REQUEUED": (Verdict.preempted, "Slurm requeued the job (preemption or scontrol requeue)"),
}
# Cancelled from outside (scancel) unless the runner stopped it itself.
SCHEDULER_KILLED = frozenset({"CANCELLED", "REVOKED"})
SCHEDULER_LIVE = frozenset({"PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED"})

REASON_MAX = 200


@dataclass
class Observations:
    exit_code: int | None = None  # None while running or when killed by a signal
    signal: int | None = None
    scheduler_state: str | None = None  # Slurm: COMPLETED, FAILED, TIMEOUT, "CANCELLED by 0", ...
    hits: dict[str, str] = field(default_factory=dict)  # signature class -> first matching line
    exception: str | None = None  # the final line of the last Python traceback
    end_marker: bool = False
    end_marker_text: str | None = None  # the completion marker text that matched
    markers: tuple[str, ...] = ("Training time:",)  # the profile's completion markers, for the reason
    exit0_completes: bool = False  # the profile's completion = "exit0"
    unit: str = "iteration"  # what progress counts: iteration | timestep
    progress_observed: bool = True  # False: the profile reads no progress (unknown, not "before the first")
    iteration: int | None = None  # iterations done (rsl_rl's printed index + 1)
    total: int | None = None
    stopped_by: str | None = None  # None | 'stall' | 'timeout' | 'imbalance' | 'user' | 'smoke' | 'hang_exit'


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= REASON_MAX else text[: REASON_MAX - 3] + "..."


def _signal_name(sig: int) -> str:
    try:
        return _signal.Signals(sig).name
    except ValueError:
        return f"signal {sig}"


def death_signal(obs: Observations) -> int | None:
    """The signal that ended the process: reported directly, as a negative return code, or as a
    shell's 128+N exit code (isaaclab.sh and srun wrap the trainer in a shell)."""
    if obs.signal:
        return obs.signal
    code = obs.exit_code
    if code is not None and code < 0:
        return -code
    if code is not None and 128 < code < 160:
        return code - 128
    return None


def _where(obs: Observations) -> str:
    if obs.iteration is None:
        return f"before the first {obs.unit}" if obs.progress_observed else "(progress not observed)"
    return f"at {obs.unit} {obs.iteration}/{obs.total}" if obs.total else f"at {obs.unit} {obs.iteration}"


def _how_it_ended(obs: Observations, sig: int | None) -> str:
    if sig is not None:
        code = f", exit {obs.exit_code}" if obs.exit_code not in (None, -sig) else ""
        return f"{_signal_name(sig)}{code}"
    if obs.exit_code is not None:
        return f"exit {obs.exit_code}"
    return "still running" if obs.stopped_by is None else f"stopped ({obs.stopped_by})"


def _trained_to_the_end(obs: Observations) -> bool:
    return obs.end_marker or bool(obs.iteration and obs.total and obs.iteration >= obs.total)


def _finished(obs: Observations) -> bool:
    if obs.exit0_completes and obs.stopped_by != "hang_exit":
        # its progress lines come before the last update: only the exit tells, or a silence after them
        return obs.exit_code == 0 and death_signal(obs) is None and obs.stopped_by is None
    return _trained_to_the_end(obs)


def _evidence(obs: Observations) -> str:
    """What says training finished, for the reason."""
    if obs.end_marker:
        return repr(obs.end_marker_text or (obs.markers[0] if obs.markers else "end marker"))
    if obs.exit0_completes and obs.stopped_by != "hang_exit":
        return "exit 0 (its profile's completion = 'exit0')"
    return f"final {obs.unit} {obs.iteration}/{obs.total}"


def _failure_in_log(obs: Observations, sig: int | None) -> tuple[Verdict, str] | None:
    """The failure the log (or the death signal) proves, if any, by precedence.

    A bare SIGSEGV after the trainer finished is not one: Isaac Sim often dies while shutting down,
    after the final checkpoint was saved."""
    ended = _how_it_ended(obs, sig)
    exc_name = exception_name(obs.exception) if obs.exception else None
    for cls in PRECEDENCE:
        if cls in obs.hits:
            return Verdict(cls), _short(f"{cls}: {obs.hits[cls]!r} ({ended}, {_where(obs)})")
        if cls == "segfault" and sig in SEGFAULT_SIGNALS and not _finished(obs):
            return Verdict.segfault, f"died by {_signal_name(sig)} {_where(obs)}"
        if cls == "config_error" and exc_name in CONFIG_EXCEPTIONS:
            return Verdict.config_error, _short(f"traceback ends in {obs.exception!r} ({ended}, {_where(obs)})")
    if "rank_killed" in obs.hits:
        # A worker killed from outside (OOM killer, kill -9) with no collective error: the process died,
        # the interconnect did not; a crash, not nccl.
        return Verdict.crash, _short(f"a rank was killed: {obs.hits['rank_killed']!r} ({ended}, {_where(obs)})")
    if "child_failed" in obs.hits:
        # torchrun reports any worker's death this way; with no more specific evidence it is the
        # multi-GPU launch itself that failed.
        return Verdict.nccl, _short(f"torchrun worker failed: {obs.hits['child_failed']!r} ({ended}, {_where(obs)})")
    # A finished run that hangs on its way out gets the graceful SIGINT: its KeyboardInterrupt is clean-up.
    if exc_name == "KeyboardInterrupt" and obs.stopped_by is None and not _finished(obs):
        return Verdict.killed, f"interrupted (KeyboardInterrupt, {ended}) {_where(obs)}"
    if obs.exception and exc_name != "KeyboardInterrupt":
        return Verdict.crash, _short(f"traceback ends in {obs.exception!r} ({ended}, {_where(obs)})")
    return None


def classify(obs: Observations) -> tuple[Verdict, str]:
    """The verdict for one attempt and one line naming the evidence."""
    sig = death_signal(obs)
    where = _where(obs)
    if obs.stopped_by == "timeout":
        return Verdict.timeout, f"stopped at the time limit {where}"
    if obs.stopped_by == "user":
        return Verdict.killed, f"stopped on request {where}"
    # sacct: "CANCELLED by 1000"; "CANCELLED+" in its fixed-width output
    state = (obs.scheduler_state or "").split(" ")[0].rstrip("+").upper()
    if state in SCHEDULER_VERDICTS:
        verdict, why = SCHEDULER_VERDICTS[state]
        if verdict.is_cluster_fault and _finished(obs):
            # The trainer had finished (and saved) before Slurm took the job or the node went away.
            return Verdict.completed, f"finished before the end: {why.lower()} after training {where}"
        return verdict, f"{why} {where}"
    if state in SCHEDULER_KILLED and obs.stopped_by is None:
        # The runner cancels a job itself the moment a fatal line appears: then that line is the verdict.
        if any(cls in obs.hits for cls in PRECEDENCE):
            return _failure_in_log(obs, sig)
        return Verdict.killed, f"Slurm state {obs.scheduler_state} {where}"

    # Evidence in the log beats the runner's own stop reasons: a stall after an OOM is an OOM.
    failure = _failure_in_log(obs, sig)
    if failure is not None:
        verdict, reason = failure
        return verdict, reason if obs.stopped_by is None else _short(f"{reason}; stopped for {obs.stopped_by}")
    if obs.stopped_by == "stall":
        return Verdict.stall, f"no output or progress within the stall limit {where}"
    if obs.stopped_by == "imbalance":
        return Verdict.imbalance, f"GPU load imbalance across the run's GPUs {where}"
    if obs.stopped_by == "hang_exit" and _finished(obs):
        ended = "" if obs.exit_code is None and sig is None else f" ({_how_it_ended(obs, sig)})"
        return Verdict.completed, f"finished: {_evidence(obs)}, then hung at exit and was stopped{ended}"
    if obs.stopped_by == "smoke":
        if obs.iteration:
            return Verdict.completed, f"smoke gate passed: stopped after the first update {where}"
        return Verdict.crash, "smoke gate stopped the run before its first iteration"

    if obs.exit_code is None and sig is None and (not state or state in SCHEDULER_LIVE):
        return (Verdict.healthy if obs.iteration else Verdict.running), f"running {where}"
    if _finished(obs):
        evidence = _evidence(obs)
        if obs.exit0_completes:
            return Verdict.completed, f"finished: {evidence} {where}"
        if obs.exit_code == 0 and sig is None:
            return Verdict.completed, f"finished: {evidence}, exit 0"
        # Isaac Sim often dies while shutting down after training has finished and saved.
        return Verdict.completed, f"finished: {evidence}, then {_how_it_ended(obs, sig)} at shutdown"
    if sig is not None:
        return Verdict.crash, f"killed by {_how_it_ended(obs, sig)} {where} with no error in the log"
    if obs.exit_code == 0:
        missing = " or ".join(map(repr, obs.markers)) if obs.markers else "reaching its final iteration"
        return Verdict.crash, f"exit 0 without {missing} {where}"
    if state:
        return Verdict.crash, (f"Slurm state {obs.scheduler_state}, {_how_it_ended(obs, sig)} {where} "
                               "with no known error signature")
    return Verdict.crash, f"{_how_it_ended(obs, sig)} {where} with no known error signature"
