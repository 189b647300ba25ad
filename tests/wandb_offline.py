"""Read an offline W&B run (`wandb/offline-run-*/run-<id>.wandb`) back without network, for tests.

The .wandb file is a LevelDB-style log of wandb's protobuf Records: a 7-byte header (":W&B", magic
0xBEE1, version), then 32 KiB blocks of chunks [crc32c u32, length u16, type u8, data]; a record is
one FULL chunk or FIRST, MIDDLE..., LAST. wandb has no public reader for it any more.
"""

from __future__ import annotations

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32 * 1024
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path):
    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    pos, pending = 7, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer too small for a chunk header: zero padding
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind in (FULL, FIRST):
            pending = chunk
        elif kind in (MIDDLE, LAST):
            pending += chunk
        else:
            continue
        if kind in (FULL, LAST):
            record = pb.Record()
            record.ParseFromString(pending)
            yield record


def _items(items) -> dict:
    """{key: value} of config / history items; nested keys (media's fields) become nested dicts."""
    out = {}
    for item in items:
        *parents, last = [item.key] if item.key else list(item.nested_key)
        node = out
        for parent in parents:
            node = node.setdefault(parent, {})
        node[last] = json.loads(item.value_json)
    return out


@dataclass
class OfflineRun:
    dir: Path
    id: str
    project: str
    tags: list[str]
    notes: str
    group: str
    config: dict = field(default_factory=dict)
    history: list[dict] = field(default_factory=list)

    def values(self, key: str) -> list:
        return [row[key] for row in self.history if key in row]


def read_offline_run(run_dir: Path, timeout: float = 30.0) -> OfflineRun:
    """`run_dir`: a `wandb/offline-run-*` folder of a finished run.

    wandb's service writes the file in the background: run.finish() can return before it is on disk,
    so wait (up to `timeout` seconds) for the run's exit record.
    """
    (path,) = Path(run_dir).glob("run-*.wandb")
    deadline = time.monotonic() + timeout
    while True:
        found = list(records(path))
        if any(r.WhichOneof("record_type") == "exit" for r in found):
            break
        assert time.monotonic() < deadline, f"{path} has no exit record after {timeout} s"
        time.sleep(0.2)
    run = None
    for record in found:
        kind = record.WhichOneof("record_type")
        if kind == "run":
            r = record.run
            run = OfflineRun(Path(run_dir), r.run_id, r.project, list(r.tags), r.notes, r.run_group)
            run.config.update(_items(r.config.update))
        elif kind == "config":
            run.config.update(_items(record.config.update))
        elif kind == "history":
            run.history.append(_items(record.history.item))
    assert run is not None, f"no run record in {path}"
    return run


def offline_runs(save_dir: Path) -> list[Path]:
    """The offline runs under a WandbLogger's save_dir, oldest first."""
    return sorted((Path(save_dir) / "wandb").glob("offline-run-*"))
