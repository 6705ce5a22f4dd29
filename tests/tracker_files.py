"""Readers of the files TensorBoard and W&B write, so tests check what a user would load:
TFRecord event files (uint64 length, uint32 crc, an `Event` proto, uint32 crc) and W&B's
offline run file (a LevelDB-style log of `Record` protos in 32 KiB blocks after a 7-byte
header)."""

from __future__ import annotations

import json
import struct
from pathlib import Path


def tensorboard_scalars(logdir: Path) -> dict[str, dict[int, float]]:
    """{tag: {step: value}} over every event file under logdir."""
    from tensorboardX.proto.event_pb2 import Event

    scalars: dict[str, dict[int, float]] = {}
    for path in sorted(Path(logdir).rglob("events.out.tfevents.*")):
        data, pos = path.read_bytes(), 0
        while pos < len(data):
            (length,) = struct.unpack("<Q", data[pos : pos + 8])
            event = Event.FromString(data[pos + 12 : pos + 12 + length])
            pos += 12 + length + 4
            for value in event.summary.value:
                scalars.setdefault(value.tag, {})[event.step] = value.simple_value
    return scalars


def wandb_history(run_file: Path) -> tuple[str, list[dict[str, object]]]:
    """(run id, the logged rows in order) of one offline `run-<id>.wandb` file."""
    from wandb.proto.wandb_internal_pb2 import Record

    data, pos, block = run_file.read_bytes(), 7, 32 * 1024
    assert data[:4] == b":W&B"
    records, partial = [], b""
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # a block's tail too short for a header is padding
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk, pos = data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 2):  # full, first
            partial = chunk
        elif kind in (3, 4):  # middle, last
            partial += chunk
        if kind in (1, 4):
            records.append(Record.FromString(partial))
    run_id = next(r.run.run_id for r in records if r.WhichOneof("record_type") == "run")
    rows = [_row(r.history) for r in records if r.WhichOneof("record_type") == "history"]
    return run_id, rows


def _row(history) -> dict[str, object]:
    # W&B stores a key with "/" either whole or split into `nested_key`, by version.
    return {i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in history.item}
