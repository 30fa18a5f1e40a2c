"""The executor seam: the registry, the protocol every executor implements, the decisions each one owns
(table-driven, no Slurm needed), the typed Handle and its older stored layout, and a local trainer watched
through an executor that cannot see its GPUs."""
from __future__ import annotations

import inspect
import sys
import textwrap
from pathlib import Path

import pytest

from lights_out_dev import executors
from lights_out_dev.core.config import ProjectConfig, SlurmConfig
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.executors.base import Executor, Handle, SchedulerLease
from lights_out_dev.executors.local import LocalExecutor
from lights_out_dev.executors.slurm.executor import JobArray, SlurmExecutor
from lights_out_dev.host import nvml
from lights_out_dev.run import monitor
from lights_out_dev.run.monitor import Limits, LogTail, watch
from lights_out_dev.run.scan import LogScanner

METHODS = sorted(n for n, v in vars(Executor).items() if not n.startswith("_") and isinstance(v, (classmethod, type(
    lambda: 0))))


def test_the_registry_names_every_executor_and_make_builds_it(tmp_path):
    assert executors.EXECUTORS == {"local": LocalExecutor, "slurm": SlurmExecutor}
    local = executors.make("local", ProjectConfig(), tmp_path)
    assert isinstance(local, LocalExecutor) and local.cwd == tmp_path
    array = JobArray(2, expected=3)
    slurm = executors.make("slurm", ProjectConfig(), tmp_path, array=array)
    assert isinstance(slurm, SlurmExecutor) and slurm.array is array and slurm.root == tmp_path


@pytest.mark.parametrize("cls", executors.EXECUTORS.values(), ids=executors.EXECUTORS)
def test_every_executor_implements_the_whole_protocol(cls):
    assert {"lease", "attempt_gpus", "adoptable", "recover_launch", "sample_gpus", "forget"} <= set(METHODS)
    assert isinstance(cls.kind, str) and cls.poll_interval_s > 0
    for name in METHODS:  # the protocol's parameters, in its order (an executor may add keyword-only ones)
        want = list(inspect.signature(getattr(Executor, name)).parameters)
        got = list(inspect.signature(getattr(cls, name)).parameters)
        assert got[:len(want)] == want, name


def spec(gpus: int = 1, multi_gpu: bool = False) -> RunSpec:
    return RunSpec(task="t", family="f", launcher="lab_mgpu" if multi_gpu else "lab", prefix=[sys.executable],
                   script="train.py", trainer_task="T", gpus=gpus)


@pytest.mark.parametrize("name,slurm,spec_gpus,lease_gpus,attempt,trainer", [
    ("local", {}, 1, [3], [3], [3]),  # the lease's GPU, as leased
    ("local", {}, 1, None, None, None),  # no lease: not pinned, the CPU
    ("slurm", {}, 1, None, [0], [0]),  # the job's own cuda:0; the scheduler lease holds nothing
    ("slurm", {}, 2, [5], [0, 1], [0, 1]),  # a lease never says which GPUs a job gets
    ("slurm", {"trainer_device": "cpu"}, 2, None, [0, 1], None),  # asked for, but the trainer stays on the CPU
])
def test_which_gpus_an_attempt_runs_on_and_the_trainer_is_told(tmp_path, name, slurm, spec_gpus, lease_gpus,
                                                               attempt, trainer):
    ex = executors.make(name, ProjectConfig(slurm=SlurmConfig(**slurm)), tmp_path)
    assert ex.attempt_gpus(spec_gpus, lease_gpus) == attempt
    assert ex.trainer_gpus(attempt) == trainer


@pytest.mark.parametrize("name,multi_gpu,env", [
    ("local", True, {"CUDA_VISIBLE_DEVICES": "2,3"}),
    ("local", False, {}),
    ("slurm", True, {}),  # Slurm sets CUDA_VISIBLE_DEVICES for the allocation
])
def test_gpu_environment(tmp_path, name, multi_gpu, env):
    assert executors.make(name, ProjectConfig(), tmp_path).gpu_env(spec(2, multi_gpu), [2, 3]) == env


@pytest.mark.parametrize("name,needed,here,visible", [("local", 4, 1, 1), ("slurm", 4, 1, 4), ("slurm", 1, 2, 2)])
def test_gpus_a_launch_can_count_on(name, needed, here, visible):
    assert executors.executor_class(name).visible_gpus(needed, here) == visible


