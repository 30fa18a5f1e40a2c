"""LocalExecutor: runs a trainer as its own session on this machine (executor.Executor).

- start: argv list (never a shell), own session + process group, stdout+stderr appended to the log file.
- wait: a pidfd polled with the caller's timeout, so an exit is seen within microseconds, not on a tick.
  Works for our children (exit code known) and for adopted processes of an earlier supervisor (unknown).
- stop: signals to the whole group and session (graceful: SIGINT, grace, SIGTERM, short grace, SIGKILL),
  then waits, polling with short sleeps, until no process of the run is left in the process table and,
  with a GPU, in NVML's process list. Survivors are returned by pid; nothing is matched by name.
- GPUs: the run holds a host.gpu_lock lease; the trainer is told the leased indexes, multi-GPU runs get
  CUDA_VISIBLE_DEVICES; NVML is sampled here, on the machine the trainer runs on.
- a supervisor restart: the leader (same pid, start time and boot) is adopted; a launch written ahead but
  never recorded is found by its run token.
"""
from __future__ import annotations

import os
import select
import signal
import subprocess
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path

from lights_out_dev.core import command
from lights_out_dev.core.config import ProjectConfig
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.errors import LightsOutError
from lights_out_dev.executors.base import ExitStatus, GpuSample, Handle, Recovered
from lights_out_dev.host import gpu_lock, procs

# After SIGTERM a trainer gets this much more time before SIGKILL (the main grace goes to SIGINT).
TERM_GRACE_S = 5.0
# How long to wait for SIGKILLed processes to leave the process table / GPU before calling them survivors.
GONE_TIMEOUT_S = 15.0


class LaunchError(LightsOutError):
    """The trainer could not be started; str() is one sentence naming the cause and the fix."""


@dataclass
class _Child:
    popen: subprocess.Popen | None
    pidfd: int | None
    exit: ExitStatus | None = None


def _gpu_pids(gpus: list[int] | None) -> set[int]:
    if not gpus:
        return set()
    try:
        from lights_out_dev.host import nvml
        if nvml.gpu_count() == 0:
            return set()
        return {p.pid for g in gpus for p in nvml.pids_on_gpu(g)}
    except Exception:  # NVML trouble must not turn a clean stop into a crash
        return set()


def run_pids(handle: Handle) -> list[int]:
    """Every live process of the run: its group, its session, and descendants that left both."""
    pgid = handle.pgid or handle.pid
    return procs.run_pids(pgid, handle.sid or pgid, token=handle.token, since_ticks=handle.start_time,
                          boot=handle.boot)


