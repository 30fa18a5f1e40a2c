"""The Slurm executor on a real two-node Slurm (tests/slurm/cluster.sh: lo-n1 and lo-n2, each in its own
network namespace with 4 fake GPUs).

Marker `slurm`. The session fixture starts the cluster (installing Debian's packages if needed) and
stops it at the end if it started it. Without root or apt the tests are skipped with the reason,
unless CI=true, where that is a failure. Pure helpers are tested first, without Slurm.
"""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

from lights_out_dev.core.config import (
    GpuGuard,
    MonitorConfig,
    PolicyRule,
    ProjectConfig,
    SlurmConfig,
)
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import load_state
from lights_out_dev.executors.slurm import jobscript
from lights_out_dev.executors.slurm.executor import (
    SlurmControllerDown,
    SlurmExecutor,
    SlurmInvalidPartition,
    SlurmNotInstalled,
    SlurmRejected,
    SlurmSubmitError,
    exit_from_code,
    pending_sentence,
    submit_error,
)

ROOT = Path(__file__).resolve().parents[1]
CLUSTER = ROOT / "tests" / "slurm" / "cluster.sh"
SLURM_DIR = Path(os.environ.get("LIGHTS_OUT_SLURM_DIR", "/tmp/lights-out-slurm"))
TRAIN = str(ROOT / "workloads" / "train.py")
NODES = ("lo-n1", "lo-n2")
ALL_NODES = "lo-n[1-2]"


# -- pure helpers (no Slurm) ------------------------------------------------------------------------

@pytest.mark.parametrize("stderr,cls,fragment", [
    ("sbatch: error: Batch job submission failed: Unable to contact slurm controller (connect failure)",
     SlurmControllerDown, "scontrol ping"),
    ("sbatch: error: invalid partition specified: nope\nsbatch: error: Batch job submission failed: "
     "Invalid partition name specified", SlurmInvalidPartition, "'nope'"),
    ("sbatch: error: Batch job submission failed: Requested node configuration is not available",
     SlurmRejected, "8 GPU(s)"),
    ("sbatch: error: Batch job submission failed: Invalid account or account/partition combination specified",
     SlurmRejected, "slurm.account"),
    ("sbatch: error: something new", SlurmSubmitError, "something new"),
])
def test_submit_error_sentences(stderr, cls, fragment):
    err = submit_error(stderr, "nope", 8)
    assert type(err) is cls
    assert fragment in str(err)
    assert str(err).count(". ") == 0 and str(err).endswith(".")  # one sentence


@pytest.mark.parametrize("reason,fragment", [
    ("Resources", "waiting for free resources"),
    ("(Priority)", "higher-priority jobs"),
    ("ReqNodeNotAvail, UnavailableNodes:localhost", "localhost are drained or down"),
    ("Nodes required for job are DOWN, DRAINED or reserved for jobs in higher priority partitions", "drained or down"),
    ("PartitionDown", "choose another slurm.partition"),
    ("JobHeldUser", "scontrol release 7"),
    ("QOSMaxGRESPerUser", "Slurm's reason is QOSMaxGRESPerUser"),
])
def test_pending_sentences(reason, fragment):
    text = pending_sentence("7", reason, 12.0, "gpu")
    assert text.startswith("Slurm job 7 is pending for 12 s")
    assert fragment in text


@pytest.mark.parametrize("code,expected", [("0:0", (0, None)), ("3:0", (3, None)), ("0:9", (None, 9)),
                                           ("130:0", (130, None)), ("junk", (None, None))])
def test_exit_from_code(code, expected):
    assert exit_from_code(code) == expected


def test_no_slurm_commands(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing named sbatch here
    ex = SlurmExecutor(ProjectConfig(), tmp_path)
    with pytest.raises(SlurmNotInstalled) as e:
        ex.start(["true"], {}, tmp_path / "a.log", None)
    assert str(e.value) == "sbatch not found: install Slurm's client or use --executor local."


NODES_PLAN = """\
name: nodesplan
runs:
  - task: cartpole:base
    nodes: 2
"""


@pytest.mark.timeout(120)
def test_multi_node_plan_entry_needs_an_mgpu_task_and_slurm(tmp_path):
    from test_sweep import doit_argv, env_for, make_repo

    repo = make_repo(tmp_path / "repo", {"nodesplan": NODES_PLAN, "nodeslocal": NODES_PLAN.replace(
        "nodesplan", "nodeslocal").replace("cartpole:base", "cartpole:base-mgpu")})
    for plan, executor, fragment in [
        ("nodesplan", "slurm", "sweeps/nodesplan.yaml line 3: cartpole:base asks for 2 nodes, but only an -mgpu"),
        ("nodeslocal", "local", "line 3: cartpole:base-mgpu asks for 2 nodes, which needs the Slurm executor"),
    ]:
        p = subprocess.run(doit_argv("sweep", "--plan", f"sweeps/{plan}.yaml", "--executor", executor), cwd=repo,
                           env=env_for(repo), capture_output=True, text=True, timeout=100)
        assert p.returncode != 0 and fragment in p.stdout + p.stderr, p.stdout + p.stderr
        assert "Traceback" not in p.stdout + p.stderr
        assert not (repo / "local_experiment_logs" / "sweeps" / plan / "runs").exists() or not list(
            (repo / "local_experiment_logs" / "sweeps" / plan / "runs").glob("*.json"))


# -- the cluster ------------------------------------------------------------------------------------

def _why_not() -> str | None:
    installed = all(shutil.which(c) for c in ("sbatch", "slurmctld", "slurmd", "munged"))
    if installed:
        return None
    if os.geteuid() != 0:
        return "the local Slurm test cluster needs root to install slurmctld/slurmd/munge (not root here)"
    if not shutil.which("apt-get"):
        return "the local Slurm test cluster needs apt-get to install slurmctld/slurmd/munge (none here)"
    return None


def _unavailable(why: str):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why}; CI=true requires the Slurm tests to run")
    pytest.skip(why)


