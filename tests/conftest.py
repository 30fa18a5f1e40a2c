import sys
from pathlib import Path

import pytest

from lights_out_dev.local_executor import let_children_take_sigint

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable

# The tests send SIGINT to trainers and batch scripts they start; started in the background by a script
# (`.ci/run &`), pytest would pass an ignored SIGINT on to all of them.
let_children_take_sigint()


@pytest.fixture
def root() -> Path:
    return ROOT
