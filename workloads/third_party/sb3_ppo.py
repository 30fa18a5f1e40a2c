"""A Stable-Baselines3 PPO trainer as a user would write one: its own argparse flags, SB3's stdout table,
TensorBoard through SB3's logger, checkpoints through `CheckpointCallback`. The runner never imports it.

    python workloads/third_party/sb3_ppo.py --env CartPole-v1 --n_envs 4 --total_timesteps 4096 \\
        --run_name r1 [--seed 1] [--lr 3e-4] [--resume logs/sb3/r0/checkpoints/rl_model_2048_steps.zip]

Layout: TensorBoard events in `<log_dir>/<run_name>/tb_1/` (SB3 prints `Logging to <that dir>`),
checkpoints `<log_dir>/<run_name>/checkpoints/rl_model_<timesteps>_steps.zip`. A resumed run loads the
checkpoint (weights, optimizer, timestep counter) and trains `--total_timesteps` more
(`reset_num_timesteps=False`), so SB3's `total_timesteps` keeps counting from the checkpoint.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from stable_baselines3 import PPO
from stable_baselines3.common.callbacks import CheckpointCallback
from stable_baselines3.common.env_util import make_vec_env


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--n_envs", type=int, default=4)
    ap.add_argument("--total_timesteps", type=int, default=8192)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--lr", type=float, default=3e-4)
    ap.add_argument("--n_steps", type=int, default=128, help="rollout length per env")
    ap.add_argument("--save_freq", type=int, default=1024, help="checkpoint every N timesteps")
    ap.add_argument("--run_name", required=True)
    ap.add_argument("--log_dir", default="logs/sb3")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--resume", default=None, help="a checkpoint .zip to continue from")
    args = ap.parse_args()

    run_dir = Path(args.log_dir) / args.run_name
    env = make_vec_env(args.env, n_envs=args.n_envs, seed=args.seed)
    if args.resume:
        model = PPO.load(args.resume, env=env, device=args.device, tensorboard_log=str(run_dir))
        print(f"Resumed from {args.resume} at {model.num_timesteps} timesteps", flush=True)
    else:
        model = PPO("MlpPolicy", env, learning_rate=args.lr, n_steps=args.n_steps, batch_size=128, n_epochs=4,
                    seed=args.seed, device=args.device, verbose=1, tensorboard_log=str(run_dir))
    checkpoints = CheckpointCallback(save_freq=max(1, args.save_freq // args.n_envs),
                                     save_path=str(run_dir / "checkpoints"), name_prefix="rl_model")
    model.learn(total_timesteps=args.total_timesteps, callback=checkpoints, tb_log_name="tb",
                reset_num_timesteps=not args.resume)
    model.save(run_dir / "checkpoints" / f"rl_model_{model.num_timesteps}_steps")
    print(f"Training finished: {model.num_timesteps} timesteps", flush=True)


if __name__ == "__main__":
    main()
