"""decide(): the recovery policy (retry, resume, reseed, give up per verdict) through the default policy table,
table-driven."""
from __future__ import annotations

import pytest

from lights_out_dev.core.config import PolicyRule, default_policy
from lights_out_dev.core.policy import Decision, decide
from lights_out_dev.core.verdicts import Verdict as V

pytestmark = pytest.mark.timeout(30)

RULES = default_policy()

CASES = [
    # (id, verdict, history, num_envs, gpus, has_checkpoint, action, new num_envs, new gpus, reason words)
    ("completed", V.completed, [], 4096, 1, True, "done", None, None, "completed"),
    ("timeout is accepted", V.timeout, [], 4096, 1, True, "accept", None, None, "not a failure"),
    ("preempted: resume", V.preempted, [], 4096, 1, True, "retry", None, None, "resuming from the last checkpoint"),
    ("preempted after 2 crashes is not the 3rd failure", V.preempted, [V.crash, V.crash], 4096, 1, True, "retry",
     None, None, "1st preempted"),
    ("crash after crash, preempted, crash: the preemption does not break the row", V.crash,
     [V.crash, V.preempted, V.crash], 4096, 1, False, "give_up", None, None, "3 consecutive failures"),
    ("preempted 21st: give up", V.preempted, [V.preempted] * 20, 4096, 1, True, "give_up", None, None,
     "20 retries allowed"),
    ("node_fail: other nodes", V.node_fail, [], 4096, 2, True, "exclude_node", None, None, "retry on other nodes"),
    ("node_fail with 2 crashes before: not counted", V.node_fail, [V.crash, V.crash], 4096, 2, False, "exclude_node",
     None, None, "1st node_fail"),
    ("config_error never retried", V.config_error, [], 4096, 1, True, "give_up", None, None, "never retries"),
    ("crash 1st: retry", V.crash, [], 4096, 1, False, "retry", None, None, "1st crash: retry as-is"),
    ("crash 2nd: retry", V.crash, [V.crash], 4096, 1, False, "retry", None, None, "2nd crash"),
    ("crash 3rd: 3 consecutive", V.crash, [V.crash, V.crash], 4096, 1, False, "give_up", None, None,
     "3 consecutive failures"),
    ("stall after a success resets the streak", V.stall, [V.stall, V.completed], 64, 1, False, "retry", None, None,
     "2nd stall"),
    ("nccl 1st", V.nccl, [], 4096, 4, False, "retry", None, None, "1st nccl"),
    ("nccl 4th after successes: no retries left", V.nccl, [V.nccl, V.completed, V.nccl, V.completed, V.nccl],
     4096, 4, False, "give_up", None, None, "3 retries allowed, all used"),
    ("oom 1st: retry as-is", V.oom, [], 4096, 1, False, "retry", None, None, "retry as-is"),
    ("oom 2nd: halve", V.oom, [V.oom], 4096, 1, False, "halve_envs", 2048, None, "num_envs 4096 -> 2048"),
    ("oom 2nd from halved envs halves again", V.oom, [V.oom, V.completed, V.oom], 2048, 1, False, "halve_envs", 1024,
     None, "2048 -> 1024"),
    ("oom 3rd in a row: give up", V.oom, [V.oom, V.oom], 2048, 1, False, "give_up", None, None, "consecutive"),
    ("oom cannot halve an unset num_envs", V.oom, [V.oom], None, 1, False, "give_up", None, None, "not set by the run"),
    ("oom cannot halve 1 env", V.oom, [V.oom], 1, 1, False, "give_up", None, None, "num_envs is 1"),
    ("segfault 1st: retry", V.segfault, [], 4096, 1, False, "retry", None, None, "1st segfault"),
    ("segfault 2nd: a bug", V.segfault, [V.segfault], 4096, 1, False, "give_up", None, None, "1 retries allowed"),
    ("cuda_error 1st: retry as-is", V.cuda_error, [], 4096, 1, False, "retry", None, None, "retry as-is"),
    ("cuda_error 2nd: other GPU", V.cuda_error, [V.cuda_error], 4096, 1, False, "other_gpu", None, None, "another GPU"),
    ("cuda_error 3rd: give up", V.cuda_error, [V.cuda_error, V.completed, V.cuda_error], 4096, 1, False, "give_up",
     None, None, "2 retries allowed"),
    ("imbalance 1st: retry", V.imbalance, [], 4096, 4, False, "retry", None, None, "1st imbalance"),
    ("imbalance 2nd: fewer GPUs", V.imbalance, [V.imbalance], 4096, 4, False, "fewer_gpus", None, 2, "2 GPU(s) instead of 4"),
    ("imbalance 2nd on one GPU: halve envs", V.imbalance, [V.imbalance], 4096, 1, False, "halve_envs", 2048, None,
     "4096 -> 2048"),
    ("mixed failures count as consecutive", V.crash, [V.oom, V.stall], 4096, 1, False, "give_up", None, None,
     "3 consecutive"),
    ("a timeout breaks the streak", V.crash, [V.crash, V.timeout], 4096, 1, False, "retry", None, None, "2nd crash"),
    ("killed: retry", V.killed, [], 4096, 1, False, "retry", None, None, "1st killed"),
]


