"""`events_command` hooks, run off the supervision path.

A hook is a user's program (a notifier, a webhook call); it must never slow a supervisor down. Events
go into a bounded queue that one worker thread empties, a hook at a time, each with a time limit; when
the queue is full (a hook far slower than the events) the event is dropped from the hook, never from
events.jsonl, and that is said once on stderr. The hook runs in a session of its own: it has ended when
its own process has exited (a background child it leaves behind holding stdout does not keep it
"running"), and what it left behind in that session is then stopped, so no hook leaves orphans. At exit
the queue gets a bounded time to drain, so the last event (sweep_finished) still reaches the hook.
"""
from __future__ import annotations

import atexit
import os
import queue
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time

HOOK_TIMEOUT_S = 10.0
QUEUE_MAX = 256
DRAIN_AT_EXIT_S = 15.0

_queue: queue.Queue = queue.Queue(maxsize=QUEUE_MAX)
_worker: threading.Thread | None = None
_start_lock = threading.Lock()
_dropped = 0


def _warn(text: str) -> None:
    print(f"lights-out: {text}", file=sys.stderr)


def run_hook(command: list[str], line: str, timeout: float | None = None) -> str | None:
    """Run one hook with the event line on stdin (at most `timeout`, default HOOK_TIMEOUT_S); None when it
    exited 0, else what went wrong."""
    timeout = HOOK_TIMEOUT_S if timeout is None else timeout
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=err,
                                    start_new_session=True, close_fds=True)
        except OSError as e:
            return f"could not start ({e.strerror or e})"
        try:
            proc.stdin.write(line.encode())
            proc.stdin.close()
        except OSError:  # it exited without reading: its exit status says the rest
            pass
        fd = os.pidfd_open(proc.pid)
        try:
            exited = _poll(fd, timeout)
        finally:
            os.close(fd)
        # the hook is our unreaped child: its group id is still its own, so the group is safely ours
        try:
            os.killpg(proc.pid, signal.SIGKILL if not exited else signal.SIGTERM)
        except (ProcessLookupError, PermissionError):
            pass
        rc = proc.wait()
        if not exited:
            return f"timed out after {timeout:.0f}s and was stopped"
        if rc != 0:
            err.seek(0)
            return f"exited {rc}: {err.read().decode(errors='replace').strip()[-300:]}"
    return None


def _poll(fd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def _work() -> None:
    while True:
        command, line, kind = _queue.get()
        try:
            problem = run_hook(command, line)
            if problem:
                _warn(f"events_command {command[0]!r} for event {kind!r} {problem}")
        except Exception as e:  # a hook must never take the worker down
            _warn(f"events_command {command[0]!r} for event {kind!r} failed: {e}")
        finally:
            _queue.task_done()


def submit(command: list[str], line: str, kind: str) -> None:
    """Queue one event for the hook; returns at once."""
    global _worker, _dropped
    with _start_lock:
        if _worker is None:
            _worker = threading.Thread(target=_work, name="events-command", daemon=True)
            _worker.start()
            atexit.register(drain)
    try:
        _queue.put_nowait((command, line, kind))
        _dropped = 0
    except queue.Full:
        if _dropped == 0:
            _warn(f"events_command {command[0]!r} is slower than the events ({QUEUE_MAX} queued); event {kind!r} "
                  f"and later ones skip the hook until it catches up (all are in events.jsonl).")
        _dropped += 1


def drain(timeout: float = DRAIN_AT_EXIT_S) -> bool:
    """Wait (bounded) until every queued event went through the hook; True when none is left."""
    deadline = time.monotonic() + timeout
    while _queue.unfinished_tasks:
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)
    return True
