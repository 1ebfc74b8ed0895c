"""The one metrics contract every training path fills: a solo run (bnexp.core.lit.BNExpModule) and each member
of a population (bnexp.population), built by the same code from the same pieces.

* `compute_loss`  the training loss; one net's logits (N, C) give a scalar, a population's (K, N, C) give (K,),
                  member k's loss computed exactly as its own net's.
* `EvalSums`      one evaluation pass: summed loss, correct count and count per prefix, kept on the device;
                  `validation()` / `test()` turn them into the metric keys (one host sync).
* `Divergence`    non-finite training losses, judged on the device (no host sync per step) for 1 or K runs;
                  `poll()` reads which diverged at which step (one host sync, every `check_every` steps).
* `RunRecord`     one run's results as they come: validation history, `val/acc_best` (computed here only),
                  the final metrics, the step it diverged at and the step it stopped at.
* `run_metrics`   the dict a run returns and writes to metrics.json.

metrics.json keys: val/loss, val/acc (population statistics), val/loss_batchstats, val/acc_batchstats (batch
statistics), val/acc_best, test/loss, test/acc, test/acc_single (non-finite values as null); diverged,
diverged_step, step, wall_s, train_s, steps_per_s; the variant (bn, bias, depth), lr, seed; val_history (one
entry per validation: step + the val/* keys); provenance; `population` (K) for a population member.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from bnexp.record import (
    TEST_ACC,
    TEST_ACC_SINGLE,
    TEST_LOSS,
    VAL_ACC,
    VAL_ACC_BATCH,
    VAL_ACC_BEST,
    VAL_LOSS,
    VAL_LOSS_BATCH,
)

VAL_KEYS = (VAL_LOSS, VAL_ACC, VAL_LOSS_BATCH, VAL_ACC_BATCH)  # the order validation() computes them in


def compute_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Mean loss of logits (N, C) against labels (N,): a scalar; of a population's (K, N, C) against (N,) or
    (K, N): (K,), each member's loss as its own net's (to float rounding: torch's fused mean reduction for one
    net, reduction="none" + mean for K, whose gradients differ in the last bit in float32).

    sigmoid: the seed's sigmoid cross-entropy on one-hot labels, mean over N*C; softmax: cross-entropy, mean over N.
    """
    if kind not in ("sigmoid", "softmax"):
        raise ValueError(f"unknown loss {kind!r}; choose sigmoid or softmax")
    one = logits.dim() == 2  # one net: torch's own reduction, so a solo run's numbers are torch's
    if kind == "sigmoid":
        target = F.one_hot(y, logits.shape[-1]).to(logits.dtype).expand_as(logits)
        if one:
            return F.binary_cross_entropy_with_logits(logits, target)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((-2, -1))
    if one:
        return F.cross_entropy(logits, y)
    lead = logits.shape[:-1]  # (K, N)
    flat = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.expand(lead).reshape(-1), reduction="none")
    return flat.view(lead).mean(-1)


def finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def _host(metrics: dict[str, torch.Tensor]) -> dict[str, Any]:
    """Tensors () or (K,) -> floats or lists of K floats, in one host sync."""
    values = torch.stack([v.double() for v in metrics.values()]).tolist()
    return dict(zip(metrics, values, strict=True))


def per_member(metrics: dict[str, list[float]], k: int) -> dict[str, float]:
    return {key: v[k] for key, v in metrics.items()}


