"""The same search run by Ray Tune (ASHA, FailureConfig(max_failures=3), checkpoint restore) and by lights-out.

    python bench/vs_ray_tune.py [--configs 2] [--iterations 24] [--rung 8] [--slow 0.25] [--json PATH]

Both get the reference trainer (real rsl_rl PPO on the CPU), the same configurations (a random search
over num_envs and the Hydra key agent.algorithm.learning_rate, sampled once by lights-out's search.py),
the same 3 seeds per configuration, ASHA at the same rung with the same reduction factor, and the same
fault: one extra run with configuration 0, seed 1, that crashes (SIGKILL) at iteration --crash on its
first attempt. Ray Tune runs it as a function trainable that starts the trainer as a subprocess, reports
every iteration it finds in the TensorBoard file and a checkpoint whenever the trainer saved one, and
restores from that checkpoint after a failure; lights-out runs it as a plan (`doit sweep`).

Columns, from the processes' own start/end times and the TensorBoard files' wall times:
- makespan: from the launch of the tool (`ray.init` + `Tuner.fit`; the `doit sweep` process) to its end
  (startup_s: until the first trainer attempt started; after_last_s: after the last one ended);
- idle share: slot time (2 CPU slots) not held by a trial/run attempt over the makespan;
- slot-s to target: slot time spent until the first run logged Train/mean_reward >= --target;
- work lost: iterations trained twice (an attempt retraining what an earlier one had done);
- pruned: runs stopped early; leaked: trainer processes still alive after the tool returned.
Prints a markdown table and JSON. Needs `pip install 'ray[tune]'` (not a project dependency).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from project_copy import copy_project  # noqa: E402  (bench/project_copy.py)

from lights_out_dev.host import procs  # noqa: E402
from lights_out_dev.sweep.search import Search, fixed_configurations, value_text  # noqa: E402
from lights_out_dev.core.tb import read_scalars  # noqa: E402

REWARD = "Train/mean_reward"
SLOTS = 2
SEEDS = (1, 2, 3)
LR = "agent.algorithm.learning_rate"
SPACE = {"num_envs": {"choice": [16, 32]}, LR: {"log_uniform": [1.0e-4, 3.0e-3]}}


def configurations(n: int) -> list[dict]:
    return fixed_configurations(Search(method="random", samples=n, seed=5, space=SPACE))


def trainer_argv(cfg: dict, seed: int, iterations: int, inject: str | None, run_name: str) -> list[str]:
    argv = [sys.executable, str(ROOT / "workloads/train.py"), "--task", "Lo-Cartpole-v0", "--num_envs",
            str(cfg["num_envs"]), "--max_iterations", str(iterations), "--seed", str(seed), "--headless",
            "--device", "cpu", "--experiment_name", "vsray", "--run_name", run_name, f"{LR}={value_text(cfg[LR])}"]
    return argv + (["--inject", inject] if inject else [])


# --- shared measures ---------------------------------------------------------------------------

def busy_until(intervals: list[tuple[float, float]], t: float) -> float:
    return sum(max(0.0, min(e, t) - s) for s, e in intervals if s < t)


def first_at_target(tb_dirs: list[str], target: float) -> float | None:
    hits = [w for d in tb_dirs if Path(d).exists() for _, w, v in read_scalars(d).get(REWARD, []) if v >= target]
    return min(hits) if hits else None


def lost_iterations(attempt_dirs: list[list[str]]) -> int:
    """Per run: iterations logged by its attempts minus distinct iterations."""
    lost = 0
    for dirs in attempt_dirs:
        steps = [s for d in dirs if Path(d).exists() for s, _, _ in read_scalars(d).get(REWARD, [])]
        lost += len(steps) - len(set(steps))
    return lost


def summary(name, t0, t1, intervals, run_dirs, target, pruned, leaked, runs) -> dict:
    makespan = t1 - t0
    busy = sum(e - s for s, e in intervals)
    hit = first_at_target([d for dirs in run_dirs for d in dirs], target)
    return {"tool": name, "runs": runs, "makespan_s": round(makespan, 1),
            "idle_share": round(max(0.0, SLOTS * makespan - busy) / (SLOTS * makespan), 3),
            "busy_slot_s": round(busy, 1),
            "slot_s_to_target": None if hit is None else round(busy_until(intervals, hit), 1),
            "lost_iterations": lost_iterations(run_dirs), "pruned": pruned, "leaked": leaked,
            "startup_s": round(min(s for s, _ in intervals) - t0, 1), "after_last_s": round(t1 - max(e for _, e in intervals), 1)}


# --- lights-out ----------------------------------------------------------------------------------

def run_lights_out(args, cfgs: list[dict], work: Path) -> dict:
    repo = copy_project(work / "lights-out")
    # the same random search (seed 5, same space) samples the same configurations as configurations()
    plan = f"""\