def test_slurm_leases_nothing_here_and_batches_arrays(tmp_path):
    lease = executors.make("slurm", ProjectConfig(), tmp_path).lease(4, prefer=[1])
    assert isinstance(lease, SchedulerLease) and lease.gpus is None
    lease.shrink(2)
    lease.release()
    assert isinstance(SlurmExecutor.job_array(2, 5, "a"), JobArray)
    assert LocalExecutor.job_array(2, 5, "a") is None


def test_local_lease_is_a_gpu_lock_lease(tmp_path):
    cfg = ProjectConfig(logs_dir=str(tmp_path / "logs"))
    lease = executors.make("local", cfg, tmp_path).lease(0 if nvml.gpu_count() == 0 else 1)
    try:
        assert lease.gpus is None or len(lease.gpus) == 1
    finally:
        lease.release()


def test_slurm_never_samples_this_hosts_gpus(tmp_path, monkeypatch):
    monkeypatch.setattr(nvml, "query_gpus", lambda: pytest.fail("NVML of the submitting host was asked"))
    h = Handle(kind="slurm", log_path=str(tmp_path / "x.log"), gpus=[0, 1], job_id="7")
    assert SlurmExecutor(ProjectConfig(), tmp_path).sample_gpus(h, [0, 1]) is None


# -- the typed handle and the stored layouts ----------------------------------------------------------

def test_handle_round_trips_through_its_stored_form():
    h = Handle(kind="local", log_path="/l.log", gpus=[1], pid=10, pgid=10, sid=10, start_time=5.0, token="t",
               boot="b")
    assert Handle.from_dict(h.to_dict()) == h


@pytest.mark.parametrize("stored,expected", [
    ({"kind": "local", "log_path": "/l.log", "pid": 10, "pgid": 10, "start_time": 5.0, "job_id": None,
      "node": None, "extra": {"sid": 10, "gpus": [1], "token": "t", "boot": "b"}},
     Handle(kind="local", log_path="/l.log", gpus=[1], pid=10, pgid=10, sid=10, start_time=5.0, token="t",
            boot="b")),
    ({"kind": "slurm", "log_path": "/s.log", "pid": None, "pgid": None, "start_time": None, "job_id": "42",
      "node": "lo-n1", "extra": {"script": "/s.sbatch", "submitted_at": 1.0, "pending_since": 1.0, "gpus": 2,
                                 "nodes": 1, "ran": True, "state": "RUNNING", "pending": "...", "pending_reason": "x"}},
     Handle(kind="slurm", log_path="/s.log", gpus=[0, 1], job_id="42", node="lo-n1", script="/s.sbatch",
            submitted_at=1.0, pending_since=1.0, ran=True)),
    ({"kind": "slurm", "log_path": "/s.log", "job_id": "43", "extra": {"gpus": 0}},
     Handle(kind="slurm", log_path="/s.log", job_id="43")),
])
def test_handles_stored_in_the_older_layout_still_load(stored, expected):
    assert Handle.from_dict(stored) == expected


# -- a real trainer process, watched through an executor that cannot see its GPUs -----------------------

class Blind(LocalExecutor):
    """A local executor that, like Slurm's, cannot see the GPUs the run uses."""

    def sample_gpus(self, handle, gpus):
        return None


def test_watch_skips_the_gpu_checks_when_the_executor_cannot_see_the_gpus(tmp_path, monkeypatch):
    idle = [nvml.GpuInfo(index=0, name="fake", uuid="GPU-0", mem_used_mb=1000, mem_total_mb=80000, util_pct=0.0,
                         power_w=None, power_limit_w=None, sm_clock_mhz=None, sm_clock_max_mhz=None, temp_c=None,
                         processes=[])]
    monkeypatch.setattr(nvml, "query_gpus", lambda: idle)
    monkeypatch.setattr(monitor, "GPU_POLL_S", 0.05)
    script = tmp_path / "t.py"
    script.write_text(textwrap.dedent("""
        import time
        print("Learning iteration 0/2", flush=True)
        print("Steps per second: 1000", flush=True)
        time.sleep(4)
        print("Training time: 4.0 seconds", flush=True)
    """))
    for ex, trigger in ((LocalExecutor(cwd=tmp_path), "idle_gpu"), (Blind(cwd=tmp_path), "exit")):
        log = tmp_path / f"{type(ex).__name__}.log"
        h = ex.start([sys.executable, str(script)], {}, log, [0])
        limits = Limits(stall_s=30, startup_stall_s=30, idle_gpu_stall_s=0.3, time_left_s=None, grace_s=2,
                        status_interval_s=60, tick_s=0.05)
        res = watch(ex, h, LogScanner(), limits, LogTail(Path(log)), gpus=[0])
        ex.forget(h)
        assert res.trigger == trigger, (type(ex).__name__, res)
