"""Result files are written whole or not at all: every writer goes through a temp file in the same directory,
flushed and fsynced, then renamed over the target (`os.replace` is atomic on POSIX). A reader (a dashboard,
`python -m bnexp.report` beside a sweep, a second worker) sees the old file or the new one, never a cut-off
one, whatever happens meanwhile (a full disk, kill -9, a concurrent writer). A write that fails raises
`FileWriteError` (a UsageError and an OSError: one line naming the file, exit 2) and leaves the previous file
as it was. The temp file of a write that was killed (kill -9, a power cut) is removed by the next write of the
same file.

A set of files that belong together (a report: summary.json, trials.csv, the figures, report.md) is written
inside `staged()`: every file goes to its temp file first and only when all are written are they renamed, so a
full disk leaves the whole previous set in place, never half a new report beside half an old one.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bnexp.cli import UsageError


class FileWriteError(UsageError, OSError):
    """A result file could not be written (disk full, no permission, a path under a regular file)."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_STAGE: list[list[tuple[str, Path]]] = []  # open staged() blocks: (temp file, target) pairs to rename


@contextlib.contextmanager
def staged() -> Iterator[None]:
    """Write a set of files together: inside the block each write goes to its temp file; at the end, once every
    one is written, all are renamed over their targets. On an error nothing is renamed and the temps go."""
    _STAGE.append([])
    try:
        yield
        pending = _STAGE[-1]
        while pending:  # renames need no space: once every temp is written, the set lands whole
            tmp, path = pending[0]
            os.replace(tmp, path)
            pending.pop(0)
    finally:
        for tmp, _ in _STAGE.pop():
            try:
                os.unlink(tmp)
            except OSError:
                pass


def _writer_tag() -> str:
    import socket

    return f"{socket.gethostname().replace('.', '_')}-{os.getpid()}"


def _clean_stale_temps(path: Path) -> None:
    """Remove the temp files of earlier writes of `path` whose writer is gone (kill -9 mid-write): a writer on
    this host whose process no longer exists, or any writer's temp untouched for a day (another host's)."""
    import socket
    import time

    host = socket.gethostname().replace(".", "_")
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        tag = tmp.name[len(path.name) + 2 :].split(".", 1)[0]  # .<name>.<host>-<pid>.<random>.tmp
        who, _, pid = tag.rpartition("-")
        try:
            if who == host and pid.isdigit():
                if int(pid) == os.getpid():
                    continue
                try:
                    os.kill(int(pid), 0)
                    continue  # a live writer of this host: its temp is in use
                except ProcessLookupError:
                    pass
                except PermissionError:
                    continue
            elif time.time() - tmp.stat().st_mtime < 86400:
                continue
            tmp.unlink()
        except OSError:
            pass


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _clean_stale_temps(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{_writer_tag()}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes it 0600; a result is as readable as any file
        if _STAGE:  # renamed with the rest of its set at the end of staged()
            _STAGE[-1].append((tmp, path))
        else:
            os.replace(tmp, path)
        tmp = None
        return path
    except OSError as e:
        raise FileWriteError(
            f"cannot write {path} ({e.strerror or e}); free disk space or fix the directory's permissions, "
            "then rerun: the previous file is unchanged"
        ) from None
    finally:
        if tmp is not None:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """`write_bytes_atomic` of `text` as UTF-8."""
    return write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Strict JSON (NaN/inf refused: callers turn non-finite floats into null first), indented."""
    return write_text_atomic(path, json.dumps(obj, indent=2, allow_nan=False) + "\n")
