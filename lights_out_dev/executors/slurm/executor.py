"""SlurmExecutor: one attempt = one Slurm batch job (sbatch / squeue / scontrol / sacct / scancel).

The supervisor drives it exactly like the local executor: start() submits and returns a Handle
carrying the job id (and the node once the job runs), wait() polls Slurm at a sub-second cadence
until a final state, stop() cancels (gracefully first: SIGINT to the batch shell, which forwards
it to the trainer). The job's output goes to the attempt's log file (--open-mode=append), which
the supervisor tails like a local log. Scheduler-side facts the trainer cannot print (still
pending and why, the final Slurm state) are appended to that log as `lights-out:` lines, so the
ledger's log tail shows them too.

Preemption and node failure: a job that Slurm requeues (preemption with PreemptMode=REQUEUE,
`scontrol requeue`, a node failure of a --requeue job) is seen going back to PENDING after it ran;
the executor cancels it and ends the attempt with state REQUEUED (or NODE_FAIL when one of the
job's nodes is down), so the supervisor's retry resumes from the checkpoint as a new job instead of
Slurm restarting the trainer from scratch. The nodes found down are reported in
`ExitStatus.failed_nodes`, for the retry's --exclude.

Job arrays: `JobArray` gathers the first launches of several runs (a sweep phase) into one
`sbatch --array=0-<n-1>%K`; each run keeps its own handle (job id `<array>_<i>`), log, state and
retries (a retry is a job of its own).

GPUs: Slurm allocates them (`--gres`), so the run holds no local lease (base.SchedulerLease) and sets
no CUDA_VISIBLE_DEVICES itself; the trainer addresses the job's own cuda:0..N-1, or the CPU with
`slurm.trainer_device = "cpu"`. The submitting host's NVML is never sampled as the run's: it sees other
GPUs than the job's. Sampling on the node (`srun --overlap` every few seconds) is not cheap, so the
VRAM, idle-GPU and imbalance checks do not run for Slurm jobs (the GPU guard still checks the
allocation inside the job).

A launch written ahead but not recorded (the supervisor died between sbatch and its next save) is found
again by its batch script: the queued job whose command is the script beside the launch's log, which
carries the launch's run token. (An array element's script is the array's: it is not found.)

All Slurm commands are argv lists; user values reach Slurm only through the generated script
(lights_out_dev/executors/slurm/jobscript.py) with every value quoted.
"""
from __future__ import annotations

import os
import pwd
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from lights_out_dev.core.config import PACKAGE_PARENT, ProjectConfig
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import atomic_write_text
from lights_out_dev.executors.base import ExitStatus, Handle, Recovered, SchedulerLease
from lights_out_dev.executors.local import LaunchError
from lights_out_dev.executors.slurm import jobscript
from lights_out_dev.host.procs import RUN_TOKEN_VAR

# A job in one of these states still holds (or will hold) resources and may run processes.
ACTIVE_STATES = frozenset({
    "PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "SUSPENDED", "REQUEUED", "REQUEUE_HOLD",
    "REQUEUE_FED", "RESIZING", "SIGNALING", "STAGE_OUT", "STOPPED", "RESV_DEL_HOLD", "SPECIAL_EXIT",
})
COMMAND_TIMEOUT_S = 30.0
START_WAIT_S = 3.0  # start() waits this long for the job to run, to report its node at once
PENDING_NOTE_EVERY_S = 60.0  # a "still pending" line in the log so the stall watch sees a live job
# A job that ran and is back in one of these states was requeued by Slurm (preemption, node failure).
REQUEUED_STATES = frozenset({"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED"})
# Node states (scontrol show node) of a node that failed under a job.
_NODE_DOWN_RE = re.compile(r"DOWN|FAIL|NOT_RESPONDING")
# An array element waiting for the array's %K cap is not stuck: the pending timeout leaves it alone.
ARRAY_LIMIT_REASON = "JobArrayTaskLimit"
ARRAY_WINDOW_S = 5.0  # how long the first launch of an array waits for the other runs to join


