"""Process-table helpers (Linux /proc): which processes belong to a run, are they alive, is a pid ours.

A run is its own session and process group (the leader's pid is both ids). Children that moved to a
new process group usually stay in the session, but some leave it: torchrun starts every rank with
start_new_session, and when torchrun is killed its ranks are re-parented to init. So each run also
carries a unique token in its environment (RUN_TOKEN_VAR), which every descendant inherits whatever
its group or session: a run's processes are "group or session or token". Zombies count as gone: they
hold no memory and only wait to be reaped by their parent.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass
from typing import Callable, Iterable

PROC = "/proc"
RUN_TOKEN_VAR = "LIGHTS_OUT_RUN_TOKEN"


@dataclass(frozen=True)
class ProcStat:
    pid: int
    state: str  # R, S, D, Z, T, ...
    ppid: int
    pgid: int
    sid: int
    start_ticks: int  # clock ticks after boot; with the pid, identifies one process for this boot


def stat(pid: int) -> ProcStat | None:
    """Parse /proc/<pid>/stat; None when the process does not exist."""
    try:
        with open(f"{PROC}/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # comm is in parentheses and may itself contain spaces or ')': split at the last ')'.
    rest = raw[raw.rfind(")") + 2:].split()
    try:
        return ProcStat(pid=pid, state=rest[0], ppid=int(rest[1]), pgid=int(rest[2]), sid=int(rest[3]),
                        start_ticks=int(rest[19]))
    except (IndexError, ValueError):
        return None


def start_ticks(pid: int) -> int | None:
    s = stat(pid)
    return s.start_ticks if s else None


def start_time(pid: int) -> float | None:
    """When `pid` started, in unix seconds (boot time + its start ticks); None when it does not exist."""
    ticks = start_ticks(pid)
    if ticks is None:
        return None
    try:
        with open(f"{PROC}/stat") as f:
            btime = next(int(line.split()[1]) for line in f if line.startswith("btime "))
    except (OSError, StopIteration, ValueError):
        return None
    return btime + ticks / os.sysconf("SC_CLK_TCK")


def alive(pid: int | None, start: float | int | None = None) -> bool:
    """True if `pid` exists, is not a zombie, and (when `start` is given) is the same process."""
    if not pid:
        return False
    s = stat(pid)
    if s is None or s.state in ("Z", "X"):
        return False
    return start is None or int(start) == s.start_ticks


def _all_stats() -> Iterable[ProcStat]:
    for name in os.listdir(PROC):
        if name.isdigit():
            s = stat(int(name))
            if s is not None:
                yield s


def _has_token(pid: int, token: str) -> bool:
    try:
        with open(f"{PROC}/{pid}/environ", "rb") as f:
            return f"{RUN_TOKEN_VAR}={token}".encode() in f.read().split(b"\0")
    except OSError:  # gone, or another user's process
        return False


def run_pids(pgid: int, sid: int | None = None, include_zombies: bool = False, token: str | None = None,
             since_ticks: float | int | None = None) -> list[int]:
    """Pids in process group `pgid` or session `sid` (default: same id, as for a session leader), or
    carrying the run's environment `token`. Only processes started at or after `since_ticks` (the
    leader's start) can be descendants, so only their environments are read."""
    sid = pgid if sid is None else sid
    floor = int(since_ticks or 0)
    return sorted(s.pid for s in _all_stats()
                  if (include_zombies or s.state not in ("Z", "X"))
                  and (s.pgid == pgid or s.sid == sid
                       or (token is not None and s.start_ticks >= floor and _has_token(s.pid, token))))


def sleeping(pids: Iterable[int]) -> bool:
    """True if every pid is in interruptible sleep (S) - 'alive but doing nothing'."""
    states = [s.state for s in (stat(p) for p in pids) if s is not None]
    return bool(states) and all(st == "S" for st in states)


def signal_run(pgid: int, sig: int, sid: int | None = None, token: str | None = None,
               since_ticks: float | int | None = None) -> None:
    """Send `sig` once to every process of the run: to the process group, then to the run's processes
    outside it (session members that left the group, descendants that left the session). A second SIGINT
    would turn a trainer's graceful shutdown (saving its checkpoint) into an abort."""
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass
    for pid in run_pids(pgid, sid, token=token, since_ticks=since_ticks):
        s = stat(pid)
        if s is None or s.pgid == pgid:  # gone, or signalled through its group already
            continue
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def wait_until(pred: Callable[[], bool], timeout: float, first_sleep: float = 0.005,
               max_sleep: float = 0.1) -> bool:
    """Poll `pred` with short, growing sleeps (never one fixed long sleep); True once it holds."""
    deadline = time.monotonic() + timeout
    delay = first_sleep
    while True:
        if pred():
            return True
        left = deadline - time.monotonic()
        if left <= 0:
            return False
        time.sleep(min(delay, left))
        delay = min(delay * 2, max_sleep)