@pytest.fixture(scope="session")
def slurm_cluster():
    why = _why_not()
    if why:
        _unavailable(why)
    env = {**os.environ, "LIGHTS_OUT_SLURM_DIR": str(SLURM_DIR)}
    was_running = subprocess.run([CLUSTER, "status"], capture_output=True, env=env).returncode == 0
    t0 = time.monotonic()
    proc = subprocess.run([CLUSTER, "start"], capture_output=True, text=True, env=env, timeout=300)
    if proc.returncode != 0:
        _unavailable(f"tests/slurm/cluster.sh start failed: {(proc.stderr or proc.stdout).strip()[-500:]}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(SLURM_DIR / "slurm.conf")
    yield {"start_s": time.monotonic() - t0}
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old
    if not was_running:
        subprocess.run([CLUSTER, "stop"], capture_output=True, env=env, timeout=120)


def squeue_state(job_id: str) -> str:
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T"], capture_output=True, text=True)
    return out.stdout.strip()


def wait_for(pred, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = pred()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


FAKE_TRAINER = textwrap.dedent("""
    import os, signal, sys, time
    if os.environ.get("IGNORE_INT"):
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    print("started CVD=" + os.environ.get("CUDA_VISIBLE_DEVICES", "unset"), flush=True)
    try:
        time.sleep(float(sys.argv[1]))
    except KeyboardInterrupt:
        print("saved checkpoint", flush=True)
        sys.exit(130)
    print("Training time: 1.0 seconds", flush=True)
""")


def fake(tmp_path: Path, seconds: float) -> list[str]:
    path = tmp_path / "fake_trainer.py"
    path.write_text(FAKE_TRAINER)
    return [sys.executable, str(path), str(seconds)]


def log_text(handle) -> str:
    return Path(handle.log_path).read_text()


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_two_jobs_get_distinct_gpus_and_complete(slurm_cluster, tmp_path):
    ex = SlurmExecutor(ProjectConfig(), tmp_path)
    handles = [ex.start(fake(tmp_path, 6), {"PLAIN": f"job {i}"}, tmp_path / f"j{i}.log", [0], time_limit_s=60,
                        job_name=f"two-{i}") for i in range(2)]
    assert handles[0].job_id != handles[1].job_id
    wait_for(lambda: all(ex.alive(h) for h in handles) and all(squeue_state(h.job_id) == "RUNNING" for h in handles),
             10, "both jobs running at once")
    statuses = [ex.wait(h, 30) for h in handles]
    for h, st in zip(handles, statuses):
        assert (st.scheduler_state, st.exit_code, st.signal) == ("COMPLETED", 0, None), log_text(h)
        assert h.node in NODES
        assert not ex.alive(h)
        assert Path(h.script).read_text().startswith("#!/bin/bash")
    cvd = [log_text(h).split("started CVD=")[1].split()[0] for h in handles]
    assert "unset" not in cvd
    if handles[0].node == handles[1].node:
        assert cvd[0] != cvd[1]


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_graceful_stop_reaches_the_trainer(slurm_cluster, tmp_path):
    ex = SlurmExecutor(ProjectConfig(), tmp_path)
    h = ex.start(fake(tmp_path, 60), {}, tmp_path / "g.log", None, time_limit_s=120)
    wait_for(lambda: "started" in log_text(h), 15, "the trainer to start")
    assert ex.stop(h, graceful=True, grace_s=15) == []
    st = ex.wait(h, 5)
    assert st.exit_code == 130 and st.scheduler_state == "FAILED"
    assert "saved checkpoint" in log_text(h)
    assert not ex.alive(h)


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_trainer_ignoring_sigint_is_cancelled(slurm_cluster, tmp_path):
    ex = SlurmExecutor(ProjectConfig(), tmp_path)
    h = ex.start(fake(tmp_path, 60), {"IGNORE_INT": "1"}, tmp_path / "c.log", None)
    wait_for(lambda: "started" in log_text(h), 15, "the trainer to start")
    t0 = time.monotonic()
    assert ex.stop(h, graceful=True, grace_s=1) == []
    assert time.monotonic() - t0 < 20
    assert ex.wait(h, 5).scheduler_state == "CANCELLED"
    assert "saved checkpoint" not in log_text(h)


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_drained_node_pending_timeout(slurm_cluster, tmp_path):
    cfg = ProjectConfig(slurm=SlurmConfig(pending_timeout_s=3))
    ex = SlurmExecutor(cfg, tmp_path)
    subprocess.run(["scontrol", "update", f"nodename={ALL_NODES}", "state=drain", "reason=lights-out-test"], check=True)
    try:
        h = ex.start(fake(tmp_path, 1), {}, tmp_path / "p.log", [0])
        st = wait_for(lambda: ex.wait(h, 0.5), 20, "the pending timeout")
    finally:
        subprocess.run(["scontrol", "update", f"nodename={ALL_NODES}", "state=resume"], check=True)
    assert st.scheduler_state.startswith("CANCELLED") and st.exit_code is None
    assert "pending_timeout_s=3" in st.reason
    log = log_text(h)
    assert "drained or down" in log  # the pending reason, in words, where the ledger's log tail shows it
    assert "started" not in log
    assert squeue_state(h.job_id) == "CANCELLED"


@pytest.mark.slurm
@pytest.mark.timeout(30)
@pytest.mark.parametrize("slurm_kw,gpus,cls,fragment", [
    ({}, 8, SlurmRejected, "8 GPU(s)"),
    ({"partition": "nope"}, 0, SlurmInvalidPartition, "'nope'"),
])
def test_rejected_submissions(slurm_cluster, tmp_path, slurm_kw, gpus, cls, fragment):
    ex = SlurmExecutor(ProjectConfig(slurm=SlurmConfig(**slurm_kw)), tmp_path)
    with pytest.raises(cls) as e:
        ex.start(fake(tmp_path, 1), {}, tmp_path / "r.log", list(range(gpus)) or None)
    assert fragment in str(e.value)


@pytest.mark.slurm
@pytest.mark.timeout(30)
def test_controller_down(slurm_cluster, tmp_path, monkeypatch):
    conf = (SLURM_DIR / "slurm.conf").read_text() + "SlurmctldPort=6999\n"  # nobody listens there
    (tmp_path / "slurm.conf").write_text(conf)
    monkeypatch.setenv("SLURM_CONF", str(tmp_path / "slurm.conf"))
    with pytest.raises(SlurmControllerDown) as e:
        SlurmExecutor(ProjectConfig(), tmp_path).start(fake(tmp_path, 1), {}, tmp_path / "d.log", None)
    assert "Slurm controller" in str(e.value)


@pytest.mark.slurm
@pytest.mark.timeout(30)
def test_gpu_guard_refuses_the_allocation(slurm_cluster, tmp_path):
    # The fake GPUs have no driver: an expected count of 2 cannot be met (preflight gpu_guard: exit 42).
    # The guard runs inside the job and reads the project's configuration, as a user's would.
    (tmp_path / "pyproject.toml").write_text("[tool.lights_out.gpu_guard]\nexpected_count = 2\n")
    ex = SlurmExecutor(ProjectConfig(gpu_guard=GpuGuard(expected_count=2)), tmp_path)
    h = ex.start(fake(tmp_path, 1), {}, tmp_path / "guard.log", [0, 1])
    st = ex.wait(h, 20)
    assert (st.exit_code, st.scheduler_state) == (42, "FAILED")
    assert st.reason == jobscript.EXIT_REASONS[42]
    assert "started" not in log_text(h) and "refusing to train" in log_text(h)


@pytest.mark.slurm
@pytest.mark.timeout(100)
def test_slurm_time_limit_signal_stops_gracefully(slurm_cluster, tmp_path):
    # --time=1 with the warning 58 s before it: Slurm sends B:USR1 within its ~30 s check cycle.
    ex = SlurmExecutor(ProjectConfig(slurm=SlurmConfig(signal_lead_s=58)), tmp_path)
    h = ex.start(fake(tmp_path, 90), {}, tmp_path / "t.log", None, time_limit_s=2)
    st = wait_for(lambda: ex.wait(h, 1), 85, "Slurm's time-limit signal")
    assert st.scheduler_state == "TIMEOUT" and st.exit_code == 130
    log = log_text(h)
    assert jobscript.TIME_LIMIT_MARKER in log and "saved checkpoint" in log


# -- through the supervisor (the reference trainer on CPU) ---------------------------------------------

def make_spec(inject: str | None = None, max_iterations: int = 2, task: str = "cartpole:slurm") -> RunSpec:
    return RunSpec(task=task, family="cartpole", launcher="lab", prefix=[sys.executable], script=TRAIN,
                   trainer_task="Lo-Cartpole-v0", num_envs=16, max_iterations=max_iterations,
                   extra_args=["--inject", inject] if inject else [])


def make_cfg(root: Path, **policy) -> ProjectConfig:
    monitor = MonitorConfig(stall_s=4, startup_stall_s=120, idle_gpu_stall_s=5, time_limit=None, grace_s=10,
                            status_interval_s=5)
    # The cluster's GPUs are fake: jobs ask for them, the trainer stays on the CPU.
    return ProjectConfig(logs_dir=str(root / "logs"), monitor=monitor, policy=policy,
                         slurm=SlurmConfig(trainer_device="cpu"))


def supervise_slurm(tmp_path: Path, spec: RunSpec, cfg: ProjectConfig | None = None):
    from lights_out_dev.run.supervisor import supervise

    cfg = cfg or make_cfg(tmp_path)
    state_path = tmp_path / "logs" / "runs" / "cartpole__slurm.json"
    st = supervise(spec, cfg, tmp_path, state_path, executor=SlurmExecutor(cfg, tmp_path), status_line=lambda s: None)
    return st, state_path


def assert_jobs_recorded(st):
    ids = [a.job_id for a in st.attempts]
    assert all(ids) and len(set(ids)) == len(ids), ids
    assert all(a.node in (*NODES, ALL_NODES) for a in st.attempts)
    for a in st.attempts:
        assert squeue_state(a.job_id) not in ("PENDING", "RUNNING", "COMPLETING")


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_supervised_crash_is_retried_as_a_new_job(slurm_cluster, tmp_path):
    st, _ = supervise_slurm(tmp_path, make_spec("crash@1"))
    assert [a.verdict for a in st.attempts] == ["crash", "completed"]
    assert st.status == "completed"
    assert_jobs_recorded(st)
    for a in st.attempts:  # each job asked Slurm for the run's GPU; the trainer was kept on the CPU
        assert "#SBATCH --gres=gpu:1" in Path(a.log_path).with_suffix(".sbatch").read_text()
        assert a.argv[a.argv.index("--device") + 1] == "cpu"


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_supervised_stall_is_cancelled(slurm_cluster, tmp_path):
    cfg = make_cfg(tmp_path, stall=PolicyRule(action="give_up", max_attempts=0))
    st, _ = supervise_slurm(tmp_path, make_spec("stall@1", max_iterations=3), cfg)
    assert [a.verdict for a in st.attempts] == ["stall"]
    assert st.status == "failed"
    assert_jobs_recorded(st)
    assert squeue_state(st.attempts[0].job_id) in ("CANCELLED", "FAILED")


@pytest.mark.slurm
@pytest.mark.timeout(120)
def test_supervised_config_error_is_not_retried(slurm_cluster, tmp_path):
    st, _ = supervise_slurm(tmp_path, make_spec("config_error@1"))
    assert [a.verdict for a in st.attempts] == ["config_error"]
    assert st.status == "failed"
    assert_jobs_recorded(st)


@pytest.mark.slurm
@pytest.mark.timeout(150)
def test_supervised_time_limit_signal_ends_in_timeout_with_checkpoint(slurm_cluster, tmp_path):
    # What Slurm does at --time minus signal_lead_s, sent at once: B:USR1 to the batch shell.
    state_path = tmp_path / "logs" / "runs" / "cartpole__slurm.json"

    def signal_when_healthy():
        job_id = wait_for(lambda: healthy_job(state_path), 100, "the first iteration")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)

    t = threading.Thread(target=signal_when_healthy, daemon=True)
    t.start()
    st, _ = supervise_slurm(tmp_path, make_spec("slow=1", max_iterations=200))
    t.join(5)
    assert [a.verdict for a in st.attempts] == ["timeout"]
    assert st.status == "timeout"
    log = Path(st.attempts[0].log_path).read_text()
    assert jobscript.TIME_LIMIT_MARKER in log
    assert st.checkpoints, "the trainer saved a checkpoint when told the time limit was near"
    assert_jobs_recorded(st)


ADOPT_SCRIPT = textwrap.dedent("""
    import sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from test_slurm import make_spec, supervise_slurm
    supervise_slurm(Path({tmp!r}), make_spec("slow=0.5", max_iterations=8))
""")


@pytest.mark.slurm
@pytest.mark.timeout(180)
def test_restarted_supervisor_adopts_the_running_job(slurm_cluster, tmp_path):
    """A supervisor SIGKILLed while its job runs; the next one adopts the job id, no new sbatch."""
    state_path = tmp_path / "logs" / "runs" / "cartpole__slurm.json"
    script = ADOPT_SCRIPT.format(root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path))
    first = subprocess.Popen([sys.executable, "-c", script], env={**os.environ}, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        job_id = wait_for(lambda: healthy_job(state_path), 100, "the first iteration under the first supervisor")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert squeue_state(job_id) == "RUNNING"  # the job outlives its supervisor
    st, _ = supervise_slurm(tmp_path, make_spec("slow=0.5", max_iterations=8))
    assert [a.job_id for a in st.attempts] == [job_id]
    assert st.status == "completed", st.reason
    assert_jobs_recorded(st)


DIES_AFTER_SUBMIT = textwrap.dedent("""
    import os, signal, sys
    sys.path[:0] = [{root!r}, {tests!r}]
    from pathlib import Path
    from lights_out_dev.executors.slurm.executor import SlurmExecutor
    from lights_out_dev.run.supervisor import supervise
    from test_slurm import make_cfg, make_spec

    class DiesAfterSubmit(SlurmExecutor):
        def start(self, *a, **kw):
            handle = super().start(*a, **kw)
            Path({job_file!r}).write_text(handle.job_id)
            os.kill(os.getpid(), signal.SIGKILL)  # before the supervisor records the job

    tmp = Path({tmp!r})
    cfg = make_cfg(tmp)
    supervise(make_spec("slow=0.5", max_iterations=8), cfg, tmp, tmp / "logs" / "runs" / "cartpole__slurm.json",
              executor=DiesAfterSubmit(cfg, tmp), status_line=lambda s: None)
""")


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_supervisor_killed_between_submit_and_record_adopts_the_job(slurm_cluster, tmp_path):
    """The launch was written ahead (its run token) but its job id never recorded: the next supervisor finds
    the job by its batch script and watches it to the end instead of submitting a second one."""
    job_file = tmp_path / "job_id"
    script = DIES_AFTER_SUBMIT.format(root=str(ROOT), tests=str(ROOT / "tests"), tmp=str(tmp_path),
                                      job_file=str(job_file))
    first = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert first.returncode == -signal.SIGKILL, first.stdout[-2000:] + first.stderr[-2000:]
    job_id = job_file.read_text()
    assert squeue_state(job_id) in ("PENDING", "RUNNING")
    lines: list[str] = []
    from lights_out_dev.run.supervisor import supervise

    cfg = make_cfg(tmp_path)
    st = supervise(make_spec("slow=0.5", max_iterations=8), cfg, tmp_path,
                   tmp_path / "logs" / "runs" / "cartpole__slurm.json", executor=SlurmExecutor(cfg, tmp_path),
                   status_line=lines.append)
    assert any(f"Slurm job {job_id}" in line and "adopting" in line for line in lines), lines
    assert [a.job_id for a in st.attempts] == [job_id], [a.reason for a in st.attempts]
    assert st.status == "completed", st.reason
    assert Path(st.attempts[0].log_path).read_text().count("lights-out: submitted Slurm job") == 1
    assert_jobs_recorded(st)


# -- a sweep through the Slurm executor, killed and restarted ---------------------------------------

SWEEP_PLAN = """\
name: slurmsweep
mode: parallel
runs:
  - task: cartpole:base
    overrides: {max_iterations: 8, trainer_args: [--inject, "slow=0.5"]}
    grid: {num_envs: [16], seed: [1, 2]}
"""


@pytest.mark.slurm
@pytest.mark.timeout(240)
def test_killed_sweep_readopts_its_running_jobs(slurm_cluster, tmp_path):
    """`doit sweep --executor slurm` SIGKILLed while its jobs run; the rerun adopts them (same job ids)."""
    from test_sweep import (  # the sweep tests' own repo helpers
        doit_argv,
        env_for,
        make_repo,
        states,
    )

    repo = make_repo(tmp_path / "repo", {"slurmsweep": SWEEP_PLAN})
    argv = doit_argv("sweep", "--plan", "sweeps/slurmsweep.yaml", "--executor", "slurm")
    overlay = tmp_path / "fake_gpus.toml"
    overlay.write_text('[slurm]\ntrainer_device = "cpu"\n')
    env = {**env_for(repo), "LIGHTS_OUT_CONFIG": str(overlay)}
    first = subprocess.Popen(argv, cwd=repo, env=env, stdout=open(repo / "first.log", "w"),
                             stderr=subprocess.STDOUT, start_new_session=True)
    try:
        def both_healthy():
            sts = states(repo, "slurmsweep")
            jobs = {i: s["attempts"][-1]["job_id"] for i, s in sts.items()
                    if s["attempts"] and s["attempts"][-1].get("healthy_at")}
            return jobs if len(jobs) == 2 else None
        jobs = wait_for(both_healthy, 150, "both sweep runs to pass their first iteration")
    finally:
        first.send_signal(signal.SIGKILL)  # the doit process only; its Slurm jobs live on
        first.wait()
    assert all(squeue_state(j) == "RUNNING" for j in jobs.values())
    second = subprocess.run(argv, cwd=repo, env=env, capture_output=True, text=True, timeout=150)
    assert second.returncode == 0, second.stdout + second.stderr
    after = states(repo, "slurmsweep")
    for i, job_id in jobs.items():
        assert [a["job_id"] for a in after[i]["attempts"]] == [job_id], after[i]["attempts"]
        assert after[i]["status"] == "completed"
        script = Path(after[i]["attempts"][0]["log_path"]).with_suffix(".sbatch").read_text()
        assert "#SBATCH --gres=gpu:1" in script  # trainer_device = "cpu" keeps the trainer off the fake GPU only


GPU_SWEEP_PLAN = """\
name: gpusweep
mode: parallel
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 2}
  - task: cartpole:base-mgpu
    gpus: 2
    overrides: {num_envs: 16, max_iterations: 2}
"""


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_sweep_jobs_request_the_runs_gpus_run_the_guard_and_give_the_trainer_the_allocated_device(
        slurm_cluster, tmp_path):
    """`doit sweep --executor slurm` with the default trainer_device: each job asks Slurm for its run's GPUs,
    runs the GPU guard inside the allocation, and a single-GPU trainer is told the job's own cuda:0. The
    cluster's GPUs are fake (no driver): the guard passes (allowed_models only) and that trainer refuses the
    CUDA device it was given (a config error), which is what proves it got one."""
    from test_sweep import doit_argv, env_for, make_repo, states

    repo = make_repo(tmp_path / "repo", {"gpusweep": GPU_SWEEP_PLAN})
    overlay = tmp_path / "guard.toml"
    overlay.write_text('[gpu_guard]\nallowed_models = ["H200"]\n')
    env = {**env_for(repo), "LIGHTS_OUT_CONFIG": str(overlay)}
    proc = subprocess.run(doit_argv("sweep", "--plan", "sweeps/gpusweep.yaml", "--executor", "slurm"), cwd=repo,
                          env=env, capture_output=True, text=True, timeout=280)
    after = states(repo, "gpusweep")
    assert sorted(after) == [1, 2], proc.stdout[-3000:] + proc.stderr[-2000:]
    for index, n_gpus in ((1, 1), (2, 2)):
        attempt = after[index]["attempts"][0]
        assert attempt["job_id"] and attempt["gpus"] == list(range(n_gpus)), attempt
        script = Path(attempt["log_path"]).with_suffix(".sbatch").read_text()
        assert f"#SBATCH --gres=gpu:{n_gpus}\n" in script
        assert "lights_out_dev.cli.preflight gpu_guard || {" in script  # the guard, before the trainer
        assert script.index("gpu_guard ||") < script.index("workloads/train.py")
        assert "CUDA_VISIBLE_DEVICES=" not in script.replace("CUDA_VISIBLE_DEVICES=${", "")  # Slurm's own
        log = Path(attempt["log_path"]).read_text()
        assert "gpu_guard: no NVIDIA driver" in log  # it ran inside the allocation
        assert re.search(r"CUDA_VISIBLE_DEVICES=\d", log), log[-2000:]  # Slurm gave the job its GPUs
    single = after[1]["attempts"][0]
    assert single["argv"][single["argv"].index("--device") + 1] == "cuda:0"
    assert "torch sees no CUDA device" in Path(single["log_path"]).read_text()  # the trainer was given it
    assert single["verdict"] == "config_error", single["reason"]
    # torch.distributed.run's ranks take their local GPU themselves (cuda:<rank> where torch sees CUDA; the
    # fake GPUs have no driver, so the CPU here): no --device, two ranks, the run completes
    ranks = after[2]["attempts"][0]
    assert "--distributed" in ranks["argv"] and "--device" not in ranks["argv"]
    assert ranks["verdict"] == "completed", ranks["reason"]


# -- two nodes: multi-node runs, preemption, node failure, job arrays -------------------------------

def healthy_job(state_path: Path):
    """The current attempt's job id once it passed its first iteration, else None."""
    st = load_state(state_path) if state_path.exists() else None
    a = st.current if st else None
    return a and a.healthy_at and a.verdict is None and a.job_id


def job_node(job_id: str) -> str:
    """Where Slurm runs the job (the run state learns a node only at the attempt's end if the job was
    still pending when it was submitted)."""
    out = subprocess.run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%N"], capture_output=True, text=True)
    return out.stdout.strip()


def in_background(fn):
    errors: list[BaseException] = []

    def body():
        try:
            fn()
        except BaseException as e:  # noqa: BLE001 - re-raised in the test thread
            errors.append(e)
    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, errors


def processes_with(token: str) -> list[int]:
    """Pids whose command line contains `token` (space-separated arguments)."""
    found = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if token in cmdline:
                found.append(int(d.name))
    return found


def mgpu_spec(nodes: int, ranks: int, max_iterations: int, inject: str | None = None) -> RunSpec:
    return RunSpec(task="cartpole:slurm-mgpu", family="cartpole", launcher="lab_mgpu", prefix=[sys.executable],
                   script=TRAIN, trainer_task="Lo-Cartpole-v0", num_envs=16, max_iterations=max_iterations,
                   gpus=ranks, nodes=nodes, extra_args=["--inject", inject] if inject else [])


@pytest.mark.slurm
@pytest.mark.timeout(400)
def test_two_nodes_two_ranks_each_crash_resume_complete_with_rank0_logging(slurm_cluster, tmp_path):
    """2 nodes x 2 ranks of the reference trainer (gloo on the CPU). At iteration 2 the last rank leaves the
    collective; the others' all-reduce fails, the supervisor sees the fatal line and cancels the job, which
    ends every node's processes. The retry (a new 2-node job) resumes from the checkpoint and completes."""
    cfg = make_cfg(tmp_path)
    # torch.distributed.run's agents wait for each other at exit (the exit barrier): allow for it.
    cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"stall_s": 60})})
    spec = mgpu_spec(nodes=2, ranks=2, max_iterations=4, inject="nccl@2")
    spec = spec.model_copy(update={"env": {"LIGHTS_OUT_NCCL_TIMEOUT_S": "5"}})
    st, _ = supervise_slurm(tmp_path, spec, cfg)
    assert [x.verdict for x in st.attempts] == ["nccl", "completed"], [x.reason for x in st.attempts]
    assert st.status == "completed", st.reason
    crashed, resumed = st.attempts
    assert all(a.node == ALL_NODES for a in st.attempts)  # each attempt one job on both nodes
    assert "collective operation failed" in crashed.reason
    assert squeue_state(crashed.job_id) in ("CANCELLED", "FAILED")
    # No process of the failed attempt is left on either node (the nodes share this machine's pid space).
    assert not processes_with(crashed.argv[crashed.argv.index("--run_name") + 1] + " ")
    assert "--resume" in resumed.argv and "--load_run" in resumed.argv
    script = Path(resumed.log_path).with_suffix(".sbatch").read_text()
    assert "#SBATCH --nodes=2" in script and "#SBATCH --gres=gpu:2" in script
    log = Path(resumed.log_path).read_text()
    # One torch.distributed.run per node, meeting in a c10d rendezvous on the first node, 4 ranks in all.
    for k, node in enumerate(NODES):
        assert f"{jobscript.NODE_MARKER} {k} of 2 on {node}: torch.distributed.run, rendezvous lo-n1:" in log
    assert f"id {resumed.job_id}-0" in log  # a rendezvous of its own per attempt
    assert "Synchronizing parameters for rank 3" in log
    # Rank 0 logs: every iteration once, in one TensorBoard run.
    iterations = re.findall(r"Learning iteration (\d+)/", log)
    assert iterations and len(iterations) == len(set(iterations)), iterations
    assert resumed.tb_dir and len(list(Path(resumed.tb_dir).glob("events.out.tfevents.*"))) == 1
    assert st.final.iteration == 4 and st.final.mean_reward is not None
    assert_jobs_recorded(st)


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_the_submit_hosts_gpus_are_not_sampled_as_the_jobs(slurm_cluster, tmp_path, monkeypatch):
    """The supervisor's host has two GPUs, one busy and one idle (someone else's work): that is no imbalance
    of the 2-GPU Slurm job, whose GPUs are on its node. Sampled as the job's, it would be killed as
    imbalanced after idle_gpu_stall_s and given the host's VRAM as its peak."""
    from lights_out_dev.host import nvml

    def host_gpus():
        return [nvml.GpuInfo(index=i, name="fake", uuid=f"GPU-{i}", mem_used_mb=mem, mem_total_mb=80000,
                             util_pct=util, power_w=None, power_limit_w=None, sm_clock_mhz=None, sm_clock_max_mhz=None,
                             temp_c=None, processes=[nvml.GpuProc(4242, mem - 500, "python")] if util > 50 else [])
                for i, (util, mem) in enumerate(((95.0, 60000), (3.0, 500)))]
    monkeypatch.setattr(nvml, "query_gpus", host_gpus)
    cfg = make_cfg(tmp_path)
    cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"stall_s": 60})})  # the exit barrier
    st, _ = supervise_slurm(tmp_path, mgpu_spec(nodes=1, ranks=2, max_iterations=16, inject="slow=0.5"), cfg)
    assert [a.verdict for a in st.attempts] == ["completed"], [a.reason for a in st.attempts]
    attempt = st.attempts[0]
    assert attempt.gpus == [0, 1] and attempt.imbalance is None and attempt.peak_vram_mb is None
    assert attempt.healthy_at and attempt.ended_at - attempt.healthy_at > cfg.monitor.idle_gpu_stall_s + 2


