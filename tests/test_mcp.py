"""The MCP server (`lights-out mcp`) through the SDK's own client over stdio, against real sweeps and runs of
the reference trainer (real doit, real rsl_rl PPO on the CPU), and watch.py's cursors.

Each test works in a fresh copy of the repository (tests/test_sweep.py's make_repo).
"""
from __future__ import annotations

import json
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import anyio
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from test_sweep import doit_argv, env_for, make_repo, states

from lights_out_dev.agent import tools as agent

pytestmark = pytest.mark.timeout(900)

# run 1 crashes once (retried by policy), run 2 has a config bug (gives up at once)
FAULTS = """\
name: faults
time_limit: 5m
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 3, seed: 1, trainer_args: [--inject, "crash@1"]}
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 3, seed: 2, trainer_args: [--inject, "config_error@1:always"]}
"""
OTHER = """\
name: other
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 2}
"""
TYPO = """\
name: typo
runs:
  - task: cartpole:base
    overides: {num_envs: 16}
"""
WRITE_TOOLS = {"start_sweep", "start_run", "stop", "extend_time_limit", "retry_with", "evaluate"}
READ_TOOLS = {"list_experiments", "check_plan", "status", "wait_for_event", "diagnose", "metrics"}


class Client:
    """A list of (tool, arguments) calls through one MCP session; answers collected for size checks."""

    def __init__(self, session: ClientSession):
        self.session, self.answers = session, []

    async def call(self, tool: str, **args) -> tuple[dict, str]:
        res = await self.session.call_tool(tool, args)
        text = res.content[0].text
        self.answers.append((tool, text))
        assert len(text.splitlines()) <= agent.MAX_LINES, (tool, text)
        return res.structuredContent, text


def with_server(repo: Path, script, *flags: str):
    """Run `script(client)` against `lights-out mcp` started in `repo`; returns what the script returns."""
    params = StdioServerParameters(command=sys.executable, args=["-m", "lights_out_dev.cli.main", "mcp", *flags],
                                   cwd=str(repo), env=env_for(repo))
    out = {}

    async def main():
        with open(repo / "mcp_server.err", "w") as err:
            async with stdio_client(params, errlog=err) as (read, write):
                async with ClientSession(read, write, read_timeout_seconds=timedelta(seconds=700)) as session:
                    await session.initialize()
                    out["value"] = await script(Client(session))

    anyio.run(main)
    return out["value"]


def wait_gone(repo: Path, name: str, timeout: float = 120.0) -> None:
    """The sweep process this test started has let go of its lock (it has exited or is about to)."""
    from lights_out_dev.sweep.ownership import live_holder
    from lights_out_dev.sweep.paths import SweepPaths

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and live_holder(SweepPaths(repo / "local_experiment_logs/sweeps" / name)):
        time.sleep(0.5)


def test_an_overnight_sweep_in_five_calls_then_diagnose_and_retry(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"faults": FAULTS})

    async def script(c: Client):
        tools = {t.name for t in (await c.session.list_tools()).tools}
        assert tools == READ_TOOLS | WRITE_TOOLS
        plan, text = await c.call("check_plan", plan="sweeps/faults.yaml")
        assert plan["ok"] and [r["seed"] for r in plan["runs"]] == [1, 2] and plan["estimate"]["hours"] > 0
        assert "seed 2" in text and plan["blocker"] is None
        dry, text = await c.call("start_sweep", plan="sweeps/faults.yaml")
        assert dry["dry_run"] and "confirm=" in text and not (repo / "local_experiment_logs/sweeps/faults").exists()
        started, _ = await c.call("start_sweep", confirm=dry["confirm"])
        again, _ = await c.call("start_sweep", confirm=dry["confirm"])  # a token starts one thing once
        assert started["started"] and not again["ok"]
        done, text = await c.call("wait_for_event", cursor=started["cursor"], kinds=["sweep_finished"], timeout_s=600)
        assert done["event"]["kind"] == "sweep_finished" and done["event"]["counts"] == {"completed": 1, "failed": 1}
        assert done["seen"].get("retry") == 1 and done["seen"].get("gave_up") == 1, done
        table = "\n".join(done["report_table"])
        assert "| Verdict | Notes |" in table and "config_error" in table and "seed=2" in table
        why, text = await c.call("diagnose", run="2")
        assert why["verdict"] == "config_error" and why["status"] == "failed"
        assert any("KeyError" in e for e in why["evidence"]), why
        assert "policy never retries" in text
        m, _ = await c.call("metrics", run="1", tags=["Train/mean_reward", "No/such_tag"])
        assert m["metrics"][0]["tag"] == "Train/mean_reward" and m["missing"] == ["No/such_tag"]
        st, text = await c.call("status")
        assert st["counts"] == {"completed": 1, "failed": 1} and "seed=1" in text
        ev, text = await c.call("evaluate", run="1", num_episodes=2)
        assert ev["ok"] and ev["metrics"]["num_episodes"] >= 2 and "eval return" in text, text
        # the config bug is fixed by replacing the injection (last flag wins): run 2 alone runs again
        dry, _ = await c.call("retry_with", run="2", overrides={"trainer_args": ["--inject", "slow=0.01@1"]})
        started, _ = await c.call("retry_with", confirm=dry["confirm"])
        done, _ = await c.call("wait_for_event", cursor=started["cursor"], kinds=["sweep_finished"], timeout_s=600)
        assert done["event"]["counts"] == {"completed": 2}, done
        return started

    with_server(repo, script)
    sts = states(repo, "faults")
    assert sts[1]["status"] == "completed" and [a["verdict"] for a in sts[1]["attempts"]] == ["crash", "completed"]
    assert sts[2]["status"] == "completed" and "slow=0.01@1" in sts[2]["attempts"][-1]["argv"]
    assert list((repo / "local_experiment_logs/sweeps/faults/runs/archive").glob("02_*.json"))  # the failed record
    wait_gone(repo, "faults")


