"""RunSpec: everything needed to launch one run, independent of where it runs.

Built by the launchers (lights_out_dev/doit/launchers.py) from an experiment description plus
command-line overrides; turned into an argv by lights_out_dev.core.command.
"""
from __future__ import annotations

from typing import Literal

from pydantic import Field

from lights_out_dev.core.models import StrictModel
from lights_out_dev.core.profiles import TrainerProfile, resolve_profile


class RunSpec(StrictModel):
    task: str = Field(description="doit task name, e.g. 'top_dog:with-transfer'")
    family: str = Field(description="experiment family, e.g. 'top_dog'")
    launcher: Literal["lab", "lab_mgpu", "lab_debug", "newton", "newton_mgpu"]
    trainer: TrainerProfile = Field(default_factory=lambda: resolve_profile("reference", {}),
                                    description="how the trainer is spelled and behaves (lights_out_dev.core.profiles)")
    prefix: list[str] = Field(description="interpreter / wrapper, e.g. [python] or ['./IsaacLab/isaaclab.sh', '-p']")
    script: str | None = Field(default=None, description="trainer script; or `module`")
    module: str | None = Field(default=None, description="trainer started as `python -m <module>`")
    script_args: list[str] = Field(default_factory=list)
    trainer_task: str = Field(description="value of --task")
    experiment_name: str | None = None
    num_envs: int | None = None
    max_iterations: int | None = None
    seed: int | None = None
    headless: bool = True
    newton_selector: str | None = None
    gpus: int = Field(default=1, ge=1, description="GPUs the run needs (nproc_per_node for mgpu; per node)")
    nodes: int = Field(default=1, ge=1, description="nodes of a multi-GPU run (Slurm): one torch.distributed.run each")
    time_limit_s: float | None = None
    extra_args: list[str] = Field(default_factory=list, description="trainer flags in order; last flag wins")
    env: dict[str, str] = Field(default_factory=dict, description="literal env vars for the trainer")
    secret_env: list[str] = Field(default_factory=list, description="names passed from the environment, redacted when shown")
    load_checkpoint: str | None = Field(default=None, description="checkpoint file to start from (fine-tuning)")
    smoke: bool = False

    def entry(self) -> list[str]:
        """What follows the interpreter in a single-process launch: the script or `-m module`, then its args."""
        return [*(["-m", self.module] if self.module else [self.script or ""]), *self.script_args]

    def rank_entry(self) -> list[str]:
        """What each torchrun rank runs: the profile's multi-GPU module when it has one, else `entry()`."""
        if self.trainer.multi_gpu_module:
            args = self.trainer.multi_gpu_script_args
            return ["-m", self.trainer.multi_gpu_module, *(self.script_args if args is None else args)]
        return self.entry()

    @property
    def multi_gpu(self) -> bool:
        return self.launcher in ("lab_mgpu", "newton_mgpu")