@pytest.mark.slurm
@pytest.mark.timeout(60)
def test_gpu_guard_runs_on_every_node_of_a_multi_node_job(slurm_cluster, tmp_path):
    (tmp_path / "pyproject.toml").write_text("[tool.lights_out.gpu_guard]\nexpected_count = 2\n")
    ex = SlurmExecutor(ProjectConfig(gpu_guard=GpuGuard(expected_count=2)), tmp_path)
    argv = [sys.executable, "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", *fake(tmp_path, 1)[1:]]
    h = ex.start(argv, {}, tmp_path / "guard2.log", [0, 1], nodes=2)
    st = ex.wait(h, 30)
    assert (st.exit_code, st.scheduler_state) == (42, "FAILED")
    log = log_text(h)
    assert log.count("gpu_guard: expected 2 GPUs") == 2, log  # once per node: the fake GPUs have no driver
    assert "refusing to train" in log and "started" not in log and jobscript.NODE_MARKER not in log
    assert h.node == ALL_NODES


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_two_node_time_limit_signal_stops_every_node_gracefully(slurm_cluster, tmp_path):
    """Slurm's B:USR1 reaches the batch shell on the first node; the trainer's ranks on both nodes get SIGINT
    (srun alone would not pass one on) and save a checkpoint: the run is timeout, not a failure."""
    state_path = tmp_path / "logs" / "runs" / "cartpole__slurm.json"

    def signal_when_healthy():
        job_id = wait_for(lambda: healthy_job(state_path), 150, "the first iteration")
        subprocess.run(["scancel", "--signal=USR1", "--batch", job_id], check=True)

    t, errors = in_background(signal_when_healthy)
    cfg = make_cfg(tmp_path)
    cfg = cfg.model_copy(update={"monitor": cfg.monitor.model_copy(update={"stall_s": 60})})
    st, _ = supervise_slurm(tmp_path, mgpu_spec(nodes=2, ranks=2, max_iterations=200, inject="slow=1"), cfg)
    t.join(5)
    assert not errors, errors
    assert [a.verdict for a in st.attempts] == ["timeout"], [a.reason for a in st.attempts]
    log = Path(st.attempts[0].log_path).read_text()
    assert jobscript.TIME_LIMIT_MARKER in log
    assert log.count("[INFO] Received SIGINT") == 4, log[-3000:]  # every rank on both nodes
    assert log.count("saved checkpoint") == 1  # by rank 0, the one that writes
    assert st.checkpoints
    assert_jobs_recorded(st)


