"""The LightningModule (the "system" around the model): loss, metrics, optimizer, logging.

Metric keys: train/loss, train/acc, train/grad_norm, lr (every `log_every` steps); val/loss, val/acc
(population statistics), val/loss_batchstats, val/acc_batchstats (batch statistics, buffers restored),
val/acc_best (every `val_every` steps); test/loss, test/acc, test/acc_single at the end.

No per-step host synchronisation: the divergence flag is accumulated on the device and read every
`check_every` steps (1 on CPU, where reading is free; `log_every` on accelerators).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import nn

from bnexp.core.net import DeepConvNet
from bnexp.core.norm import is_bn

log = logging.getLogger(__name__)


def compute_loss(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    if kind == "sigmoid":  # the seed: sigmoid cross-entropy on one-hot labels, mean over N*10
        return F.binary_cross_entropy_with_logits(logits, F.one_hot(y, logits.shape[-1]).to(logits.dtype))
    if kind == "softmax":
        return F.cross_entropy(logits, y)
    raise ValueError(f"unknown loss {kind!r}; choose sigmoid or softmax")


@contextlib.contextmanager
def batch_stats(model: nn.Module) -> Iterator[None]:
    """Run BN layers on batch statistics (train mode) and restore their running buffers afterwards."""
    bns = [m for m in model.modules() if is_bn(m)]
    saved = [[b.clone() for b in m.buffers()] for m in bns]
    modes = [m.training for m in bns]
    for m in bns:
        m.train()
    try:
        yield
    finally:
        for m, bufs, mode in zip(bns, saved, modes, strict=False):
            for b, s in zip(m.buffers(), bufs, strict=False):
                b.copy_(s)
            m.train(mode)


class BNExpModule(L.LightningModule):
    """Trains DeepConvNet with the seed's settings.

    `net` holds DeepConvNet's constructor arguments (bnexp.core.train.model_kwargs: depth, bn, bias, ...);
    the other arguments are the training's. All are saved as hyperparameters."""

    def __init__(
        self,
        net: dict[str, Any] | None = None,
        sync_bn: bool = False,
        optim: str = "adam",
        lr: float = 0.002,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        loss: str = "sigmoid",
        log_every: int = 25,
    ) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.model = DeepConvNet(**(net or {}))
        self.diverged = False
        self.diverged_step: int | None = None
        self.last_val_step = -1
        self.val_history: list[dict] = []
        self.final: dict[str, float] = {}
        self.resumed_from_step: int | None = None
        self._nonfinite: torch.Tensor | None = None
        self._check_every = 1
        self._sums: dict[str, torch.Tensor] = {}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- a stopped run's state, beyond weights and optimizer (bnexp.core.train: checkpoint on stop) ---
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bnexp"] = {
            "val_history": self.val_history,
            "final": {k: float(v) for k, v in self.final.items()},
            "diverged": self.diverged,
            "diverged_step": self.diverged_step,
            "last_val_step": self.last_val_step,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("bnexp", {})
        self.val_history = list(state.get("val_history", []))
        self.final = dict(state.get("final", {}))
        self.diverged, self.diverged_step = state.get("diverged", False), state.get("diverged_step")
        self.last_val_step = state.get("last_val_step", -1)
        self.resumed_from_step = int(checkpoint.get("global_step", 0))

    # ---- training -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self._nonfinite = torch.zeros((), dtype=torch.bool, device=self.device)
        self._check_every = 1 if self.device.type == "cpu" else self.hparams.log_every

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (N, 1, 28, 28), (N,)
        logits = self(x)
        loss = compute_loss(logits, y, self.hparams.loss)
        self._nonfinite |= ~torch.isfinite(loss)
        self.log("train/loss", loss, on_step=True, on_epoch=False)
        step = self.global_step
        if step % self.hparams.log_every == 0:
            self.log("train/acc", (logits.argmax(-1) == y).float().mean(), on_step=True, on_epoch=False)
        if step % self._check_every == 0 and bool(self._nonfinite):
            self._mark_diverged(step)
        return loss

    def _mark_diverged(self, step: int) -> None:
        if not self.diverged:
            log.warning("non-finite loss by step %d (lr=%g): stopping, marked diverged", step, self.hparams.lr)
        self.diverged, self.diverged_step = True, step
        self.trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if self.global_step % self.hparams.log_every == 0:
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            self.log("train/grad_norm", torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            self.log("lr", optimizer.param_groups[0]["lr"])

    def on_train_end(self) -> None:
        # the last steps since the previous check may have diverged too
        if self._nonfinite is not None and bool(self._nonfinite) and not self.diverged:
            self.diverged, self.diverged_step = True, self.global_step

    # ---- evaluation -----------------------------------------------------------------------------
    def _accumulate(self, prefix: str, logits: torch.Tensor, y: torch.Tensor) -> None:
        n = y.shape[0]
        loss = compute_loss(logits, y, self.hparams.loss) * n
        correct = (logits.argmax(-1) == y).sum()
        for k, v in ((f"{prefix}loss", loss), (f"{prefix}correct", correct), (f"{prefix}n", n)):
            self._sums[k] = self._sums.get(k, 0) + v

    def _rate(self, prefix: str) -> tuple[float, float]:
        n = float(self._sums[f"{prefix}n"])
        return float(self._sums[f"{prefix}loss"]) / n, float(self._sums[f"{prefix}correct"]) / n

    def on_validation_epoch_start(self) -> None:
        self._sums = {}

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._accumulate("", self(x), y)  # eval mode: population statistics
        if self.model.bn_mode != "off":
            with batch_stats(self.model):
                self._accumulate("bs_", self(x), y)

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._sums:
            return
        loss, acc = self._rate("")
        m = {"val/loss": loss, "val/acc": acc}
        m["val/loss_batchstats"], m["val/acc_batchstats"] = self._rate("bs_") if "bs_n" in self._sums else (loss, acc)
        best = max([h["val/acc"] for h in self.val_history] + [acc])
        m["val/acc_best"] = best
        self.last_val_step = self.global_step
        self.val_history.append({"step": self.global_step, **m})
        self.final.update(m)
        self.log_dict(m)
        if not torch.isfinite(torch.tensor(loss)) and self.trainer.state.fn == "fit":
            self._mark_diverged(self.global_step)

    def on_test_epoch_start(self) -> None:
        self._sums = {}

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        # loader 0: the test set in big batches; loader 1: the first N test images one at a time
        self._accumulate("" if dataloader_idx == 0 else "single_", self(x), y)

    def on_test_epoch_end(self) -> None:
        loss, acc = self._rate("")
        m = {"test/loss": loss, "test/acc": acc}
        if "single_n" in self._sums:
            m["test/acc_single"] = self._rate("single_")[1]
        self.final.update(m)
        self.log_dict(m, add_dataloader_idx=False)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        if h.optim == "adam":
            return torch.optim.Adam(self.parameters(), lr=h.lr, weight_decay=h.weight_decay)
        if h.optim == "sgd":
            return torch.optim.SGD(self.parameters(), lr=h.lr, momentum=h.momentum, weight_decay=h.weight_decay)
        raise ValueError(f"unknown optim {h.optim!r}; choose adam or sgd")


class Batches:
    """A fixed list of batches as one loader (Lightning reads a bare list as several loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class MNISTDataModule(L.LightningDataModule):
    """Serves the splits as tensor-indexed batches; moves the data onto the training device once."""

    def __init__(self, splits, batch_size: int, eval_batch_size: int, seed: int, single_n: int, on_device: bool):
        super().__init__()
        self.splits, self.batch_size, self.eval_batch_size = splits, batch_size, eval_batch_size
        self.seed, self.single_n, self.on_device = seed, single_n, on_device

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.on_device and self.splits.train_x.device != device:
            self.splits = self.splits.to(device)

    def train_dataloader(self):
        from bnexp.core.data import BatchStream

        rank = self.trainer.global_rank if self.trainer is not None else 0
        # each DDP rank draws its own batches; rank 0 keeps the single-device sequence
        # a run resumed at step s draws the batches an uninterrupted run would have from step s on
        start = self.trainer.global_step if self.trainer is not None else 0
        return BatchStream(self.splits.train_x, self.splits.train_y, self.batch_size, self.seed + 1000003 * rank, start)

    def val_dataloader(self):
        from bnexp.core.data import eval_batches

        return Batches(eval_batches(self.splits.val_x, self.splits.val_y, self.eval_batch_size))

    def test_dataloader(self):
        from bnexp.core.data import eval_batches

        s = self.splits
        n = min(self.single_n, s.test_x.shape[0])
        full = eval_batches(s.test_x, s.test_y, self.eval_batch_size)
        return [Batches(full), Batches(eval_batches(s.test_x[:n], s.test_y[:n], 1))]
