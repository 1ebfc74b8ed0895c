"""`python -m bnexp.lr_find model.bn=pre [--min-lr 1e-6] [--max-lr 10] [--steps 100]`: the learning-rate
range test (Smith 2017) in seconds: one run whose lr grows exponentially from --min-lr to --max-lr over
--steps steps, through Lightning's own `Tuner.lr_find`. It writes, into the run dir (`hydra.run.dir=...`):

  lr_find.png    the training loss against the lr (log axis), Lightning's suggestion and the blow-up lr marked
  lr_find.json   {"suggestion", "loss_min_lr", "blowup_lr", "lrs", "losses", ...}: the suggestion is
                 Lightning's (the steepest descent of the smoothed loss); `loss_min_lr` is where the smoothed
                 loss is lowest, past which it rises (Smith's upper bound on a usable lr); `blowup_lr` is the
                 first lr whose smoothed loss is not finite or exceeds 4x the lowest so far (Lightning's own
                 early-stop criterion), None if none did (the sigmoid loss is bounded: it often does not).

Every other argument is a `bnexp.run` override (one grammar): the net, data and optimizer are the run's.
What it predicts, and what not, is measured in docs/results.md: a range test sees the training loss, with
batch statistics, so it can only predict the upper edge judged by batch statistics.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bnexp.cli import ConfigError, guard
from bnexp.core.config import Config, register_configs, validate

register_configs()
BLOWUP = 4.0  # Lightning's early_stop_threshold: the loss at 4x its lowest is where the range test stops
FLAGS = argparse.Namespace(min_lr=1e-6, max_lr=10.0, steps=100)


def _flags(argv: list[str]) -> list[str]:
    """Take this command's own flags out of argv (into FLAGS); the rest are Hydra overrides."""
    ap = argparse.ArgumentParser(
        prog="python -m bnexp.lr_find",
        usage="python -m bnexp.lr_find [OVERRIDE ...] [--min-lr LR] [--max-lr LR] [--steps N]",
        description="The learning-rate range test (Smith 2017) through Lightning's Tuner.lr_find: one run, lr growing "
        "exponentially; writes lr_find.png and lr_find.json into the run dir (hydra.run.dir=...).",
        epilog="Every OVERRIDE is a bnexp.run setting (python -m bnexp.run --help lists them), e.g. model.bn=pre.",
    )
    ap.add_argument("--min-lr", type=float, default=FLAGS.min_lr, help="the lr of the first step (default 1e-6)")
    ap.add_argument("--max-lr", type=float, default=FLAGS.max_lr, help="the lr of the last step (default 10)")
    ap.add_argument("--steps", type=int, default=FLAGS.steps, help="training steps, lr growing exponentially (100)")
    known, rest = ap.parse_known_args(argv)  # -h/--help: this command's flags and what else it takes
    if not (0 < known.min_lr < known.max_lr and math.isfinite(known.max_lr)):
        raise ConfigError(f"--min-lr {known.min_lr:g} --max-lr {known.max_lr:g}: need 0 < min < max (e.g. 1e-6, 10)")
    if known.steps < 5:
        raise ConfigError(f"--steps {known.steps}: the range test needs at least 5 steps (e.g. --steps 100)")
    vars(FLAGS).update(vars(known))
    return rest


def blowup_lr(lrs: list[float], losses: list[float], factor: float = BLOWUP) -> float | None:
    """The first lr whose loss is not finite or exceeds `factor` x the lowest loss before it."""
    best = math.inf
    for lr, loss in zip(lrs, losses, strict=True):
        if not math.isfinite(loss) or loss > factor * best:
            return float(lr)
        best = min(best, loss)
    return None


def range_test(cfg: DictConfig, out: Path, min_lr: float, max_lr: float, steps: int) -> dict[str, Any]:
    """Run the range test for `cfg`; write lr_find.png and lr_find.json into `out`; return the JSON dict."""
    import lightning as L
    from lightning.pytorch.tuner import Tuner

    from bnexp.core.train import build_datamodule, build_module, build_trainer, quiet_lightning
    from bnexp.files import write_json_atomic

    quiet_lightning()
    cfg.trainer.val_every = steps + 1  # the range test trains only; no validation inside it
    cfg.trainer.progress_bar = False
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    dm, module = build_datamodule(cfg), build_module(cfg)
    out.mkdir(parents=True, exist_ok=True)
    trainer = build_trainer(cfg, out, False, [])
    finder = Tuner(trainer).lr_find(module, datamodule=dm, min_lr=min_lr, max_lr=max_lr, num_training=steps,
                                    early_stop_threshold=BLOWUP, update_attr=False)  # fmt: skip
    lrs, losses = [float(x) for x in finder.results["lr"]], [float(x) for x in finder.results["loss"]]
    result = {
        "suggestion": finder.suggestion(),
        "loss_min_lr": lrs[min(range(len(lrs)), key=lambda i: losses[i] if math.isfinite(losses[i]) else math.inf)],
        "blowup_lr": blowup_lr(lrs, losses),
        "min_lr": min_lr,
        "max_lr": max_lr,
        "steps": steps,
        "variant": f"{cfg.model.bn}-{cfg.model.bias}-d{cfg.model.depth}",
        "lrs": lrs,
        "losses": [x if math.isfinite(x) else None for x in losses],
    }
    _plot(finder, result, out / "lr_find.png")
    write_json_atomic(out / "lr_find.json", result)
    return result


def _plot(finder: Any, result: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bnexp.analysis.figures import save_figure

    fig = finder.plot(suggest=True, show=False)
    ax = fig.axes[0]
    ax.lines[0].set_label("smoothed training loss")
    if result["suggestion"] is not None:
        ax.plot([], [], "o", color="red", label=f"Lightning's suggestion {result['suggestion']:.3g}")
    ax.axvline(result["loss_min_lr"], color="tab:green", ls=":", lw=1, label=f"lowest loss {result['loss_min_lr']:.3g}")
    if result["blowup_lr"] is not None:
        ax.axvline(result["blowup_lr"], color="tab:red", ls="--", lw=1, label=f"blow-up {result['blowup_lr']:.3g}")
    ax.set_title(f"LR range test, {result['variant']}: training loss (batch statistics) vs lr", fontsize=9)
    ax.legend(fontsize=8)
    save_figure(fig, path)
    plt.close("all")


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    validate(cfg)
    out = Path(HydraConfig.get().runtime.output_dir)
    r = range_test(cfg, out, FLAGS.min_lr, FLAGS.max_lr, FLAGS.steps)
    blow = "none (raise --max-lr)" if r["blowup_lr"] is None else f"{r['blowup_lr']:.3g}"
    sug = "none" if r["suggestion"] is None else f"{r['suggestion']:.3g}"
    print(f"lr range test {r['variant']}: suggestion {sug}, lowest loss at {r['loss_min_lr']:.3g}, blow-up {blow};"
          f" {out / 'lr_find.png'}", flush=True)  # fmt: skip
    return r


def main() -> None:
    def go() -> Any:
        sys.argv = [sys.argv[0], *_flags(sys.argv[1:])]
        return _hydra_main()

    guard(go, schema=Config, prog="python -m bnexp.lr_find")


if __name__ == "__main__":
    main()
