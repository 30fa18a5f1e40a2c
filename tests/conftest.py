import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PYTHON = sys.executable


@pytest.fixture
def root() -> Path:
    return ROOT
