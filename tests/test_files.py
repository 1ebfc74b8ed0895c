"""Files written whole or not at all (bnexp.files)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from bnexp.files import write_bytes_atomic, write_json_atomic, write_text_atomic


def test_writes_replace_whole_files_and_leave_no_temp(tmp_path: Path) -> None:
    p = tmp_path / "report.md"
    write_text_atomic(p, "old")
    write_text_atomic(p, "new ✓")
    assert p.read_text(encoding="utf-8") == "new ✓"
    write_bytes_atomic(tmp_path / "f.png", b"\x89PNG")
    write_json_atomic(tmp_path / "s.json", {"a": [1, None]})
    assert json.loads((tmp_path / "s.json").read_text()) == {"a": [1, None]}
    assert sorted(x.name for x in tmp_path.iterdir()) == ["f.png", "report.md", "s.json"]
    mask = os.umask(0)
    os.umask(mask)
    assert p.stat().st_mode & 0o777 == 0o666 & ~mask  # as readable as a file opened with open()


def test_a_failed_write_keeps_the_old_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    p = tmp_path / "summary.json"
    write_json_atomic(p, {"v": 1})
    with pytest.raises(ValueError):
        write_json_atomic(p, {"v": float("nan")})  # not JSON: refused before anything is written
    monkeypatch.setattr(os, "replace", lambda *a: (_ for _ in ()).throw(OSError("disk full")))
    with pytest.raises(OSError, match="disk full"):
        write_json_atomic(p, {"v": 2})
    assert json.loads(p.read_text()) == {"v": 1}
    assert [x.name for x in tmp_path.iterdir()] == ["summary.json"]  # the temp file is gone
