"""One small three-seed edge study under the old settings (every saving off) and the new defaults, side by side:
trials, summed CPU, wall, and each seed's brackets. The savings must leave the brackets alone.

    python bench/bench_study.py                                 # depth 8, BN off and pre, 3 seeds, 800 steps
    python bench/bench_study.py --depth 4 --steps 400 --out-dir outputs/bench_study_d4
    python bench/bench_study.py --arms new                      # one arm (resumable: a rerun goes on)

Each arm is `python -m bnexp.sweep` through the real command (its own study dir under --out-dir; a rerun
of this script resumes an arm that was stopped and only re-reads one that finished):
  old   trainer.val_subset=null trainer.test=true sweep.prune=false sweep.lr.warm_start=false
        sweep.lr.coarse=all trainer.memory_format=contiguous, and BNEXP_MALLOC=default (glibc's own allocator
        settings): every trial and every seed's search as before this round;
  new   the defaults.
Summed CPU is the CPU time of the arm's whole process tree (the sweep, its workers, W&B's service), from
the kernel's accounting of the children this script waited for, summed over the arm's invocations; the
trials' own `cpu_s` (their processes' CPU while they trained) is given beside it. Each new bracket is set
against the old one: same, touch (an end shared), overlap, or apart by so many decades (a saving that changes
float rounding, the conv layout, can move a bracket at a chaotic edge by a cell). Writes the table to stdout
and JSON to <out-dir>/bench_study.json.

--floor also times each variant's optimizer steps alone (bench/bench_step.py's plain loop, one thread, the layout
a sweep trains in) and prices the new arm's trials at that: each trial's steps trained times its variant's step.
That is what the new arm would cost if its trials did nothing but train (no evaluation, no setup, no process
start): a floor for any search that trains the same trials, against which the goal can be set.

800 steps by default, the studies' own length.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
OLD = [
    "trainer.val_subset=null", "trainer.test=true", "sweep.prune=false", "sweep.lr.warm_start=false",
    "sweep.lr.coarse=all", "trainer.memory_format=contiguous",
]  # fmt: skip


def study_args(a: argparse.Namespace, out: Path) -> list[str]:
    return [
        "sweep=lr_stability",
        f"sweep.out_dir={out}",
        f"sweep.grid.model.bn=[{a.bn}]",
        f"model.depth={a.depth}",
        f"trainer.max_steps={a.steps}",
        "sweep.lr.search=edges",
        f"sweep.lr.points={a.points}",
        f"sweep.lr.resolution={a.resolution}",
        f"sweep.seeds=[{a.seeds}]",
        f"sweep.jobs={a.jobs}",
        "sweep.progress=false",
        *a.extra,
    ]


def run_arm(name: str, a: argparse.Namespace, root: Path) -> dict:
    out = root / name
    acct = root / f"{name}.cpu.json"  # CPU and wall of every invocation of this arm (a resumed arm has several)
    spent = json.loads(acct.read_text()) if acct.is_file() else []
    if not (out / "summary.json").is_file() or not spent:
        env = {**os.environ, **({"BNEXP_MALLOC": "default"} if name == "old" else {})}
        args = [sys.executable, "-m", "bnexp.sweep", *study_args(a, out), *(OLD if name == "old" else [])]
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        t0 = time.perf_counter()
        r = subprocess.run(args, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
        spent.append({"wall_s": wall, "cpu_s": cpu, "sys_s": after.ru_stime - before.ru_stime, "rc": r.returncode})
        acct.write_text(json.dumps(spent, indent=2) + "\n")
        if r.returncode != 0:
            sys.exit(f"bench_study: arm {name} exited {r.returncode}:\n{r.stderr[-3000:]}")
    summary = json.loads((out / "summary.json").read_text())
    trials = [json.loads(p.read_text()) for p in out.glob("trials/*/*/metrics.json")]
    brackets = {
        v["label"]: {s: [e["low"], e["high"]] for s, e in (v.get("edges") or {}).get("per_seed", {}).items()}
        for v in summary["variants"]
    }
    return {
        "trials": sum(v["n_trials"] for v in summary["variants"]),
        "pruned": sum(v.get("n_pruned", 0) for v in summary["variants"]),
        "cpu_s": sum(x["cpu_s"] for x in spent),
        "sys_s": sum(x["sys_s"] for x in spent),
        "wall_s": sum(x["wall_s"] for x in spent),
        "trial_cpu_s": sum(m.get("cpu_s") or 0 for m in trials),
        "brackets": brackets,
    }


def floor(a: argparse.Namespace, out: Path) -> dict:
    """The new arm's trials priced at their optimizer steps alone (module docstring)."""
    import torch

    sys.path.insert(0, str(REPO / "bench"))
    from bench_step import plain_steps

    from bnexp.core.data import load_mnist, make_splits

    torch.set_num_threads(1)
    splits = make_splits(load_mnist(os.environ.get("BNEXP_DATA_DIR")), None, None, None)
    per = {bn: plain_steps(splits, bn, a.depth, 200, 20, "cpu", "none") for bn in a.bn.split(",")}
    trials = [json.loads(p.read_text()) for p in out.glob("trials/*/*/metrics.json")]
    steps = {bn: sum(int(m["step"]) for m in trials if m["bn"] == bn) for bn in per}
    return {
        "step_ms": {bn: 1000 * t for bn, t in per.items()},
        "steps": sum(steps.values()),
        "cpu_s": sum(steps[bn] * per[bn] for bn in per),
    }


