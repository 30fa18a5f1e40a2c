"""`lights-out mcp [--read-only]`: the agent interface as an MCP server on stdio.

Run it from the project root (or with LIGHTS_OUT_ROOT set); an agent's MCP configuration is e.g.

    {"command": ".venv/bin/lights-out", "args": ["mcp"], "cwd": "/path/to/project"}

The tools are lights_out_dev.agent.tools's; each answer is a short text summary (at most 40 lines) plus the
same facts as structured JSON. --read-only registers only the tools that change nothing
(list_experiments, check_plan, status, wait_for_event, diagnose, metrics).

The protocol owns this process's stdout: everything the project prints while a tool runs (an
evaluation's progress lines, a warning) goes to stderr instead, and started processes write to
their own files.
"""
from __future__ import annotations

import io
import os
import sys
from typing import Any

from mcp.server.fastmcp import FastMCP
from mcp.types import CallToolResult, TextContent

from lights_out_dev.agent.tools import Agent, Answer

INSTRUCTIONS = """\
Runs GPU reinforcement-learning experiments unattended (lights-out). A sweep overnight takes a few calls:
check_plan(plan) -> start_sweep(plan) (a dry run: it returns a confirm token) -> start_sweep(confirm=token)
(returns a cursor) -> wait_for_event(cursor, kinds=['sweep_finished'], timeout_s=3600): it blocks until the
sweep ends and sums up what happened meanwhile (retries, give-ups), with the report table. Do not poll.
Crashes, OOMs, stalls and NCCL failures are retried by policy on their own; a run that gave up is explained by
diagnose(run) and rerun by retry_with(run, overrides). Every answer is at most 40 lines."""


def _result(answer: Answer) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=answer.summary)], structuredContent=answer.data,
                          isError=not answer.data.get("ok", True))


