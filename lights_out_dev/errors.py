"""The one base of every error lights-out raises on purpose (the lowest layer: it imports nothing).

A `LightsOutError` is a problem the user caused and can fix: a bad plan, override, configuration or
invocation, a GPU that cannot be leased, a trainer that cannot start, a damaged state file. Its str() is
ONE sentence naming the value at fault and the fix. Top-level handlers (the doit `run` command, the doit
actions, the `lights-out` commands, the agent's tools) catch `LightsOutError` alone, print that sentence
without a traceback and leave every state file as it was; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations


class LightsOutError(Exception):
    """A user-fixable problem; str() is one sentence naming the value and the fix."""
