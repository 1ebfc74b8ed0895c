"""A seed that starts from the first seed's brackets (bnexp.analysis.edges.warm_points) ends at the brackets a
search from scratch (the coarse grid, then next_points' bisection) finds, in fewer trials: checked against an
oracle of known edges, every pair of edge positions on the search's lattice and off it."""

from __future__ import annotations

import itertools
import math

import pytest

from bnexp.analysis.edges import bracket_decades, lattice, next_points, seed_edges, warm_points
from bnexp.analysis.stability import StabilityRule

RULE = StabilityRule()
GRID = [float(f"{10 ** (-5 + i * 0.8):.6g}") for i in range(6)]  # the reference studies' 6 coarse points
RES = 0.15


def oracle(low: float, high: float, islands: tuple = (), island_value: float = 0.95):
    """A seed whose stable lrs are exactly [low, high] (None: nothing stable), best in the middle of the range
    (as a net's accuracy peaks inside its stable range), plus stable `islands` outside it (a chaotic edge),
    judged `island_value` there."""
    mid = (math.log10(low) + math.log10(high)) / 2 if low is not None else 0.0

    def trial(lr: float) -> dict:
        ok = low is not None and low <= lr <= high
        half = max((math.log10(high) - math.log10(low)) / 2, 1e-9) if low is not None else 1.0
        value = 0.98 - 0.06 * abs(math.log10(lr) - mid) / half if ok else island_value if lr in islands else 0.1
        return {"state": "COMPLETE", "lr": lr, "seed": 0, "diverged": False, "val/acc": value}

    return trial


def search(first: list[float], plan, train) -> list[dict]:
    """Train `first`, then whatever `plan(trials)` asks, until it asks nothing."""
    trials = [train(lr) for lr in first]
    for _ in range(200):
        nxt = plan(trials)
        if not nxt:
            return trials
        trials += [train(lr) for lr in nxt]
    raise AssertionError("the search never ended")


def scratch(train) -> list[dict]:
    return search(GRID, lambda t: next_points(t, RULE, RES), train)


def warm(train, reference: list[dict]) -> list[dict]:
    return search(
        warm_points([], reference, GRID, RULE, RES), lambda t: warm_points(t, reference, GRID, RULE, RES), train
    )


def brackets(trials: list[dict]) -> tuple:
    e = seed_edges(trials, RULE)
    return (e["low"], e["high"])


PTS = lattice(GRID, RES)
EDGES = [(PTS[i], PTS[j]) for i, j in itertools.combinations_with_replacement(range(0, len(PTS), 3), 2)]


def test_the_lattice_is_what_bisection_from_scratch_trains():
    assert PTS[0] == GRID[0] and PTS[-1] == GRID[-1] and set(GRID) <= set(PTS)
    widths = {round(bracket_decades([a, b]), 3) for a, b in zip(PTS, PTS[1:], strict=False)}
    assert widths == {0.1}  # 0.8 decades halved three times: the finest cells, each <= 0.15
    # every point a search from scratch trains is on the lattice
    for lo, hi in EDGES[::7]:
        assert {t["lr"] for t in scratch(oracle(lo, hi))} <= set(PTS)


@pytest.mark.parametrize("ref_edges", [(PTS[10], PTS[25]), (PTS[3], PTS[38]), (PTS[0], PTS[12])])
def test_a_warm_seed_finds_the_brackets_a_search_from_scratch_finds(ref_edges):
    reference = scratch(oracle(*ref_edges))
    checked = 0
    for lo, hi in EDGES:
        own = oracle(lo, hi)
        a = scratch(own)
        if brackets(a)[0] is None:
            continue  # a range narrower than the coarse step, which a search from scratch does not see at all
        assert brackets(warm(own, reference)) == brackets(a), (ref_edges, lo, hi)
        checked += 1
    assert checked > 50


