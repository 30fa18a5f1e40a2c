"""Evaluate / play: `doit <family>:<variant>-play` runs the trainer's play script on a checkpoint of
that experiment and records the metrics.

    doit cartpole:base-play [--checkpoint latest|best|best:<tag>|PATH] [--num_envs N] [--num_episodes N] [--video]

Checkpoint choice (`resolve_checkpoint`, pure apart from reading the disk):
- none / `auto`: the checkpoint the experiment's own target records (its final one), else `latest`;
- `latest`: the highest model_<iter>.pt of the experiment's run directory;
- `best` / `best:<tag>`: the saved checkpoint whose iteration logged the best value of the TensorBoard
  tag (default Train/mean_reward, higher is better);
- a path: absolute, or relative to the experiment's run directory (then to the project root).
The run directory is the one the experiment's target records, else the newest under
<trainer_logs_dir>/<experiment_name>/.

The play script is the training script's sibling `play.py` (Isaac Lab's layout; the reference
trainer's workloads/play.py writes <checkpoint dir>/eval/eval_metrics.json and .csv atomically, and
with --video a GIF). The result goes to the play task's target JSON and into the trained run's state
(`extra['eval']`), where the ledger and the sweep report show it. A failed evaluation leaves no target.
"""
from __future__ import annotations

import json
import os
import re
import sys
import time
from pathlib import Path

from lights_out_dev import executors
from lights_out_dev.core.profiles import checkpoint_iteration, checkpoints_in
from lights_out_dev.core.spec import RunSpec
from lights_out_dev.errors import LightsOutError
from lights_out_dev.executors.local import LaunchError
from lights_out_dev.host import stopping
from lights_out_dev.run.attempt import (
    Ended,
    environment,
    limits_for,
    new_scanner,
    process_environment,
    watch_to_end,
)
from lights_out_dev.run.monitor import LogTail

PLAY_SUFFIX = "-play"  # task name of the evaluate/play twin of every single-GPU variant
DEFAULT_METRIC = "Train/mean_reward"
METRICS_FILE = "eval_metrics.json"
VIDEO_SUFFIXES = (".gif", ".mp4")
_ERROR_LINE = re.compile(r"^[\w.-]+: error: (.+)$")


class PlayError(LightsOutError):
    """A user-fixable evaluation problem; str() is one sentence naming the value and the fix."""


# -- checkpoints ----------------------------------------------------------------------------------

def checkpoints(run_dir: str | Path) -> list[tuple[int, Path]]:
    """(iteration, path) of every model_<iter>.pt in a run directory, oldest first."""
    return [(checkpoint_iteration(p), Path(p)) for p in checkpoints_in(run_dir)]


def newest_run_dir(experiment_root: Path) -> Path | None:
    """Isaac Lab names run directories by start time, so the newest sorts last."""
    if not experiment_root.is_dir():
        return None
    runs = sorted(p for p in experiment_root.iterdir() if p.is_dir() and checkpoints(p))
    return runs[-1] if runs else None


def best_checkpoint(run_dir: Path, metric: str = DEFAULT_METRIC) -> Path:
    from lights_out_dev.core.tb import read_scalars

    saved = checkpoints(run_dir)
    values = {step: value for step, _, value in read_scalars(run_dir).get(metric, [])}
    if not values:
        raise PlayError(f"--checkpoint best: the logs of {run_dir} hold no '{metric}' values; pick another tag "
                        f"with --checkpoint best:<tag> or use --checkpoint latest.")
    scored = [(values[it], it, p) for it, p in saved if it in values]
    if not scored:
        raise PlayError(f"--checkpoint best: no checkpoint in {run_dir} was saved at an iteration that logged "
                        f"'{metric}'; use --checkpoint latest or a model_<iter>.pt path.")
    return max(scored)[2]


