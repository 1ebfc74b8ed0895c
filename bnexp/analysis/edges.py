"""The edges of each variant's stable learning-rate range, per seed, and where to train next to sharpen them
(pure: no torch, Optuna or W&B).

A seed's *edges* bracket its unbroken stable range around its best lr (bnexp.analysis.stability, judged
by the rule on that seed's trials alone): the low edge lies between the first stable lr of the run and the
unstable lr just below it, the high edge between the run's last stable lr and the unstable lr just above
it. A bracket is `[stable_lr, unstable_lr]`; its width is |log10(unstable / stable)| decades, and the edge
estimate is its geometric midpoint. A run that reaches the end of the searched lr range has an *open*
edge (`unstable_lr` None): the range goes on past what was searched, and no search can narrow it.

`next_points` is the bisection the edge search (`sweep.lr.search=edges`) runs: for every closed bracket
wider than the resolution, the geometric midpoint of its ends. Why not one of Optuna's samplers: they look
for an optimum; a stability edge is a boundary, found by bisecting between a pass and a fail.

`edges` summarises a variant across seeds: each seed's brackets, and for each edge and for the width
log10(high / low) the median over seeds with the range (min, max) over seeds. With 3 or more seeds the
range is the spread of the seeds, not a confidence interval; where seeds disagree the range says how far.
This width is *the* width of bnexp (`add_widths` gives it to every variant of a report, load, compare and
W&B summary); the stable span of bnexp.analysis.stability is the other, named apart. In a grid study the
brackets are the grid's neighbouring lrs, so the width is known to one grid step.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from typing import Any

from bnexp.analysis.stability import RESULT_STATES, StabilityRule
from bnexp.analysis.stability import lr_key as _lr_key
from bnexp.analysis.stability import stable_range as _width
from bnexp.analysis.stability import state_of as _state

LR_DIGITS = 6  # bisection points are rounded like a trial's lr (bnexp.sweep.spec.trial_cfg), so keys agree
# a bracket within this many decades of the resolution is within it: rounding each end to 6 digits moves its
# width by up to 4e-6 decades, which made a 0.25-decade bracket read 0.2500001 and be bisected once more
# (0.125 decades at resolution 0.25 on some edges, 0.25 on others)
WIDTH_TOL = 1e-5


def wider(width: float | None, resolution: float) -> bool:
    """Whether a bracket `width` decades wide is wider than the `resolution` (beyond the ends' rounding)."""
    return width is not None and width > resolution + WIDTH_TOL


def seed_edges(trials: Sequence[dict], rule: StabilityRule) -> dict[str, Any]:
    """One seed's brackets: {"best_lr", "low": [stable, unstable|None] | None, "high": ..., "n_trials",
    "stable_past": {"low": [lr, ...], "high": [...]}}: the stable lrs it trained past an unstable one outside
    its run (below its low bracket, above its high one), where an edge is a chaotic band: the brackets hold
    the run around the best lr, and these say where stability came back."""
    complete = [r for r in trials if _state(r) in RESULT_STATES]  # a pruned trial: an unstable result
    w = _width(complete, rule)
    lrs = [p["lr"] for p in w["points"]]
    out: dict[str, Any] = {"n_trials": len(complete), "low": None, "high": None, "stable_lr_min": None,
                           "best_lr": None}  # fmt: skip
    if w["stable_lr_min"] is None:
        return out  # nothing stable: no edge to find
    lo, hi = lrs.index(w["stable_lr_min"]), lrs.index(w["stable_lr_max"])
    # the stable lr the run is taken around: the highest mean judged value (ties: the lowest lr)
    best = max((p for p in w["points"][lo : hi + 1] if p["mean"] is not None), key=lambda p: (p["mean"], -p["lr"]))
    out["best_lr"] = best["lr"]
    out["low"] = [lrs[lo], lrs[lo - 1] if lo > 0 else None]
    out["high"] = [lrs[hi], lrs[hi + 1] if hi + 1 < len(lrs) else None]
    out["stable_lr_min"], out["stable_lr_max"] = lrs[lo], lrs[hi]
    # stable lrs past an unstable one, outside the run (a chaotic band rather than an edge): said, not counted
    out["stable_past"] = {
        "low": [lrs[i] for i in range(lo) if w["points"][i].get("stable")],
        "high": [lrs[i] for i in range(hi + 1, len(lrs)) if w["points"][i].get("stable")],
    }
    return out


def bracket_decades(bracket: Sequence[float | None] | None) -> float | None:
    """Width of a closed bracket in decades; None for an open or missing one."""
    if not bracket or bracket[1] is None:
        return None
    return abs(math.log10(bracket[1] / bracket[0]))


def estimate(bracket: Sequence[float | None] | None) -> float | None:
    """The edge: the bracket's geometric midpoint; an open edge is its stable end (a bound, not a point)."""
    if not bracket:
        return None
    return bracket[0] if bracket[1] is None else math.sqrt(bracket[0] * bracket[1])


def midpoint(bracket: Sequence[float]) -> float:
    return float(f"{math.sqrt(bracket[0] * bracket[1]):.{LR_DIGITS}g}")


def next_points(trials: Sequence[dict], rule: StabilityRule, resolution: float) -> list[float]:
    """The lrs to train next for one seed of one variant: each closed bracket wider than `resolution` decades,
    bisected in log-lr; none while a trial of this seed is unfinished (its result may move the run)."""
    if any(_state(r) in ("WAITING", "RUNNING") for r in trials):
        return []
    e = seed_edges(trials, rule)
    have = {_lr_key(r) for r in trials}
    out = []
    for side in ("low", "high"):
        width = bracket_decades(e[side])
        if wider(width, resolution):
            mid = midpoint(e[side])
            if _lr_key({"lr": mid}) not in have and mid not in e[side]:
                out.append(mid)
    return out


def coarse_points(
    trials: Sequence[dict], grid: Sequence[float], rule: StabilityRule, outward: bool = True
) -> list[float]:
    """The coarse-grid points a seed searched from scratch still needs, before it bisects: all of `grid` not yet
    trained (`outward` False), or, outward (`sweep.lr.coarse=outward`), the grid from its middle out.

    Outward: the middle point(s) of the grid first (`middle`); then, on each side of the run of stable points
    they show, the next grid point out, until that side ends at an unstable point or at the grid's end; with
    no stable point yet, every point of the grid, as `all` does. The trained points are always a contiguous
    stretch of the grid, so each bracket is a grid cell whose unstable end is the stable run's neighbour, as
    with the whole grid. Under the assumption every edge search makes (a seed's stable lrs are one unbroken
    run containing a coarse point) it ends at the coarse brackets the whole grid gives, and then bisects them
    alike (tests/analysis/test_coarse_outward.py checks every pair of edges); the points past an unstable one are
    never trained. Where the stable lrs are not one run (a stable island past an unstable point, as a chaotic
    edge gives), the whole grid may take an island whose value is higher as the run; outward keeps the run
    that holds the middle of the grid.

    [] while a trial of this seed is unfinished (its result may move the run), and when the coarse stage is
    done (then `next_points` bisects)."""
    if any(_state(r) in ("WAITING", "RUNNING") for r in trials):
        return []
    have = {_lr_key(r) for r in trials}

    def fresh(lrs: Sequence[float]) -> list[float]:
        return [lr for lr in dict.fromkeys(lrs) if _lr_key({"lr": lr}) not in have]

    pts = sorted(float(g) for g in grid)
    if not outward or not pts:
        return fresh(pts)
    if not trials:
        return fresh(middle(pts))
    e = seed_edges([r for r in trials if _state(r) in RESULT_STATES], rule)
    if e["low"] is None:  # nothing stable yet: the rest of the grid, as a search of the whole grid
        return fresh(pts)
    out = []
    for side, d in (("low", -1), ("high", 1)):
        stable, unstable = e[side]
        if unstable is None:  # no unstable point trained past this end of the run: the next grid point out
            beyond = [g for g in pts if (g - stable) * d > 0]
            if beyond:
                out.append(max(beyond) if d < 0 else min(beyond))
    return fresh(out)


def middle(grid: Sequence[float]) -> list[float]:
    """The grid's middle point (an odd count) or two (an even count): where an outward scan starts."""
    pts = sorted(grid)
    n = len(pts)
    return pts[(n - 1) // 2 : n // 2 + 1]


def lattice(grid: Sequence[float], resolution: float) -> list[float]:
    """Every lr a search from scratch can train: the coarse `grid` and, cell by cell, the geometric midpoints
    (`midpoint`, rounded as a trial's lr) of neighbouring points, while a cell is wider than `resolution`
    decades, as `next_points` bisects. A closed edge found from scratch is a cell of its finest level."""
    pts = sorted({float(g) for g in grid})
    while True:
        new = {
            midpoint([a, b]) for a, b in zip(pts, pts[1:], strict=False) if wider(bracket_decades([a, b]), resolution)
        }
        new -= set(pts)  # a cell too narrow to split at 6 digits
        if not new:
            return pts
        pts = sorted(set(pts) | new)


def warm_points(
    trials: Sequence[dict], reference: Sequence[dict] | None, grid: Sequence[float], rule: StabilityRule,
    resolution: float,
) -> list[float]:  # fmt: skip
    """The lrs to train next for a seed that starts from an earlier seed's brackets (`reference`: that seed's
    finished trials of the same variant), on the `lattice` of a search from scratch.

    It first trains the ends of the reference's brackets (up to 4 points: the neighbourhood). An edge whose
    two ends it judges as the reference did is done. Where they disagree, it gallops on the lattice from the
    reference's edge in the direction its own points show (1, 3, 7, 15 ... cells beyond the reference's
    bracket, to the searched range's end: an open edge, as from scratch), then halves the gap that holds its
    edge until its bracket is one lattice cell. With none of its own points stable, it tries the middle of the
    reference's range, then the coarse grid, as a search from scratch does, and goes on from there.

    Where the first seed's best lr falls outside the run its own points show (a hole there, or the run is an
    island past an unstable point, as a chaotic edge gives), it trains the coarse grid, as from scratch, and goes
    on on the lattice from the run around its best lr (the bench study's pre seed 2: unstable at the first seed's
    best lr 0.1, stable at 0.133 alone, which became its whole range).

    Under the assumption every edge search makes, that a seed's stable lrs are one unbroken run containing a
    coarse grid point, it ends at the bracket a search from scratch ends at (tests/analysis/
    test_warm_start.py checks every pair of edges on a reference study's lattice), at the same resolution.
    It trains no point inside the range, so it cannot see a hole there (the bisection only trains near the
    edges too). Where a seed's edges lie within about 3 cells (0.3 decades at resolution 0.15) of the
    reference's it trains 4-9 points against 12 from scratch; far from them, about as many.

    None while a trial of this seed is unfinished (its result may move the run)."""
    if any(_state(r) in ("WAITING", "RUNNING") for r in trials):
        return []
    have = {_lr_key(r) for r in trials}

    def fresh(lrs: Sequence[float | None]) -> list[float]:
        return [lr for lr in dict.fromkeys(lrs) if lr is not None and _lr_key({"lr": lr}) not in have]

    ref = seed_edges(reference, rule) if reference else None
    done = [r for r in trials if _state(r) in RESULT_STATES]
    pts = lattice(grid, resolution)
    at = {_lr_key({"lr": p}): i for i, p in enumerate(pts)}
    if ref is None or ref["low"] is None:  # no range to start from: a search from scratch
        return fresh(grid) if not done else next_points(trials, rule, resolution) or []
    anchor = fresh([ref["best_lr"]])  # the first seed's best lr: this seed's run is taken around it, as from scratch
    if not done or anchor:
        return fresh([*anchor, *(x for side in ("low", "high") for x in ref[side])])
    own = seed_edges(done, rule)
    if own["low"] is not None and not own["stable_lr_min"] <= ref["best_lr"] <= own["stable_lr_max"]:
        # the first seed's best lr lies outside this seed's run (unstable here, or past a hole): the assumption
        # that this seed's range holds it is broken, and the run its own points show may be an island at a
        # chaotic edge: train the coarse grid, as from scratch, then go on from the run around its best lr
        coarse = fresh(grid)
        if coarse:
            return coarse
    if own["low"] is None:  # none of its own points stable: the reference range's middle, then from scratch
        ends = [at.get(_lr_key({"lr": ref[s][0]})) for s in ("low", "high")] if ref and ref["low"] else [None]
        between = [pts[(ends[0] + ends[1]) // 2]] if None not in ends else []
        return fresh(between) or fresh(grid)
    out: list[float | None] = []
    for side, d in (("low", -1), ("high", 1)):  # d: outward, in lattice index
        i, j = (at.get(_lr_key({"lr": x})) if x is not None else None for x in own[side])
        if i is None or (own[side][1] is not None and j is None):  # off the lattice: bisect as from scratch
            width = bracket_decades(own[side])
            out.append(midpoint(own[side]) if wider(width, resolution) else None)
            continue
        rs = at.get(_lr_key({"lr": ref[side][0]})) if ref and ref[side] else None
        if rs is None:
            rs = i
        # the gallop's probes: outward from the reference's unstable end, inward from its stable end
        probes = [rs + d * (2**k) for k in range(12)] + [rs - d * (2**k - 1) for k in range(12)]
        end = 0 if d < 0 else len(pts) - 1
        if j is None:  # no unstable point outward of its stable end: widen, up to the range's end
            beyond = [p for p in [*probes, end] if (p - i) * d > 0 and 0 <= p < len(pts)]
            if beyond:
                out.append(pts[min(beyond, key=lambda p: abs(p - i))])
        elif abs(i - j) > 1:
            inside = [p for p in probes if min(i, j) < p < max(i, j)]
            out.append(pts[min(inside, key=lambda p: abs(p - rs)) if inside else (i + j) // 2])
    return fresh(out)


def _spread(values: list[float], log: bool = False) -> dict[str, Any]:
    """Median and (min, max) over seeds; `log`: the median of learning rates is taken in log10(lr)."""
    if not values:
        return {"median": None, "range": None}
    med = 10 ** statistics.median(math.log10(v) for v in values) if log else statistics.median(values)
    return {"median": med, "range": [min(values), max(values)]}


def edges(trials: Sequence[dict], rule: StabilityRule) -> dict[str, Any]:
    """A variant's edges: per seed brackets and width, the median edge and width with their range over seeds.

    A seed's width is log10(high / low edge), each edge its bracket's midpoint (an open edge: its stable end,
    so the width is a lower bound); a seed with nothing stable has width 0.0 and counts in the median and
    the range (`n_seeds_stable` says how many had a range at all)."""
    by_seed: dict[Any, list[dict]] = {}
    for r in trials:
        by_seed.setdefault(r.get("seed"), []).append(r)
    per_seed = {}
    for seed in sorted(by_seed, key=lambda s: (s is None, s)):
        e = seed_edges(by_seed[seed], rule)
        if not e["n_trials"]:
            continue  # no result yet (running, failed): no width to count, not a width of 0
        e["width"] = math.log10(estimate(e["high"]) / estimate(e["low"])) if e["low"] else 0.0
        e["resolution"] = max([w for s in ("low", "high") if (w := bracket_decades(e[s])) is not None], default=None)
        per_seed[str(seed)] = e
    found = [e for e in per_seed.values() if e["low"]]
    out: dict[str, Any] = {"per_seed": per_seed, "n_seeds": len(per_seed), "n_seeds_stable": len(found)}
    for side in ("low", "high"):
        out[side] = _spread([estimate(e[side]) for e in found], log=True)
        out[side]["open"] = any(e[side][1] is None for e in found)
    out["width"] = _spread([e["width"] for e in per_seed.values()])
    res = [e["resolution"] for e in found if e["resolution"] is not None]
    out["resolution"] = max(res) if res else None
    out["n_trials"] = sum(e["n_trials"] for e in per_seed.values())
    return out


def add_widths(variants: list[dict], trials: Sequence[dict], rule: StabilityRule, variant_keys: Sequence[str]) -> None:
    """Give each variant of `stability.analyse` its `edges` and its width, the one every table, figure and
    summary calls "width": `width` (median over seeds, decades), `width_range` ([min, max] over seeds) and each
    `per_seed` entry's `width`; each `by_statistics` view gets the same, judged by its own statistics (None
    where that statistics was not recorded)."""
    keys = tuple(variant_keys)
    for v in variants:
        key = tuple(v.get(k) for k in keys)
        recs = [r for r in trials if tuple(r.get(k) for k in keys) == key]
        v["edges"] = edges(recs, rule)
        _put_width(v, v["edges"])
        for view in (v.get("by_statistics") or {}).values():
            if not view.get("n_finite"):
                _put_width(view, None)
                continue
            same = view.get("metric") == rule.metric
            _put_width(view, v["edges"] if same else edges(recs, rule.with_metric(view["metric"])))


def _put_width(target: dict, e: dict | None) -> None:
    w = (e or {}).get("width") or {}
    target["width"], target["width_range"] = w.get("median"), w.get("range")
    by_seed = (e or {}).get("per_seed") or {}
    for s in target.get("per_seed") or []:
        s["width"] = (by_seed.get(str(s.get("seed"))) or {}).get("width")


def width_txt(view: dict) -> str:
    """A variant's width as every table and line prints it: the median over seeds and, where the seeds
    differ, their range in brackets ('1.75 [1.63, 2.00]'); '–' where it has none (statistics not recorded)."""
    if view.get("width") is None:
        return "–"
    lo, hi = view.get("width_range") or (view["width"], view["width"])
    return f"{view['width']:.2f}" + (f" [{lo:.2f}, {hi:.2f}]" if f"{hi:.2f}" != f"{lo:.2f}" else "")
