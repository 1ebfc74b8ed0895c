"""One sweep trial against its optimizer steps alone, in one run: what a trial costs beyond training.

    python bench/bench_trial.py                       # depth 19, BN pre, 800 steps, 2 rounds, CPU
    python bench/bench_trial.py --depth 8 --rounds 3
    python bench/bench_trial.py --device cuda --compile reduce-overhead

Three arms, each round in turn (alternating which goes first), in this one process, one thread unless
--threads says otherwise (a sweep worker's setting on a CPU):
  steps      a plain PyTorch loop of the trial's optimizer steps alone (forward, sigmoid loss, backward, Adam:
             bench_step.plain_steps);
  trial      bnexp.core.train.train(cfg) with a sweep trial's settings (bnexp/conf/study.yaml: validations
             before the last on 1000 images, no test pass), the W&B logger off, the trial's recalibration in;
  full       the same with every saving off (trainer.val_subset=null trainer.test=true
             trainer.memory_format=contiguous): what a trial cost before.
The steps and trial arms run in the same layout (--memory-format, default auto: bnexp's choice for the device,
channels_last on a CPU), so trial / steps is what a trial adds to its own steps.
Prints the median wall times and the ratios trial / steps and full / steps (the goal: trial <= 1.25x), and
writes JSON (--out, default bench/results/trial-<device>.json).
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

sys.path.insert(0, str(REPO / "bench"))

from bench_step import plain_steps  # noqa: E402  the same plain loop bench_step times

from bnexp.core.data import load_mnist, make_splits  # noqa: E402


def trial(bn: str, depth: int, steps: int, device: str, compile_mode: str, full: bool, layout: str = "auto") -> dict:
    """One trial through train(cfg), composed as a sweep composes its trials (bnexp.conf's study config)."""
    from bnexp.conf import compose
    from bnexp.core.train import train

    acc = "gpu" if device.startswith("cuda") else "cpu"
    over = [f"model.bn={bn}", f"model.depth={depth}", f"trainer.max_steps={steps}", f"trainer.accelerator={acc}",
            f"trainer.compile={compile_mode}", "trainer.progress_bar=false", "logger=none",
            f"trainer.memory_format={'contiguous' if full else layout}"]  # fmt: skip
    if full:
        over += ["trainer.val_subset=null", "trainer.test=true"]
    cfg = compose(over, "study")
    cfg = type(cfg)({k: cfg[k] for k in cfg if k != "sweep"})  # bnexp.run's keys: the study's trainer defaults
    from omegaconf import OmegaConf

    from bnexp.core.config import Config

    cfg = OmegaConf.merge(OmegaConf.structured(Config), OmegaConf.to_container(cfg))
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        m = train(cfg, output_dir=out)
        return {"wall_s": time.perf_counter() - t0, "train_s": m["train_s"], "recal_s": m.get("recal_s")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bn", default="pre")
    ap.add_argument("--depth", type=int, default=19)
    ap.add_argument("--steps", type=int, default=800)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--compile", default="none")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--memory-format", default="auto", help="trainer.memory_format of the steps and trial arms")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    from bnexp.core.alloc import keep_memory
    from bnexp.core.train import quiet_lightning

    keep_memory()  # as bnexp.run and bnexp.sweep do
    quiet_lightning()
    splits = make_splits(load_mnist(os.environ.get("BNEXP_DATA_DIR")), None, None, None)
    times: dict[str, list[float]] = {"steps": [], "trial": [], "full": []}
    arms = {
        "steps": lambda: a.steps * plain_steps(splits, a.bn, a.depth, a.steps, 0, a.device, a.compile, a.memory_format),
        "trial": lambda: trial(a.bn, a.depth, a.steps, a.device, a.compile, False, a.memory_format)["wall_s"],
        "full": lambda: trial(a.bn, a.depth, a.steps, a.device, a.compile, full=True)["wall_s"],
    }
    for r in range(a.rounds):
        order = list(arms) if r % 2 == 0 else list(reversed(arms))
        for name in order:
            times[name].append(arms[name]())
            print(f"round {r}: {name} {times[name][-1]:.1f} s", file=sys.stderr, flush=True)
    med = {k: statistics.median(v) for k, v in times.items()}
    res = {
        "config": vars(a),
        "torch": torch.__version__,
        "median_s": med,
        "all_s": times,
        "trial_over_steps": med["trial"] / med["steps"],
        "full_over_steps": med["full"] / med["steps"],
    }
    print("| arm | median wall (s) | / steps |\n|---|---:|---:|")
    for k in ("steps", "trial", "full"):
        print(f"| {k} | {med[k]:.1f} | {med[k] / med['steps']:.2f}x |")
    out = Path(a.out or REPO / "bench" / "results" / f"trial-{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=2) + "\n")


if __name__ == "__main__":
    main()
