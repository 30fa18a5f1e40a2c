"""How the task graph scales: `doit list --all` and `extract_cmd` with 10, 100 and 1000 variants.

    python bench/graph_scale.py [--sizes 10,100,1000] [--repeat 3]

Each size gets a temporary project (this repo's pyproject.toml + a dodo.py that builds N variants
with lights_out_dev.doit.launchers.lab, so 2N experiment tasks with the -mgpu twins). Times are the best of
--repeat wall-clock runs of a fresh process, Python start-up included. Target: < 1 s at 1000.
"""
from __future__ import annotations

import argparse
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DODO = '''\
from lights_out_dev.doit.preflight_tasks import *  # noqa: F401,F403
from lights_out_dev.doit.launchers import Experiment, lab

N = {n}


def task_bench():
    """Generated variants."""
    for i in range(N):
        yield from lab(Experiment(family="bench", name=f"v{{i:04d}}", trainer_task="Lo-Cartpole-v0",
                                  doc=f"generated variant {{i}}", num_envs=64 + i, max_iterations=10))
'''


def best_of(argv: list[str], cwd: Path, repeat: int) -> tuple[float, float]:
    """(best wall seconds, best CPU seconds of the child): CPU time is what a busy machine can't inflate."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("LIGHTS_OUT_ROOT", None)
    wall = cpu = float("inf")
    for _ in range(repeat):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        p = subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True)
        elapsed = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        if p.returncode != 0:
            raise SystemExit(f"{' '.join(argv)} failed in {cwd}:\n{p.stdout}{p.stderr}")
        wall = min(wall, elapsed)
        cpu = min(cpu, after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return wall, cpu


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="10,100,1000")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    rows = []
    for n in (int(x) for x in args.sizes.split(",")):
        with tempfile.TemporaryDirectory(prefix=f"graph_scale_{n}_") as tmp:
            proj = Path(tmp)
            shutil.copy2(REPO / "pyproject.toml", proj / "pyproject.toml")
            (proj / "dodo.py").write_text(DODO.format(n=n))
            listed = best_of([sys.executable, "-m", "doit", "list", "--all"], proj, args.repeat)
            extract = best_of([sys.executable, str(REPO / "lights_out_dev/views/extract_cmd.py"), f"bench:v{n // 2:04d}",
                               "--gpu", "0", "--num_envs", "128", "--", "--foo", "bar"], proj, args.repeat)
            rows.append((n, 2 * n, listed, extract))
    baseline, _ = best_of([sys.executable, "-c", "pass"], REPO, args.repeat)
    print("| variants | experiment tasks | doit list --all wall / CPU (s) | extract_cmd wall / CPU (s) |")
    print("|---:|---:|---:|---:|")
    for n, tasks, (lw, lc), (ew, ec) in rows:
        print(f"| {n} | {tasks} | {lw:.2f} / {lc:.2f} | {ew:.2f} / {ec:.2f} |")
    print(f"\nBest of {args.repeat}; Python start-up alone {baseline:.2f} s; {os.cpu_count()} CPU cores; "
          f"load average {os.getloadavg()[0]:.1f}.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
