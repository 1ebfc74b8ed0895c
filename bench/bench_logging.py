"""What does logging cost? Wall time of the seed run (800 steps, depth 19, bn=pre, CPU) per logger.

    python bench/bench_logging.py                        # none vs csv vs wandb (offline), 2 repeats
    python bench/bench_logging.py --configs none,wandb,wandb-nodiag,wandb-landscape --repeats 3
    python bench/bench_logging.py --steps 200 --repeats 1   # a quick look

Each run is a fresh `python -m bnexp.run` process (imports, W&B start-up and finish included), all in this
one script, the configurations interleaved and their order rotated per repeat so that drift in the machine's
load falls on all of them alike. Reported per configuration: the median over repeats of the process wall
time, of train()'s wall_s (data, fit, test) and of the fit loop alone (train_s), each with its ratio to
logger=none. The `wandb` configuration is conf/logger/wandb.yaml as shipped (per-layer diagnostics every
100 steps), offline. Results go to a JSON file (--out) with the machine's load average before and after:
a busy machine makes the ratios noisy, rerun then.

`--account` adds a load-robust second measure: one in-process logger=wandb run with the logging code
instrumented (importing wandb, starting the run, every log_metrics call, every logging callback hook incl.
the forward hooks, finishing), its total against the run's wall time. Contention slows the numerator and
the denominator alike, so this fraction holds on a shared machine where the A/B ratio does not.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

CONFIGS: dict[str, list[str]] = {
    "none": ["logger=none"],
    "csv": ["logger=csv"],
    "wandb": ["logger=wandb", "logger.mode=offline"],
    "wandb-nodiag": ["logger=wandb", "logger.mode=offline", "logger.diagnostics_every=0"],
    "wandb-landscape": ["logger=wandb", "logger.mode=offline", "logger.landscape_every=200"],
}


def run_once(name: str, steps: int, depth: int, work: Path, i: int) -> dict:
    out = work / f"{name}-{i}"
    cmd = [
        sys.executable,
        "-m",
        "bnexp.run",
        f"model.depth={depth}",
        "model.bn=pre",
        f"trainer.max_steps={steps}",
        "trainer.accelerator=cpu",
        "trainer.progress_bar=false",
        *CONFIGS[name],
        f"hydra.run.dir={out}",
    ]
    env = dict(os.environ, WANDB_SILENT="true", WANDB_DIR=str(work), WANDB_CONFIG_DIR=str(work / "wandb-config"))
    env.update(WANDB_CACHE_DIR=str(work / "wandb-cache"), WANDB_DATA_DIR=str(work / "wandb-data"))
    t0 = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{name} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    m = json.loads((out / "metrics.json").read_text())
    return {"process_s": wall, "wall_s": m["wall_s"], "train_s": m["train_s"], "val_acc": m.get("val/acc")}


def account(steps: int, depth: int, work: Path) -> dict:
    """Seconds spent inside logging code during one in-process logger=wandb run, by part."""
    import functools
    from collections import defaultdict

    os.environ.update(WANDB_SILENT="true", WANDB_DIR=str(work), WANDB_CONFIG_DIR=str(work / "wandb-config"))
    os.environ.update(WANDB_CACHE_DIR=str(work / "wandb-cache"), WANDB_DATA_DIR=str(work / "wandb-data"))
    from bnexp.conf import compose as compose_cfg
    from bnexp.core.train import train

    spent: dict[str, float] = defaultdict(float)
    depth_guard = [0]  # count the outermost timed call only (callbacks call log_metrics themselves)

    def timed(fn, bucket):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            depth_guard[0] += 1
            t = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                depth_guard[0] -= 1
                if depth_guard[0] == 0:
                    spent[bucket] += time.perf_counter() - t

        return wrapper

    t = time.perf_counter()
    import wandb  # noqa: F401  (what `import wandb` costs a bnexp.run process)

    spent["import wandb"] = time.perf_counter() - t
    from lightning.pytorch.loggers import WandbLogger

    import bnexp.tracking.diagnostics as diag
    import bnexp.tracking.wandb_runs as wl

    wl.build_wandb_logger = timed(wl.build_wandb_logger, "wandb start")
    wl.finish_wandb = timed(wl.finish_wandb, "wandb finish")
    WandbLogger.log_metrics = timed(WandbLogger.log_metrics, "log_metrics (Lightning)")
    for cls in (diag.Throughput, diag.LayerStats, diag.LandscapeProbe):
        for name in [k for k in vars(cls) if k.startswith("on_")]:
            setattr(cls, name, timed(getattr(cls, name), f"callback {cls.__name__}"))
    make_hook = diag.LayerStats._hook
    diag.LayerStats._hook = lambda self, key, which: timed(make_hook(self, key, which), "callback LayerStats")

    ov = [f"model.depth={depth}", "model.bn=pre", f"trainer.max_steps={steps}", "trainer.accelerator=cpu"]
    ov += ["trainer.progress_bar=false", "logger=wandb", "logger.mode=offline"]
    m = train(compose_cfg(ov), output_dir=work / "account")
    total = m["wall_s"] + spent["import wandb"]
    return {"wall_s": total, "spent": dict(spent), "fraction": sum(spent.values()) / total}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=800)
    p.add_argument("--depth", type=int, default=19)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--configs", default="none,csv,wandb", help=f"comma list of: {', '.join(CONFIGS)}")
    p.add_argument("--out", default=str(REPO / "bench" / "results" / "bench_logging.json"))
    p.add_argument("--account", action="store_true", help="also time the logging code inside one wandb run")
    a = p.parse_args(argv)
    names = a.configs.split(",")
    if "none" not in names:
        names.insert(0, "none")
    unknown = [n for n in names if n not in CONFIGS]
    if unknown:
        p.error(f"unknown configs {unknown}; choose from {', '.join(CONFIGS)}")

    load0 = os.getloadavg()
    runs: dict[str, list[dict]] = {n: [] for n in names}
    with tempfile.TemporaryDirectory(prefix="bench_logging_") as tmp:
        for rep in range(a.repeats):
            order = names[rep % len(names) :] + names[: rep % len(names)]  # rotate: drift hits all alike
            for n in order:
                r = run_once(n, a.steps, a.depth, Path(tmp), rep)
                runs[n].append(r)
                print(f"  repeat {rep} {n:16s} process {r['process_s']:7.1f}s  fit {r['train_s']:7.1f}s", flush=True)
        acc = account(a.steps, a.depth, Path(tmp)) if a.account else None
    load1 = os.getloadavg()

    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("process_s", "wall_s", "train_s")}
        for n, rs in runs.items()
    }
    base = med["none"]
    rows = []
    load = f"load avg {load0[0]:.1f} -> {load1[0]:.1f}"
    print(f"\n{a.steps} steps, depth {a.depth}, bn=pre, CPU; median of {a.repeats}; {load}")
    print(f"{'logger':16s} {'process s':>10s} {'ratio':>7s} {'wall_s':>9s} {'ratio':>7s} {'fit s':>9s} {'ratio':>7s}")
    for n in names:
        m = med[n]
        ratio = {k: m[k] / base[k] for k in m}
        rows.append({"logger": n, **m, **{f"{k}_ratio": v for k, v in ratio.items()}, "runs": runs[n]})
        print(
            f"{n:16s} {m['process_s']:10.1f} {ratio['process_s']:7.3f} {m['wall_s']:9.1f} {ratio['wall_s']:7.3f}"
            f" {m['train_s']:9.1f} {ratio['train_s']:7.3f}"
        )
    result = {
        "bench": "logging",
        "steps": a.steps,
        "depth": a.depth,
        "repeats": a.repeats,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "cpus": os.cpu_count(),
            "platform": platform.platform(),
            "loadavg_before": load0,
            "loadavg_after": load1,
        },  # fmt: skip
        "results": rows,
        "account": acc,
    }
    if acc:
        print(f"\nlogging code inside one logger=wandb run ({acc['wall_s']:.1f}s incl. import wandb):")
        for k, v in sorted(acc["spent"].items(), key=lambda kv: -kv[1]):
            print(f"  {k:28s} {v:8.3f}s")
        print(f"  {'total':28s} {sum(acc['spent'].values()):8.3f}s = {100 * acc['fraction']:.2f}% of the run")
    out = Path(a.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
