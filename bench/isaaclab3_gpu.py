"""Real Isaac Lab 3.0 under lights-out on one GPU: what only a GPU shows, in one device call.

    python bench/isaaclab3_gpu.py --out DIR [--steps pinned,oom,time_limit,crash_stall,sweep,throughput]

Runs the real tools (doit tasks and sweeps of the `isaac_cartpole` family, whose `isaaclab3_local`
profile launches `python -m isaaclab train --rl_library rsl_rl`) as subprocesses in the repository,
sends real faults to the real trainer process, and reads the run-state JSON they leave. Where Isaac Lab
is installed as plain packages (the GPU machine: wheels under --site, assets under --assets), an
overlay config points the profile at that Python. Writes DIR/isaaclab3_gpu.json and
DIR/isaaclab3_gpu_logs.tar.gz. Nothing here changes GPU settings.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOGS = ROOT / "local_experiment_logs"
PY = sys.executable
TASK = "isaac_cartpole:base"


def env_with(overlay: Path | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    if overlay:
        env["LIGHTS_OUT_CONFIG"] = str(overlay)
    return env


def doit(args: list[str], overlay: Path | None, timeout: float) -> dict:
    t0 = time.monotonic()
    try:
        p = subprocess.run([PY, "-m", "doit", *args], cwd=ROOT, env=env_with(overlay), capture_output=True,
                           text=True, timeout=timeout, start_new_session=True)
        rc, text = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", (e.stdout or "") if isinstance(e.stdout, str) else ""
    return {"argv": args, "rc": rc, "wall_s": round(time.monotonic() - t0, 1), "tail": text[-2500:]}


def state(task: str = TASK) -> dict | None:
    p = LOGS / "runs" / (task.replace(":", "__") + ".json")
    try:
        return json.loads(p.read_text())
    except (OSError, ValueError):
        return None


def forget(task: str = TASK) -> None:
    """Each step starts its own run: the previous one's state and target are archived away."""
    for sub, suffix in (("runs", ".json"), ("targets", ".json")):
        p = LOGS / sub / (task.replace(":", "__") + suffix)
        if p.exists():
            p.rename(p.with_name(p.name + f".{time.time_ns()}.done"))


def wait_for(condition, timeout: float) -> dict | None:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        st = state()
        if st and condition(st):
            return st
        time.sleep(0.3)
    return None


def at_iteration(n: int, attempt: int = 1):
    def ok(st: dict) -> bool:
        return len(st["attempts"]) == attempt and (st["attempts"][-1].get("progress", {}).get("iteration") or 0) >= n
    return ok


def summary(st: dict | None) -> dict:
    if not st:
        return {}
    keep = ("number", "verdict", "reason", "exit_code", "signal", "cleanup_s", "survivors", "peak_vram_mb",
            "gpus", "progress", "argv")
    return {"status": st.get("status"), "reason": st.get("reason"), "final": st.get("final"),
            "checkpoints": [Path(c).name for c in st.get("checkpoints", [])][-4:],
            "attempts": [{k: a.get(k) for k in keep} for a in st.get("attempts", [])]}


def nvml_processes() -> list[dict]:
    from lights_out_dev.host import nvml
    return [{"gpu": g.index, "pid": p.pid, "used_mb": p.used_mb} for g in nvml.query_gpus() for p in g.processes]