def resolve_checkpoint(selector: str | None, run_dir: Path | None, recorded: str | None, root: Path,
                       task: str) -> Path:
    """The checkpoint file to evaluate (see the module doc); PlayError with one sentence otherwise."""
    sel = (selector or "auto").strip()
    if sel == "auto" and recorded and Path(recorded).is_file():
        return Path(recorded)
    if sel in ("auto", "latest") or sel == "best" or sel.startswith("best:"):
        if run_dir is None or not checkpoints(run_dir):
            raise PlayError(f"no checkpoint of {task} found yet; run `doit {task}` first or pass "
                            f"--checkpoint PATH to a model_<iter>.pt.")
        if sel.startswith("best"):
            return best_checkpoint(run_dir, sel.partition(":")[2] or DEFAULT_METRIC)
        return checkpoints(run_dir)[-1][1]
    path = Path(sel).expanduser()
    candidates = [path] if path.is_absolute() else [p / path for p in (run_dir, root) if p is not None]
    for c in candidates:
        if c.is_file():
            return c.resolve()
    where = " or ".join(str(c) for c in candidates)
    raise PlayError(f"checkpoint '{sel}' does not exist (looked for {where}); pass latest, best, an absolute "
                    f"path or a path relative to the run directory.")


# -- command -------------------------------------------------------------------------------------

def play_entry(spec: RunSpec) -> list[str] | None:
    """What follows the interpreter in the play command, from the trainer profile; None = it has none.

    A play script lives beside the training script (Isaac Lab keeps play.py beside train.py)."""
    profile = spec.trainer
    if profile.play_module:
        return ["-m", profile.play_module, *profile.play_script_args]
    if profile.play_script and spec.script:
        return [str(Path(spec.script).with_name(profile.play_script)), *spec.script_args,
                *profile.play_script_args]
    return None


def split_checkpoint(args: list[str]) -> tuple[str | None, list[str]]:
    """Take `--checkpoint X` / `--checkpoint=X` out of the passthrough args (the runner resolves it). Pure."""
    out, selector, i = [], None, 0
    while i < len(args):
        tok = args[i]
        if tok == "--checkpoint" and i + 1 < len(args):
            selector, i = args[i + 1], i + 2
            continue
        if tok.startswith("--checkpoint="):
            selector = tok.split("=", 1)[1]
        else:
            out.append(tok)
        i += 1
    return selector, out


def play_argv(spec: RunSpec, gpus: list[int] | None, checkpoint: str, passthrough: list[str]) -> list[str]:
    """The play command: the training command's prefix, env and task, the play script, one process."""
    # No --num_envs of the training run: evaluation needs far fewer (the play script's default, or
    # --num_envs given to the play task, which arrives in `passthrough`).
    from lights_out_dev.core.command import device_name, merge_flags
    from lights_out_dev.core.profiles import fill

    spelled, flags = spec.trainer.flags, []
    for flag, value in ((spelled.task, spec.trainer_task), (spelled.seed, spec.seed)):
        if flag and value is not None:
            flags += [flag, str(value)]
    if spec.headless and spelled.headless:
        flags.append(spelled.headless)
    device = device_name(spec.trainer, gpus[0] if gpus else None)
    if spelled.device:
        flags += [spelled.device, device]
    flags += fill(spec.trainer.device_args, device=device, stamp="")
    if spelled.experiment_name and spec.experiment_name:
        flags += [spelled.experiment_name, spec.experiment_name]
    flags += ["--checkpoint", checkpoint]
    if spec.newton_selector:
        flags.append(spec.newton_selector)
    prefix = list(spec.prefix) or [sys.executable]
    return [*prefix, *(play_entry(spec) or []), *merge_flags(flags, passthrough)]


# -- results -------------------------------------------------------------------------------------

