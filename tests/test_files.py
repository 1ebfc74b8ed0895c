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


def test_a_staged_set_lands_together_or_not_at_all(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from bnexp.files import staged

    write_text_atomic(tmp_path / "a.txt", "a0")
    write_text_atomic(tmp_path / "b.txt", "b0")
    with staged():
        write_text_atomic(tmp_path / "a.txt", "a1")
        assert (tmp_path / "a.txt").read_text() == "a0"  # not yet: the set lands at the end
        write_text_atomic(tmp_path / "b.txt", "b1")
    assert [(tmp_path / f).read_text() for f in ("a.txt", "b.txt")] == ["a1", "b1"]
    real_fsync = os.fsync
    calls = []

    def full_disk_on_the_second_file(fd):
        calls.append(fd)
        if len(calls) == 2:
            raise OSError(28, "No space left on device")
        return real_fsync(fd)

    monkeypatch.setattr(os, "fsync", full_disk_on_the_second_file)
    with pytest.raises(OSError, match="No space left"), staged():
        write_text_atomic(tmp_path / "a.txt", "a2")
        write_text_atomic(tmp_path / "b.txt", "b2")
    assert [(tmp_path / f).read_text() for f in ("a.txt", "b.txt")] == ["a1", "b1"]  # neither half landed
    assert sorted(x.name for x in tmp_path.iterdir()) == ["a.txt", "b.txt"]  # no temp files left


def test_the_temp_of_a_write_killed_mid_way_is_cleaned_by_the_next_write(tmp_path: Path) -> None:
    """kill -9 of a real process while it writes a big file: its temp stays; the next write of the same file
    removes it (and leaves the temp of a live writer alone)."""
    import signal
    import subprocess
    import sys
    import time

    target = tmp_path / "summary.json"
    write_text_atomic(target, "old")
    child = subprocess.Popen(
        [sys.executable, "-c", "import sys; from bnexp.files import write_bytes_atomic as w; "
         "w(sys.argv[1], b'x' * 400_000_000)", str(target)]
    )  # fmt: skip
    deadline = time.time() + 60
    while not list(tmp_path.glob(".summary.json.*.tmp")) and time.time() < deadline and child.poll() is None:
        time.sleep(0.005)
    child.send_signal(signal.SIGKILL)
    child.wait()
    left = list(tmp_path.glob(".summary.json.*.tmp"))
    assert left and target.read_text() == "old"  # killed mid-write: the temp is there, the file whole
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:  # a temp named for a live process on this host is another writer's, in use
        in_use = tmp_path / left[0].name.replace(f"-{child.pid}.", f"-{live.pid}.")
        in_use.write_text("busy")
        write_text_atomic(target, "new")
        assert target.read_text() == "new"
        assert sorted(p.name for p in tmp_path.iterdir()) == sorted([in_use.name, "summary.json"])
    finally:
        live.kill()
        live.wait()