def test_a_warm_seed_near_the_first_seeds_edges_costs_fewer_trials():
    """Where a seed's edges lie within a few lattice cells of the first seed's (the committed studies: low
    edges the same bracket, high edges 0.25-0.75 decades apart) it trains fewer points than from scratch."""
    reference = scratch(oracle(PTS[10], PTS[25]))
    for di, dj in [(0, 0), (0, 2), (-1, 3), (1, -2), (0, -3)]:
        own = oracle(PTS[10 + di], PTS[25 + dj])
        assert len(warm(own, reference)) < len(scratch(own)) == 12, (di, dj)


def test_a_warm_seed_off_the_lattice_and_with_nothing_stable_still_agrees():
    reference = scratch(oracle(PTS[10], PTS[25]))
    for lo, hi in [(2.3e-5, 0.0031), (1.01e-5, 0.99), (0.05, 0.06), (None, None), (PTS[24], PTS[24])]:
        own = oracle(lo, hi)
        assert brackets(warm(own, reference)) == brackets(scratch(own)), (lo, hi)


def test_agreeing_seeds_cost_five_trials_where_from_scratch_costs_twelve():
    own = oracle(PTS[10], PTS[25])  # the same edges as the first seed
    reference = scratch(oracle(PTS[10], PTS[25]))
    assert len(scratch(own)) == 12
    assert len(warm(own, reference)) == 5  # the two brackets' ends and the first seed's best lr


def test_a_warm_seed_waits_while_its_own_trial_is_unfinished():
    reference = scratch(oracle(PTS[10], PTS[25]))
    running = [{"state": "RUNNING", "lr": PTS[10], "seed": 1}]
    assert warm_points(running, reference, GRID, RULE, RES) == []


def test_a_widening_seed_doubles_its_step():
    reference = scratch(oracle(PTS[30], PTS[38]))
    own = oracle(PTS[2], PTS[38])  # its low edge 2.8 decades below the reference's
    asked = [t["lr"] for t in warm(own, reference)]
    lows = sorted({math.log10(x) for x in asked if x < PTS[30]}, reverse=True)
    steps = [round(a - b, 2) for a, b in zip([math.log10(PTS[30])] + lows, lows, strict=False)]
    assert steps[:3] == [0.1, 0.1, 0.2], steps  # one cell, then doubling the distance walked


def test_a_stable_island_past_the_edge_does_not_capture_a_warm_seed():
    """Near a chaotic upper edge a seed can be stable at one lr past an unstable one (the depth-19 study's pre
    seed 2: 0.76 at lr 0.032, 0.95 at 0.042). A warm seed trains the first seed's best lr too, so its range is
    taken around it, as from scratch, and the island at the first seed's bracket end is left outside."""
    reference = scratch(oracle(PTS[10], PTS[25]))
    own = oracle(PTS[10], PTS[20], islands=(PTS[26],))
    assert brackets(scratch(own)) == ([PTS[10], PTS[9]], [PTS[20], PTS[21]])
    assert brackets(warm(own, reference)) == brackets(scratch(own))


def test_a_warm_seed_whose_only_stable_point_is_an_island_searches_from_scratch():
    """The bench study's pre seed 2 (depth 8, channels_last): unstable at the first seed's best lr (0.1) and at
    both ends of its low bracket, stable only at 0.133, one cell past its high bracket. Its own points made that
    lone island its whole range. The first seed's best lr outside its run sends it to the coarse grid, which
    finds its real run lower down, as a search from scratch does."""
    reference = scratch(oracle(PTS[10], PTS[25]))
    anchor = seed_edges(reference, RULE)["best_lr"]
    own = oracle(PTS[1], PTS[8], islands=(PTS[26],), island_value=0.91)
    assert brackets(scratch(own)) == ([PTS[1], PTS[0]], [PTS[8], PTS[9]])
    trials = warm(own, reference)
    assert brackets(trials) == brackets(scratch(own))
    assert {anchor, PTS[26]} <= {t["lr"] for t in trials} and set(GRID) <= {t["lr"] for t in trials}