def build(agent: Agent) -> FastMCP:
    """The FastMCP server with the agent's tools (the changing ones only without --read-only)."""
    server = FastMCP("lights-out", instructions=INSTRUCTIONS)

    @server.tool()
    def list_experiments() -> CallToolResult:
        """The experiment tasks (doit names) and the sweep plans in sweeps/, and the current sweep."""
        return _result(agent.list_experiments())

    @server.tool()
    def check_plan(plan: str) -> CallToolResult:
        """Validate a sweep plan (path like sweeps/x.yaml) without starting anything: the runs it would start,
        GPU-hours at most, and whether a start would be refused (and what to pass then)."""
        return _result(agent.check_plan(plan))

    @server.tool()
    def status(plan: str | None = None) -> CallToolResult:
        """One screen (<= 40 lines) of the current sweep (or `plan`): per run state, place, iteration, steps/s,
        reward, time used/limit, attempts, 'silent for N s' when its log stopped growing; then the GPUs."""
        return _result(agent.status(plan))

    @server.tool()
    async def wait_for_event(cursor: int | None = None, timeout_s: float = 600.0, kinds: list[str] | None = None,
                             sweep: str | None = None) -> CallToolResult:
        """Block until an event that needs a decision (default kinds: gave_up, failed, stopped, refused,
        sweep_finished, preflight_failed) appears after `cursor` (from a start or the previous wait; events
        written before this call count), or until timeout_s (max 3600). Returns the event, the new cursor,
        counts of the other events meanwhile, and the run's log tail or the sweep's report table."""
        return _result(await agent.wait_for_event(cursor, timeout_s, kinds, sweep))

    @server.tool()
    def diagnose(run: str, plan: str | None = None) -> CallToolResult:
        """Why a run (sweep run number, or a task name for a `doit <task>` run) is where it is: verdict, reason,
        evidence lines from its log, what the policy did per attempt and will do next, the next step."""
        return _result(agent.diagnose(run, plan))

    @server.tool()
    def metrics(run: str, tags: list[str] | None = None, points: int = 5, plan: str | None = None) -> CallToolResult:
        """Latest value and trend of TensorBoard tags of a run (default: reward, episode length, steps/s,
        value loss)."""
        return _result(agent.metrics(run, tags, points, plan))

    if agent.read_only:
        return server

    @server.tool()
    def start_sweep(plan: str | None = None, continue_ledger: bool = False, wipe: bool = False,
                    confirm: str | None = None) -> CallToolResult:
        """Start a sweep, in two steps: with `plan` (and continue_ledger/wipe when the ledger belongs to another
        plan) it checks everything and returns a confirm token; with `confirm=<token>` it starts the sweep
        detached and returns the event cursor for wait_for_event."""
        if confirm:
            return _result(agent.start_sweep("", confirm=confirm))
        if not plan:
            return _result(Answer("error: name the plan, e.g. plan='sweeps/default.yaml'",
                                  {"ok": False, "error": "name the plan, e.g. plan='sweeps/default.yaml'"}))
        return _result(agent.start_sweep(plan, continue_=continue_ledger, wipe=wipe))

    @server.tool()
    def start_run(task: str | None = None, overrides: list[str] | None = None,
                  confirm: str | None = None) -> CallToolResult:
        """Start one supervised run `doit <task> <overrides>` (e.g. ['--num_envs', '64', '--time_limit', '1h']),
        in two steps: without `confirm` a dry run returning a token; with `confirm=<token>` the start."""
        if confirm:
            return _result(agent.start_run("", confirm=confirm))
        return _result(agent.start_run(task or "", overrides))

    @server.tool()
    def stop(run: str | None = None, plan: str | None = None) -> CallToolResult:
        """Stop one running run (its trainer saves a checkpoint; the run is marked interrupted, stopped by the
        user), or with no `run` the whole sweep."""
        return _result(agent.stop(run, plan))

    @server.tool()
    def extend_time_limit(run: str, time_limit: str, plan: str | None = None) -> CallToolResult:
        """Give a running run a new time limit ('3h') or more time ('+30m'); it applies at once."""
        return _result(agent.extend_time_limit(run, time_limit, plan))

    @server.tool()
    def retry_with(run: str | None = None, overrides: dict[str, Any] | None = None, plan: str | None = None,
                   confirm: str | None = None) -> CallToolResult:
        """Rerun a finished or stopped run with changes: overrides from num_envs, max_iterations, seed,
        trainer_args (list of flags, last flag wins), time_limit. Two steps like start_sweep."""
        if confirm:
            return _result(agent.retry_with("", confirm=confirm))
        return _result(agent.retry_with(run or "", overrides, plan))

    @server.tool()
    async def evaluate(run: str, checkpoint: str = "final", num_episodes: int = 10,
                       plan: str | None = None) -> CallToolResult:
        """Evaluate a checkpoint of a run with the trainer's play script (checkpoint: final, latest, best,
        best:<tag> or a path) and record the result in the run (ledger, report)."""
        import anyio

        return _result(await anyio.to_thread.run_sync(agent.evaluate, run, checkpoint, num_episodes, plan))

    return server


def serve(read_only: bool = False) -> int:
    """Serve on stdio until the client closes the connection."""
    import anyio
    from mcp.server.stdio import stdio_server

    from lights_out_dev.core.config import load_project_or_report

    project = load_project_or_report("lights-out mcp: ", file=sys.stderr)
    if project is None:
        return 3
    root, cfg = project
    agent = Agent(root, cfg, read_only=read_only)
    server = build(agent)
    # The protocol gets the real stdout; fd 1 and sys.stdout become stderr for everything else.
    protocol_out = os.fdopen(os.dup(1), "wb", buffering=0)
    os.dup2(2, 1)
    sys.stdout = sys.stderr

    async def main() -> None:
        out = anyio.wrap_file(io.TextIOWrapper(protocol_out, encoding="utf-8", write_through=True))
        async with stdio_server(stdout=out) as (read, write):
            await server._mcp_server.run(read, write, server._mcp_server.create_initialization_options())

    try:
        anyio.run(main)
    except KeyboardInterrupt:
        pass
    finally:
        agent.close()
    return 0
