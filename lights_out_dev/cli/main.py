"""`lights-out`: the project's one console script (pyproject [project.scripts]).

    lights-out mcp [--read-only]   the MCP server for coding agents, on stdio
    lights-out status [...]        one screen: runs, GPUs, progress    (= python -m lights_out_dev.cli.status)
    lights-out watch [...]         block until an event needs a decision
    lights-out read-logs [...]     TensorBoard scalars and trainer logs
    lights-out gpu-check [...]     GPUs, their processes, imbalance, power policy
    lights-out extract-cmd [...]   the exact command a doit task would run
    lights-out preflight CHECK     gpu_guard / power_check / runtime_check

Exit codes follow the project's one table (README "Exit codes"): 0 ok, 2 usage error, 3 a
configuration error (nothing started), and each command's own.
"""
from __future__ import annotations

import argparse
import importlib
import sys

# subcommand -> (module under lights_out_dev.cli, help); each module's main(argv) parses its own flags
COMMANDS = {
    "status": ("status", "one screen about the current sweep"),
    "watch": ("watch", "block until an event needs a decision"),
    "read-logs": ("read_logs", "TensorBoard scalars and trainer logs of the runs"),
    "gpu-check": ("gpu_check", "GPUs, their processes, imbalance and power policy"),
    "extract-cmd": ("extract_cmd", "the exact command a doit task would run"),
    "preflight": ("preflight", "a pre-flight check (gpu_guard, power_check, runtime_check)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="lights-out", description="lights-out: unattended GPU RL experiments.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mcp", help="serve the agent tools over MCP (stdio)")
    m.add_argument("--read-only", action="store_true", help="only the tools that change nothing")
    for name, (_, help_) in COMMANDS.items():
        sub.add_parser(name, help=help_, add_help=False)
    if argv[:1] and argv[0] in COMMANDS:
        module = importlib.import_module(f"lights_out_dev.cli.{COMMANDS[argv[0]][0]}")
        return module.main(argv[1:])
    args = ap.parse_args(argv)
    from lights_out_dev.agent.mcp_server import serve

    return serve(read_only=args.read_only)


if __name__ == "__main__":
    sys.exit(main())
