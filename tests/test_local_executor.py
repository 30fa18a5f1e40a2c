"""LocalExecutor, procs and LogTail against real processes (small python -c programs, no trainer)."""
from __future__ import annotations

import os
import signal
import sys
import textwrap
import time

import pytest

from lights_out_dev.executors.local import LaunchError, LocalExecutor
from lights_out_dev.host import procs
from lights_out_dev.run.monitor import LogTail, tail_lines

pytestmark = pytest.mark.timeout(60)
PY = sys.executable


def _start(tmp_path, code: str, name: str = "run.log"):
    ex = LocalExecutor(cwd=tmp_path)
    log = tmp_path / name
    h = ex.start([PY, "-c", textwrap.dedent(code)], dict(os.environ, PYTHONUNBUFFERED="1"), log, None)
    return ex, h, log


def _wait_for(pred, timeout=10.0):
    assert procs.wait_until(pred, timeout), "condition not reached in time"


def test_start_own_session_and_log(tmp_path):
    ex, h, log = _start(tmp_path, "import os; print('sid', os.getsid(0)); print('err', file=__import__('sys').stderr)")
    st = ex.wait(h, 10)
    assert st is not None and st.exit_code == 0 and st.signal is None
    text = log.read_text()
    assert f"sid {h.pid}" in text and "err" in text  # own session; stderr into the same log
    assert h.pgid == h.pid and h.start_time and h.start_time > 0


def test_exit_is_seen_at_once(tmp_path):
    ex, h, _ = _start(tmp_path, "import time; time.sleep(0.5); raise SystemExit(3)")
    t0 = time.monotonic()
    st = None
    while st is None:
        st = ex.wait(h, 5.0)  # one long wait: the pidfd must end it as soon as the process exits
    took = time.monotonic() - t0
    assert st.exit_code == 3
    assert took < 1.2, f"exit noticed after {took:.2f}s"


