"""How far BN's running variance is from the true variance after a run: docs/results.md's "a small init
leaves the first BN layers' running variance 10 times its true value" (init_scale study, BN pre, depth 8).

    BNEXP_DATA_DIR=../shared/data/mnist OMP_NUM_THREADS=1 python scripts/running_variance.py \
        [--init-std 0.01 0.05] [--lr 1e-5] [--seed 0] [--out docs/results/running_variance.json]

Trains the study's configuration (BN pre, depth 8, 800 steps, the given init and lr) through bnexp's own
training (`bnexp.core.train.train`, logger none), then, per BN layer, compares the running variance the run
ends with (what inference uses) against the variance of that layer's input over 50 training batches with the
final weights (what `torch.optim.swa_utils.update_bn` computes: the recalibration of bnexp.core.recal). Prints
one line per layer (median over channels) and the population / batch / recalibrated accuracy, and writes the
numbers as JSON. Why it matters: the running variance starts at 1 and momentum 0.01 keeps 0.99^800 = 3.2e-4 of
that start after 800 steps, which outweighs a true variance near 3e-5.
"""

from __future__ import annotations

import argparse
import copy
import itertools
import json
import statistics
import tempfile
from pathlib import Path

import torch
from lightning.pytorch.callbacks import Callback
from torch import nn


class _Variances(Callback):
    """At the end of fit: each BN layer's running variance against its input's variance (update_bn)."""

    def __init__(self, n_batches: int = 50) -> None:
        self.n_batches, self.layers = n_batches, []

    @torch.no_grad()
    def on_fit_end(self, trainer, pl_module) -> None:
        model = getattr(pl_module.model, "_orig_mod", pl_module.model)
        bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        fresh = copy.deepcopy(model)
        batches = itertools.islice(iter(trainer.datamodule.train_dataloader()), self.n_batches)
        torch.optim.swa_utils.update_bn(((x, y) for x, y in batches), fresh)
        true = [m for m in fresh.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
        for i, (bn, t) in enumerate(zip(bns, true, strict=True)):
            run, tru = statistics.median(bn.running_var.tolist()), statistics.median(t.running_var.tolist())
            self.layers.append({"layer": i, "running_var": run, "true_var": tru, "ratio": run / tru})


def measure(init_std: float, lr: float, seed: int, extra: list[str]) -> dict:
    from bnexp.conf import compose
    from bnexp.core.train import train

    cfg = compose([
        "model.bn=pre", "model.depth=8", f"model.init_std={init_std}", f"optim.lr={lr}", f"seed={seed}",
        "logger=none", "trainer.progress_bar=false", *extra,
    ])  # fmt: skip
    cb = _Variances()
    with tempfile.TemporaryDirectory() as d:
        m = train(cfg, Path(d) / "run", callbacks=[cb])
    acc = {k: m.get(k) for k in ("val/acc", "val/acc_batchstats", "val/acc_recal")}
    return {"init_std": init_std, "lr": lr, "seed": seed, **acc, "layers": cb.layers}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--init-std", type=float, nargs="+", default=[0.01, 0.05])
    ap.add_argument("--lr", type=float, default=1e-5)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=Path("docs/results/running_variance.json"))
    ap.add_argument("overrides", nargs="*", help="more config overrides (e.g. trainer.max_steps=20 for a smoke run)")
    a = ap.parse_args()
    results = []
    for std in a.init_std:
        r = measure(std, a.lr, a.seed, a.overrides)
        results.append(r)
        print(f"init_std {std}, lr {a.lr:g}, seed {a.seed}: val/acc {r['val/acc']:.3f} (population), "
              f"{r['val/acc_batchstats']:.3f} (batch), {r['val/acc_recal']:.3f} (recalibrated)")  # fmt: skip
        for layer in r["layers"]:
            print(f"  BN layer {layer['layer']}: running var {layer['running_var']:.3g}, true var"
                  f" {layer['true_var']:.3g}, ratio {layer['ratio']:.2f}")  # fmt: skip
    a.out.parent.mkdir(parents=True, exist_ok=True)
    command = " ".join(["python scripts/running_variance.py", *a.overrides])
    a.out.write_text(json.dumps({"command": command, "runs": results}, indent=1) + "\n")
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