class SlurmError(LaunchError):
    """A Slurm problem a user can fix; str() is one sentence naming the cause and the fix."""


class SlurmNotInstalled(SlurmError):
    pass


class SlurmControllerDown(SlurmError):
    pass


class SlurmInvalidPartition(SlurmError):
    pass


class SlurmRejected(SlurmError):
    """sbatch refused the request itself (e.g. more GPUs than any node has)."""


class SlurmSubmitError(SlurmError):
    pass


@dataclass(frozen=True)
class JobInfo:
    state: str  # Slurm's job state, e.g. PENDING, RUNNING, COMPLETED
    reason: str  # Slurm's pending/end reason, e.g. Resources, None
    node: str | None


def pending_sentence(job_id: str, reason: str, waited_s: float, partition: str | None) -> str:
    """One sentence for a job still waiting in the queue, from Slurm's pending reason. Pure."""
    r = reason.strip("() ")
    where = f"partition {partition}" if partition else "the default partition"
    lead = f"Slurm job {job_id} is pending for {waited_s:.0f} s"
    if r in ("Resources", "None", ""):
        return f"{lead}: waiting for free resources (GPUs, CPUs or memory) on {where}."
    if r == "Priority":
        return f"{lead}: higher-priority jobs are ahead of it on {where}."
    if "ReqNodeNotAvail" in r or "UnavailableNodes" in r or "NodeDown" in r or "DRAIN" in r.upper():
        nodes = r.split("UnavailableNodes:", 1)[1] if "UnavailableNodes:" in r else "the requested nodes"
        return (f"{lead}: {nodes or 'the requested nodes'} are drained or down ({r}); ask the cluster admin, "
                f"or change slurm.nodelist / slurm.partition.")
    if r in ("PartitionDown", "PartitionInactive"):
        return f"{lead}: {where} is down ({r}); choose another slurm.partition."
    if r.startswith("JobHeld"):
        return f"{lead}: the job is held ({r}); release it with `scontrol release {job_id}`."
    if r in ("BadConstraints", "PartitionConfig", "PartitionNodeLimit"):
        return f"{lead}: no node of {where} can ever satisfy the request ({r}); fix slurm.constraint or the GPU count."
    return f"{lead}: Slurm's reason is {r}."


def submit_error(stderr: str, partition: str | None, gpus: int) -> SlurmError:
    """The exception for a failed sbatch, from its stderr. Pure."""
    text = " ".join(stderr.split())
    low = text.lower()
    if "unable to contact slurm controller" in low or "connection refused" in low or "connect failure" in low:
        return SlurmControllerDown(f"sbatch could not contact the Slurm controller ({text}); check `scontrol ping` "
                                   f"and SLURM_CONF, or use --executor local.")
    if "invalid partition" in low:
        return SlurmInvalidPartition(f"Slurm has no partition {partition!r} ({text}); set [tool.lights_out.slurm] "
                                     f"partition to one that `sinfo -s` lists.")
    if "requested node configuration is not available" in low or "invalid generic resource" in low:
        return SlurmRejected(f"Slurm rejected the job: no node offers what it asks ({gpus} GPU(s), "
                             f"partition {partition or 'default'}) ({text}); ask for fewer GPUs or change "
                             f"slurm.partition / slurm.constraint / slurm.gres_per_gpu.")
    if "invalid account" in low or "invalid qos" in low:
        return SlurmRejected(f"Slurm rejected the account or QOS ({text}); fix slurm.account or slurm.extra_sbatch.")
    return SlurmSubmitError(f"sbatch failed ({text or 'no message'}); fix the [tool.lights_out.slurm] settings "
                            f"named there.")


