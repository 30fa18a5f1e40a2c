"""The `status` command (console script `lights-out status`, or `python -m lights_out_dev.cli.status`).

One compact screen about the current sweep: `python lights_out_dev/status.py [--json] [--plan P]`.
"""
from __future__ import annotations

import argparse
import json
import sys

from lights_out_dev.core.config import (
    load_project_or_report,
)
from lights_out_dev.views.status import collect, render


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Compact status of the current sweep and running runs.")
    ap.add_argument("--json", action="store_true", help="machine-readable output")
    ap.add_argument("--plan", help="plan file or plan name (default: the last sweep started)")
    args = ap.parse_args(argv)
    project = load_project_or_report(file=sys.stderr)
    if project is None:
        return 3
    root, cfg = project
    data = collect(root, cfg, args.plan)
    print(json.dumps(data, indent=2, default=str) if args.json else render(data))
    return 0


if __name__ == "__main__":
    sys.exit(main())
