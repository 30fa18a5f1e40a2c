"""gpu_check.py / nvml.py: the no-driver path for real (this machine), the pure checks table-driven,
and the CLI over fixed GPU readings."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from lights_out_dev.cli import gpu_check as gpu_check_cli
from lights_out_dev.core.config import PowerPolicy
from lights_out_dev.host import gpu_check, nvml
from lights_out_dev.host.nvml import GpuInfo, GpuProc

pytestmark = pytest.mark.timeout(60)
REPO = Path(__file__).resolve().parents[1]
LIGHTS_OUT = [str(Path(sys.executable).parent / "lights-out"), "gpu-check"]  # the console script
HAS_DRIVER = nvml.gpu_count() > 0


def gpu(index, util=90.0, mem=40_000.0, total=80_000.0, procs=1, power_limit=275.0, clock=1700):
    return GpuInfo(index=index, name="NVIDIA H100", uuid=f"GPU-{index}", mem_used_mb=mem, mem_total_mb=total,
                   util_pct=util, power_w=200.0, power_limit_w=power_limit, sm_clock_mhz=clock,
                   sm_clock_max_mhz=1980, temp_c=50,
                   processes=[GpuProc(1000 + index, mem, "python train.py --distributed")] * procs)


@pytest.mark.skipif(HAS_DRIVER, reason="needs a machine without an NVIDIA driver")
@pytest.mark.parametrize("args", [[], ["--json"], ["--exit-on-imbalance", "--power-policy"]])
def test_no_driver_is_one_line_and_exit_3(tmp_path, args):
    r = subprocess.run([*LIGHTS_OUT, *args], cwd=tmp_path, capture_output=True, text=True,
                       timeout=60, env={**os.environ, "LIGHTS_OUT_ROOT": str(tmp_path)})
    assert r.returncode == 3
    assert r.stdout == ""
    assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr
    assert "NVIDIA driver" in r.stderr


@pytest.mark.skipif(HAS_DRIVER, reason="needs a machine without an NVIDIA driver")
def test_nvml_without_driver():
    assert nvml.gpu_count() == 0
    with pytest.raises(nvml.NvmlUnavailable, match="NVIDIA driver"):
        nvml.query_gpus()
    with pytest.raises(nvml.NvmlUnavailable):
        nvml.pids_on_gpu(0)


IMBALANCE = [
    ("balanced", [gpu(0), gpu(1)], None),
    ("one GPU cannot be imbalanced", [gpu(0, util=0)], None),
    ("nothing running", [gpu(0, util=0, procs=0), gpu(1, util=99, procs=0)], None),
    ("utilisation spread", [gpu(0, util=97), gpu(1, util=95), gpu(2, util=20)], "utilisation spread 77 points "
                                                                                 "(GPU 0 97%, GPU 2 20%) exceeds 30"),
    ("spread just at the limit", [gpu(0, util=90), gpu(1, util=60)], None),
    ("a rank died: idle GPU without processes", [gpu(0), gpu(1, util=0, mem=500, procs=0)], "utilisation spread 90"),
    ("memory spread", [gpu(0, mem=70_000), gpu(1, mem=20_000)], "memory spread 62 points"),
    ("memory as share of different totals", [gpu(0, mem=40_000, total=80_000), gpu(1, mem=12_000, total=24_000)], None),
    ("utilisation unreadable on one", [gpu(0, util=None), gpu(1, util=5)], None),
]


@pytest.mark.parametrize("gpus,expected", [c[1:] for c in IMBALANCE], ids=[c[0] for c in IMBALANCE])
def test_imbalance(gpus, expected):
    got = gpu_check.imbalance(gpus, util_pct=30, mem_pct=30)
    if expected is None:
        assert got is None
    else:
        assert got is not None and got.startswith("GPU imbalance: ") and expected in got


POWER = [
    ("matches", PowerPolicy(watts=275, sm_clock_mhz=1700), gpu(0), True, "power limit 275 W (policy 275 W) ok"),
    ("limit too high", PowerPolicy(watts=275), gpu(0, power_limit=450), False, "MISMATCH"),
    ("within tolerance", PowerPolicy(watts=275, tolerance_watts=2), gpu(0, power_limit=276.5), True, "ok"),
    ("clock above cap", PowerPolicy(sm_clock_mhz=1700), gpu(0, clock=1980), False, "ABOVE CAP"),
    ("clock one step above cap", PowerPolicy(sm_clock_mhz=1700), gpu(0, clock=1715), True, "ok"),
    ("limit unreadable", PowerPolicy(watts=275), gpu(0, power_limit=None), False, "power limit unreadable"),
    ("clock unreadable", PowerPolicy(sm_clock_mhz=1700), gpu(0, clock=None), True, "SM clock unreadable"),
    ("no policy", PowerPolicy(), gpu(0), True, "no power policy set"),
]


@pytest.mark.parametrize("policy,g,ok,words", [c[1:] for c in POWER], ids=[c[0] for c in POWER])
def test_power_findings(policy, g, ok, words):
    [(got_ok, line)] = gpu_check.power_findings([g], policy)
    assert got_ok is ok and words in line and line.startswith("GPU 0: ")


@pytest.fixture
def fake_gpus(monkeypatch, tmp_path):
    """gpu_check.main over fixed readings; the project config comes from tmp_path."""
    (tmp_path / "pyproject.toml").write_text("[tool.lights_out.power]\nwatts = 275\n")
    monkeypatch.setenv("LIGHTS_OUT_ROOT", str(tmp_path))
    readings = [gpu(0, util=98), gpu(1, util=3, power_limit=450)]
    monkeypatch.setattr(nvml, "query_gpus", lambda: readings)
    return readings


def test_cli_text_json_and_exit_codes(fake_gpus, capsys):
    assert gpu_check_cli.main([]) == 0
    out = capsys.readouterr().out
    assert [line.split("  ")[0] for line in out.splitlines() if line.startswith("GPU ")] == ["GPU 0", "GPU 1",
                                                                                         "GPU imbalance: utilisation"
                                                                                         " spread 95 points (GPU 0 98%,"
                                                                                         " GPU 1 3%) exceeds 30"]
    assert "pid 1000" in out
    assert gpu_check_cli.main(["--exit-on-imbalance"]) == 1
    capsys.readouterr()
    assert gpu_check_cli.main(["--exit-on-imbalance", "--gpus", "0"]) == 0
    capsys.readouterr()
    assert gpu_check_cli.main(["--json", "--power-policy"]) == 1  # GPU 1's limit is 450 W, policy 275 W
    doc = json.loads(capsys.readouterr().out)
    assert [g["index"] for g in doc["gpus"]] == [0, 1] and doc["imbalance"].startswith("GPU imbalance")
    assert [p["ok"] for p in doc["power_policy"]] == [True, False]
    assert doc["gpus"][0]["processes"][0]["command"] == "python train.py --distributed"


def test_cli_unknown_gpu_is_one_sentence(fake_gpus, capsys):
    assert gpu_check_cli.main(["--gpus", "7"]) == 2
    assert "GPU 7 does not exist" in capsys.readouterr().err


def test_format_tolerates_unsupported_readings_and_multiline_commands():
    g = GpuInfo(0, "Tesla", "u", 1.0, 2.0, None, None, None, None, None, None, [GpuProc(1, None, "python -c a\nb")])
    lines = gpu_check.format_gpu(g)
    assert "util ?" in lines[0] and lines[1].endswith("python -c a b") and len(lines) == 2
