"""Who runs a plan, and each of its runs: a file lock (held for the life of the process; the kernel frees it
when the process dies, however it dies) with an owner file beside it naming the holder (pid, host) to others.
A sweep refuses to start a plan (or a run) another live process holds, and says which process it is.
"""
from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path

from filelock import FileLock, Timeout

from lights_out_dev.core.state import atomic_write_text
from lights_out_dev.host import procs
from lights_out_dev.sweep.paths import SweepPaths

HOLDER_WAIT_S = 2.0  # time a just-started sweep process gets to write its pid beside the lock it took


def try_lock(path: Path, owner: Path) -> FileLock | None:
    """Non-blocking flock; on success record our pid beside it (to name the holder to others)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return None
    try:
        atomic_write_text(owner, json.dumps({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}))
    except OSError:
        pass  # the lock is what excludes; the owner file only names the holder
    return lock


def holder(owner: Path, wait_s: float = 0.0) -> int | None:
    """The pid recorded beside a held lock. A lock taken a moment ago may not name its new holder yet (the
    file is missing or still names the previous, dead holder): `wait_s` gives the holder time to write it."""
    deadline = time.monotonic() + wait_s
    while True:
        try:
            doc = json.loads(owner.read_text())
            pid, host = int(doc["pid"]), doc.get("host")
        except (OSError, ValueError, KeyError, TypeError):
            pid, host = None, None
        current = pid is not None and (host != socket.gethostname() or procs.alive(pid))
        if current or time.monotonic() >= deadline:
            return pid if current else None
        time.sleep(0.05)


def live_holder(p: SweepPaths) -> int | None:
    """The pid of the live process holding the plan's lock (-1: held, holder unnamed); None when free."""
    if not p.lock.exists():
        return None
    lock = FileLock(str(p.lock), timeout=0, thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return holder(p.owner, wait_s=HOLDER_WAIT_S) or -1
    lock.release()
    return None
