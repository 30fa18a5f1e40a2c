"""Smoke gate: before a run's long attempt, its exact full-shape command (same num_envs, GPUs, flags,
env) runs until its first training iteration completes, under the start-up limit.

    doit TASK --smoke        plan: `smoke: true` (per plan or per run)

The gate's verdict lands in the run state (`smoke`: 'passed' | 'failed: <verdict>', `smoke_argv_hash`,
details in `extra['smoke']`) and from there in the ledger. A failed gate ends the run as failed before
its long attempt starts (no retries: a command that cannot finish one iteration is a config problem
until proven otherwise). A passed gate is reused, not run again, while the run's resolved command is
unchanged: the hash covers argv and env minus what differs on every launch (RID, run name, rendezvous
port, which GPU index).

The smoke is not one of the run's attempts: it has its own log (`..._smoke.log`) and trainer run
directory (run name + `_smoke`, so the long attempt never resumes from it), gets LIGHTS_OUT_ATTEMPT=0
(the reference trainer's fault injections fire on attempt 1 unless `:always`), and its time does not
count against the run's time limit.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import time
from pathlib import Path

from lights_out_dev.core.config import format_duration
from lights_out_dev.core.state import RunState, load_state
from lights_out_dev.core.verdicts import Verdict

SUFFIX = "_smoke"
PASSED = "passed"
_VOLATILE_FLAGS = ("--rid", "--run_name")  # new on every launch
_PORT = re.compile(r"^--master_port=\d+$")
_DEVICE = re.compile(r"^cuda:\d+$")


def canonical_argv(argv: list[str]) -> list[str]:
    """argv with the per-launch parts replaced by placeholders: the command's shape. Pure."""
    out, skip = [], False
    for tok in argv:
        if skip:
            out.append("*")
            skip = False
        elif tok in _VOLATILE_FLAGS:
            out.append(tok)
            skip = True
        elif tok.split("=", 1)[0] in _VOLATILE_FLAGS:
            out.append(tok.split("=", 1)[0] + "=*")
        elif _PORT.match(tok):
            out.append("--master_port=*")
        elif _DEVICE.match(tok):
            out.append("cuda")  # a pass on GPU 0 proves the same command on GPU 1
        else:
            out.append(tok)
    return out


def argv_hash(argv: list[str], env: dict[str, str] | None = None) -> str:
    """Identity of a resolved command for gate reuse (16 hex digits). Pure."""
    blob = json.dumps({"argv": canonical_argv(argv), "env": sorted((env or {}).items())})
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def smoke_needed(state: RunState | None, digest: str) -> bool:
    """False when this state already records a passed gate for the same command. Pure."""
    return not (state is not None and state.smoke == PASSED and state.smoke_argv_hash == digest)


def verdict_text(verdict: Verdict | str) -> str:
    v = Verdict(verdict)
    return PASSED if v == Verdict.completed else f"failed: {v.value}"


def _newest_archived(state_path: Path, key: str) -> tuple[Path, RunState] | None:
    """This run's newest archived state: a run that ended (or never got past its gate) is archived by
    the supervisor when the run starts again."""
    archive = Path(state_path).parent / "archive"
    pattern = re.compile(rf"^{re.escape(key)}_\d{{8}}_\d{{6}}\.json$")
    try:
        names = sorted(n for n in os.listdir(archive) if pattern.match(n))
    except OSError:
        return None
    if not names:
        return None
    try:
        old = load_state(archive / names[-1])
    except Exception:  # an unreadable archive proves nothing; the smoke simply runs
        return None
    return (archive / names[-1], old) if old is not None else None


def previous_pass(state: RunState, state_path: Path, key: str, digest: str) -> tuple[Path, RunState] | None:
    """Where a passed gate for the same command is recorded: this state, else the run's newest archived
    state (the run was started afresh since); None when the gate must run."""
    if not smoke_needed(state, digest):
        return state_path, state
    found = _newest_archived(state_path, key)
    return found if found and not smoke_needed(found[1], digest) else None


def _stop_leftover(run) -> None:
    """A supervisor killed outright (SIGKILL, power loss) during a smoke leaves that trainer running on
    towards its full length: stop it (it must still be the same process) before a new gate starts."""
    from lights_out_dev.executors.base import Handle

    found = _newest_archived(run.path, run.key)
    rec = found[1].smoke_record if found else {}
    if not rec.get("handle") or rec.get("ended_at"):
        return
    handle = Handle.from_dict(rec["handle"])
    if run.executor.adoptable(handle):
        run.executor.stop(handle, graceful=False, grace_s=0)
        run.say(f"[{run.state.task}] stopped the smoke trainer (pid {handle.pid}) left running by a dead supervisor.")


