"""The evidence for pruning silent trials (bnexp.sweep.pruning): trials trained to their end, through train(cfg)
as a sweep composes them, with every step's answer to "did any gradient reach the first layer?" kept.

    python bench/silent_evidence.py                  # the default grid, 2 processes, into docs/results/silent_evidence
    python bench/silent_evidence.py --jobs 1 --bn off --depths 4 --lrs 0.1 --seeds 0   # one trial
    python bench/silent_evidence.py --committed      # the committed studies' trials the rule could stop
    python bench/silent_evidence.py --out-dir docs/results/silent_evidence/sgd --bn off --depths 8,19 \
        --lrs 0.1,0.316,1 --seeds 0,1,2 optim=sgd optim.momentum=0.9   # SGD: its window, from its momentum

A trial is *silent* from the step at which it has had no gradient at its first layer (all exactly zero) for its
optimizer's window of steps in a row (`bnexp.sweep.pruning.silent_window`: 100 with Adam). The rule prunes it at
the first validation from there at which it is at chance in both views. The question this answers: does a trial
that fell silent ever train again? Each row keeps the trial's silent stretches (`silent_runs`: [first, last]
step of each run of silent steps, 1-based, as the optimizer counts them), its validations (step: better view)
and its final val/acc in both views, so a test can apply the rule with any window to the very steps trained.

The default grid covers where silence was seen (BN off from lr 0.003 up, at depths 4, 8 and 19, 3 seeds), the
late starters' ground (BN off at lr 1e-5 to 1e-3, depth 8, and seed 5 at lr 0.001 and 0.00178: late starters
that leave chance at steps 400 and 650), and BN pre and post far past their upper edges (lr 0.3 to 3).
Resumable: rows are appended to runs.csv as trials finish, and a rerun trains only the missing ones. One
thread per process, as a sweep worker.

--committed replays the committed studies' trials that the rule could have stopped: every trial without BN of
the studies in COMMITTED whose committed curve is at chance (both views) at a validation before its last, the
17 that nevertheless ended stable among them (the late starters: a stop there is a false stop). Each is
trained again under its own overrides, in the arithmetic it ran in (contiguous, not compiled, one thread),
with each step's silence kept, and the rule applied to its committed curve: it is stopped at the first
validation at which that curve is at chance and the last SILENT_WINDOW steps were silent (`pruned_at`), else
trained to its end (its val/acc beside the committed one shows the replay is the same training). Rows go
to committed.csv: a test counts the false stops (tests/sweep/test_silent.py) and docs/sweeps.md gives the
steps each study would have saved. Only the final validation is run (the at-chance test reads the committed
curve; evaluation does not change a training).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import csv
import functools
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

COMMITTED = ("depth_ablation", "edges_depth", "init_scale", "edges_d19", "lr_stability_d19")  # the studies whose
# trials ran unpruned as bnexp trained them then; bn_momentum has no trial without BN, and edges_d19_cl, _fast
# and _silent are edges_d19's points again (the first two pruned by the rule this one replaced, the last by this)
CFIELDS = ["study", "number", "depth", "lr", "seed", "overrides", "steps", "chance_at", "committed_val_acc",
           "committed_stable", "committed_wall_s", "pruned_at", "trained", "silent_runs", "val_acc",
           "cpu_s"]  # fmt: skip
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


def one(point: tuple[str, int, float, int], steps: int, extra: tuple[str, ...] = ()) -> dict:
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from bnexp.conf import compose
    from bnexp.core.alloc import keep_memory
    from bnexp.core.config import Config
    from bnexp.core.train import quiet_lightning, train
    from bnexp.sweep.pruning import better_view, silent_window

    torch.set_num_threads(1)
    keep_memory()  # as bnexp.run and a sweep worker do
    quiet_lightning()
    bn, depth, lr, seed = point
    over = [f"model.bn={bn}", f"model.depth={depth}", f"optim.lr={lr}", f"seed={seed}", f"trainer.max_steps={steps}",
            "trainer.progress_bar=false", "logger=none", "trainer.compile=none", *extra]  # fmt: skip
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
    window = silent_window(cfg.optim, int(cfg.data.batch_size))  # the optimizer's (SGD's from its momentum)
    at = next((first + window - 1 for first, last in runs if last - first + 1 >= window), None)
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


def committed(results: Path) -> list[dict]:
    """The committed trials without BN whose curve is at chance in both views at a validation before its last."""
    import pandas as pd

    from bnexp.sweep.pruning import CHANCE_ACC

    out = []
    for study in COMMITTED:
        c = pd.read_csv(results / study / "curves.csv")
        t = pd.read_csv(results / study / "trials.csv")
        for _, r in t[(t.bn == "off") & (t.state == "COMPLETE")].iterrows():
            cc = c[c.number == r.number]
            last = int(cc.step.max())
            chance = cc[(cc.step < last) & (cc["val/acc"] < CHANCE_ACC) & (cc["val/acc_batchstats"] < CHANCE_ACC)]
            if len(chance):
                out.append({
                    "study": study, "number": int(r.number), "depth": int(r.depth), "lr": float(r.lr),
                    "seed": int(r.seed), "overrides": r.overrides, "steps": last,
                    "chance_at": json.dumps(sorted(int(s) for s in chance.step)),
                    "committed_val_acc": float(r["val/acc"]),
                    "committed_stable": bool(r.stable), "committed_wall_s": round(float(r.wall_s), 1),
                })  # fmt: skip
    return out


def replay(item: dict) -> dict:
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from bnexp.conf import compose
    from bnexp.core.alloc import keep_memory
    from bnexp.core.config import Config
    from bnexp.core.train import quiet_lightning, train
    from bnexp.sweep.pruning import silent_window

    torch.set_num_threads(1)
    keep_memory()
    quiet_lightning()
    drop = ("trainer.val_subset=", "trainer.test=", "trainer.compile=", "trainer.memory_format=")
    over = [o for o in item["overrides"].split() if not o.startswith(drop)]
    over += [f"trainer.max_steps={item['steps']}", f"trainer.val_every={item['steps']}", "trainer.test=false",
             "trainer.compile=none", "trainer.memory_format=contiguous", "trainer.progress_bar=false",
             "logger=none"]  # fmt: skip
    cfg = compose(over)
    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    window = silent_window(cfg.optim, int(cfg.data.batch_size))
    chance = set(json.loads(item["chance_at"]))
    flags: list[bool] = []
    pruned: list[int] = []

    class Listen(L.Callback):
        def on_before_optimizer_step(self, trainer, pl_module, optimizer) -> None:  # noqa: ANN001
            g = next(pl_module.parameters()).grad
            flags.append(g is None or bool((g == 0).all()))

        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # noqa: ANN001
            step = len(flags)
            if window and step in chance and len(flags) >= window and all(flags[-window:]):
                pruned.append(step)
                trainer.should_stop = True

    with tempfile.TemporaryDirectory() as out:
        m = train(cfg, output_dir=out, callbacks=[Listen()])
    return {
        **item,
        "pruned_at": pruned[0] if pruned else None,
        "trained": len(flags),
        "silent_runs": json.dumps(runs_of(flags)),
        "val_acc": None if pruned else m.get("val/acc"),
        "cpu_s": round(m["cpu_s"], 1),
    }


def main_committed(a: argparse.Namespace) -> None:
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "committed.csv"
    ident = lambda r: (r["study"], int(r["number"]))  # noqa: E731
    done = {ident(r) for r in csv.DictReader(path.open())} if path.is_file() else set()
    items = committed(REPO / "docs" / "results")
    todo = [i for i in items if ident(i) not in done]
    todo.sort(key=lambda i: not i["committed_stable"])  # the false-stop candidates first
    print(f"silent_evidence --committed: {len(done)} done, {len(todo)} to train", file=sys.stderr, flush=True)
    append(path, CFIELDS, a.jobs, replay, todo, lambda _, row: (
        f"{row['study']} #{row['number']} d{row['depth']} lr {row['lr']:g} seed {row['seed']}: pruned at "
        f"{row['pruned_at']}, committed {row['committed_val_acc']:.3f} replay {row['val_acc']}"))  # fmt: skip


def append(path: Path, fields: list[str], jobs: int, fn: Any, todo: list, say: Any) -> None:
    """Train `fn(item)` for each item of `todo` in `jobs` processes, appending each row to the CSV at `path`
    as it lands (a rerun goes on from there), with a line to stderr (`say(item, row)`)."""
    new = not path.is_file()
    with path.open("a", newline="") as f, cf.ProcessPoolExecutor(jobs) as pool:
        w = csv.DictWriter(f, fields)
        if new:
            w.writeheader()
        futures = {pool.submit(fn, item): item for item in todo}
        for fut in cf.as_completed(futures):
            row = fut.result()
            w.writerow(row)
            f.flush()
            print(f"  {say(futures[fut], row)}", file=sys.stderr, flush=True)


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
    ap.add_argument("--committed", action="store_true", help="replay the committed trials the rule could stop")
    ap.add_argument(
        "extra", nargs="*", help="overrides for every trial of the grid (e.g. optim=sgd optim.momentum=0.9)"
    )
    a = ap.parse_args()
    if a.committed:
        return main_committed(a)
    out = Path(a.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "runs.csv"
    done = {key(r) for r in csv.DictReader(path.open())} if path.is_file() else set()
    todo = [p for p in grid(a) if key(dict(zip(("bn", "depth", "lr", "seed"), p, strict=True))) not in done]
    print(f"silent_evidence: {len(done)} done, {len(todo)} to train", file=sys.stderr, flush=True)
    train_one = functools.partial(one, steps=a.steps, extra=tuple(a.extra))
    append(path, FIELDS, a.jobs, train_one, todo, lambda p, row: (
        f"{p}: silent from {row['silent_at']}, revived {row['revived']}, val/acc {row['val_acc']:.3f}"))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    main()
