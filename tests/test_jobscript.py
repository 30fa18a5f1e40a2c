"""Table-driven tests of the pure Slurm batch-script generation (no Slurm needed)."""
import os
import shlex
import signal
import subprocess
import sys
import time

import pytest

from lights_out_dev.core.config import SlurmConfig
from lights_out_dev.executors.slurm import jobscript
from lights_out_dev.executors.slurm.jobscript import (
    JobRequest,
    JobScriptError,
    directives,
    render,
)

BASE = dict(argv=["python", "workloads/train.py", "--task", "Lo-Cartpole-v0"], log_path="/logs/run.log",
            workdir="/repo")


def req(**kw) -> JobRequest:
    return JobRequest(**{**BASE, **kw})


@pytest.mark.parametrize("limit,lead,expected", [
    (None, 60, None),
    (1, 0, 1),          # Slurm's minimum is one minute
    (60, 0, 1),
    (61, 0, 2),
    (3600, 60, 61),     # the lead is added so the warning lands at the run's own limit
    (5, 55, 1),
    (90, 30, 2),
])
def test_time_minutes(limit, lead, expected):
    assert jobscript.time_minutes(limit, lead) == expected


@pytest.mark.parametrize("minutes,text", [(1, "00:01:00"), (61, "01:01:00"), (24 * 60, "1-00:00:00"),
                                          (24 * 60 + 90, "1-01:30:00")])
def test_format_minutes(minutes, text):
    assert jobscript.format_minutes(minutes) == text


@pytest.mark.parametrize("request_kw,slurm_kw,present,absent", [
    ({}, {}, ["--job-name=lights-out", "--output=/logs/run.log", "--open-mode=append", "--chdir=/repo",
              "--signal=B:USR1@60", "--no-requeue", "--ntasks=1", "--export=ALL"],
     ["--gres", "--time", "--partition", "--account", "--constraint", "--nodelist"]),
    ({"gpus": 2}, {}, ["--gres=gpu:2"], ["--gpus"]),
    ({"gpus": 1}, {"gres_per_gpu": "gpu:rtx_4090"}, ["--gres=gpu:rtx_4090:1"], []),
    ({"time_limit_s": 3600}, {"signal_lead_s": 120}, ["--time=01:02:00", "--signal=B:USR1@120"], []),
    ({}, {"partition": "gpu", "account": "rl", "constraint": "a100|h100", "nodelist": "eu-g6-[001-080]"},
     ["--partition=gpu", "--account=rl", "--constraint=a100|h100", "--nodelist=eu-g6-[001-080]"], []),
    ({}, {"signal": "SIGTERM", "requeue": True}, ["--signal=B:TERM@60", "--requeue"], ["--no-requeue"]),
    ({}, {"extra_sbatch": ["--qos=high", "--mem=32G"]}, ["--qos=high", "--mem=32G"], []),
    ({"job_name": "lo-top_dog:with transfer/x"}, {}, ["--job-name=lo-top_dog:with_transfer_x"], []),
    ({"log_path": "/my logs/run 1.log"}, {}, ['--output="/my logs/run 1.log"'], []),
])
def test_directives(request_kw, slurm_kw, present, absent):
    opts = directives(req(**request_kw), SlurmConfig(**slurm_kw))
    for p in present:
        assert p in opts
    for a in absent:
        assert not any(o.startswith(a) for o in opts), (a, opts)


@pytest.mark.parametrize("request_kw,slurm_kw,fragment", [
    ({"log_path": '/logs/"x".log'}, {}, "log path"),
    ({}, {"partition": 'gpu"; rm -rf /'}, "slurm.partition"),
    ({}, {"extra_sbatch": ["qos=high"]}, "extra_sbatch"),
    ({}, {"signal": "USR1; rm"}, "slurm.signal"),
    ({}, {"signal": "SIGINT"}, "use USR1"),
    ({"env": {"BAD-NAME": "1"}}, {}, "BAD-NAME"),
    ({"argv": []}, {}, "empty"),
])
def test_bad_requests_name_the_value(request_kw, slurm_kw, fragment):
    with pytest.raises(JobScriptError) as e:
        render(req(**request_kw), SlurmConfig(**slurm_kw))
    assert fragment in str(e.value)