@pytest.mark.parametrize("verdict,history,envs,gpus,ckpt,action,new_envs,new_gpus,words", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_default_policy(verdict, history, envs, gpus, ckpt, action, new_envs, new_gpus, words):
    d = decide(verdict, history, RULES, 3, envs, gpus, ckpt)
    assert (d.action, d.num_envs, d.gpus) == (action, new_envs, new_gpus), d.reason
    assert words in d.reason
    assert d.resume is (ckpt and action not in ("done", "accept", "give_up"))


@pytest.mark.parametrize("verdict,history", [(V.crash, []), (V.oom, [V.oom]), (V.cuda_error, [V.cuda_error]),
                                             (V.imbalance, [V.imbalance]), (V.preempted, []), (V.node_fail, [])])
def test_retries_resume_from_a_checkpoint(verdict, history):
    d = decide(verdict, history, RULES, 3, 4096, 4, True)
    assert d.resume and "resuming from the last checkpoint" in d.reason


@pytest.mark.parametrize("verdict", [V.completed, V.timeout, V.config_error])
def test_final_decisions_never_resume(verdict):
    assert decide(verdict, [], RULES, 3, 4096, 1, True).resume is False


def test_policy_is_data():
    rules = {**RULES, "crash": PolicyRule(action="halve_envs", max_attempts=5), "stall": PolicyRule(action="give_up",
                                                                                                  max_attempts=0)}
    assert decide(V.crash, [V.crash] * 3, rules, 10, 100, 1, False) == Decision(
        "halve_envs", "4th crash: retry with num_envs 100 -> 50", num_envs=50)
    assert decide(V.stall, [], rules, 10, 100, 1, False).action == "give_up"
    no_rule = {k: v for k, v in RULES.items() if k != "nccl"}
    assert "no policy rule" in decide(V.nccl, [], no_rule, 3, 100, 2, False).reason


def test_max_consecutive_failures_is_configurable():
    assert decide(V.crash, [], RULES, 1, 64, 1, False).action == "give_up"
    assert decide(V.crash, [V.crash], RULES, 5, 64, 1, False).action == "retry"


def test_history_may_hold_plain_strings():
    assert decide("oom", ["oom"], RULES, 3, 64, 1, False).action == "halve_envs"


@pytest.mark.parametrize("verdict", [V.running, V.healthy])
def test_live_verdicts_are_a_caller_bug(verdict):
    with pytest.raises(ValueError, match="final verdict"):
        decide(verdict, [], RULES, 3, 64, 1, False)
