"""Item 8 and the bad-input table: every case of bench/bad_inputs.py is answered by one sentence that
names the value, changes no file it was given and (for doit) launches nothing."""
from __future__ import annotations

import sys

import pytest
from conftest import ROOT

sys.path.insert(0, str(ROOT / "bench"))
import bad_inputs  # noqa: E402


def test_the_table_holds_at_least_60_cases():
    assert len(bad_inputs.CASES) >= 60


@pytest.mark.timeout(240)
@pytest.mark.parametrize("case", bad_inputs.CASES, ids=[f"{c.kind}-{c.name}" for c in bad_inputs.CASES])
def test_bad_input_is_one_sentence_naming_the_value(case, tmp_path):
    said = bad_inputs.answer(case, tmp_path)
    assert bad_inputs.verdict(case, said) is None