@pytest.mark.slurm
@pytest.mark.timeout(300)
def test_requeue_mid_run_is_preempted_and_resumes_from_the_checkpoint(slurm_cluster, tmp_path):
    cfg = make_cfg(tmp_path)
    cfg = cfg.model_copy(update={"slurm": cfg.slurm.model_copy(update={"requeue": True})})
    state_path = tmp_path / "logs" / "runs" / "cartpole__slurm.json"

    def requeue_when_healthy():
        job_id = wait_for(lambda: healthy_job(state_path), 150, "the first iteration")
        subprocess.run(["scontrol", "requeue", job_id], check=True)  # what a preemption with REQUEUE does

    t, errors = in_background(requeue_when_healthy)
    st, _ = supervise_slurm(tmp_path, make_spec("slow=0.5", max_iterations=12), cfg)
    t.join(5)
    assert not errors, errors
    assert [a.verdict for a in st.attempts] == ["preempted", "completed"], [a.reason for a in st.attempts]
    assert st.status == "completed"
    first, second = st.attempts
    assert "requeued" in first.reason.lower() and first.decision.startswith("retry")
    # Slurm's TERM reached the batch shell, which stopped the trainer gracefully: it saved a checkpoint.
    assert "saved checkpoint" in Path(first.log_path).read_text()
    assert second.argv[second.argv.index("--resume") + 1:][:2] == ["--load_run", f"^{re.escape(Path(first.tb_dir).name)}$"]
    assert squeue_state(first.job_id) == "CANCELLED"  # the requeued job never restarts from scratch
    assert_jobs_recorded(st)


