"""Harness vs a plain PyTorch loop, same model, same batches, same process.

  python bench/bench_step.py                     # (a) training step, bn off/pre/post, CPU
  python bench/bench_step.py --trial             # (b) + one 800-step trial end to end
  python bench/bench_step.py --sweep             # (c) + a small sweep's trials per minute
  python bench/bench_step.py --device cuda --compile reduce-overhead --trial --sweep   # on a GPU

(a) times steps [warmup, warmup + steps) inside trainer.fit (a callback reads the clock, so Lightning's
    per-step loop overhead is in, its setup is not) against the same steps of a plain loop. Rounds
    alternate which goes first; the table reports the median ratio harness / plain.
(b) times bnexp.core.train.train(cfg) (800 steps, 8 validations with population and batch statistics, test,
    100 single-image scores) against a plain loop doing the same work.
(c) trials per minute of bnexp.sweep (one worker) against plain trials run back to back.
Prints a table and writes JSON (--out, default bench/results/step-<device>.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from bnexp.core.data import BatchStream, eval_batches, load_mnist, make_splits  # noqa: E402
from bnexp.core.lit import batch_stats, compute_loss  # noqa: E402
from bnexp.core.net import DeepConvNet  # noqa: E402


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def compose(overrides: list[str]):
    from bnexp.conf import compose as compose_config

    return compose_config(overrides)


def plain_steps(
    splits, bn: str, depth: int, steps: int, warmup: int, device: str, compile_mode: str, layout: str = "auto"
) -> float:
    """Seconds per step of the plainest correct loop: forward, sigmoid loss, backward, Adam; the net in `layout`
    (trainer.memory_format's values; auto as bnexp decides it for the device: bnexp.core.layout.choose)."""
    from bnexp.core.layout import choose

    torch.manual_seed(0)
    fmt = choose(layout, "cuda" if device.startswith("cuda") else "cpu")
    model = DeepConvNet(depth=depth, bn=bn).to(device)
    model = model.to(memory_format=torch.channels_last if fmt == "channels_last" else torch.contiguous_format)
    fwd = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    it = iter(BatchStream(splits.train_x, splits.train_y, 64, 0))
    for i in range(warmup + steps):
        if i == warmup:
            sync(device)
            t0 = time.perf_counter()
        x, y = next(it)
        loss = compute_loss(fwd(x), y, "sigmoid")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    sync(device)
    return (time.perf_counter() - t0) / steps


def harness_steps(bn: str, depth: int, steps: int, warmup: int, device: str, compile_mode: str, out: str) -> float:
    import lightning as L

    from bnexp.core.train import build_datamodule, build_module, build_trainer, quiet_lightning

    class Clock(L.Callback):
        t0 = t1 = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            if trainer.global_step == warmup:
                sync(device)
                self.t0 = time.perf_counter()

        def on_train_end(self, trainer, pl_module):
            sync(device)
            self.t1 = time.perf_counter()

    quiet_lightning()
    acc = "gpu" if device.startswith("cuda") else "cpu"
    cfg = compose(
        [
            f"model.bn={bn}",
            f"model.depth={depth}",
            f"trainer.max_steps={warmup + steps}",
            f"trainer.val_every={warmup + steps + 1}",  # no validation inside the timed steps
            f"trainer.accelerator={acc}",
            f"trainer.compile={compile_mode}",
            "trainer.progress_bar=false",
            "logger=csv",  # the default logger: its cost is part of the harness
        ]
    )
    L.seed_everything(0, verbose=False)
    dm, module, clock = build_datamodule(cfg), build_module(cfg), Clock()
    from bnexp.tracking.loggers import build_logger

    trainer = build_trainer(cfg, Path(out), build_logger(cfg, Path(out)), [clock])
    trainer.fit(module, datamodule=dm)
    return (clock.t1 - clock.t0) / steps


def plain_trial(splits, bn: str, depth: int, device: str, compile_mode: str, steps: int = 800) -> float:
    """The full seed protocol in a plain loop: train, validate every 100 steps both ways, test, 100 singles."""
    t0 = time.perf_counter()
    torch.manual_seed(0)
    s = splits.to(device)
    model = DeepConvNet(depth=depth, bn=bn).to(device)
    fwd = model if compile_mode == "none" else torch.compile(model, mode=compile_mode)
    opt = torch.optim.Adam(model.parameters(), lr=0.002)
    it = iter(BatchStream(s.train_x, s.train_y, 64, 0))
    val = eval_batches(s.val_x, s.val_y, 1000)

    def evaluate(batches) -> float:
        model.eval()
        with torch.no_grad():
            c = sum((fwd(x).argmax(-1) == y).sum() for x, y in batches)
        model.train()
        return float(c)

    for i in range(1, steps + 1):
        x, y = next(it)
        loss = compute_loss(fwd(x), y, "sigmoid")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i % 100 == 0:
            evaluate(val)
            with torch.no_grad(), batch_stats(model):
                sum((fwd(x).argmax(-1) == y).sum() for x, y in val)
    evaluate(eval_batches(s.test_x, s.test_y, 1000))
    evaluate(eval_batches(s.test_x[:100], s.test_y[:100], 1))
    sync(device)
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--depth", type=int, default=19)
    ap.add_argument("--steps", type=int, default=100)
    ap.add_argument("--warmup", type=int, default=10)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--variants", default="off,pre,post")
    ap.add_argument("--compile", default="none", help="none | default | reduce-overhead | max-autotune")
    ap.add_argument("--trial", action="store_true", help="(b) one 800-step trial end to end")
    ap.add_argument("--sweep", action="store_true", help="(c) a small sweep's trials per minute")
    ap.add_argument("--sweep-trials", type=int, default=4)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("BNEXP_DATA_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
    splits = make_splits(load_mnist())
    dev_splits = splits.to(a.device)
    tmp = tempfile.mkdtemp(prefix="bnexp-bench-")
    result: dict = {
        "device": a.device,
        "device_name": torch.cuda.get_device_name() if a.device.startswith("cuda") else "cpu",
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "depth": a.depth,
        "compile": a.compile,
        "step": {},
    }
    print(f"# device={result['device_name']} torch={torch.__version__} threads={torch.get_num_threads()}")
    print(f"{'variant':<8} {'plain ms/step':>14} {'harness ms/step':>16} {'ratio':>7}")
    for bn in a.variants.split(","):
        plains, harns = [], []
        for r in range(a.rounds):
            order = ("plain", "harness") if r % 2 == 0 else ("harness", "plain")
            for which in order:
                if which == "plain":
                    plains.append(plain_steps(dev_splits, bn, a.depth, a.steps, a.warmup, a.device, a.compile))
                else:
                    harns.append(harness_steps(bn, a.depth, a.steps, a.warmup, a.device, a.compile, tmp))
        ratios = [h / p for h, p in zip(harns, plains, strict=True)]
        row = {
            "plain_ms": 1000 * statistics.median(plains),
            "harness_ms": 1000 * statistics.median(harns),
            "ratio": statistics.median(ratios),
            "ratios": ratios,
        }
        result["step"][bn] = row
        print(f"{bn:<8} {row['plain_ms']:>14.2f} {row['harness_ms']:>16.2f} {row['ratio']:>7.3f}")

    if a.trial:
        from bnexp.core.train import train

        acc = "gpu" if a.device.startswith("cuda") else "cpu"
        cfg = compose(
            [
                f"model.depth={a.depth}",
                f"trainer.accelerator={acc}",
                f"trainer.compile={a.compile}",
                "trainer.progress_bar=false",
                "logger=csv",
            ]
        )
        plain_s = plain_trial(splits, "pre", a.depth, a.device, a.compile)
        t0 = time.perf_counter()
        m = train(cfg, output_dir=Path(tmp) / "trial")
        harness_s = time.perf_counter() - t0
        result["trial"] = {
            "plain_s": plain_s,
            "harness_s": harness_s,
            "ratio": harness_s / plain_s,
            "val_acc": m["val/acc"],
        }
        print(
            f"trial (800 steps, bn=pre): plain {plain_s:.1f}s  harness {harness_s:.1f}s  "
            f"ratio {harness_s / plain_s:.3f}  val/acc {m['val/acc']:.4f}"
        )

    if a.sweep:
        from bnexp.sweep.app import main as run_sweep

        n = a.sweep_trials
        acc = "gpu" if a.device.startswith("cuda") else "cpu"
        t0 = time.perf_counter()
        run_sweep(
            [
                "sweep=lr_stability",
                "sweep.name=bench",
                f"sweep.out_dir={tmp}/sweep",
                "sweep.grid.model.bn=[pre]",
                f"sweep.lr.points={n}",
                "sweep.progress=false",
                f"model.depth={a.depth}",
                f"trainer.accelerator={acc}",
                f"trainer.compile={a.compile}",
            ]
        )
        sweep_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        for _ in range(n):
            plain_trial(splits, "pre", a.depth, a.device, a.compile)
        plain_s = time.perf_counter() - t0
        result["sweep"] = {
            "trials": n,
            "sweep_trials_per_min": 60 * n / sweep_s,
            "plain_trials_per_min": 60 * n / plain_s,
            "ratio": sweep_s / plain_s,
        }
        print(
            f"sweep ({n} trials): {60 * n / sweep_s:.2f} trials/min vs plain {60 * n / plain_s:.2f}  "
            f"time ratio {sweep_s / plain_s:.3f}"
        )

    out = Path(a.out or REPO / "bench" / "results" / f"step-{a.device.split(':')[0]}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
