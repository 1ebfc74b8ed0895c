"""A seed searched from scratch that trains its coarse grid from the middle out (bnexp.analysis.edges.
coarse_points, `sweep.lr.coarse=outward`) ends at the brackets the whole coarse grid gives, then bisected
alike, in as many trials or fewer: checked against the oracle of tests/analysis/test_warm_start.py for every
pair of edge positions on the search's lattice and off it."""

from __future__ import annotations

from test_warm_start import EDGES, GRID, PTS, RES, RULE, brackets, oracle, scratch, search, warm

from bnexp.analysis.edges import coarse_points, middle, next_points


def outward(train) -> list[dict]:
    def plan(t: list[dict]) -> list[float]:
        return coarse_points(t, GRID, RULE) or next_points(t, RULE, RES)

    return search(middle(GRID), plan, train)


def test_the_scan_starts_in_the_middle_of_the_grid():
    assert middle(GRID) == GRID[2:4] and middle(GRID[:5]) == [GRID[2]]
    assert coarse_points([], GRID, RULE) == GRID[2:4]
    assert coarse_points([], GRID, RULE, outward=False) == GRID


def test_an_outward_scan_finds_the_brackets_of_the_whole_grid_in_no_more_trials():
    checked = fewer = 0
    for lo, hi in [*EDGES, (2.3e-5, 0.0031), (1.01e-5, 0.99), (0.05, 0.06), (None, None), (PTS[24], PTS[24])]:
        own = oracle(lo, hi)
        a, b = scratch(own), outward(own)
        assert brackets(b) == brackets(a), (lo, hi)
        assert len(b) <= len(a), (lo, hi)
        checked += 1
        fewer += len(b) < len(a)
    assert checked > 100 and fewer > checked / 2


def test_a_range_in_the_middle_skips_the_grid_points_past_its_unstable_neighbours():
    """As the bench study's BN pre (depth 8), stable from about 0.003 to 0.1: the two grid points below the
    run's unstable neighbour are never trained, and seeds warm-started from it find their brackets as before."""
    own = oracle(PTS[20], PTS[33])  # 1e-3 to 0.02; the grid: 1e-5, 6.3e-5, 4e-4 | 2.5e-3, 0.016 | 0.1
    trained = {t["lr"] for t in outward(own)}
    assert not {GRID[0], GRID[1]} & trained and set(GRID[2:]) <= trained
    assert len(outward(own)) == len(scratch(own)) - 2
    for other in [(PTS[18], PTS[33]), (PTS[20], PTS[36]), (PTS[5], PTS[12])]:
        assert brackets(warm(oracle(*other), outward(own))) == brackets(scratch(oracle(*other))), other


def test_nothing_stable_in_the_middle_trains_the_whole_grid():
    for lo, hi in [(None, None), (PTS[1], PTS[4]), (PTS[36], PTS[40])]:
        got = outward(oracle(lo, hi))
        assert set(GRID) <= {t["lr"] for t in got}, (lo, hi)
        assert brackets(got) == brackets(scratch(oracle(lo, hi)))


def test_the_scan_waits_while_a_trial_of_its_seed_is_unfinished():
    assert coarse_points([{"state": "RUNNING", "lr": GRID[2], "seed": 0}], GRID, RULE) == []


def test_replayed_on_the_committed_studies_the_outward_search_ends_at_their_brackets():
    """bench/replay_search.py: each committed edge study's seeds searched again by today's planner, each recorded
    trial's result standing in for training it. The whole grid replays every from-scratch seed's recorded trials
    exactly (the replay is the search that ran); outward, every such seed ends at its recorded brackets, in
    fewer trials overall. (edges_d19_cl's pre seed 1 is the hole its batch-statistics pass found, which a
    population pass alone does not see: docs/results.md.)"""
    import sys

    from helpers.env import REPO

    sys.path.insert(0, str(REPO / "bench"))
    from replay_search import RESOLUTION, study

    saved = 0
    for name in RESOLUTION:
        for r in study(name, REPO / "docs" / "results")["seeds"]:
            if r["search"] != "outward":
                continue
            if name in ("edges_d19", "edges_depth", "bn_momentum"):  # every seed searched from scratch
                assert r["replayed_whole_grid"] == r["recorded"], (name, r)
                assert r["same_brackets"], (name, r)
            else:  # init_scale, at resolution 0.25, bisected some brackets once more (bnexp.analysis.edges.WIDTH_TOL)
                assert r["relation"] in ("same", "holds") and r["replayed_whole_grid"] <= r["recorded"], (name, r)
            saved += r["replayed_whole_grid"] - r["replayed"]
    assert saved >= 30


def test_a_bracket_as_wide_as_the_resolution_is_not_bisected_again():
    """A resolution that halves the grid's step exactly (1 decade, 0.25) gives 0.25-decade brackets on every
    edge: the ends' rounding to 6 digits (0.2500001 decades) no longer buys one more bisection on some."""
    from bnexp.analysis.edges import bracket_decades, lattice

    grid = [1e-5, 1e-4, 1e-3, 1e-2, 0.1, 1.0]
    for res, cell in ((0.25, 0.25), (0.5, 0.5), (0.15, 0.125)):
        pts = lattice(grid, res)
        assert {round(bracket_decades([a, b]), 4) for a, b in zip(pts, pts[1:], strict=False)} == {cell}, res
    assert next_points([oracle(1.5e-3, 0.15)(lr) for lr in (1e-3, 1.77828e-3, 0.01, 0.1, 0.177828)], RULE, 0.25) == []
