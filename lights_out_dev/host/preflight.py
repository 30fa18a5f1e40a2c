"""Pre-flight checks run before experiments (doit tasks in lights_out_dev/doit/preflight_tasks.py, or Slurm job steps):

    python -m lights_out_dev.cli.preflight gpu_guard      exit 42: GPU count mismatch, 43: disallowed model
    python -m lights_out_dev.cli.preflight power_check    exit 1: power limit / SM clock cap not as configured
    python -m lights_out_dev.cli.preflight runtime_check  exit 1: torch cannot compute on (or between) the GPUs

They only read GPU settings, never change them: on a mismatch power_check prints the exact
`sudo nvidia-smi` commands for a person to run. The cores (`guard_verdict`, `power_fix_commands`, and
`lights_out_dev.host.gpu_check.power_findings` for the power policy) are pure and table-tested; the rest reads NVML (lights_out_dev.host.nvml).
"""
from __future__ import annotations

import os
import re
import subprocess
import sys

from lights_out_dev.core.config import (
    PACKAGE_PARENT,
    GpuGuard,
    PowerPolicy,
    load_config,
    project_root,
)
from lights_out_dev.host.gpu_check import power_findings

EXIT_COUNT_MISMATCH = 42
EXIT_DISALLOWED_MODEL = 43
EXIT_FAILED = 1
ALLREDUCE_TIMEOUT_S = 120


def guard_verdict(names: list[str] | None, guard: GpuGuard) -> tuple[int, str]:
    """(exit code, line) for the GPU models seen (None = no NVIDIA driver). Pure."""
    if names is None:
        if guard.expected_count:
            return EXIT_COUNT_MISMATCH, (f"gpu_guard: expected {guard.expected_count} GPUs but there is no NVIDIA "
                                         "driver on this machine; run where GPUs are allocated.")
        return 0, "gpu_guard: no NVIDIA driver, CPU-only machine: nothing to guard, passing."
    if guard.expected_count is not None and len(names) != guard.expected_count:
        return EXIT_COUNT_MISMATCH, (f"gpu_guard: expected {guard.expected_count} GPUs, got {len(names)}; fix the "
                                     "allocation or [tool.lights_out.gpu_guard] expected_count.")
    if guard.allowed_models:
        bad = [n for n in names if not any(re.search(p, n) for p in guard.allowed_models)]
        if bad:
            return EXIT_DISALLOWED_MODEL, (f"gpu_guard: refusing to train on '{bad[0]}', which matches none of "
                                           f"allowed_models {guard.allowed_models}; request an allowed GPU type.")
    return 0, f"gpu_guard: {len(names)} GPU(s) allowed: {', '.join(names) or 'none'}."


def power_fix_commands(ids: list[int], policy: PowerPolicy) -> list[str]:
    joined = ",".join(str(i) for i in ids)
    cmds = []
    if policy.watts is not None:
        cmds.append(f"sudo nvidia-smi -pl {policy.watts:g} -i {joined}")
    if policy.sm_clock_mhz is not None:
        cmds.append(f"sudo nvidia-smi -i {joined} -lgc 0,{policy.sm_clock_mhz}")
    return cmds


def _query():
    """GpuInfo list, or None when there is no NVIDIA driver."""
    from lights_out_dev.host.nvml import NvmlUnavailable, query_gpus

    try:
        return query_gpus()
    except NvmlUnavailable:
        return None


def gpu_guard(guard: GpuGuard) -> tuple[int, str]:
    gpus = _query()
    return guard_verdict(None if gpus is None else [g.name for g in gpus], guard)


def power_check(policy: PowerPolicy) -> tuple[int, list[str]]:
    if policy.watts is None and policy.sm_clock_mhz is None:
        return 0, ["power_check: no power policy set ([tool.lights_out.power] watts / sm_clock_mhz): passing."]
    gpus = _query()
    if gpus is None:
        return 0, ["power_check: no NVIDIA driver, CPU-only machine: no power limits to check, passing."]
    problems = [line for ok, line in power_findings(gpus, policy) if not ok]
    if not problems:
        clock = " (SM clocks are within the cap right now; NVML cannot read the lock itself)" \
            if policy.sm_clock_mhz is not None else ""
        return 0, [f"power_check: all {len(gpus)} GPU(s) match the power policy{clock}."]
    ids = [g.index for g in gpus]
    return EXIT_FAILED, ["power_check: " + p + "." for p in problems] + [
        "power_check: NOT starting multi-GPU work; ask someone with sudo to run:",
        *("    " + c for c in power_fix_commands(ids, policy))]