class EvalSums:
    """An evaluation pass's sums per prefix ("" population statistics, "bs_" batch statistics, "single_" the
    batch-of-1 test), on the device until read."""

    def __init__(self, loss_kind: str) -> None:
        self.kind = loss_kind
        self.sums: dict[str, Any] = {}

    def add(self, prefix: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[-1]
        loss = compute_loss(logits, y, self.kind) * n  # () or (K,)
        correct = (logits.argmax(-1) == y).sum(-1)
        for key, v in ((f"{prefix}loss", loss), (f"{prefix}correct", correct), (f"{prefix}n", n)):
            self.sums[key] = self.sums.get(key, 0) + v

    def has(self, prefix: str) -> bool:
        return f"{prefix}n" in self.sums

    def count(self, prefix: str) -> int:
        """Images scored under `prefix` in this pass."""
        return int(self.sums.get(f"{prefix}n", 0))

    def _rates(self, prefix: str) -> tuple[torch.Tensor, torch.Tensor]:
        n = self.sums[f"{prefix}n"]
        return self.sums[f"{prefix}loss"].double() / n, self.sums[f"{prefix}correct"].double() / n

    def validation(self) -> dict[str, Any]:
        """val/loss, val/acc; val/*_batchstats (the same values for a net without BN)."""
        loss, acc = self._rates("")
        bs_loss, bs_acc = self._rates("bs_") if self.has("bs_") else (loss, acc)
        return _host(dict(zip(VAL_KEYS, (loss, acc, bs_loss, bs_acc), strict=True)))

    def test(self) -> dict[str, Any]:
        loss, acc = self._rates("")
        m = {TEST_LOSS: loss, TEST_ACC: acc}
        if self.has("single_"):
            m[TEST_ACC_SINGLE] = self._rates("single_")[1]
        return _host(m)


class Divergence:
    """Which of `k` runs had a non-finite training loss, and at which step; judged on the device.

    `alive` (k,) bool and `at` (k,) long (the step index of the first non-finite loss, -1: none) are updated in
    place by `update` without a host sync; `poll()` reads them (one sync) and returns the newly diverged runs.
    """

    def __init__(self, k: int, device: torch.device | str) -> None:
        self.alive = torch.ones(k, dtype=torch.bool, device=device)
        self.at = torch.full((k,), -1, dtype=torch.long, device=device)
        self.steps: list[int | None] = [None] * k

    def update(self, losses: torch.Tensor, step: int) -> torch.Tensor:
        """Mark runs whose loss (a scalar or (k,)) is non-finite; returns `alive`."""
        bad = self.alive & ~torch.isfinite(losses.detach().reshape(-1))
        self.at.masked_fill_(bad, step)
        self.alive &= ~bad
        return self.alive

    def stop(self, k: int, step: int) -> None:
        """Mark run k diverged at `step` from the host (a non-finite validation loss)."""
        self.alive[k] = False
        self.at[k] = step
        self.steps[k] = step

    def poll(self) -> list[tuple[int, int]]:
        new = []
        for k, s in enumerate(self.at.tolist()):
            if s >= 0 and self.steps[k] is None:
                self.steps[k] = s
                new.append((k, s))
        return new


@dataclass
class RunRecord:
    """One run's (or one population member's) results as training produces them."""

    val_history: list[dict[str, Any]] = field(default_factory=list)
    final: dict[str, float] = field(default_factory=dict)
    diverged_step: int | None = None
    stop_step: int | None = None  # steps trained when it stopped early; None: it trains to the run's end
    pruned_step: int | None = None  # the validation step at which the sweep's pruner stopped it (sweep.prune)
    pruned_silent_steps: int | None = None  # then: steps in a row with no gradient at its first layer

    @property
    def diverged(self) -> bool:
        return self.diverged_step is not None

    @property
    def last_val_step(self) -> int:
        return self.val_history[-1]["step"] if self.val_history else -1

    def validated(self, step: int, m: dict[str, float], n: int | None = None) -> dict[str, float]:
        """Record a validation at `step` (`n`: the images it scored, kept in the history: a subset's
        precision); returns its metrics with val/acc_best."""
        m = {**m, VAL_ACC_BEST: max([h[VAL_ACC] for h in self.val_history] + [m[VAL_ACC]])}
        self.val_history.append({"step": step, **m, **({"n": int(n)} if n is not None else {})})
        self.final.update(m)
        return m

    def tested(self, m: dict[str, float]) -> None:
        self.final.update(m)

    def diverge(self, step: int, stop_step: int) -> bool:
        """Mark it diverged at `step`, stopped after `stop_step` steps; False if it already was."""
        if self.diverged:
            return False
        self.diverged_step, self.stop_step = step, stop_step
        return True


def run_metrics(
    record: RunRecord,
    cfg: Any,
    *,
    step: int,
    wall_s: float,
    train_s: float,
    steps_trained: int,
    provenance: dict[str, Any],
    resumed_from_step: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """The metrics dict of one run: `record`'s results, `cfg`'s variant, lr and seed, the timings."""
    m: dict[str, Any] = {k: finite_or_none(float(v)) for k, v in record.final.items()}
    m.update(
        diverged=record.diverged,
        diverged_step=record.diverged_step,
        step=int(step),
        wall_s=wall_s,
        train_s=train_s,
        steps_per_s=steps_trained / train_s if train_s > 0 else None,
        bn=cfg.model.bn,
        bias=cfg.model.bias,
        depth=int(cfg.model.depth),
        lr=float(cfg.optim.lr),
        seed=int(cfg.seed),
        val_history=[{k: finite_or_none(v) for k, v in h.items()} for h in record.val_history],
        resumed_from_step=resumed_from_step,  # None, or the step a stopped run went on from (its checkpoint)
        provenance=provenance,
        **extra,
    )
    return m
