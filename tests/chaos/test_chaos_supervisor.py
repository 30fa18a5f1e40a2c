"""Chaos, one supervised run at a time: the supervisor killed at the worst moment, a recorded process
group that now belongs to someone else, stops that are not failures, output without newlines, a CPU
out-of-memory, a descendant that hides from the run, secrets in the log, leases across checkouts,
writers killed mid-write, slow hooks. Real reference-trainer processes throughout."""
from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from conftest import ROOT, processes_with
from test_supervisor import assert_nothing_left, make_cfg, make_spec, run, verdicts

from lights_out_dev.core.config import PolicyRule, ProjectConfig
from lights_out_dev.core.state import Attempt, RunState, atomic_write_text, load_state
from lights_out_dev.host import gpu_lock, hooks, procs
from lights_out_dev.run.supervisor import spec_fingerprint, supervise

# A supervisor that is SIGKILLed the moment executor.start() returns its N-th trainer: the window between
# starting a trainer and recording it, hit every time.
DIES_AFTER_START = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from lights_out_dev.core.config import ProjectConfig
    from lights_out_dev.executors.local import LocalExecutor
    from lights_out_dev.core.spec import RunSpec
    from lights_out_dev.run.supervisor import supervise

    spec, cfg, root, path, pid_file, nth = sys.argv[1:7]

    class DiesAfterStart(LocalExecutor):
        starts = 0

        def start(self, *a, **kw):
            handle = super().start(*a, **kw)
            DiesAfterStart.starts += 1
            if DiesAfterStart.starts == int(nth):
                Path(pid_file).write_text(str(handle.pid))
                os.kill(os.getpid(), signal.SIGKILL)
            return handle

    supervise(RunSpec.model_validate_json(spec), ProjectConfig.model_validate_json(cfg), Path(root), Path(path),
              executor=DiesAfterStart(cwd=root), status_line=lambda s: print(s, flush=True))
""")


def state_path(tmp_path: Path) -> Path:
    return tmp_path / "logs" / "runs" / "cartpole__sv.json"


@pytest.mark.timeout(300)
@pytest.mark.parametrize("inject, nth", [("slow=0.3@1", 1), ("crash@1", 2)], ids=["first-launch", "retry-launch"])
def test_01_supervisor_killed_between_start_and_record_adopts_the_trainer(tmp_path, inject, nth):
    spec = make_spec(inject, max_iterations=6)
    cfg = make_cfg(tmp_path)
    path, pid_file = state_path(tmp_path), tmp_path / "trainer.pid"
    argv = [sys.executable, "-c", DIES_AFTER_START, spec.model_dump_json(), cfg.model_dump_json(), str(tmp_path),
            str(path), str(pid_file), str(nth)]
    first = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=200)
    assert first.returncode == -signal.SIGKILL, first.stdout.decode()[-2000:]
    trainer = int(pid_file.read_text())
    assert procs.alive(trainer), "the trainer outlives its supervisor (own session)"

    st, lines = run(tmp_path, spec)
    assert any(f"pid {trainer}" in line and "adopting" in line for line in lines), lines
    assert len(st.attempts) == nth and st.attempts[-1].pid == trainer  # adopted, not launched again
    assert st.status == "completed" and st.final.iteration == 6
    assert_nothing_left(st)


# A supervisor asked to stop (Ctrl-C) that is SIGKILLed as its graceful stop begins (SIGTERM, then SIGKILL
# from an impatient user or an init system): its trainer ends while nobody watches.
DIES_IN_STOP = textwrap.dedent("""
    import os, signal, sys
    from pathlib import Path
    from lights_out_dev.core.config import ProjectConfig
    from lights_out_dev.executors.local import LocalExecutor
    from lights_out_dev.core.spec import RunSpec
    from lights_out_dev.core.state import load_state
    from lights_out_dev.run.supervisor import supervise

    spec, cfg, root, path = sys.argv[1:5]

    class DiesInStop(LocalExecutor):
        def stop(self, handle, graceful, grace_s):
            os.kill(os.getpid(), signal.SIGKILL)

    def healthy():
        st = load_state(Path(path))
        return bool(st and st.current and st.current.healthy_at)

    supervise(RunSpec.model_validate_json(spec), ProjectConfig.model_validate_json(cfg), Path(root), Path(path),
              executor=DiesInStop(cwd=root), status_line=lambda s: None, should_stop=healthy)
