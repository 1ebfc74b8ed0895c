"""The LightningModule (the "system" around the model): loss, metrics, optimizer, logging.

Metric keys: train/loss, train/acc, train/grad_norm, lr (every `log_every` steps); val/loss, val/acc
(population statistics), val/loss_batchstats, val/acc_batchstats (batch statistics, buffers restored),
val/acc_best (every `val_every` steps); test/loss, test/acc, test/acc_single at the end. The loss, the
evaluation sums, the divergence judgement and the run record are bnexp.core.metrics', shared with
bnexp.population; so is `build_optimizer`, the one place the optimizer is chosen.

No per-step host synchronisation: the divergence flag is accumulated on the device and read every
`check_every` steps (1 on CPU, where reading is free; `log_every` on accelerators).
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Iterator, Sequence
from typing import Any

import lightning as L
import torch
from torch import nn

from bnexp import record
from bnexp.core.compiled import match_state_keys
from bnexp.core.metrics import Divergence, EvalSums, RunRecord, compute_loss
from bnexp.core.net import DeepConvNet
from bnexp.core.norm import is_bn

__all__ = ["BNExpModule", "EvalSteps", "MNISTDataModule", "batch_stats", "build_optimizer", "compute_loss"]

log = logging.getLogger(__name__)


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


OPTIMIZERS = {"adam": torch.optim.Adam, "sgd": torch.optim.SGD}


def build_optimizer(
    name: str, params: Any, lr: Any, momentum: float, weight_decay: float, kinds: dict[str, type] = OPTIMIZERS
) -> torch.optim.Optimizer:
    """The optimizer choice, in one place: `kinds` maps each name to its class (torch.optim's for one net; a
    population passes its per-member-lr classes and one lr per member)."""
    if name == "adam":
        return kinds["adam"](params, lr=lr, weight_decay=weight_decay)
    if name == "sgd":
        return kinds["sgd"](params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    raise ValueError(f"unknown optim {name!r}; choose adam or sgd")


def has_bn(model: nn.Module) -> bool:
    return any(is_bn(m) for m in model.modules())


class EvalSteps:
    """The validation and test passes of a LightningModule with `self.model`, `hparams.loss` and `_has_bn`, into
    `self._sums` (bnexp.core.metrics.EvalSums): shared by BNExpModule and bnexp.population's module, which turn
    the sums into their record(s) in on_validation_epoch_end / on_test_epoch_end."""

    def on_validation_epoch_start(self) -> None:
        self._sums = EvalSums(self.hparams.loss)

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        self._sums.add("", self(x), y)  # eval mode: population statistics
        if self._has_bn:
            with batch_stats(self.model):
                self._sums.add("bs_", self(x), y)  # batch statistics, running buffers restored

    def on_test_epoch_start(self) -> None:
        self._sums = EvalSums(self.hparams.loss)

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, y = batch
        # loader 0: the test set in big batches; loader 1: the first N test images one at a time
        self._sums.add("" if dataloader_idx == 0 else "single_", self(x), y)


class BNExpModule(EvalSteps, L.LightningModule):
    """Trains DeepConvNet with the seed's settings.

    `net` holds DeepConvNet's constructor arguments (bnexp.core.train.model_kwargs: depth, bn, bias, ...);
    the other arguments are the training's. All are saved as hyperparameters. Results go to `self.record`
    (bnexp.core.metrics.RunRecord), the contract a population member fills too."""

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
        self.record = RunRecord()
        self.divergence: Divergence | None = None
        self.resumed_from_step: int | None = None
        self._check_every = 1
        self._sums = EvalSums(loss)
        self._has_bn = has_bn(self.model)

    @property
    def final(self) -> dict[str, float]:
        return self.record.final

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    # ---- what observers use (bnexp.tracking.diagnostics: it reads a training through these, not core) ---
    def loss_on(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The training loss of the net on (x, y), as training_step computes it."""
        return compute_loss(self(x), y, self.hparams.loss)

    def on_batch_stats(self) -> contextlib.AbstractContextManager:
        """BN on batch statistics inside the block; running buffers restored on exit."""
        return batch_stats(self.model)

    # ---- a stopped run's state, beyond weights and optimizer (bnexp.core.train: checkpoint on stop) ---
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        r = self.record
        checkpoint["bnexp"] = {
            "val_history": r.val_history,
            "final": {k: float(v) for k, v in r.final.items()},
            "diverged_step": r.diverged_step,
            "stop_step": r.stop_step,
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if "state_dict" in checkpoint:  # stopped compiled, resumed eager (or the other way round)
            checkpoint["state_dict"] = match_state_keys(checkpoint["state_dict"], self.state_dict())
        state = checkpoint.get("bnexp", {})
        self.record = RunRecord(
            val_history=list(state.get("val_history", [])),
            final=dict(state.get("final", {})),
            diverged_step=state.get("diverged_step"),
            stop_step=state.get("stop_step"),
        )
        self.resumed_from_step = int(checkpoint.get("global_step", 0))

    # ---- training -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.divergence = Divergence(1, self.device)
        self._check_every = check_every(self.device, self.hparams.log_every)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch  # (N, 1, 28, 28), (N,)
        logits = self(x)
        loss = compute_loss(logits, y, self.hparams.loss)
        if self.divergence is None:  # Lightning's Tuner.lr_find (bnexp.lr_find) trains without on_fit_start
            self.on_fit_start()
        self.divergence.update(loss, self.global_step)
        self.log(record.TRAIN_LOSS, loss, on_step=True, on_epoch=False)
        step = self.global_step
        if is_log_step(step, self.hparams.log_every):
            self.log(record.TRAIN_ACC, (logits.argmax(-1) == y).float().mean(), on_step=True, on_epoch=False)
        if step % self._check_every == 0:
            self._poll()
        return loss

    def _poll(self) -> None:
        for _, at in self.divergence.poll():
            self._mark_diverged(at, at + 1)  # the diverging step still runs its update, then training stops

    def _mark_diverged(self, step: int, stop_step: int) -> None:
        if self.record.diverge(step, stop_step):
            log.warning("non-finite loss at step %d (lr=%g): stopping, marked diverged", step, self.hparams.lr)
        self.trainer.should_stop = True

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        if is_log_step(self.global_step, self.hparams.log_every):
            grads = [p.grad for p in self.parameters() if p.grad is not None]
            self.log(record.TRAIN_GRAD_NORM, torch.linalg.vector_norm(torch.stack(torch._foreach_norm(grads))))
            self.log("lr", optimizer.param_groups[0]["lr"])

    def on_train_end(self) -> None:
        if self.divergence is not None:  # the last steps since the previous check may have diverged too
            for _, at in self.divergence.poll():
                self.record.diverge(at, self.global_step)

    def needs_validation(self, step: int) -> bool:
        """Whether training stopped between validations (diverged): train() then validates once more."""
        return self.record.last_val_step != step

    # ---- evaluation (the passes: EvalSteps) -------------------------------------------------------
    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._sums.has(""):
            return
        m = self.record.validated(self.global_step, self._sums.validation(), n=self._sums.count(""))
        self._log_eval(m)
        if not math.isfinite(m[record.VAL_LOSS]) and self.trainer.state.fn == "fit":
            self._mark_diverged(self.global_step, self.global_step)

    def on_test_epoch_end(self) -> None:
        m = self._sums.test()
        self.record.tested(m)
        self._log_eval(m)

    def _log_eval(self, m: dict[str, float]) -> None:
        """An evaluation's metrics at the global step metrics.json and curves.csv give them. Lightning's own
        logging of a validation inside fit uses the batches-stepped counter, one behind (19 for step 20): so
        the loggers get them here, and `self.log` only feeds callback_metrics (the progress bar)."""
        self.log_dict(m, logger=False, add_dataloader_idx=False)
        for lg in self.loggers:
            lg.log_metrics(m, step=self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return build_optimizer(h.optim, self.parameters(), h.lr, h.momentum, h.weight_decay)


def check_every(device: torch.device, log_every: int) -> int:
    """How often the divergence flag is read: every step on the CPU (free), every `log_every` on accelerators."""
    return 1 if device.type == "cpu" else log_every


def is_log_step(step: int, log_every: int) -> bool:
    """The steps Lightning writes step-level metrics at (`log_every_n_steps`): step indices 24, 49, ... for 25."""
    return (step + 1) % log_every == 0


class Batches:
    """A fixed list of batches as one loader (Lightning reads a bare list as several loaders)."""

    def __init__(self, batches: list) -> None:
        self.batches = batches

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class ValBatches:
    """The validation set for one validation: whole for the last one of a fit (step max_steps) and for a
    validation outside fit (after a divergence), else its first `subset` images (`trainer.val_subset`: the
    intermediate points of the curves, which no verdict reads). Its length is the whole set's, as Lightning
    sizes the loop once per fit; a subset pass ends early."""

    def __init__(self, whole: list, part: list | None, trainer: Any) -> None:
        self.whole, self.part, self.trainer = whole, part, trainer

    def final(self) -> bool:
        t = self.trainer
        return t is None or t.state.fn != "fit" or t.global_step >= (t.max_steps or 0)

    def __iter__(self):
        return iter(self.whole if self.part is None or self.final() else self.part)

    def __len__(self) -> int:
        return len(self.whole)


class MemberBatches:
    """Population members with their own seeds: one BatchStream per distinct seed, member k's images in channel k.

    Yields (x (N, K, 28, 28), y (K, N)); members that share a seed share its batches."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor, batch_size: int, seeds: Sequence[int], start: int = 0) -> None:
        from bnexp.core.data import BatchStream

        self.seeds = [int(s) for s in seeds]
        self.streams = {s: BatchStream(x, y, batch_size, s, start) for s in sorted(set(self.seeds))}

    def __iter__(self):
        its = {s: iter(st) for s, st in self.streams.items()}
        while True:
            got = {s: next(it) for s, it in its.items()}
            yield torch.cat([got[s][0] for s in self.seeds], 1), torch.stack([got[s][1] for s in self.seeds])


class MNISTDataModule(L.LightningDataModule):
    """Serves the splits as tensor-indexed batches; moves the data onto the training device once.

    `member_seeds` (a population, bnexp.population): every member's training batches, drawn as its solo run
    draws them from its own seed; one shared stream when they all have one seed."""

    def __init__(
        self,
        splits,
        batch_size: int,
        eval_batch_size: int,
        seed: int,
        single_n: int,
        on_device: bool,
        member_seeds: Sequence[int] | None = None,
        val_subset: int | None = None,
    ):
        super().__init__()
        self.val_subset = val_subset
        self.splits, self.batch_size, self.eval_batch_size = splits, batch_size, eval_batch_size
        self.seed, self.single_n, self.on_device = seed, single_n, on_device
        self.member_seeds = None if member_seeds is None else [int(s) for s in member_seeds]
        if self.member_seeds is not None and len(set(self.member_seeds)) == 1:
            self.seed, self.member_seeds = self.member_seeds[0], None  # one stream, (N, 1, 28, 28)

    def setup(self, stage: str) -> None:
        device = self.trainer.strategy.root_device if self.trainer is not None else torch.device("cpu")
        if self.on_device and self.splits.train_x.device != device:
            self.splits = self.splits.to(device)

    def train_dataloader(self):
        from bnexp.core.data import BatchStream

        # a run resumed at step s draws the batches an uninterrupted run would have from step s on
        start = self.trainer.global_step if self.trainer is not None else 0
        if self.member_seeds is not None:
            return MemberBatches(self.splits.train_x, self.splits.train_y, self.batch_size, self.member_seeds, start)
        rank = self.trainer.global_rank if self.trainer is not None else 0
        # each DDP rank draws its own batches; rank 0 keeps the single-device sequence
        return BatchStream(self.splits.train_x, self.splits.train_y, self.batch_size, self.seed + 1000003 * rank, start)

    def val_dataloader(self):
        from bnexp.core.data import eval_batches

        s, n = self.splits, self.val_subset
        whole = eval_batches(s.val_x, s.val_y, self.eval_batch_size)
        part = (
            None if n is None or n >= s.val_x.shape[0] else eval_batches(s.val_x[:n], s.val_y[:n], self.eval_batch_size)
        )
        return ValBatches(whole, part, self.trainer)

    def test_dataloader(self):
        from bnexp.core.data import eval_batches

        s = self.splits
        n = min(self.single_n, s.test_x.shape[0])
        full = eval_batches(s.test_x, s.test_y, self.eval_batch_size)
        return [Batches(full), Batches(eval_batches(s.test_x[:n], s.test_y[:n], 1))]
