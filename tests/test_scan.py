"""LogScanner (progress, tb_dir, tracebacks, hits) and the signature table behind it."""
from __future__ import annotations

from pathlib import Path

import pytest

from lights_out_dev.core.signatures import (
    DEFAULT_MATCHER,
    compile_matcher,
    exception_name,
    scan_errors,
)
from lights_out_dev.executors.base import ExitStatus
from lights_out_dev.run.scan import LogScanner

pytestmark = pytest.mark.timeout(30)
LOGS = Path(__file__).parent / "data" / "logs"


def scan(text: str, **kw) -> LogScanner:
    s = LogScanner(**kw)
    for line in text.splitlines(keepends=True):
        s.feed(line)
    return s


def scan_file(name: str) -> LogScanner:
    return scan((LOGS / name).read_text(errors="replace"))


# ---- signatures: every class has real messages that match, and near-misses that must not ----

SIGNATURE_CASES = [
    ("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 2.00 GiB", ["oom"]),
    ("RuntimeError: CUDA error: out of memory", ["oom"]),
    ("PhysX error: PxgCudaDeviceMemoryAllocator fail to allocate memory 339738624 bytes!! Result = 2", ["oom"]),
    ("Warp CUDA error 2: cudaErrorMemoryAllocation (in function alloc_device)", ["oom"]),
    ("Warp error: Array allocation failed on device: cuda:0 for 1073741824 bytes", ["oom"]),
    ("[Error] [gpu.foundation.plugin] VkResult: ERROR_OUT_OF_DEVICE_MEMORY", ["oom"]),
    ("malloc(): unaligned tcache chunk detected", ["oom"]),
    ("jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory while trying to allocate", ["oom"]),
    ("Fatal Python error: Segmentation fault", ["segfault"]),
    ("./isaaclab.sh: line 431:  1234 Segmentation fault      (core dumped) python train.py", ["segfault"]),
    ("Illegal instruction (core dumped)", ["segfault"]),
    ("torch.distributed.DistBackendError: NCCL error in: ../torch/csrc/distributed/c10d/ProcessGroupNCCL.cpp:1970",
     ["nccl"]),
    ("[E ProcessGroupNCCL.cpp:475] [Rank 1] Watchdog caught collective operation timeout: WorkNCCL(SeqNum=5)", ["nccl"]),
    ("ncclInternalError: Internal check failed.", ["nccl"]),
    ("RuntimeError: [../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242",
     ["nccl"]),
    ("[E ProcessGroupGloo.cpp:138] Rank 0 failed to pass monitoredBarrier in 30000 ms", ["nccl"]),
    ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError:", ["child_failed"]),
    ("  traceback : Signal 9 (SIGKILL) received by PID 1235", ["rank_killed"]),
    ("E0301 api.py:869] failed (exitcode: -9) local_rank: 1 (pid: 1235) of binary: /usr/bin/python", ["rank_killed"]),
    ("E0301 api.py:869] failed (exitcode: 1) local_rank: 1 (pid: 1235) of binary: /usr/bin/python", []),
    ("RuntimeError: CUDA error: an illegal memory access was encountered", ["cuda_error"]),
    ("[Error] [omni.physx.plugin] PhysX error: cuEventRecord failed, FILE x.cpp", ["cuda_error"]),
    ("RuntimeError: cuDNN error: CUDNN_STATUS_INTERNAL_ERROR", ["cuda_error"]),
    ("RuntimeError: CUDA error: device-side assert triggered", ["cuda_error"]),
    ("EULA not accepted: set the environment variable OMNI_KIT_ACCEPT_EULA to YES", ["config_error"]),
    ("Do you accept the EULA? (Yes/No): Traceback (most recent call last):", ["config_error"]),
    ("ModuleNotFoundError: No module named 'omni.isaac.core'", ["config_error"]),
    ("train.py: error: unrecognized arguments: --foo", ["config_error"]),
    ("slurmstepd-localhost: error: *** JOB 38 ON localhost CANCELLED AT 2026-11-22T05:00:00 ***", []),
    ("srun: error: lo-n2: task 1: Interrupt", []),
    ("PhysX error: Patch buffer overflow detected, please increase its size to at least 219258", ["warning"]),
    # near misses: ordinary output that mentions the same words
    ("[W ProcessGroupGloo.cpp:723] Warning: Unable to resolve hostname to a (local) address. Using the loopback.", []),
    ("[W ProcessGroupNCCL.cpp] is a warning too", ["nccl"]),  # documented: any ProcessGroupNCCL line counts
    ("NCCL INFO Bootstrap : Using eth0:10.0.0.1<0>", []),
    ("env: OMNI_KIT_ACCEPT_EULA=YES WANDB_MODE=offline", []),
    ("loading /usr/lib/libnccl.so.2", []),
    ("                            Mean reward: 12.34", []),
    ("ModuleNotFoundError: No module named 'wandb'", []),  # a traceback's job (config_error via the exception)
    ("Setting CUDA_VISIBLE_DEVICES=0", []),
    ("[INFO] Memory usage: 12 GiB of 80 GiB", []),
    ("Storing git diff for 'main' in: /tmp/logs/git/main.diff", []),
]


