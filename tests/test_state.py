"""The run-state model: what supervision carries is typed fields; a state file written when those lived in
an untyped `extra` dict still loads, with each value in its field."""
from __future__ import annotations

import json

import pytest

from lights_out_dev.core.spec import RunSpec
from lights_out_dev.core.state import LaunchIntent, RunState, load_state, save_state

SPEC = RunSpec(task="cartpole:base", family="cartpole", launcher="lab", prefix=["python"], script="workloads/train.py",
               trainer_task="Cartpole", num_envs=16, max_iterations=4)
INTENT = {"purpose": "attempt", "token": "t" * 32, "argv": ["python", "train.py"], "log_path": "/l/a.log",
          "gpus": [1], "env_overrides": {"A": "1"}, "at": 12.5, "boot": "b"}


@pytest.mark.parametrize("old_key, value, field, expected", [
    ("fingerprint", "abc123", "fingerprint", "abc123"),
    ("intent", INTENT, "intent", LaunchIntent(**INTENT)),
    ("handle", {"kind": "local", "pid": 7}, "handle", {"kind": "local", "pid": 7}),
    ("log_offset", 4096, "log_offset", 4096),
    ("resume_from", "/r/model_40.pt", "resume_from", "/r/model_40.pt"),
    ("stopping", "user", "stopping", "user"),
    ("exclude_nodes", ["n2"], "exclude_nodes", ["n2"]),
    ("bad_iteration", 31, "bad_iteration", 31),
    ("effective", {"num_envs": 8}, "effective", {"num_envs": 8}),
    ("smoke", {"verdict": "completed"}, "smoke_record", {"verdict": "completed"}),
    ("eval", {"metrics": {"return": 1.0}}, "evaluation", {"metrics": {"return": 1.0}}),
    ("judged_rungs", [10, 20], "judged_rungs", [10, 20]),
    ("resumed_after_pruning", True, "resumed_after_pruning", True),
])
def test_an_older_state_file_loads_its_extra_values_into_their_fields(tmp_path, old_key, value, field, expected):
    path = tmp_path / "01.json"
    new = RunState(run_key="cartpole__base", rid="r" * 8, run_name="n", task=SPEC.task, spec=SPEC)
    doc = json.loads(new.model_dump_json())
    doc.pop(field)
    doc["extra"] = {old_key: value}
    path.write_text(json.dumps(doc))
    st = load_state(path)
    assert getattr(st, field) == expected
    save_state(st, path)  # written back, it has the field and no extra
    again = json.loads(path.read_text())
    assert "extra" not in again and load_state(path) == st


def test_a_field_written_by_a_newer_state_wins_over_an_old_extra_value():
    st = RunState(run_key="k", rid="r", run_name="n", task=SPEC.task, spec=SPEC, log_offset=10,
                  extra={"log_offset": 3})
    assert st.log_offset == 10
