"""The evidence for pruning silent trials (bnexp.sweep.pruning): trials trained to their end, through train(cfg)
as a sweep composes them, with every step's answer to "did any gradient reach the first layer?" kept.

    python bench/silent_evidence.py                  # the default grid, 2 processes, into docs/results/silent_evidence
    python bench/silent_evidence.py --jobs 1 --bn off --depths 4 --lrs 0.1 --seeds 0   # one trial

A trial is *silent* from the step at which it has had no gradient at its first layer (all exactly zero) for
`bnexp.sweep.pruning.SILENT_WINDOW` steps in a row. The rule prunes it at the first validation from there at
which it is at chance in both views. The question this answers: does a trial that fell silent ever train
again? Each row keeps the trial's silent stretches (`silent_runs`: [first, last] step of each run of silent
steps, 1-based, as the optimizer counts them), its validations (step: better view) and its final val/acc in
both views, so a test can apply the rule with any window to the very steps trained.

The default grid covers where silence was seen (BN off from lr 0.003 up, at depths 4, 8 and 19, 3 seeds), the
late starters' ground (BN off at lr 1e-5 to 1e-3, depth 8, and seed 5 at lr 0.001 and 0.00178: late starters
that leave chance at steps 400 and 650), and BN pre and post far past their upper edges (lr 0.3 to 3).
Resumable: rows are appended to runs.csv as trials finish, and a rerun trains only the missing ones. One
thread per process, as a sweep worker.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import json
import os
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

FIELDS = ["bn", "depth", "lr", "seed", "steps", "silent_runs", "silent_at", "revived", "validations", "val_acc",
          "val_acc_batchstats", "cpu_s"]  # fmt: skip


def grid(a: argparse.Namespace) -> list[tuple[str, int, float, int]]:
    if a.bn:  # one explicit grid
        return [(bn, d, lr, s) for bn in a.bn.split(",") for d in a.depths for lr in a.lrs for s in a.seeds]
    off = [("off", d, lr, s) for d in (4, 8, 19) for lr in (0.00316, 0.01, 0.0316, 0.1, 0.316, 1.0) for s in (0, 1, 2)]
    late = [("off", 8, lr, s) for lr in (1e-5, 1e-4, 1e-3) for s in (0, 1, 2)]
    late += [("off", 8, 1e-3, 5), ("off", 8, 0.00177828, 5)]  # the two late starters of seed 5
    bn = [(b, d, lr, s) for b in ("pre", "post") for d in (8, 19) for lr in (0.316, 1.0, 3.16) for s in (0, 1)]
    return off + late + bn


def runs_of(flags: list[bool]) -> list[list[int]]:
    """[first, last] (1-based steps) of each run of True in `flags`."""
    out: list[list[int]] = []
    for i, f in enumerate(flags, start=1):
        if f and out and out[-1][1] == i - 1:
            out[-1][1] = i
        elif f:
            out.append([i, i])
    return out


def one(point: tuple[str, int, float, int], steps: int) -> dict:
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from bnexp.conf import compose
    from bnexp.core.alloc import keep_memory
    from bnexp.core.config import Config
    from bnexp.core.train import quiet_lightning, train
    from bnexp.sweep.pruning import SILENT_WINDOW, better_view

    torch.set_num_threads(1)
    keep_memory()  # as bnexp.run and a sweep worker do
    quiet_lightning()
    bn, depth, lr, seed = point
    over = [f"model.bn={bn}", f"model.depth={depth}", f"optim.lr={lr}", f"seed={seed}", f"trainer.max_steps={steps}",
            "trainer.progress_bar=false", "logger=none", "trainer.compile=none"]  # fmt: skip
    cfg = compose(over, "study")
    cfg = type(cfg)({k: cfg[k] for k in cfg if k != "sweep"})  # bnexp.run's keys: the study's trainer defaults
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    flags: list[bool] = []

    class Listen(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            g = next(pl_module.parameters()).grad
            flags.append(g is None or bool((g == 0).all()))

    with tempfile.TemporaryDirectory() as out:
        m = train(cfg, output_dir=out, callbacks=[Listen()])
    runs = runs_of(flags)
    at = next((first + SILENT_WINDOW - 1 for first, last in runs if last - first + 1 >= SILENT_WINDOW), None)
    return {
        "bn": bn,
        "depth": depth,
        "lr": lr,
        "seed": seed,
        "steps": len(flags),
        "silent_runs": json.dumps(runs),
        "silent_at": at,
        "revived": at is not None and any(not f for f in flags[at:]),
        "validations": json.dumps({int(h["step"]): better_view(h) for h in m["val_history"]}),
        "val_acc": m.get("val/acc"),
        "val_acc_batchstats": m.get("val/acc_batchstats"),
        "cpu_s": round(m["cpu_s"], 1),
    }


def key(row: dict) -> tuple:
    return (row["bn"], int(row["depth"]), float(row["lr"]), int(row["seed"]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out-dir", default=str(REPO / "docs" / "results" / "silent_evidence"))
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--bn", default=None, help="an explicit grid: these variants x --depths x --lrs x --seeds")
    ap.add_argument("--depths", type=lambda s: [int(x) for x in s.split(",")], default=[8])
    ap.add_argument("--lrs", type=lambda s: [float(x) for x in s.split(",")], default=[0.1])
    ap.add_argument("--seeds", type=lambda s: [int(x) for x in s.split(",")], default=[0])
    a = ap.parse_args()
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    done = {key(r) for r in csv.DictReader(path.open())} if path.is_file() else set()
    todo = [p for p in grid(a) if key(dict(zip(("bn", "depth", "lr", "seed"), p, strict=True))) not in done]
    print(f"silent_evidence: {len(done)} done, {len(todo)} to train", file=sys.stderr, flush=True)
    new = not path.is_file()
    with path.open("a", newline="") as f, cf.ProcessPoolExecutor(a.jobs) as pool:
        w = csv.DictWriter(f, FIELDS)
        if new:
            w.writeheader()
        futures = {pool.submit(one, p, a.steps): p for p in todo}
        for fut in cf.as_completed(futures):
            row = fut.result()
            w.writerow(row)
            f.flush()
            print(f"  {futures[fut]}: silent from {row['silent_at']}, revived {row['revived']}, "
                  f"val/acc {row['val_acc']:.3f}", file=sys.stderr, flush=True)  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