def test_plan_mistakes_and_refusals_are_answered_not_started(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"faults": FAULTS, "typo": TYPO, "other": OTHER})
    (repo / "local_experiment_logs").mkdir(exist_ok=True)
    (repo / "local_experiment_logs" / "sweep_log.md").write_text("# Sweep: other\nStarted: -\n")

    async def script(c: Client):
        bad, text = await c.call("start_sweep", plan="sweeps/typo.yaml")
        assert not bad["ok"] and "line 4" in bad["error"] and "'runs.0.overides' is not a plan field" in bad["error"]
        refused, _ = await c.call("start_sweep", plan="sweeps/faults.yaml")  # the ledger is other's
        assert refused["needs"] == "continue_or_wipe"
        assert not refused["ok"] and "belongs to sweep 'other'" in refused["error"]
        ok, _ = await c.call("start_sweep", plan="sweeps/faults.yaml", continue_ledger=True)
        assert ok["dry_run"] and "--continue" in ok["command"]
        unknown, _ = await c.call("start_run", task="cartpol:base")
        assert "did you mean" in unknown["error"] and "cartpole:base" in unknown["error"]
        bad_flag, _ = await c.call("start_run", task="cartpole:base", overrides=["--num_envs", "many"])
        assert not bad_flag["ok"] and "many" in bad_flag["error"]
        # a start that dies without writing an event (the configuration broke after the dry run) ends the wait
        dry, _ = await c.call("start_run", task="cartpole:base", overrides=["--num_envs", "16"])
        good = (repo / "pyproject.toml").read_text()
        (repo / "pyproject.toml").write_text(good + "\n[tool.lights_out]\nbogus = 1\n")
        started, _ = await c.call("start_run", confirm=dry["confirm"])
        gone, text = await c.call("wait_for_event", cursor=started["cursor"], timeout_s=300)
        assert gone["event"] is None and gone["exited"]["code"] == 3 and not gone["timed_out"], gone
        assert "'bogus' is not a known setting" in text
        (repo / "pyproject.toml").write_text(good)
        return True

    assert with_server(repo, script)
    assert not (repo / "local_experiment_logs" / "sweeps").exists()  # nothing started

    async def read_only(c: Client):
        tools = {t.name for t in (await c.session.list_tools()).tools}
        assert tools == READ_TOOLS
        listed, text = await c.call("list_experiments")
        assert "cartpole:base" in listed["tasks"] and any(p["name"] == "faults" for p in listed["plans"])
        return True

    assert with_server(repo, read_only, "--read-only")