""")


@pytest.mark.timeout(300)
def test_03_what_a_trainer_does_after_a_stop_began_is_not_its_failure(tmp_path):
    """The stop was written ahead; the rerun finds the trainer ended with an error while being stopped
    (here a config error, in the field an import cut short by the SIGINT) and retries, counting nothing."""
    spec = make_spec("config_error@2", max_iterations=4)
    cfg = make_cfg(tmp_path)
    path = state_path(tmp_path)
    argv = [sys.executable, "-c", DIES_IN_STOP, spec.model_dump_json(), cfg.model_dump_json(), str(tmp_path), str(path)]
    first = subprocess.run(argv, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, timeout=200)
    assert first.returncode == -signal.SIGKILL, first.stderr.decode()[-2000:]
    trainer = load_state(path).current.pid
    assert procs.wait_until(lambda: not procs.alive(trainer), 120)  # it met its config error unwatched

    st, _ = run(tmp_path, spec)
    assert verdicts(st) == ["killed", "completed"] and st.attempts[0].interrupted, [a.reason for a in st.attempts]
    assert "stopped on request" in st.attempts[0].reason
    assert st.status == "completed"
    assert_nothing_left(st)


def fabricated_running_state(tmp_path: Path, spec, pid: int, start_ticks: int, boot: str | None) -> Path:
    """A run left 'running' by a dead supervisor whose recorded trainer pid is now `pid`."""
    log = tmp_path / "logs" / "old.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_text("")
    handle = {"kind": "local", "log_path": str(log), "pid": pid, "pgid": pid, "start_time": float(start_ticks),
              "job_id": None, "node": None, "extra": {"sid": pid, "gpus": None, "token": "0" * 32, "boot": boot}}
    st = RunState(run_key="cartpole__sv", rid="r" * 8, run_name="old", task=spec.task, spec=spec, status="running",
                  supervisor_pid=2 ** 22 - 1, supervisor_host=socket.gethostname(),
                  attempts=[Attempt(number=1, argv=["python", "train.py"], pid=pid, pgid=pid,
                                    started_at=time.time() - 60, log_path=str(log))],
                  extra={"handle": handle, "fingerprint": spec_fingerprint(spec)})
    path = state_path(tmp_path)
    atomic_write_text(path, st.model_dump_json())
    return path


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", ["pid-reused-same-boot", "after-a-reboot"])
def test_02_a_recorded_group_now_someone_elses_is_never_signalled(tmp_path, canary, case):
    """The recorded trainer is dead and its pid (and so its group and session id) belongs to a stranger:
    after pid reuse on this boot (another start time), or after a reboot (even with the same start time)."""
    spec = make_spec(max_iterations=2)
    ticks = procs.start_ticks(canary.pid)
    if case == "pid-reused-same-boot":
        fabricated_running_state(tmp_path, spec, canary.pid, ticks - 7, procs.boot_id())
    else:
        fabricated_running_state(tmp_path, spec, canary.pid, ticks, "another-boot")
    st, _ = run(tmp_path, spec)
    assert st.status == "completed" and st.attempts[0].verdict == "killed"
    assert canary.alive() and canary.hits() == [], f"the stranger's group was signalled: {canary.hits()}"


@pytest.mark.timeout(300)
def test_06_user_stops_do_not_count_as_failures(tmp_path):
    spec = make_spec("crash@1:always", max_iterations=4)
    cfg = make_cfg(tmp_path).model_copy(update={"max_consecutive_failures": 2})
    path = state_path(tmp_path)
    for _ in range(2):  # two Ctrl-C's, each right after the launch
        asked = []

        def stop_after_launch() -> bool:
            asked.append(True)
            return len(asked) > 1  # the pre-launch check passes, the watch loop's first check stops it
        st = supervise(spec, cfg, tmp_path, path, status_line=lambda s: None, should_stop=stop_after_launch)
        assert st.status == "interrupted"
    st = supervise(spec, cfg, tmp_path, path, status_line=lambda s: None)
    assert verdicts(st)[2:] == ["crash", "crash"]
    assert st.attempts[2].decision.startswith("retry")  # 1 failure, not 3: the stops were not failures
    assert [a.interrupted for a in st.attempts] == [True, True, False, False]
    assert st.status == "failed" and "2 consecutive failures" in st.reason
    assert_nothing_left(st)


@pytest.mark.timeout(240)
def test_10_carriage_return_progress_is_output_not_a_stall(tmp_path):
    st, _ = run(tmp_path, make_spec("progress_cr=16@1", max_iterations=3), stall_s=6)
    assert verdicts(st) == ["completed"], [a.reason for a in st.attempts]
    assert_nothing_left(st)


@pytest.mark.timeout(240)
def test_11_cpu_out_of_memory_is_oom(tmp_path):
    cfg_policy = {"oom": PolicyRule(action="give_up", max_attempts=0)}
    cfg = make_cfg(tmp_path).model_copy(update={"policy": cfg_policy})
    st = supervise(make_spec(num_envs=10 ** 12), cfg, tmp_path, state_path(tmp_path), status_line=lambda s: None)
    assert verdicts(st) == ["oom"], st.attempts[0].reason
    assert_nothing_left(st)


@pytest.mark.timeout(240)
def test_12_descendant_that_left_session_and_environment_is_killed(tmp_path):
    cfg = make_cfg(tmp_path, stall_s=8).model_copy(
        update={"policy": {"stall": PolicyRule(action="give_up", max_attempts=0)}})
    # the trainer starts the hidden child, then stalls: the stall kill must take the child too
    st = supervise(make_spec("detached_child@1", max_iterations=50), cfg, tmp_path, state_path(tmp_path),
                   status_line=lambda s: None)
    assert verdicts(st) == ["stall"]
    log = Path(st.attempts[0].log_path).read_text()
    child = int(re.search(r"detached_child at iteration 1: pid (\d+)", log).group(1))
    assert procs.wait_until(lambda: not procs.alive(child), 20), f"the detached descendant {child} survived"
    assert st.attempts[0].survivors == []


@pytest.mark.timeout(240)
def test_12_secret_printed_by_the_trainer_is_redacted_in_the_state(tmp_path, monkeypatch):
    secret = "wandb-" + os.urandom(8).hex()
    monkeypatch.setenv("WANDB_API_KEY", secret)
    st, _ = run(tmp_path, make_spec("print_secret@1", max_iterations=3))
    assert st.status == "completed" and verdicts(st) == ["crash", "completed"]
    assert any("the API key *** was rejected" in line for line in st.attempts[0].log_tail), st.attempts[0].log_tail
    for f in (tmp_path / "logs").rglob("*.json*"):
        assert secret not in f.read_text(errors="replace"), f


HOLD_LEASE = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from lights_out_dev.host import gpu_lock
    from lights_out_dev.core.config import ProjectConfig
    lease = gpu_lock.acquire(1, ProjectConfig(logs_dir=sys.argv[1], cpu_slots=1), Path(sys.argv[2]))
    print("holding", lease.slot, flush=True)
    time.sleep(120)
""")


