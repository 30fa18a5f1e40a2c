"""How many tool calls an agent needs for an overnight sweep, and how big the answers are.

    python bench/agent_calls.py [--json PATH] [--keep]

A scripted agent (no model: the fixed decision rule below) drives a plan through `lights-out mcp`
(the MCP SDK's own client over stdio) in a fresh copy of this repository, on the reference trainer:

    run  fault injected                expected outcome
    1    crash@1 (SIGKILL)             retried by policy, completed
    2    oom@1                         retried by policy, completed
    3    stall@1 (silent, alive)       stopped after stall_s, retried, completed
    4    config_error@1:always         gave up at once (retrying cannot help)
    5    nan@1:always (NaN rewards)    gave up at once
    6    none                          completed
    and a typo in the plan file (an unknown task name) that the first call reports.

Decision rule: start_sweep(plan); on a plan error that suggests "did you mean 'X'", put X in the plan
and call again; confirm the token; wait_for_event(cursor, kinds=[sweep_finished, refused,
preflight_failed]) once (it blocks; no sleep or poll loop); then diagnose each run the report lists
as failed. Records every call: tool, seconds, answer lines, characters of the text and of the JSON.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from project_copy import copy_project  # noqa: E402  (bench/project_copy.py)

PLAN = """\
name: overnight
mode: parallel
time_limit: 10m
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 1, trainer_args: [--inject, "crash@1"]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 2, trainer_args: [--inject, "oom@1"]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 3, trainer_args: [--inject, "stall@1"]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 4, trainer_args: [--inject, "config_error@1:always"]}
  - task: cartpol:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 5, trainer_args: [--inject, "nan@1:always"]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 4, seed: 6}
"""
# short stall limit so the stalled run is found in seconds, not the default minutes
OVERLAY = "[monitor]\nstall_s = 10\nstatus_interval_s = 30\n"
EXPECTED = {1: "completed", 2: "completed", 3: "completed", 4: "failed", 5: "failed", 6: "completed"}


def make_repo(dest: Path) -> Path:
    copy_project(dest)
    (dest / "sweeps" / "overnight.yaml").write_text(PLAN)
    (dest / "overlay.toml").write_text(OVERLAY)
    return dest


async def drive(session, calls: list[dict], repo: Path) -> dict:
    async def call(tool: str, **args) -> dict:
        t0 = time.monotonic()
        res = await session.call_tool(tool, args)
        text = res.content[0].text
        data = res.structuredContent or {}
        calls.append({"tool": tool, "args": {k: v for k, v in args.items() if k != "confirm"},
                      "seconds": round(time.monotonic() - t0, 2), "lines": len(text.splitlines()),
                      "text_chars": len(text), "json_chars": len(json.dumps(data)), "ok": data.get("ok", True),
                      "text": text})
        return data

    plan = "sweeps/overnight.yaml"
    dry = await call("start_sweep", plan=plan)
    while not dry.get("ok"):  # the rule: take the suggestion of a plan error, else stop
        m = re.search(r"unknown task '([^']+)'; did you mean '([^']+)'", dry.get("error", ""))
        if not m:
            raise SystemExit(f"the scripted agent cannot fix: {dry.get('error')}")
        path = repo / plan
        path.write_text(path.read_text().replace(f"task: {m[1]}\n", f"task: {m[2]}\n"))
        dry = await call("start_sweep", plan=plan)
    started = await call("start_sweep", confirm=dry["confirm"])
    done = await call("wait_for_event", cursor=started["cursor"], kinds=["sweep_finished", "refused", "preflight_failed"],
                      timeout_s=3600)
    report_calls = len(calls)
    failed = [int(line.split("|")[1]) for line in done.get("report_table", [])
              if line.startswith("| ") and line.split("|")[1].strip().isdigit() and "| failed |" in line]
    diagnoses = {}
    for index in failed:
        d = await call("diagnose", run=str(index))
        diagnoses[index] = {"verdict": d.get("verdict"), "next": d.get("next_step")}
    return {"calls_to_report": report_calls, "failed_runs": failed, "diagnoses": diagnoses,
            "counts": (done.get("event") or {}).get("counts")}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--json", type=Path, help="write the calls and figures here")
    ap.add_argument("--keep", action="store_true", help="keep the temporary repository copy")
    args = ap.parse_args()

    import anyio
    from mcp import ClientSession, StdioServerParameters
    from mcp.client.stdio import stdio_client

    tmp = Path(tempfile.mkdtemp(prefix="lights-out-agent-bench-"))
    repo = make_repo(tmp / "repo")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(repo), "PYTHONUNBUFFERED": "1",
           "LIGHTS_OUT_CONFIG": str(repo / "overlay.toml"), "HOME": str(tmp)}
    params = StdioServerParameters(command=sys.executable, args=["-m", "lights_out_dev.cli.main", "mcp"], cwd=str(repo),
                                   env=env)
    calls: list[dict] = []
    out: dict = {}
    t0 = time.monotonic()

    async def run():
        with open(tmp / "server.err", "w") as err:
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=3700)) as session:
                    await session.initialize()
                    out.update(await drive(session, calls, repo))

    anyio.run(run)
    wall = time.monotonic() - t0
    runs = {}
    for f in sorted((repo / "local_experiment_logs/sweeps/overnight/runs").glob("[0-9][0-9].json")):
        st = json.loads(f.read_text())
        runs[int(f.stem)] = {"status": st["status"], "verdicts": [a["verdict"] for a in st["attempts"]]}
    summary = {
        "machine": "2-core CPU, no GPU", "date": time.strftime("%Y-%m-%d"), "wall_s": round(wall, 1),
        "calls_total": len(calls), **out, "max_lines": max(c["lines"] for c in calls),
        "max_text_chars": max(c["text_chars"] for c in calls), "max_json_chars": max(c["json_chars"] for c in calls),
        "runs": runs, "as_expected": {i: r["status"] for i, r in runs.items()} == EXPECTED,
        "calls": calls,
    }
    print("| # | tool | s | lines | text chars | JSON chars |")
    print("|---:|---|---:|---:|---:|---:|")
    for n, c in enumerate(calls, 1):
        print(f"| {n} | {c['tool']}{'' if c['ok'] else ' (error)'} | {c['seconds']} | {c['lines']} | "
              f"{c['text_chars']} | {c['json_chars']} |")
    print(f"\ncalls to the final report: {out['calls_to_report']}; total {len(calls)}; wall {wall:.0f} s; "
          f"runs {json.dumps({i: (r['status'], r['verdicts']) for i, r in runs.items()})}; "
          f"as expected: {summary['as_expected']}")
    print("\n--- the wait_for_event answer ---\n" + next(c["text"] for c in calls if c["tool"] == "wait_for_event"))
    if args.json:
        args.json.write_text(json.dumps(summary, indent=2) + "\n")
    if not args.keep:
        shutil.rmtree(tmp, ignore_errors=True)
    else:
        print(f"kept {tmp}")
    return 0 if summary["as_expected"] else 1


if __name__ == "__main__":
    sys.exit(main())