def test_script_structure_and_quoting(tmp_path):
    evil = "x'; touch /tmp/pwned; echo '"
    script = render(req(argv=["python", "train.py", "--run_name", evil, "$HOME", "a b"],
                        env={"PLAIN": "it's $HOME `id`", "CUDA_VISIBLE_DEVICES": "3", "WANDB_API_KEY": "s3cret"},
                        secret_names=("WANDB_API_KEY",), gpus=1,
                        guard_argv=["python", "-m", "lights_out_dev.cli.preflight", "gpu_guard"],
                        preflight_argv=["python", "-m", "lights_out_dev.cli.preflight", "runtime_check"]),
                    SlurmConfig())
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash"
    first_cmd = next(i for i, line in enumerate(lines) if line and not line.startswith("#"))
    assert all(line.startswith("#SBATCH") or line.startswith("#") for line in lines[1:first_cmd])
    assert "set -u" in lines and "set -m" in lines
    assert "s3cret" not in script and 'export WANDB_API_KEY="${WANDB_API_KEY}"' in script
    assert "CUDA_VISIBLE_DEVICES=3" not in script and "export CUDA_VISIBLE_DEVICES" not in script
    order = [script.index(s) for s in ("export PLAIN=", "gpu_guard", "runtime_check", "train.py")]
    assert order == sorted(order)
    path = tmp_path / "job.sh"
    path.write_text(script)
    subprocess.run(["bash", "-n", str(path)], check=True)


