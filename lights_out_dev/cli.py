"""`lights-out`: the project's console script (pyproject [project.scripts]).

    lights-out mcp [--read-only]     the MCP server for coding agents, on stdio (mcp_server.py)
    lights-out status [...]          = python lights_out_dev/status.py [...]
    lights-out watch [...]           = python lights_out_dev/watch.py [...]

Exit codes follow the project's one table (README "Exit codes"): 0 ok, 2 usage error, 3 a
configuration error (nothing started), and watch's event codes.
"""
from __future__ import annotations

import argparse
import sys


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    ap = argparse.ArgumentParser(prog="lights-out", description="lights-out: unattended GPU RL experiments.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("mcp", help="serve the agent tools over MCP (stdio)")
    m.add_argument("--read-only", action="store_true", help="only the tools that change nothing")
    sub.add_parser("status", help="one screen about the current sweep (status.py)", add_help=False)
    sub.add_parser("watch", help="block until an event needs a decision (watch.py)", add_help=False)
    if argv[:1] in (["status"], ["watch"]):
        from lights_out_dev import status, watch

        return (status if argv[0] == "status" else watch).main(argv[1:])
    args = ap.parse_args(argv)
    from lights_out_dev.mcp_server import serve

    return serve(read_only=args.read_only)


if __name__ == "__main__":
    sys.exit(main())