def test_stop_and_extend_a_running_run(tmp_path: Path):
    """A run past its original time limit keeps going once extended; a stop is a user stop, not a failure."""
    repo = make_repo(tmp_path / "repo", {})

    async def script(c: Client):
        dry, _ = await c.call("start_run", task="cartpole:base",
                              overrides=["--num_envs", "16", "--max_iterations", "400", "--time_limit", "25s",
                                         "--inject", "slow=0.2@0"])
        started, _ = await c.call("start_run", confirm=dry["confirm"])
        ev, _ = await c.call("wait_for_event", cursor=started["cursor"], kinds=["healthy", "failed"], timeout_s=300)
        assert ev["event"]["kind"] == "healthy", ev
        more, text = await c.call("extend_time_limit", run="cartpole:base", time_limit="+10m")
        assert more["ok"] and more["time_limit_s"] == 25 + 600, text
        state_file = repo / "local_experiment_logs/runs/cartpole__base.json"
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:  # past the original 25 s limit, still running
            st = json.loads(state_file.read_text())
            used = time.time() - st["attempts"][-1]["started_at"]
            if used > 35:
                break
            await anyio.sleep(1)
        assert st["status"] == "running", st["status"]
        stopped, _ = await c.call("stop", run="cartpole:base")
        assert stopped["requested"]
        ev, _ = await c.call("wait_for_event", kinds=["stopped", "timeout", "failed"], timeout_s=120)
        assert ev["event"]["kind"] == "stopped", ev
        why, text = await c.call("diagnose", run="cartpole:base")
        assert why["status"] == "interrupted" and "stopped by the user" in text
        return True

    assert with_server(repo, script)
    st = json.loads((repo / "local_experiment_logs/runs/cartpole__base.json").read_text())
    assert st["attempts"][-1]["verdict"] == "killed" and st["reason"] == "stopped by the user"
    assert not (repo / "local_experiment_logs/runs/cartpole__base.json.stop").exists()  # consumed


SLOW = """\
name: slow
runs:
  - task: cartpole:base
    overrides: {num_envs: 16, max_iterations: 400, trainer_args: [--inject, "slow=0.2@0"]}
    grid: {seed: [1, 2]}
"""


def test_stopping_a_whole_sweep_is_a_user_stop_with_events(tmp_path: Path):
    repo = make_repo(tmp_path / "repo", {"slow": SLOW})

    async def script(c: Client):
        dry, _ = await c.call("start_sweep", plan="sweeps/slow.yaml")
        started, _ = await c.call("start_sweep", confirm=dry["confirm"])
        for _ in range(2):
            ev, _ = await c.call("wait_for_event", kinds=["healthy", "sweep_finished"], timeout_s=300)
            assert ev["event"]["kind"] == "healthy", ev
        st, text = await c.call("status")
        assert "seed=1" in text and "seed=2" in text and st["counts"] == {"running": 2}
        stopped, text = await c.call("stop")
        assert stopped["ok"], text
        done, text = await c.call("wait_for_event", cursor=started["cursor"], kinds=["sweep_finished"], timeout_s=300)
        assert done["event"]["stopped"] is True and done["event"]["ok"] is False, done
        assert done["seen"].get("stopped") == 2, done  # one per run
        return True

    assert with_server(repo, script)
    sts = states(repo, "slow")
    assert [s["status"] for s in sts.values()] == ["interrupted", "interrupted"]
    assert all(s["reason"] == "stopped by the user" for s in sts.values())
    wait_gone(repo, "slow")
    ledger = (repo / "local_experiment_logs/sweep_log.md").read_text()
    assert "stopped by the user" in ledger and "failed attempts" not in ledger


