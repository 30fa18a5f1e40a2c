"""gpu_lock: per-GPU / per-CPU-slot flocks shared across processes; busy GPUs skipped."""
from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
from types import SimpleNamespace

import pytest

from lights_out_dev.core.config import MonitorConfig, ProjectConfig
from lights_out_dev.host import gpu_lock
from lights_out_dev.host.gpu_lock import GpuLockError, acquire

pytestmark = pytest.mark.timeout(30)


def cfg_for(tmp_path, **monitor) -> ProjectConfig:
    return ProjectConfig(logs_dir=str(tmp_path / "logs"), locks_dir=str(tmp_path / "locks"), cpu_slots=2,
                         monitor=MonitorConfig(**monitor))


@pytest.fixture
def no_gpu(monkeypatch):
    monkeypatch.setattr(gpu_lock, "gpu_count", lambda: 0)


@pytest.fixture
def three_gpus(monkeypatch):
    """GPU 0 carries someone else's 5 GB process; GPU 2 a small one (below the threshold)."""
    procs = {0: [SimpleNamespace(pid=4242, used_mb=5000.0, command="python other_user.py")],
             1: [], 2: [SimpleNamespace(pid=4343, used_mb=200.0, command="Xorg")]}
    monkeypatch.setattr(gpu_lock, "gpu_count", lambda: 3)
    monkeypatch.setattr(gpu_lock, "pids_on_gpu", lambda i: procs[i])
    return procs


def test_cpu_slots_are_exclusive_and_released(tmp_path, no_gpu):
    cfg = cfg_for(tmp_path)
    a, b = acquire(1, cfg, tmp_path), acquire(1, cfg, tmp_path)
    assert a.gpus is None and {a.slot, b.slot} == {0, 1} and a.label == "cpu"
    with pytest.raises(GpuLockError, match="all 2 CPU slots are taken"):
        acquire(1, cfg, tmp_path)
    t0 = time.monotonic()
    with pytest.raises(GpuLockError):
        acquire(1, cfg, tmp_path, wait=True, timeout=0.6)
    assert time.monotonic() - t0 >= 0.6
    a.release()
    a.release()  # idempotent
    c = acquire(1, cfg, tmp_path)
    assert c.slot == a.slot
    b.release(), c.release()


def test_wait_blocks_until_a_slot_frees(tmp_path, no_gpu):
    cfg = cfg_for(tmp_path)
    held = [acquire(1, cfg, tmp_path), acquire(1, cfg, tmp_path)]
    threading.Timer(0.5, held[1].release).start()  # released from another thread (sweep workers do)
    t0 = time.monotonic()
    got = acquire(1, cfg, tmp_path, wait=True, timeout=10)
    assert 0.4 < time.monotonic() - t0 < 3 and got.slot == held[1].slot
    got.release(), held[0].release()


def test_lock_held_by_another_process_and_freed_when_it_dies(tmp_path, no_gpu):
    cfg = cfg_for(tmp_path)
    lock = gpu_lock.locks_dir(tmp_path, cfg) / "cpu0.lock"
    lock.parent.mkdir(parents=True)
    holder = subprocess.Popen([sys.executable, "-c", f"""
from filelock import FileLock
import time
held = FileLock({str(lock)!r})
held.acquire()
print("held", flush=True)
time.sleep(60)
"""], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    mine = acquire(1, cfg, tmp_path)
    assert mine.slot == 1  # slot 0 belongs to the other process
    holder.send_signal(signal.SIGKILL)  # a crashed holder never leaves its slot reserved
    holder.wait()
    again = acquire(1, cfg, tmp_path)
    assert again.slot == 0
    mine.release(), again.release()


def test_gpu_pin_on_a_cpu_machine_is_one_sentence(tmp_path, no_gpu):
    with pytest.raises(GpuLockError, match="no GPU visible to NVML; drop --gpu"):
        acquire(1, cfg_for(tmp_path), tmp_path, prefer=[0])


def test_busy_gpu_skipped_and_locks_exclusive(tmp_path, three_gpus):
    cfg = cfg_for(tmp_path, busy_gpu_mem_mb=1024)
    a = acquire(1, cfg, tmp_path)
    assert a.gpus == [1]  # GPU 0 is busy with someone else's 5 GB process
    b = acquire(1, cfg, tmp_path)
    assert b.gpus == [2]  # 200 MB is below the threshold
    with pytest.raises(GpuLockError, match=r"GPU 0 is used by pid 4242 .*GPU 1 is leased"):
        acquire(1, cfg, tmp_path)
    a.release(), b.release()


@pytest.mark.parametrize("prefer,n,exclude,match", [
    ([7], 1, None, "GPU 7 does not exist .*pick one of those with --gpu"),
    ([0], 1, None, "GPU 0 is used by pid 4242.*busy_gpu_action"),
    ([1], 2, None, "needs 2 GPUs but only 1 were pinned"),
    (None, 3, [1], "needs 3 GPUs but only 2 can be used"),
])
def test_gpu_refusals_are_one_sentence(tmp_path, three_gpus, prefer, n, exclude, match):
    with pytest.raises(GpuLockError, match=match) as e:
        acquire(n, cfg_for(tmp_path), tmp_path, prefer=prefer, exclude=exclude)
    assert "\n" not in str(e.value) and str(e.value).endswith(".")


def test_exclude_and_shrink(tmp_path, three_gpus):
    three_gpus[0].clear()
    cfg = cfg_for(tmp_path)
    two = acquire(2, cfg, tmp_path, exclude=[0])
    assert two.gpus == [1, 2] and two.label == "gpu1,2"
    two.shrink(1)
    assert two.gpus == [1]
    other = acquire(1, cfg, tmp_path, prefer=[2])  # the freed GPU is available again
    assert other.gpus == [2]
    two.release(), other.release()


def test_busy_gpu_wait_policy_waits(tmp_path, three_gpus):
    cfg = cfg_for(tmp_path, busy_gpu_action="wait")
    threading.Timer(0.4, three_gpus[0].clear).start()  # the other user's job ends
    got = acquire(1, cfg, tmp_path, prefer=[0], timeout=10)
    assert got.gpus == [0]
    got.release()


def test_a_gpu_with_packed_runs_is_not_leased_whole_and_unpack_takes_a_free_one(tmp_path, three_gpus):
    three_gpus[0].clear()
    cfg = cfg_for(tmp_path)
    whole = acquire(1, cfg, tmp_path, prefer=[1])
    share = gpu_lock.acquire_packed(1, cfg, tmp_path)
    assert share.gpus == [1] and share.packed
    whole.release()  # the run that had GPU 1 whole ends; the packed one goes on
    with pytest.raises(GpuLockError, match="GPU 1 is shared by packed lights-out runs"):
        acquire(1, cfg, tmp_path, prefer=[1])
    others = [acquire(1, cfg, tmp_path, prefer=[0]), acquire(1, cfg, tmp_path, prefer=[2])]
    assert "stays packed on gpu1" in gpu_lock.unpack(share, cfg, tmp_path)  # nothing whole is free
    others.pop().release()
    assert gpu_lock.unpack(share, cfg, tmp_path) == "unpacked from gpu1 onto gpu2"
    assert share.gpus == [2] and not share.packed
    assert acquire(1, cfg, tmp_path, prefer=[1]).gpus == [1]  # no packed run left on GPU 1