def gate(run) -> bool:
    """Run (or reuse) the smoke gate for a supervisor run (`supervisor._Run`) before its first attempt.

    True: go on with the long attempt. False: the run ended here, either failed (status 'failed',
    reason 'smoke failed: ...') or stopped by the user (status 'interrupted')."""
    from lights_out_dev.core import command
    from lights_out_dev.run.attempt import (
        classify_end,
        environment,
        limits_for,
        new_scanner,
        process_environment,
        watch_to_end,
    )
    from lights_out_dev.run.monitor import LogTail

    st, cfg = run.state, run.cfg
    spec, gpus = run._effective_spec(), run._gpus()
    argv = command.build_argv(spec, run.executor.trainer_gpus(gpus), rid=st.rid, run_name=st.run_name + SUFFIX)
    digest = argv_hash(argv, spec.env)
    earlier = previous_pass(st, run.path, run.key, digest)
    if earlier is not None:
        st.smoke, st.smoke_argv_hash = PASSED, digest
        st.smoke_record = {**earlier[1].smoke_record, "reused": str(earlier[0])}
        run.save()
        run.say(f"[{st.task}] smoke passed earlier for this exact command ({digest}); not run again.")
        return True

    _stop_leftover(run)
    limit = cfg.monitor.startup_stall_s
    env_over = environment(spec, run.executor, gpus, 0)
    env = process_environment(spec, env_over)
    log_path = run.logs_dir / f"{time.strftime('%Y%m%d_%H%M%S')}_{run.key}{SUFFIX}.log"
    scanner = new_scanner(cfg, argv, spec, run.root, run._target_iteration())
    user_stop = []

    def stop() -> bool:  # the first iteration ends the smoke; the user's stop still counts as such
        if run.should_stop():
            user_stop.append(True)
            return True
        return scanner.first_iteration_seen

    record = {"argv": argv, "argv_hash": digest, "started_at": time.time(), "limit_s": limit}
    st.status = "running"
    try:
        run.start_trainer(argv, env, log_path, gpus, purpose="smoke", env_overrides=env_over,
                          job_name=f"lo-{run.key}-smoke", time_limit_s=limit, **run.placement(spec))
        record.update(log_path=run.handle.log_path, pid=run.handle.pid, handle=run.handle.to_dict())
        st.smoke_record = record
        st.intent = None
        run.save()
        run.say(f"[{st.task}] smoke: running the full command up to its first iteration "
                f"(start-up limit {format_duration(limit)}); log {run.handle.log_path}")
        ended = watch_to_end(run.executor, run.handle, scanner, limits_for(cfg, run.executor, limit),
                             LogTail(run.handle.log_path, 0), gpus=gpus, should_stop=stop)
    except BaseException:
        run._abort()  # leaves no trainer behind and marks the run interrupted
        raise
    run.handle = None
    result = ended.watched
    verdict, reason = ended.verdict, ended.reason
    if result.stopped_by == "user" and not user_stop:  # the gate's own stop at its first iteration
        verdict, reason = classify_end(scanner, result.exit, "smoke")
    if verdict == Verdict.timeout:
        reason = f"no first {spec.trainer.observe.unit} within the start-up limit of {format_duration(limit)}"
    elif verdict == Verdict.completed:
        sps = scanner.progress.steps_per_s
        first = result.healthy_at or time.time()
        reason = f"first update completed {first - record['started_at']:.0f}s after launch" + (
            f", {sps:.0f} steps/s" if sps else "")
    record.update(ended_at=time.time(), verdict=verdict.value, reason=reason, tb_dir=scanner.tb_dir,
                  progress=scanner.progress.model_dump(), peak_vram_mb=result.peak_vram_mb,
                  exit_code=result.exit.exit_code if result.exit else None)
    if user_stop:
        st.status, st.reason = "interrupted", "stopped by the user during the smoke gate"
        run.save()
        return False
    st.smoke, st.smoke_argv_hash = verdict_text(verdict), digest
    passed = st.smoke == PASSED
    run.emit("smoke", verdict=verdict.value, passed=passed, reason=reason, log_path=record.get("log_path"))
    run.say(f"[{st.task}] smoke {st.smoke}: {reason}")
    if not passed:
        st.status, st.final_verdict = "failed", verdict.value
        st.reason = f"smoke {st.smoke}: {reason}"
    run.save()
    return passed
