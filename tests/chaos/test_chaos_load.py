"""Item 14: the suite asserts behaviour, not speed. The two tests that used to fail on a loaded 2-core
machine (a time limit that counted a slow start-up, a first iteration expected under 0.3 s) run here
while busy loops take every CPU core. (The other part of the item, the graph test's skip condition for
"needs 2 GPUs", only differs on a machine with one GPU.)"""
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
