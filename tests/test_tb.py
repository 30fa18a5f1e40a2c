"""tb.py against files written by torch's SummaryWriter (what rsl_rl uses) and hand-framed records."""
from __future__ import annotations

import shutil
import struct

import numpy as np
import pytest
from tensorboard.compat.proto import event_pb2, summary_pb2, tensor_pb2
from torch.utils.tensorboard import SummaryWriter

from lights_out_dev.core import tb

pytestmark = pytest.mark.timeout(60)

RSL_RL_TAGS = ("Train/mean_reward", "Train/mean_episode_length", "Perf/total_fps", "Loss/value_function",
               "Loss/surrogate", "Policy/mean_noise_std", "Episode_Reward/track_lin_vel_xy_exp")


def write_run(run_dir, steps: int, tags=RSL_RL_TAGS, **kw) -> dict:
    """Write steps x tags scalars; value = step + tag index / 10. Returns tag -> [(step, value)]."""
    expected: dict = {t: [] for t in tags}
    w = SummaryWriter(str(run_dir))
    for step in range(steps):
        for i, tag in enumerate(tags):
            value = step + i / 10
            w.add_scalar(tag, value, step, **kw)
            expected[tag].append((step, value))
    w.close()
    return expected


def frame(event: event_pb2.Event) -> bytes:
    """One TFRecord (CRCs zeroed: tb.py does not check them)."""
    data = event.SerializeToString()
    return struct.pack("<Q", len(data)) + b"\0" * 4 + data + b"\0" * 4


def values(points):
    return [(s, pytest.approx(v, rel=1e-6)) for s, _, v in points]


def test_summary_writer_scalars_round_trip(tmp_path):
    expected = write_run(tmp_path, 50)
    got = tb.read_scalars(tmp_path)
    assert set(got) == set(RSL_RL_TAGS)
    for tag in RSL_RL_TAGS:
        assert [(s, v) for s, _, v in got[tag]] == values([(s, 0, v) for s, v in expected[tag]])
        assert all(w > 1e9 for _, w, _ in got[tag])  # wall times are epoch seconds
    latest = tb.latest_scalars(tmp_path)
    assert latest["Train/mean_reward"][0] == 49 and latest["Train/mean_reward"][2] == pytest.approx(49.0)


def test_last_keeps_only_recent_points(tmp_path):
    write_run(tmp_path, 30, tags=("a",))
    assert [s for s, _, _ in tb.read_scalars(tmp_path, last=5)["a"]] == [25, 26, 27, 28, 29]


@pytest.mark.parametrize("double", [False, True])
def test_new_style_tensor_scalars(tmp_path, double):
    write_run(tmp_path, 5, tags=("x/y",), new_style=True, double_precision=double)
    assert [(s, v) for s, _, v in tb.read_scalars(tmp_path)["x/y"]] == [(i, pytest.approx(i)) for i in range(5)]


def test_tensor_content_and_non_scalars(tmp_path):
    f = tmp_path / "events.out.tfevents.1.host"
    scalar = tensor_pb2.TensorProto(dtype=1, tensor_content=np.array([2.5], "<f4").tobytes())
    vector = tensor_pb2.TensorProto(dtype=1, tensor_content=np.array([1, 2, 3], "<f4").tobytes())
    text = tensor_pb2.TensorProto(dtype=7, string_val=[b"hello"])
    ints = tensor_pb2.TensorProto(dtype=9, int64_val=[7])
    summary = summary_pb2.Summary(value=[
        summary_pb2.Summary.Value(tag="content", tensor=scalar),
        summary_pb2.Summary.Value(tag="vector", tensor=vector),
        summary_pb2.Summary.Value(tag="text", tensor=text),
        summary_pb2.Summary.Value(tag="ints", tensor=ints),
        summary_pb2.Summary.Value(tag="simple", simple_value=1.5),
    ])
    f.write_bytes(frame(event_pb2.Event(wall_time=1.0, file_version="brain.Event:2"))
                  + frame(event_pb2.Event(wall_time=2.0, step=3, summary=summary)))
    assert tb.read_scalars(f) == {"content": [(3, 2.0, 2.5)], "ints": [(3, 2.0, 7.0)], "simple": [(3, 2.0, 1.5)]}


@pytest.mark.parametrize("step,tag", [(0, "t"), (300, "t"), (2**40, "t"), (-5, "t"), (7, "long/" + "x" * 200),
                                      (1, "ünïcode/tag")])
