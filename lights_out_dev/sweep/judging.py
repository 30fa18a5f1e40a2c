"""The sweep's judge of live runs: learning health (health.py) and early stopping (pruning.py) applied
to TensorBoard scalars read with the project's reader, for `supervisor.supervise(judge=...)`.

One RunJudge per run attempt thread; the scalars of every run of the sweep are read through one
shared cache keyed by the events files' sizes, so a tick re-reads only files that grew.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path

from lights_out_dev.core.state import RunState
from lights_out_dev.core.verdicts import StopRequest
from lights_out_dev.sweep import health, pruning
from lights_out_dev.sweep.plan import PlannedRun, entry_search

JUDGE_INTERVAL_S = 1.0  # rsl_rl logs once per iteration; looking more often finds nothing new


def points(series: dict, tag: str) -> list[tuple[int, float]]:
    return [(int(s), float(v)) for s, _, v in series.get(tag, [])]


class ScalarCache:
    """TensorBoard series of runs (merged over attempts) and of attempts, re-read when an events file grew."""

    def __init__(self):
        self._lock = threading.Lock()
        self._cache: dict[int, tuple[tuple, dict]] = {}

    @staticmethod
    def _key(dirs: list[str]) -> tuple:
        from lights_out_dev.core.tb import event_files

        return tuple((str(f), f.stat().st_size) for d in dirs if Path(d).exists() for f in event_files(d))

    def _cached(self, name, dirs: list[str], read) -> dict:
        key = self._key(dirs)
        with self._lock:
            hit = self._cache.get(name)
            if hit and hit[0] == key:
                return hit[1]
        data = read() if key else {}
        with self._lock:
            self._cache[name] = (key, data)
        return data

    def series(self, index: int, state: RunState) -> dict:
        """Every attempt of the run, merged by step (what its rungs are judged on)."""
        from lights_out_dev.sweep.report import read_series

        dirs = list(dict.fromkeys(a.tb_dir for a in state.attempts if a.tb_dir))
        return self._cached(index, dirs, lambda: read_series(state))

    def attempt_series(self, state: RunState) -> dict:
        """The current attempt only: learning health judges what this attempt does, not what a retried
        one did before it."""
        from lights_out_dev.core.tb import read_scalars

        tb_dir = state.current.tb_dir if state.current else None
        return self._cached(tb_dir, [tb_dir], lambda: read_scalars(tb_dir)) if tb_dir else {}


class RunJudge:
    """Called by the run's supervisor while an attempt runs: a StopRequest (pruned / a health verdict) or None."""

    def __init__(self, sweep, run: PlannedRun, cache: ScalarCache):
        self.sweep, self.run, self.cache = sweep, run, cache
        self.health = sweep.loaded.plan.health
        search = entry_search(sweep.loaded.plan, run)
        self.prune = search.prune if search else None
        self._next = 0.0

    @property
    def active(self) -> bool:
        return self.health is not None or self.prune is not None

    def __call__(self, state: RunState) -> StopRequest | None:
        now = time.monotonic()
        if now < self._next:
            return None
        self._next = now + JUDGE_INTERVAL_S
        if self.health is not None:
            tags = {*self.health.nan_tags, *self.health.bounds, self.health.reward_tag}
            current = self.cache.attempt_series(state)
            found = health.judge({t: points(current, t) for t in tags}, self.health)
            if found:
                return found
        progress = state.current.progress if state.current else None
        if self.prune is None or (progress and progress.total and (progress.iteration or 0) >= progress.total):
            return None  # a run that has finished training is not stopped early
        if state.resumed_after_pruning:
            return None  # brought back on purpose (prune.resume_best): it runs to its end
        mine = points(self.cache.series(self.run.index, state), self.prune.metric)
        rung = pruning.highest_rung(mine, self.prune)
        # the rungs passed are kept in the run's state (saved by its supervisor): an adopted run is not
        # judged again at a rung it passed before the sweep was killed
        passed = state.judged_rungs
        if rung is None or rung in passed:
            return None
        passed.append(rung)
        if self.prune.rule.startswith("optuna_"):
            return pruning.judge_with_optuna(mine, self.others(), self.prune, rung)
        value = pruning.rung_value(mine, rung)
        others = [v for pts, _ in self.others() if (v := pruning.rung_value(pts, rung)) is not None]
        return pruning.judge_rung(value, others, self.prune, rung)

    def others(self) -> list[tuple[list[tuple[int, float]], str]]:
        """(metric points, status) of the other runs of this run's search."""
        group = self.run.search.group
        out = []
        for index, st in self.sweep.states().items():
            other = self.sweep.loaded.run(index)
            if index == self.run.index or (other.search.group if other.search else None) != group:
                continue
            out.append((points(self.cache.series(index, st), self.prune.metric), st.status))
        return out