def _tiny_conv_step(device: str) -> None:
    import torch

    conv = torch.nn.Conv2d(3, 8, 3).to(device)
    x = torch.randn(4, 3, 16, 16, device=device, requires_grad=True)
    conv(x).square().mean().backward()
    if not torch.isfinite(x.grad).all():
        raise RuntimeError(f"non-finite gradient on {device}")
    if device.startswith("cuda"):
        torch.cuda.synchronize(device)


def allreduce_worker() -> None:
    """Runs under torch.distributed.run: every rank adds 1; each must see world_size."""
    import torch
    import torch.distributed as dist

    backend = os.environ.get("LIGHTS_OUT_PREFLIGHT_BACKEND", "nccl")
    rank = int(os.environ["LOCAL_RANK"])
    device = f"cuda:{rank}" if backend == "nccl" else "cpu"
    if backend == "nccl":
        torch.cuda.set_device(rank)
    dist.init_process_group(backend)
    t = torch.ones(1, device=device)
    dist.all_reduce(t)
    ok = int(t.item()) == dist.get_world_size()
    dist.destroy_process_group()
    sys.exit(0 if ok else EXIT_FAILED)


def allreduce_check(nproc: int, backend: str) -> tuple[bool, str]:
    from lights_out_dev.core.command import free_port

    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            f"--master_port={free_port()}", "-m", "lights_out_dev.cli.preflight", "_allreduce"]
    env = {**os.environ, "LIGHTS_OUT_PREFLIGHT_BACKEND": backend,
           "PYTHONPATH": os.pathsep.join(filter(None, [str(PACKAGE_PARENT), os.environ.get("PYTHONPATH")]))}
    try:
        proc = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=ALLREDUCE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        return False, f"{backend} all-reduce across {nproc} processes hung for {ALLREDUCE_TIMEOUT_S}s"
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no output"]
        return False, f"{backend} all-reduce across {nproc} processes failed: {tail[0]}"
    return True, f"{backend} all-reduce across {nproc} processes ok"


def runtime_check() -> tuple[int, list[str]]:
    import torch

    if not torch.cuda.is_available():
        _tiny_conv_step("cpu")
        return 0, ["runtime_check: torch sees no GPU; checked CPU only (conv forward+backward ok)."]
    n = torch.cuda.device_count()
    lines = []
    for i in range(n):
        try:
            _tiny_conv_step(f"cuda:{i}")
        except Exception as e:  # cuDNN/driver faults show up here; report them, don't crash
            return EXIT_FAILED, [f"runtime_check: conv forward+backward failed on cuda:{i}: {e}"]
        lines.append(f"runtime_check: cuda:{i} ({torch.cuda.get_device_name(i)}) conv forward+backward ok.")
    if n > 1:
        ok, line = allreduce_check(n, "nccl")
        lines.append(f"runtime_check: {line}.")
        if not ok:
            return EXIT_FAILED, lines
    return 0, lines


def _check(check: str, cfg) -> tuple[int, list[str]]:
    if check == "gpu_guard":
        code, line = gpu_guard(cfg.gpu_guard)
        return code, [line]
    if check == "power_check":
        return power_check(cfg.power)
    return runtime_check()


def run(check: str) -> int:
    code, lines = _check(check, load_config(project_root()))
    print("\n".join(lines), flush=True)
    return code


def doit_action(check: str) -> bool:
    """doit python-action wrapper: False fails the task (and so every experiment that needs it).

    A failure is also an event, so an agent blocked in `watch.py --until-event` hears of it."""
    from lights_out_dev.host import events

    root = project_root()
    cfg = load_config(root)
    code, lines = _check(check, cfg)
    print("\n".join(lines), flush=True)
    if code != 0:
        events.emit(root, cfg, "preflight_failed", check=check, exit_code=code, lines=lines)
    return code == 0


CHECKS = ("gpu_guard", "power_check", "runtime_check")
