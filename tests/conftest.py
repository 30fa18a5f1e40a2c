import os
import sys
import tempfile
from pathlib import Path

import pytest

from lights_out_dev.host.stopping import let_children_take_sigint

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The tests send SIGINT to trainers and batch scripts they start; started in the background by a script
# (`.ci/run &`), pytest would pass an ignored SIGINT on to all of them.
let_children_take_sigint()

# Leases are machine-wide (one locks dir for every checkout); the suite's runs get a directory of their
# own so that they neither wait for a developer's sweep on this machine nor make it wait. Subprocesses
# (doit, sweeps) inherit it.
os.environ.setdefault("LIGHTS_OUT_LOCKS_DIR", tempfile.mkdtemp(prefix="lights-out-test-locks-"))


@pytest.fixture
def root() -> Path:
    return ROOT
