"""The GPU proof (issue 6): everything only a GPU shows, in as few device calls as possible.

    python bench/gpu_validation.py --part one --out DIR   # one GPU  (H100 / H200), < 10 min
    python bench/gpu_validation.py --part two --out DIR   # two GPUs (2x H200),      < 10 min

Each step runs the real tools (doit tasks, sweeps, gpu_check, read_logs, preflight) as subprocesses in
the repository, reads the run-state JSON they leave, and records one verdict per step. Writes
DIR/gpu_validation_<part>.json (machine-readable) and DIR/logs_<part>.tar.gz (trainer logs, run states,
ledgers, reports). Nothing here changes GPU settings.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
LOGS = ROOT / "local_experiment_logs"
PY = sys.executable


def sh(args: list[str], timeout: float, env: dict | None = None) -> dict:
    t0 = time.monotonic()
    try:
        p = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                           env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}, start_new_session=True)
        rc, out = p.returncode, p.stdout + p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out = "timeout", (e.stdout or b"").decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
    return {"argv": args, "rc": rc, "wall_s": round(time.monotonic() - t0, 2), "tail": out[-3000:]}


def doit(*args: str, timeout: float = 300, overlay: str | None = None, env: dict | None = None) -> dict:
    env = dict(env or {})
    if overlay:
        path = Path(tempfile.mkstemp(suffix=".toml")[1])
        path.write_text(overlay)
        env["LIGHTS_OUT_CONFIG"] = str(path)
    return sh([PY, "-m", "doit", *args], timeout, env)


def run_state(task: str) -> dict | None:
    p = LOGS / "runs" / (task.replace(":", "__") + ".json")
    return json.loads(p.read_text()) if p.exists() else None


def attempts_summary(state: dict | None) -> list[dict]:
    if not state:
        return []
    keep = ("number", "verdict", "reason", "decision", "exit_code", "signal", "cleanup_s", "survivors",
            "peak_vram_mb", "imbalance", "gpus")
    out = []
    for a in state["attempts"]:
        row = {k: a.get(k) for k in keep}
        argv = a["argv"]
        row["num_envs"] = int(argv[argv.index("--num_envs") + 1]) if "--num_envs" in argv else None
        row["resume"] = "--resume" in argv or "--checkpoint" in argv
        row["iteration"] = a["progress"].get("iteration")
        row["steps_per_s"] = a["progress"].get("steps_per_s")
        out.append(row)
    return out


def gpu_memory_used_mb() -> list[float]:
    from lights_out_dev.host import nvml
    return [g.mem_used_mb for g in nvml.query_gpus()]


def machine() -> dict:
    q = sh(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit,power.max_limit,clocks.max.sm",
            "--format=csv,noheader"], 30)
    import torch
    return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "nvidia_smi": q["tail"].strip().splitlines(),
            "torch": torch.__version__, "cuda": torch.version.cuda, "gpus": torch.cuda.device_count()}


def monitors() -> dict:
    return {
        "gpu_check": sh([PY, "-m", "lights_out_dev.cli.gpu_check"], 60),
        "gpu_check_json": sh([PY, "-m", "lights_out_dev.cli.gpu_check", "--json"], 60),
        "gpu_check_power_policy": sh([PY, "-m", "lights_out_dev.cli.gpu_check", "--power-policy"], 60),
        "read_logs_tb_latest": sh([PY, "-m", "lights_out_dev.cli.read_logs", "tb-latest"], 60),
        "read_logs_stdout_latest": sh([PY, "-m", "lights_out_dev.cli.read_logs", "stdout-latest", "-n", "12"], 60),
        "runtime_check": doit("runtime_check", timeout=180),
        "power_check": doit("power_check", timeout=60),
    }


def args_kind() -> str:
    import torch
    name = torch.cuda.get_device_name(0)
    return "h100" if "H100" in name else "h200" if "H200" in name else name.replace(" ", "_").lower()


def oom_adaptation(fits: int) -> dict:
    """A run 3x too large: real OOM, retried as-is once, then halved until it fits, then completed."""
    start = fits * 3
    overlay = ("max_consecutive_failures = 8\n"
               "[policy.oom]\naction = 'retry'\nmax_attempts = 8\nafter = 1\nthen = 'halve_envs'\n")
    baseline = gpu_memory_used_mb()
    res = doit("cartpole:base", "--num_envs", str(start), "--max_iterations", "3", "--gpu", "0",
               timeout=420, overlay=overlay)
    state = run_state("cartpole:base")
    att = attempts_summary(state)
    after = gpu_memory_used_mb()
    verdicts = [a["verdict"] for a in att]
    ok = (res["rc"] == 0 and verdicts[0] == "oom" and verdicts[-1] == "completed"
          and att[1]["num_envs"] == start and all(b["num_envs"] == a["num_envs"] // 2
                                                 for a, b in zip(att[1:], att[2:]))
          and all((a["cleanup_s"] or 0) < 2.0 for a in att if a["verdict"] == "oom"))
    return {"start_num_envs": start, "result": res, "attempts": att, "status": state and state["status"],
            "gpu_mem_baseline_mb": baseline, "gpu_mem_after_mb": after, "ok": ok}


def mean_fps(run_dir: Path | None) -> float | None:
    """Mean Perf/total_fps of a trainer run directory after its first two (warm-up) iterations."""
    from lights_out_dev.core import tb

    pts = [v for _, _, v in tb.read_scalars(run_dir).get("Perf/total_fps", [])][2:] if run_dir else []
    return sum(pts) / len(pts) if pts else None


def supervision_overhead(num_envs: int = 65536, iterations: int = 40, pairs: int = 3) -> dict:
    """Steps/s of the same training bare and under the supervisor (`doit -a`, forced to run), interleaved;
    each figure is the mean of Perf/total_fps over the iterations after the first two (warm-up)."""
    bare, supervised = [], []
    common = ["--num_envs", str(num_envs), "--max_iterations", str(iterations)]
    for _ in range(pairs):
        sh([PY, "workloads/train.py", "--task", "Lo-Cartpole-v0", *common, "--headless", "--device", "cuda:0",
            "--experiment_name", "overhead_bare"], 300)
        runs = sorted((ROOT / "logs/rsl_rl/overhead_bare").iterdir())
        bare.append(mean_fps(runs[-1] if runs else None))
        doit("-a", "cartpole:base", *common, "--gpu", "0", timeout=300)
        st = run_state("cartpole:base")
        supervised.append(mean_fps(Path(st["attempts"][-1]["tb_dir"]) if st else None))
    b = [x for x in bare if x]
    s = [x for x in supervised if x]
    ratio = (sum(s) / len(s)) / (sum(b) / len(b)) if b and s else None
    return {"num_envs": num_envs, "iterations": iterations, "bare_steps_per_s": bare,
            "supervised_steps_per_s": supervised, "ratio": ratio,
            "overhead_pct": None if ratio is None else round((1 - ratio) * 100, 2)}


def paired_overhead(num_envs: int = 262144, iterations: int = 50, rounds: int = 6) -> dict:
    """Steps/s supervised / bare, measured at the same time on two GPUs: each round runs the bare trainer on
    one GPU and the supervised task on the other, swapping GPUs every round, so drift of the machine over
    time and the difference between the GPUs both cancel in the geometric mean of the per-round ratios."""
    common = ["--num_envs", str(num_envs), "--max_iterations", str(iterations)]
    rounds_out = []
    for k in range(rounds):
        sup_gpu, bare_gpu = k % 2, 1 - k % 2
        name = f"overhead_paired_{k}"
        bare = subprocess.Popen([PY, "workloads/train.py", "--task", "Lo-Cartpole-v0", *common, "--headless",
                                 "--device", f"cuda:{bare_gpu}", "--experiment_name", name], cwd=ROOT,
                                stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT, start_new_session=True)
        sup = doit("-a", "cartpole:base", *common, "--gpu", str(sup_gpu), timeout=300)
        bare.wait(timeout=300)
        runs = sorted((ROOT / "logs/rsl_rl" / name).iterdir())
        st = run_state("cartpole:base")
        b = mean_fps(runs[-1] if runs else None)
        s_ = mean_fps(Path(st["attempts"][-1]["tb_dir"]) if st else None)
        rounds_out.append({"bare_gpu": bare_gpu, "supervised_gpu": sup_gpu, "bare": b, "supervised": s_,
                           "ratio": s_ / b if b and s_ else None, "supervised_rc": sup["rc"]})
    ratios = [x["ratio"] for x in rounds_out if x["ratio"]]
    return {"num_envs": num_envs, "iterations": iterations, "rounds": rounds_out,
            "geomean_ratio": statistics.geometric_mean(ratios) if ratios else None}


SWEEP_ONE = """name: gpu-one
mode: parallel
time_limit: 3m
runs:
  - task: cartpole:base
    phase: 1
    overrides: {num_envs: 16384, max_iterations: 40, seed: 1}
  - task: cartpole:base
    phase: 1
    overrides: {num_envs: 16384, max_iterations: 40, seed: 2, trainer_args: [--inject, crash@5]}
  - task: cartpole:base
    phase: 1
    overrides: {num_envs: 16384, max_iterations: 40, seed: 3, trainer_args: [--inject, stall@5]}
  - task: top_dog:base
    phase: 1
    time_limit: 20s
    overrides: {num_envs: 16384, max_iterations: 100000, seed: 4}
