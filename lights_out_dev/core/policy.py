"""Verdict + attempt history + policy table -> what to do next. Pure.

The table is `config.PolicyRule` per verdict (defaults in `config.default_policy()`):
`action` is used for the first `after` occurrences of that verdict in a run, `then` afterwards;
`max_attempts` is how many times that verdict may be retried; independently, a run gives up after
`max_consecutive_failures` failed attempts in a row (preempted and node_fail attempts are not failures:
they neither count nor break a row). `exclude_node` retries away from the nodes that failed (Slurm).
"""
from __future__ import annotations

from dataclasses import dataclass

from lights_out_dev.core.config import PolicyRule
from lights_out_dev.core.verdicts import Verdict


@dataclass
class Decision:
    action: str  # 'done' | 'accept' | 'retry' | 'halve_envs' | 'other_gpu' | 'fewer_gpus' | 'exclude_node' | 'reseed'
    #              | 'give_up'
    reason: str
    num_envs: int | None = None  # the new value, for halve_envs
    gpus: int | None = None  # the new GPU count, for fewer_gpus
    resume: bool = False  # resume from the run's own last checkpoint


def _ordinal(n: int) -> str:
    suffix = "th" if 10 <= n % 100 <= 20 else {1: "st", 2: "nd", 3: "rd"}.get(n % 10, "th")
    return f"{n}{suffix}"


def _consecutive_failures(history: list[Verdict]) -> int:
    n = 0
    for v in reversed(history):
        v = Verdict(v)
        if v.is_cluster_fault:
            continue
        if not v.is_failure:
            break
        n += 1
    return n


def decide(verdict: Verdict, history: list[Verdict], rules: dict[str, PolicyRule], max_consecutive_failures: int,
           num_envs: int | None, gpus: int, has_checkpoint: bool) -> Decision:
    """What to do after an attempt ended with `verdict`; `history` holds the earlier attempts' verdicts."""
    verdict = Verdict(verdict)
    if not verdict.is_final:
        raise ValueError(f"decide() needs a final verdict, not {verdict.value!r}")
    if verdict is Verdict.completed:
        return Decision("done", "completed")
    rule = rules.get(verdict.value)
    if rule is None:
        return Decision("give_up", f"{verdict.value}: no policy rule for this verdict")
    if rule.action == "accept":
        return Decision("accept", f"{verdict.value}: accepted by policy (not a failure)")
    if rule.action == "give_up":
        return Decision("give_up", f"{verdict.value}: policy never retries it")

    seen = sum(1 for v in history if Verdict(v) is verdict)  # earlier attempts with this verdict
    nth = _ordinal(seen + 1)
    if seen >= rule.max_attempts:
        return Decision("give_up", f"{nth} {verdict.value}: {rule.max_attempts} retries allowed, all used")
    consecutive = _consecutive_failures(history) + (1 if verdict.is_failure else 0)
    if verdict.is_failure and consecutive >= max_consecutive_failures:
        return Decision("give_up", f"{nth} {verdict.value}: {consecutive} consecutive failures "
                                   f"(limit {max_consecutive_failures})")

    action = rule.action if rule.then is None or seen < rule.after else rule.then
    if action == "fewer_gpus" and gpus <= 1:
        action = "halve_envs"  # one GPU cannot be fewer; shrink the load instead
    resume = has_checkpoint
    from_ckpt = ", resuming from the last checkpoint" if resume else ""
    if action == "retry":
        return Decision("retry", f"{nth} {verdict.value}: retry as-is{from_ckpt}", resume=resume)
    if action == "halve_envs":
        if not num_envs or num_envs < 2:
            return Decision("give_up", f"{nth} {verdict.value}: policy halves num_envs, but num_envs is "
                                       f"{num_envs if num_envs else 'not set by the run'}")
        return Decision("halve_envs", f"{nth} {verdict.value}: retry with num_envs {num_envs} -> {num_envs // 2}"
                                      f"{from_ckpt}", num_envs=num_envs // 2, resume=resume)
    if action == "exclude_node":
        return Decision("exclude_node", f"{nth} {verdict.value}: retry on other nodes{from_ckpt}", resume=resume)
    if action == "other_gpu":
        return Decision("other_gpu", f"{nth} {verdict.value}: retry on another GPU{from_ckpt}", resume=resume)
    if action == "fewer_gpus":
        fewer = max(1, gpus // 2)
        return Decision("fewer_gpus", f"{nth} {verdict.value}: retry on {fewer} GPU(s) instead of {gpus}{from_ckpt}",
                        gpus=fewer, resume=resume)
    if action == "reseed":
        return Decision("reseed", f"{nth} {verdict.value}: retry with a new seed from the last checkpoint before it",
                        resume=resume)
    if action == "accept":
        return Decision("accept", f"{nth} {verdict.value}: accepted by policy")
    return Decision("give_up", f"{nth} {verdict.value}: policy gives up")
