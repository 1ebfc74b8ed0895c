"""The LightningModule of a population: K learning rates of one variant trained as one packed net.

It is BNExpModule's counterpart with manual optimization, and fills the same contract from the same pieces
(bnexp.core.metrics: the loss, EvalSums, Divergence, one RunRecord per member; bnexp.core.lit: EvalSteps, the
validation and test passes, and build_optimizer), so Lightning's loop, precision, device placement, progress
bar, loggers and callbacks serve both. Member k's metrics go to logger k of the trainer (its own CSV file / W&B
run), at the steps a solo run logs them, so a member's curves overlay its solo run's.

Per step, no host sync: the K losses are judged on the device (`Divergence.update`), a member whose loss is
non-finite leaves the summed loss (torch.where: 0 * NaN would still be NaN) and the optimizer freezes it
(`alive`); the flags are read every `check_every` steps (every step on the CPU) and before each validation.
As for a solo run, the diverging step still counts (its update is masked), so a member that diverged at step
s reports step = s + 1; a non-finite validation loss during fit stops a member at that step. A stopped member
gets one last validation at its stop step (its weights are frozen from there) and the test at the end.
Every member stopped: training stops.
"""

from __future__ import annotations

import dataclasses
import logging
import math
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch

from bnexp.core.lit import EvalSteps, build_optimizer, check_every, has_bn, is_log_step
from bnexp.core.metrics import Divergence, EvalSums, RunRecord, compute_loss, per_member
from bnexp.population.net import PopulationNet
from bnexp.population.optim import KINDS
from bnexp.record import TRAIN_ACC, TRAIN_GRAD_NORM, TRAIN_LOSS, VAL_LOSS

log = logging.getLogger(__name__)


