"""The `run` command with trainer passthrough (registered in pyproject [tool.doit.plugins.command]).

    doit [doit options] TASK [TASK...] [overrides...]

`doit` with no task name refuses (stock doit would start every experiment at once).
Tokens before the first task name are doit's own options (`-n 2`, `-a`, `--db-file x`).
After the first task name, the task names continue until the first token that starts with '-'
or contains '='; from there on everything is an override (lights_out_dev.core.overrides): lights-out's
own options are consumed, the rest goes to the trainer in order, last flag wins. So put every
task name first, then the overrides.

Stock doit 0.37 rejects undeclared flags after a task name, and DoitMain.process_args() removes
every `key=value` token as a doit variable before any command runs. The `key=value` tokens and
their positions are recovered from sys.argv when the arguments we got equal sys.argv without those
variables (the normal CLI case); otherwise (doit driven through its API) doit's variables are
appended after the other overrides.

Before anything runs, the selection is checked: an unknown task name, a bad override, a --gpu index
this machine lacks, a missing trainer script or launcher prefix each fail with one sentence, exit
code 3, nothing launched.
"""
from __future__ import annotations

import fnmatch
import os
import sys

from doit import cmd_run, doit_cmd
from doit.cmdparse import CmdParseError

from lights_out_dev.core import overrides
from lights_out_dev.errors import LightsOutError
from lights_out_dev.host import stopping
from lights_out_dev.run.tasks_index import closure, spec_of, unknown_task_sentence


def is_doit_var(token: str) -> bool:
    """doit's own rule (DoitMain.process_args) for a command-line variable."""
    return bool(token) and token[0] != "-" and "=" in token


def recover_tokens(in_args: list[str], argv: list[str], doit_vars: dict[str, str]) -> list[str]:
    """The run command's arguments with the `key=value` tokens doit took out put back in place.

    in_args: what doit handed the command; argv: sys.argv[1:]. Pure.
    """
    if not in_args:
        return []
    keep = [i for i, tok in enumerate(argv) if not is_doit_var(tok)]
    plain = [argv[i] for i in keep]
    n = len(in_args)
    if len(plain) >= n and plain[len(plain) - n:] == list(in_args):
        return list(argv[keep[len(plain) - n]:])
    return [*in_args, *(f"{k}={v}" for k, v in doit_vars.items())]


def split_selection(rest: list[str]) -> tuple[list[str], list[str]]:
    """[task names...] + [overrides...]: names end at the first override-looking token."""
    for i, tok in enumerate(rest):
        if overrides.is_override_token(tok):
            return rest[:i], rest[i:]
    return list(rest), []


