"""Per-GPU (and per-CPU-slot) file locks shared by every sweep and every `doit <task>` on the machine.

Locks are flock()s on <locks dir>/gpu<N>.lock (cpu<K>.lock on a machine without GPUs, with
cfg.cpu_slots slots). The locks dir is one per machine, not per checkout (two clones of the project
must not double-book a GPU or the CPU): [tool.lights_out] locks_dir, else $LIGHTS_OUT_LOCKS_DIR, else
<tmp>/lights-out-<uid>/locks. The kernel drops a lock when its holder dies, so a crashed supervisor never leaves
a GPU reserved. A free lock is not enough: a GPU whose NVML process list shows a process (someone
else's: our own runs hold the lock) above cfg.monitor.busy_gpu_mem_mb is skipped; then we refuse with
one sentence or wait, per cfg.monitor.busy_gpu_action.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from filelock import FileLock, Timeout

from lights_out_dev.core.config import ProjectConfig
from lights_out_dev.errors import LightsOutError
from lights_out_dev.host.nvml import gpu_count, pids_on_gpu

RETRY_S = 0.5  # how often a waiting acquire looks again


class GpuLockError(LightsOutError):
    """No GPU/slot could be leased; str() is one sentence naming the cause and the fix."""


def locks_dir(root: Path, cfg: ProjectConfig) -> Path:
    """The machine-wide lease directory (see the module docstring)."""
    if cfg.locks_dir:
        return cfg.path(root, cfg.locks_dir)
    env = os.environ.get("LIGHTS_OUT_LOCKS_DIR")
    if env:
        return Path(env)
    return Path(tempfile.gettempdir()) / f"lights-out-{os.getuid()}" / "locks"


@dataclass
class Lease:
    gpus: list[int] | None  # None = a CPU slot
    slot: int | None = None
    packed: bool = False  # a share of a GPU other runs use (plan runs_per_gpu), not the whole GPU
    _locks: dict[str, FileLock] = field(default_factory=dict, repr=False)

    @property
    def label(self) -> str:
        return "cpu" if self.gpus is None else "gpu" + ",".join(map(str, self.gpus))

    def release(self) -> None:
        for lock in self._locks.values():
            lock.release(force=True)
        self._locks.clear()

    def shrink(self, n: int) -> None:
        """Keep the first n GPUs, free the rest (for the 'fewer GPUs' recovery)."""
        if self.gpus is None or n >= len(self.gpus):
            return
        for g in self.gpus[n:]:
            lock = self._locks.pop(f"gpu{g}", None)
            if lock:
                lock.release(force=True)
        self.gpus = self.gpus[:n]


def _try_lock(path: Path) -> FileLock | None:
    lock = FileLock(str(path), timeout=0, thread_local=False)
    try:
        lock.acquire(timeout=0)
        return lock
    except Timeout:
        return None


def _foreign_use(index: int, cfg: ProjectConfig) -> str | None:
    """A sentence fragment if someone else's process uses this GPU above the threshold."""
    try:
        procs = pids_on_gpu(index)
    except Exception:
        return None
    big = [p for p in procs if (p.used_mb or 0) > cfg.monitor.busy_gpu_mem_mb]
    if not big:
        return None
    p = big[0]
    return f"GPU {index} is used by pid {p.pid} ({p.command or '?'}, {p.used_mb:.0f} MB)"


def pack_lock_paths(ldir: Path, index: int) -> list[Path]:
    return sorted(ldir.glob(f"gpu{index}.pack*.lock"))


def _packed_runs_on(ldir: Path, index: int) -> bool:
    """True while a packed run (plan `runs_per_gpu`) holds a `gpu<N>.pack<k>.lock`: the GPU is shared,
    not free, even after the run that leased it whole has ended."""
    for path in pack_lock_paths(ldir, index):
        lock = _try_lock(path)
        if lock is None:
            return True
        lock.release(force=True)
    return False


def acquire_packed(index: int, cfg: ProjectConfig, root: Path, max_runs: int = 64) -> Lease | None:
    """A share of GPU `index` beside runs already on it (the caller decided that it fits, packing.py)."""
    ldir = locks_dir(root, cfg)
    for k in range(1, max_runs):
        lock = _try_lock(ldir / f"gpu{index}.pack{k}.lock")
        if lock:
            return Lease(gpus=[index], packed=True, _locks={f"gpu{index}.pack{k}": lock})
    return None