@pytest.mark.timeout(60)
def test_12_cpu_slots_are_machine_wide_across_checkouts(tmp_path, monkeypatch):
    monkeypatch.setenv("LIGHTS_OUT_LOCKS_DIR", str(tmp_path / "machine-locks"))
    monkeypatch.setattr(gpu_lock, "gpu_count", lambda: 0)
    a, b = tmp_path / "checkout-a", tmp_path / "checkout-b"
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LEASE, str(a / "logs"), str(a)], stdout=subprocess.PIPE,
                              text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    try:
        assert holder.stdout.readline().startswith("holding")
        with pytest.raises(gpu_lock.GpuLockError, match="all 1 CPU slots are taken"):
            gpu_lock.acquire(1, ProjectConfig(logs_dir=str(b / "logs"), cpu_slots=1), b)
    finally:
        holder.kill()
        holder.wait()
    gpu_lock.acquire(1, ProjectConfig(logs_dir=str(b / "logs"), cpu_slots=1), b).release()  # freed by the kernel


WRITER = textwrap.dedent("""
    import sys
    from pathlib import Path
    from lights_out_dev.core.state import atomic_write_text
    blob = "x" * (4 << 20)
    print("writing", flush=True)
    while True:
        atomic_write_text(Path(sys.argv[1]), blob)
""")


