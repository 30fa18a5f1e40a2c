"""Where a sweep keeps its files: one directory per plan under <logs_dir>/sweeps/, the ledger, the plan.

    <logs_dir>/sweeps/<plan>/sweep.json, sweep.lock, sweep.owner, report.md, compute.json, search/
    <logs_dir>/sweeps/<plan>/runs/NN.json (state), NN.lock, NN.owner, NN.promotion.json
    <logs_dir>/sweeps/<plan>/targets/NN.json      <logs_dir>/sweep_log.md (the ledger, unless configured)
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lights_out_dev.core.config import ProjectConfig


@dataclass(frozen=True)
class SweepPaths:
    dir: Path

    @property
    def runs(self) -> Path:
        return self.dir / "runs"

    @property
    def targets(self) -> Path:
        return self.dir / "targets"

    @property
    def meta(self) -> Path:
        return self.dir / "sweep.json"

    @property
    def lock(self) -> Path:
        return self.dir / "sweep.lock"

    @property
    def owner(self) -> Path:
        return self.dir / "sweep.owner"

    @property
    def report(self) -> Path:
        return self.dir / "report.md"

    def state(self, index: int) -> Path:
        return self.runs / f"{index:02d}.json"

    def run_lock(self, index: int) -> Path:
        return self.runs / f"{index:02d}.lock"

    def run_owner(self, index: int) -> Path:
        return self.runs / f"{index:02d}.owner"

    def target(self, index: int) -> Path:
        return self.targets / f"{index:02d}.json"

    def promotion(self, index: int) -> Path:
        return self.runs / f"{index:02d}.promotion.json"

    @property
    def search(self) -> Path:
        return self.dir / "search"

    @property
    def compute(self) -> Path:
        return self.dir / "compute.json"


def run_key(name: str, index: int) -> str:
    """The run's key (in its log file name): the doit task name with ':' -> '__'."""
    return f"sweep__{name}-{index:02d}"


def sweeps_root(root: Path, cfg: ProjectConfig) -> Path:
    return cfg.path(root, cfg.logs_dir) / "sweeps"


def paths_for(root: Path, cfg: ProjectConfig, name: str) -> SweepPaths:
    return SweepPaths(sweeps_root(root, cfg) / name)


def ledger_path(root: Path, cfg: ProjectConfig) -> Path:
    """[tool.lights_out] ledger, else <logs_dir>/sweep_log.md (beside the runs it describes, outside the source)."""
    return cfg.path(root, cfg.ledger) if cfg.ledger else cfg.path(root, cfg.logs_dir) / "sweep_log.md"


def ledger_lock(root: Path, cfg: ProjectConfig) -> Path:
    return cfg.path(root, cfg.logs_dir) / "locks" / "ledger.lock"


def plan_path(root: Path, cfg: ProjectConfig, given: str | None) -> Path:
    return cfg.path(root, given or cfg.default_plan)
