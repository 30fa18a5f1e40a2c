"""The `gpu_check` command (console script `lights-out gpu-check`, or `python -m lights_out_dev.cli.gpu_check`).

GPU status at a glance, multi-GPU imbalance detection and the power policy check (script).
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys

from lights_out_dev.core.config import (
    ConfigError,
    load_config,
    project_root,
)
from lights_out_dev.host import nvml
from lights_out_dev.host.gpu_check import (
    EXIT_CHECK_FAILED,
    EXIT_NO_DRIVER,
    EXIT_USAGE,
    format_gpu,
    imbalance,
    power_findings,
)


def _gpu_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"--gpus {text!r} is not a list of GPU indices; write e.g. --gpus 0,1") from None


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="gpu_check.py", description=__doc__.split("\n")[0])
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--exit-on-imbalance", action="store_true", help="exit 1 when GPUs in use are out of balance")
    p.add_argument("--power-policy", action="store_true", help="compare power limit / SM clock with the config")
    p.add_argument("--gpus", type=_gpu_list, help="only these GPU indices, e.g. 0,1")
    args = p.parse_args(argv)
    try:
        cfg = load_config(project_root())
    except ConfigError as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return EXIT_USAGE
    try:
        gpus = nvml.query_gpus()
    except nvml.NvmlUnavailable as e:
        print(f"gpu_check: {e}", file=sys.stderr)
        return EXIT_NO_DRIVER
    if args.gpus is not None:
        unknown = sorted(set(args.gpus) - {g.index for g in gpus})
        if unknown:
            print(f"gpu_check: GPU {unknown[0]} does not exist; this machine has GPUs 0-{len(gpus) - 1}",
                  file=sys.stderr)
            return EXIT_USAGE
        gpus = [g for g in gpus if g.index in args.gpus]

    verdict = imbalance(gpus, cfg.monitor.imbalance_util_pct, cfg.monitor.imbalance_mem_pct)
    power = power_findings(gpus, cfg.power) if args.power_policy else []
    if args.json:
        doc = {"gpus": [dataclasses.asdict(g) for g in gpus], "imbalance": verdict}
        if args.power_policy:
            doc["power_policy"] = [{"ok": ok, "detail": line} for ok, line in power]
        print(json.dumps(doc, indent=2))
    else:
        for g in gpus:
            print("\n".join(format_gpu(g)))
        if verdict:
            print(verdict)
        for _ok, line in power:
            print(line)
    if args.exit_on_imbalance and verdict:
        return EXIT_CHECK_FAILED
    if args.power_policy and not all(ok for ok, _ in power):
        return EXIT_CHECK_FAILED
    return 0


if __name__ == "__main__":
    sys.exit(main())
