"""spec -> argv: the exact command line of one launch. Pure apart from `free_port` and the clock.

Shape, each flag spelled (or dropped) by the run's trainer profile (lights_out_dev.core.profiles):
    single GPU: <prefix> <script | -m module> <script_args> --task T [--num_envs N] [--max_iterations N]
                [--seed N] [--headless] --device cuda:N|cpu [agent.device=cuda:N] [--experiment_name E]
                [fine-tune args] [physics=...] [--rid <uuid>] --run_name <name> <extra args...>
    multi GPU:  <prefix> -m torch.distributed.run --nnodes=1 --nproc_per_node=N --master_port=P
                <rank script | -m module> ... --distributed [--run_timestamp=<stamp>] <extra args...>
`prefix` empty means this Python (sys.executable). GPU pinning is `--device cuda:N`, never
CUDA_VISIBLE_DEVICES; only multi-GPU runs get CUDA_VISIBLE_DEVICES (see `gpu_env`), because
torch.distributed.run numbers its ranks 0..N-1 and each rank uses cuda:<LOCAL_RANK>.

Last flag wins (`merge_flags`): an override replaces the earlier item *in place* (so the command
keeps its familiar order and `--distributed` stays where the launcher put it); a new flag is
appended. Items are flags with their value (`--num_envs 64`, `--lr=3e-4`) or Hydra tokens keyed by
the name before '=' (`physics=newton`).
"""
from __future__ import annotations

import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

from lights_out_dev.core.overrides import item_key, split_items
from lights_out_dev.core.profiles import TrainerProfile, checkpoint_values, fill
from lights_out_dev.core.spec import RunSpec

REDACTED = "***"


def merge_flags(base: list[str], overrides: list[str]) -> list[str]:
    """Last flag wins; order kept: a repeated flag/key replaces the earlier one where it stood."""
    items = split_items(list(base))
    for item in split_items(list(overrides)):
        key = item_key(item)
        positions = [i for i, old in enumerate(items) if item_key(old) == key]
        if positions:
            items[positions[0]] = item
            for i in reversed(positions[1:]):
                del items[i]
        else:
            items.append(item)
    return [tok for item in items for tok in item]


def new_rid() -> str:
    return str(uuid.uuid4())


def default_run_name(spec: RunSpec, gpus: list[int] | None, rid: str) -> str:
    """`<task_short>_<envs>_gpu<N>_<rid6>`: unique, so parallel runs never share a log dir."""
    short = spec.task.replace(":", "_")
    where = "cpu" if gpus is None else "gpu" + "-".join(str(g) for g in gpus)
    return f"{short}_{spec.num_envs or 'default'}_{where}_{rid[:6]}"


def free_port() -> int:
    """A TCP port free right now, so two multi-GPU runs on one host don't share a rendezvous."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launcher_argv(spec: RunSpec, nproc: int, master_port: int | None = None) -> list[str]:
    """Everything before the trainer's own flags: prefix [+ torch.distributed.run] + script or module."""
    prefix = list(spec.prefix) or [sys.executable]
    if not spec.multi_gpu:
        return [*prefix, *spec.entry()]
    port = master_port if master_port is not None else free_port()
    return [*prefix, "-m", "torch.distributed.run", "--nnodes=1", f"--nproc_per_node={nproc}",
            f"--master_port={port}", *spec.rank_entry()]


def device_name(profile: TrainerProfile, gpu: int | None) -> str:
    if gpu is None:
        return "cpu"
    return f"cuda:{gpu}" if profile.device_format == "cuda:N" else str(gpu)