def step_pinned(ov: Path) -> dict:
    """A pinned run: env and policy on the run's GPU (NVML per-process memory of the trainer)."""
    forget()
    proc = subprocess.Popen([PY, "-m", "doit", TASK, "--num_envs", "4096", "--max_iterations", "60", "--gpu", "0"],
                            cwd=ROOT, env=env_with(ov), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    st = wait_for(at_iteration(20), 240)
    seen = nvml_processes() if st else []
    text, _ = proc.communicate(timeout=300)
    st = state()
    pid = st["attempts"][0]["pid"] if st else None
    return {"rc": proc.returncode, "tail": text[-1500:], "nvml_during_run": seen,
            "trainer_on_gpu0_mb": sum(p["used_mb"] or 0 for p in seen if p["pid"] == pid and p["gpu"] == 0),
            "state": summary(st)}


def step_oom(ov: Path) -> dict:
    """A real out-of-memory: far more envs than the GPU holds, answered by the policy (halve envs)."""
    forget()
    r = doit([TASK, "--num_envs", "100000000", "--max_iterations", "5"], ov, 200)
    return {**r, "state": summary(state())}


def step_time_limit(ov: Path) -> dict:
    """A time limit on a trainer that saves nothing when stopped: iterations lost at the stop, with the
    checkpoint-aligned stop (the isaaclab3 profile) and with a plain stop at the limit (the same profile
    told it saves on SIGINT, which Isaac Lab 3 does not), in one run."""
    naive = ov.with_name("overlay_naive.toml")
    naive.write_text(ov.read_text().replace("[trainers.isaaclab3_local]",
                                            "[trainers.isaaclab3_local]\nsaves_on_interrupt = true", 1))
    out: dict = {}
    for name, overlay in (("aligned", ov), ("plain_stop", naive)):
        forget()
        r = doit([TASK, "--num_envs", "4096", "--max_iterations", "100000", "agent.save_interval=50",
                  "--time_limit", "60s"], overlay, 200)
        st = state()
        row = {"rc": r["rc"], "wall_s": r["wall_s"], "state": summary(st)}
        if st and st.get("checkpoints"):
            kept = max(int(Path(c).stem.split("_")[1]) for c in st["checkpoints"])
            row.update(iterations_trained=st["final"]["iteration"], last_checkpoint_iteration=kept,
                       iterations_lost=st["final"]["iteration"] - (kept + 1))
        out[name] = row
    return out


def step_crash_stall(ov: Path) -> dict:
    """SIGKILL, then SIGSTOP (a stall), each retried from the run's own checkpoint to the requested end."""
    forget()
    overlay = ov.read_text().replace("[monitor]\n", "[monitor]\nstall_s = 15\n", 1)
    ov2 = ov.with_name("overlay_stall.toml")
    ov2.write_text(overlay)
    proc = subprocess.Popen([PY, "-m", "doit", TASK, "--num_envs", "4096", "--max_iterations", "120",
                             "agent.save_interval=10"], cwd=ROOT, env=env_with(ov2), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    st = wait_for(at_iteration(25), 150)
    if st:
        os.kill(st["attempts"][-1]["pid"], signal.SIGKILL)
    st = wait_for(at_iteration(10, attempt=2), 150)
    if st:
        os.kill(st["attempts"][-1]["pid"], signal.SIGSTOP)
    text, _ = proc.communicate(timeout=400)
    return {"rc": proc.returncode, "tail": text[-1500:], "state": summary(state())}


def step_sweep(ov: Path) -> dict:
    """A 4-run sweep (2 env counts x 2 seeds) on one GPU, one run at a time, with its report."""
    plan = ROOT / "sweeps" / "isaac_gpu.yaml"
    plan.write_text("name: isaac_gpu\nmode: parallel\ntime_limit: 4m\nruns:\n"
                    "  - task: isaac_cartpole:base\n    overrides: {max_iterations: 40, trainer_args: "
                    "['agent.save_interval=10']}\n    grid: {num_envs: [2048, 4096], seed: [1, 2]}\n")
    t0 = time.monotonic()
    r = doit(["sweep", "--plan", str(plan), "--wipe"], ov, 560)
    report = LOGS / "sweeps" / "isaac_gpu" / "report.md"
    return {**r, "makespan_s": round(time.monotonic() - t0, 1),
            "report": report.read_text()[:4000] if report.exists() else None}


def step_throughput(ov: Path) -> dict:
    """Steps/s of real Isaac Lab vs the reference trainer at the same env counts, under lights-out."""
    rows = []
    for task in (TASK, "cartpole:base"):
        for envs in (4096, 65536):
            forget(task)
            r = doit([task, "--num_envs", str(envs), "--max_iterations", "40"], ov, 300)
            st = state(task)
            rows.append({"task": task, "num_envs": envs, "rc": r["rc"], "wall_s": r["wall_s"],
                         "steps_per_s": (st or {}).get("final", {}).get("steps_per_s"),
                         "peak_vram_mb": (st or {}).get("peak_vram_mb")})
    return {"rows": rows}


STEPS = {"pinned": step_pinned, "throughput": step_throughput, "time_limit": step_time_limit,
         "crash_stall": step_crash_stall, "oom": step_oom, "sweep": step_sweep}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--steps", default=",".join(STEPS))
    ap.add_argument("--site", default=None, help="where Isaac Lab's wheels are installed (PYTHONPATH)")
    ap.add_argument("--assets", default=None, help="offline asset root (ISAACSIM_ASSET_ROOT)")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    overlay = args.out / "overlay.toml"
    lines = ["[trainers.isaaclab3_local]", f'prefix = ["{PY}"]']
    if args.assets:
        lines.append(f'env = {{ ISAACSIM_ASSET_ROOT = "{args.assets}" }}')
    overlay.write_text("\n".join(lines) + "\n[monitor]\nstatus_interval_s = 10\n")
    from lights_out_dev.host import nvml
    results: dict = {"date": time.strftime("%Y-%m-%d"), "gpus": [
        {"index": g.index, "name": g.name, "memory_mb": g.mem_total_mb} for g in nvml.query_gpus()]}
    for name in args.steps.split(","):
        t0 = time.monotonic()
        try:
            results[name] = STEPS[name](overlay)
        except Exception as e:  # a broken step is recorded, the others still run
            results[name] = {"error": f"{type(e).__name__}: {e}"}
        results[name]["step_wall_s"] = round(time.monotonic() - t0, 1)
        (args.out / "isaaclab3_gpu.json").write_text(json.dumps(results, indent=1, default=str))
        print(f"{name}: {time.monotonic() - t0:.0f}s", flush=True)
    with tarfile.open(args.out / "isaaclab3_gpu_logs.tar.gz", "w:gz") as tar:
        for p in LOGS.rglob("*"):
            if p.is_file() and (p.suffix in (".json", ".md", ".log") or p.name.endswith(".done")):
                tar.add(p, arcname=str(p.relative_to(ROOT)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
