"""How a lights-out doit action reports failure.

Our actions print their own one-sentence reason and return False; stock doit would then add
"Python Task failed: '<function run_experiment at 0x7f...>' returned False", which names our code,
not the problem. A failed action instead returns a TaskFailed that points at the printed reason.
"""
from __future__ import annotations

import functools

from doit.exceptions import TaskFailed


def action(fn):
    @functools.wraps(fn)
    def run(*args):
        from lights_out_dev.host import stopping

        if stopping.requested():  # doit goes on to the next task after a stop; nothing more may start
            return TaskFailed(f"not started: lights-out was stopped by {stopping.signal_name()}.")
        result = fn(*args)
        return TaskFailed("the lines above say why.") if result is False else result

    return run