"""


def sweep(plan_text: str, name: str, overlay: str, timeout: float, *extra: str) -> dict:
    plan = ROOT / "sweeps" / f"{name}.yaml"
    plan.write_text(plan_text)
    res = doit("sweep", "--plan", str(plan.relative_to(ROOT)), "--wipe", *extra, timeout=timeout, overlay=overlay)
    runs_dir = LOGS / "sweeps" / name / "runs"
    states = [json.loads(p.read_text()) for p in sorted(runs_dir.glob("[0-9]*.json")) if "promotion" not in p.name]
    ledger = LOGS / "sweep_log.md"
    report = LOGS / "sweeps" / name / "report.md"
    return {"result": res,
            "runs": [{"index": s.get("index"), "task": s["task"], "status": s["status"],
                      "final_verdict": s.get("final_verdict"), "attempts": attempts_summary(s)} for s in states],
            "ledger": ledger.read_text() if ledger.exists() else None,
            "report": report.read_text() if report.exists() else None}


def part_one(out: Path) -> dict:
    r: dict = {"machine": machine()}
    # The throughput table is recorded once per machine kind (bench/results/); measure it if missing.
    recorded = ROOT / "bench" / "results" / f"trainer_throughput_{args_kind()}.json"
    if not recorded.exists():
        r["throughput"] = sh([PY, "bench/trainer_throughput.py", "--out", str(recorded), "--oom-budget-s", "150"], 330)
    fits = json.loads(recorded.read_text())["oom_search"]["largest_ok"]
    r["oom_adaptation"] = oom_adaptation(fits)
    overlay = "[monitor]\nstall_s = 15\nstartup_stall_s = 120\ngrace_s = 10\n"
    r["sweep"] = sweep(SWEEP_ONE, "gpu-one", overlay, 420)
    r["monitors"] = monitors()
    r["overhead"] = supervision_overhead()
    return r


SWEEP_TWO = """name: gpu-two
mode: parallel
time_limit: 4m
runs:
  - task: cartpole:base
    phase: 1
    grid: {seed: [1, 2]}
    overrides: {num_envs: 16384, max_iterations: 30}
