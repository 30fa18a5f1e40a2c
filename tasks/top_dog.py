"""top_dog: the harder continuous-control task, trained from scratch and fine-tuned from a checkpoint."""
from __future__ import annotations

from lights_out_dev.doit.launchers import Experiment, lab

__all__ = ["task_top_dog"]
TRAINER_TASK = "Lo-Reacher-v0"  # the reference trainer's harder continuous task


def task_top_dog():
    """Harder continuous control (Lo-Reacher-v0): base training and transfer fine-tuning."""
    def exp(name: str, doc: str, **kw) -> Experiment:
        return Experiment(family="top_dog", name=name, trainer_task=TRAINER_TASK, doc=doc,
                          experiment_name="top_dog", **kw)

    yield from lab(exp("base", "Reacher PPO from scratch, 4096 envs, 300 iterations.", num_envs=4096,
                       max_iterations=300))
    yield from lab(exp("with-transfer", "Reacher fine-tuned from top_dog:base's final checkpoint, 150 iterations.",
                       num_envs=4096, max_iterations=150, depends_on="base"))