class LocalExecutor:
    kind = "local"
    poll_interval_s = 0.1  # how long monitor's wait() blocks between log reads

    def __init__(self, cfg: ProjectConfig | None = None, cwd: Path | None = None):
        """`cwd`: the trainer's working directory (the project root); `cfg` is where leases come from."""
        self.cfg = cfg or ProjectConfig()
        self.cwd = Path(cwd) if cwd else None
        self._children: dict[int, _Child] = {}
        self._lock = threading.Lock()

    # -- before a launch -----------------------------------------------------------------------
    @classmethod
    def visible_gpus(cls, needed: int, here: int) -> int:
        return here  # the trainer runs on this machine

    @classmethod
    def job_array(cls, max_parallel: int, expected: int, name: str) -> None:
        return None  # every local run is a process of its own

    def lease(self, n_gpus: int, *, prefer: list[int] | None = None, wait: bool = False) -> gpu_lock.Lease:
        return gpu_lock.acquire(n_gpus, self.cfg, self.cwd or Path.cwd(), prefer=prefer, wait=wait)

    def attempt_gpus(self, spec_gpus: int, lease_gpus: list[int] | None) -> list[int] | None:
        return lease_gpus  # without a lease the run is not pinned to a GPU

    def trainer_gpus(self, gpus: list[int] | None) -> list[int] | None:
        return gpus

    def gpu_env(self, spec: RunSpec, gpus: list[int] | None) -> dict[str, str]:
        return command.gpu_env(spec, gpus)

    # -- start -------------------------------------------------------------------------------
    def start(self, argv: list[str], env: dict[str, str], log_path: Path, gpus: list[int] | None,
              time_limit_s: float | None = None, job_name: str = "lights-out") -> Handle:
        log_path = Path(log_path)
        try:
            log_path.parent.mkdir(parents=True, exist_ok=True)
            log = open(log_path, "ab", buffering=0)
        except OSError as e:
            raise LaunchError(f"cannot write the run log {log_path} ({e.strerror}); make its directory writable "
                              f"or set [tool.lights_out] logs_dir to a writable path.") from None
        token = env.get(procs.RUN_TOKEN_VAR) or uuid.uuid4().hex  # the caller may have recorded it first
        try:
            popen = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                     env={**env, procs.RUN_TOKEN_VAR: token}, cwd=self.cwd,
                                     start_new_session=True, close_fds=True)
        except FileNotFoundError:
            raise LaunchError(f"the trainer command {argv[0]!r} was not found; fix the launcher prefix "
                              f"in [tool.lights_out.launchers] or install it.") from None
        except PermissionError:
            raise LaunchError(f"the trainer command {argv[0]!r} is not executable; chmod +x it or fix the "
                              f"launcher prefix.") from None
        finally:
            log.close()
        try:
            pidfd = os.pidfd_open(popen.pid)
        except OSError:  # very old kernels: fall back to waitpid polling in wait()
            pidfd = None
        with self._lock:
            self._children[popen.pid] = _Child(popen, pidfd)
        return Handle(kind=self.kind, log_path=str(log_path), gpus=gpus, pid=popen.pid, pgid=popen.pid,
                      sid=popen.pid, start_time=float(procs.start_ticks(popen.pid) or 0), token=token,
                      boot=procs.boot_id())

    # -- wait --------------------------------------------------------------------------------
    def _child(self, handle: Handle) -> _Child:
        with self._lock:
            child = self._children.get(handle.pid)
            if child is None:  # adopted from an earlier supervisor: not our child, watch it via pidfd
                try:
                    pidfd = os.pidfd_open(handle.pid)
                except OSError:
                    pidfd = None
                child = self._children[handle.pid] = _Child(None, pidfd)
            return child

    def wait(self, handle: Handle, timeout: float) -> ExitStatus | None:
        child = self._child(handle)
        if child.exit is not None:
            return child.exit
        if child.pidfd is not None:
            poller = select.poll()
            poller.register(child.pidfd, select.POLLIN)
            if not poller.poll(max(0, int(timeout * 1000))):
                return None
        elif not procs.wait_until(lambda: not procs.alive(handle.pid), timeout):
            return None
        return self._reap(handle, child)

    def _reap(self, handle: Handle, child: _Child) -> ExitStatus | None:
        if child.popen is not None:
            rc = child.popen.poll()
            if rc is None:
                return None
            child.exit = ExitStatus(exit_code=rc if rc >= 0 else None, signal=-rc if rc < 0 else None)
        else:
            if procs.alive(handle.pid, handle.start_time):
                return None
            child.exit = ExitStatus(exit_code=None, reason="adopted process; exit code unknown")
        if child.pidfd is not None:
            os.close(child.pidfd)
            child.pidfd = None
        return child.exit

    def alive(self, handle: Handle) -> bool:
        if procs.same_process(handle.pid, handle.start_time, handle.boot):
            return True
        return bool(handle.pgid and run_pids(handle))

    def adoptable(self, handle: Handle) -> bool:
        """The leader itself must live and be the same process (pid + start time + boot): a reused pid is
        not ours, and a dead leader with stray children is a finished attempt whose leftovers get stopped."""
        return procs.same_process(handle.pid, handle.start_time, handle.boot)

    def recover_launch(self, token: str, log_path: str, gpus: list[int] | None, boot: str | None, *,
                       adopt: bool) -> Recovered:
        """The launch's processes are proven ours by its token, never by a pid or a group id alone; its
        leader is the one that leads its own session and group."""
        same_boot = boot in (None, procs.boot_id())
        pids = procs.pids_with_env(procs.RUN_TOKEN_VAR, token) if same_boot else []
        leader = next((p for p in pids if (ps := procs.stat(p)) and ps.sid == p and ps.pgid == p), None)
        if adopt and leader is not None:
            return Recovered(handle=Handle(kind=self.kind, log_path=log_path, gpus=gpus, pid=leader, pgid=leader,
                                           sid=leader, start_time=float(procs.start_ticks(leader) or 0),
                                           token=token, boot=procs.boot_id()))
        if not pids:
            return Recovered()
        return Recovered(stopped=len(pids), survivors=procs.kill_marked(procs.RUN_TOKEN_VAR, token))

    def sample_gpus(self, handle: Handle, gpus: list[int]) -> GpuSample:
        """NVML on this machine; the run token also finds ranks that left the session (torchrun's)."""
        from lights_out_dev.host import nvml

        return GpuSample(gpus=[i for i in nvml.query_gpus() if i.index in gpus], pids=set(run_pids(handle)))

    # -- stop --------------------------------------------------------------------------------
    def stop(self, handle: Handle, graceful: bool, grace_s: float) -> list[int]:
        pgid = handle.pgid or handle.pid
        sid = handle.sid or pgid
        mark = {"token": handle.token, "since_ticks": handle.start_time, "boot": handle.boot}
        child = self._child(handle)
        # pid -> start time of every process seen as the run's: one that only its parent tied to the run
        # (own session, no token) is no longer found once that parent is dead, but it is still ours
        seen: dict[int, int | None] = {}

        def note(pids: list[int]) -> list[int]:
            for pid in pids:
                seen.setdefault(pid, procs.start_ticks(pid))
            return pids

        note(run_pids(handle))

        def escaped() -> list[int]:
            now = set(run_pids(handle))
            return [p for p, t in seen.items() if p not in now and t is not None and procs.alive(p, t)]

        def gone() -> bool:
            self._reap(handle, child)  # a zombie leader of ours must be reaped, or it never leaves
            return not note(run_pids(handle)) and not escaped()

        if graceful:
            for sig, grace in ((signal.SIGINT, grace_s), (signal.SIGTERM, min(grace_s, TERM_GRACE_S))):
                procs.signal_run(pgid, sig, sid, **mark)
                if procs.wait_until(gone, grace):
                    break
        procs.signal_run(pgid, signal.SIGKILL, sid, **mark)

        def kill_escaped() -> bool:
            for pid in escaped():
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            return gone()

        procs.wait_until(kill_escaped, GONE_TIMEOUT_S)
        survivors = set(run_pids(handle)) | set(escaped())
        gpus = handle.gpus
        if gpus:  # the driver frees memory after the process table entry goes; wait for NVML too
            procs.wait_until(lambda: not (_gpu_pids(gpus) & set(seen)), GONE_TIMEOUT_S, max_sleep=0.25)
            survivors |= _gpu_pids(gpus) & set(seen)
        self._reap(handle, child)
        return sorted(survivors)

    def forget(self, handle: Handle) -> None:
        """Drop bookkeeping for a finished run (the pidfd is closed on reap)."""
        with self._lock:
            child = self._children.pop(handle.pid, None)
        if child and child.pidfd is not None:
            os.close(child.pidfd)
