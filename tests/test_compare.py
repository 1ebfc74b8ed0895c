"""`python -m bnexp.compare`: studies joined into one table and one figure, as a user runs it."""

import csv

from helpers.env import REPO, bnexp
from helpers.sweeps import sweep_args

REFERENCE = REPO / "docs" / "results"


def _rows(out):
    with open(out / "compare.csv") as f:
        return list(csv.DictReader(f))


def test_compare_committed_studies_width_against_depth(tmp_path):
    r = bnexp("compare", str(REFERENCE / "depth_ablation"), str(REFERENCE / "lr_stability_d19"), "--out", str(tmp_path))
    assert r.returncode == 0, r.stderr[-3000:]
    assert "x = model.depth" in r.stdout  # depth differs inside the ablation and between the two studies
    rows = _rows(tmp_path)
    assert len(rows) == 6 + 3
    by = {(row["model.bn"], row["model.depth"]): float(row["width"]) for row in rows}
    assert by[("pre", "4")] > by[("off", "4")] > 0 and by[("off", "19")] == 0 and ("post", "19") in by
    assert (tmp_path / "compare.png").read_bytes()[:4] == b"\x89PNG"
    md = (tmp_path / "compare.md").read_text()
    assert "`model.depth`" in md and md.count("\n| ") == 1 + 9


def test_compare_sweep_multirun_jobs_by_init_std_as_svg(tmp_path):
    out = tmp_path / "sw"
    args = [a for a in sweep_args(out, name="cmp", points=2) if not a.startswith("sweep.grid")]
    r = bnexp("sweep", "-m", *args, "sweep.grid.model.bn=[pre]", "model.init_std=0.05,0.1")
    assert r.returncode == 0, r.stderr[-3000:]
    r = bnexp("compare", str(out), "--out", str(tmp_path / "cmp"), "--format", "svg")
    assert r.returncode == 0, r.stderr[-3000:]
    rows = _rows(tmp_path / "cmp")
    assert sorted(row["model.init_std"] for row in rows) == ["0.05", "0.1"] and "x = model.init_std" in r.stdout
    assert (tmp_path / "cmp" / "compare.svg").read_text().lstrip().startswith("<?xml")


def test_compare_bad_input_one_line(tmp_path):
    r = bnexp("compare", str(tmp_path / "missing"), "--out", str(tmp_path / "o"))
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "not a directory" in r.stderr
    assert not (tmp_path / "o" / "compare.csv").exists()