@pytest.mark.slurm
@pytest.mark.timeout(360)
def test_killed_slurmd_is_node_fail_and_the_retry_excludes_the_node(slurm_cluster, tmp_path):
    state_path = tmp_path / "logs" / "runs" / "cartpole__slurm.json"
    killed: list[str] = []

    def kill_the_node_when_healthy():
        job_id = wait_for(lambda: healthy_job(state_path), 150, "the first iteration")
        node = job_node(job_id)
        assert node in NODES, node
        subprocess.run([CLUSTER, "kill-node", node.removeprefix("lo-n")], check=True, capture_output=True,
                       env={**os.environ, "LIGHTS_OUT_SLURM_DIR": str(SLURM_DIR)})
        killed.append(node)

    t, errors = in_background(kill_the_node_when_healthy)
    try:
        # Slow on the first attempt only (the injection's rule): Slurm notices the node is gone (SlurmdTimeout)
        # long before that attempt could finish on it; the retry runs at full speed.
        st, _ = supervise_slurm(tmp_path, make_spec("slow=0.5", max_iterations=100))
        t.join(5)
    finally:
        restore_cluster()
    assert not errors, errors
    assert [a.verdict for a in st.attempts] == ["node_fail", "completed"], [a.reason for a in st.attempts]
    first, second = st.attempts
    assert first.failed_nodes == killed and first.node == killed[0]
    assert first.decision.startswith("exclude_node") and first.decision.endswith(f"(excluding {killed[0]})")
    assert second.node != killed[0] and second.node in NODES
    assert f"#SBATCH --exclude={killed[0]}" in Path(second.log_path).with_suffix(".sbatch").read_text()
    assert "--resume" in second.argv
    assert st.status == "completed"


