"""A plain rsl_rl training script in the style of rsl_rl's own examples: build a VecEnv, an OnPolicyRunner
and call `learn`; no Isaac Lab command line. The environments are the reference tasks' (workloads/tasks.py).

    python workloads/third_party/rsl_rl_example.py --env Lo-Cartpole-v0 --num_envs 64 --iterations 10 \\
        --run_name r1 [--seed 1] [--save_interval 2] [--load logs/rsl_rl/r0/model_4.pt]

Layout (rsl_rl's): `<log_dir>/<run_name>/` holds the TensorBoard events and `model_<iteration>.pt`. A run
started with `--load` continues the checkpoint's iteration count: `--iterations` more are trained.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))  # workloads/: the envs

import tasks as reference_tasks  # noqa: E402  (workloads/tasks.py)
from rsl_rl.runners import OnPolicyRunner  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="Lo-Cartpole-v0")
    ap.add_argument("--num_envs", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--run_name", required=True)
    ap.add_argument("--log_dir", default="logs/rsl_rl")
    ap.add_argument("--save_interval", type=int, default=2)
    ap.add_argument("--load", default=None, help="a model_<iteration>.pt to continue from")
    args = ap.parse_args()

    env_cfg, train_cfg = reference_tasks.task_config(args.env)
    train_cfg.update(seed=args.seed, device=args.device, save_interval=args.save_interval)
    env = reference_tasks.make_env(env_cfg, args.num_envs, args.device, args.seed)
    runner = OnPolicyRunner(env, train_cfg, log_dir=os.path.join(args.log_dir, args.run_name), device=args.device)
    if args.load:
        runner.load(args.load)
        print(f"Loaded {args.load} at iteration {runner.current_learning_iteration}", flush=True)
    runner.learn(num_learning_iterations=args.iterations)


if __name__ == "__main__":
    main()
