"""Result files written whole or not at all: a temp file in the same directory, then os.replace.

A reader (a report, a resumed sweep, a test) sees the old file or the new one, never half of one, also
when the writer is killed mid-write.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write `text` to `path` through a temp file in the same directory and os.replace."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """`obj` as indented JSON, written as write_text_atomic does."""
    write_text_atomic(path, json.dumps(obj, indent=2))
