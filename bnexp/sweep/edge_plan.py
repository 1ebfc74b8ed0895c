"""The edge search's planning (`sweep.lr.search=edges`): which points the recorded results ask for next, per
variant and seed, enqueued in the study. Every worker plans after each result it records and when it finds
the queue empty, so a rerun after a kill -9 goes on where the search stopped.

The first seed of `sweep.seeds` trains the coarse grid, from its middle out under `sweep.lr.coarse=outward`
(bnexp.analysis.edges.coarse_points), then bisects its own brackets (bnexp.analysis.edges.next_points); a
later one, with `sweep.lr.warm_start`, starts from the first seed's brackets once that seed's search is done
(bnexp.analysis.edges.warm_points), and without it searches as the first seed does.
"""

from __future__ import annotations

import logging
from typing import Any

from omegaconf import DictConfig

from bnexp.analysis.edges import coarse_points, next_points, warm_points
from bnexp.analysis.stability import StabilityRule
from bnexp.sweep import liveness
from bnexp.sweep.records import trial_records
from bnexp.sweep.spec import LR_PARAM, grid_axes, lr_points, point_key, scans_outward, variants

log = logging.getLogger("bnexp.sweep")
SAID = {"coarse": "the coarse grid, outward", "bisect": "bisecting", "warm": "checking the first seed's edge"}


def plan(study: Any, sw: DictConfig, rule: StabilityRule) -> int:
    """Enqueue every point that the recorded results ask for; returns how many. Idempotent: a point already
    in the study (in any state) is not enqueued again. Two workers planning at the same moment may both
    enqueue one point; the later claim of it is dropped as a duplicate before it trains
    (bnexp.sweep.worker: `_drop_duplicate`), so every point trains once."""
    if sw.lr.search != "edges":
        return 0
    n = 0
    for (variant, seed), lrs, phase in edge_points(seed_groups(study, sw), sw, rule):
        for lr in lrs:
            key = point_key(dict(variant), seed, lr)
            params = {**dict(variant), "seed": seed, LR_PARAM: lr}
            study.enqueue_trial(params, user_attrs={"key": key, "attempt": 0, "phase": phase})
            log.info("edge search: %s seed %d: %s at lr %g", " ".join(f"{k}={v}" for k, v in variant), seed,
                     SAID[phase], lr)  # fmt: skip
            n += 1
    return n


def edge_points(
    groups: dict[tuple, list[dict]], sw: DictConfig, rule: StabilityRule
) -> list[tuple[tuple, list[float], str]]:
    """((variant, seed), lrs, phase) for every seed of every variant (module docstring)."""
    res, grid = float(sw.lr.resolution), lr_points(sw)
    seeds = [int(s) for s in sw.seeds]
    outward = scans_outward(sw)
    out = []
    for v in variants(sw):
        variant = tuple(v.items())
        first = groups.get((variant, seeds[0]), [])
        first_done = (
            bool(first)
            and not coarse_points(first, grid, rule, outward)
            and not next_points(first, rule, res)
            and not any(r.get("state") in ("WAITING", "RUNNING") for r in first)
        )
        for seed in seeds:
            recs = groups.get((variant, seed), [])
            if seed == seeds[0] or not sw.lr.warm_start:
                coarse = coarse_points(recs, grid, rule, outward)
                out.append(((variant, seed), coarse, "coarse") if coarse else
                           ((variant, seed), next_points(recs, rule, res), "bisect"))  # fmt: skip
            elif first_done or recs:  # a warm seed waits for the first seed's brackets
                out.append(((variant, seed), warm_points(recs, first, grid, rule, res), "warm"))
    return out


def seed_groups(study: Any, sw: DictConfig) -> dict[tuple, list[dict]]:
    """Records per (variant, seed): finished trials as records, unfinished points as WAITING stubs."""
    from optuna.trial import TrialState

    axes = list(grid_axes(sw.grid))
    finished = {r["key"]: r for r in trial_records(study)}
    groups: dict[tuple, list[dict]] = {}
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        if "key" not in ua or ua.get("returned") or ua.get("duplicate"):
            continue
        fp = {**(liveness.fixed_params(study, t) or {}), **t.params}  # killed mid-suggest: some params only
        group = groups.setdefault((tuple((k, fp.get(k)) for k in axes), fp.get("seed")), [])
        if t.state in (TrialState.WAITING, TrialState.RUNNING):
            group.append({"state": t.state.name, "lr": fp.get(LR_PARAM), "key": ua["key"]})
        elif ua["key"] in finished and finished[ua["key"]] not in group:
            group.append(finished[ua["key"]])
    return groups
