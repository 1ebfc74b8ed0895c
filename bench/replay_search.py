"""The edge search's planning replayed on the committed studies: which of their trials today's search would
train, and the brackets it would end at, with each recorded trial's result standing in for training it.

    python bench/replay_search.py                       # every committed edge study
    python bench/replay_search.py edges_d19 --json out.json

Each seed is searched as `python -m bnexp.sweep` plans it now, and again with the whole coarse grid
(`sweep.lr.coarse=all`) for the outward scan's own saving (bnexp.sweep.edge_plan): the first seed's coarse
grid from the middle out, then bisection (bnexp.analysis.edges.coarse_points, next_points); a later seed warm-
started from the first seed's replayed trials (warm_points) where the study warm-started it (its trials say
phase=warm), else searched as the first. A point the replay asks for that the study never trained stops that
seed's replay (said as `unrecorded`): only what was measured is used. Per seed it prints the trials recorded
and replayed, their summed trial CPU (`cpu_s`; wall where a study predates it), and whether the replayed
brackets equal the recorded ones (bnexp.analysis.edges.seed_edges of all its recorded trials).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnexp.analysis.edges import (  # noqa: E402
    bracket_decades,
    coarse_points,
    middle,
    next_points,
    seed_edges,
    warm_points,
    wider,
)
from bnexp.analysis.stability import StabilityRule  # noqa: E402

# the committed edge studies' searches (scripts/reference_studies.sh, bnexp/conf/sweep/*.yaml): lr 1e-5..1, 6 points
RESOLUTION = {"edges_d19": 0.15, "edges_d19_cl": 0.15, "edges_d19_fast": 0.15, "edges_depth": 0.15,
              "bn_momentum": 0.15, "init_scale": 0.25}  # fmt: skip
GRID = [float(f"{10 ** (-5 + i):.6g}") for i in range(6)]


def key(lr: float) -> str:
    return f"{lr:.6g}"


def replay(recorded: dict[str, dict], start: list[float], plan) -> tuple[list[dict], float | None]:
    """Train `start`, then what `plan(trials)` asks, from the recorded results; (trials, the first unrecorded lr)."""
    trials: list[dict] = []
    asked = list(start)
    for _ in range(200):
        for lr in asked:
            if key(lr) not in recorded:
                return trials, lr
            trials.append(recorded[key(lr)])
        asked = plan(trials)
        if not asked:
            return trials, None
    raise RuntimeError("the replayed search never ended")


def relation(want: dict, have: dict, res: float) -> str:
    """How the replayed brackets (`have`) sit to the recorded ones: "same"; "holds" where each replayed bracket
    holds the recorded one and is within the resolution (a study from before bnexp.analysis.edges.WIDTH_TOL,
    which bisected a bracket of exactly the resolution once more); else "differ"."""
    pairs = [(want[s], have[s]) for s in ("low", "high")]
    if all(w == h for w, h in pairs):
        return "same"

    def holds(w: list | None, h: list | None) -> bool:
        if w == h:
            return True
        if w is None or h is None or None in w or None in h:
            return False
        lo, hi = sorted(h)
        return lo <= min(w) and max(w) <= hi and not wider(bracket_decades(h), res)

    return "holds" if all(holds(w, h) for w, h in pairs) else "differ"


def records(d: Path) -> tuple[list[dict], StabilityRule, list[str]]:
    import bnexp

    r = bnexp.load(d)
    rule = StabilityRule.of(r.summary["rule"], lambda k, v: f"{k}={v}")
    keys = [k for k in r.summary["variant_keys"] if k in r.trials.columns]
    rows = r.trials.astype(object).where(r.trials.notna(), None).to_dict("records")
    return rows, rule, keys


def study(name: str, root: Path) -> dict:
    rows, rule, keys = records(root / name)
    res = RESOLUTION[name]
    out = []
    by_variant: dict[tuple, dict[int, list[dict]]] = {}
    for r in rows:
        if r.get("state") in ("COMPLETE", "PRUNED"):
            by_variant.setdefault(tuple(r[k] for k in keys), {}).setdefault(int(r["seed"]), []).append(r)
    for variant, seeds in sorted(by_variant.items(), key=lambda kv: str(kv[0])):
        first_trials = None
        for i, seed in enumerate(sorted(seeds)):
            recs = seeds[seed]
            recorded = {key(float(r["lr"])): r for r in recs}
            warm = i > 0 and any(r.get("phase") == "warm" for r in recs) and first_trials is not None
            if warm:
                ref = first_trials

                def plan(t: list[dict], ref: list[dict] = ref) -> list[float]:
                    return warm_points(t, ref, GRID, rule, res)

                got, missing = replay(recorded, warm_points([], ref, GRID, rule, res), plan)
            else:

                def plan(t: list[dict]) -> list[float]:
                    return coarse_points(t, GRID, rule) or next_points(t, rule, res)

                got, missing = replay(recorded, middle(GRID), plan)

            def whole(t: list[dict]) -> list[float]:  # the same seed with the whole coarse grid (sweep.lr.coarse=all)
                return coarse_points(t, GRID, rule, outward=False) or next_points(t, rule, res)

            grid_got, _ = (got, None) if warm else replay(recorded, GRID, whole)
            if i == 0:
                first_trials = got if missing is None else None
            cost = {id(r): (r.get("cpu_s") if r.get("cpu_s") is not None else r.get("wall_s")) or 0.0 for r in recs}
            want = seed_edges(recs, rule)
            have = seed_edges(got, rule)
            rel = "unrecorded" if missing is not None else relation(want, have, res)
            out.append(
                {
                    "variant": "-".join(str(v) for v in variant),
                    "seed": seed,
                    "search": "warm" if warm else "outward",
                    "recorded": len(recs),
                    "replayed": len(got),
                    "replayed_whole_grid": len(grid_got),
                    "unrecorded": missing,
                    "recorded_cpu_s": round(sum(cost.values()), 1),
                    "replayed_cpu_s": round(sum(cost[id(r)] for r in got), 1),
                    "replayed_whole_grid_cpu_s": round(sum(cost[id(r)] for r in grid_got), 1),
                    "same_brackets": rel == "same",
                    "relation": rel,
                    "brackets": [want["low"], want["high"]],
                }
            )
    return {"study": name, "seeds": out}


def main(argv: list[str] | None = None) -> list[dict]:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("studies", nargs="*", default=list(RESOLUTION))
    ap.add_argument("--results", default=str(REPO / "docs" / "results"))
    ap.add_argument("--json", default=None)
    a = ap.parse_args(argv)
    res = [study(s, Path(a.results)) for s in a.studies]
    print("| study | variant | seed | search | trials recorded | replayed: whole grid | outward | CPU recorded (s) "
          "| replayed: whole grid (s) | outward (s) | same brackets |")  # fmt: skip
    print("|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|")
    for s in res:
        for r in s["seeds"]:
            same = {"same": "yes", "holds": "holds it (finer recorded)", "differ": "NO"}.get(r["relation"]) or (
                f"unrecorded lr {r['unrecorded']:g}"
            )
            print(f"| {s['study']} | {r['variant']} | {r['seed']} | {r['search']} | {r['recorded']} | "
                  f"{r['replayed_whole_grid']} | {r['replayed']} | {r['recorded_cpu_s']:.0f} | "
                  f"{r['replayed_whole_grid_cpu_s']:.0f} | {r['replayed_cpu_s']:.0f} | {same} |")  # fmt: skip
    for s in res:
        rep = sum(r["replayed_cpu_s"] for r in s["seeds"])
        whole = sum(r["replayed_whole_grid_cpu_s"] for r in s["seeds"])
        n = sum(r["same_brackets"] for r in s["seeds"])
        held = sum(r["relation"] == "holds" for r in s["seeds"])
        print(f"{s['study']}: {sum(r['recorded'] for r in s['seeds'])} trials recorded; replayed "
              f"{sum(r['replayed_whole_grid'] for r in s['seeds'])} with the whole grid ({whole:.0f} s of CPU), "
              f"{sum(r['replayed'] for r in s['seeds'])} outward ({rep:.0f} s: "
              f"{rep / whole if whole else math.nan:.2f}x); the same brackets as recorded for {n} of "
              f"{len(s['seeds'])} seeds" + (f", {held} holding a finer recorded one" if held else ""))  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(res, indent=2, default=str) + "\n")
    return res


if __name__ == "__main__":
    main()
