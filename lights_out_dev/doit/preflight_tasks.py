"""Pre-flight doit tasks: every experiment task_dep's gpu_guard; -mgpu ones also power_check."""
from __future__ import annotations

from lights_out_dev.doit.outcome import action

__all__ = ["task_gpu_guard", "task_power_check", "task_runtime_check"]


@action
def _check(name: str):
    from lights_out_dev.host.preflight import (
        doit_action,  # lazy: `doit list` must not import torch/NVML
    )

    return doit_action(name)


def task_gpu_guard():
    """GPU models and count match [tool.lights_out.gpu_guard] (passes on CPU-only machines)."""
    return {"actions": [(_check, ["gpu_guard"])], "verbosity": 2}


def task_power_check():
    """GPU power limit and SM clock cap match [tool.lights_out.power]; prints the sudo fix if not."""
    return {"actions": [(_check, ["power_check"])], "verbosity": 2}


def task_runtime_check():
    """torch computes on every GPU (conv forward+backward) and NCCL all-reduces across them."""
    return {"actions": [(_check, ["runtime_check"])], "verbosity": 2}
