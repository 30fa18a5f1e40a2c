"""The pydantic base of every model a user writes (configuration, trainer profiles, run specs, sweep plans)."""
from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class StrictModel(BaseModel):
    """Unknown keys are errors: a misspelt key must name itself, not be ignored and leave the default in force."""

    model_config = ConfigDict(extra="forbid")