@pytest.mark.timeout(120)
def test_12_writers_killed_mid_write_leave_no_tmp_files(tmp_path):
    target = tmp_path / "runs" / "01.json"
    interrupted = 0
    for k in range(8):
        if interrupted and k >= 2:
            break
        w = subprocess.Popen([sys.executable, "-c", WRITER, str(target)], stdout=subprocess.PIPE, text=True,
                             env=dict(os.environ, PYTHONPATH=str(ROOT)))
        assert w.stdout.readline().strip() == "writing"
        time.sleep(0.05 + 0.07 * k)
        w.send_signal(signal.SIGKILL)
        w.wait()
        # the next writer sweeps this one's leftovers, so count them now, before it starts
        interrupted += bool(list(target.parent.glob(".*.tmp")))
    assert interrupted, "no write was interrupted; the test proves nothing"
    if not list(target.parent.glob(".*.tmp")):  # the last kill fell between two writes: leave one for the sweep
        (target.parent / f".{target.name}.{w.pid}.abc.tmp").write_text("torn")
    atomic_write_text(target, "{}")
    assert list(target.parent.glob(".*.tmp")) == []
    assert target.read_text() == "{}"


@pytest.mark.timeout(240)
def test_09_a_slow_hook_does_not_hold_up_supervision(tmp_path, monkeypatch):
    monkeypatch.setattr(hooks, "HOOK_TIMEOUT_S", 60.0)  # slow, but within its limit
    done = tmp_path / "hook.done"
    hook = ["sh", "-c", f"sleep 20; cat >> {done}"]
    cfg = make_cfg(tmp_path).model_copy(update={"events_command": hook})
    st = supervise(make_spec(max_iterations=3), cfg, tmp_path, state_path(tmp_path), status_line=lambda s: None)
    events = (tmp_path / "logs" / "events.jsonl").read_text().splitlines()
    assert st.status == "completed" and len(events) == 3  # started, healthy, completed
    # a hook in the supervision path would have delayed it by 3 x 20 s, all three hooks done by now
    finished = done.read_text().count("\n") if done.exists() else 0
    assert finished < len(events)
    assert hooks.drain(timeout=120)  # and every event still reaches the hook, in order
    assert [json.loads(x)["kind"] for x in done.read_text().splitlines()] == ["started", "healthy", "completed"]


@pytest.mark.timeout(60)
def test_09_a_hook_that_leaves_a_background_child_is_done_and_leaves_no_orphan(tmp_path):
    marker = f"{300 + os.getpid() % 97}.{os.getpid()}"  # a unique sleep duration finds its process
    problem = hooks.run_hook(["sh", "-c", f"sleep {marker} & echo queued"], '{"kind": "started"}\n', timeout=30)
    assert problem is None  # not "timed out": the hook itself exited at once
    assert procs.wait_until(lambda: not processes_with(marker), 10), "the hook's background child was left behind"
