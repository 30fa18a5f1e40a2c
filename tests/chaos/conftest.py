"""Shared pieces of the chaos tests: real supervisors in child processes, canary processes, repo copies."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

TESTS = Path(__file__).resolve().parents[1]
ROOT = TESTS.parent
if str(TESTS) not in sys.path:  # the helpers of the main suite (repo copies, doit argv, state readers)
    sys.path.insert(0, str(TESTS))

# A process that belongs to nobody's run: it records every signal it can catch and survives them, so a
# test sees a stray SIGINT/SIGTERM as well as a SIGKILL (which ends it).
CANARY = textwrap.dedent("""
    import signal, sys, time
    log = open(sys.argv[1], "a", buffering=1)
    def note(signum, frame):
        log.write(f"{signum}\\n")
    for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
        signal.signal(s, note)
    print("ready", flush=True)
    while True:
        time.sleep(0.2)
""")


class Canary:
    """A foreign process group (its own session); `hits()` lists the signals it got, `alive()` if not killed."""

    def __init__(self, tmp: Path):
        self.log = tmp / f"canary-{os.getpid()}-{len(list(tmp.glob('canary-*')))}.log"
        self.log.touch()
        self.proc = subprocess.Popen([sys.executable, "-c", CANARY, str(self.log)], stdout=subprocess.PIPE,
                                     text=True, start_new_session=True)
        assert self.proc.stdout.readline().strip() == "ready"

    @property
    def pid(self) -> int:
        return self.proc.pid

    def hits(self) -> list[str]:
        return self.log.read_text().split()

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture
def canary(tmp_path):
    c = Canary(tmp_path)
    yield c
    c.stop()


def processes_with(marker: str) -> list[int]:
    """Live pids whose command line or environment holds `marker`, found independently of lights-out."""
    from lights_out_dev.host import procs

    found = []
    for name in os.listdir("/proc"):
        if not name.isdigit() or int(name) == os.getpid():
            continue
        try:
            blob = Path(f"/proc/{name}/cmdline").read_bytes() + Path(f"/proc/{name}/environ").read_bytes()
        except OSError:
            continue
        if marker.encode() in blob and procs.alive(int(name)):
            found.append(int(name))
    return found