def unpack(lease: Lease, cfg: ProjectConfig, root: Path) -> str:
    """Trade a packed lease for a whole free GPU (a packed run that ran out of memory); the lease object
    follows the run. Returns what happened, as a sentence fragment."""
    try:
        whole = acquire(1, cfg, root, wait=False)
    except GpuLockError as e:
        return f"no whole GPU is free ({e}); the retry stays packed on {lease.label}"
    before = lease.label
    lease.release()
    lease.gpus, lease._locks, lease.packed = whole.gpus, whole._locks, False
    return f"unpacked from {before} onto {lease.label}"


def _try_once(n: int, cfg: ProjectConfig, ldir: Path, candidates: list[int] | None,
              slots: int) -> tuple[Lease | None, list[str]]:
    if candidates is None:  # CPU machine
        for k in range(slots):
            lock = _try_lock(ldir / f"cpu{k}.lock")
            if lock:
                return Lease(gpus=None, slot=k, _locks={f"cpu{k}": lock}), []
        return None, [f"all {slots} CPU slots are taken by other lights-out runs"]
    got: dict[str, FileLock] = {}
    why: list[str] = []
    for g in candidates:
        lock = _try_lock(ldir / f"gpu{g}.lock")
        if lock is None:
            why.append(f"GPU {g} is leased by another lights-out run")
            continue
        busy = _foreign_use(g, cfg) or (f"GPU {g} is shared by packed lights-out runs"
                                         if _packed_runs_on(ldir, g) else None)
        if busy:
            lock.release(force=True)
            why.append(busy)
            continue
        got[f"gpu{g}"] = lock
        if len(got) == n:
            return Lease(gpus=[int(k[3:]) for k in got], _locks=got), []
    for lock in got.values():
        lock.release(force=True)
    return None, why


def acquire(n: int, cfg: ProjectConfig, root: Path, prefer: list[int] | None = None, wait: bool = False,
            exclude: list[int] | None = None, timeout: float | None = None) -> Lease:
    """Lease n GPUs (or one CPU slot when the machine has none).

    prefer: exact GPUs to use (a --gpu pin) - only these are tried. exclude: GPUs not to use (the
    'other GPU' recovery). wait: block until enough are free instead of refusing.
    """
    ldir = locks_dir(root, cfg)
    try:
        ldir.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise GpuLockError(f"cannot create the lock directory {ldir} ({e.strerror}); make it writable or set "
                           f"[tool.lights_out] logs_dir to a writable path.") from None
    count = gpu_count()
    if count == 0:
        if prefer:
            raise GpuLockError(f"GPU {prefer[0]} was requested but this machine has no GPU visible to NVML; "
                               f"drop --gpu or run on a GPU machine.")
        candidates = None
    else:
        bad = [g for g in prefer or [] if not 0 <= g < count]
        if bad:
            raise GpuLockError(f"GPU {bad[0]} does not exist (this machine has {count}: 0-{count - 1}); "
                               f"pick one of those with --gpu.")
        if prefer and len(prefer) < n:
            raise GpuLockError(f"the run needs {n} GPUs but only {len(prefer)} were pinned ({prefer}); "
                               f"pin {n} GPUs or drop the pin.")
        candidates = [g for g in (prefer or range(count)) if g not in (exclude or [])]
        if len(candidates) < n:
            raise GpuLockError(f"the run needs {n} GPUs but only {len(candidates)} can be used "
                               f"(machine has {count}); lower the GPU count or free a GPU.")
    may_wait_busy = wait or cfg.monitor.busy_gpu_action == "wait"
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        lease, why = _try_once(n, cfg, ldir, candidates, cfg.cpu_slots)
        if lease:
            return lease
        from lights_out_dev.host import stopping

        if stopping.requested():  # Ctrl-C while waiting for a slot: nothing was launched
            raise GpuLockError(f"stopped by {stopping.signal_name()} while waiting for a free slot; "
                               f"nothing was launched.")
        only_locked = all("lights-out run" in w or "CPU slots" in w for w in why)  # incl. packed runs
        if not (wait if only_locked else may_wait_busy) or (deadline and time.monotonic() > deadline):
            what = "free CPU slot" if candidates is None else f"{n} free GPU(s)"
            fix = ("wait for them to finish" if only_locked else
                   "free it, pin another GPU with --gpu, or set [tool.lights_out.monitor] busy_gpu_action = 'wait'")
            raise GpuLockError(f"no {what} for this run: {'; '.join(why)}; {fix}.")
        time.sleep(RETRY_S)