def read_eval(checkpoint_dir: str | Path | None) -> dict | None:
    """The eval metrics written next to a run's checkpoints (<run dir>/eval/eval_metrics.json), if any."""
    if not checkpoint_dir:
        return None
    try:
        data = json.loads((Path(checkpoint_dir) / "eval" / METRICS_FILE).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def eval_text(metrics: dict | None) -> str:
    """'eval return 231.2±20.1 (16 ep), success 0.50' for the ledger and report. Pure."""
    if not metrics or metrics.get("mean_return") is None:
        return ""
    text = f"eval return {metrics['mean_return']:.1f}"
    if metrics.get("std_return") is not None:
        text += f"±{metrics['std_return']:.1f}"
    if metrics.get("num_episodes"):
        text += f" ({metrics['num_episodes']} ep)"
    if metrics.get("success_rate") is not None:
        text += f", success {metrics['success_rate']:.2f}"
    return text


def launch_problem(spec: RunSpec, root: Path, gpu: int | None) -> str | None:
    """Why the play command cannot start here (one sentence), or None: its script, prefix and --gpu."""
    from lights_out_dev.core import command
    from lights_out_dev.host.nvml import gpu_count

    entry = play_entry(spec)
    if entry is None:
        return (f"{spec.task}: its trainer profile has no play entry point (play_script / play_module); "
                f"evaluate with that trainer's own tools.")
    if spec.trainer.play_module:
        return command.launch_problem(spec.model_copy(update={"module": spec.trainer.play_module}), root, gpu,
                                      gpu_count())
    script = Path(entry[0])
    if not (script if script.is_absolute() else root / script).exists():
        return (f"play script '{script}' (beside the training script) does not exist under {root}; put the "
                f"trainer's {script.name} there or evaluate with that trainer's own tools.")
    return command.launch_problem(spec.model_copy(update={"script": str(script)}), root, gpu, gpu_count())


def record_in_state(state_path: Path, record: dict) -> str | None:
    """Add the eval result to the trained run's state; a note when it cannot (run busy / absent)."""
    from filelock import FileLock, Timeout

    from lights_out_dev.core.state import load_state, save_state
    from lights_out_dev.run.supervisor import lock_path

    if not state_path.exists():
        return None
    lock = FileLock(str(lock_path(state_path)), thread_local=False)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return f"{state_path.name} is held by a running supervisor; the result is only in the play target"
    try:
        st = load_state(state_path)
        if st is not None:
            st.evaluation = record
            save_state(st, state_path)
    except Exception as e:  # the target JSON keeps the result either way
        return f"could not add the result to {state_path} ({e})"
    finally:
        lock.release()
    return None


def _last_error(log_lines: list[str]) -> str | None:
    for line in reversed(log_lines):
        m = _ERROR_LINE.match(line.strip())
        if m:
            return m.group(1)
    return None


def _run(spec: RunSpec, argv: list[str], gpus: list[int] | None, cfg, root: Path, log_path: Path,
         limit_s: float | None) -> tuple[Ended, list[str]]:
    """Run the play process as a run's attempt is run (one process session, identity-checked stop, the
    project's stall limits, a stop request of this process honoured) and show its output as it comes;
    (how it ended, its lines)."""
    executor = executors.make("local", cfg, root)  # an evaluation runs beside whoever asked, on its leased GPU
    # no pinning: the play command names its one leased GPU in its device flag
    env = process_environment(spec, environment(spec, executor, None, None))
    handle = executor.start(argv, env, log_path, gpus, time_limit_s=limit_s, job_name="lights-out-play")
    lines: list[str] = []

    def show(line: str) -> None:
        sys.stdout.write(line + "\n")
        lines.append(line)

    ended = watch_to_end(executor, handle, new_scanner(cfg, argv, spec, root), limits_for(cfg, executor, limit_s),
                         LogTail(handle.log_path, 0), should_stop=stopping.requested, echo=show)
    return ended, lines


def evaluate_checkpoint(spec: RunSpec, ckpt: Path, passthrough: list[str], cfg, root: Path, label: str,
                        gpu: int | None = None) -> dict:
    """Run the play script of `spec`'s trainer on `ckpt` and return the eval record (metrics, paths).

    PlayError (one sentence) when it cannot start, fails, runs out of time or writes no metrics."""
    from lights_out_dev.host import gpu_lock

    want_video = any(t == "--video" or t.startswith("--video=") for t in passthrough)
    log_path = cfg.path(root, cfg.logs_dir) / f"{time.strftime('%Y%m%d_%H%M%S')}_{label.replace(':', '__')}.log"
    lease = None
    try:
        lease = gpu_lock.acquire(1, cfg, root, prefer=[gpu] if gpu is not None else None,
                                 wait=cfg.monitor.busy_gpu_action == "wait")
        argv = play_argv(spec, lease.gpus, str(ckpt), passthrough)
        print(f"lights-out: {label}: evaluating {ckpt}")
        started = time.time()
        ended, lines = _run(spec, argv, lease.gpus, cfg, root, log_path, spec.time_limit_s)
    except (gpu_lock.GpuLockError, LaunchError) as e:
        raise PlayError(str(e)) from None
    except OSError as e:  # e.g. the prefix is not executable, the logs dir not writable
        raise PlayError(f"cannot run the evaluation ({e.strerror or e}: {e.filename or '-'}); fix that path "
                        f"([tool.lights_out.launchers.{spec.launcher}] prefix or logs_dir) and rerun") from None
    finally:
        if lease is not None:
            lease.release()
    stopped_by = ended.watched.stopped_by
    if stopped_by == "timeout":
        raise PlayError(f"the evaluation did not finish within {spec.time_limit_s:.0f}s and was stopped; lower "
                        f"--num_episodes or raise --time_limit (log {log_path})")
    if stopped_by == "user":
        raise PlayError(f"the evaluation was stopped by {stopping.signal_name()} before it finished (log {log_path})")
    if stopped_by is not None or ended.watched.exit is None:
        raise PlayError(f"the evaluation was stopped: {ended.reason} (log {log_path})")
    code = ended.watched.exit.exit_code
    if code != 0:
        raise PlayError(f"{_last_error(lines) or f'the play script exited with code {code}'} (log {log_path})")
    out_dir = ckpt.parent / "eval"
    metrics_path = out_dir / METRICS_FILE
    metrics = read_eval(ckpt.parent)
    fresh = metrics is not None and metrics_path.stat().st_mtime >= started - 1 and \
        os.path.abspath(str(metrics.get("checkpoint", ckpt))) == os.path.abspath(str(ckpt))
    if not fresh:
        raise PlayError(f"the play script exited 0 but wrote no {metrics_path}; metrics need a play script that "
                        f"writes it (see README 'Evaluate / play'); log {log_path}")
    video = None
    if want_video:
        videos = [p for p in out_dir.iterdir() if p.suffix in VIDEO_SUFFIXES and p.stat().st_mtime >= started - 1]
        if not videos:
            raise PlayError(f"--video was asked for but no video was written; this machine may not be able to "
                            f"render (Isaac Lab also needs --enable_cameras); log {log_path}")
        video = str(max(videos, key=lambda p: p.stat().st_mtime))
    return {"task": label, "trained_task": spec.task, "checkpoint": str(ckpt), "metrics": metrics,
            "metrics_path": str(metrics_path), "video": video, "log": str(log_path), "started_at": started,
            "finished_at": time.time()}


def run_play(train_spec: dict, task: str, train_target: str, target: str, experiment_root: str) -> bool:
    """doit python-action of a `-play` task: resolve the checkpoint, run play, record the metrics."""
    from lights_out_dev.core import overrides
    from lights_out_dev.core.config import load_project_or_report
    from lights_out_dev.core.state import atomic_write_text
    from lights_out_dev.run.supervisor import state_path_for

    spec = RunSpec.model_validate(train_spec)
    Path(target).unlink(missing_ok=True)  # an earlier evaluation's target must not outlive this one's failure
    project = load_project_or_report("lights-out: ")
    if project is None:
        return False
    root, cfg = project
    ov = overrides.current()
    recorded = run_dir = None
    try:
        data = json.loads(Path(train_target).read_text())
        recorded, run_dir = data.get("checkpoint"), data.get("run_dir")
    except (OSError, ValueError):
        pass
    run_dir = Path(run_dir) if run_dir and Path(run_dir).is_dir() else newest_run_dir(Path(experiment_root))
    selector, passthrough = split_checkpoint(list(ov.trainer_args))
    if ov.num_envs:
        passthrough = ["--num_envs", str(ov.num_envs), *passthrough]
    try:
        problem = launch_problem(spec, root, ov.gpu)
        if problem:
            raise PlayError(problem)
        ckpt = resolve_checkpoint(selector, run_dir, recorded, root, spec.task)
        record = evaluate_checkpoint(spec, ckpt, passthrough, cfg, root, task, gpu=ov.gpu)
    except PlayError as e:
        print(f"lights-out: {task} failed: {str(e).rstrip('.')}.")
        return False
    note = record_in_state(state_path_for(root, cfg, spec.task), record)
    try:
        atomic_write_text(Path(target), json.dumps(record, indent=2) + "\n")
    except OSError as e:
        print(f"lights-out: could not write {target} ({e.strerror}); free disk space and rerun.")
        return False
    print(f"lights-out: {task}: {eval_text(record['metrics'])}; metrics {record['metrics_path']}"
          + (f"; video {record['video']}" if record["video"] else "") + (f" ({note})" if note else ""))
    return True
