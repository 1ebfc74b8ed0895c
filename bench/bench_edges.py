"""The edge search against fixed grids, through the real command: trials, wall time and edge error.

    python bench/bench_edges.py [--depth 4] [--steps 200] [--out bench/results/edges]

Runs `python -m bnexp.sweep sweep=lr_stability 'sweep.grid.model.bn=[off,pre]'` four ways on one config (seed 0,
lr in [1e-5, 1]): a 12-point and a 24-point grid, the edge search at resolution 0.1 (a 6-point coarse grid),
and a 48-point grid as the reference. Each edge's error is |log10(edge / reference edge)| in decades, an edge
being its bracket's geometric midpoint (bnexp.analysis.edges). Each arm is its own study under --out, so a
rerun of this script goes on where it stopped (finished arms train nothing). Prints a markdown table and
writes edges.json beside the studies. Costs are summed over each arm's trials (their own wall and CPU
times, from their metrics.json), so that a resumed arm and a machine shared with other work still count every
trial: on a busy machine compare the CPU column. Each trial validates once, at its end (the verdict reads the
final val/acc; the curves in between cost 4x the training at depth 4 and decide nothing here).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time
from pathlib import Path

ARMS = {  # name: extra overrides
    "grid-12": ["sweep.lr.points=12"],
    "grid-24": ["sweep.lr.points=24"],
    "edges-0.1": ["sweep.lr.points=6", "sweep.lr.search=edges", "sweep.lr.resolution=0.1"],
    "grid-48 (reference)": ["sweep.lr.points=48"],
}


def run_arm(name: str, extra: list[str], a: argparse.Namespace) -> dict:
    out = Path(a.out) / name.split(" ")[0]
    cmd = [
        sys.executable, "-m", "bnexp.sweep", "sweep=lr_stability", f"sweep.name=edges-{name.split(' ')[0]}",
        f"sweep.out_dir={out}", "sweep.grid.model.bn=[off,pre]", "sweep.seeds=[0]", "sweep.lr.low=1e-5",
        "sweep.lr.high=1", f"model.depth={a.depth}", f"trainer.max_steps={a.steps}",
        f"trainer.val_every={a.steps}", "logger=none", "sweep.progress=false", f"sweep.jobs={a.jobs}",
        f"sweep.rule.statistics={a.statistics}", *extra,
    ]  # fmt: skip
    t = time.perf_counter()
    r = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "BNEXP_LOG": "WARNING"})
    wall = time.perf_counter() - t
    if r.returncode != 0:
        sys.exit(f"{name} failed:\n{r.stderr[-3000:]}")
    s = json.loads((out / "summary.json").read_text())
    runs = [json.loads(f.read_text()) for f in (out / "trials").rglob("metrics.json")]
    return {
        "wall_s": wall,  # this invocation's: an arm finished by an earlier one costs ~nothing here
        "trial_wall_s": sum(m.get("wall_s") or 0.0 for m in runs),  # every trained trial's own wall time
        "cpu_s": sum(m.get("cpu_s") or 0.0 for m in runs),  # and its CPU time: the cost whatever the load
        "variants": {v["label"]: v for v in s["variants"]},
    }


def _edge(v: dict, side: str) -> float | None:
    return ((v.get("edges") or {}).get(side) or {}).get("median")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=4)
    ap.add_argument("--steps", type=int, default=200)
    ap.add_argument("--out", default="bench/results/edges")
    ap.add_argument("--jobs", default="auto", help="sweep.jobs of every arm (local workers)")
    ap.add_argument("--statistics", default="batch", choices=["population", "batch", "recal"],
                    help="what the rule judges (sweep.rule.statistics). batch: in 150 steps BN's running averages "
                         "(momentum 0.01) have not caught up, and population statistics leave a sliver of "
                         "0.1-0.4 decades that no coarse grid finds")  # fmt: skip
    a = ap.parse_args()
    res = {name: run_arm(name, extra, a) for name, extra in ARMS.items()}
    ref = res["grid-48 (reference)"]["variants"]
    rows = []
    for name, r in res.items():
        trials = sum(v["n_trials"] for v in r["variants"].values())
        reso = max((v["edges"]["resolution"] or 0.0) for v in r["variants"].values())
        errs = []
        for label, v in r["variants"].items():
            for side in ("low", "high"):
                e, e_ref = _edge(v, side), _edge(ref[label], side)
                if e is not None and e_ref is not None:
                    errs.append(abs(math.log10(e / e_ref)))
        edges = {lb: [_edge(v, "low"), _edge(v, "high")] for lb, v in r["variants"].items()}
        rows.append({"arm": name, "trials": trials, "wall_s": r["wall_s"], "trial_wall_s": r["trial_wall_s"],
                     "cpu_s": r["cpu_s"], "resolution": reso, "max_edge_error": max(errs) if errs else None,
                     "edges": edges})  # fmt: skip
    print(f"depth {a.depth}, {a.steps} steps, off/pre, seed 0, lr in [1e-5, 1], judged by {a.statistics} statistics\n")
    print("| search | trials | trial time, summed (s) | CPU time, summed (s) | resolution (decades) "
          "| max edge error vs 48-point grid (decades) |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        err = "–" if r["max_edge_error"] is None else f"{r['max_edge_error']:.2f}"
        print(f"| {r['arm']} | {r['trials']} | {r['trial_wall_s']:.0f} | {r['cpu_s']:.0f} | {r['resolution']:.2f} "
              f"| {err} |")  # fmt: skip
    Path(a.out).mkdir(parents=True, exist_ok=True)
    (Path(a.out) / "edges.json").write_text(json.dumps({"depth": a.depth, "steps": a.steps, "arms": rows}, indent=1))


if __name__ == "__main__":
    main()
