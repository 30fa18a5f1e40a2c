"""Evaluate a trained policy (Isaac Lab play.py command line): run N episodes, write eval_metrics.csv/.json
atomically next to the checkpoint (<run>/eval/ or --output DIR), optionally a GIF of env 0.

    python workloads/play.py --task Lo-Cartpole-v0 --checkpoint latest --num_episodes 20 --video
"""

from __future__ import annotations

import sys

sys.stdout.reconfigure(line_buffering=True)

import csv  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402

import cli  # noqa: E402
from checkpoints import checkpoint_iteration, get_checkpoint_path, log_root  # noqa: E402

PROG = "play.py"


def build_parser():
    p = cli.common_parser(PROG, "Run a trained policy and record evaluation metrics.")
    p.add_argument("--num_episodes", type=cli.positive_int, default=20)
    p.add_argument("--video", action="store_true", help="write a GIF of env 0")
    p.add_argument("--video_length", type=cli.positive_int, default=200, help="frames in the GIF")
    p.add_argument("--output", default=None, help="directory for the metrics (default: <run dir>/eval)")
    return p


def newest_run(root: str, load_run: str) -> str:
    return os.path.dirname(get_checkpoint_path(root, load_run, r"model_\d+\.pt"))


def best_checkpoint(run_dir: str) -> str:
    """The saved checkpoint whose iteration logged the highest Train/mean_reward."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(run_dir, size_guidance={"scalars": 0})
    acc.Reload()
    if "Train/mean_reward" not in acc.Tags().get("scalars", []):
        raise FileNotFoundError(
            f"no Train/mean_reward in the TensorBoard events of {run_dir}; use --checkpoint latest or a file path"
        )
    reward = {e.step: e.value for e in acc.Scalars("Train/mean_reward")}
    saved = [f for f in os.listdir(run_dir) if checkpoint_iteration(f) in reward]
    if not saved:
        raise FileNotFoundError(
            f"no checkpoint in {run_dir} was saved at an iteration with Train/mean_reward; use --checkpoint latest"
        )
    return os.path.join(run_dir, max(saved, key=lambda f: (reward[checkpoint_iteration(f)], checkpoint_iteration(f))))


def resolve_checkpoint(args, experiment_name: str) -> str:
    choice = args.checkpoint or "latest"
    if os.path.isfile(choice):
        return choice
    root = log_root(experiment_name)
    if choice == "latest":
        return get_checkpoint_path(root, args.load_run or ".*", r"model_\d+\.pt")
    if choice == "best":
        return best_checkpoint(newest_run(root, args.load_run or ".*"))
    raise FileNotFoundError(f"checkpoint {choice!r} is not a file; pass a model_<iter>.pt path, latest or best")


def write_atomic(path: str, text: str) -> None:
    """Write to a temporary file in the same directory, then rename: readers never see half a file."""
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".tmp_" + os.path.basename(path))
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def evaluate(env, policy, num_episodes: int, video_frames: int):
    """Roll the deterministic policy; every env contributes the same number of episodes (its first ones),
    so short episodes are not over-represented. Returns per-episode records and env 0's frames."""
    import torch

    if video_frames:
        import render

    quota = -(-num_episodes // env.num_envs)
    records: list[list[tuple[float, int, bool]]] = [[] for _ in range(env.num_envs)]
    ret = torch.zeros(env.num_envs, device=env.device)
    steps = torch.zeros(env.num_envs, dtype=torch.long, device=env.device)
    frames = []
    obs = env.get_observations()
    with torch.inference_mode():
        while min(len(r) for r in records) < quota:
            if len(frames) < video_frames:
                frames.append(render.frame(env, 0, len(frames)))
            obs, reward, done, extras = env.step(policy(obs))
            ret += reward
            steps += 1
            done = done.bool()
            if done.any():
                ids = done.nonzero().flatten()
                # Success where the task defines it (reacher), else surviving to the time limit (cart-pole).
                ok = env.last_success if env.last_success is not None else extras["time_outs"]
                for i in ids.tolist():
                    if len(records[i]) < quota:
                        records[i].append((float(ret[i]), int(steps[i]), bool(ok[i])))
                ret[ids] = 0
                steps[ids] = 0
    episodes = [e for r in records for e in r][:num_episodes]
    returns, lengths, successes = (list(x) for x in zip(*episodes))
    return returns, lengths, successes, frames


def main(argv: list[str]) -> int:
    try:
        args = cli.parse(build_parser(), argv)
        device = cli.resolve_device(args.device)
    except cli.UsageError as e:
        cli.fail(PROG, e)

    import torch
    import yaml

    import tasks

    if device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(1)  # see train.py
    env_cfg, agent_cfg = tasks.task_config(args.task)
    experiment = args.experiment_name or agent_cfg["experiment_name"]
    try:
        path = resolve_checkpoint(args, experiment)
    except FileNotFoundError as e:
        cli.fail(PROG, cli.UsageError(str(e)))
    run_dir = os.path.dirname(os.path.abspath(path))
    saved_agent = os.path.join(run_dir, "params", "agent.yaml")
    if os.path.isfile(saved_agent):  # the network shape the checkpoint was trained with
        with open(saved_agent, encoding="utf-8") as f:
            saved = yaml.safe_load(f) or {}
        agent_cfg.update({k: saved[k] for k in ("actor", "critic", "obs_groups") if k in saved})
    agent_cfg["device"] = device
    if args.video:  # find out before evaluating, so that a failure leaves no result behind
        try:
            import render  # draws with Pillow, offscreen
        except ImportError as e:
            cli.fail(PROG, cli.UsageError(f"--video cannot render on this machine ({e}); install Pillow or drop --video"))
    num_envs = args.num_envs or min(args.num_episodes, 64)
    seed = args.seed if args.seed is not None else agent_cfg["seed"]
    torch.manual_seed(seed)
    env = tasks.make_env(env_cfg, num_envs, device, seed, args.physics)

    from rsl_rl.runners import OnPolicyRunner

    os.environ["WORLD_SIZE"] = "1"  # evaluation is single-process even if launched under torchrun
    runner = OnPolicyRunner(env, agent_cfg, log_dir=None, device=device)
    try:
        runner.load(path, load_cfg={"actor": True}, map_location=device)
    except Exception as e:
        cli.fail(PROG, cli.UsageError(
            f"cannot load checkpoint {path!r} ({type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}); "
            f"pass a model_<iter>.pt trained on {args.task}"
        ))
    print(f"[INFO]: Loading model checkpoint from: {os.path.abspath(path)}")
    policy = runner.get_inference_policy(device=device)

    returns, lengths, successes, frames = evaluate(
        env, policy, args.num_episodes, args.video_length if args.video else 0
    )
    metrics = {
        "task": args.task,
        "physics": args.physics,
        "checkpoint": os.path.abspath(path),
        "iteration": checkpoint_iteration(path),
        "num_episodes": len(returns),
        "mean_return": statistics.fmean(returns),
        "std_return": statistics.pstdev(returns),
        "mean_episode_length": statistics.fmean(lengths),
        "success_rate": sum(successes) / len(successes),
    }
    out = os.path.abspath(args.output or os.path.join(run_dir, "eval"))
    os.makedirs(out, exist_ok=True)
    if args.video:  # before the metrics: eval_metrics.json is written last, as the mark of a complete result
        gif = os.path.join(out, f"play_{re.sub(r'[^A-Za-z0-9_.-]', '_', args.task)}.gif")
        tmp = gif + ".tmp.gif"
        try:
            render.save_gif(frames, tmp, env_cfg["dt"])
        except (OSError, ValueError) as e:
            if os.path.exists(tmp):
                os.unlink(tmp)
            cli.fail(PROG, cli.UsageError(f"--video could not write {gif} ({e}); free disk space or drop --video"))
        os.replace(tmp, gif)
        print(f"[INFO] Wrote video ({len(frames)} frames) to {gif}")
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(metrics))
    writer.writeheader()
    writer.writerow(metrics)
    write_atomic(os.path.join(out, "eval_metrics.csv"), buf.getvalue())
    write_atomic(os.path.join(out, "eval_metrics.json"), json.dumps(metrics, indent=2) + "\n")
    print(
        f"[INFO] Evaluated {metrics['num_episodes']} episodes: mean return {metrics['mean_return']:.2f} "
        f"+- {metrics['std_return']:.2f}, mean episode length {metrics['mean_episode_length']:.1f}, "
        f"success rate {metrics['success_rate']:.2f}"
    )
    print(f"[INFO] Wrote metrics to {os.path.join(out, 'eval_metrics.json')} and eval_metrics.csv")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
