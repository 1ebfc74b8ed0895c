"""Hand-made trial tables for the analysis tests: records as bnexp.sweep.records writes them."""

from __future__ import annotations

from bnexp.analysis.stability import StabilityRule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # one lr per decade


def trial(lr: float, val_acc: float | None, *, bn: str = "pre", bias: str = "auto", depth: int = 19, **kw) -> dict:
    """A COMPLETE, non-diverged trial unless kw says otherwise; batch statistics equal to population
    statistics (no lag, as BN off records them) unless `**{"val/acc_batchstats": ...}` is given."""
    rec = {
        "number": kw.pop("number", 0),
        "state": "COMPLETE",
        "bn": bn,
        "bias": bias,
        "depth": depth,
        "lr": lr,
        "seed": 0,
        "diverged": False,
        "val/acc": val_acc,
        "val/acc_best": val_acc,
        "val/acc_batchstats": val_acc,
        "test/acc": val_acc,
        "step": 800,
        "wall_s": 12.5,
        "overrides": f"model.bn={bn} model.depth={depth} optim.lr={lr}",
    }
    rec.update(kw)
    return rec


def curve(pop: list[float | None], batch: list[float | None] | None = None, every: int = 100) -> list[dict]:
    """A val_history as metrics.json holds it: one entry per validation, every `every` steps."""
    batch = pop if batch is None else batch
    return [
        {"step": every * (i + 1), "val/loss": None if a is None else 1 - a, "val/acc": a,
         "val/loss_batchstats": None if b is None else 1 - b, "val/acc_batchstats": b, "val/acc_best": a}
        for i, (a, b) in enumerate(zip(pop, batch, strict=True))
    ]  # fmt: skip


def with_curve(rec: dict, pop: list[float | None], batch: list[float | None] | None = None) -> dict:
    """`rec` with a validation history ending in its final values (as train() records it)."""
    batch = pop if batch is None else batch
    return {**rec, "val_history": curve(pop, batch), "val/acc": pop[-1], "val/acc_batchstats": batch[-1]}


def sweep(accs: list[float | None], lrs: list[float] = GRID, **kw) -> list[dict]:
    return [trial(lr, a, number=i, **kw) for i, (lr, a) in enumerate(zip(lrs, accs, strict=True))]


def only(variants: list[dict]) -> dict:
    assert len(variants) == 1
    return variants[0]


RULE = StabilityRule(threshold=0.9)


def seeded(fracs: list[tuple[int, int]], lrs: list[float] = GRID) -> list[dict]:
    """(stable seeds, total seeds) per lr; unstable seeds at 0.5."""
    out = []
    for lr, (k, n) in zip(lrs, fracs, strict=True):
        out += [trial(lr, 0.95 if s < k else 0.5, seed=s, number=len(out)) for s in range(n)]
    return out


def lagging_table() -> list[dict]:
    """Two seeds of BN off and BN pre at depth 4; pre's population statistics lag at lr 0.1 (batch: 0.96)."""
    trials = []
    for seed in (0, 1):
        for lr, a in zip(GRID, [0.5, 0.95, 0.96, 0.3, None], strict=True):
            t = trial(lr, a, bn="off", depth=4, seed=seed, number=len(trials), step=200)
            trials.append(
                with_curve(t, [a, a]) if a is not None else {**t, "diverged": True, "diverged_step": 40, "step": 41}
            )
        for lr, a, b in zip(GRID, [0.6, 0.95, 0.97, 0.88 - 0.1 * seed, 0.2], [0.6, 0.95, 0.97, 0.96, 0.2], strict=True):
            trials.append(
                with_curve(
                    trial(lr, a, depth=4, seed=seed, number=len(trials), step=300), [0.17, 0.5, a], [0.2, 0.9, b]
                )
            )
    return trials