def test_killed_by_signal_reported(tmp_path):
    ex, h, _ = _start(tmp_path, "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    st = ex.wait(h, 10)
    assert st.exit_code is None and st.signal == signal.SIGSEGV


def test_missing_program_is_one_sentence(tmp_path):
    ex = LocalExecutor(cwd=tmp_path)
    with pytest.raises(LaunchError, match="was not found"):
        ex.start(["/nonexistent/trainer"], dict(os.environ), tmp_path / "x.log", None)


def test_unwritable_log_dir_is_one_sentence(tmp_path):
    blocker = tmp_path / "logs"
    blocker.write_text("a file where the log directory should be")  # fails for root too, unlike chmod
    ex = LocalExecutor(cwd=tmp_path)
    with pytest.raises(LaunchError, match="cannot write the run log"):
        ex.start([PY, "-c", "pass"], dict(os.environ), blocker / "sub" / "x.log", None)


STUBBORN = """
import os, signal, subprocess, sys, time
# a child in another process group of the same session (like a worker pool), and one in our group
subprocess.Popen([sys.executable, "-c", "import os,time; os.setpgid(0,0); time.sleep(60)"])
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
signal.signal(signal.SIGINT, signal.SIG_IGN)
{term}
print("ready", flush=True)
time.sleep(60)
"""


@pytest.mark.parametrize("term,graceful,expect", [
    ("", True, signal.SIGTERM),                                                 # ignores SIGINT -> SIGTERM
    ("signal.signal(signal.SIGTERM, signal.SIG_IGN)", True, signal.SIGKILL),    # ignores both -> SIGKILL
    ("", False, signal.SIGKILL),                                                # failure: SIGKILL at once
])
def test_stop_kills_group_and_session(tmp_path, term, graceful, expect):
    ex, h, log = _start(tmp_path, STUBBORN.format(term=term))
    _wait_for(lambda: "ready" in log.read_text())
    # one child left the group but stays in the session
    _wait_for(lambda: len(procs.run_pids(h.pgid)) == 3 and any(
        (s := procs.stat(p)) and s.pgid != h.pgid for p in procs.run_pids(h.pgid)))
    others = [p for p in procs.run_pids(h.pgid) if p != h.pid]
    t0 = time.monotonic()
    survivors = ex.stop(h, graceful=graceful, grace_s=0.5)
    took = time.monotonic() - t0
    assert survivors == []
    assert procs.run_pids(h.pgid, include_zombies=False) == []
    assert not any(procs.alive(p) for p in [h.pid, *others])
    assert ex.wait(h, 0).signal == expect
    assert took < (3.0 if graceful else 1.0)


ESCAPEE = """
import subprocess, sys, time
# like torchrun's ranks: a child in a session of its own, orphaned when the leader is SIGKILLed
p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], start_new_session=True)
print("child", p.pid, flush=True)
time.sleep(60)
"""


def test_stop_finds_descendants_that_left_the_session(tmp_path):
    """Seen on 2x H200: a torchrun killed for an NCCL fault left a rank holding GPU memory, because
    torchrun starts its ranks with start_new_session. The run token in the environment finds them."""
    ex, h, log = _start(tmp_path, ESCAPEE)
    _wait_for(lambda: "child" in log.read_text())
    child = int(log.read_text().split()[1])
    assert procs.stat(child).sid != h.pid  # outside the run's group and session
    survivors = ex.stop(h, graceful=False, grace_s=0)
    assert survivors == []
    assert not procs.alive(child)


COUNTS_SIGINT = """
import signal, subprocess, sys, time
# one process in the run's group, one that left the group: each must get the stop signal exactly once
subprocess.Popen([sys.executable, "-c", "import os, signal, time; os.setpgid(0, 0); n = []; "
                  "signal.signal(signal.SIGINT, lambda *a: n.append(1)); print('child ready', flush=True); time.sleep(3); "
                  "print('outside', len(n), flush=True)"])
got = []
signal.signal(signal.SIGINT, lambda *a: got.append(1))
print("leader ready", flush=True)
time.sleep(3)
print("leader", len(got), flush=True)
time.sleep(1)
"""


def test_graceful_stop_signals_each_process_once(tmp_path):
    # Isaac Lab's train.py aborts its shutdown on a second KeyboardInterrupt: the group signal and the
    # per-process signal for processes that left the group must not both reach one process.
    ex, h, log = _start(tmp_path, COUNTS_SIGINT)
    _wait_for(lambda: "child ready" in log.read_text() and "leader ready" in log.read_text())
    procs.signal_run(h.pgid, signal.SIGINT, h.pid)
    _wait_for(lambda: "leader" in log.read_text() and "outside" in log.read_text())
    lines = log.read_text().split("\n")
    assert "leader 1" in lines and "outside 1" in lines, lines
    ex.stop(h, graceful=False, grace_s=0)


def test_alive_checks_start_time(tmp_path):
    ex, h, _ = _start(tmp_path, "import time; time.sleep(30)")
    assert ex.alive(h) and procs.alive(h.pid, h.start_time)
    assert not procs.alive(h.pid, h.start_time + 1)  # same pid, other process: not ours
    ex.stop(h, graceful=False, grace_s=0)
    assert not ex.alive(h)


def test_adopted_process_wait(tmp_path):
    """A second executor (a restarted supervisor) can wait on a process it did not start."""
    ex, h, _ = _start(tmp_path, "import time; time.sleep(0.5)")
    other = LocalExecutor(cwd=tmp_path)
    st = None
    t0 = time.monotonic()
    while st is None and time.monotonic() - t0 < 10:
        ex.wait(h, 0.05)  # the real parent reaps it, as init would for an orphan
        st = other.wait(h, 0.05)
    assert st is not None and st.exit_code is None and "unknown" in st.reason


def test_log_tail_incremental_and_partial_lines(tmp_path):
    path = tmp_path / "a.log"
    tail = LogTail(path)
    assert tail.read_lines() == []  # not created yet
    with open(path, "wb", buffering=0) as f:
        f.write(b"one\ntw")
        assert tail.read_lines() == ["one"]
        assert tail.offset == 4
        f.write(b"o\r\nthree")
        assert tail.read_lines() == ["two"]
        assert tail.read_lines(final=True) == ["three"]
        assert tail.offset == path.stat().st_size
    resumed = LogTail(path, offset=4)  # a restarted supervisor continues at the recorded offset
    assert resumed.read_lines(final=True) == ["two", "three"]



@pytest.mark.parametrize("content, n, max_bytes, expected", [
    (b"a\nb\nc\n", 2, 1 << 20, ["b", "c"]),
    (b"a\r\nb\rc", 5, 1 << 20, ["a", "b", "c"]),  # \r\n, a lone \r (a progress bar) and an unterminated line
    (b"".join(b"line %d\n" % i for i in range(50_000)), 3, 1 << 20, ["line 49997", "line 49998", "line 49999"]),
    (b"x" * 200_000 + b"\nlast\n", 2, 1000, ["x" * 994, "last"]),  # one endless line: only max_bytes are read
    (b"", 3, 1 << 20, []),
])
def test_tail_lines_reads_the_end_of_a_log(tmp_path, content, n, max_bytes, expected):
    path = tmp_path / "run.log"
    path.write_bytes(content)
    assert tail_lines(path, n, max_bytes) == expected


def test_tail_lines_of_no_log_is_empty(tmp_path):
    assert tail_lines(None, 5) == [] and tail_lines(tmp_path / "missing.log", 5) == []

# -- the watch loop (monitor.watch) on small real processes; NVML faked where a GPU is needed --------

from lights_out_dev.host import nvml  # noqa: E402
from lights_out_dev.run import monitor  # noqa: E402
from lights_out_dev.run.monitor import Limits, watch  # noqa: E402
from lights_out_dev.run.scan import LogScanner  # noqa: E402

ITERATION_THEN_SLEEP = """
import time
print("Learning iteration 0/5", flush=True)
print("Steps per second: 1000", flush=True)
{extra}
time.sleep(60)
"""


def _limits(**kw) -> Limits:
    base = dict(stall_s=60, startup_stall_s=60, idle_gpu_stall_s=60, time_left_s=None, grace_s=1,
                status_interval_s=60, tick_s=0.05)
    base.update(kw)
    return Limits(**base)


def _watch(tmp_path, extra: str = "", gpus=None, **limits):
    ex, h, log = _start(tmp_path, ITERATION_THEN_SLEEP.format(extra=extra))
    res = watch(ex, h, LogScanner(), _limits(**limits), LogTail(log), gpus=gpus)
    assert res.survivors == [] and not procs.alive(h.pid)
    return res, h


def test_watch_fatal_line_of_a_live_process_stops_it_at_once(tmp_path):
    res, _ = _watch(tmp_path, extra='print("torch.OutOfMemoryError: CUDA out of memory.", flush=True)')
    assert res.trigger == "signature:oom" and res.stopped_by is None
    assert res.exit.signal == signal.SIGKILL


def test_watch_time_limit_is_graceful(tmp_path):
    t0 = time.monotonic()
    res, _ = _watch(tmp_path, time_left_s=1.0)
    assert res.trigger == "timeout" and res.stopped_by == "timeout"
    assert res.exit.signal == signal.SIGINT  # SIGINT came first and sufficed: no SIGTERM/SIGKILL needed
    assert 1.0 <= time.monotonic() - t0 < 4


def test_watch_stall_after_first_iteration(tmp_path):
    res, _ = _watch(tmp_path, stall_s=0.5)
    assert res.trigger == "stall" and res.stopped_by == "stall" and res.healthy_at


def _fake_gpus(monkeypatch, pid_box, utils):
    def query():
        return [nvml.GpuInfo(index=i, name="fake", uuid=f"GPU-{i}", mem_used_mb=1000, mem_total_mb=80000,
                             util_pct=u, power_w=None, power_limit_w=None, sm_clock_mhz=None, sm_clock_max_mhz=None,
                             temp_c=None, processes=[nvml.GpuProc(pid_box[0], 900.0, "python")] if pid_box else [])
                for i, u in enumerate(utils)]
    monkeypatch.setattr(nvml, "query_gpus", query)
    monkeypatch.setattr(nvml, "pids_on_gpu", lambda i: query()[i].processes)
    monkeypatch.setattr(monitor, "GPU_POLL_S", 0.05)


def test_watch_idle_gpu_stall_and_peak_vram(tmp_path, monkeypatch):
    box: list[int] = []
    _fake_gpus(monkeypatch, box, [0.0])
    ex, h, log = _start(tmp_path, ITERATION_THEN_SLEEP.format(extra=""))
    box.append(h.pid)
    res = watch(ex, h, LogScanner(), _limits(idle_gpu_stall_s=0.5), LogTail(log), gpus=[0])
    assert res.trigger == "idle_gpu" and res.stopped_by == "stall"
    assert res.peak_vram_mb == 900.0


def test_watch_multi_gpu_imbalance(tmp_path, monkeypatch):
    box: list[int] = []
    _fake_gpus(monkeypatch, box, [95.0, 3.0])
    ex, h, log = _start(tmp_path, ITERATION_THEN_SLEEP.format(extra=""))
    box.append(h.pid)
    res = watch(ex, h, LogScanner(), _limits(idle_gpu_stall_s=0.5), LogTail(log), gpus=[0, 1])
    assert res.trigger == "imbalance" and res.stopped_by == "imbalance"
    assert "utilisation spread" in res.imbalance
