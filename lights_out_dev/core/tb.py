"""Fast TensorBoard scalar reading without TensorFlow and without tensorboard's event loader.

An events file is a sequence of TFRecords: uint64 length, uint32 masked CRC of the length, the
`Event` protobuf, uint32 masked CRC of the data. CRCs are not checked (a pure-Python CRC32C would
cost more than everything else); a record that does not fit in the bytes read so far is the
writer's unfinished tail and ends the read, so a growing or truncated file reads fine.

Scalars come as `simple_value` (SummaryWriter, rsl_rl) or as one-element tensors (TF2, newer
writers). The records SummaryWriter writes for one scalar have one fixed layout, decoded here
directly; everything else goes through `event_pb2`. See bench/read_logs_speed.py for the speed.
"""
from __future__ import annotations

import struct
from collections import deque
from pathlib import Path
from typing import Generator, Iterator

import numpy as np

Scalar = tuple[int, float, float]  # (step, wall_time, value)

EVENTS_GLOB = "events.out.tfevents.*"
_HEADER = 12  # uint64 length + uint32 length CRC
_unpack = struct.unpack_from
# TensorProto dtype -> (numpy dtype for tensor_content, repeated field holding values)
_TENSOR_DTYPES = {1: ("<f4", "float_val"), 2: ("<f8", "double_val"), 3: ("<i4", "int_val"),
                  9: ("<i8", "int64_val"), 19: ("<f2", "half_val")}


def event_files(path: str | Path) -> list[Path]:
    """The events files of a run directory (oldest first), or [path] for a file."""
    p = Path(path)
    if p.is_file():
        return [p]
    files = sorted(p.glob(EVENTS_GLOB)) or sorted(p.rglob(EVENTS_GLOB))
    return [f for f in files if f.is_file()]


def _simple_scalar(data: bytes, s: int, end: int):
    """(tag, step, wall, value) when the record is SummaryWriter's one-simple-value layout, else None:
    09 <wall f64> 10 <step varint> 2a <len> 0a <len> 0a <taglen> <tag> 15 <value f32>."""
    if data[s] != 0x09 or data[s + 9] != 0x10:
        return None
    i = s + 10
    b = data[i]
    step = b & 0x7F
    shift = 7
    i += 1
    while b & 0x80:
        if i >= s + 20:  # not a varint: some other layout
            return None
        b = data[i]
        step |= (b & 0x7F) << shift
        shift += 7
        i += 1
    if step >= 1 << 63:
        step -= 1 << 64
    if (i + 6 > end or data[i] != 0x2A or data[i + 1] >= 0x80 or data[i + 2] != 0x0A
            or data[i + 3] >= 0x80 or data[i + 4] != 0x0A):
        return None
    taglen = data[i + 5]
    k = i + 6 + taglen
    if taglen >= 0x80 or k + 5 != end or data[k] != 0x15:
        return None
    return data[i + 6:k], step, _unpack("<d", data, s + 1)[0], _unpack("<f", data, k + 1)[0]


def _tensor_scalar(t) -> float | None:
    if t.dtype not in _TENSOR_DTYPES:
        return None
    np_dtype, field = _TENSOR_DTYPES[t.dtype]
    if t.tensor_content:
        arr = np.frombuffer(t.tensor_content, dtype=np_dtype)
        return float(arr[0]) if arr.size == 1 else None
    vals = getattr(t, field)
    if len(vals) != 1 or any(d.size != 1 for d in t.tensor_shape.dim):
        return None
    if field == "half_val":  # stored as uint16 bit patterns
        return float(np.array(vals[0], dtype=np.uint16).view(np.float16))
    return float(vals[0])


def _proto_scalars(record: bytes) -> Iterator[tuple[str, int, float, float]]:
    from tensorboard.compat.proto import event_pb2

    try:
        ev = event_pb2.Event.FromString(record)
    except Exception:  # a corrupt record (torn write): skip it, keep reading
        return
    for v in ev.summary.value:
        kind = v.WhichOneof("value")
        if kind == "simple_value":
            yield v.tag, ev.step, ev.wall_time, v.simple_value
        elif kind == "tensor":
            value = _tensor_scalar(v.tensor)
            if value is not None:
                yield v.tag, ev.step, ev.wall_time, value


def _records(data: bytes, tags: dict[bytes, str]) -> Generator[tuple[str, int, float, float], None, int]:
    """(tag, step, wall_time, value) of the complete records in `data`; returns the bytes they take (a
    writer's unfinished last record is left for the next read). `tags` caches decoded tag names."""
    pos, size = 0, len(data)
    while pos + _HEADER <= size:
        (length,) = _unpack("<Q", data, pos)
        start = pos + _HEADER
        end = start + length
        if end + 4 > size:
            break  # the writer's unfinished record (or a truncated file)
        pos = end + 4
        fast = _simple_scalar(data, start, end) if length > 20 else None
        if fast is not None:
            raw, step, wall, value = fast
            tag = tags.get(raw)
            if tag is None:
                tag = tags[raw] = raw.decode("utf-8", "replace")
            yield tag, step, wall, value
        else:
            yield from _proto_scalars(data[start:end])
    return pos


def iter_scalars(path: str | Path) -> Iterator[tuple[str, int, float, float]]:
    """(tag, step, wall_time, value) for every scalar in one events file, in file order."""
    try:
        data = Path(path).read_bytes()
    except OSError:
        return
    yield from _records(data, {})


class ScalarFollower:
    """The newest point of each tag of a run directory that is still being written, for live numbers:
    each `update` reads only the bytes its events files gained since the last one."""

    def __init__(self):
        self._read: dict[Path, int] = {}  # events file -> bytes of complete records read
        self._tags: dict[bytes, str] = {}
        self.latest: dict[str, Scalar] = {}

    def update(self, path: str | Path) -> dict[str, Scalar]:
        for f in event_files(path):
            done = self._read.get(f, 0)
            try:
                with open(f, "rb") as fh:
                    fh.seek(done)
                    data = fh.read()
            except OSError:
                continue
            for tag, step, wall, value in self._new(f, done, data):
                self.latest[tag] = (step, wall, value)
        return self.latest

    def _new(self, f: Path, done: int, data: bytes):
        self._read[f] = done + (yield from _records(data, self._tags))


def read_scalars(run_dir_or_file: str | Path, last: int | None = None) -> dict[str, list[Scalar]]:
    """tag -> [(step, wall_time, value), ...] in write order over all the run's events files;
    with `last`, only the last `last` points of each tag are kept."""
    out: dict[str, deque | list] = {}
    for f in event_files(run_dir_or_file):
        for tag, step, wall, value in iter_scalars(f):
            points = out.get(tag)
            if points is None:
                points = out[tag] = deque(maxlen=last) if last else []
            points.append((step, wall, value))
    return {tag: list(points) for tag, points in out.items()}


def latest_scalars(path: str | Path) -> dict[str, Scalar]:
    """tag -> (step, wall_time, value) of the last point written for each tag."""
    latest: dict[str, Scalar] = {}
    for f in event_files(path):
        for tag, step, wall, value in iter_scalars(f):
            latest[tag] = (step, wall, value)
    return latest
