"""Randomized chaos campaign: real `doit sweep` processes over short real runs of the reference trainer,
killed, interrupted and given damaged files at random moments, then rerun until done.

    python bench/chaos.py --seed 1 --trials 200 --minutes 90

Each trial is a fresh two-run sweep plan in one copy of the repository. Up to --max-disruptions times
it starts `doit sweep`, waits a random moment and then, at random, SIGKILLs it (the supervisor dies,
its trainers live on), sends SIGTERM or SIGINT (a graceful stop), or SIGTERM followed by a SIGKILL
during the graceful stop; after a SIGKILL it may also truncate a run-state file or delete a run's target
(as a filesystem crash would). Then it reruns the same command until the sweep says done. Throughout,
a sampler reads /proc every 0.1 s for the trainers of the campaign (each carries its run-state path in
its environment) and a canary process group owned by the campaign records every signal it gets.

Printed (and with --json, written as JSON):
  trials              trials run (the campaign stops starting new ones after --minutes)
  runs lost           runs not in a final state after the final rerun
  double launches     moments where two trainers of one run were alive at once
  orphans             trainer processes still alive after a trial's final `doit sweep` ended
  foreign signals     signals the canary group received (or it died)
  wrong final states  final runs that are not 'completed' (every run here is healthy), or a final rerun
                      that did not exit 0
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from project_copy import copy_project  # noqa: E402  (bench/project_copy.py)

from lights_out_dev.host import procs  # noqa: E402
from lights_out_dev.run.supervisor import STATE_VAR  # noqa: E402

OVERLAY = """\
cpu_slots = 2
[monitor]
grace_s = 5
stall_s = 60
startup_stall_s = 180
status_interval_s = 5
time_limit = "none"
"""
CANARY = """
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGUSR1):
    signal.signal(s, lambda n, f: log.write(f"{n}\\n"))
print("ready", flush=True)
while True:
    time.sleep(0.5)
"""
FINAL_TIMEOUT_S = 600


def make_repo(dest: Path) -> Path:
    copy_project(dest)
    (dest / "chaos.toml").write_text(f'locks_dir = "{dest / "locks"}"\n' + OVERLAY)
    return dest


def plan_text(name: str, rng: random.Random, trial: int) -> str:
    runs = []
    for k in range(2):
        iters = rng.randint(2, 6)
        slow = rng.choice([None, None, "slow=0.2@1", "slow=0.5@1"])
        args = f", trainer_args: [--inject, \"{slow}\"]" if slow else ""
        runs.append(f"  - task: cartpole:base\n    overrides: {{num_envs: 8, max_iterations: {iters}, "
                    f"seed: {trial * 10 + k}{args}}}\n")
    return f"name: {name}\nmode: parallel\nruns:\n" + "".join(runs)


class Sampler(threading.Thread):
    """Every 0.1 s: the campaign's trainers (session leaders carrying a run-state path under `marker`)."""

    def __init__(self, marker: str):
        super().__init__(daemon=True)
        self.marker = marker.encode()
        self.double = 0
        self.doubled: set[tuple] = set()
        self._halt = threading.Event()

    def trainers(self) -> dict[str, set[int]]:
        by_state: dict[str, set[int]] = {}
        for name in os.listdir("/proc"):
            if not name.isdigit():
                continue
            pid = int(name)
            try:
                env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
            except OSError:
                continue
            state = next((e[len(STATE_VAR) + 1:] for e in env if e.startswith(STATE_VAR.encode() + b"=")), None)
            s = procs.stat(pid)
            if state and state.startswith(self.marker) and s and s.sid == pid and s.state not in ("Z", "X"):
                by_state.setdefault(state.decode(), set()).add(pid)
        return by_state

    def run(self) -> None:
        while not self._halt.is_set():
            for state, pids in self.trainers().items():
                if len(pids) > 1:
                    key = (state, tuple(sorted(pids)))
                    if key not in self.doubled:  # one count per pair of trainers, however long they overlap
                        self.doubled.add(key)
                        self.double += 1
                        print(f"  DOUBLE LAUNCH: {state}: pids {sorted(pids)}", flush=True)
            self._halt.wait(0.1)

    def halt(self) -> None:
        self._halt.set()