def trainer_flags(spec: RunSpec, gpus: list[int] | None) -> list[str]:
    """The flags the spec itself implies, spelled by its trainer profile, before extra args are merged in."""
    profile, spelled = spec.trainer, spec.trainer.flags
    flags: list[str] = []

    def add(flag: str | None, value) -> None:
        if flag is not None and value is not None:
            flags.extend([flag, str(value)])

    add(spelled.task, spec.trainer_task)
    for name in ("num_envs", "max_iterations", "seed"):
        add(getattr(spelled, name), getattr(spec, name))
    if spec.headless and spelled.headless:
        flags.append(spelled.headless)
    # Multi-GPU on GPUs: each rank picks cuda:<LOCAL_RANK> itself under the distributed flag.
    if gpus is None or not spec.multi_gpu:
        device = device_name(profile, gpus[0] if gpus else None)
        add(spelled.device, device)
        flags += fill(profile.device_args, device=device, stamp="")
    add(spelled.experiment_name, spec.experiment_name)
    if spec.load_checkpoint:
        flags += fill(profile.finetune_args, **checkpoint_values(spec.load_checkpoint))
    if spec.newton_selector:
        flags.append(spec.newton_selector)
    return flags


def launch_stamp() -> str:
    """Isaac Lab's run-directory stamp, shared by every rank of one multi-GPU launch."""
    return time.strftime("%Y-%m-%d_%H-%M-%S")


def build_argv(spec: RunSpec, gpus: list[int] | None, rid: str | None = None, run_name: str | None = None,
               extra: list[str] = (), master_port: int | None = None) -> list[str]:
    """The argv of one launch. gpus None = CPU; the run name (and run id, where the profile takes one) is
    always added, so parallel runs never share a log directory."""
    rid = rid or new_rid()
    name = run_name or default_run_name(spec, gpus, rid)
    spelled = spec.trainer.flags
    nproc = len(gpus) if (spec.multi_gpu and gpus) else spec.gpus
    flags = trainer_flags(spec, gpus)
    if spelled.run_id:
        flags += [spelled.run_id, rid]
    if spelled.run_name:
        flags += [spelled.run_name, name]
    if spec.multi_gpu:
        if spelled.distributed:
            flags.append(spelled.distributed)
        flags += fill(spec.trainer.multi_gpu_args, device="", stamp=launch_stamp())
    return launcher_argv(spec, nproc, master_port) + merge_flags(flags, [*spec.extra_args, *extra])


def gpu_env(spec: RunSpec, gpus: list[int] | None) -> dict[str, str]:
    """Env changes for the chosen GPUs: only multi-GPU runs restrict CUDA_VISIBLE_DEVICES."""
    if spec.multi_gpu and gpus:
        return {"CUDA_VISIBLE_DEVICES": ",".join(str(g) for g in gpus)}
    return {}


# Isaac Lab / Isaac Sim needs these to start unattended: the EULA prompt otherwise blocks
# or kills a headless run, and packages in ~/.local shadow the ones Isaac Lab's Python was built with.
# They go into the spec's env under the launcher's own `env` (so config wins, e.g. PYTHONNOUSERSITE = "").
ISAAC_ENV_DEFAULTS = {"OMNI_KIT_ACCEPT_EULA": "yes", "PYTHONNOUSERSITE": "1"}
# Kit's terminal handling fails without TERM (cron, nohup, systemd); set at launch only when unset.
TERM_DEFAULT = "xterm"


def is_isaaclab(prefix: list[str], script: str) -> bool:
    """Auto-detection: the launcher prefix or the script path names Isaac Lab (isaaclab.sh, IsaacLab/...)."""
    return any("isaaclab" in tok.lower() for tok in [*prefix, script])


def isaac_env_defaults(enabled: bool | None, prefix: list[str], script: str) -> dict[str, str]:
    """The Isaac Lab env defaults for a launcher (`isaac_env_defaults`: True / False / None = auto)."""
    on = is_isaaclab(prefix, script) if enabled is None else enabled
    return dict(ISAAC_ENV_DEFAULTS) if on else {}