name: vsray
mode: parallel
time_limit: 10m
runs:
  - task: cartpole:base
    overrides: {{max_iterations: {args.iterations}, seed: 1, trainer_args: [--inject, "slow={args.slow}"]}}
    search:
      method: random
      samples: {len(cfgs)}
      seed: 5
      repeats: {len(SEEDS)}
      space: {json.dumps(SPACE)}
      prune: {{rule: asha, rungs: [{args.rung}], reduction_factor: 3, min_runs: 3}}
  - task: cartpole:base
    overrides: {{num_envs: {cfgs[0]['num_envs']}, max_iterations: {args.iterations}, seed: 1,
                trainer_args: ["{LR}={value_text(cfgs[0][LR])}", --inject, "crash@{args.crash}"]}}
"""
    (repo / "sweeps/vsray.yaml").write_text(plan)
    env = {**os.environ, "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1"}
    t0 = time.time()
    done = subprocess.run([sys.executable, "-m", "doit", "sweep", "--plan", "sweeps/vsray.yaml"], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=1800)
    t1 = time.time()
    if done.returncode != 0:
        raise SystemExit(f"lights-out sweep failed:\n{done.stdout[-3000:]}{done.stderr[-3000:]}")
    intervals, run_dirs, pruned, leaked, pids = [], [], 0, 0, []
    for f in sorted((repo / "local_experiment_logs/sweeps/vsray/runs").glob("[0-9][0-9].json")):
        st = json.loads(f.read_text())
        pruned += st["status"] == "pruned"
        run_dirs.append([a["tb_dir"] for a in st["attempts"] if a.get("tb_dir")])
        for a in st["attempts"]:
            intervals.append((a["started_at"], a["ended_at"]))
            pids.append(a["pid"])
    leaked = sum(1 for p in pids if procs.alive(p))
    return summary("lights-out", t0, t1, intervals, run_dirs, args.target, pruned, leaked, len(run_dirs))


# --- Ray Tune ------------------------------------------------------------------------------------

def ray_trainable(config: dict) -> None:
    """A function trainable around the trainer subprocess: reports each logged iteration, saves a Tune
    checkpoint naming the newest model_<it>.pt, restores from it after a failure."""
    import glob

    from ray import tune

    work = Path(config["work"])
    trial = tune.get_context().get_trial_name()
    attempts = work / "attempts" / trial
    attempts.mkdir(parents=True, exist_ok=True)
    n = len(list(attempts.iterdir())) + 1
    record = attempts / f"{n}.json"
    rec = {"start": time.time(), "end": None, "pid": None, "tb_dir": None}
    record.write_text(json.dumps(rec))
    run_name = f"{trial}_a{n}"
    argv = trainer_argv(config["cfg"], config["seed"], config["iterations"], config["inject"], run_name)
    ckpt = tune.get_checkpoint()
    if ckpt is not None:
        with ckpt.as_directory() as d:
            model = json.loads((Path(d) / "model.json").read_text())["model"]
        done = int(Path(model).stem.split("_")[1])
        argv[argv.index("--max_iterations") + 1] = str(max(1, config["iterations"] - done))
        argv += ["--resume", "--load_run", Path(model).parent.name, "--checkpoint", model]
    env = {**os.environ, "LIGHTS_OUT_ATTEMPT": str(n)}  # the injection fires on the first attempt only
    log = open(work / f"{run_name}.log", "w")
    p = subprocess.Popen(argv, cwd=work, env=env, stdout=log, stderr=subprocess.STDOUT)
    rec["pid"] = p.pid
    record.write_text(json.dumps(rec))
    seen, saved = -1, None
    try:
        while True:
            ended = p.poll() is not None
            dirs = glob.glob(str(work / "logs/rsl_rl/vsray" / f"*_{run_name}"))
            if dirs:
                rec["tb_dir"] = dirs[0]
                points = read_scalars(dirs[0]).get(REWARD, [])
                models = sorted(glob.glob(os.path.join(dirs[0], "model_*.pt")),
                                key=lambda m: int(Path(m).stem.split("_")[1]))
                for step, _, value in points:
                    if step <= seen:
                        continue
                    seen = step
                    checkpoint = None
                    if models and models[-1] != saved:
                        saved = models[-1]
                        cdir = Path(tempfile.mkdtemp(dir=work))
                        (cdir / "model.json").write_text(json.dumps({"model": saved}))
                        checkpoint = tune.Checkpoint.from_directory(str(cdir))
                    rec["end"] = time.time()
                    record.write_text(json.dumps(rec))
                    tune.report({"reward": value, "iteration": step + 1}, checkpoint=checkpoint)
            if ended:
                break
            time.sleep(0.3)
        if p.returncode != 0:
            raise RuntimeError(f"trainer exited with {p.returncode}")
    finally:
        rec["end"] = time.time()
        record.write_text(json.dumps(rec))
        if p.poll() is None:
            p.kill()
            p.wait()


def run_ray(args, cfgs: list[dict], work: Path) -> dict:
    import ray
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler

    work = work / "ray"
    work.mkdir(parents=True)
    trials = [{"cfg": c, "seed": s, "inject": f"slow={args.slow}"} for c in cfgs for s in SEEDS]
    trials.append({"cfg": cfgs[0], "seed": 1, "inject": f"crash@{args.crash}"})
    for t in trials:
        t.update(work=str(work), iterations=args.iterations)
    t0 = time.time()
    ray.init(num_cpus=SLOTS, include_dashboard=False, log_to_driver=False, configure_logging=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(ray_trainable, {"cpu": 1}),
            param_space=tune.grid_search(trials),
            tune_config=tune.TuneConfig(
                scheduler=ASHAScheduler(metric="reward", mode="max", time_attr="iteration", max_t=args.iterations,
                                        grace_period=args.rung, reduction_factor=3),
                max_concurrent_trials=SLOTS),
            run_config=tune.RunConfig(storage_path=str(work / "results"), name="vsray", verbose=0,
                                      failure_config=tune.FailureConfig(max_failures=3)))
        results = tuner.fit()
    finally:
        t1 = time.time()
        ray.shutdown()
    pruned = sum(1 for r in results if r.metrics and r.metrics.get("iteration", 0) < args.iterations and not r.error)
    intervals, run_dirs, leaked = [], [], 0
    for trial_dir in sorted((work / "attempts").iterdir()):
        dirs = []
        for f in sorted(trial_dir.iterdir(), key=lambda x: int(x.stem)):
            rec = json.loads(f.read_text())
            intervals.append((rec["start"], rec["end"] or t1))
            if rec["tb_dir"]:
                dirs.append(rec["tb_dir"])
            if rec["pid"] and procs.alive(rec["pid"]):
                leaked += 1
        run_dirs.append(dirs)
    return summary("Ray Tune", t0, t1, intervals, run_dirs, args.target, pruned, leaked, len(run_dirs))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--configs", type=int, default=2)
    ap.add_argument("--iterations", type=int, default=24)
    ap.add_argument("--rung", type=int, default=8)
    ap.add_argument("--slow", type=float, default=0.25, help="seconds per iteration added (a heavier trainer)")
    ap.add_argument("--crash", type=int, default=6,
                    help="iteration at which the faulty run crashes once (before the rung: no pruning can hide it)")
    ap.add_argument("--target", type=float, default=20.0, help="Train/mean_reward for 'slot-s to target'")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    cfgs = configurations(args.configs)
    work = Path(tempfile.mkdtemp(prefix="vs_ray_"))
    rows = [run_lights_out(args, cfgs, work), run_ray(args, cfgs, work)]
    cols = ("tool", "runs", "makespan_s", "idle_share", "busy_slot_s", "slot_s_to_target", "lost_iterations",
            "pruned", "leaked", "startup_s", "after_last_s")
    print("| " + " | ".join(cols) + " |\n|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(str(r[c]) for c in cols) + " |")
    doc = {"machine": "2-core CPU, no GPU", "date": time.strftime("%Y-%m-%d"), "configurations": cfgs,
           "args": vars(args) | {"json": None}, "rows": rows}
    print(json.dumps(doc, indent=2))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=2))
    shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
