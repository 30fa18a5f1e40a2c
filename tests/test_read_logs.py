"""read_logs.py as users run it: a script from any directory (and `python -m`), on real files."""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
from torch.utils.tensorboard import SummaryWriter

from lights_out_dev.core import tb

pytestmark = pytest.mark.timeout(120)
REPO = Path(__file__).resolve().parents[1]
LIGHTS_OUT = [str(Path(sys.executable).parent / "lights-out"), "read-logs"]  # the console script
LOGS = Path(__file__).parent / "data" / "logs"


def run(project: Path, *args: str, module: bool = False) -> subprocess.CompletedProcess:
    env = {**os.environ, "LIGHTS_OUT_ROOT": str(project)}
    cmd = [sys.executable, "-m", "lights_out_dev.cli.read_logs"] if module else LIGHTS_OUT
    # cwd is neither the repo nor the project: the console script finds its package by itself.
    return subprocess.run([*cmd, *args], cwd=REPO if module else project.parent, env=env, capture_output=True,
                          text=True, timeout=60)


def make_run(project: Path, name: str, mtime: float, steps: int = 12) -> Path:
    d = project / "logs" / "rsl_rl" / "cartpole" / name
    w = SummaryWriter(str(d))
    for step in range(steps):
        w.add_scalar("Train/mean_reward", 10.0 + step, step)
        w.add_scalar("Perf/total_fps", 1000.0, step)
        if step % 2 == 0:
            w.add_scalar("Loss/value_function", 1.0 / (step + 1), step)
    w.close()
    for f in tb.event_files(d):
        os.utime(f, (mtime, mtime))
    return d


@pytest.fixture
def project(tmp_path) -> Path:
    p = tmp_path / "proj"
    p.mkdir()
    return p


def test_tb_list_and_tb_latest_pick_the_newest_run(project):
    old = make_run(project, "2025-01-01_00-00-00", 1_000_000, steps=3)
    new = make_run(project, "2025-01-02_00-00-00_fast", 2_000_000)
    r = run(project, "tb-list")
    assert r.returncode == 0, r.stderr
    listed = [line.split("  ", 1)[1] for line in r.stdout.splitlines()]
    assert listed == [str(new), str(old)]

    r = run(project, "tb-latest")
    assert r.returncode == 0, r.stderr
    out = r.stdout.splitlines()
    assert out[0] == f"run: {new}"
    reward = next(line for line in out if line.startswith("Train/mean_reward"))
    assert reward.split()[1:3] == ["21", "11"]  # value, step
    assert "12 -> 21 (+75.0%) over 10 pts" in reward
    assert any(line.startswith("Loss/value_function") for line in out)


def test_module_form_and_tb_run(project):
    d = make_run(project, "2025-01-01_00-00-00", 1_000_000, steps=2)
    r = run(project, "tb-run", str(d), "--points", "2", module=True)
    assert r.returncode == 0, r.stderr
    assert "Perf/total_fps" in r.stdout and "over 2 pts" in r.stdout


@pytest.mark.parametrize("content", [b"", b"\x10\x00\x00"])
def test_empty_or_truncated_events_file_is_graceful(project, content):
    d = project / "logs" / "rsl_rl" / "cartpole" / "run"
    d.mkdir(parents=True)
    (d / "events.out.tfevents.1.host").write_bytes(content)
    for args in (("tb-run", str(d)), ("tb-latest",), ("export-csv", str(d))):
        r = run(project, *args)
        assert r.returncode == 0 and "Traceback" not in r.stderr, r.stderr
    assert "no scalars yet" in run(project, "tb-latest").stdout


def test_nothing_to_show(project):
    r = run(project, "tb-latest")
    assert r.returncode == 1 and "no TensorBoard runs" in r.stderr and "Traceback" not in r.stderr
    r = run(project, "stdout-latest")
    assert r.returncode == 1 and "no *.log files" in r.stderr
    r = run(project, "tb-run", str(project / "missing"))
    assert r.returncode == 2 and "does not exist" in r.stderr


def test_stdout_latest_tails_the_newest_log(project):
    logs = project / "local_experiment_logs"
    logs.mkdir()
    (logs / "20250101_000000_old.log").write_text("old\n")
    os.utime(logs / "20250101_000000_old.log", (1, 1))
    (logs / "20250102_000000_new.log").write_text("".join(f"line {i}\n" for i in range(100_000)))
    r = run(project, "stdout-latest", "-n", "3")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [f"==> {logs / '20250102_000000_new.log'} <==", "line 99997", "line 99998",
                                     "line 99999"]


def test_errors_lists_signatures_with_line_numbers(project):
    log = LOGS / "rsl_rl3_isaaclab_oom_exit0.log"
    r = run(project, "errors", str(log))
    assert r.returncode == 0, r.stderr
    lines = log.read_text().splitlines()
    found = r.stdout.splitlines()[:-1]
    assert [f.split(" ")[1] for f in found] == ["[oom]", "[exception]", "[cuda_error]"]
    for f in found:
        no = int(f.split(":")[0])
        assert lines[no - 1].strip() in f
    assert r.stdout.splitlines()[-1] == f"3 finding(s) in {log}"


def test_export_csv(project, tmp_path):
    d = make_run(project, "run", 1_000_000, steps=4)
    out = tmp_path / "m.csv"
    r = run(project, "export-csv", str(d), "--out", str(out))
    assert r.returncode == 0 and "wrote 4 rows" in r.stdout, r.stderr
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["step", "wall_time", "Loss/value_function", "Perf/total_fps", "Train/mean_reward"]
    assert [r["step"] for r in rows] == ["0", "1", "2", "3"]
    assert float(rows[3]["Train/mean_reward"]) == 13.0
    assert rows[1]["Loss/value_function"] == ""  # not logged at odd steps
    assert run(project, "export-csv", str(d)).returncode == 0 and (d / "metrics.csv").exists()


def test_export_csv_keeps_time_tags_out_of_the_iteration_rows(project, tmp_path):
    """rsl_rl's Train/mean_reward/time is stepped by seconds since the start: not an iteration."""
    d = project / "logs" / "rsl_rl" / "cartpole" / "timed"
    w = SummaryWriter(str(d))
    for step in range(3):
        w.add_scalar("Train/mean_reward", 10.0 + step, step)
        w.add_scalar("Train/mean_reward/time", 10.0 + step, 100 + 7 * step)
    w.close()
    out = tmp_path / "m.csv"
    assert run(project, "export-csv", str(d), "--out", str(out)).returncode == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["step", "wall_time", "Train/mean_reward"]
    assert [r["step"] for r in rows] == ["0", "1", "2"]
    walls = [float(r["wall_time"]) for r in rows]
    assert walls == sorted(walls)
    timed = list(csv.DictReader((tmp_path / "m_time.csv").open()))
    assert [r["seconds"] for r in timed] == ["100", "107", "114"] and timed[0]["Train/mean_reward/time"] == "10.0"
