"""Cart-pole on real Isaac Lab 3.0 (kit-less, Newton MuJoCo-Warp physics, rsl_rl PPO).

The trainer profile `isaaclab3_local` ([tool.lights_out.trainers] in pyproject.toml) runs
`python -m isaaclab train --rl_library rsl_rl` from .venv-isaaclab3 (built by tools/isaaclab3_env.sh)
with the offline cart-pole assets. Isaac Lab's cart-pole tasks default to Newton physics already.
"""
from __future__ import annotations

from lights_out_dev.doit.launchers import Experiment, lab

__all__ = ["task_isaac_cartpole"]
TRAINER = "isaaclab3_local"


def task_isaac_cartpole():
    """Cart-pole on real Isaac Lab 3.0 (Isaac-Cartpole, Isaac-Cartpole-Direct; Newton physics)."""
    def exp(name: str, trainer_task: str, doc: str, **kw) -> Experiment:
        return Experiment(family="isaac_cartpole", name=name, trainer_task=trainer_task, doc=doc,
                          experiment_name="isaac_cartpole", trainer=TRAINER, **kw)

    yield from lab(exp("base", "Isaac-Cartpole", "Isaac Lab 3 manager-based cart-pole, 4096 envs, 150 iterations.",
                       num_envs=4096, max_iterations=150))
    yield from lab(exp("direct", "Isaac-Cartpole-Direct", "Isaac Lab 3 direct-workflow cart-pole, 4096 envs, "
                       "150 iterations.", num_envs=4096, max_iterations=150))
    yield from lab(exp("long", "Isaac-Cartpole", "Isaac Lab 3 cart-pole, 4096 envs, 1000 iterations.",
                       num_envs=4096, max_iterations=1000))
