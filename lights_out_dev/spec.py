"""RunSpec: everything needed to launch one run, independent of where it runs.

Built by the launchers (tasks/_launchers.py) from an experiment description plus
command-line overrides; turned into an argv by lights_out_dev.command.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class RunSpec(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task: str = Field(description="doit task name, e.g. 'top_dog:with-transfer'")
    family: str = Field(description="experiment family, e.g. 'top_dog'")
    launcher: Literal["lab", "lab_mgpu", "lab_debug", "newton", "newton_mgpu"]
    flavour: Literal["isaaclab2", "isaaclab3"] = "isaaclab2"
    prefix: list[str] = Field(description="interpreter / wrapper, e.g. [python] or ['./IsaacLab/isaaclab.sh', '-p']")
    script: str
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

    @property
    def multi_gpu(self) -> bool:
        return self.launcher in ("lab_mgpu", "newton_mgpu")
