"""Population training vs. one run at a time: the same learning-rate points, timed in one process.

    python bench/bench_population.py --device cpu --points 12 --depth 4 --steps 200 --threads 1
    python bench/bench_population.py --device cuda --points 32 --depth 19 --steps 800 --solo-points 4
    python bench/bench_population.py --device cpu --points 12 --depth 4 --arms step --threads 1

Three arms train the same `--points` learning rates (log-spaced over [--lr-low, --lr-high]) of one
variant on real MNIST ($BNEXP_DATA_DIR), with one validation at the end and the test pass:
  lightning   bnexp.core.train.train, one point after another (what a plain sweep does)
  plain       train_population with K=1, one point after another (until the population moved into
              Lightning this was a plain PyTorch loop; now the population path with one member)
  population  train_population with K=points, all points in one model
`--solo-points M` times only the first M points of the two one-at-a-time arms and scales their
totals by points/M (say so in the table), to keep long GPU runs inside a time budget.
Prints a table with ratios against the population and writes everything to --out as JSON. The
per-point val/loss differences between the arms are printed too (a check, not a timing).

The `step` arm answers "Lightning or a plain loop" for the population: ms per population step of K=points
inside trainer.fit (PopulationModule, manual optimization) against the very same step (forward_backward +
the population optimizer + the divergence check) in a plain loop, after --warmup steps, rounds alternating
which goes first; wall and thread CPU time (CPU time is what a loaded machine distorts least).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def compose(overrides: list[str]):
    from bnexp.conf import compose as compose_config

    return compose_config(overrides)


def lr_grid(low: float, high: float, n: int) -> list[float]:
    if n == 1:
        return [low]
    return [float(math.exp(math.log(low) + i * (math.log(high) - math.log(low)) / (n - 1))) for i in range(n)]


def population_step_s(cfg, lrs: list[float], steps: int, warmup: int, harness: bool) -> dict[str, float]:
    """Seconds per population step (wall, thread CPU) over `steps` steps after `warmup`: inside trainer.fit
    (harness) or in a plain loop of the same step. cfg: trainer.accelerator, trainer.compile, model are used."""
    import lightning as L
    import torch
    from omegaconf import OmegaConf

    from bnexp.core.metrics import Divergence
    from bnexp.core.train import build_datamodule, build_trainer, compile_model, model_kwargs
    from bnexp.population.module import PopulationModule, forward_backward

    seeds = [int(cfg.seed)] * len(lrs)
    o = cfg.optim
    module = PopulationModule(
        model_kwargs(cfg), seeds, lrs, loss=cfg.loss, optim=o.name, momentum=o.momentum, weight_decay=o.weight_decay
    )
    compile_model(module, cfg.trainer.compile)
    dm = build_datamodule(cfg, member_seeds=seeds)
    cuda = cfg.trainer.accelerator in ("gpu", "cuda")
    clock: dict[str, float] = {}

    def tick(key: str) -> None:
        if cuda:
            torch.cuda.synchronize()
        clock[key], clock[key + "_cpu"] = time.perf_counter(), time.thread_time()

    if harness:

        class Clock(L.Callback):
            def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
                if trainer.global_step == warmup:
                    tick("t0")

            def on_train_end(self, trainer, pl_module):
                tick("t1")

        c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        c.trainer.max_steps, c.trainer.val_every = warmup + steps, warmup + steps + 1  # no validation in the timing
        out = Path(tempfile.mkdtemp(prefix="bench_step_"))
        trainer = build_trainer(c, out, False, [Clock()])
        trainer.fit(module, datamodule=dm)
    else:
        device = torch.device("cuda" if cuda else "cpu")
        module.to(device)
        dm.splits = dm.splits.to(device)
        opt = module.configure_optimizers()
        div = Divergence(len(lrs), device)
        opt.alive = div.alive
        it = iter(dm.train_dataloader())
        check = 1 if device.type == "cpu" else cfg.trainer.log_every
        for i in range(warmup + steps):
            if i == warmup:
                tick("t0")
            x, y = next(it)
            forward_backward(module, x, y, cfg.loss, div, i)
            opt.step()
            opt.zero_grad(set_to_none=True)
            if i % check == 0:
                div.poll()
        tick("t1")
    return {"wall": (clock["t1"] - clock["t0"]) / steps, "cpu": (clock["t1_cpu"] - clock["t0_cpu"]) / steps}


def step_arm(cfg, lrs: list[float], steps: int, warmup: int, rounds: int) -> dict:
    import statistics

    rows: dict[str, list[dict]] = {"harness": [], "plain": []}
    for r in range(rounds):
        for which in ("plain", "harness") if r % 2 == 0 else ("harness", "plain"):
            rows[which].append(population_step_s(cfg, lrs, steps, warmup, harness=which == "harness"))
    out = {}
    for which, rs in rows.items():
        out[which] = {f"{k}_ms": 1000 * statistics.median(r[k] for r in rs) for k in ("wall", "cpu")}
        out[which]["rounds"] = rs
    for k in ("wall", "cpu"):
        out[f"ratio_{k}"] = out["harness"][f"{k}_ms"] / out["plain"][f"{k}_ms"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--points", type=int, default=12, help="learning-rate points (the population size K)")
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--bn", choices=["off", "pre", "post"], default="pre")
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--lr-low", type=float, default=1e-4)
    p.add_argument("--lr-high", type=float, default=1e-1)
    p.add_argument("--solo-points", type=int, default=None, help="time only this many points one at a time")
    p.add_argument("--arms", default="lightning,plain,population", help="also: step (Lightning vs plain loop)")
    p.add_argument("--warmup", type=int, default=5, help="step arm: untimed steps first")
    p.add_argument("--rounds", type=int, default=3, help="step arm: rounds (alternating order)")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: leave torch's default)")
    p.add_argument("--set", nargs="*", default=[], help="extra Hydra overrides, e.g. data.batch_size=128")
    p.add_argument("--out", default=None, help="JSON path (default outputs/bench/population_<device>.json)")
    a = p.parse_args()

    import logging
    import warnings

    import torch

    from bnexp.core.train import quiet_lightning, train
    from bnexp.files import write_json_atomic
    from bnexp.population.train import train_population

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("bench_population: --device cuda but no CUDA device is visible")
    quiet_lightning()
    warnings.filterwarnings("ignore")
    logging.getLogger("bnexp").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)

    over = [
        f"model.depth={a.depth}",
        f"model.bn={a.bn}",
        f"trainer.max_steps={a.steps}",
        f"trainer.val_every={a.steps}",
        f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}",
        "trainer.progress_bar=false",
        "logger=none",
        *a.set,
    ]
    lrs = lr_grid(a.lr_low, a.lr_high, a.points)
    solo_n = min(a.solo_points or a.points, a.points)
    arms = [s.strip() for s in a.arms.split(",") if s.strip()]
    tmp = Path(tempfile.mkdtemp(prefix="bench_population_"))
    cfg = compose(over)
    # warm-up (data load and cache, kernels, CUDA context): a few steps, not timed
    train_population(compose(over + ["trainer.max_steps=5", "trainer.val_every=5"]), lrs[:2], [tmp / "w0", tmp / "w1"])

    def sync() -> None:
        if a.device == "cuda":
            torch.cuda.synchronize()

    results: dict[str, dict] = {}
    per_point: dict[str, list] = {}
    step_result = None
    for arm in arms:
        sync()
        t0 = time.perf_counter()
        if arm == "step":
            r = step_arm(cfg, lrs, a.steps, a.warmup, a.rounds)
            print(
                f"  step (K={a.points}): fit {r['harness']['wall_ms']:.2f} ms ({r['harness']['cpu_ms']:.2f} cpu) vs "
                f"plain loop {r['plain']['wall_ms']:.2f} ms ({r['plain']['cpu_ms']:.2f} cpu): "
                f"x{r['ratio_wall']:.3f} wall, x{r['ratio_cpu']:.3f} cpu",
                flush=True,
            )
            step_result = r
            continue
        if arm == "lightning":
            ms = [
                train(compose(over + [f"optim.lr={lr}"]), output_dir=tmp / f"l{i}") for i, lr in enumerate(lrs[:solo_n])
            ]
            n = solo_n
        elif arm == "plain":
            ms = [train_population(cfg, [lr], [tmp / f"p{i}"])[0] for i, lr in enumerate(lrs[:solo_n])]
            n = solo_n
        elif arm == "population":
            if a.device == "cuda":
                torch.cuda.reset_peak_memory_stats()
            ms = train_population(cfg, lrs, [tmp / f"k{i}" for i in range(a.points)])
            n = a.points
        else:
            sys.exit(f"bench_population: unknown arm {arm!r}; choose lightning, plain, population")
        sync()
        wall = time.perf_counter() - t0
        scale = a.points / n
        train_s = sum(m["train_s"] for m in ms) if arm != "population" else ms[0]["train_s"]
        results[arm] = dict(
            measured_points=n,
            wall_s=wall,
            wall_s_all_points=wall * scale,
            train_s=train_s,
            train_s_all_points=train_s * scale,
            extrapolated=n < a.points,
            diverged=sum(bool(m["diverged"]) for m in ms),
        )
        if arm == "population" and a.device == "cuda":
            results[arm]["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30
        per_point[arm] = [
            dict(lr=m["lr"], val_loss=m["val/loss"], val_acc=m["val/acc"], diverged=m["diverged"]) for m in ms
        ]
        print(f"  {arm}: {wall:.1f}s for {n} point(s)", flush=True)

    pop = results.get("population")
    dev = torch.cuda.get_device_name() if a.device == "cuda" else platform.processor() or platform.machine()
    print(
        f"\n{a.points} points, bn={a.bn} depth={a.depth} steps={a.steps} on {a.device} ({dev}), "
        f"torch threads={torch.get_num_threads()}"
    )
    print(
        f"{'arm':<12}{'points':>8}{'wall_s':>10}{'train_s':>10}{'s/point':>10}{'x pop (wall)':>14}{'x pop (train)':>15}"
    )
    for arm, r in results.items():
        note = " (extrapolated)" if r["extrapolated"] else ""
        xw = r["wall_s_all_points"] / pop["wall_s_all_points"] if pop else float("nan")
        xt = r["train_s_all_points"] / pop["train_s_all_points"] if pop else float("nan")
        print(
            f"{arm:<12}{a.points:>8}{r['wall_s_all_points']:>10.1f}{r['train_s_all_points']:>10.1f}"
            f"{r['wall_s_all_points'] / a.points:>10.2f}{xw:>14.2f}{xt:>15.2f}{note}"
        )
    # the arms train the same models, so their final val/loss agree; float32 with BN only to rounding
    # chaos (~1e-3 relative, more near the unstable edge; see tests/population/test_population.py)
    checks = {}
    if "population" in per_point:
        print(f"\n{'lr':>10}" + "".join(f"{arm + ' val/loss':>22}" for arm in per_point))
        for i, lr in enumerate(lrs):
            cells = [per_point[arm][i]["val_loss"] if i < len(per_point[arm]) else None for arm in per_point]
            print(f"{lr:>10.3g}" + "".join(f"{'-' if c is None else f'{c:.6g}':>22}" for c in cells))
        for arm in ("lightning", "plain"):
            if arm in per_point:
                pairs = zip(per_point[arm], per_point["population"][: len(per_point[arm])], strict=True)
                rel = [
                    abs(x["val_loss"] - y["val_loss"]) / max(abs(x["val_loss"]), 1e-12)
                    for x, y in pairs
                    if x["val_loss"] is not None and y["val_loss"] is not None
                ]
                checks[f"max_rel_dval_loss_{arm}_vs_population"] = max(rel) if rel else None
                print(f"max relative val/loss difference, {arm} vs population: {max(rel) if rel else 'n/a'}")

    out = Path(a.out or REPO / "outputs" / "bench" / f"population_{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    record = dict(
        args=vars(a),
        lrs=lrs,
        device=dev,
        torch=torch.__version__,
        threads=torch.get_num_threads(),
        cpu_count=os.cpu_count(),
        results=results,
        per_point=per_point,
        checks=checks,
        step=step_result,
    )
    write_json_atomic(out, record)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
