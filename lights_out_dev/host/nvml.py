"""GPU state through NVML (nvidia-ml-py's `pynvml`): memory, utilisation, power, clocks, processes.

NVML is initialised once per process and never shut down (the monitor polls it every few
seconds). Readings a GPU does not support (power on some boards, clocks under MIG) are None.
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field

from lights_out_dev.errors import LightsOutError

MIB = 1024 * 1024


class NvmlUnavailable(LightsOutError):
    """No usable NVIDIA driver; str() is one sentence for the user."""


@dataclass
class GpuProc:
    pid: int
    used_mb: float | None
    command: str


@dataclass
class GpuInfo:
    index: int
    name: str
    uuid: str
    mem_used_mb: float
    mem_total_mb: float
    util_pct: float | None
    power_w: float | None
    power_limit_w: float | None
    sm_clock_mhz: int | None
    sm_clock_max_mhz: int | None
    temp_c: int | None
    processes: list[GpuProc] = field(default_factory=list)

    @property
    def mem_pct(self) -> float:
        return 100.0 * self.mem_used_mb / self.mem_total_mb if self.mem_total_mb else 0.0


_lock = threading.Lock()
_state: dict = {}  # "nvml": the module once initialised, or "error": the NvmlUnavailable message


def _nvml():
    with _lock:
        if "nvml" in _state:
            return _state["nvml"]
        if "error" in _state:
            raise NvmlUnavailable(_state["error"])
        try:
            import pynvml

            pynvml.nvmlInit()
        except ImportError:
            _state["error"] = "the nvidia-ml-py package is not installed; run `pip install nvidia-ml-py`."
        except Exception as e:  # pynvml.NVMLError_* (library missing, driver not loaded, ...)
            _state["error"] = (f"no NVIDIA driver usable here (NVML: {e}); run this on a machine with an "
                               "NVIDIA GPU and its driver installed.")
        else:
            _state["nvml"] = pynvml
            return pynvml
        raise NvmlUnavailable(_state["error"])


def _maybe(fn, *args):
    """An NVML reading, or None where this GPU does not support it."""
    try:
        return fn(*args)
    except Exception:
        return None


def _command(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace").strip()
    except OSError:  # gone, or another container's process
        return ""


def _procs(nv, handle) -> list[GpuProc]:
    seen: dict[int, GpuProc] = {}
    for getter in ("nvmlDeviceGetComputeRunningProcesses", "nvmlDeviceGetGraphicsRunningProcesses"):
        for p in _maybe(getattr(nv, getter), handle) or []:
            used = p.usedGpuMemory
            mb = used / MIB if isinstance(used, int) and 0 <= used < (1 << 62) else None  # None: not reported
            if p.pid not in seen:
                seen[p.pid] = GpuProc(p.pid, mb, _command(p.pid))
            elif mb is not None:
                seen[p.pid].used_mb = (seen[p.pid].used_mb or 0) + mb
    return list(seen.values())


def _text(v) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _info(nv, index: int) -> GpuInfo:
    h = nv.nvmlDeviceGetHandleByIndex(index)
    mem = nv.nvmlDeviceGetMemoryInfo(h)
    util = _maybe(nv.nvmlDeviceGetUtilizationRates, h)
    power = _maybe(nv.nvmlDeviceGetPowerUsage, h)
    limit = _maybe(nv.nvmlDeviceGetEnforcedPowerLimit, h)
    return GpuInfo(
        index=index,
        name=_text(nv.nvmlDeviceGetName(h)),
        uuid=_text(_maybe(nv.nvmlDeviceGetUUID, h) or ""),
        mem_used_mb=mem.used / MIB,
        mem_total_mb=mem.total / MIB,
        util_pct=float(util.gpu) if util is not None else None,
        power_w=power / 1000.0 if power is not None else None,
        power_limit_w=limit / 1000.0 if limit is not None else None,
        sm_clock_mhz=_maybe(nv.nvmlDeviceGetClockInfo, h, nv.NVML_CLOCK_SM),
        sm_clock_max_mhz=_maybe(nv.nvmlDeviceGetMaxClockInfo, h, nv.NVML_CLOCK_SM),
        temp_c=_maybe(nv.nvmlDeviceGetTemperature, h, nv.NVML_TEMPERATURE_GPU),
        processes=_procs(nv, h),
    )


def query_gpus() -> list[GpuInfo]:
    """Every GPU's state; raises NvmlUnavailable when there is no driver."""
    nv = _nvml()
    return [_info(nv, i) for i in range(nv.nvmlDeviceGetCount())]


def gpu_count() -> int:
    """Number of GPUs; 0 when there is no driver (never raises)."""
    try:
        return _nvml().nvmlDeviceGetCount()
    except Exception:
        return 0


def pids_on_gpu(index: int) -> list[GpuProc]:
    """Processes holding memory on GPU `index` (compute and graphics); raises NvmlUnavailable."""
    nv = _nvml()
    return _procs(nv, nv.nvmlDeviceGetHandleByIndex(index))
