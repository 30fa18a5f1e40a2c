"""The command-line overrides of one invocation (`doit TASK --num_envs 64 physics=newton ...`).

`parse(tokens)` is pure: it splits the tokens that follow the task names into lights-out's own
options (consumed here, never passed to the trainer), the three numbers the runner itself must
know (num_envs, max_iterations, seed: the recovery policy halves num_envs, so it lives in the spec)
and everything else, passed through to the trainer in order.

The `run` command (doit_run.py) and extract_cmd.py call `set_current()` before the task creators
run; task creators read `current()` to build specs and their up-to-date digests.

Token rules (documented in the README, "Overrides"):
- `--flag=value`, `--flag value`, `-f value` and bare `--flag` are flags; a following token is the
  flag's value unless it starts with '-' (a negative number like -5 still counts as a value) or
  contains '=' (such a token is a Hydra override of its own).
- `key=value` tokens (also Hydra's `+key=value`, `++key=value`, `~key`) are passed through as-is.
- Anything else (a stray word) is passed through as-is; a bare `--` is dropped (it is optional).
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field

from lights_out_dev.core.config import parse_duration
from lights_out_dev.errors import LightsOutError

EXECUTORS = ("local", "slurm")
_NUMBER = re.compile(r"-?\d+(\.\d*)?([eE][-+]?\d+)?")


class OverrideError(LightsOutError, ValueError):
    """A bad command-line override; str() is one sentence naming the value and the fix."""


@dataclass(frozen=True)
class Overrides:
    trainer_args: list[str] = field(default_factory=list)  # passthrough, in order
    gpu: int | None = None
    nodes: int | None = None  # multi-node -mgpu runs (Slurm)
    time_limit_s: float | None = None
    time_limit_set: bool = False  # `--time_limit none` (no limit) differs from "not given"
    executor: str | None = None
    smoke: bool = False
    plan: str | None = None
    continue_: bool = False
    wipe: bool = False
    num_envs: int | None = None
    max_iterations: int | None = None
    seed: int | None = None

    def digest_fields(self) -> dict:
        """What makes an experiment task rerun (its `uptodate` digest); sweep-only options excluded."""
        return {"trainer_args": self.trainer_args, "gpu": self.gpu, "executor": self.executor, "nodes": self.nodes}


# lights-out's own options: name -> takes a value
_OWN_VALUED = ("--gpu", "--nodes", "--time_limit", "--executor", "--plan")
_OWN_SWITCHES = ("--smoke", "--continue", "--wipe")
_SPEC_INTS = ("--num_envs", "--max_iterations", "--seed")


def is_override_token(token: str) -> bool:
    """True for a token that starts the overrides after the task names."""
    return token.startswith("-") or "=" in token


def _is_value(token: str) -> bool:
    if "=" in token:
        return False
    return not token.startswith("-") or bool(_NUMBER.fullmatch(token))


def split_items(tokens: list[str]) -> list[list[str]]:
    """Group tokens into items: [flag] / [flag, value] / ['--flag=value'] / ['key=value'] / [word]."""
    items: list[list[str]] = []
    i = 0
    while i < len(tokens):
        tok = tokens[i]
        if tok.startswith("-") and not _NUMBER.fullmatch(tok) and "=" not in tok \
                and i + 1 < len(tokens) and _is_value(tokens[i + 1]):
            items.append([tok, tokens[i + 1]])
            i += 2
        else:
            items.append([tok])
            i += 1
    return items


def item_key(item: list[str]) -> str:
    """The name an item is known by for 'last flag wins': '--lr' for '--lr=3e-4', 'physics' for 'physics=x'."""
    head = item[0]
    if head.startswith("-") and not _NUMBER.fullmatch(head):
        return head.split("=", 1)[0]
    if "=" in head:
        return head.split("=", 1)[0].lstrip("+~")
    if head.startswith("~"):
        return head[1:]
    return head


def _value(item: list[str], flag: str) -> str | None:
    if "=" in item[0]:
        return item[0].split("=", 1)[1]
    return item[1] if len(item) > 1 else None


def _int(flag: str, raw: str | None, minimum: int, what: str, example: int) -> int:
    try:
        value = int(raw) if raw is not None else None
    except ValueError:
        value = None
    if value is None or value < minimum:
        shown = raw if raw is not None else "(no value)"
        raise OverrideError(f"{flag} {shown} is not valid; give {what}, e.g. {flag} {example}.")
    return value


def parse(tokens: list[str]) -> Overrides:
    """Pure: the tokens after the task names -> Overrides (raises OverrideError)."""
    out: dict = {}
    passthrough: list[str] = []
    for item in split_items([t for t in tokens if t != "--"]):  # a bare `--` separates nothing here
        key = item_key(item)
        if key in _OWN_SWITCHES:
            if len(item) > 1 or "=" in item[0]:
                # a switch never takes a value: give the word back to the trainer rather than eat it
                passthrough.extend(item[1:])
            out[{"--continue": "continue_"}.get(key, key[2:])] = True
        elif key in _OWN_VALUED:
            raw = _value(item, key)
            if key == "--gpu":
                out["gpu"] = _int(key, raw, 0, "a GPU index as listed by nvidia-smi", 0)
            elif key == "--nodes":
                out["nodes"] = _int(key, raw, 1, "a positive whole number of Slurm nodes", 2)
            elif key == "--time_limit":
                if raw is None:
                    raise OverrideError("--time_limit needs a duration; write e.g. --time_limit 1h or --time_limit none.")
                try:
                    out["time_limit_s"] = parse_duration(raw)
                except ValueError as e:
                    raise OverrideError(f"--time_limit {e}.") from None
                out["time_limit_set"] = True
            elif key == "--executor":
                if raw not in EXECUTORS:
                    raise OverrideError(f"--executor {raw or '(no value)'} is not known; use --executor local or --executor slurm.")
                out["executor"] = raw
            else:
                if not raw:
                    raise OverrideError("--plan needs a path; write e.g. --plan sweeps/default.yaml.")
                out["plan"] = raw
        elif key in _SPEC_INTS:
            raw = _value(item, key)
            if key == "--num_envs":
                out["num_envs"] = _int(key, raw, 1, "a positive whole number of environments", 4096)
            elif key == "--max_iterations":
                out["max_iterations"] = _int(key, raw, 1, "a positive whole number of iterations", 100)
            else:
                out["seed"] = _int(key, raw, 0, "a non-negative whole number", 42)
        else:
            passthrough.extend(item)
    return Overrides(trainer_args=passthrough, **out)


_CURRENT = Overrides()


def set_current(value: Overrides) -> None:
    global _CURRENT
    _CURRENT = value


def current() -> Overrides:
    return _CURRENT
