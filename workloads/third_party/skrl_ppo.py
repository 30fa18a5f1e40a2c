"""An skrl PPO trainer as a user would write one (skrl 2.x API): its own argparse flags, skrl's tqdm progress
bar on stdout (carriage returns only), TensorBoard and checkpoints by the agent. The runner never imports it.

    python workloads/third_party/skrl_ppo.py --env CartPole-v1 --num_envs 4 --timesteps 2000 --run_name r1 \\
        [--seed 1] [--checkpoint runs/skrl/r0/checkpoints/agent_1000.pt]

Layout (skrl's): `<log_dir>/<run_name>/` holds the TensorBoard events and `checkpoints/agent_<timestep>.pt`.
`--timesteps` counts vector-environment steps, as skrl does; a run started from `--checkpoint` loads the
agent's modules and trains `--timesteps` more (skrl's trainer always counts from 0).
"""
from __future__ import annotations

import argparse

import gymnasium as gym
import torch
import torch.nn as nn
from skrl.agents.torch.ppo import PPO, PPO_CFG
from skrl.envs.wrappers.torch import wrap_env
from skrl.memories.torch import RandomMemory
from skrl.models.torch import CategoricalMixin, DeterministicMixin, Model
from skrl.trainers.torch import SequentialTrainer
from skrl.utils import set_seed


class Policy(CategoricalMixin, Model):
    def __init__(self, observation_space, action_space, device):
        Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
        CategoricalMixin.__init__(self, unnormalized_log_prob=True)
        self.net = nn.Sequential(nn.Linear(self.num_observations, 64), nn.Tanh(), nn.Linear(64, self.num_actions))

    def compute(self, inputs, role=""):
        return self.net(inputs["observations"]), {}


class Value(DeterministicMixin, Model):
    def __init__(self, observation_space, action_space, device):
        Model.__init__(self, observation_space=observation_space, action_space=action_space, device=device)
        DeterministicMixin.__init__(self)
        self.net = nn.Sequential(nn.Linear(self.num_observations, 64), nn.Tanh(), nn.Linear(64, 1))

    def compute(self, inputs, role=""):
        return self.net(inputs["observations"]), {}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--env", default="CartPole-v1")
    ap.add_argument("--num_envs", type=int, default=4)
    ap.add_argument("--timesteps", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--run_name", required=True)
    ap.add_argument("--log_dir", default="runs/skrl")
    ap.add_argument("--checkpoint_interval", type=int, default=250)
    ap.add_argument("--checkpoint", default=None, help="an agent_<timestep>.pt to start from")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    set_seed(args.seed)
    env = wrap_env(gym.make_vec(args.env, num_envs=args.num_envs, vectorization_mode="sync"), wrapper="gymnasium")
    device = torch.device(args.device)
    models = {"policy": Policy(env.observation_space, env.action_space, device),
              "value": Value(env.observation_space, env.action_space, device)}
    cfg = PPO_CFG(rollouts=64, learning_epochs=4, mini_batches=2)
    cfg.experiment.directory = args.log_dir
    cfg.experiment.experiment_name = args.run_name
    cfg.experiment.write_interval = 50
    cfg.experiment.checkpoint_interval = args.checkpoint_interval
    agent = PPO(models=models, memory=RandomMemory(memory_size=64, num_envs=env.num_envs, device=device),
                observation_space=env.observation_space, action_space=env.action_space, device=device, cfg=cfg)
    if args.checkpoint:
        agent.load(args.checkpoint)
        print(f"Loaded {args.checkpoint}", flush=True)
    trainer = SequentialTrainer(env=env, agents=agent, cfg={"timesteps": args.timesteps, "headless": True})
    trainer.train()


if __name__ == "__main__":
    main()
