"""Is an offline W&B record whole? Read the `.wandb` file wandb-core wrote, and its own log of failed writes.

wandb-core writes the `.wandb` transaction log in its own process, buffered, and closes it after `run.finish()`
has returned: a full disk or `ulimit -f` there never raises in ours, so `finish()` returns as if all were saved.
Reading the service's log at once missed a cut record about one time in four (its error line comes later), so
`record_errors` reads the record itself and waits for one of two outcomes.

The reader is written here because no Python reader of the format ships with wandb 0.31 (its reader is in the Go
service; the old `wandb.sdk.internal.datastore` is gone). The framing is LevelDB's log format, as `wandb sync`
reads it: a 7-byte `:W&B` header, then chunks in 32 KiB blocks, each with a 7-byte header (CRC-32 of type and
data, length, type: FULL, or FIRST/MIDDLE/LAST across blocks), holding protobuf `Record`s; `run.finish()`
writes the `exit` record.
"""

from __future__ import annotations

import json
import struct
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_BLOCK, _HEADER = 32768, 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4
_STORE_WORDS = ("writer", "store", "transactionlog", "file too large", "no space left")


class CutRecord(ValueError):
    """The record's framing breaks here: cut off, a checksum that fails, or bytes that are no chunk."""


def read_records(path: str | Path) -> Iterator[Any]:
    """The protobuf `Record`s of the `.wandb` file at `path`, in order; `CutRecord` where the framing breaks
    (after every whole record before it)."""
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    if data[:4] != b":W&B" or len(data) < _HEADER:
        raise CutRecord("no W&B header")
    pos, part = _HEADER, b""
    while pos < len(data):
        room = _BLOCK - pos % _BLOCK
        if room < _HEADER:  # a block's tail too short for a header is zero padding
            pos += room
            continue
        if pos + _HEADER > len(data):
            raise CutRecord(f"cut off at byte {len(data)}, inside a chunk header")
        crc, length, kind = struct.unpack("<IHB", data[pos : pos + _HEADER])
        chunk = data[pos + _HEADER : pos + _HEADER + length]
        if len(chunk) < length:
            raise CutRecord(f"cut off at byte {len(data)}, inside a {length}-byte chunk")
        if kind not in (_FULL, _FIRST, _MIDDLE, _LAST):
            raise CutRecord(f"no chunk at byte {pos} (type {kind})")
        if zlib.crc32(chunk, zlib.crc32(bytes([kind]))) & 0xFFFFFFFF != crc:
            raise CutRecord(f"the chunk at byte {pos} fails its checksum")
        pos += _HEADER + length
        part = chunk if kind in (_FULL, _FIRST) else part + chunk
        if kind in (_FULL, _LAST):
            yield wandb_internal_pb2.Record.FromString(part)


def record_state(path: str | Path) -> str | None:
    """None when the `.wandb` file at `path` is whole (every chunk complete and checked, an `exit` record in
    it), else why not."""
    try:
        kinds = [r.WhichOneof("record_type") for r in read_records(path)]  # all: a chunk after exit is checked too
    except CutRecord as e:
        return str(e)
    except OSError as e:
        return f"unreadable: {e.strerror}"
    return None if "exit" in kinds else "no exit record: the run's end was never written"


def _service_errors(d: Path) -> list[str]:
    """The failed store writes wandb-core logged for the record in `d` (logs/debug-internal.log, JSON lines)."""
    try:
        lines = (d / "logs" / "debug-internal.log").read_text(errors="replace").splitlines()
    except OSError:
        return []
    errors = []
    for line in lines:
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        msg = str(rec.get("msg", "")) if isinstance(rec, dict) else ""
        if rec.get("level") == "ERROR" and any(w in msg.lower() for w in _STORE_WORDS):
            errors.append(msg)
    return errors


def record_errors(where: str | Path, wait_s: float = 30.0) -> list[str]:
    """Why the offline record in `where` (an offline-run-* dir) is not whole; empty when it is.

    Waits, up to `wait_s`, for every record file to be whole (`record_state`) or for the service to log a
    failed store write (its words, e.g. "file too large", are the reason). A record still not whole then is
    cut, for the framing's reason."""
    d = Path(where)
    deadline = time.monotonic() + wait_s
    while True:
        records = sorted(d.glob("*.wandb"))
        states = [record_state(r) for r in records]
        if records and not any(states):
            return []
        errors = _service_errors(d)
        if errors:
            return errors
        if time.monotonic() >= deadline:
            if not records:
                return [f"no record file in {d}"]
            return [f"{r.name}: {s}" for r, s in zip(records, states, strict=True) if s]
        time.sleep(0.1)