def trainer_env(spec: RunSpec) -> dict[str, str]:
    """spec.env plus the secrets named in spec.secret_env, taken from os.environ (never stored).

    An Isaac Lab run (OMNI_KIT_ACCEPT_EULA in its env) also gets TERM when the caller has none."""
    env = dict(spec.env)
    if "OMNI_KIT_ACCEPT_EULA" in env and "TERM" not in env and not os.environ.get("TERM"):
        env["TERM"] = TERM_DEFAULT
    env.update({name: os.environ[name] for name in spec.secret_env if os.environ.get(name)})
    return env


def secret_values(spec: RunSpec) -> list[str]:
    return [os.environ[name] for name in spec.secret_env if os.environ.get(name)]


def redact_text(text: str, secret_values: list[str]) -> str:
    for value in sorted(set(secret_values), key=len, reverse=True):  # longest first: no partial leaks
        text = text.replace(value, REDACTED)
    return text


def redact_argv(argv: list[str], secret_values: list[str]) -> list[str]:
    return [redact_text(tok, secret_values) for tok in argv]


def shell_join(argv: list[str]) -> str:
    return shlex.join(argv)


def format_command(argv: list[str], env: dict[str, str], secret_values: list[str]) -> str:
    """`KEY=value ... argv`, shell-quoted, secrets replaced by ***: safe to print or log."""
    shown_env = [f"{k}={shlex.quote(redact_text(v, secret_values))}" for k, v in sorted(env.items())]
    return " ".join([*shown_env, shell_join(redact_argv(argv, secret_values))])


def module_importable(python: list[str], module: str, cwd: Path) -> bool:
    """Whether `python` (the launcher prefix) finds `module`, without importing the trainer itself."""
    probe = f"import importlib.util, sys; sys.exit(0 if importlib.util.find_spec({module.split('.')[0]!r}) else 3)"
    try:
        return subprocess.run([*python, "-c", probe], cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
                              timeout=60).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def launch_problem(spec: RunSpec, root: Path, gpu: int | None, gpu_count: int) -> str | None:
    """Why this spec cannot be launched on this machine (one sentence), or None.

    Checked before anything starts: the prefix executable, the trainer script, a requested GPU
    index, and enough GPUs for a multi-GPU run.
    """
    if spec.prefix:
        exe = spec.prefix[0]
        found = (root / exe).exists() if ("/" in exe and not os.path.isabs(exe)) else (
            os.path.exists(exe) if os.path.isabs(exe) else shutil.which(exe) is not None)
        if not found:
            return (f"{spec.task}: launcher prefix '{exe}' was not found; install it or fix "
                    f"[tool.lights_out.launchers.{spec.launcher}] prefix in pyproject.toml.")
    if spec.module:
        if not module_importable(list(spec.prefix) or [sys.executable], spec.module, root):
            python = " ".join(spec.prefix) or sys.executable
            return (f"{spec.task}: trainer module '{spec.module}' cannot be imported by {python}; install it "
                    f"there or fix [tool.lights_out.launchers.{spec.launcher}] prefix in pyproject.toml.")
    else:
        script = Path(spec.script or "")
        if not spec.script or not (script if script.is_absolute() else root / script).exists():
            return (f"{spec.task}: trainer script '{spec.script}' does not exist under {root}; fix "
                    f"[tool.lights_out.launchers.{spec.launcher}] script in pyproject.toml.")
    if spec.multi_gpu and spec.trainer.multi_gpu == "none":
        return (f"{spec.task}: its trainer profile runs on one GPU only (multi_gpu = \"none\"); "
                f"run {spec.task.removesuffix('-mgpu')} instead.")
    if gpu is not None and gpu >= gpu_count:
        if gpu_count == 0:
            return f"--gpu {gpu} is out of range: this machine has no NVIDIA GPU; drop --gpu to run on the CPU."
        return f"--gpu {gpu} is out of range: this machine has GPUs 0-{gpu_count - 1}; pick one of those."
    if spec.multi_gpu and gpu_count < spec.gpus:
        return (f"{spec.task} needs {spec.gpus} GPUs but this machine has {gpu_count}; "
                f"run the single-GPU variant {spec.task.removesuffix('-mgpu')} instead.")
    return None
