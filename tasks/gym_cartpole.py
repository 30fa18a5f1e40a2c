"""Gymnasium's CartPole-v1 on third-party trainers, each run through its built-in trainer profile: a
Stable-Baselines3 PPO script (`sb3`, workloads/third_party/sb3_ppo.py) and an skrl PPO script (`skrl`,
workloads/third_party/skrl_ppo.py), plus a plain rsl_rl script on the reference cart-pole (`rsl_rl`,
workloads/third_party/rsl_rl_example.py). `max_iterations` is what the trainer's budget flag gets: SB3's
`--total_timesteps`, skrl's `--timesteps` (vector-environment steps)."""
from __future__ import annotations

from lights_out_dev.doit.launchers import Experiment, lab

__all__ = ["task_gym_cartpole"]
TRAINER_TASK = "CartPole-v1"


def task_gym_cartpole():
    """Cart-pole on third-party trainers: Stable-Baselines3, skrl, a plain rsl_rl script."""
    yield from lab(Experiment(family="gym_cartpole", name="sb3", trainer_task=TRAINER_TASK, trainer="sb3",
                              doc="SB3 PPO on CartPole-v1, 4 envs, 50k timesteps.", num_envs=4,
                              max_iterations=50_000))
    yield from lab(Experiment(family="gym_cartpole", name="rsl_rl", trainer_task="Lo-Cartpole-v0", trainer="rsl_rl",
                              doc="A plain rsl_rl script on the reference cart-pole, 64 envs, 100 iterations.",
                              num_envs=64, max_iterations=100))
    yield from lab(Experiment(family="gym_cartpole", name="skrl", trainer_task=TRAINER_TASK, trainer="skrl",
                              doc="skrl PPO on CartPole-v1, 4 envs, 20k (vector) timesteps.", num_envs=4,
                              max_iterations=20_000))
