"""`python -m bnexp.sweep ... --dry-run`: a header (size, storage masked, out dir, cost when known), the design
on stdout, and nothing written anywhere."""

import os

from helpers.env import bnexp
from helpers.sweeps import sweep_args


def _tree(root):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns) for p in root.rglob("*"))


def test_dry_run_prints_a_header_and_writes_nothing(tmp_path):
    r = bnexp("sweep", "sweep=lr_stability", "sweep.lr.points=3", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert len(r.stdout.splitlines()) == 27  # stdout: the design, one point a line (3 variants x 3 seeds x 3)
    assert "3 variant(s) x 3 seed(s) [0, 1, 2] x 3 lr(s) [1e-05, 1] = 27 trials of 800 steps" in r.stderr
    assert f"storage: sqlite:///{tmp_path}/outputs/sweeps/lr_stability/study.db" in r.stderr
    assert "out dir: outputs/sweeps/lr_stability" in r.stderr and "estimated cost: unknown" in r.stderr
    assert list(tmp_path.iterdir()) == []  # no out dir, no sweep.log, no study.db


def test_dry_run_of_a_started_study_estimates_its_cost_and_leaves_it_alone(tmp_path):
    out = tmp_path / "sw"
    args = sweep_args(out, name="dr", points=2)
    r = bnexp("sweep", *args, "--max-trials", "1")
    assert r.returncode == 0, r.stderr[-2000:]
    before = _tree(out)
    r = bnexp("sweep", *args, "--dry-run")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "= 4 trials" in r.stderr and f"out dir: {out}" in r.stderr
    assert "estimated cost: 3 trials left x" in r.stderr and "mean wall time of 1 finished" in r.stderr
    assert _tree(out) == before


def test_dry_run_honours_hydra_run_dir(tmp_path):
    where = tmp_path / "elsewhere"
    r = bnexp("sweep", "sweep.lr.points=2", f"hydra.run.dir={where}", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    assert f"out dir: {where}" in r.stderr and f"storage: sqlite:///{where}/study.db" in r.stderr
    assert not where.exists() and list(tmp_path.iterdir()) == []


def test_dry_run_stops_where_the_real_command_would_on_a_storage_that_does_not_open(tmp_path):
    """A server that refuses the login (or is not there: port 1) is the error the real command stops on: one
    line, exit 2, the URL masked; not "estimated cost: unknown"."""
    url = "postgresql://bnexp:s3cret@127.0.0.1:1/db"
    env = {**os.environ, "BNEXP_STORAGE": url, "BNEXP_LOG": "WARNING", "OMP_NUM_THREADS": "1"}
    r = bnexp("sweep", "sweep.lr.points=2", f"hydra.run.dir={tmp_path / 'o'}", "--dry-run", cwd=tmp_path, env=env)
    assert r.returncode == 2, r.stderr[-2000:]
    assert r.stderr.strip().splitlines()[-1].startswith("bnexp: error: cannot open storage 'postgresql://bnexp:***@")
    assert "s3cret" not in r.stdout + r.stderr and "estimated cost" not in r.stderr
    assert list(tmp_path.iterdir()) == []


def test_dry_run_estimates_an_edge_search_with_its_bisections():
    """The design of an edge search holds only its coarse grid; --dry-run says what the bisections and the
    later seeds add, as an estimate. The committed init_scale study (every seed from scratch) took 174 trials:
    inside the estimate's range for that setting."""
    import re

    r = bnexp("sweep", "sweep=init_scale", "sweep.lr.warm_start=false", "--dry-run")
    assert r.returncode == 0, r.stderr
    m = re.search(r"an estimate of (\d+) trials in all \((\d+) where nothing is stable, up to (\d+) where", r.stderr)
    assert m, r.stderr
    typical, low, high = map(int, m.groups())
    assert low <= 174 <= high and low <= typical <= high
    assert "what it finds decides" in r.stderr
    warm = bnexp("sweep", "sweep=init_scale", "sweep.lr.coarse=all", "--dry-run")
    assert "the design holds 36 points (the first seed's coarse grid)" in warm.stderr
    assert len(warm.stdout.strip().splitlines()) == 36
    outward = bnexp("sweep", "sweep=init_scale", "--dry-run")  # the defaults: 6 variants x their 2 middle points
    assert "the design holds 12 points (the middle of the first seed's coarse grid; the rest" in outward.stderr
    assert len(outward.stdout.strip().splitlines()) == 12
