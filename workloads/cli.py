"""Command line of train.py and play.py: Isaac Lab 2.x flags plus Isaac Lab 3 `physics=` tokens.

Every mistake a user can make ends in one sentence on stderr naming the value and the fix, exit 2.
"""

from __future__ import annotations

import argparse
import re
import sys

from tasks import NEWTON_TASKS, PHYSICS, PHYSICS_ALIASES, TASKS

USAGE_EXIT = 2

# Flags Isaac Lab has but this reference trainer does not, with the fix to suggest.
UNSUPPORTED = {
    "--video": "record videos with workloads/play.py --video instead",
    "--video_length": "record videos with workloads/play.py --video --video_length N instead",
    "--video_interval": "record videos with workloads/play.py --video instead",
    "--enable_cameras": "this trainer renders nothing while training; remove it",
    "--export_io_descriptors": "remove it",
}


class UsageError(Exception):
    """One sentence for the user; the caller prints it and exits 2."""


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # argparse's own messages, turned into one sentence with a fix
        fix = "" if ";" in message else "; run with --help to see the accepted flags"
        raise UsageError(message + fix)


def fail(prog: str, err: UsageError) -> None:
    print(f"{prog}: error: {err}", file=sys.stderr, flush=True)
    raise SystemExit(USAGE_EXIT)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; pass a whole number >= 1") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}; pass a whole number >= 1")
    return value


def device_name(text: str) -> str:
    if not re.fullmatch(r"cpu|cuda(:\d+)?", text):
        raise argparse.ArgumentTypeError(f"invalid device {text!r}; pass cpu, cuda or cuda:N")
    return text


def common_parser(prog: str, description: str) -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description=description, allow_abbrev=False)
    p.add_argument("--task", default="Lo-Cartpole-v0", help=f"one of {', '.join(TASKS)}")
    p.add_argument("--num_envs", type=positive_int, default=None)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--device", type=device_name, default=None, help="cpu, cuda or cuda:N (default: cuda:0 if present)")
    p.add_argument("--headless", action="store_true", help="accepted for Isaac Lab compatibility (nothing is drawn)")
    p.add_argument("--experiment_name", default=None)
    p.add_argument("--load_run", default=None, help="run directory regex (default: newest)")
    p.add_argument("--checkpoint", default=None)
    p.add_argument("--rid", default=None, help="run id from the supervisor; accepted and ignored")
    p.add_argument("--rl_library", default="rsl_rl", choices=["rsl_rl"], help="Isaac Lab 3 style; only rsl_rl")
    return p


def parse(parser: argparse.ArgumentParser, argv: list[str]) -> argparse.Namespace:
    """Parse argv; `physics=...` tokens are Isaac Lab 3 style overrides, anything else unknown is an error."""
    args, unknown = parser.parse_known_args(argv)
    args.physics = "torch"
    args.hydra = []  # (dotted key, value) overrides of the env/agent configuration, in order
    for token in unknown:
        key, eq, value = token.partition("=")
        flag = token.split("=", 1)[0]
        if flag in UNSUPPORTED:
            raise UsageError(f"{flag} is not supported by {parser.prog}; {UNSUPPORTED[flag]}")
        if eq and key == "physics":
            value = PHYSICS_ALIASES.get(value, value)
            if value not in PHYSICS:
                raise UsageError(f"unknown physics {value!r}; use physics=torch or physics=newton")
            args.physics = value
        elif eq and key.split(".", 1)[0] in ("env", "agent") and "." in key:
            args.hydra.append((key, value))
        elif eq and not key.startswith("-"):
            raise UsageError(f"unsupported override {token!r}; use physics=torch|newton, env.<key>=VALUE or "
                             f"agent.<key>=VALUE")
        elif token.startswith("-"):
            raise UsageError(f"unknown flag {flag!r}; run with --help to see the accepted flags")
        else:
            raise UsageError(f"unexpected argument {token!r}; flags take the form --name value")
    if args.task not in TASKS:
        raise UsageError(f"unknown task {args.task!r}; use one of {', '.join(TASKS)}")
    if args.physics == "newton" and args.task not in NEWTON_TASKS:
        raise UsageError(f"physics=newton is only available for Lo-Cartpole-v0, not {args.task!r}; drop physics=newton")
    return args


def resolve_device(requested: str | None) -> str:
    import torch

    if requested is None:
        return "cuda:0" if torch.cuda.is_available() else "cpu"
    if requested.startswith("cuda"):
        index = int(requested.partition(":")[2] or 0)
        if not torch.cuda.is_available():
            raise UsageError(f"device {requested!r} requested but torch sees no CUDA device; pass --device cpu")
        if index >= torch.cuda.device_count():
            raise UsageError(
                f"device {requested!r} does not exist (torch sees {torch.cuda.device_count()} GPU(s)); pick a lower index"
            )
        return f"cuda:{index}"
    return requested


def apply_hydra(env_cfg: dict, agent_cfg: dict, overrides: list[tuple[str, str]]) -> None:
    """Isaac Lab's Hydra overrides `env.a.b=V` / `agent.algorithm.learning_rate=V` on the configuration dicts;
    V is read as YAML (numbers, booleans, lists). Only existing keys: a typo must not pass silently."""
    import yaml

    for key, text in overrides:
        root, _, path = key.partition(".")
        node = env_cfg if root == "env" else agent_cfg
        parts = path.split(".")
        for i, part in enumerate(parts):
            if not isinstance(node, dict) or part not in node:
                where = ".".join([root, *parts[:i]])
                known = ", ".join(sorted(node)) if isinstance(node, dict) else "none"
                raise UsageError(f"unknown configuration key {key!r}: {where} has no {part!r} (its keys: {known})")
            if i < len(parts) - 1:
                node = node[part]
        try:
            value = yaml.safe_load(text)
        except yaml.YAMLError:
            raise UsageError(f"cannot read the value of {key}={text!r}; write a number, true/false or a word") from None
        if isinstance(value, str):  # YAML 1.1 reads 1e-05 (no dot) as text; Hydra reads it as a number
            try:
                value = float(value)
            except ValueError:
                pass
        node[parts[-1]] = value