@pytest.mark.parametrize("line,classes", SIGNATURE_CASES, ids=[c[0][:50] for c in SIGNATURE_CASES])
def test_signature_table(line, classes):
    assert DEFAULT_MATCHER.match(line) == classes


def test_extra_patterns_join_the_table_and_may_mark_the_end():
    m = compile_matcher({"oom": [r"my allocator gave up"], "completed": [r"^ALL DONE$"]})
    assert m.match("2025 my allocator gave up at 3 GiB") == ["oom"]
    assert m.match("ALL DONE") == ["completed"]
    s = LogScanner({"completed": [r"^ALL DONE$"]})
    s.feed("ALL DONE\n")
    assert s.end_marker


@pytest.mark.parametrize("extra,words", [
    ({"oomm": ["x"]}, "'oomm' is not a signature class"),
    ({"oom": ["(unclosed"]}, "does not compile"),
])
def test_extra_patterns_errors_name_the_value(extra, words):
    with pytest.raises(ValueError, match=words):
        compile_matcher(extra)


def test_scan_errors_reports_line_numbers_and_exceptions():
    lines = (LOGS / "rsl_rl3_isaaclab_oom_exit0.log").read_text().splitlines()
    found = scan_errors(lines)
    assert [cls for _, cls, _ in found] == ["oom", "exception", "cuda_error"]
    assert "PxgCudaDeviceMemoryAllocator" in found[0][2]
    assert found[1][2].startswith("RuntimeError: CUDA error")
    assert all(lines[no - 1] == line for no, _, line in found)


def test_code_shown_in_a_traceback_is_not_an_error_message():
    text = """Traceback (most recent call last):
  File "train.py", line 9, in main
    except torch.OutOfMemoryError:  # NCCL error handling below
KeyError: 'policy'
"""
    assert [cls for _, cls, _ in scan_errors(text.splitlines())] == ["exception"]
    s = scan(text)
    assert s.hits == {} and s.exception == "KeyError: 'policy'"


# ---- progress ----

def test_rsl_rl5_block_from_the_reference_trainer():
    s = scan_file("rsl_rl5_completed.log")
    p = s.progress
    assert (p.iteration, p.total) == (3, 3)  # "Learning iteration 2/3" is the third and last
    assert p.steps_per_s is not None and p.steps_per_s > 0
    assert p.mean_reward is not None and p.mean_episode_length is not None
    assert s.first_iteration_seen and s.end_marker
    assert s.hits == {} and s.exception is None
    # Isaac Lab prints the experiment root, then the stamp; rsl_rl 5.x prints the run name.
    assert s.tb_dir is not None and s.tb_dir.endswith("_rec")
    assert Path(s.tb_dir).parent.name == "cartpole"


def test_rsl_rl3_block_with_computation_line_and_ansi():
    s = scan_file("rsl_rl3_isaaclab_completed.log")
    p = s.progress
    assert (p.iteration, p.total, p.steps_per_s) == (3, 3, 61234.0)
    assert (p.mean_reward, p.mean_episode_length) == (12.5, 230.0)
    assert s.tb_dir == "/workspace/isaaclab/logs/rsl_rl/anymal_d_rough/2025-03-01_10-00-05"
    assert s.end_marker


def test_multi_gpu_run_dir_comes_from_rank_zero():
    s = scan_file("torchrun_gloo_timeout.log")
    # both ranks print train.py's lines (stamps ...13 and ...14); rank 0's rsl_rl writes to ...13
    assert s.tb_dir == "/home/user/lights-out/logs/rsl_rl/cartpole/2026-11-22_04-43-13"


def test_no_progress_before_the_first_block():
    s = scan("[INFO] Logging experiment in directory: /x/logs/rsl_rl/cartpole\nsome start-up noise\n")
    assert not s.first_iteration_seen and s.progress.iteration is None
    assert s.tb_dir == "/x/logs/rsl_rl/cartpole"


