"""One way a lights-out process is stopped: SIGINT or SIGTERM only set a flag.

A signal that raises (KeyboardInterrupt) can land anywhere: between starting a trainer and recording
it, while the ledger is rewritten, inside a lock. Whatever `try` happens to be around it decides whether
the trainers are stopped. Here the handlers raise nothing; supervisors poll `requested()` in their watch
loops (and before every launch) and stop their trainers gracefully, sweeps stop every run, and the
process exits with 128 + the signal number once everything is down, with one line and no traceback.

A process that was started ignoring SIGINT (`nohup doit ... &` from a script) keeps ignoring it:
only SIGTERM stops it then, as the one who started it asked.
"""
from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager


def let_children_take_sigint() -> None:
    """Make trainers started from here receive the graceful-stop SIGINT even when this process ignores it.

    A command started in the background by a non-interactive shell (`nohup doit sweep &` from a script or
    an agent's tool) ignores SIGINT, and an ignored signal stays ignored across exec: Isaac Lab's train.py
    would then sit through the time limit's SIGINT and lose its last iterations to SIGTERM. A handler that
    does nothing keeps this process ignoring SIGINT, and handlers, unlike SIG_IGN, reset to the default
    in a child. Only the main thread may set handlers; call this from there before starting trainers."""
    if signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        signal.signal(signal.SIGINT, _ignore_here)


def _ignore_here(signum, frame) -> None:
    pass


_requested = threading.Event()
_signum: int | None = None
_installed = False


def _on_signal(signum, frame) -> None:
    global _signum
    _signum = _signum or signum
    _requested.set()


def requested() -> bool:
    """True once SIGINT or SIGTERM reached this process (while handling() is active)."""
    return _requested.is_set()


def signal_name() -> str:
    return signal.Signals(_signum).name if _signum else "a stop request"


def exit_status() -> int | None:
    """128 + the signal that stopped us (130 for SIGINT, 143 for SIGTERM), None when none did."""
    return 128 + _signum if _signum else None


@contextmanager
def handling() -> Iterator[None]:
    """Route SIGINT and SIGTERM to the flag for the duration (main thread only; nested calls share the
    outermost one). The outermost call restores the old handlers and clears the flag on exit."""
    global _installed, _signum
    if _installed or threading.current_thread() is not threading.main_thread():
        yield
        return
    let_children_take_sigint()  # trainers get the default SIGINT even if this process ignores it
    old_int = signal.getsignal(signal.SIGINT)
    old_term = signal.getsignal(signal.SIGTERM)
    if old_int is not _ignore_here:
        signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    _installed = True
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        _installed = False
        _requested.clear()
        _signum = None
