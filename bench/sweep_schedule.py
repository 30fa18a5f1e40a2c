"""Slot idle time and makespan: this project's sweep scheduler vs running the runs by hand in
batches (one run per slot, a pause between batches).

    python bench/sweep_schedule.py [--quick] [--slots N] [--batch-sleep S] [--json PATH]

The same runs (real processes of mixed lengths that print rsl_rl-like lines; a few crash on
their first attempt and succeed when retried) are run twice:

- lights-out: `sweep.Sweep.schedule` (one supervisor thread per run, gpu_lock leases over
  N CPU slots, the next pending run starts the moment a slot frees up);
- batches: one run per slot; `sleep S` (S=10, as in a hand-run `pkill ... && sleep 10` clean-up)
  before each batch; a failed run is killed, `sleep S`, relaunched on its slot; the next batch
  starts when every run of this one has finished, after another `sleep S`.

Idle slot-time is integrated from the processes' own start/end times: `idle_pending` is slot
time with no process while work was still waiting (what scheduling wastes; a run's own
start-up counts as busy, so it is excluded), `idle_tail` is the unavoidable idle after the last
launch. Target: idle_pending < 2% of the makespan. Prints a markdown table and JSON.
This machine: 2 CPU cores, so N defaults to 2 slots (cfg.cpu_slots); on a GPU box use --slots.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (seconds, iterations, fail on the first attempt at this iteration or 0)
QUICK = [(4, 4, 0), (9, 6, 0), (3, 3, 2), (6, 4, 0), (12, 6, 0), (4, 4, 0), (7, 5, 3), (5, 5, 0)]
FULL = QUICK + [(15, 6, 0), (3, 3, 0), (10, 5, 2), (8, 4, 0), (6, 6, 0), (4, 4, 0), (11, 5, 0), (5, 5, 1)]


# --- the workload: a trainer stand-in ----------------------------------------------------------

def sleeper(argv: list[str]) -> int:
    """Print like rsl_rl for `--seconds` over `--max_iterations`; on attempt 1, die at `--fail_at`."""
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--max_iterations", type=int, default=3)
    ap.add_argument("--fail_at", type=int, default=0)
    ap.add_argument("--run_name", default="bench")
    args, _ = ap.parse_known_args(argv)
    first = os.environ.get("LIGHTS_OUT_ATTEMPT", "1") == "1"
    print(f"[INFO] Logging experiment in directory: {Path.cwd() / 'logs' / args.run_name}", flush=True)
    step = args.seconds / args.max_iterations
    for it in range(args.max_iterations):
        if first and args.fail_at and it + 1 == args.fail_at:
            print("worker died", flush=True)
            return 1
        time.sleep(step)
        print(f"Learning iteration {it}/{args.max_iterations}\n Steps per second: {1000 + it}\n"
              f" Mean reward: {it * 1.5:.2f}\n Mean episode length: {10 + it}.00", flush=True)
    print(f"Training time: {args.seconds:.2f} seconds", flush=True)
    return 0


def sleeper_argv(seconds: float, iters: int, fail_at: int, name: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--sleeper", "--seconds", str(seconds),
            "--max_iterations", str(iters), "--fail_at", str(fail_at), "--run_name", name]


# --- measuring -------------------------------------------------------------------------------

def idle(intervals: list[tuple[float, float]], slots: int, t0: float) -> dict:
    """Makespan and idle slot-time from process intervals (start, end). Pure."""
    end = max(e for _, e in intervals)
    last_start = max(s for s, _ in intervals)

    def busy_between(a: float, b: float) -> float:
        return sum(max(0.0, min(e, b) - max(s, a)) for s, e in intervals)

    makespan = end - t0
    pending = slots * (last_start - t0) - busy_between(t0, last_start)
    tail = slots * (end - last_start) - busy_between(last_start, end)
    return {"makespan_s": round(makespan, 2), "idle_pending_s": round(pending, 2), "idle_tail_s": round(tail, 2),
            "idle_pending_pct": round(100 * pending / makespan, 2), "launches": len(intervals)}


# --- lights-out scheduler ----------------------------------------------------------------------

def run_lights_out(runs, slots: int, work: Path) -> dict:
    from lights_out_dev.core.config import MonitorConfig, ProjectConfig
    from lights_out_dev.sweep.plan import LoadedPlan, expand, parse_plan
    from lights_out_dev.core.spec import RunSpec
    from lights_out_dev.sweep.scheduler import Sweep

    text = "name: bench\nruns:\n" + "".join(f"  - task: bench:run{i}\n" for i in range(len(runs)))
    plan, lines = parse_plan(text)
    loaded = LoadedPlan(plan=plan, path=work / "bench.yaml", runs=expand(plan, lines))
    cfg = ProjectConfig(logs_dir=str(work / "logs"), ledger=str(work / "sweep_log.md"), cpu_slots=slots,
                        monitor=MonitorConfig(time_limit=None, status_interval_s=3600))

    class BenchSweep(Sweep):
        def spec(self, run):
            seconds, iters, fail_at = runs[run.index - 1]
            argv = sleeper_argv(seconds, iters, fail_at, f"run{run.index}")
            return RunSpec(task=f"bench:run{run.index}", family="bench", launcher="lab", prefix=argv[:1],
                           script=argv[1], script_args=argv[2:3], trainer_task="Bench", max_iterations=iters,
                           extra_args=argv[3:], time_limit_s=None)

    sweep = BenchSweep(loaded, cfg, work, status_line=lambda _: None)
    sweep.prepare()
    t0 = time.time()
    ok = sweep.schedule([r.index for r in loaded.runs])
    states = sweep.states()
    intervals = [(a.started_at, a.ended_at) for s in states.values() for a in s.attempts]
    out = idle(intervals, slots, t0)
    out["all_completed"] = ok and all(s.status == "completed" for s in states.values())
    out["retries"] = sum(len(s.attempts) - 1 for s in states.values())
    return out


# --- batches by hand ----------------------------------------------------------------------------

def run_batches(runs, slots: int, work: Path, pause: float) -> dict:
    """Batches of one run per slot, `sleep pause` before/after, a failed run relaunched after a sleep."""
    t0 = time.time()
    intervals: list[tuple[float, float]] = []
    retries = 0
    for b in range(0, len(runs), slots):
        batch = list(enumerate(runs[b:b + slots], start=b + 1))
        time.sleep(pause)  # pkill -9 -f isaac && sleep 10: clean slate
        live = {}
        for i, (seconds, iters, fail_at) in batch:
            live[i] = (subprocess.Popen(sleeper_argv(seconds, iters, fail_at, f"batch{i}"), cwd=work,
                                        stdout=subprocess.DEVNULL, env={**os.environ, "LIGHTS_OUT_ATTEMPT": "1"}),
                       time.time(), 1)
        while live:
            for i, (proc, started, attempt) in list(live.items()):
                code = proc.poll()
                if code is None:
                    continue
                intervals.append((started, time.time()))
                del live[i]
                if code != 0:  # the monitor loop saw it die: kill by RID, sleep 10, retry on the same GPU
                    retries += 1
                    time.sleep(pause)
                    seconds, iters, fail_at = runs[i - 1]
                    live[i] = (subprocess.Popen(sleeper_argv(seconds, iters, fail_at, f"batch{i}"), cwd=work,
                                                stdout=subprocess.DEVNULL,
                                                env={**os.environ, "LIGHTS_OUT_ATTEMPT": str(attempt + 1)}),
                               time.time(), attempt + 1)
            time.sleep(0.05)
        time.sleep(pause)  # pkill -9 -f isaac && sleep 10: clean up after
    out = idle(intervals, slots, t0)
    out["makespan_s"] = round(time.time() - t0, 2)  # includes the final sleep, as a hand-run batch does
    out["all_completed"] = True
    out["retries"] = retries
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--sleeper"]:
        return sleeper(argv[1:])
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="8 runs (< 4 min on 2 CPU cores)")
    ap.add_argument("--slots", type=int, default=2)
    ap.add_argument("--batch-sleep", type=float, default=10.0, help="the pause between batches and before a relaunch (default 10)")
    ap.add_argument("--json", help="also write the JSON result here")
    args = ap.parse_args(argv)
    runs = QUICK if args.quick else FULL
    with tempfile.TemporaryDirectory(prefix="lo-bench-") as tmp:
        work = Path(tmp)
        ours = run_lights_out(runs, args.slots, work / "ours")
        (work / "batches").mkdir()
        batches = run_batches(runs, args.slots, work / "batches", args.batch_sleep)
    work_s = sum(s for s, _, _ in runs)
    result = {"slots": args.slots, "runs": len(runs), "run_seconds_total": work_s, "lights_out": ours,
              "batches": batches, "makespan_ratio": round(batches["makespan_s"] / ours["makespan_s"], 2),
              "target_met": ours["idle_pending_pct"] < 2.0}
    print("| scheduler | makespan (s) | idle while work pending (slot-s) | % of makespan | tail idle (slot-s) "
          "| launches | retries |")
    print("|---|---|---|---|---|---|---|")
    for name, r in (("lights-out", ours), ("batches by hand", batches)):
        print(f"| {name} | {r['makespan_s']} | {r['idle_pending_s']} | {r['idle_pending_pct']}% | {r['idle_tail_s']} "
              f"| {r['launches']} | {r['retries']} |")
    print(f"\nmakespan ratio (batches / lights-out): {result['makespan_ratio']}x; "
          f"target idle < 2% of makespan: {'met' if result['target_met'] else 'NOT met'}\n")
    print(json.dumps(result, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=2) + "\n")
    return 0 if ours["all_completed"] else 1


if __name__ == "__main__":
    sys.exit(main())
