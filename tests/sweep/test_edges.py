"""The edge search (`sweep.lr.search=edges`) through the real command: a coarse grid, then bisection of each
edge of every seed's stable range until its bracket is within the resolution; each point trained once, also
after a kill -9 and with two workers."""

from __future__ import annotations

import collections
import csv
import json
import math
import signal
import subprocess
import time

import optuna
import pytest
from helpers.env import REPO, bnexp, child_env
from helpers.sweeps import cli, completed_keys

from bnexp.analysis.edges import bracket_decades

RESOLUTION = 0.5
EDGES = [
    "sweep.lr.search=edges",
    f"sweep.lr.resolution={RESOLUTION}",
    "sweep.lr.low=1e-4",
    "sweep.lr.high=10",
    "trainer.max_steps=30",
    "trainer.val_every=15",
    "sweep.rule.statistics=batch",  # 30 steps are too few for BN's running averages (momentum 0.01) to follow
    "sweep.rule.threshold=0.5",
]


def _check_edges(out, variants: int) -> dict:
    """Every closed bracket within the resolution, its ends judged as the report says (stable, unstable), each
    point trained once; returns summary.json."""
    s = json.loads((out / "summary.json").read_text())
    assert len(s["variants"]) == variants
    stable = {}
    with open(out / "trials.csv") as f:
        for row in csv.DictReader(f):
            stable[(row["bn"], row["seed"], float(row["lr"]))] = row["stable"] == "True"
    for v in s["variants"]:
        e = v["edges"]
        assert e["n_trials"] == v["n_trials"]
        for seed, es in e["per_seed"].items():
            for side in ("low", "high"):
                if es[side] is None:
                    continue
                width = bracket_decades(es[side])
                assert width is None or width <= RESOLUTION + 1e-9, (v["label"], seed, side, es[side])
                assert stable[(v["bn"], seed, es[side][0])]
                if es[side][1] is not None:
                    assert not stable[(v["bn"], seed, es[side][1])]
    study, done = completed_keys(out)
    assert set(done.values()) == {1}  # every point trained once
    return s


def test_edge_search_brackets_each_edge_within_the_resolution_in_fewer_trials(tmp_path):
    out = tmp_path / "sw"
    r = subprocess.run(cli(out, *EDGES, points=5), cwd=REPO, env=child_env(), capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    s = _check_edges(out, 2)
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    phases = collections.Counter(t.user_attrs.get("phase", "grid") for t in study.trials)
    # the design: each variant's middle coarse point; the search plans the rest of the grid outward, then bisects
    assert phases["grid"] == 2 and phases["coarse"] >= 4 and phases["bisect"] > 0, phases
    # a grid as fine as the resolution over the same 5 decades needs 5 / 0.5 + 1 = 11 points per variant and seed
    assert all(v["n_trials"] < 11 for v in s["variants"]), [v["n_trials"] for v in s["variants"]]
    for v in s["variants"]:  # a variant with nothing stable says so and is not bisected
        if not v["edges"]["n_seeds_stable"]:
            assert v["n_trials"] == 5 and "s0: nothing stable" in (out / "report.md").read_text()
    md = (out / "report.md").read_text()
    assert "## Edges" in md and "![edges](edges.png)" in md


def test_a_killed_edge_search_goes_on_and_trains_every_point_once(tmp_path):
    out = tmp_path / "sw"
    args = [*EDGES, "sweep.grid.model.bn=[pre]", "sweep.heartbeat=1", "sweep.grace=3"]
    p = subprocess.Popen(cli(out, *args, points=5), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 600
    while time.time() < deadline and p.poll() is None:  # kill -9 inside a bisection trial
        try:
            study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
            if any(t.state.name == "RUNNING" and t.user_attrs.get("phase") == "bisect" for t in study.trials):
                break
        except Exception:
            pass
        time.sleep(0.2)
    assert p.poll() is None, "the search ended before it bisected"
    p.send_signal(signal.SIGKILL)
    p.wait()
    r = subprocess.run(cli(out, *args, points=5), cwd=REPO, env=child_env(), capture_output=True, text=True,
                       timeout=900)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    _check_edges(out, 1)
    states = collections.Counter(t.state.name for t in optuna.load_study(
        study_name="t", storage=f"sqlite:///{out / 'study.db'}").trials)  # fmt: skip
    assert states["FAIL"] == 1  # the killed trial, retried


@pytest.mark.slow  # the default suite keeps the killed-and-rerun edge search and two workers sharing a grid
@pytest.mark.filterwarnings("ignore")
def test_two_workers_share_an_edge_search_and_train_every_point_once(tmp_path):
    out = tmp_path / "sw"
    args = [a for a in cli(out, *EDGES, points=5)[3:] if a != "sweep.jobs=1"]
    r = bnexp("sweep", *args, "sweep.jobs=2", cwd=tmp_path, env=child_env(OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr[-3000:]
    _check_edges(out, 2)
    study, _ = completed_keys(out)
    assert len({t.user_attrs.get("worker") for t in study.trials if t.state.name == "COMPLETE"}) == 2


@pytest.mark.slow  # a fine grid besides the search (~45 trials); the search alone is checked by default above
def test_the_search_agrees_with_a_fine_grid_on_the_same_config_in_fewer_trials(tmp_path):
    """The same config, seeds and steps two ways through the real command: the edge search (5 coarse points,
    resolution 0.5) and a 15-point grid (0.5-decade steps) over the same 7 decades. Each edge of each seed
    that both find lies within one grid step of the grid's (bracket midpoints, in decades), and the search
    trained fewer trials than the grid for every variant."""
    search, grid = tmp_path / "search", tmp_path / "grid"
    wide = [*EDGES, "sweep.lr.low=1e-6"]  # 7 decades: BN pre's low edge lies inside them, not below 1e-4
    fine = [a for a in wide if not a.startswith(("sweep.lr.search", "sweep.lr.resolution"))]
    for args in (cli(search, *wide, points=5), cli(grid, *fine, points=15)):
        r = subprocess.run(args, cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=1800)
        assert r.returncode == 0, r.stderr[-3000:]
    s = {v["label"]: v for v in json.loads((search / "summary.json").read_text())["variants"]}
    g = {v["label"]: v for v in json.loads((grid / "summary.json").read_text())["variants"]}
    step = 7 / 14  # decades between neighbouring grid points
    compared = 0
    for label, v in s.items():
        assert v["n_trials"] < g[label]["n_trials"], (label, v["n_trials"], g[label]["n_trials"])
        for seed, es in v["edges"]["per_seed"].items():
            gs = g[label]["edges"]["per_seed"][seed]
            for side in ("low", "high"):
                a, b = es[side], gs[side]
                if not a or not b or None in (*a, *b):  # an edge beyond the range: nothing to compare
                    continue
                mid = lambda br: (math.log10(br[0]) + math.log10(br[1])) / 2  # noqa: E731
                assert abs(mid(a) - mid(b)) <= step + 1e-9, (label, seed, side, a, b)
                compared += 1
    assert compared >= 2, (s, g)  # the comparison compared something (BN pre's two edges at least)