class Campaign:
    def __init__(self, args):
        self.args = args
        self.rng = random.Random(args.seed)
        self.work = Path(tempfile.mkdtemp(prefix="lights-out-chaos-"))
        self.repo = make_repo(self.work / "repo")
        self.env = {**os.environ, "PYTHONPATH": str(self.repo), "PYTHONUNBUFFERED": "1",
                    "LIGHTS_OUT_CONFIG": str(self.repo / "chaos.toml")}
        self.env.pop("LIGHTS_OUT_ROOT", None)
        self.counts = Counter()
        self.actions = Counter()
        canary_log = self.work / "canary.log"
        canary_log.touch()
        self.canary_log = canary_log
        self.canary = subprocess.Popen([sys.executable, "-c", CANARY, str(canary_log)], stdout=subprocess.PIPE,
                                       text=True, start_new_session=True)
        assert self.canary.stdout.readline().strip() == "ready"
        self.sampler = Sampler(str(self.repo))
        self.sampler.start()

    def doit(self, plan: str, log: Path) -> subprocess.Popen:
        return subprocess.Popen([sys.executable, "-m", "doit", "sweep", "--plan", plan], cwd=self.repo, env=self.env,
                                stdout=open(log, "a"), stderr=subprocess.STDOUT, start_new_session=True)

    def sweep_dir(self, name: str) -> Path:
        return self.repo / "local_experiment_logs" / "sweeps" / name

    def damage(self, name: str) -> None:
        d = self.sweep_dir(name)
        states = sorted((d / "runs").glob("[0-9][0-9].json"))
        targets = sorted((d / "targets").glob("*.json"))
        choice = self.rng.random()
        if choice < 0.5 and states:
            victim = self.rng.choice(states)
            data = victim.read_bytes()
            victim.write_bytes(data[: self.rng.randint(0, max(0, len(data) - 1))])
            self.actions["truncate state"] += 1
        elif targets:
            self.rng.choice(targets).unlink()
            self.actions["delete target"] += 1

    def trial(self, n: int) -> None:
        name = f"c{self.args.seed}x{n:04d}"
        plan = f"sweeps/{name}.yaml"
        (self.repo / plan).write_text(plan_text(name, self.rng, n))
        (self.repo / "local_experiment_logs" / "sweep_log.md").unlink(missing_ok=True)  # each trial owns the ledger
        log = self.work / f"{name}.log"
        for _ in range(self.rng.randint(0, self.args.max_disruptions)):
            p = self.doit(plan, log)
            try:
                p.wait(timeout=self.rng.uniform(0.2, self.args.max_delay))
                break  # the sweep finished before the disruption came
            except subprocess.TimeoutExpired:
                pass
            action = self.rng.choice(["SIGKILL", "SIGKILL", "SIGTERM", "SIGINT", "SIGTERM+SIGKILL"])
            self.actions[action] += 1
            if action == "SIGKILL":
                p.send_signal(signal.SIGKILL)
            elif action == "SIGTERM+SIGKILL":
                p.send_signal(signal.SIGTERM)
                time.sleep(self.rng.uniform(0.05, 3.0))
                p.send_signal(signal.SIGKILL)
            else:
                p.send_signal(getattr(signal, action))
            try:
                p.wait(timeout=120)
            except subprocess.TimeoutExpired:
                self.counts["hung after a stop"] += 1
                p.kill()
                p.wait()
            if p.returncode == -signal.SIGKILL and self.rng.random() < self.args.damage_rate:
                self.damage(name)
        final = self.doit(plan, log)
        try:
            rc = final.wait(timeout=FINAL_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            final.kill()
            rc = final.wait()
        self.check(n, name, rc, log)

    def check(self, n: int, name: str, rc: int, log: Path) -> None:
        runs = self.sweep_dir(name) / "runs"
        lost = wrong = 0
        for k in (1, 2):
            try:
                st = json.loads((runs / f"{k:02d}.json").read_text())
            except (OSError, ValueError):
                lost += 1
                continue
            if st["status"] not in ("completed", "timeout", "failed", "skipped"):
                lost += 1
            elif st["status"] != "completed":
                wrong += 1
        if rc != 0:
            wrong += 1
        time.sleep(0.3)  # one more sampler pass
        orphans = sum(len(p) for s, p in self.sampler.trainers().items() if f"/sweeps/{name}/" in s)
        hits = self.canary_log.read_text().split()
        foreign = len(hits) + (0 if self.canary.poll() is None else 1)
        self.counts["runs lost"] += lost
        self.counts["wrong final states"] += wrong
        self.counts["orphans"] += orphans
        self.counts["foreign signals"] = foreign
        bad = lost or wrong or orphans
        if bad or self.args.verbose:
            print(f"  trial {n} ({name}): rc {rc}, lost {lost}, wrong {wrong}, orphans {orphans}; log {log}",
                  flush=True)
        if bad:
            tail = log.read_text(errors="replace").splitlines()[-25:]
            print("    " + "\n    ".join(tail), flush=True)

    def run(self) -> dict:
        t0 = time.monotonic()
        trials = 0
        while trials < self.args.trials and time.monotonic() - t0 < self.args.minutes * 60:
            self.trial(trials)
            trials += 1
            if trials % 10 == 0:
                print(f"[{time.monotonic() - t0:.0f}s] {trials} trials: {self.summary(trials)}", flush=True)
        self.sampler.halt()
        result = {"trials": trials, "seed": self.args.seed, "seconds": round(time.monotonic() - t0),
                  "runs": 2 * trials, "runs lost": self.counts["runs lost"],
                  "double launches": self.sampler.double, "orphans": self.counts["orphans"],
                  "foreign signals": self.counts["foreign signals"],
                  "wrong final states": self.counts["wrong final states"],
                  "hung after a stop": self.counts["hung after a stop"], "disruptions": dict(self.actions),
                  "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}"}
        return result

    def summary(self, trials: int) -> str:
        return (f"lost {self.counts['runs lost']}, double {self.sampler.double}, orphans {self.counts['orphans']}, "
                f"foreign {self.counts['foreign signals']}, wrong {self.counts['wrong final states']}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=120.0, help="start no new trial after this long")
    ap.add_argument("--max-disruptions", type=int, default=3, help="disruptions per trial (0..N, at random)")
    ap.add_argument("--max-delay", type=float, default=10.0, help="latest moment of a disruption after a start (s)")
    ap.add_argument("--damage-rate", type=float, default=0.3, help="chance of damaging a file after a SIGKILL")
    ap.add_argument("--json", type=Path, help="also write the result here")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, states)")
    ap.add_argument("-v", "--verbose", action="store_true")
    args = ap.parse_args()
    campaign = Campaign(args)
    print(f"chaos campaign: seed {args.seed}, up to {args.trials} trials / {args.minutes:.0f} min, "
          f"work dir {campaign.work}", flush=True)
    try:
        result = campaign.run()
    finally:  # interrupted or not, the campaign's own canary does not outlive it
        if campaign.canary.poll() is None:
            os.killpg(campaign.canary.pid, signal.SIGKILL)
    print(json.dumps(result, indent=2))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(campaign.work, ignore_errors=True)
    bad = sum(result[k] for k in ("runs lost", "double launches", "orphans", "foreign signals", "wrong final states"))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
