"""The `preflight` command (console script `lights-out preflight`, or `python -m lights_out_dev.cli.preflight`).

Runs one pre-flight check (gpu_guard, power_check, runtime_check; lights_out_dev.host.preflight says what
each checks and its exit codes) before experiments: the doit tasks of lights_out_dev/doit/preflight_tasks.py
and the Slurm job steps call it.
"""
from __future__ import annotations

import sys

from lights_out_dev.errors import LightsOutError
from lights_out_dev.host.preflight import CHECKS, allreduce_worker, run


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if args == ["_allreduce"]:
        allreduce_worker()
    if len(args) != 1 or args[0] not in CHECKS:
        print(f"usage: python -m lights_out_dev.cli.preflight {'|'.join(CHECKS)}", file=sys.stderr)
        return 2
    try:
        return run(args[0])
    except LightsOutError as e:
        print(e, file=sys.stderr)
        return 3


if __name__ == "__main__":
    sys.exit(main())