def _run_script(tmp_path, code: str, env=None, **kw):
    script = render(req(argv=[sys.executable, "-c", code], log_path=str(tmp_path / "log"), workdir=str(tmp_path),
                        **kw), SlurmConfig(signal_lead_s=30))
    path = tmp_path / "job.sh"
    path.write_text(script)
    return subprocess.Popen(["bash", str(path)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            cwd=tmp_path, env={**os.environ, **(env or {})})


TRAINER = """
import os, sys, time
print("env", os.environ.get("PLAIN"), os.environ.get("WANDB_API_KEY"), sys.argv[1:], flush=True)
try:
    time.sleep(float(os.environ.get("SLEEP", "0")))
except KeyboardInterrupt:
    print("saved checkpoint", flush=True)
    sys.exit(130)
sys.exit(int(os.environ.get("RC", "0")))
"""


@pytest.mark.parametrize("rc", [0, 3, 127])
def test_exit_status_propagates(tmp_path, rc):
    p = _run_script(tmp_path, TRAINER, env={"RC": str(rc), "WANDB_API_KEY": "k"})
    out, _ = p.communicate(timeout=30)
    assert p.returncode == rc, out
    assert f"trainer exited with status {rc}" in out


@pytest.mark.parametrize("sig,marker", [(signal.SIGUSR1, jobscript.TIME_LIMIT_MARKER),
                                        (signal.SIGINT, "stop signal"), (signal.SIGTERM, "stop signal")])
@pytest.mark.timeout(30)
def test_signal_to_batch_shell_stops_trainer_gracefully(tmp_path, sig, marker):
    p = _run_script(tmp_path, TRAINER, env={"SLEEP": "20"})
    deadline = time.monotonic() + 10
    out = ""
    while "env" not in out and time.monotonic() < deadline:  # the trainer is up
        out += p.stdout.readline()
    p.send_signal(sig)
    rest, _ = p.communicate(timeout=15)
    out += rest
    assert marker in out
    assert "saved checkpoint" in out
    assert p.returncode == 130  # the trainer's own status, not the shell's


def test_env_is_exported_literally_and_secret_by_reference(tmp_path):
    script = render(req(argv=[sys.executable, "-c", TRAINER, "$HOME", "a b"], log_path=str(tmp_path / "log"),
                        workdir=str(tmp_path), env={"PLAIN": "it's $HOME"}, secret_names=("WANDB_API_KEY",)),
                    SlurmConfig())
    path = tmp_path / "job.sh"
    path.write_text(script)
    out = subprocess.run(["bash", str(path)], capture_output=True, text=True,
                         env={**os.environ, "WANDB_API_KEY": "from-env"}).stdout
    assert "env it's $HOME from-env ['$HOME', 'a b']" in out


@pytest.mark.parametrize("guard_rc,preflight_rc,expected", [(42, 0, 42), (43, 0, 43), (0, 1, 44), (0, 0, 0)])
def test_checks_refuse_to_train(tmp_path, guard_rc, preflight_rc, expected):
    script = render(req(argv=[sys.executable, "-c", "print('TRAINING')"], log_path=str(tmp_path / "log"),
                        workdir=str(tmp_path), gpus=1, guard_argv=["bash", "-c", f"exit {guard_rc}"],
                        preflight_argv=["bash", "-c", f"exit {preflight_rc}"]), SlurmConfig())
    path = tmp_path / "job.sh"
    path.write_text(script)
    proc = subprocess.run(["bash", str(path)], capture_output=True, text=True)
    assert proc.returncode == expected
    assert ("TRAINING" in proc.stdout) == (expected == 0)
    if expected:
        assert "refusing to train" in proc.stderr


# -- multi-node jobs and job arrays -----------------------------------------------------------------

TORCHRUN = ["/py", "-m", "torch.distributed.run", "--nnodes=1", "--nproc_per_node=2", "--master_port=29123",
            "workloads/train.py", "--task", "Lo-Cartpole-v0", "--distributed", "--run_name", "a b"]


def test_multinode_directives():
    opts = directives(req(argv=TORCHRUN, nodes=2, gpus=2, exclude=("lo-n2", "gpu-[01-03]")), SlurmConfig())
    assert {"--nodes=2", "--ntasks-per-node=1", "--gres=gpu:2", "--exclude=lo-n2,gpu-[01-03]"} <= set(opts)
    assert "--ntasks=1" not in opts
    assert "--nodes=1" in directives(req(), SlurmConfig()) and "--ntasks=1" in directives(req(), SlurmConfig())


def test_bad_excluded_node_names_the_value():
    with pytest.raises(JobScriptError) as e:
        render(req(exclude=("lo-n1; rm -rf /",)), SlurmConfig())
    assert "lo-n1; rm -rf /" in str(e.value)


@pytest.mark.parametrize("argv,kept,dropped", [
    (TORCHRUN, ["--nproc_per_node=2"], ["--nnodes=1", "--master_port"]),
    (["torchrun", "--standalone", "--nnodes", "1", "--nproc_per_node", "4", "--master_addr", "h", "t.py", "--x"],
     ["--nproc_per_node 4"], ["--standalone", "--nnodes 1", "--master_addr"]),
])
def test_multinode_command_rewrites_the_rendezvous(argv, kept, dropped):
    line = jobscript.multinode_command(argv)
    launch = line.split("; exec ", 1)[1]
    head, rest = launch.split(" --nnodes=", 1)
    assert head.endswith("torch.distributed.run") or head.endswith("torchrun")
    assert rest.startswith('"$SLURM_NNODES" --node_rank="$SLURM_NODEID" --rdzv_backend=c10d '
                           '--rdzv_endpoint="$LIGHTS_OUT_RDZV_HOST:$LIGHTS_OUT_RDZV_PORT" --rdzv_id="$LIGHTS_OUT_RDZV_ID"')
    for k in kept:
        assert k in rest
    for d in dropped:
        assert d not in rest
    script = "t.py" if "t.py" in argv else "workloads/train.py"
    assert rest.index(kept[0]) < rest.index(script)  # launcher options stay before the script
    assert rest.endswith(" ".join(shlex.quote(a) for a in argv[argv.index(script):]))


def test_multinode_needs_torchrun():
    with pytest.raises(JobScriptError) as e:
        render(req(nodes=2), SlurmConfig())
    assert "-mgpu" in str(e.value)


def test_multinode_script_runs_checks_and_trainer_on_every_node(tmp_path):
    script = render(req(argv=TORCHRUN, nodes=2, gpus=2, guard_argv=["guard"], python="/py"), SlurmConfig())
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=0 guard ||" in script
    assert "srun --ntasks-per-node=1 --kill-on-bad-exit=1 bash -c " in script
    assert 'LIGHTS_OUT_RDZV_ID="${SLURM_JOB_ID}-${SLURM_RESTART_COUNT:-0}"' in script
    assert 'scancel --signal=INT "$SLURM_JOB_ID"' in script  # srun does not forward a single SIGINT
    path = tmp_path / "job.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0


def test_array_script_selects_each_element(tmp_path):
    reqs = [req(log_path=f"/logs/run {i}.log", env={"SEED": str(i)}, argv=["python", "t.py", "--seed", str(i)],
                time_limit_s=60 * (i + 1)) for i in range(3)]
    script = jobscript.render_array(reqs, SlurmConfig(), 2)
    assert "#SBATCH --array=0-2%2" in script and "#SBATCH --output=/dev/null" in script
    assert "#SBATCH --time=00:04:00" in script  # the longest element's limit plus the signal lead
    for i in range(3):
        assert f"exec >>'/logs/run {i}.log' 2>&1" in script and f"--seed {i})" in script
    path = tmp_path / "array.sh"
    path.write_text(script)
    assert subprocess.run(["bash", "-n", str(path)]).returncode == 0
    # Element 1 runs its own command with its own environment, into its own log.
    body = script.replace("/logs/", str(tmp_path) + "/").replace("python t.py", "echo trainer")
    path.write_text(body.replace('"${trainer[@]}" &', 'env | grep ^SEED= ; "${trainer[@]}" &'))
    done = subprocess.run(["bash", str(path)], env={**os.environ, "SLURM_ARRAY_TASK_ID": "1"}, timeout=20)
    assert done.returncode == 0
    out = (tmp_path / "run 1.log").read_text()
    assert "SEED=1" in out and "trainer --seed 1" in out
    assert not (tmp_path / "run 0.log").exists()


def test_array_refuses_multinode_or_mixed_gpus():
    with pytest.raises(JobScriptError):
        jobscript.render_array([req(gpus=1), req(gpus=2)], SlurmConfig(), 2)
