"""Throughput and memory of the reference trainer (rsl_rl PPO on the batched torch cart-pole).

For each --sizes entry, one subprocess trains a few iterations with the real runner and logger; steps/s
excludes the first iteration (warm-up). Then, unless --no-oom-search, the largest num_envs that still
trains one iteration is found by doubling and then bisecting, each probe in its own subprocess, until a
real torch.OutOfMemoryError. Prints a markdown table and writes JSON to --out.

    python bench/trainer_throughput.py --out bench/results/trainer_throughput_h100.json
    python bench/trainer_throughput.py --sizes 64,256 --no-oom-search --device cpu --out /tmp/t.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RESULT, OOM = "BENCH_RESULT ", "BENCH_OOM"


def probe(task: str, num_envs: int, iterations: int, device: str) -> None:
    """Child process: train `iterations` iterations and print one BENCH_RESULT json line (or BENCH_OOM)."""
    sys.path.insert(0, os.path.join(ROOT, "workloads"))
    import torch
    from rsl_rl.runners import OnPolicyRunner

    import tasks

    if device == "cpu":
        torch.set_num_threads(1)  # as train.py does on CPU
    env_cfg, agent_cfg = tasks.task_config(task)
    agent_cfg["device"] = device
    agent_cfg["save_interval"] = 10**9  # only the final save, outside the timed iterations
    times: list[float] = []
    try:
        env = tasks.make_env(env_cfg, num_envs, device, 0)
        with tempfile.TemporaryDirectory() as log_dir:
            runner = OnPolicyRunner(env, agent_cfg, log_dir=log_dir, device=device)
            log = runner.logger.log

            def timed_log(**kw):  # rsl_rl measures collection + learning time itself
                times.append(kw["collect_time"] + kw["learn_time"])
                return log(**kw)

            runner.logger.log = timed_log
            with open(os.devnull, "w") as quiet:
                stdout, sys.stdout = sys.stdout, quiet
                try:
                    runner.learn(num_learning_iterations=iterations, init_at_random_ep_len=True)
                finally:
                    sys.stdout = stdout
    except torch.OutOfMemoryError as e:
        print(OOM, str(e).splitlines()[0], flush=True)
        sys.exit(3)
    steady = times[1:] or times
    steps = num_envs * agent_cfg["num_steps_per_env"]
    result = {
        "num_envs": num_envs,
        "iterations_timed": len(steady),
        "steps_per_s": steps * len(steady) / sum(steady),
        "iteration_s": sum(steady) / len(steady),
    }
    if device.startswith("cuda"):
        result["torch_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
        result["nvml_process_mb"] = nvml_process_mb(torch.device(device).index or 0)
    print(RESULT + json.dumps(result), flush=True)


def nvml_process_mb(index: int) -> float | None:
    """GPU memory NVML charges to this process (includes the CUDA context and allocator cache)."""
    try:
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(index)
        for proc in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if proc.pid == os.getpid() and proc.usedGpuMemory is not None:
                return proc.usedGpuMemory / 2**20
        return None
    except Exception:  # no driver / no permission: the torch figure still stands
        return None


def run_probe(args, num_envs: int, iterations: int) -> tuple[str, dict | None, str]:
    """('ok'|'oom'|'timeout'|'error', result, last output line) of one probe subprocess."""
    cmd = [sys.executable, os.path.abspath(__file__), "--probe", str(num_envs), "--iterations", str(iterations),
           "--device", args.device, "--task", args.task]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.timeout, cwd=ROOT)
    except subprocess.TimeoutExpired:
        return "timeout", None, f"no result within {args.timeout}s"
    out = proc.stdout + proc.stderr
    for line in out.splitlines():
        if line.startswith(RESULT):
            return "ok", json.loads(line[len(RESULT):]), ""
    last = out.strip().splitlines()[-1] if out.strip() else f"exit {proc.returncode}"
    if OOM in out or "OutOfMemoryError" in out or "out of memory" in out:
        return "oom", None, last
    return "error", None, last


def oom_search(args, start: int) -> dict:
    """Double from `start` until a probe runs out of memory, then bisect to within --oom-resolution."""
    deadline = time.monotonic() + args.oom_budget_s
    ok, bad, probes = start, None, []
    while bad is None:
        n = ok * 2
        if time.monotonic() > deadline:
            break
        status, _, msg = run_probe(args, n, 1)
        probes.append({"num_envs": n, "status": status, "detail": msg})
        print(f"  oom search: {n} envs -> {status}", flush=True)
        if status == "ok":
            ok = n
        elif status == "oom":
            bad = n
        else:
            break  # a timeout or other failure says nothing about memory; stop here
    while bad is not None and (bad - ok) / ok > args.oom_resolution and time.monotonic() < deadline:
        n = (ok + bad) // 2
        status, _, msg = run_probe(args, n, 1)
        probes.append({"num_envs": n, "status": status, "detail": msg})
        print(f"  oom search: {n} envs -> {status}", flush=True)
        if status == "ok":
            ok = n
        elif status == "oom":
            bad = n
        else:
            break
    return {"largest_ok": ok, "smallest_oom": bad, "complete": bad is not None and (bad - ok) / ok <= args.oom_resolution,
            "probes": probes}


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", default="4096,16384,65536,262144")
    p.add_argument("--iterations", type=int, default=6, help="per size; the first is excluded")
    p.add_argument("--device", default="cuda:0")
    p.add_argument("--task", default="Lo-Cartpole-v0")
    p.add_argument("--timeout", type=float, default=150, help="seconds per probe subprocess")
    p.add_argument("--no-oom-search", action="store_true")
    p.add_argument("--oom-budget-s", type=float, default=200, help="wall-time budget of the OOM search")
    p.add_argument("--oom-resolution", type=float, default=0.1, help="stop bisecting at this relative gap")
    p.add_argument("--out", default=None, help="JSON results path")
    p.add_argument("--probe", type=int, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.probe is not None:
        probe(args.task, args.probe, args.iterations, args.device)
        return 0

    sizes = [int(s) for s in args.sizes.split(",")]
    rows = []
    for n in sizes:
        status, result, msg = run_probe(args, n, args.iterations)
        rows.append({"num_envs": n, "status": status, **(result or {}), **({"detail": msg} if msg else {})})
        print(f"  {n} envs -> {status} {msg}", flush=True)
    report = {"device": args.device, "device_name": device_name(args.device), "task": args.task, "sizes": rows}
    fitting = [r["num_envs"] for r in rows if r["status"] == "ok"]
    if not args.no_oom_search and fitting:
        report["oom_search"] = oom_search(args, max(fitting))

    print(f"\nReference trainer throughput ({args.task}, {report['device_name']})\n")
    print("| num_envs | status | steps/s | iteration s | torch peak MB | NVML process MB |")
    print("|---:|---|---:|---:|---:|---:|")
    for r in rows:
        def f(key, fmt):
            return format(r[key], fmt) if r.get(key) is not None else "-"
        print(f"| {r['num_envs']} | {r['status']} | {f('steps_per_s', ',.0f')} | {f('iteration_s', '.3f')} | "
              f"{f('torch_max_allocated_mb', ',.0f')} | {f('nvml_process_mb', ',.0f')} |")
    if "oom_search" in report:
        s = report["oom_search"]
        bound = f"< {s['smallest_oom']}" if s["smallest_oom"] else "(no OOM reached within the budget)"
        print(f"\nLargest num_envs that trains: {s['largest_ok']} {bound}")
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
        print(f"\nwrote {args.out}")
    return 0 if fitting else 1


def device_name(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    try:
        import torch

        return torch.cuda.get_device_name(torch.device(device))
    except Exception:
        return device


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
