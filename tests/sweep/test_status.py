"""`python -m bnexp.status`: a study's progress per variant, read from its storage while it runs; writes nothing."""

import hashlib

from helpers.env import bnexp
from helpers.sweeps import parts, run_sweep, sweep_args

from bnexp.sweep import liveness
from bnexp.sweep.status import render, status


def _digest(d):
    return {str(p): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


def test_status_counts_each_point_by_state_and_shows_the_range_so_far(tmp_path):
    out = tmp_path / "sw"
    run_sweep(sweep_args(out, points=3, extra=["--max-trials", "2", "sweep.rule.threshold=0.05"]))
    p = parts(sweep_args(out, points=3, extra=["sweep.rule.threshold=0.05"]))
    claimed = liveness.claim(p.study, heartbeat=0)  # a worker is training this point right now
    rows = {r["variant"]: r for r in status(p.study)}
    assert set(rows) == {"off-auto-d3", "pre-auto-d3"}
    total = {k: sum(r[k] for r in rows.values()) for k in ("done", "running", "waiting", "failed")}
    assert total == {"done": 2, "running": 1, "waiting": 3, "failed": 0}
    assert rows["off-auto-d3"]["done"] == 2 and rows["off-auto-d3"]["stable_lr_min"] is not None  # threshold 0.05
    assert "stable lr [" in render("t", list(rows.values()))
    before = _digest(out)
    r = bnexp("status", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "study t: 2 done, 1 running, 3 waiting, 0 failed" in r.stdout
    assert _digest(out) == before  # read-only: no report, no sweep.json rewrite, no new file
    assert claimed is not None
    r = bnexp("status", "--storage", f"sqlite:///{tmp_path}/none.db", "--study-name", "t", cwd=tmp_path)
    assert r.returncode == 2 and "no study storage at" in r.stderr and not (tmp_path / "none.db").exists()


def test_a_float_axis_keeps_each_variant_in_one_row_while_points_wait(tmp_path):
    """A grid over a float (`model.init_std`): a waiting point's variant is read from its key as a finished
    trial records it ("0.2", a string), so its row is the finished trials' row, not a second one (a float 0.2)."""
    out = tmp_path / "sw"
    grid = ["sweep.grid.model.bn=[pre]", "+sweep.grid.model.init_std=[0.05,0.2]"]
    run_sweep(sweep_args(out, points=2, extra=["--max-trials", "3", *grid]))
    rows = status(parts(sweep_args(out, points=2, extra=grid)).study)
    assert sorted(r["variant"] for r in rows) == ["pre-auto-d3-init0.05", "pre-auto-d3-init0.2"], rows
    assert sum(r["done"] for r in rows) == 3 and sum(r["waiting"] for r in rows) == 1
    assert all(r["done"] + r["waiting"] == 2 for r in rows)


def test_status_reads_a_saved_report_dir_as_a_finished_study():
    from helpers.env import REPO

    r = bnexp("status", str(REPO / "docs" / "results" / "edges_d19"))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "study lr_stability: 90 done, 0 running, 0 waiting, 0 failed" in r.stdout
    assert "pre-auto-d19" in r.stdout and "width 1.75 [1.63, 2.00] decades" in r.stdout and "finished" in r.stdout
