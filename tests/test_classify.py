"""classify(): table-driven over synthetic observations, plus recorded real logs fed through LogScanner."""
from __future__ import annotations

from pathlib import Path

import pytest

from lights_out_dev.core.classify import Observations, classify
from lights_out_dev.core.verdicts import Verdict
from lights_out_dev.executors.base import ExitStatus
from lights_out_dev.run.scan import LogScanner

pytestmark = pytest.mark.timeout(30)

OOM = {"oom": "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB"}
NCCL = {"nccl": "torch.distributed.DistBackendError: NCCL error in: ProcessGroupNCCL.cpp:1970"}
CUDA = {"cuda_error": "RuntimeError: CUDA error: an illegal memory access was encountered"}
SEGV = {"segfault": "Fatal Python error: Segmentation fault"}
DONE = dict(end_marker=True, iteration=6, total=6)

CASES = [
    # (id, observations, verdict, words the reason must contain)
    ("clean exit with end marker", Observations(exit_code=0, **DONE), Verdict.completed, "Training time:"),
    ("final iteration without end marker", Observations(exit_code=0, iteration=6, total=6), Verdict.completed,
     "final iteration 6/6"),
    ("exit 0 early is not success", Observations(exit_code=0, iteration=3, total=6), Verdict.crash,
     "exit 0 without 'Training time:' at iteration 3/6"),
    ("exit 0 before any iteration", Observations(exit_code=0), Verdict.crash, "before the first iteration"),
    ("Isaac Lab exits 0 after an OOM", Observations(exit_code=0, hits=OOM, **DONE), Verdict.oom, "OutOfMemoryError"),
    ("end marker but a traceback", Observations(exit_code=0, exception="RuntimeError: boom", **DONE), Verdict.crash,
     "RuntimeError: boom"),
    ("shutdown crash after finishing", Observations(exit_code=None, signal=11, **DONE), Verdict.completed,
     "SIGSEGV at shutdown"),
    ("timeout wins over a kill", Observations(exit_code=None, signal=9, iteration=40, total=100, stopped_by="timeout"),
     Verdict.timeout, "time limit at iteration 40/100"),
    ("timeout even with an error line", Observations(signal=15, hits=OOM, stopped_by="timeout"), Verdict.timeout, "time limit"),
    ("stall", Observations(signal=9, iteration=5, total=100, stopped_by="stall"), Verdict.stall, "stall limit"),
    ("stall after an OOM is an OOM", Observations(signal=9, hits=OOM, stopped_by="stall"), Verdict.oom, "stopped for stall"),
    ("imbalance", Observations(signal=9, iteration=5, total=100, stopped_by="imbalance"), Verdict.imbalance, "imbalance"),
    ("user stop", Observations(signal=2, stopped_by="user"), Verdict.killed, "on request"),
    ("smoke gate passed", Observations(signal=2, iteration=1, total=100, stopped_by="smoke",
                                       exception="KeyboardInterrupt"), Verdict.completed, "smoke gate passed"),
    ("smoke gate before first iteration", Observations(signal=9, stopped_by="smoke"), Verdict.crash, "smoke gate"),
    ("SIGSEGV", Observations(signal=11, iteration=2, total=6), Verdict.segfault, "SIGSEGV at iteration 2/6"),
    ("exit -11", Observations(exit_code=-11), Verdict.segfault, "SIGSEGV"),
    ("shell exit 139", Observations(exit_code=139), Verdict.segfault, "SIGSEGV"),
    ("SIGILL", Observations(signal=4), Verdict.segfault, "SIGILL"),
    ("segfault line, exit 1", Observations(exit_code=1, hits=SEGV), Verdict.segfault, "Segmentation fault"),
    ("SIGKILL is a crash", Observations(signal=9, iteration=2, total=6), Verdict.crash, "SIGKILL at iteration 2/6"),
    ("shell exit 137 is a crash", Observations(exit_code=137), Verdict.crash, "SIGKILL"),
    ("plain exit 1", Observations(exit_code=1, iteration=2, total=6), Verdict.crash, "exit 1 at iteration 2/6"),
    ("RuntimeError without signature", Observations(exit_code=1, exception="RuntimeError: shape mismatch"),
     Verdict.crash, "RuntimeError: shape mismatch"),
    ("KeyError is config_error", Observations(exit_code=1, exception="KeyError: 'init_noise_std'"),
     Verdict.config_error, "KeyError: 'init_noise_std'"),
    ("dotted hydra exception", Observations(exit_code=1, exception="omegaconf.errors.MissingMandatoryValue: x"),
     Verdict.config_error, "MissingMandatoryValue"),
    ("ModuleNotFoundError", Observations(exit_code=1, exception="ModuleNotFoundError: No module named 'foo'"),
     Verdict.config_error, "ModuleNotFoundError"),
    ("EULA not accepted", Observations(exit_code=1, hits={"config_error": "set OMNI_KIT_ACCEPT_EULA=YES"}),
     Verdict.config_error, "OMNI_KIT_ACCEPT_EULA"),
    ("config bug but OOM wins", Observations(exit_code=1, hits=OOM, exception="ValueError: x"), Verdict.oom, "oom"),
    ("oom beats nccl", Observations(exit_code=1, hits={**NCCL, **OOM}), Verdict.oom, "oom"),
    ("nccl beats cuda_error", Observations(exit_code=1, hits={**NCCL, **CUDA}), Verdict.nccl, "NCCL error"),
    ("cuda_error beats segfault", Observations(signal=11, hits=CUDA), Verdict.cuda_error, "illegal memory access"),
    ("segfault beats config_error", Observations(signal=11, exception="KeyError: 'a'"), Verdict.segfault, "SIGSEGV"),
    ("torchrun ChildFailedError alone", Observations(exit_code=1, hits={"child_failed": "ChildFailedError:"}),
     Verdict.nccl, "torchrun worker failed"),
    ("torchrun: a rank killed by SIGKILL is a crash, not nccl",
     Observations(exit_code=1, hits={"child_failed": "ChildFailedError:",
                                     "rank_killed": "traceback : Signal 9 (SIGKILL) received by PID 1235"}),
     Verdict.crash, "a rank was killed"),
    ("torchrun: a killed rank after an NCCL error is nccl",
     Observations(exit_code=1, hits={"child_failed": "ChildFailedError:", "rank_killed": "failed (exitcode: -9)",
                                     **NCCL}), Verdict.nccl, "NCCL error"),
    ("torchrun wrapping a config bug", Observations(exit_code=1, hits={"child_failed": "ChildFailedError:"},
                                                    exception="KeyError: 'x'"), Verdict.config_error, "KeyError"),
    ("torchrun wrapping a segfault", Observations(exit_code=1, hits={"child_failed": "ChildFailedError:", **SEGV}),
     Verdict.segfault, "Segmentation fault"),
    ("KeyboardInterrupt from outside", Observations(exit_code=1, exception="KeyboardInterrupt"), Verdict.killed,
     "KeyboardInterrupt"),
    ("finished, hung at exit, stopped with SIGINT", Observations(exit_code=130, exception="KeyboardInterrupt", **DONE),
     Verdict.completed, "at shutdown"),
    ("still running", Observations(), Verdict.running, "before the first iteration"),
    ("running and healthy", Observations(iteration=3, total=6), Verdict.healthy, "iteration 3/6"),
    # Slurm
    ("slurm COMPLETED with end marker", Observations(exit_code=0, scheduler_state="COMPLETED", **DONE),
     Verdict.completed, "Training time:"),
    ("slurm COMPLETED without end marker", Observations(exit_code=0, scheduler_state="COMPLETED", iteration=2, total=6),
     Verdict.crash, "exit 0 without"),
    ("slurm TIMEOUT", Observations(exit_code=0, scheduler_state="TIMEOUT", iteration=2, total=6), Verdict.timeout,
     "time limit"),
    ("slurm OUT_OF_MEMORY", Observations(exit_code=0, scheduler_state="OUT_OF_MEMORY"), Verdict.oom, "OUT_OF_MEMORY"),
    ("slurm NODE_FAIL", Observations(exit_code=1, scheduler_state="NODE_FAIL"), Verdict.node_fail, "NODE_FAIL"),
    ("slurm BOOT_FAIL", Observations(scheduler_state="BOOT_FAIL"), Verdict.node_fail, "BOOT_FAIL"),
    ("slurm PREEMPTED", Observations(signal=15, scheduler_state="PREEMPTED", iteration=3, total=6), Verdict.preempted,
     "PREEMPTED"),
    ("slurm requeued (the executor's word)", Observations(scheduler_state="REQUEUED", iteration=3, total=6),
     Verdict.preempted, "requeued"),
    ("slurm NODE_FAIL after the trainer finished", Observations(scheduler_state="NODE_FAIL", **DONE), Verdict.completed,
     "finished before the end"),
    ("slurm NODE_FAIL beats a crash in the log", Observations(exit_code=1, scheduler_state="NODE_FAIL",
                                                             exception="RuntimeError: connection reset"),
     Verdict.node_fail, "node failed"),
    ("slurm CANCELLED by someone", Observations(exit_code=0, signal=15, scheduler_state="CANCELLED by 1000"),
     Verdict.killed, "CANCELLED by 1000"),
    ("slurm CANCELLED+ (sacct width)", Observations(signal=15, scheduler_state="CANCELLED+"), Verdict.killed, "CANCELLED+"),
    ("slurm CANCELLED by our stall stop", Observations(signal=9, scheduler_state="CANCELLED", stopped_by="stall"),
     Verdict.stall, "stall"),
    ("slurm CANCELLED by the runner for a fatal line", Observations(exit_code=1, scheduler_state="CANCELLED",
                                                                    hits=NCCL, iteration=2, total=4),
     Verdict.nccl, "NCCL"),
    ("slurm FAILED goes by the log", Observations(exit_code=1, scheduler_state="FAILED", hits=NCCL), Verdict.nccl, "NCCL"),
    ("slurm FAILED without evidence", Observations(exit_code=1, scheduler_state="FAILED"), Verdict.crash, "FAILED"),
    ("slurm RUNNING", Observations(scheduler_state="RUNNING", iteration=1, total=6), Verdict.healthy, "running"),
    # stopped by the runner after training finished and the trainer went silent on its way out
    ("exit0 profile at its total hangs at exit",
     Observations(signal=2, exception="KeyboardInterrupt", exit0_completes=True, markers=(), unit="timestep",
                  iteration=1024, total=1024, stopped_by="hang_exit"),
     Verdict.completed, "finished: final timestep 1024/1024, then hung at exit and was stopped (SIGINT)"),
    ("final-iteration profile hangs at exit, SIGKILL at last",
     Observations(signal=9, markers=(), iteration=80, total=80, stopped_by="hang_exit"),
     Verdict.completed, "final iteration 80/80, then hung at exit"),
    ("marker profile hangs at exit on Slurm", Observations(signal=15, scheduler_state="CANCELLED", stopped_by="hang_exit",
                                                           end_marker_text="Training time: 3 s", **DONE),
     Verdict.completed, "'Training time: 3 s', then hung at exit"),
    ("exit0 profile: a progress line at its total with a crash is no completion",
     Observations(signal=9, exit0_completes=True, markers=(), iteration=1024, total=1024), Verdict.crash, "SIGKILL"),
    ("a traceback before the hang still wins",
     Observations(exit_code=1, exception="RuntimeError: save failed", iteration=6, total=6, stopped_by="hang_exit"),
     Verdict.crash, "RuntimeError: save failed"),
]