def placement_problem(spec: RunSpec, executor: str) -> str | None:
    """Why a run's node count cannot be launched (one sentence), or None. Pure."""
    if spec.nodes <= 1:
        return None
    if not spec.multi_gpu:
        return (f"{spec.task} asks for {spec.nodes} nodes, but only an -mgpu variant (torch.distributed.run) "
                f"runs on several nodes; use {spec.task}-mgpu or drop --nodes.")
    if executor != "slurm":
        return (f"{spec.task} asks for {spec.nodes} nodes, which needs the Slurm executor; add --executor slurm "
                f"or drop --nodes.")
    return None


def exit_from_code(code: str) -> tuple[int | None, int | None]:
    """Slurm's ExitCode 'rc:signal' -> (exit_code, signal). Pure."""
    m = re.fullmatch(r"(\d+):(\d+)", code.strip())
    if not m:
        return None, None
    rc, sig = int(m[1]), int(m[2])
    return (None, sig) if sig else (rc, None)


def _run(argv: list[str], env: dict[str, str] | None = None, cwd: Path | None = None,
         timeout: float = COMMAND_TIMEOUT_S) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)
    except FileNotFoundError:
        raise SlurmNotInstalled(f"{argv[0]} not found: install Slurm's client or use --executor local.") from None
    except subprocess.TimeoutExpired:
        raise SlurmControllerDown(f"`{' '.join(argv[:2])}` did not answer within {timeout:.0f} s; check "
                                  f"`scontrol ping`, or use --executor local.") from None


def _controller_down(stderr: str) -> bool:
    low = stderr.lower()
    return "unable to contact slurm controller" in low or "connect failure" in low


@dataclass
class _ArrayBatch:
    opened: float
    reqs: list[jobscript.JobRequest] = field(default_factory=list)  # in array index order
    job_id: str | None = None
    error: Exception | None = None
    submitting: bool = False
    submitted: bool = False


class JobArray:
    """Gathers the first launch of up to `expected` runs into one Slurm job array of at most
    `max_parallel` running elements. Shared by the executors of one sweep phase (one per run thread):
    each start() joins the open batch; the batch is submitted when all expected runs joined or
    ARRAY_WINDOW_S after its first one, whichever comes first. A run joins once (by job name); its
    retries, and runs arriving after the submission, are submitted as jobs of their own."""

    def __init__(self, max_parallel: int, expected: int, name: str = "lights-out-array",
                 window_s: float = ARRAY_WINDOW_S):
        self.max_parallel, self.expected, self.name, self.window_s = max_parallel, expected, name, window_s
        self._cv = threading.Condition()
        self._batch: _ArrayBatch | None = None
        self._joined: set[str] = set()

    def wants(self, job_name: str) -> bool:
        with self._cv:
            return job_name not in self._joined and len(self._joined) < self.expected

    def submit(self, executor: "SlurmExecutor", req: jobscript.JobRequest) -> tuple[str, str]:
        """(job id of this element, the array's script path), once the batch is submitted."""
        leader = False
        with self._cv:
            self._joined.add(req.job_name)
            batch = self._batch
            if batch is None or batch.submitting:
                batch = self._batch = _ArrayBatch(opened=time.monotonic())
            index = len(batch.reqs)
            batch.reqs.append(req)
            self._cv.notify_all()
            deadline = batch.opened + self.window_s
            while not batch.submitting and len(self._joined) < self.expected and time.monotonic() < deadline:
                self._cv.wait(max(0.01, deadline - time.monotonic()))
            if not batch.submitting:
                batch.submitting = leader = True
        if leader:
            try:
                batch.job_id = executor._submit_array(batch.reqs, self.max_parallel, self.name)
            except SlurmError as e:
                batch.error = e
            with self._cv:
                batch.submitted = True
                self._cv.notify_all()
        with self._cv:
            while not batch.submitted:
                self._cv.wait(1.0)
        if batch.error is not None:
            raise batch.error
        return f"{batch.job_id}_{index}", array_script_path(batch.reqs[0])


def array_script_path(first: jobscript.JobRequest) -> str:
    return str(Path(first.log_path).with_suffix(".array.sbatch"))


