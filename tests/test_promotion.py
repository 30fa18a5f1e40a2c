"""promotion.choose, table-driven: which run of the source phase wins, what the promoted run becomes, and
the sentence when nothing can be promoted. A real sweep with promotion is in test_sweep.py."""
from __future__ import annotations

import pytest

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import RunState
from lights_out_dev.sweep import promotion
from lights_out_dev.sweep.plan import PlannedRun, Promotion

SPEC = RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=["python"],
               script="workloads/train.py", trainer_task="Cartpole")


def planned(index, phase=1, task="cartpole:base", num_envs=64, seed=None, promote=None, args=()):
    return PlannedRun(index=index, phase=phase, task=task, num_envs=num_envs, max_iterations=10, seed=seed,
                      trainer_args=list(args), gpus=1, time_limit_s=None, smoke=False, promotion=promote)


SOURCES = [planned(1, seed=1, args=["--lr", "1e-3"]), planned(2, seed=2, num_envs=128), planned(3, seed=3)]
VALUES = {1: 5.0, 2: 9.0, 3: 7.0}


def state(status, index):
    """A run state of source run `index`, as it ended (its spec carries the planned num_envs)."""
    spec = SPEC.model_copy(update={"num_envs": SOURCES[index - 1].num_envs})
    return RunState(run_key="k", rid="r", run_name="n", task=SPEC.task, spec=spec, status=status)


@pytest.mark.parametrize("promote, statuses, n_gpu, known, want", [
    # the best finished run wins; its envs scale with the GPUs; its seed and flags go with it
    (Promotion(), {1: "completed", 2: "completed", 3: "timeout"}, 4, {"cartpole:base-mgpu"},
     dict(task="cartpole:base-mgpu", source=2, value=9.0, num_envs=512, gpus=4, seed=2)),
    (Promotion(mode="min"), {1: "completed", 2: "completed", 3: "completed"}, 2, {"cartpole:base-mgpu"},
     dict(source=1, value=5.0, num_envs=128, trainer_args=["--lr", "1e-3"])),
    # a failed run does not compete, however good its numbers
    (Promotion(), {1: "completed", 2: "failed", 3: "completed"}, 2, {"cartpole:base-mgpu"}, dict(source=3)),
    (Promotion(gpus=2, scale_envs=False), {2: "completed"}, 8, {"cartpole:base-mgpu"}, dict(gpus=2, num_envs=128)),
    # no GPU and no -mgpu task: the documented CPU fallback, the single-process variant on CPU ranks
    (Promotion(cpu_ranks=3), {2: "completed"}, 0, set(), dict(task="cartpole:base", gpus=3, num_envs=384)),
    (Promotion(), {1: "failed"}, 2, {"cartpole:base-mgpu"}, "no run of phase 1 finished with a Train/mean_reward value"),
    (Promotion(), {2: "completed"}, 2, set(), "run 2 is best but its multi-GPU variant 'cartpole:base-mgpu' is not a task"),
])
def test_choose(promote, statuses, n_gpu, known, want):
    run = planned(4, phase=2, task=None, num_envs=None, promote=promote)
    states = {i: state(s, i) for i, s in statuses.items()}
    got = promotion.choose(run, SOURCES, states, n_gpu=n_gpu, known_tasks=known,
                           value_of=lambda st, metric: VALUES[next(i for i, s in states.items() if s is st)])
    if isinstance(want, str):
        assert isinstance(got, str) and got.startswith(want)
        return
    assert not isinstance(got, str), got
    assert {k: getattr(got, k) for k in want} == want


def test_a_decision_survives_a_restart_and_is_applied_the_same(tmp_path):
    run = planned(4, phase=2, task=None, num_envs=None, promote=Promotion())
    chosen = promotion.choose(run, SOURCES, {2: state("completed", 2)}, n_gpu=2, known_tasks={"cartpole:base-mgpu"},
                              value_of=lambda st, metric: 9.0)
    promotion.save(tmp_path / "04.promotion.json", chosen)
    again = planned(4, phase=2, task=None, num_envs=None, promote=Promotion())
    promotion.apply(again, promotion.load(tmp_path / "04.promotion.json"))
    assert (again.task, again.num_envs, again.gpus, again.seed) == ("cartpole:base-mgpu", 256, 2, 2)
    assert again.promoted == chosen and again.notes.startswith("promoted from run 2")
    (tmp_path / "bad.json").write_text("{")
    assert promotion.load(tmp_path / "bad.json") is None and promotion.load(tmp_path / "none.json") is None
