"""Cart-pole balancing on the reference trainer (Lo-Cartpole-v0): the first thing a new user runs."""
from __future__ import annotations

from lights_out_dev.doit.launchers import Experiment, lab, lab_debug, newton

__all__ = ["task_cartpole"]
TRAINER_TASK = "Lo-Cartpole-v0"


def task_cartpole():
    """Cart-pole (Lo-Cartpole-v0) on the reference trainer."""
    def exp(name: str, doc: str, **kw) -> Experiment:
        return Experiment(family="cartpole", name=name, trainer_task=TRAINER_TASK, doc=doc,
                          experiment_name="cartpole", **kw)

    yield from lab(exp("base", "Cart-pole PPO, 4096 envs, 150 iterations.", num_envs=4096, max_iterations=150))
    yield from lab(exp("long", "Cart-pole PPO, 4096 envs, 1000 iterations.", num_envs=4096, max_iterations=1000))
    yield from newton(exp("newton", "Cart-pole PPO on the Newton physics backend.", num_envs=4096,
                          max_iterations=150))
    yield from lab_debug(exp("debug", "Cart-pole with the GUI, 64 envs, for looking at the policy.",
                             max_iterations=150))