@pytest.mark.parametrize("obs,verdict,words", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_classify_table(obs, verdict, words):
    got, reason = classify(obs)
    assert got is verdict, reason
    assert words in reason
    assert "\n" not in reason and len(reason) <= 200


def test_reason_is_one_short_line_even_for_huge_evidence():
    _, reason = classify(Observations(exit_code=1, exception="RuntimeError: " + "x\n" * 1000))
    assert "\n" not in reason and len(reason) <= 200


LOGS = Path(__file__).parent / "data" / "logs"
# Recorded logs (tests/data/logs/README.md says where each came from) -> exit status -> verdict.
RECORDED = [
    ("rsl_rl5_completed.log", ExitStatus(0), Verdict.completed),
    ("rsl_rl5_exit0_early.log", ExitStatus(0), Verdict.crash),
    ("rsl_rl5_crash_sigkill.log", ExitStatus(None, signal=9), Verdict.crash),
    ("rsl_rl5_segfault.log", ExitStatus(None, signal=11), Verdict.segfault),
    ("rsl_rl5_oom.log", ExitStatus(1), Verdict.oom),
    ("rsl_rl5_config_error.log", ExitStatus(1), Verdict.config_error),
    ("rsl_rl5_usage_error.log", ExitStatus(2), Verdict.config_error),
    ("rsl_rl3_isaaclab_oom_exit0.log", ExitStatus(0), Verdict.oom),
    ("rsl_rl3_isaaclab_completed.log", ExitStatus(0), Verdict.completed),
    ("torchrun_child_failed_keyerror.log", ExitStatus(1), Verdict.config_error),
    ("torchrun_nccl_watchdog.log", ExitStatus(1), Verdict.nccl),
    ("torchrun_gloo_timeout.log", ExitStatus(1), Verdict.nccl),
    ("isaacsim_eula.log", ExitStatus(1), Verdict.config_error),
    ("cuda_illegal_access.log", ExitStatus(1), Verdict.cuda_error),
    ("physx_warning_completed.log", ExitStatus(0), Verdict.completed),
]


@pytest.mark.parametrize("name,exit,verdict", RECORDED, ids=[r[0] for r in RECORDED])
def test_recorded_logs(name, exit, verdict):
    scanner = LogScanner()
    with (LOGS / name).open(errors="replace") as f:
        for line in f:
            scanner.feed(line)
    got, reason = classify(scanner.observations(exit, None))
    assert got is verdict, reason
