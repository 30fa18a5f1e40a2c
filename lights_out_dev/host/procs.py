"""Process-table helpers (Linux /proc): which processes belong to a run, are they alive, is a pid ours.

A run is its own session and process group (the leader's pid is both ids). Children that moved to a
new process group usually stay in the session, but some leave it: torchrun starts every rank with
start_new_session, and when torchrun is killed its ranks are re-parented to init. So each run also
carries a unique token in its environment (RUN_TOKEN_VAR), which every descendant inherits whatever
its group or session: a run's processes are "group or session or token". Zombies count as gone: they
hold no memory and only wait to be reaped by their parent.

Identity before any signal: a recorded group or session id is trusted only while it is provably still
the run's. Its leader (pid == pgid == sid) alive with the recorded start time proves it (a pid in use as
a group or session id is never handed out again). Once the leader is gone, a process of that group is
the run's only if it started after the leader, on the same boot, and no other live process now owns
the leader's pid; on another boot (after a reboot the start times begin again) only the token counts.
Processes that left both group and session and cleared their environment are still found while their
parent is one of the run's (by parent pid).
"""
from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from typing import Callable, Iterable

PROC = "/proc"
RUN_TOKEN_VAR = "LIGHTS_OUT_RUN_TOKEN"
BOOT_ID_FILE = "/proc/sys/kernel/random/boot_id"


def boot_id() -> str | None:
    """This boot's id: start times (clock ticks after boot) only compare within one boot."""
    try:
        with open(BOOT_ID_FILE) as f:
            return f.read().strip()
    except OSError:
        return None


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


def same_process(pid: int | None, start: float | int | None, boot: str | None = None) -> bool:
    """alive(pid, start), and on the boot it was recorded on (start times restart with every boot)."""
    return alive(pid, start) and (boot is None or boot == boot_id())


def kill_marked(name: str, value: str, timeout: float = 15.0) -> list[int]:
    """SIGKILL every process whose environment holds name=value until none is left; returns survivors.
    Each pid is proven by its own environment right before it is signalled."""
    def gone() -> bool:
        pids = pids_with_env(name, value)
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        return not pids

    wait_until(gone, timeout)
    return pids_with_env(name, value)


def _all_stats() -> Iterable[ProcStat]:
    for name in os.listdir(PROC):
        if name.isdigit():
            s = stat(int(name))
            if s is not None:
                yield s


def _has_env(pid: int, name: str, value: str) -> bool:
    try:
        with open(f"{PROC}/{pid}/environ", "rb") as f:
            return f"{name}={value}".encode() in f.read().split(b"\0")
    except OSError:  # gone, or another user's process
        return False


def _has_token(pid: int, token: str) -> bool:
    return _has_env(pid, RUN_TOKEN_VAR, token)


def _proven_group(pgid: int, leader_ticks: int | None, boot: str | None,
                  stats: dict[int, ProcStat]) -> tuple[bool, bool]:
    """(leader proven alive, group/session members may be trusted) for a recorded group id."""
    if leader_ticks is None:  # caller without a recorded start time: plain group/session match
        return False, True
    if boot is not None and boot != boot_id():
        return False, False
    leader = stats.get(pgid)
    if leader is None:
        return False, True
    return leader.start_ticks == int(leader_ticks), leader.start_ticks == int(leader_ticks)


def run_pids(pgid: int, sid: int | None = None, include_zombies: bool = False, token: str | None = None,
             since_ticks: float | int | None = None, boot: str | None = None) -> list[int]:
    """Pids of the run whose leader is `pgid` (the session id is the same unless `sid` says otherwise):
    members of its group or session, processes carrying its environment `token`, and descendants of any
    of those by parent pid. With `since_ticks` (the leader's start) and `boot` (boot_id() at launch),
    group and session members count only as the module docstring says; only processes started at or
    after the leader can be descendants, so only their environments are read."""
    sid = pgid if sid is None else sid
    floor = int(since_ticks or 0)
    stats = {s.pid: s for s in _all_stats()}
    _, trust_ids = _proven_group(pgid, since_ticks, boot, stats)
    same_boot = boot is None or boot == boot_id()
    found: set[int] = set()
    for s in stats.values():
        if since_ticks is not None and same_boot and s.start_ticks < floor:
            continue
        if (trust_ids and (s.pgid == pgid or s.sid == sid)) or (token is not None and _has_token(s.pid, token)):
            found.add(s.pid)
    if since_ticks is not None and found:  # descendants that left group and session and cleared the token
        children: dict[int, list[ProcStat]] = {}
        for s in stats.values():
            children.setdefault(s.ppid, []).append(s)
        todo = list(found)
        while todo:
            for child in children.get(todo.pop(), []):
                if child.pid not in found and child.start_ticks >= floor:
                    found.add(child.pid)
                    todo.append(child.pid)
    return sorted(p for p in found if include_zombies or stats[p].state not in ("Z", "X"))


def pids_with_env(name: str, value: str) -> list[int]:
    """Live pids whose environment holds name=value (a marker only our own launches carry)."""
    return sorted(s.pid for s in _all_stats() if s.state not in ("Z", "X") and _has_env(s.pid, name, value))


def sleeping(pids: Iterable[int]) -> bool:
    """True if every pid is in interruptible sleep (S) - 'alive but doing nothing'."""
    states = [s.state for s in (stat(p) for p in pids) if s is not None]
    return bool(states) and all(st == "S" for st in states)


def signal_run(pgid: int, sig: int, sid: int | None = None, token: str | None = None,
               since_ticks: float | int | None = None, boot: str | None = None) -> list[int]:
    """Send `sig` once to every process proven to be the run's (see run_pids); returns the pids signalled.

    The whole group gets one killpg only while its leader is proven alive (pid and start time), which
    also reaches a child forked a moment ago; a recorded group whose leader is gone or not ours is never
    signalled as a group. A second SIGINT would turn a trainer's graceful shutdown into an abort, so
    members of the signalled group are not signalled again."""
    stats = {s.pid: s for s in _all_stats()}
    leader_ok, _ = _proven_group(pgid, since_ticks, boot, stats)
    if since_ticks is None:  # no recorded start time: the group id alone is all the caller knows
        leader_ok = True
    hit: list[int] = []
    members = run_pids(pgid, sid, token=token, since_ticks=since_ticks, boot=boot)  # before the group dies:
    if leader_ok:  # a descendant known only by its parent pid is found while that parent lives
        try:
            os.killpg(pgid, sig)
            hit.append(pgid)
        except (ProcessLookupError, PermissionError):
            pass
    for pid in members:
        s = stat(pid)
        if s is None or (leader_ok and s.pgid == pgid):  # gone, or signalled through its group already
            continue
        try:
            os.kill(pid, sig)
            hit.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return hit


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

