"""status.py (one compact screen) and watch.py (block until an event needs a decision)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import Attempt, Progress, RunState, save_state
from lights_out_dev.host.nvml import gpu_count
from lights_out_dev.views import watch

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.timeout(60)


@pytest.mark.parametrize("event,code", [
    ({"kind": "sweep_finished", "ok": True}, 0),
    ({"kind": "sweep_finished", "ok": False}, 1),
    ({"kind": "completed"}, 10),
    ({"kind": "timeout"}, 11),
    ({"kind": "retry"}, 12),
    ({"kind": "gave_up"}, 13),
    ({"kind": "failed"}, 14),
    ({"kind": "preflight_failed"}, 15),
    ({"kind": "refused"}, 16),
    ({"kind": "stopped"}, 17),
    ({"kind": "started"}, None),
    ({"kind": "healthy"}, None),
])
def test_exit_code_table(event, code):
    assert watch.exit_code(event) == code


def test_events_kinds_lists_every_kind_the_package_emits():
    """An agent's wait_for_event refuses kinds outside events.KINDS: a kind emitted but not listed could
    never be waited for, a listed one never emitted would be waited for in vain."""
    import ast

    from lights_out_dev.host import events

    emitted = set()
    for path in (ROOT / "lights_out_dev").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "emit":
                # events.emit(root, cfg, KIND, ...) or a run's own emit(KIND, ...)
                kind = node.args[2] if len(node.args) > 2 else node.args[0] if node.args else None
                if isinstance(kind, ast.Constant):
                    emitted.add(kind.value)
    end_of_run = {"completed", "timeout", "pruned", "failed"}  # the supervisor names its last event after the status
    assert emitted | end_of_run == set(events.KINDS)


def test_describe_and_partial_lines(tmp_path: Path):
    assert watch.describe({"kind": "retry", "task": "cartpole:base", "index": 3, "verdict": "crash",
                           "action": "retry"}) == "event retry run 3 cartpole:base verdict=crash action=retry"
    f = tmp_path / "events.jsonl"
    f.write_text('{"kind": "started"}\nnot json\n{"kind": "comp')  # half-written last line waits
    events, offset = watch.read_new(f, 0)
    assert events == [{"kind": "started"}] and offset == len('{"kind": "started"}\nnot json\n')


def run_script(root: Path, script: str, *args: str, timeout: float = 30) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTS_OUT_ROOT": str(root), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", f"lights_out_dev.cli.{script}", *args], env=env,
                          capture_output=True, text=True, timeout=timeout)


def test_watch_returns_at_the_first_decision_event_with_the_log_tail(tmp_path: Path):
    logs = tmp_path / "local_experiment_logs"
    logs.mkdir()
    events = logs / "events.jsonl"
    events.write_text(json.dumps({"kind": "completed", "task": "old"}) + "\n")  # history: ignored
    log = logs / "run.log"
    log.write_text("".join(f"line {i}\n" for i in range(40)))
    env = {**os.environ, "LIGHTS_OUT_ROOT": str(tmp_path), "PYTHONPATH": str(ROOT)}
    p = subprocess.Popen([sys.executable, "-m", "lights_out_dev.cli.watch", "--until-event", "--timeout", "30",
                          "--interval", "1", "--only", "gave_up,sweep_finished"], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(1.5)
    with open(events, "a") as f:
        f.write(json.dumps({"kind": "started", "task": "cartpole:base"}) + "\n")
        f.write(json.dumps({"kind": "completed", "task": "other:task"}) + "\n")  # not in --only
        f.write(json.dumps({"kind": "gave_up", "task": "cartpole:base", "index": 2, "verdict": "config_error",
                            "log_path": str(log)}) + "\n")
    out, _ = p.communicate(timeout=20)
    assert p.returncode == 13, out
    assert "event gave_up run 2 cartpole:base verdict=config_error" in out
    assert "line 39" in out and "line 20" not in out
    assert "old" not in out and "other:task" not in out


def test_watch_timeout_prints_status_lines(tmp_path: Path):
    p = run_script(tmp_path, "watch", "--until-event", "--timeout", "1.5", "--interval", "0.5")
    assert p.returncode == 124, p.stdout + p.stderr
    assert "no sweep" in p.stdout and "no decision event within 1.5s" in p.stdout


def _spec(envs: int) -> RunSpec:
    return RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=[], script="workloads/train.py",
                   trainer_task="Lo-Cartpole-v0", num_envs=envs, time_limit_s=600.0)


def test_status_shows_every_run_of_the_current_sweep(tmp_path: Path):
    (tmp_path / "sweeps").mkdir()
    plan = tmp_path / "sweeps" / "s.yaml"
    plan.write_text("name: s\nruns:\n  - task: cartpole:base\n    grid: {num_envs: [16, 32, 64]}\n")
    sdir = tmp_path / "local_experiment_logs" / "sweeps" / "s"
    (sdir / "runs").mkdir(parents=True)
    (sdir / "sweep.json").write_text(json.dumps({"name": "s", "plan": str(plan), "started_at": time.time()}))
    (sdir.parent / "current").write_text("s\n")
    now = time.time()
    save_state(RunState(run_key="a", rid="r", run_name="n", task="cartpole:base", spec=_spec(16), status="completed",
                        attempts=[Attempt(number=1, argv=[], gpus=None, started_at=now - 100, ended_at=now - 40,
                                          progress=Progress(iteration=5, total=5, steps_per_s=900, mean_reward=24.5))],
                        sweep="s", index=1), sdir / "runs" / "01.json")
    save_state(RunState(run_key="b", rid="r", run_name="n", task="cartpole:base", spec=_spec(32), status="running",
                        attempts=[Attempt(number=1, argv=[], gpus=None, started_at=now - 30, verdict="crash"),
                                  Attempt(number=2, argv=[], gpus=None, started_at=now - 10,
                                          progress=Progress(iteration=2, total=5, steps_per_s=800, mean_reward=12))],
                        sweep="s", index=2), sdir / "runs" / "02.json")
    p = run_script(tmp_path, "status", "--json")
    assert p.returncode == 0, p.stderr
    data = json.loads(p.stdout)
    assert data["sweep"] == "s" and data["counts"] == {"completed": 1, "running": 1, "pending": 1}
    rows = {r["index"]: r for r in data["runs"]}
    assert (rows[1]["iteration"], rows[1]["total"], rows[1]["reward"], rows[1]["attempts"]) == (5, 5, 24.5, 1)
    assert rows[2]["status"] == "running" and rows[2]["attempts"] == 2 and rows[2]["where"] == "cpu"
    assert 25 <= rows[2]["elapsed_s"] <= 45  # both attempts, the live one up to now
    assert rows[3]["status"] == "pending"
    text = run_script(tmp_path, "status").stdout
    lines = text.splitlines()
    assert lines[0] == "sweep s: 1 completed, 1 pending, 1 running"
    assert " 2 running" in lines[2] and "it 2/5" in lines[2] and "a2" in lines[2] and "/10m" in lines[2]
    if gpu_count() == 0:
        assert lines[-1] == "no GPU: 2 CPU slots (0 in use)"


@pytest.mark.parametrize("row,text", [
    ({"status": "running", "silent_s": 95.4}, "silent for 95 s"),
    ({"status": "running", "silent_s": 3.0}, ""),  # a trainer between two lines
    ({"status": "running", "silent_s": None}, ""),
])
def test_silence_in_status_lines(row, text):
    from lights_out_dev.views.status import silence

    assert silence(row) == text


def test_a_cursor_names_the_offset_after_each_event(tmp_path: Path):
    f = tmp_path / "events.jsonl"
    a, b = json.dumps({"kind": "started"}) + "\n", json.dumps({"kind": "gave_up"}) + "\n"
    f.write_text(a + b)
    found, end = watch.read_after(f, 0)
    assert [(e["kind"], after) for e, after in found] == [("started", len(a)), ("gave_up", len(a) + len(b))]
    assert watch.read_after(f, len(a))[0][0][0]["kind"] == "gave_up"  # from a cursor: only what came after
    f.write_text(b)  # replaced by a shorter file: a stale cursor reads it from the start
    assert [e["kind"] for e, _ in watch.read_after(f, end)[0]] == ["gave_up"]
