"""sweep.json, read and written by bnexp.sweep_file only: today's record, an older sweep's, a damaged one."""

from __future__ import annotations

import json

import pytest

from bnexp import sweep_file
from bnexp.cli import ConfigError


def test_a_record_reads_back_as_written(tmp_path):
    rec = sweep_file.SweepFile("s", "sqlite:///study.db", 4, "s-0123abcd", "python -m bnexp.sweep sweep.name=s")
    rec.write(tmp_path)
    assert sweep_file.exists(tmp_path) and sweep_file.read(tmp_path) == rec
    assert json.loads((tmp_path / "sweep.json").read_text())["wandb_group"] == "s-0123abcd"  # the file's own keys


def test_an_older_sweeps_record_is_still_read(tmp_path):
    """Before the W&B group and the command were recorded a sweep wrote three keys; a later one may add keys."""
    (tmp_path / "sweep.json").write_text(json.dumps({"study": "old", "storage": "sqlite:///x.db", "design_size": 8}))
    rec = sweep_file.read(tmp_path)
    assert (rec.study, rec.storage, rec.design_size, rec.wandb_group, rec.command) == (
        "old",
        "sqlite:///x.db",
        8,
        None,
        None,
    )
    (tmp_path / "sweep.json").write_text(json.dumps({"study": "new", "storage": "sqlite:///x.db", "later_key": 1}))
    assert sweep_file.read(tmp_path).study == "new"


@pytest.mark.parametrize("text", ['{"study": "s"', '["s"]', '{"study": 3, "storage": "x"}', '{"storage": "x"}'])
def test_a_damaged_record_names_how_to_rebuild(tmp_path, text):
    (tmp_path / "sweep.json").write_text(text)
    with pytest.raises(ConfigError, match=r"sweep.json is damaged .*rebuild with --storage URL --study-name NAME"):
        sweep_file.read(tmp_path)


def test_the_dashboard_reads_the_group_from_the_record_and_refuses_an_older_one(tmp_path):
    from bnexp.tracking.dashboard import _group

    sweep_file.SweepFile("t", "sqlite:///x", wandb_group="t-0123abcd").write(tmp_path)
    assert _group(str(tmp_path)) == "t-0123abcd"
    (tmp_path / "sweep.json").write_text(json.dumps({"study": "t", "storage": "sqlite:///x"}))  # before groups
    with pytest.raises(SystemExit):
        _group(str(tmp_path))
