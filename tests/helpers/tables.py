"""Hand-made trial tables for the analysis tests: records as bnexp.sweep.records writes them."""

from __future__ import annotations

from bnexp.analysis.stability import StabilityRule

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GRID = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]  # one lr per decade


def trial(lr: float, val_acc: float | None, *, bn: str = "pre", bias: str = "auto", depth: int = 19, **kw) -> dict:
    """A COMPLETE, non-diverged trial unless kw says otherwise."""
    rec = {
        "number": kw.pop("number", 0),
        "state": "COMPLETE",
        "bn": bn,
        "bias": bias,
        "depth": depth,
        "lr": lr,
        "seed": 0,
        "diverged": False,
        "val_acc": val_acc,
        "val_acc_best": val_acc,
        "val_acc_batchstats": None,
        "test_acc": val_acc,
        "step": 800,
        "wall_s": 12.5,
        "overrides": f"model.bn={bn} model.depth={depth} optim.lr={lr}",
    }
    rec.update(kw)
    return rec


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