@pytest.mark.parametrize("text,run_name,expected", [
    ("[INFO] Logging experiment in directory: /r/logs/rsl_rl/e\n", None, "/r/logs/rsl_rl/e"),
    ("[INFO] Logging experiment in directory: /r/e\nExact experiment name requested from command line: 2025-01-01_00-00-00\n",
     None, "/r/e/2025-01-01_00-00-00"),
    ("[INFO] Logging experiment in directory: /r/e\nExact experiment name requested from command line: 2025-01-01_00-00-00\n",
     "sweep_3", "/r/e/2025-01-01_00-00-00_sweep_3"),
    ("[INFO] Logging experiment in directory: /r/e\nExact experiment name requested from command line: 2025_x_sweep_3\n",
     "sweep_3", "/r/e/2025_x_sweep_3"),
    ("[INFO] Logging experiment in directory: /r/skrl/e\nExact experiment name requested from command line: /abs/run\n",
     None, "/abs/run"),
    ("nothing here\n", None, None),
])
def test_tb_dir(text, run_name, expected):
    assert scan(text, run_name=run_name).tb_dir == expected


# ---- tracebacks ----

def test_last_traceback_wins_including_chained_ones():
    s = scan("""Traceback (most recent call last):
  File "a.py", line 1, in <module>
    d["x"]
KeyError: 'x'

During handling of the above exception, another exception occurred:

Traceback (most recent call last):
  File "a.py", line 3, in <module>
    raise RuntimeError("wrapped")
RuntimeError: wrapped
""")
    assert s.exception == "RuntimeError: wrapped"


def test_traceback_survives_interleaved_output_and_rank_prefixes():
    s = scan_file("torchrun_child_failed_keyerror.log")
    # torchrun's own ChildFailedError only wraps the worker's real error.
    assert s.exception == "KeyError: 'init_noise_std'"
    assert "child_failed" in s.hits


@pytest.mark.parametrize("line,name", [
    ("KeyError: 'x'", "KeyError"),
    ("torch.OutOfMemoryError: CUDA out of memory.", "OutOfMemoryError"),
    ("omegaconf.errors.MissingMandatoryValue: Missing mandatory value: a", "MissingMandatoryValue"),
    ("KeyboardInterrupt", "KeyboardInterrupt"),
    ("torch.distributed.elastic.multiprocessing.errors.ChildFailedError: ", "ChildFailedError"),
    ("Done", None),
    ("[INFO] step 3", None),
    ("Error executing job with overrides: []", None),
])
def test_exception_name(line, name):
    assert exception_name(line) == name


def test_exception_line_needs_a_traceback():
    s = scan("ValueError: printed by a logger, not raised\n")
    assert s.exception is None


def test_hits_keep_the_first_line_and_warnings_are_capped():
    text = "".join(f"PhysX error: Patch buffer overflow detected, size {i}\n" for i in range(50))
    s = scan("CUDA out of memory. first\n" + text + "CUDA out of memory. second\n")
    assert s.hits == {"oom": "CUDA out of memory. first"}
    assert len(s.warnings) == 20 and s.warnings[0].endswith("size 0")


def test_observations_carry_exit_status_and_progress():
    s = scan_file("rsl_rl5_completed.log")
    obs = s.observations(ExitStatus(exit_code=None, signal=9, scheduler_state="CANCELLED"), "stall")
    assert (obs.exit_code, obs.signal, obs.scheduler_state, obs.stopped_by) == (None, 9, "CANCELLED", "stall")
    assert (obs.iteration, obs.total, obs.end_marker) == (3, 3, True)
    assert s.observations(None, None).exit_code is None


def test_crlf_and_partial_lines_do_not_break_parsing():
    s = scan("Mean reward: 1.5\r\n\x1b[1m   Learning iteration 9/10   \x1b[0m\r\nTraining time: 3 seconds")
    assert (s.progress.mean_reward, s.progress.iteration, s.end_marker) == (1.5, 10, True)


def test_multi_gpu_run_dir_without_git_line_is_the_one_on_disk(tmp_path):
    """Outside a git checkout rsl_rl prints no git-diff line; each rank stamps its own second and only
    rank 0's directory exists (seen on 2x H200): the existing one is the run dir, whichever came last."""
    root = tmp_path / "logs/rsl_rl/cartpole"
    (root / "2026-11-22_05-29-16_r").mkdir(parents=True)
    text = "".join(f"[INFO] Logging experiment in directory: {root}\n"
                   f"Exact experiment name requested from command line: {stamp}\n"
                   for stamp in ("2026-11-22_05-29-16", "2026-11-22_05-29-17"))
    assert scan(text, run_name="r").tb_dir == str(root / "2026-11-22_05-29-16_r")