promote:
  metric: Train/mean_reward
  mode: max
  from_phase: 1
  phase: 2
  gpus: all
  scale_envs: false
  overrides: {max_iterations: 30}
"""


def hog(gpu: int, gb: float, seconds: float) -> subprocess.Popen:
    code = (f"import torch,time;d='cuda:{gpu}';x=torch.empty(int({gb}*2**30),dtype=torch.uint8,device=d);"
            f"a=torch.randn(8192,8192,device=d);t=time.time()\n"
            f"while time.time()-t<{seconds}: a=(a@a).clamp_(-1,1)\n")
    return subprocess.Popen([PY, "-c", code], start_new_session=True)


class Results(dict):
    """Written to disk after every step, so a call cut off by its time limit still returns what it measured."""

    def __init__(self, path: Path):
        super().__init__()
        self.path = path

    def __setitem__(self, key, value):
        super().__setitem__(key, value)
        self.path.write_text(json.dumps(self, indent=2, default=str))


STEPS_TWO = ("runtime", "mgpu", "nccl", "imbalance", "promotion")
OPTIONAL_STEPS = ("newton", "overhead")  # needs newton + warp-lang installed (sent in pieces)


def part_two(out: Path, steps: tuple[str, ...] = STEPS_TWO) -> dict:
    r = Results(out / "gpu_validation_two.json")
    r["machine"] = machine()
    if "runtime" in steps:
        r["runtime_check_nccl"] = doit("runtime_check", timeout=180)
    if "mgpu" in steps:
        _mgpu(r)
    if "nccl" in steps:
        _nccl(r)
    if "imbalance" in steps:
        _imbalance(r)
    if "promotion" in steps:
        _promotion(r)
    if "newton" in steps:
        _newton(r)
    if "overhead" in steps:
        r["overhead_paired"] = paired_overhead()
    return r


def _mgpu(r: dict) -> None:
    r["mgpu"] = doit("cartpole:base-mgpu", "--num_envs", "16384", "--max_iterations", "30", timeout=300)
    st = run_state("cartpole:base-mgpu")
    r["mgpu_attempts"] = attempts_summary(st)
    tb = st and st["attempts"][-1].get("tb_dir")
    r["mgpu_tb_dirs_for_this_run"] = sorted(os.listdir(Path(tb).parent)) if tb and Path(tb).exists() else []
    r["mgpu_argv"] = st and st["attempts"][0]["argv"]


def _nccl(r: dict) -> None:
    r["nccl"] = doit("cartpole:base-mgpu", "--num_envs", "8192", "--max_iterations", "20", "--inject", "nccl@3",
                     timeout=300, env={"LIGHTS_OUT_NCCL_TIMEOUT_S": "10", "TORCH_NCCL_DUMP_ON_TIMEOUT": "0"})
    r["nccl_attempts"] = attempts_summary(run_state("cartpole:base-mgpu"))


def _imbalance(r: dict) -> None:
    # A hog loads GPU 1 (memory and compute) while a 2-rank run is active. It starts after the run holds
    # its GPUs: started first, it would (rightly) make the run refuse GPU 1 as busy.
    overlay = "[monitor]\nidle_gpu_stall_s = 20\nimbalance_util_pct = 30\nimbalance_mem_pct = 20\n" \
              "[policy.imbalance]\naction = 'retry'\nmax_attempts = 1\n"
    proc = subprocess.Popen([PY, "-m", "doit", "cartpole:base-mgpu", "--num_envs", "8192", "--max_iterations",
                             "100000", "--time_limit", "100s"], cwd=ROOT, start_new_session=True,
                            env={**os.environ, "LIGHTS_OUT_CONFIG": _write(overlay)},
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    time.sleep(15)
    h = hog(1, 60, 90)
    time.sleep(15)
    r["imbalance_gpu_check"] = sh([PY, "-m", "lights_out_dev.cli.gpu_check", "--exit-on-imbalance"], 60)
    try:
        text, _ = proc.communicate(timeout=200)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGINT)
        text, _ = proc.communicate(timeout=60)
    os.killpg(h.pid, signal.SIGKILL)
    h.wait()
    r["imbalance_supervised"] = {"rc": proc.returncode, "tail": text[-3000:],
                                 "attempts": attempts_summary(run_state("cartpole:base-mgpu"))}


def _promotion(r: dict) -> None:
    # Promotion after the power check: a policy matching the real limit, then one that does not.
    from lights_out_dev.host import nvml
    watts = round(nvml.query_gpus()[0].power_limit_w)
    good = f"[power]\nwatts = {watts}\nrequired_for_mgpu = true\n"
    r["promotion_sweep"] = sweep(SWEEP_TWO, "gpu-two", good, 480)
    r["power_refusal"] = doit("power_check", timeout=60, overlay="[power]\nwatts = 275\nsm_clock_mhz = 1700\n")


def _newton(r: dict) -> None:
    """The Newton cart-pole (Warp, Featherstone) supervised on cuda:0; the first run compiles Warp's kernels."""
    r["newton"] = doit("cartpole:newton", "--num_envs", "4096", "--max_iterations", "100", "--gpu", "0",
                       timeout=420, env={"WARP_CACHE_PATH": "/tmp/warp-cache"})
    st = run_state("cartpole:newton")
    r["newton_attempts"] = attempts_summary(st)
    r["newton_final"] = st and st["final"]
    r["newton_argv"] = st and st["attempts"][0]["argv"]


def _write(text: str) -> str:
    path = tempfile.mkstemp(suffix=".toml")[1]
    Path(path).write_text(text)
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--part", choices=["one", "two"], required=True)
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--only", choices=["overhead"], help="one step of part one (re-measuring)")
    ap.add_argument("--steps", default=",".join(STEPS_TWO),
                    help=f"part two: which steps, comma-separated (optional: {', '.join(OPTIONAL_STEPS)})")
    args = ap.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.only:
        result = {"overhead": supervision_overhead()}
    else:
        result = part_one(args.out) if args.part == "one" else part_two(args.out, tuple(args.steps.split(",")))
    (args.out / f"gpu_validation_{args.only or args.part}.json").write_text(json.dumps(dict(result), indent=2, default=str))
    with tarfile.open(args.out / f"logs_{args.part}.tar.gz", "w:gz") as tar:
        if LOGS.exists():  # the ledger is in it too
            tar.add(LOGS, arcname=LOGS.relative_to(ROOT))
    print(json.dumps({k: (v.get("ok") if isinstance(v, dict) else None) for k, v in result.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