def relation(a: list | None, b: list | None) -> str:
    """How bracket `b` sits to bracket `a` ([stable_lr, unstable_lr]; None: no bracket; an unstable end None:
    open): "same", "touch" (they share an end), "overlap", or "apart D" (D decades between their nearest
    ends): a saving that changes float rounding can move a bracket at a chaotic edge by a cell."""
    if a is None or b is None or None in a or None in b:
        return "same" if a == b else "differ"
    (a0, a1), (b0, b1) = sorted(a), sorted(b)
    if math.isclose(a0, b0, rel_tol=1e-6) and math.isclose(a1, b1, rel_tol=1e-6):
        return "same"
    if math.isclose(a1, b0, rel_tol=1e-6) or math.isclose(b1, a0, rel_tol=1e-6):
        return "touch"
    if a1 < b0 or b1 < a0:
        return f"apart {math.log10(max(b0 / a1, a0 / b1)):.2f}"
    return "overlap"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--bn", default="off,pre")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--points", type=int, default=6)
    ap.add_argument("--resolution", type=float, default=0.25)
    ap.add_argument("--jobs", default="auto")
    ap.add_argument("--arms", default="old,new")
    ap.add_argument("--out-dir", default=str(REPO / "outputs" / "bench_study"))
    ap.add_argument("--floor", action="store_true", help="price the new arm's trials at their steps alone")
    ap.add_argument("extra", nargs="*", help="more overrides for both arms (e.g. logger=none)")
    a = ap.parse_args()
    root = Path(a.out_dir)
    root.mkdir(parents=True, exist_ok=True)
    res = {name: run_arm(name, a, root) for name in a.arms.split(",")}
    out = {"config": vars(a), "arms": res}
    if {"old", "new"} <= set(res):
        o, n = res["old"], res["new"]
        out["cpu_ratio"] = n["cpu_s"] / o["cpu_s"]
        out["wall_ratio"] = n["wall_s"] / o["wall_s"]
        out["same_brackets"] = o["brackets"] == n["brackets"]
        out["relations"] = {
            f"{label} seed {s} {side}": relation(lo_hi_o[k], n["brackets"].get(label, {}).get(s, [None, None])[k])
            for label, seeds in o["brackets"].items()
            for s, lo_hi_o in seeds.items()
            for k, side in enumerate(("low", "high"))
        }
    if a.floor and "new" in res:
        out["floor"] = floor(a, root / "new")
        if "old" in res:
            out["floor"]["ratio"] = out["floor"]["cpu_s"] / res["old"]["cpu_s"]
    print("| arm | trials | pruned | CPU, summed (s) | of it kernel (s) | trials' own CPU (s) | wall (s) |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in res.items():
        print(f"| {name} | {r['trials']} | {r['pruned']} | {r['cpu_s']:.0f} | {r['sys_s']:.0f} | "
              f"{r['trial_cpu_s']:.0f} | {r['wall_s']:.0f} |")  # fmt: skip
    if "cpu_ratio" in out:
        print(f"new / old: CPU {out['cpu_ratio']:.2f}x, wall {out['wall_ratio']:.2f}x; "
              f"the same brackets for every seed: {out['same_brackets']}")  # fmt: skip
        for where, rel in out["relations"].items():
            print(f"  new against old, {where}: {rel}")
    if "floor" in out:
        f = out["floor"]
        print(f"floor: the new arm's {f['steps']} steps alone, at "
              + ", ".join(f"{bn} {ms:.1f} ms" for bn, ms in f["step_ms"].items())
              + f" a step: {f['cpu_s']:.0f} s" + (f" ({f['ratio']:.2f}x old)" if "ratio" in f else ""))  # fmt: skip
    for name, r in res.items():
        for label, seeds in r["brackets"].items():
            for s, (lo, hi) in seeds.items():
                print(f"  {name} {label} seed {s}: low {lo} high {hi}")
    (root / "bench_study.json").write_text(json.dumps(out, indent=2, default=str) + "\n")


if __name__ == "__main__":
    main()