def test_watch_sees_a_refusal_written_before_it_started(tmp_path: Path):
    """The race of a sweep refused in under a second: launch first, let it end, then watch from the cursor."""
    repo = make_repo(tmp_path / "repo", {"faults": FAULTS, "typo": TYPO})
    (repo / "local_experiment_logs").mkdir(exist_ok=True)
    (repo / "local_experiment_logs" / "sweep_log.md").write_text("# Sweep: other\nStarted: -\n")
    env = env_for(repo)
    watch_py = [sys.executable, "-m", "lights_out_dev.cli.watch"]
    cursor = int(subprocess.run([*watch_py, "--print-cursor"], cwd=repo, env=env, capture_output=True, text=True,
                                check=True).stdout)
    since = time.time()
    p = subprocess.run(doit_argv("sweep", "--plan", "sweeps/faults.yaml"), cwd=repo, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode != 0 and "belongs to sweep 'other'" in p.stdout + p.stderr
    w = subprocess.run([*watch_py, "--until-event", "--cursor", str(cursor), "--timeout", "60", "--interval", "30",
                        "--only", "sweep_finished,refused"], cwd=repo, env=env, capture_output=True, text=True,
                       timeout=120)
    assert w.returncode == 1, w.stdout + w.stderr  # sweep_finished ok=false, found at once, not after 60 s
    assert "belongs to sweep 'other'" in w.stdout
    end = int(w.stdout.strip().splitlines()[-1].split()[-1])
    # a plan typo: exit 3 like every usage error, and an event a --since watch finds
    p = subprocess.run(doit_argv("sweep", "--plan", "sweeps/typo.yaml"), cwd=repo, env=env, capture_output=True,
                       text=True, timeout=300)
    assert p.returncode == 3 and "overides" in p.stderr and "Traceback" not in p.stderr + p.stdout
    w = subprocess.run([*watch_py, "--until-event", "--since", str(since), "--timeout", "60", "--interval", "30"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert w.returncode == 1 and "belongs to sweep 'other'" in w.stdout  # the first event since `since`
    w = subprocess.run([*watch_py, "--until-event", "--cursor", str(end), "--timeout", "60", "--interval", "30"],
                       cwd=repo, env=env, capture_output=True, text=True, timeout=120)
    assert w.returncode == 1 and "overides" in w.stdout, w.stdout  # the next one after the first watch's cursor


@pytest.mark.parametrize("lines,limit,out", [
    (["a"] * 3, 3, "a\na\na"),
    (["a"] * 5, 3, "a\na\n... 3 more lines left out"),
])
def test_clip(lines, limit, out):
    assert agent.clip(lines, limit) == out


def test_most_relevant_rows_keep_running_and_failed():
    rows = [{"index": i, "status": s} for i, s in enumerate(["completed", "running", "pending", "failed", "completed"], 1)]
    assert [r["index"] for r in agent._most_relevant(rows, 3)] == [1, 2, 4]


def test_override_tokens():
    assert agent._override_tokens({"num_envs": 32, "seed": 0, "trainer_args": ["--lr", "3e-4"]}) == \
        ["--num_envs", "32", "--seed", "0", "--lr", "3e-4"]
    with pytest.raises(agent.AgentError, match="num_envs 0"):
        agent._override_tokens({"num_envs": 0})


def test_status_of_a_large_sweep_stays_within_40_lines(tmp_path: Path):
    from lights_out_dev.core.config import load_config
    from lights_out_dev.core.spec import RunSpec
    from lights_out_dev.core.state import Attempt, RunState, save_state

    (tmp_path / "sweeps").mkdir()
    plan = tmp_path / "sweeps" / "big.yaml"
    plan.write_text("name: big\nruns:\n  - task: cartpole:base\n    grid: {seed: [" + ", ".join(map(str, range(60))) + "]}\n")
    sdir = tmp_path / "local_experiment_logs" / "sweeps" / "big"
    (sdir / "runs").mkdir(parents=True)
    (sdir / "sweep.json").write_text(json.dumps({"name": "big", "plan": str(plan), "started_at": time.time()}))
    (sdir.parent / "current").write_text("big\n")
    spec = RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=[], script="workloads/train.py",
                   trainer_task="Lo-Cartpole-v0", num_envs=16, time_limit_s=600.0)
    for i in range(1, 61):
        status = "failed" if i == 57 else "running" if i == 58 else "completed"
        save_state(RunState(run_key=str(i), rid="r", run_name="n", task="cartpole:base", spec=spec, status=status,
                            attempts=[Attempt(number=1, argv=[], started_at=time.time() - 60)], sweep="big", index=i),
                   sdir / "runs" / f"{i:02d}.json")
    answer = agent.Agent(tmp_path, load_config(tmp_path)).status()
    lines = answer.summary.splitlines()
    assert len(lines) <= agent.MAX_LINES and answer.data["runs_left_out"] > 0
    assert any(line.startswith("57 failed") and "seed=56" in line for line in lines)  # the runs that matter are kept
    assert any(line.startswith("58 running") for line in lines)
    assert answer.data["counts"] == {"completed": 58, "failed": 1, "running": 1}


def test_check_plan_counts_each_runs_budget_in_its_trainers_unit(tmp_path: Path):
    """max_iterations is iterations for rsl_rl but timesteps for SB3 (its profile says so): the plan check
    must not promise 2048 iterations of a run that will train 2048 steps."""
    from lights_out_dev.core.config import load_config

    repo = make_repo(tmp_path, {"mixed": (
        "name: mixed\nruns:\n"
        "  - task: gym_cartpole:sb3\n    overrides: {max_iterations: 2048}\n"
        "  - task: cartpole:base\n    overrides: {num_envs: 16, max_iterations: 3}\n")})
    answer = agent.Agent(repo, load_config(repo)).check_plan("sweeps/mixed.yaml")
    lines = answer.summary.splitlines()
    assert "gym_cartpole:sb3" in lines[1] and "2048 steps" in lines[1], lines
    assert "cartpole:base" in lines[2] and "3 it" in lines[2], lines
    assert [r["progress_unit"] for r in answer.data["runs"]] == ["steps", "it"]
