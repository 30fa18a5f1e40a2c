"""Packing several runs onto one GPU (plan `runs_per_gpu: auto` or a number; the default is 1). Pure.

A run may join a GPU that other runs of the sweep already use only when its peak VRAM has been
measured (by its smoke gate, or an earlier attempt), and when both hold:
- by the peaks: the residents' measured peaks + its own + `margin_mb` per run fit in the GPU's memory
  (a resident that has not reached its peak yet will);
- by NVML now: the memory in use on the GPU + its own peak + `margin_mb` fits.
An unmeasured run, or a GPU holding a run that was not measured, is never packed.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class PackDecision:
    fits: bool
    reason: str


def decide(candidate_peak_mb: float | None, resident_peaks_mb: list[float | None], total_mb: float, used_mb: float,
           margin_mb: float, max_runs: int | None) -> PackDecision:
    """May a run with `candidate_peak_mb` join a GPU that runs with `resident_peaks_mb` share?
    `max_runs`: the plan's number (None for auto: as many as fit)."""
    if candidate_peak_mb is None:
        return PackDecision(False, "its peak VRAM is not measured yet (a smoke gate measures it)")
    if any(p is None for p in resident_peaks_mb):
        return PackDecision(False, "a run on the GPU has no measured peak VRAM")
    n = len(resident_peaks_mb) + 1
    if max_runs is not None and n > max_runs:
        return PackDecision(False, f"runs_per_gpu is {max_runs}")
    by_peaks = sum(resident_peaks_mb) + candidate_peak_mb + margin_mb * n
    if by_peaks > total_mb:
        return PackDecision(False, f"the peaks would need {by_peaks:.0f} MB of {total_mb:.0f} MB")
    now = used_mb + candidate_peak_mb + margin_mb
    if now > total_mb:
        return PackDecision(False, f"NVML shows {used_mb:.0f} MB in use; {now:.0f} MB of {total_mb:.0f} MB needed")
    return PackDecision(True, f"{n} runs, peaks {by_peaks:.0f} MB of {total_mb:.0f} MB with margins")
