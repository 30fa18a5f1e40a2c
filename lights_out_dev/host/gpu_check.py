"""GPU status at a glance, multi-GPU imbalance detection and the power policy check (script).

    python -m lights_out_dev.cli.gpu_check                       # one line per GPU + its processes
    python -m lights_out_dev.cli.gpu_check --json                # the same as JSON
    python -m lights_out_dev.cli.gpu_check --exit-on-imbalance   # exit 1 when busy GPUs are out of balance
    python -m lights_out_dev.cli.gpu_check --power-policy        # power limit / SM clock vs [tool.lights_out.power]
    python -m lights_out_dev.cli.gpu_check --gpus 0,1            # only these GPUs (e.g. one multi-GPU run's)

Exit status: 0 fine, 1 imbalance (with --exit-on-imbalance) or power policy not met (with
--power-policy), 2 a usage or configuration error, 3 no NVIDIA driver (one line on stderr).
"""
from __future__ import annotations

from lights_out_dev.core.config import PowerPolicy
from lights_out_dev.host import nvml

EXIT_CHECK_FAILED = 1
EXIT_USAGE = 2
EXIT_NO_DRIVER = 3
# Clock steps are ~15 MHz: a locked GPU may report one step above its cap; further above, the cap is not applied.
CLOCK_SLACK_MHZ = 15


def imbalance(gpus: list[nvml.GpuInfo], util_pct: float, mem_pct: float) -> str | None:
    """A sentence when the GPUs of a running multi-GPU job are out of balance, else None.

    Only meaningful while something runs: with no process on any of `gpus` (or fewer than two
    GPUs) there is nothing to balance. Spreads are in percentage points: utilisation max - min,
    and memory used as a share of each GPU's total, max - min."""
    if len(gpus) < 2 or not any(g.processes for g in gpus):
        return None
    problems = []
    utils = [(g.util_pct, g.index) for g in gpus if g.util_pct is not None]
    if len(utils) >= 2:
        (lo, lo_i), (hi, hi_i) = min(utils), max(utils)
        if hi - lo > util_pct:
            problems.append(f"utilisation spread {hi - lo:.0f} points (GPU {hi_i} {hi:.0f}%, GPU {lo_i} {lo:.0f}%) "
                            f"exceeds {util_pct:g}")
    mems = [(g.mem_pct, g.index) for g in gpus]
    (lo, lo_i), (hi, hi_i) = min(mems), max(mems)
    if hi - lo > mem_pct:
        problems.append(f"memory spread {hi - lo:.0f} points (GPU {hi_i} {hi:.0f}%, GPU {lo_i} {lo:.0f}%) "
                        f"exceeds {mem_pct:g}")
    return "GPU imbalance: " + "; ".join(problems) if problems else None


def power_findings(gpus: list[nvml.GpuInfo], policy: PowerPolicy) -> list[tuple[bool, str]]:
    """(ok, line) per GPU comparing its power limit and SM clock with the policy. Pure.

    NVML reports the enforced power limit exactly, but it has no getter for a clock lock set with
    `nvidia-smi -lgc` (its "max clock" is the hardware maximum). So the clock check is the part that
    can be proven: a current SM clock above the cap means the cap is not set; an unreadable one passes."""
    out = []
    for g in gpus:
        ok, parts = True, []
        if policy.watts is not None:
            if g.power_limit_w is None:
                ok, text = False, f"power limit unreadable (policy {policy.watts:g} W)"
            else:
                good = abs(g.power_limit_w - policy.watts) <= policy.tolerance_watts
                ok &= good
                text = f"power limit {g.power_limit_w:.0f} W (policy {policy.watts:g} W) {'ok' if good else 'MISMATCH'}"
            parts.append(text)
        if policy.sm_clock_mhz is not None:
            # NVML cannot read back a locked-clock range; a current clock above the cap proves it is not set.
            if g.sm_clock_mhz is None:
                parts.append(f"SM clock unreadable (policy cap {policy.sm_clock_mhz} MHz)")
            else:
                good = g.sm_clock_mhz <= policy.sm_clock_mhz + CLOCK_SLACK_MHZ
                ok &= good
                parts.append(f"SM clock {g.sm_clock_mhz}/{g.sm_clock_max_mhz} MHz "
                             f"(policy cap {policy.sm_clock_mhz} MHz) {'ok' if good else 'ABOVE CAP'}")
        out.append((ok, f"GPU {g.index}: " + ("; ".join(parts) or "no power policy set")))
    return out


def _fmt(v, unit: str, spec: str = ".0f") -> str:
    return "?" if v is None else f"{v:{spec}}{unit}"


def format_gpu(g: nvml.GpuInfo) -> list[str]:
    lines = [f"GPU {g.index}  {g.name}  mem {g.mem_used_mb:.0f}/{g.mem_total_mb:.0f} MiB ({g.mem_pct:.0f}%)  "
             f"util {_fmt(g.util_pct, '%')}  power {_fmt(g.power_w, '')}/{_fmt(g.power_limit_w, ' W')}  "
             f"SM {_fmt(g.sm_clock_mhz, '', 'd')}/{_fmt(g.sm_clock_max_mhz, ' MHz', 'd')}  {_fmt(g.temp_c, 'C', 'd')}"]
    for p in g.processes:
        command = " ".join(p.command.split())  # one line even for `python -c "...\n..."`
        lines.append(f"    pid {p.pid:<8} {_fmt(p.used_mb, ' MiB'):>10}  {command[:120]}")
    return lines
