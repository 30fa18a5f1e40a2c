"""Pre-flight checks: pure cores table-tested; the scripts run for real (CPU here)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from lights_out_dev.core.config import GpuGuard, PowerPolicy
from lights_out_dev.host.preflight import (
    allreduce_check,
    guard_verdict,
    power_fix_commands,
)

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = [r"NVIDIA GeForce RTX (3090|4090)$"]


@pytest.mark.timeout(10)
@pytest.mark.parametrize("names, guard, code, fragment", [
    (None, GpuGuard(), 0, "CPU-only machine"),
    (None, GpuGuard(expected_count=4), 42, "expected 4 GPUs but there is no NVIDIA driver"),
    (["NVIDIA GeForce RTX 3090"] * 3, GpuGuard(expected_count=4), 42, "expected 4 GPUs, got 3"),
    (["NVIDIA GeForce RTX 3090", "NVIDIA A100-SXM4-80GB"], GpuGuard(allowed_models=ALLOWED), 43,
     "refusing to train on 'NVIDIA A100-SXM4-80GB'"),
    (["NVIDIA GeForce RTX 3090 Ti"], GpuGuard(allowed_models=ALLOWED), 43, "refusing"),
    (["NVIDIA GeForce RTX 4090", "NVIDIA GeForce RTX 3090"], GpuGuard(allowed_models=ALLOWED, expected_count=2),
     0, "2 GPU(s) allowed"),
    ([], GpuGuard(), 0, "0 GPU(s) allowed"),
])
def test_guard_verdict(names, guard, code, fragment):
    got_code, line = guard_verdict(names, guard)
    assert got_code == code and fragment in line


def test_power_fix_commands_are_the_exact_sudo_lines():
    assert power_fix_commands([0, 1, 2, 3], PowerPolicy(watts=275, sm_clock_mhz=1700)) == [
        "sudo nvidia-smi -pl 275 -i 0,1,2,3", "sudo nvidia-smi -i 0,1,2,3 -lgc 0,1700"]
    assert power_fix_commands([1], PowerPolicy(watts=262.5)) == ["sudo nvidia-smi -pl 262.5 -i 1"]


def preflight(check: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("LIGHTS_OUT_ROOT", None)
    return subprocess.run([sys.executable, "-m", "lights_out_dev.cli.preflight", check], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def project(tmp_path: Path, toml: str) -> Path:
    (tmp_path / "dodo.py").write_text("")
    (tmp_path / "pyproject.toml").write_text(toml)
    return tmp_path


def no_gpu() -> bool:
    from lights_out_dev.host.nvml import gpu_count

    return gpu_count() == 0


@pytest.mark.timeout(60)
@pytest.mark.skipif(not no_gpu(), reason="checks the CPU-only behaviour")
@pytest.mark.parametrize("check, toml, code, fragment", [
    ("gpu_guard", "", 0, "gpu_guard: no NVIDIA driver, CPU-only machine"),
    ("gpu_guard", "[tool.lights_out.gpu_guard]\nexpected_count = 4\n", 42, "expected 4 GPUs"),
    ("power_check", "", 0, "no power policy set"),
    ("power_check", "[tool.lights_out.power]\nwatts = 275\n", 0, "no NVIDIA driver, CPU-only machine"),
    ("gpu_guard", "[tool.lights_out]\nbogus = 1\n", 3, "'bogus' is not a known setting"),
    ("nonsense", "", 2, "usage: python -m lights_out_dev.cli.preflight"),
])
def test_scripts_on_a_cpu_only_machine(tmp_path: Path, check, toml, code, fragment):
    p = preflight(check, project(tmp_path, toml))
    assert p.returncode == code, p.stdout + p.stderr
    assert fragment in p.stdout + p.stderr


@pytest.mark.timeout(120)
@pytest.mark.skipif(not no_gpu(), reason="checks the CPU-only behaviour")
def test_runtime_check_says_plainly_it_checked_cpu_only(tmp_path: Path):
    p = preflight("runtime_check", project(tmp_path, ""))
    assert p.returncode == 0, p.stderr
    assert "checked CPU only" in p.stdout


@pytest.mark.timeout(150)
def test_allreduce_subprocess_path_with_gloo():
    # The same torch.distributed.run path runtime_check uses for NCCL, on CPU with gloo.
    ok, line = allreduce_check(2, "gloo")
    assert ok, line
    assert line == "gloo all-reduce across 2 processes ok"
