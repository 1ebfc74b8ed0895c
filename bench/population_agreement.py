"""Population member vs its solo run, through the real entry points (train_population, train), in float32 and
float64: what "exact" means in practice (README, population training).

    python bench/population_agreement.py [--depth 2] [--steps 300] [--lrs 0.01,0.1,1] [--bn pre]

Prints one JSON object: per precision, per lr, the member's and the solo run's final val/acc and val/loss.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--lrs", default="0.01,0.1,1")
    p.add_argument("--bn", default="pre")
    a = p.parse_args()

    from bnexp.conf import compose
    from bnexp.core.train import train
    from bnexp.population.train import train_population

    lrs = [float(v) for v in a.lrs.split(",")]
    out: dict[str, list[dict]] = {}
    for prec in ("32-true", "64-true"):
        over = [f"model.depth={a.depth}", f"model.bn={a.bn}", f"trainer.max_steps={a.steps}", "logger=none"]
        over += ["trainer.val_every=100", "trainer.progress_bar=false", f"trainer.precision={prec}"]
        d = Path(tempfile.mkdtemp())
        pop = train_population(compose(over), lrs, [d / f"p{i}" for i in range(len(lrs))])
        out[prec] = []
        for i, lr in enumerate(lrs):
            solo = train(compose([*over, f"optim.lr={lr}"]), output_dir=d / f"s{i}")
            out[prec].append(
                {
                    "lr": lr,
                    "member_val_acc": pop[i]["val/acc"],
                    "solo_val_acc": solo["val/acc"],
                    "member_val_loss": pop[i]["val/loss"],
                    "solo_val_loss": solo["val/loss"],
                }
            )
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