class SlurmExecutor:
    """executor.Executor for Slurm. `runtime_check` adds `python -m lights_out_dev.cli.preflight
    runtime_check` before the trainer inside each job."""

    kind = "slurm"
    poll_interval_s = 0.5  # how often squeue is asked while a job runs (and monitor's tick)

    def __init__(self, cfg: ProjectConfig, root: Path, *, runtime_check: bool = False,
                 array: JobArray | None = None):
        self.cfg, self.root = cfg, Path(root)
        self.slurm = cfg.slurm
        self.runtime_check = runtime_check
        self.array = array
        self._seen: dict[str, tuple[float, JobInfo | None]] = {}
        self._accounting: bool | None = None
        self._ended: dict[str, ExitStatus] = {}
        self._noted: dict[str, tuple[str, float]] = {}  # job id -> (pending reason, when) last written to the log

    # -- before a launch -----------------------------------------------------------------------
    @classmethod
    def visible_gpus(cls, needed: int, here: int) -> int:
        """A job's GPUs are on the cluster's nodes, not on this (login) machine; sbatch refuses what no node has."""
        return max(needed, here)

    @classmethod
    def job_array(cls, max_parallel: int, expected: int, name: str) -> JobArray:
        return JobArray(max_parallel, expected=expected, name=name)

    def lease(self, n_gpus: int, *, prefer: list[int] | None = None, wait: bool = False) -> SchedulerLease:
        return SchedulerLease()  # Slurm allocates the GPUs and queues the jobs

    def attempt_gpus(self, spec_gpus: int, lease_gpus: list[int] | None) -> list[int] | None:
        """The job's own GPUs as its trainer sees them, cuda:0..N-1, whatever the (empty) lease says."""
        return list(range(spec_gpus)) or None

    def trainer_gpus(self, gpus: list[int] | None) -> list[int] | None:
        return None if self.slurm.trainer_device == "cpu" else gpus

    def gpu_env(self, spec: RunSpec, gpus: list[int] | None) -> dict[str, str]:
        return {}  # Slurm sets CUDA_VISIBLE_DEVICES for the allocation

    # -- start ---------------------------------------------------------------------------------
    def start(self, argv: list[str], env: dict[str, str], log_path: Path, gpus: list[int] | None,
              time_limit_s: float | None = None, job_name: str = "lights-out", *, nodes: int = 1,
              exclude_nodes: list[str] | tuple[str, ...] = ()) -> Handle:
        """Write the batch script beside the log and submit it; gpus: how many GPUs the job asks
        for on each node (their indexes are Slurm's choice; the trainer sees them as cuda:0..N-1);
        nodes > 1: one job of that many nodes (a torch.distributed.run command); exclude_nodes:
        nodes the job must avoid."""
        log_path = Path(log_path)
        if not log_path.is_absolute():
            log_path = self.root / log_path
        log_path.parent.mkdir(parents=True, exist_ok=True)
        n_gpus = len(gpus) if gpus else 0
        # Only what differs from this environment is written; the rest travels with --export=ALL.
        literal = {k: v for k, v in env.items() if os.environ.get(k) != v}
        secrets = tuple(n for n in self.cfg.secrets if n in env)
        guard = self.cfg.gpu_guard
        # The checks import this package; PYTHONPATH makes that work from any working directory.
        python = ["env", f"PYTHONPATH={PACKAGE_PARENT}", sys.executable, "-m", "lights_out_dev.cli.preflight"]
        req = jobscript.JobRequest(
            argv=list(argv), log_path=str(log_path), workdir=str(self.root), job_name=job_name, gpus=n_gpus,
            time_limit_s=time_limit_s, env=literal, secret_names=secrets,
            guard_argv=python + ["gpu_guard"] if n_gpus and (guard.allowed_models or guard.expected_count) else None,
            preflight_argv=python + ["runtime_check"] if self.runtime_check else None,
            nodes=max(1, nodes), exclude=tuple(exclude_nodes), python=sys.executable)
        if self.array is not None and req.nodes == 1 and not req.exclude and n_gpus <= 1 \
                and self.array.wants(job_name):
            job_id, script_name = self.array.submit(self, req)
        else:
            try:
                job_id, script_name = self._submit(req, env), None
            except SlurmRejected as e:
                if not req.exclude:
                    raise
                raise SlurmRejected(f"{str(e).rstrip('.')} (nodes {', '.join(req.exclude)} are excluded after a node "
                                    f"failure; bring them back or set [tool.lights_out.policy.node_fail] "
                                    f"action = \"retry\").") from None
        now = time.time()
        self._note(str(log_path), f"lights-out: submitted Slurm job {job_id} "
                                  f"({Path(script_name).name if script_name else log_path.with_suffix('.sbatch').name})")
        # start_time stays None: it means a local process start time (procs.alive), not a wall time.
        handle = Handle(kind=self.kind, log_path=str(log_path), gpus=list(range(n_gpus)) or None, job_id=job_id,
                        nodes=req.nodes, script=script_name or str(log_path.with_suffix(".sbatch")),
                        submitted_at=now, pending_since=now)
        deadline = time.monotonic() + START_WAIT_S
        while time.monotonic() < deadline:
            info = self._poll(handle, fresh=True)
            if info is None or info.state != "PENDING":
                break
            time.sleep(0.1)
        return handle

    def _sbatch(self, script: str, script_path: Path, env: dict[str, str] | None, gpus: int) -> str:
        atomic_write_text(script_path, script)
        proc = _run(["sbatch", "--parsable", str(script_path)], env={**os.environ, **(env or {})}, cwd=self.root)
        if proc.returncode != 0:
            raise submit_error(proc.stderr, self.slurm.partition, gpus)
        job_id = proc.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise SlurmSubmitError(f"sbatch answered {proc.stdout.strip()!r} instead of a job id; check the Slurm "
                                   f"client (`sbatch --version`).")
        return job_id

    def _submit(self, req: jobscript.JobRequest, env: dict[str, str]) -> str:
        try:
            script = jobscript.render(req, self.slurm)
        except jobscript.JobScriptError as e:
            raise SlurmSubmitError(str(e)) from None
        return self._sbatch(script, Path(req.log_path).with_suffix(".sbatch"), env, req.gpus)

    def _submit_array(self, reqs: list[jobscript.JobRequest], max_parallel: int, name: str) -> str:
        """One sbatch for the whole array; the job id of the array (elements are <id>_<i>)."""
        try:
            script = jobscript.render_array(reqs, self.slurm, max_parallel, name)
        except jobscript.JobScriptError as e:
            raise SlurmSubmitError(str(e)) from None
        # Secrets travel by name in the submit environment (as for single jobs): this process's own.
        return self._sbatch(script, Path(array_script_path(reqs[0])), None, reqs[0].gpus)

    # -- observe -------------------------------------------------------------------------------
    def _query(self, job_id: str) -> JobInfo | None:
        """Slurm's view of the job; None when Slurm no longer knows it. Raises SlurmControllerDown."""
        proc = _run(["squeue", "-h", "-j", job_id, "-t", "all", "-o", "%T|%N|%r"])
        if proc.returncode != 0 and _controller_down(proc.stderr):
            raise SlurmControllerDown(f"the Slurm controller does not answer ({proc.stderr.strip()}).")
        line = proc.stdout.strip().splitlines()[0] if proc.returncode == 0 and proc.stdout.strip() else ""
        if line:
            state, node, reason = (line.split("|", 2) + ["", ""])[:3]
            return JobInfo(state=state.split()[0], reason=reason, node=node or None)
        return self._from_accounting(job_id)

    def _from_accounting(self, job_id: str) -> JobInfo | None:
        if self._accounting is False:
            return None
        proc = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "State,NodeList,Reason"])
        if "accounting storage is disabled" in proc.stderr.lower():
            self._accounting = False
            return None
        self._accounting = proc.returncode == 0
        line = proc.stdout.strip().splitlines()[0] if proc.stdout.strip() else ""
        if not line:
            return None
        state, node, reason = (line.split("|", 2) + ["", ""])[:3]
        return JobInfo(state=state.split()[0], reason=reason, node=None if node in ("", "None assigned") else node)

    def _poll(self, handle: Handle, fresh: bool = False) -> JobInfo | None:
        """The job's state, asked at most every poll_interval_s; keeps handle.node current."""
        now = time.monotonic()
        seen = self._seen.get(handle.job_id)
        if not fresh and seen and now - seen[0] < self.poll_interval_s:
            return seen[1]
        try:
            info = self._query(handle.job_id)
        except SlurmControllerDown:
            # Not an end: the job may well be running; keep the last known state and ask again.
            return seen[1] if seen else JobInfo("UNKNOWN", "controller unreachable", handle.node)
        self._seen[handle.job_id] = (now, info)
        if info is not None:
            if info.node and info.state != "PENDING":
                handle.node = info.node
            if info.state == "RUNNING":
                handle.ran = True  # back to PENDING after this = requeued
        return info

    def alive(self, handle: Handle) -> bool:
        """True while Slurm holds the job (pending, running, completing) or cannot be asked."""
        info = self._poll(handle, fresh=True)
        return info is not None and (info.state in ACTIVE_STATES or info.state == "UNKNOWN")

    def adoptable(self, handle: Handle) -> bool:
        """Slurm still holds the job: its id is the proof, the processes are the node's business."""
        return self.alive(handle)

    def recover_launch(self, token: str, log_path: str, gpus: list[int] | None, boot: str | None, *,
                       adopt: bool) -> Recovered:
        """The job of this user whose command is the launch's batch script, proven by the token in it."""
        script = (self.root / log_path).with_suffix(".sbatch")  # as start() wrote it (an absolute path stays)
        try:
            ours = f"export {RUN_TOKEN_VAR}={token}\n" in script.read_text()
        except OSError:  # never written: sbatch was not reached
            return Recovered()
        if not ours:  # an earlier launch's script of the same log name
            return Recovered()
        proc = _run(["squeue", "-h", "-u", pwd.getpwuid(os.getuid()).pw_name, "-o", "%i|%o"])
        jobs = [line.split("|", 1)[0] for line in proc.stdout.splitlines()
                if line.partition("|")[2].strip() == str(script)]
        if not jobs:
            return Recovered()
        handle = Handle(kind=self.kind, log_path=log_path, gpus=gpus, job_id=jobs[-1], script=str(script),
                        pending_since=time.time())
        self._poll(handle, fresh=True)  # its node, and whether it already ran
        if adopt:
            return Recovered(handle=handle)
        return Recovered(stopped=1, survivors=self.stop(handle, graceful=False, grace_s=0))

    def sample_gpus(self, handle: Handle, gpus: list[int]) -> None:
        return None  # the job's GPUs are on its node; this host's NVML would report others (module doc)

    def wait(self, handle: Handle, timeout: float) -> ExitStatus | None:
        if handle.job_id in self._ended:
            return self._ended[handle.job_id]
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            info = self._poll(handle)
            if info is None or (info.state not in ACTIVE_STATES and info.state != "UNKNOWN"):
                return self._finish(handle, info)
            if info.state in REQUEUED_STATES and handle.ran:
                return self._requeued(handle, info)
            if info.state == "PENDING":
                status = self._pending(handle, info)
                if status is not None:
                    return status
            elif info.state != "UNKNOWN":
                handle.pending_since = None  # a requeued job starts a new pending spell
            left = deadline - time.monotonic()
            if left <= 0:
                return None
            time.sleep(min(left, self.poll_interval_s))

    def _pending(self, handle: Handle, info: JobInfo) -> ExitStatus | None:
        """Note the pending reason in the log; past slurm.pending_timeout_s cancel the job."""
        if handle.pending_since is None:
            handle.pending_since = time.time()
        waited = time.time() - handle.pending_since
        sentence = pending_sentence(handle.job_id, info.reason, waited, self.slurm.partition)
        last_reason, last_at = self._noted.get(handle.job_id, (None, 0.0))
        if info.reason != last_reason or time.time() - last_at >= PENDING_NOTE_EVERY_S:
            self._note(handle.log_path, f"lights-out: {sentence}")
            self._noted[handle.job_id] = (info.reason, time.time())
        limit = self.slurm.pending_timeout_s
        if limit is None or limit <= 0 or waited < limit or ARRAY_LIMIT_REASON in info.reason:
            return None
        self._cancel(handle.job_id)
        self._gone(handle, 30.0)
        why = (f"cancelled Slurm job {handle.job_id}: still PENDING after {waited:.0f} s, longer than "
               f"slurm.pending_timeout_s={limit:g} ({info.reason.strip('()') or 'no reason given'}); raise the "
               f"timeout or free/choose other resources")
        return self._record(handle, ExitStatus(exit_code=None, scheduler_state="CANCELLED (pending timeout)",
                                               reason=why))

    def job_nodes(self, nodelist: str | None) -> list[str]:
        """Slurm's compressed node list ('lo-n[1-2]') -> host names."""
        if not nodelist:
            return []
        proc = _run(["scontrol", "show", "hostnames", nodelist])
        return proc.stdout.split() if proc.returncode == 0 else [nodelist]

    def failed_nodes(self, handle: Handle) -> list[str]:
        """The job's nodes that Slurm now sees down, failed or not responding."""
        failed = []
        for node in self.job_nodes(handle.node):
            proc = _run(["scontrol", "show", "node", "-o", node])
            m = re.search(r"\bState=(\S+)", proc.stdout)
            if m and _NODE_DOWN_RE.search(m[1]):
                failed.append(node)
        return failed

    def _requeued(self, handle: Handle, info: JobInfo) -> ExitStatus:
        """Slurm put the job that ran back in the queue: end the attempt (the retry resumes from the
        checkpoint as a job of its own) instead of letting Slurm start the same command from scratch."""
        failed = self.failed_nodes(handle)
        self._cancel(handle.job_id)
        self._gone(handle, 60.0)
        where = f" on {handle.node}" if handle.node else ""
        if failed:
            why = (f"Slurm requeued job {handle.job_id} after node {', '.join(failed)} failed{where}; "
                   f"cancelled it to resume from the checkpoint elsewhere")
            return self._record(handle, ExitStatus(exit_code=None, scheduler_state="NODE_FAIL", reason=why,
                                                   failed_nodes=failed))
        why = (f"Slurm requeued job {handle.job_id}{where} (preemption or scontrol requeue; reason "
               f"{info.reason.strip('()') or 'none'}); cancelled it to resume from the checkpoint")
        return self._record(handle, ExitStatus(exit_code=None, scheduler_state="REQUEUED", reason=why))

    def _finish(self, handle: Handle, info: JobInfo | None) -> ExitStatus:
        if info is None:
            why = (f"Slurm no longer knows job {handle.job_id} and has no accounting to ask; its end was not "
                   f"seen (MinJobAge passed?)")
            return self._record(handle, ExitStatus(exit_code=None, scheduler_state=None, reason=why))
        exit_code, sig = self._exit_code(handle.job_id)
        state = info.state
        reason = jobscript.EXIT_REASONS.get(exit_code) if exit_code is not None else None
        if state in ("COMPLETED", "FAILED") and self._stopped_for_time_limit(handle.log_path):
            state = "TIMEOUT"
            reason = (f"Slurm's {jobscript.normalize_signal(self.slurm.signal)} warned of the time limit and the "
                      f"trainer was stopped gracefully")
        failed: list[str] = []
        if state in ("NODE_FAIL", "BOOT_FAIL"):
            failed = self.failed_nodes(handle) or self.job_nodes(handle.node)
            reason = f"node {', '.join(failed) or handle.node or '?'} failed under the job"
        where = f" on {handle.node}" if handle.node else ""
        how = f"signal {sig}" if sig else f"exit {exit_code}"
        text = f"Slurm job {handle.job_id} ended {state} ({how}){where}" + (f": {reason}" if reason else "")
        return self._record(handle, ExitStatus(exit_code=exit_code, signal=sig, scheduler_state=state,
                                               reason=reason or text, failed_nodes=failed))

    def _record(self, handle: Handle, status: ExitStatus) -> ExitStatus:
        self._ended[handle.job_id] = status
        self._note(handle.log_path, f"lights-out: Slurm job {handle.job_id} final state "
                                    f"{status.scheduler_state or 'unknown'}: {status.reason}")
        return status

    def _exit_code(self, job_id: str) -> tuple[int | None, int | None]:
        proc = _run(["scontrol", "show", "job", "-o", job_id])
        m = re.search(r"\bExitCode=(\d+:\d+)", proc.stdout)
        if m:
            return exit_from_code(m[1])
        if self._accounting:
            acct = _run(["sacct", "-n", "-X", "-P", "-j", job_id, "-o", "ExitCode"])
            if acct.stdout.strip():
                return exit_from_code(acct.stdout.strip().splitlines()[0])
        return None, None

    def _stopped_for_time_limit(self, log_path: str) -> bool:
        """Did this job's batch shell forward Slurm's time-limit signal (after its last start)?"""
        try:
            with open(log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(log_path) - (1 << 18)))
                text = f.read().decode(errors="replace")
        except OSError:
            return False
        last_start = text.rfind(jobscript.BANNER)
        return jobscript.TIME_LIMIT_MARKER in text[max(0, last_start):]

    @staticmethod
    def _note(log_path: str, line: str) -> None:
        """Append a scheduler-side fact to the attempt's log (the job itself appends too)."""
        try:
            with open(log_path, "a") as f:
                f.write(line.rstrip("\n") + "\n")
        except OSError:
            pass  # a missing log directory must not end the watch; the state file still has the reason

    # -- stop ----------------------------------------------------------------------------------
    def _cancel(self, job_id: str, *flags: str) -> None:
        _run(["scancel", *flags, job_id])

    def _gone(self, handle: Handle, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while True:
            info = self._poll(handle, fresh=True)
            if info is None or (info.state not in ACTIVE_STATES and info.state != "UNKNOWN"):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.1)

    def stop(self, handle: Handle, graceful: bool, grace_s: float) -> list[int]:
        """Graceful: SIGINT to the batch shell (forwarded to the trainer), up to grace_s, then
        scancel; else scancel at once (Slurm's TERM, KillWait, KILL). Waits until Slurm shows the
        job ended; returns the pids still listed for it (empty = clean)."""
        info = self._poll(handle, fresh=True)
        if info is None or (info.state not in ACTIVE_STATES and info.state != "UNKNOWN"):
            return []
        if info.state == "RUNNING" and graceful:
            self._cancel(handle.job_id, "--signal=INT", "--batch")
            if self._gone(handle, grace_s):
                return []
        # Slurm's own cancel: TERM to every process of the job, KILL after KillWait. Never SIGKILL
        # the batch shell alone: with proctrack/linuxproc its orphaned children escape the job.
        self._cancel(handle.job_id)
        if self._gone(handle, 60.0 + grace_s):
            return []
        pids = _run(["scontrol", "listpids", handle.job_id])
        return [int(p.split()[0]) for p in pids.stdout.splitlines()[1:] if p.split() and p.split()[0].isdigit()]

    def forget(self, handle: Handle) -> None:
        self._seen.pop(handle.job_id, None)
        self._ended.pop(handle.job_id, None)
        self._noted.pop(handle.job_id, None)
