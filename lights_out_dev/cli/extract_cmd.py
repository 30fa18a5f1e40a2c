"""The `extract_cmd` command (console script `lights-out extract-cmd`, or `python -m lights_out_dev.cli.extract_cmd`).

Print the exact command a doit task would run, without running anything.
"""
from __future__ import annotations

import sys

from doit.exceptions import InvalidDodoFile

from lights_out_dev.errors import LightsOutError
from lights_out_dev.views.extract_cmd import extract


def main(argv: list[str] | None = None) -> int:
    try:
        print(extract(sys.argv[1:] if argv is None else argv))
    except (LightsOutError, InvalidDodoFile) as e:
        print(f"extract_cmd: {e}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
