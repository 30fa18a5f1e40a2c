"""Task registry: environment + PPO configuration as data, keyed by the Isaac Lab style task id.

Ids without the "-v0" suffix are Isaac Lab 3 style aliases of the same task.
"""

from __future__ import annotations

import copy
import math

CARTPOLE_ENV = {
    "class_name": "CartpoleEnv",
    "num_envs": 4096,
    "num_actions": 1,
    "dt": 0.02,
    "episode_length_steps": 250,  # 5 s
    "gravity": 9.8,
    "cart_mass": 1.0,
    "pole_mass": 0.1,
    "pole_half_length": 0.5,
    "force_scale": 10.0,
    "max_pole_angle": 12 * math.pi / 180,
    "max_cart_position": 2.4,
    "reset_range": [0.05, 0.05, 0.05, 0.05],  # +- theta, theta_dot, x, x_dot
    "newton_substeps": 4,
}

REACHER_ENV = {
    "class_name": "ReacherEnv",
    "num_envs": 4096,
    "num_actions": 2,
    "dt": 0.05,
    "episode_length_steps": 100,  # 5 s
    "link_lengths": [0.5, 0.5],
    "torque_scale": 20.0,
    "damping": 2.0,
    "max_joint_velocity": 10.0,
    "success_radius": 0.05,
}


def ppo_agent(experiment_name: str, max_iterations: int, hidden: list[int], num_steps_per_env: int,
              entropy_coef: float) -> dict:
    """rsl_rl 5.x train_cfg, shaped like Isaac Lab's RslRlOnPolicyRunnerCfg after to_dict()."""
    return {
        "seed": 42,
        "device": "cpu",
        "num_steps_per_env": num_steps_per_env,
        "max_iterations": max_iterations,
        "save_interval": 50,
        "experiment_name": experiment_name,
        "run_name": "",
        "logger": "tensorboard",
        "resume": False,
        "load_run": ".*",
        "load_checkpoint": "model_.*.pt",
        "check_for_nan": True,
        "obs_groups": {"actor": ["policy"], "critic": ["policy"]},
        "actor": {
            "class_name": "MLPModel",
            "hidden_dims": hidden,
            "activation": "elu",
            "obs_normalization": False,
            "distribution_cfg": {"class_name": "GaussianDistribution", "init_std": 1.0},
        },
        "critic": {"class_name": "MLPModel", "hidden_dims": hidden, "activation": "elu", "obs_normalization": False},
        "algorithm": {
            "class_name": "PPO",
            "value_loss_coef": 1.0,
            "use_clipped_value_loss": True,
            "clip_param": 0.2,
            "entropy_coef": entropy_coef,
            "num_learning_epochs": 5,
            "num_mini_batches": 4,
            "learning_rate": 1.0e-3,
            "schedule": "adaptive",
            "gamma": 0.99,
            "lam": 0.95,
            "desired_kl": 0.01,
            "max_grad_norm": 1.0,
        },
    }


TASKS = {
    "Lo-Cartpole-v0": {"env": CARTPOLE_ENV, "agent": ppo_agent("cartpole", 150, [32, 32], 16, 0.005)},
    "Lo-Reacher-v0": {"env": REACHER_ENV, "agent": ppo_agent("reacher", 300, [64, 64], 24, 0.002)},
}
for _task_id in list(TASKS):
    TASKS[_task_id.removesuffix("-v0")] = TASKS[_task_id]

PHYSICS = ("torch", "newton")
# Isaac Lab 3 spellings: the closest engine this trainer has (Newton here always uses Featherstone).
PHYSICS_ALIASES = {"newton_mjwarp": "newton", "physx": "torch"}
NEWTON_TASKS = ("Lo-Cartpole-v0", "Lo-Cartpole")


def task_config(task: str) -> tuple[dict, dict]:
    """Deep copies of (env cfg, agent cfg) so callers may edit them."""
    spec = TASKS[task]
    return copy.deepcopy(spec["env"]), copy.deepcopy(spec["agent"])


def make_env(env_cfg: dict, num_envs: int, device: str, seed: int, physics: str = "torch"):
    import envs

    if physics == "newton":
        from newton_cartpole import NewtonCartpoleEnv

        return NewtonCartpoleEnv(env_cfg, num_envs, device, seed)
    return getattr(envs, env_cfg["class_name"])(env_cfg, num_envs, device, seed)
