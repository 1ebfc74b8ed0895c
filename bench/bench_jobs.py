"""sweep.jobs on a CPU machine: one study's wall time with N local workers against one worker.

    python bench/bench_jobs.py [--jobs 1,auto] [--depth 4] [--points 12] [--bn off,pre] [--steps 800]

Runs the same study (BN off/pre by default, --points learning rates, seed 0, the seed's 800 steps) once per
--jobs value, each into a fresh out dir through the real command (`python -m bnexp.sweep`), and prints each
wall time and the ratio to the first. The CPU must be otherwise idle for the ratio to mean anything.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--jobs", default="1,auto")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--points", type=int, default=12)
    p.add_argument("--bn", default="off,pre")
    p.add_argument("--steps", type=int, default=800)
    a = p.parse_args()
    out: dict[str, dict] = {}
    base = Path(tempfile.mkdtemp(prefix="bench_jobs_"))
    for jobs in a.jobs.split(","):
        d = base / f"jobs-{jobs}"
        cmd = [sys.executable, "-m", "bnexp.sweep", "sweep=lr_stability", f"sweep.grid.model.bn=[{a.bn}]"]
        cmd += [f"model.depth={a.depth}", f"sweep.lr.points={a.points}", "sweep.seeds=[0]", f"sweep.jobs={jobs}"]
        cmd += [f"trainer.max_steps={a.steps}", "logger=none", "sweep.progress=false", f"sweep.out_dir={d}"]
        env = {**os.environ, "BNEXP_LOG": "WARNING"}
        t0 = time.perf_counter()
        r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if r.returncode != 0:
            sys.exit(f"jobs={jobs} failed ({r.returncode}): {r.stderr[-2000:]}")
        summary = json.loads((d / "summary.json").read_text())
        widths = {v["label"]: v["width"] for v in summary["variants"]}
        out[jobs] = {"wall_s": round(wall, 1), "widths": widths}
        print(f"sweep.jobs={jobs}: {wall:.1f} s  widths {widths}", flush=True)
    walls = [v["wall_s"] for v in out.values()]
    for v in out.values():
        v["speedup_vs_first"] = round(walls[0] / v["wall_s"], 2)
    print(json.dumps({"cores": os.cpu_count(), "runs": out}, indent=1))


if __name__ == "__main__":
    main()