def test_fast_path_agrees_with_protobuf(tmp_path, step, tag):
    w = SummaryWriter(str(tmp_path))
    w.add_scalar(tag, 0.25, step)
    w.close()
    (f,) = tb.event_files(tmp_path)
    data = f.read_bytes()
    records, pos = [], 0
    while pos < len(data):
        (n,) = struct.unpack_from("<Q", data, pos)
        records.append(data[pos + 12:pos + 12 + n])
        pos += 16 + n
    via_proto = [s for r in records for s in tb._proto_scalars(r)]
    assert list(tb.iter_scalars(f)) == via_proto == [(tag, step, pytest.approx(via_proto[0][2]), 0.25)]


def test_truncated_last_record_and_growing_file(tmp_path):
    write_run(tmp_path / "full", 20, tags=("a",))
    (src,) = tb.event_files(tmp_path / "full")
    data = src.read_bytes()
    cut = tmp_path / "cut" / src.name
    cut.parent.mkdir()
    for keep in (len(data) - 1, len(data) - 10, len(data) - 30):
        cut.write_bytes(data[:keep])
        assert [s for s, _, _ in tb.read_scalars(cut)["a"]] == list(range(19))
    # A file still being written: what is flushed so far reads, more appears on the next read.
    w = SummaryWriter(str(tmp_path / "live"))
    w.add_scalar("a", 1.0, 0)
    w.flush()
    assert tb.latest_scalars(tmp_path / "live")["a"][0] == 0
    w.add_scalar("a", 2.0, 1)
    w.flush()
    assert tb.latest_scalars(tmp_path / "live")["a"][0] == 1
    w.close()


@pytest.mark.parametrize("content", [b"", b"\x01\x02", b"\xff" * 64, b"garbage that is not a tfrecord at all" * 10])
def test_empty_or_garbage_files_read_as_nothing(tmp_path, content):
    f = tmp_path / "events.out.tfevents.0.host"
    f.write_bytes(content)
    assert tb.read_scalars(tmp_path) == {} and tb.latest_scalars(f) == {}


def test_missing_path_and_dir_without_events(tmp_path):
    assert tb.read_scalars(tmp_path / "nope") == {}
    assert tb.event_files(tmp_path) == []


def test_several_files_of_one_run_are_read_in_order(tmp_path):
    write_run(tmp_path, 3, tags=("a",))
    (first,) = tb.event_files(tmp_path)
    shutil.copy(first, tmp_path / (first.name + "9"))  # a later file (e.g. after a resume): sorts after it
    assert len(tb.read_scalars(tmp_path)["a"]) == 6


def test_nested_writer_dirs_are_found(tmp_path):
    write_run(tmp_path / "PPO_1", 2, tags=("rollout/ep_rew_mean",))  # Stable-Baselines3 layout
    assert list(tb.read_scalars(tmp_path)) == ["rollout/ep_rew_mean"]


@pytest.mark.timeout(120)
def test_hundred_thousand_scalars(tmp_path):
    """Correctness at the size the bench times (bench/read_logs_speed.py)."""
    tags = tuple(f"Tag/{i}" for i in range(10))
    write_run(tmp_path, 10_000, tags=tags)
    got = tb.read_scalars(tmp_path)
    assert sum(len(v) for v in got.values()) == 100_000
    latest = tb.latest_scalars(tmp_path)
    assert {t: (s, v) for t, (s, _, v) in latest.items()} == {t: (9999, pytest.approx(9999 + i / 10))
                                                             for i, t in enumerate(tags)}


def test_a_follower_reads_only_what_a_live_run_wrote_since_its_last_update(tmp_path):
    w = SummaryWriter(str(tmp_path))
    follower = tb.ScalarFollower()
    assert follower.update(tmp_path) == {}
    w.add_scalar("Reward / Total reward (mean)", 1.5, 50)
    w.flush()
    assert follower.update(tmp_path)["Reward / Total reward (mean)"][::2] == (50, 1.5)
    read = dict(follower._read)
    assert follower.update(tmp_path)["Reward / Total reward (mean)"][::2] == (50, 1.5) and follower._read == read
    events = tb.event_files(tmp_path)[0]
    w.add_scalar("Reward / Total reward (mean)", 2.5, 100)
    w.flush()
    whole = events.read_bytes()
    with open(events, "r+b") as f:  # the writer's record cut in half: read once it is complete
        f.truncate(len(whole) - 3)
    assert follower.update(tmp_path)["Reward / Total reward (mean)"][::2] == (50, 1.5)
    events.write_bytes(whole)
    assert follower.update(tmp_path)["Reward / Total reward (mean)"][::2] == (100, 2.5)
    assert follower._read[events] == len(whole)
    w.close()