class Run(cmd_run.Run):
    doc_purpose = "run tasks; trainer flags and key=value overrides may follow the task names"
    doc_usage = "[DOIT OPTIONS] [TASK ...] [--num_envs N] [--gpu N] [--flag value] [key=value] ..."

    def parse_execute(self, in_args):
        tokens = recover_tokens(list(in_args), sys.argv[1:], dict(doit_cmd._CMDLINE_VARS or {}))
        try:
            params, rest = self.cmdparser.parse(tokens)
            while rest and is_doit_var(rest[0]):  # `doit -v 2 x=1 -a task`: x=1 stays a doit variable
                params, rest = self.cmdparser.parse_only(rest[1:], params)
        except CmdParseError:
            raise CmdParseError("doit's own options go before the task name and trainer flags after it; "
                                f"write e.g. `doit cartpole:base --num_envs 64` (got: {' '.join(tokens)}).") from None
        names, extra = split_selection(rest)
        if not names and not extra:  # stock doit would run every task: every experiment at once
            raise CmdParseError("name the task(s) to run, e.g. `doit cartpole:base` or `doit sweep`; "
                                "`doit list --all` shows them all.")
        if extra and not names:
            raise CmdParseError(f"'{extra[0]}' comes before any task name; name the task first, e.g. "
                                f"`doit cartpole:base {' '.join(extra)}`.")
        try:
            overrides.set_current(overrides.parse(extra))
        except overrides.OverrideError as e:
            raise CmdParseError(str(e)) from None
        self.pdb = params.get("pdb", False)
        params.update(self.opt_vals)
        return self.execute(params, names)

    def _execute(self, outfile, verbosity=None, always=False, continue_=False, reporter="console",
                 num_process=0, par_type="process", single=False, auto_delayed_regex=False,
                 force_verbosity=False, failure_verbosity=0, pdb=False):
        try:
            problem = self.selection_problem()
        except LightsOutError as e:  # e.g. a configuration or plan that cannot be read: its one sentence
            problem = str(e)
        if problem:
            sys.stderr.write(f"ERROR: {problem}\n")
            return 3
        with stopping.handling():  # SIGINT / SIGTERM stop the trainers and end with 128 + signal, no traceback
            rc = super()._execute(outfile, verbosity=verbosity, always=always, continue_=continue_,
                                  reporter=reporter, num_process=num_process, par_type=par_type, single=single,
                                  auto_delayed_regex=auto_delayed_regex, force_verbosity=force_verbosity,
                                  failure_verbosity=failure_verbosity, pdb=pdb)
            return stopping.exit_status() or rc

    def selection_problem(self) -> str | None:
        """One sentence if this selection must not start, else None; nothing has run yet."""
        from lights_out_dev.core.command import launch_problem
        from lights_out_dev.core.config import project_root

        tasks = {t.name: t for t in self.task_list}
        targets = {os.path.abspath(t) for task in self.task_list for t in task.targets}
        selected: list[str] = []
        for name in self.sel_tasks or []:
            if "*" in name:
                matches = fnmatch.filter(tasks, name)
                if not matches:
                    return f"'{name}' matches no task; `doit list --all` shows every task."
                selected += matches
            elif name in tasks:
                selected.append(name)
            elif os.path.abspath(name) not in targets:
                return unknown_task_sentence(name, sorted(tasks))
        if any(name == "sweep" or name.startswith("sweep:") for name in selected):
            problem = plan_problem(project_root(), [n for n, t in tasks.items() if spec_of(t) is not None])
            if problem:
                return problem
        specs = [s for s in map(spec_of, closure(tasks, selected)) if s is not None]
        if not specs:
            return None
        from lights_out_dev.core.config import ConfigError, load_config
        from lights_out_dev.executors import executor_class
        from lights_out_dev.executors.slurm.executor import placement_problem
        from lights_out_dev.host.nvml import (
            gpu_count,  # only here: `doit list` and preflight-only runs skip NVML
        )

        root, gpus, gpu = project_root(), gpu_count(), overrides.current().gpu
        try:
            executor = overrides.current().executor or load_config(root).executor
        except ConfigError as e:
            return str(e)
        for spec in specs:
            here = executor_class(executor).visible_gpus(spec.gpus, gpus)
            problem = placement_problem(spec, executor) or launch_problem(spec, root, gpu, here)
            if problem:
                return problem
        return None


def plan_problem(root, known_tasks: list[str]) -> str | None:
    """The sweep plan's mistake as one sentence (also a `sweep_finished` event, so a waiting agent
    returns), or None. A plan error is a usage error like an unknown task: exit 3, nothing launched."""
    from lights_out_dev.core.config import load_config
    from lights_out_dev.host import events
    from lights_out_dev.sweep.paths import plan_path
    from lights_out_dev.sweep.plan import PlanError, check_tasks, load_plan

    cfg = load_config(root)  # a ConfigError is the caller's one sentence
    plan = overrides.current().plan
    try:
        check_tasks(load_plan(plan_path(root, cfg, plan)), known_tasks)
    except PlanError as e:
        events.emit(root, cfg, "sweep_finished", plan=plan, ok=False, reason=str(e))
        return str(e)
    return None
