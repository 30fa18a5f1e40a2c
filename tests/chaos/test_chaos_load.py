"""Item 14: the suite asserts behaviour, not speed. The two tests that used to fail on a loaded 2-core
machine (a time limit that counted a slow start-up, a first iteration expected under 0.3 s) run here
while two busy loops take the CPU cores."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT

BUSY = "import os\nos.nice(0)\nwhile True:\n    pass\n"
FORMERLY_TIMING_DEPENDENT = [
    "tests/test_supervisor.py::test_time_limit_is_timeout_with_checkpoint",
    "tests/test_trainer.py::test_sigint_during_training_saves_checkpoint_and_exits_130",
]


@pytest.mark.timeout(900)
def test_14_formerly_timing_dependent_tests_pass_under_cpu_load():
    hogs = [subprocess.Popen([sys.executable, "-c", BUSY]) for _ in range(os.cpu_count() or 2)]
    try:
        p = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *FORMERLY_TIMING_DEPENDENT],
                           cwd=ROOT, capture_output=True, text=True, timeout=850)
    finally:
        for h in hogs:
            h.kill()
            h.wait()
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-2000:]
    assert "2 passed" in p.stdout


@pytest.mark.parametrize("visible, refused", [(0, True), (1, False), (2, False)])
def test_14_mgpu_refusal_follows_the_gpus_the_twin_asks_for(visible, refused, tmp_path):
    """The graph test's skip condition: an -mgpu twin asks for every visible GPU (2 without any), so
    "needs 2 GPUs" is the answer only on a machine without GPUs."""
    from lights_out_dev.command import launch_problem
    from lights_out_dev.spec import RunSpec

    gpus = visible or 2
    spec = RunSpec(task="top_dog:base-mgpu", family="top_dog", launcher="lab_mgpu", prefix=[sys.executable],
                   script=str(ROOT / "workloads" / "train.py"), trainer_task="Lo-Reacher-v0", gpus=gpus)
    problem = launch_problem(spec, ROOT, None, visible)
    assert (problem is not None and "needs 2 GPUs" in problem) is refused