def restore_cluster():
    """Bring a killed node back (its slurmd restarted; ReturnToService=2) and wait until both are usable."""
    env = {**os.environ, "LIGHTS_OUT_SLURM_DIR": str(SLURM_DIR)}
    subprocess.run([CLUSTER, "start"], capture_output=True, env=env, timeout=120, check=True)


ARRAY_PLAN = """\
name: arraysweep
mode: parallel
slurm_array: 2
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 2, trainer_args: [--inject, "slow=1"]}
    grid: {seed: [1, 2, 3, 4, 5, 6]}
"""


@pytest.mark.slurm
@pytest.mark.timeout(420)
def test_array_sweep_of_six_runs_never_runs_more_than_two(slurm_cluster, tmp_path):
    from test_sweep import doit_argv, env_for, make_repo, states

    repo = make_repo(tmp_path / "repo", {"arraysweep": ARRAY_PLAN})
    overlay = tmp_path / "fake_gpus.toml"
    overlay.write_text('[slurm]\ntrainer_device = "cpu"\n')
    env = {**env_for(repo), "LIGHTS_OUT_CONFIG": str(overlay)}
    running_at_once: list[int] = []
    done = threading.Event()

    def sample():
        while not done.is_set():
            out = subprocess.run(["squeue", "-h", "-t", "R", "-n", "lo-sweep__arraysweep-p1", "-o", "%i"],
                                 capture_output=True, text=True).stdout.split()
            running_at_once.append(len(out))
            time.sleep(0.2)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        proc = subprocess.run(doit_argv("sweep", "--plan", "sweeps/arraysweep.yaml", "--executor", "slurm"),
                              cwd=repo, env=env, capture_output=True, text=True, timeout=400)
    finally:
        done.set()
        sampler.join(5)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    after = states(repo, "arraysweep")
    assert len(after) == 6 and all(s["status"] == "completed" for s in after.values())
    ids = [s["attempts"][0]["job_id"] for _, s in sorted(after.items())]
    array_id = ids[0].split("_")[0]
    assert sorted(ids) == [f"{array_id}_{i}" for i in range(6)]  # one array; each run its own element and state
    assert max(running_at_once) == 2, running_at_once  # the cap held, and two did run at once
    scripts = list((repo / "local_experiment_logs").glob("*.array.sbatch"))
    assert len(scripts) == 1 and "#SBATCH --array=0-5%2" in scripts[0].read_text()
    assert "#SBATCH --gres=gpu:1" in scripts[0].read_text()  # each element asks for its run's GPU