def forward_backward(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_kind: str,
    divergence: Divergence,
    step: int,
    backward: Callable[[torch.Tensor], Any] = torch.Tensor.backward,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One step's forward and backward for every member, no host sync; returns logits (K, N, C), losses (K,).

    A member whose loss is non-finite is marked in `divergence` (alive False, its step in `at`); from this step
    on it is left out of the summed loss, so each live member gets exactly its own gradient. The optimizer
    step (with `optimizer.alive = divergence.alive`) is the caller's."""
    logits = model(x)  # (K, N, C)
    losses = compute_loss(logits, y, loss_kind)  # (K,)
    alive = divergence.update(losses, step)
    backward(torch.where(alive, losses, 0.0).sum())  # where(), not a 0/1 multiply: a dead member's NaN stays out
    return logits, losses


class PopulationModule(EvalSteps, L.LightningModule):
    """K = len(lrs) members; member k is `torch.manual_seed(seeds[k]); DeepConvNet(**net)` trained with lrs[k].

    `net` holds DeepConvNet's constructor arguments (bnexp.core.train.model_kwargs); the others as BNExpModule's.
    Results: `self.records[k]` (bnexp.core.metrics.RunRecord) per member."""

    def __init__(
        self,
        net: dict[str, Any],
        seeds: Sequence[int],
        lrs: Sequence[float],
        *,
        loss: str = "sigmoid",
        optim: str = "adam",
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        log_every: int = 25,
    ) -> None:
        super().__init__()
        if len(seeds) != len(lrs) or not lrs:
            raise ValueError(f"need one seed per lr: {len(lrs)} lrs, {len(seeds)} seeds")
        self.save_hyperparameters(logger=False)  # each member's config.yaml (and W&B config) holds its own
        self.K = len(lrs)
        self.model = PopulationNet.from_seeds(seeds, **net)
        self.automatic_optimization = False
        self.records = [RunRecord() for _ in range(self.K)]
        self.divergence: Divergence | None = None
        self._check_every = 1
        self._sums = EvalSums(loss)
        self._has_bn = has_bn(self.model)
        self._done: set[int] = set()  # stopped members whose last validation is recorded
        self.resumed_from_step: int | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)  # (K, N, 10)

    # ---- a stopped population's state, beyond weights and optimizer (resumed as one unit) ------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["bnexp_population"] = {
            "lrs": list(self.hparams.lrs),
            "seeds": list(self.hparams.seeds),
            "records": [dataclasses.asdict(r) for r in self.records],
            "done": sorted(self._done),
        }

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        from bnexp.core.compiled import match_state_keys

        if "state_dict" in checkpoint:  # stopped compiled, resumed eager (or the other way round)
            checkpoint["state_dict"] = match_state_keys(checkpoint["state_dict"], self.state_dict())
        state = checkpoint["bnexp_population"]
        if state["lrs"] != list(self.hparams.lrs) or state["seeds"] != list(self.hparams.seeds):
            raise ValueError("the checkpoint is of another population (its learning rates or seeds differ)")
        self.records = [RunRecord(**r) for r in state["records"]]
        self._done = set(state["done"])
        self.resumed_from_step = int(checkpoint.get("global_step", 0))

    # ---- training -------------------------------------------------------------------------------
    def on_fit_start(self) -> None:
        self.divergence = Divergence(self.K, self.device)
        for k, r in enumerate(self.records):  # members stopped before a resume stay stopped
            if r.diverged:
                self.divergence.stop(k, r.diverged_step)
        self._check_every = check_every(self.device, self.hparams.log_every)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch  # (N, 1, 28, 28), (N,); or members' own batches: (N, K, 28, 28), (K, N)
        opt = self.optimizers()
        opt.optimizer.alive = self.divergence.alive
        step = self.global_step
        logits, losses = forward_backward(self, x, y, self.hparams.loss, self.divergence, step, self.manual_backward)
        logged = is_log_step(step, self.hparams.log_every) and bool(self.trainer.loggers)
        if logged:
            values = torch.stack([losses.detach(), (logits.argmax(-1) == y).double().mean(-1), self._grad_norms()])
        opt.step()
        opt.zero_grad(set_to_none=True)
        if logged:
            rows = dict(zip((TRAIN_LOSS, TRAIN_ACC, TRAIN_GRAD_NORM), values.tolist(), strict=True))  # 1 sync
            lrs = self.hparams.lrs  # stopped members' curves end where they stopped, as a solo run's
            self._log_members({k: {**per_member(rows, k), "lr": lrs[k]} for k in self._live()})
        if step % self._check_every == 0:
            self._poll()

    def _live(self) -> list[int]:
        return [k for k, r in enumerate(self.records) if not r.diverged]

    def _grad_norms(self) -> torch.Tensor:
        """(K,) each member's gradient norm, as BNExpModule's train/grad_norm on its own net."""
        grads = [p.grad for p in self.model.parameters() if p.grad is not None]
        return torch.stack([g.reshape(self.K, -1).double().square().sum(1) for g in grads]).sum(0).sqrt()

    def _poll(self) -> None:
        for k, at in self.divergence.poll():  # the diverging step still counts (masked), then the member stops
            self._stop_member(k, at, at + 1, "non-finite loss")

    def _stop_member(self, k: int, step: int, stop_step: int, why: str) -> None:
        if self.records[k].diverge(step, stop_step):
            lr = self.hparams.lrs[k]
            log.warning("member %d (lr=%g): %s at step %d, frozen, marked diverged", k, lr, why, step)
        if all(r.diverged for r in self.records) and not self.trainer.should_stop:
            log.warning("every member diverged by step %d; stopping", step)
            self.trainer.should_stop = True

    def on_train_end(self) -> None:
        if self.divergence is not None:
            self._poll()

    def _stop(self, k: int) -> int:
        """Member k's step count: where it stopped, else the run's."""
        stop = self.records[k].stop_step
        return self.global_step if stop is None else stop

    def steps(self) -> list[int]:
        return [self._stop(k) for k in range(self.K)]

    def needs_validation(self, step: int) -> bool:
        return any(k not in self._done and self.records[k].last_val_step != self._stop(k) for k in range(self.K))

    # ---- evaluation (the passes: EvalSteps, as BNExpModule's) --------------------------------------
    def on_validation_epoch_start(self) -> None:
        super().on_validation_epoch_start()
        if self.divergence is not None and self.trainer.state.fn == "fit":
            self._poll()  # who stopped since the last check: their last validation is this one

    def on_validation_epoch_end(self) -> None:
        if self.trainer.sanity_checking or not self._sums.has(""):
            return
        ms, fitting, logs = self._sums.validation(), self.trainer.state.fn == "fit", {}
        for k, rec in enumerate(self.records):
            at = self._stop(k)
            if k in self._done or rec.last_val_step == at:
                continue
            if rec.diverged:
                self._done.add(k)  # stopped: its one last validation, at the step it stopped
            logs[k] = m = rec.validated(at, per_member(ms, k))
            if fitting and not rec.diverged and not math.isfinite(m[VAL_LOSS]):
                self.divergence.stop(k, at)  # as a solo run: a non-finite validation loss stops it here
                self._stop_member(k, at, at, "non-finite validation loss")
                self._done.add(k)
        self._log_members(logs, self.global_step)

    def on_test_epoch_end(self) -> None:
        ms = self._sums.test()
        for k, rec in enumerate(self.records):
            rec.tested(per_member(ms, k))
        self._log_members({k: per_member(ms, k) for k in range(self.K)}, self.global_step)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        h = self.hparams
        return build_optimizer(h.optim, self.parameters(), list(h.lrs), h.momentum, h.weight_decay, kinds=KINDS)

    # ---- logging ----------------------------------------------------------------------------------
    def _log_members(self, metrics: dict[int, dict[str, float]], step: int | None = None) -> None:
        """Member k's metrics to trainer.loggers[k] (its CSV file / W&B run): training metrics at the step
        Lightning's own `self.log` uses, evaluations at `step` (the global step metrics.json gives them)."""
        loggers = self.trainer.loggers
        if not loggers:
            return
        if step is None:
            step = self.trainer.fit_loop.epoch_loop._batches_that_stepped  # what Lightning's self.log uses
        for k, m in metrics.items():
            loggers[k].log_metrics({**m, "epoch": self.current_epoch}, step=step)
