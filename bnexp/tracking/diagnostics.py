"""Lightning callbacks that explain a result: throughput, per-layer statistics, a loss-landscape probe.

All of them write straight to the trainer's loggers at `trainer.global_step` (scalars to every logger,
histograms only to W&B), on their own schedule, and do nothing on the other steps.

* `Throughput(every)`: `perf/steps_per_s` over the last `every` training steps, validation time excluded.
* `LayerStats(every)` (`logger.diagnostics_every`): on one training step in `every`, for each conv/FC block
  (`L01`..`L19`, `fc`) the mean and std of its pre-activation z = conv(x) (`act/z_mean/L03`,
  `act/z_std/L03`), of the BN output (`act/bn_out_mean|std/...`; and of the BN input
  `act/bn_in_*` for bn=post, where BN follows the ReLU), and the gradient norm of the block's parameters
  (`grad/L03`). With W&B and `logger.log_histograms`, histograms `hist/z/L03`, `hist/bn_out/L03`.
  This is Ioffe & Szegedy's (2015, fig. 1) view: without BN the distribution of a layer's inputs drifts
  as the layers below it train (internal covariate shift); with BN its statistics stay put.
  Cost: one forward with hooks that reduce each activation (mean, std; with histograms a 64-bin count of a
  strided subsample of at most 65536 values, on the device) and one host transfer for it all: a few
  percent of one step, once per `every` steps.
* `LandscapeProbe(every, scales)` (`logger.landscape_every`, `logger.landscape_scales`): Santurkar et al.
  (2018), "How does batch normalization help optimization?", section 3.1. On one step in `every`, with
  g = the gradient of the training loss L at the weights w on that step's batch (before the optimizer step),
  for each step size eta = s * lr (s in `scales`) it evaluates L(w - eta g) and its gradient g_eta on the
  same batch, in training mode (BN on batch statistics; its running buffers are restored), then puts the
  weights back. Logged:
    landscape/loss_range        max - min of L over {w} and the probe points ("loss variation": how much the
                                loss changes along the gradient; smaller = smoother, more Lipschitz loss)
    landscape/grad_change_max   max_eta ||g_eta - g||  ("gradient predictiveness": how far the gradient
                                turns along the step; smaller = the gradient predicts the landscape better)
    landscape/beta_smoothness   max_eta ||g_eta - g|| / ||eta g||  ("effective beta-smoothness")
    landscape/grad_norm         ||g||,  landscape/loss  L(w)
  The probe moves along the raw gradient at the optimizer's lr scale, as the paper does with SGD; with
  Adam the optimizer's actual step differs, so read it as a property of the landscape, not of the run.
  Cost: (1 + 2 * len(scales)) passes (forwards + backwards) per probe, i.e. about len(scales) + 0.5 extra
  training steps once every `every` steps: +2.25% at the defaults (4 scales) with every=200. Single-device
  gradient (no DDP all-reduce) on the rank-0 batch.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from lightning.pytorch.callbacks import Callback

from bnexp.record import LANDSCAPE_KEYS, STEPS_PER_S

HIST_MAX = 65536  # values per histogram (a strided subsample of the activation)
HIST_BINS = 64


def _log(trainer: Any, scalars: dict[str, float], media: dict[str, Any] | None = None) -> None:
    """Scalars to every logger, media (W&B histograms) to W&B only, all at the current global step."""
    if not trainer.is_global_zero:
        return
    from lightning.pytorch.loggers import WandbLogger

    step = int(trainer.global_step)
    for lg in trainer.loggers:
        if isinstance(lg, WandbLogger):
            lg.log_metrics({**scalars, **(media or {})}, step=step)
        else:
            lg.log_metrics(scalars, step=step)


def _has_wandb(trainer: Any) -> bool:
    from lightning.pytorch.loggers import WandbLogger

    return any(isinstance(lg, WandbLogger) for lg in trainer.loggers)


def _device_histogram(v: torch.Tensor) -> torch.Tensor:
    """[lo, hi, counts...] of v in HIST_BINS equal bins, computed where v lives (no host sync)."""
    v = v.float()
    finite = torch.isfinite(v)
    big = torch.finfo(torch.float32).max
    lo = torch.where(finite, v, big).amin()
    hi = torch.where(finite, v, -big).amax()
    width = (hi - lo).clamp_min(1e-12)
    idx = ((v - lo) / width * HIST_BINS).nan_to_num(0.0).clamp_(0, HIST_BINS - 1).long()
    counts = torch.zeros(HIST_BINS, device=v.device).index_add_(0, idx, finite.float())  # non-finite: not counted
    return torch.cat([torch.stack([lo, hi]), counts])


def _norm(ts: list[torch.Tensor]) -> torch.Tensor:
    return torch.linalg.vector_norm(torch.stack(torch._foreach_norm(ts))) if ts else torch.zeros(())


class Throughput(Callback):
    """`perf/steps_per_s` every `every` training steps (validation time excluded)."""

    def __init__(self, every: int) -> None:
        self.every = max(int(every), 1)
        self._t = self._step = self._v0 = None
        self._paused = 0.0

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._t, self._step, self._paused = time.perf_counter(), int(trainer.global_step), 0.0

    def on_validation_start(self, trainer: Any, pl_module: Any) -> None:
        self._v0 = time.perf_counter()

    def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.state.fn == "fit" and self._v0 is not None:
            self._paused += time.perf_counter() - self._v0
            self._v0 = None

    def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
        step = int(trainer.global_step)
        if self._t is None or step % self.every or not trainer.loggers:
            return
        now = time.perf_counter()
        dt = now - self._t - self._paused
        if dt > 0 and step > self._step:
            _log(trainer, {STEPS_PER_S: (step - self._step) / dt})
        self._t, self._step, self._paused = now, step, 0.0


def _blocks(pl_module: Any) -> list[tuple[str, Any]]:
    """(label, block) for the conv blocks (L01..) and the FC block (fc), in forward order: the net's own
    `labelled_blocks()` (tracking reads the training it observes through its modules' interface, never
    importing core: core builds these callbacks)."""
    return pl_module.model.labelled_blocks()


class LayerStats(Callback):
    """Per-block activation mean/std (before and after BN), gradient norms and histograms every `every` steps."""

    def __init__(self, every: int, histograms: bool = True) -> None:
        self.every = int(every)
        self.histograms = histograms
        self._handles: list[Any] = []
        self._stats: dict[str, torch.Tensor] = {}
        self._hist: dict[str, torch.Tensor] = {}
        self._active = False
        self._want_hist = False

    def _hook(self, key: str, which: str):
        def fn(module: Any, inputs: tuple, output: torch.Tensor) -> None:
            t = (inputs[0] if which == "bn_in" else output).detach()
            self._stats[f"act/{which}_mean/{key}"] = t.mean()
            self._stats[f"act/{which}_std/{key}"] = t.float().std()
            if self._want_hist:
                flat = t.flatten()
                self._hist[f"hist/{which}/{key}"] = _device_histogram(flat[:: max(1, flat.numel() // HIST_MAX)])

        return fn

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        self._active = self.every > 0 and trainer.global_step % self.every == 0 and trainer.is_global_zero
        if not self._active or not trainer.loggers:
            self._active = False
            return
        self._stats, self._hist = {}, {}
        self._want_hist = self.histograms and _has_wandb(trainer)
        for key, block in _blocks(pl_module):
            self._handles.append(block.layer.register_forward_hook(self._hook(key, "z")))
            if block.bn is not None:
                self._handles.append(block.bn.register_forward_hook(self._hook(key, "bn_out")))
                if block.mode == "post":  # BN after the ReLU: its input is not z
                    self._handles.append(block.bn.register_forward_hook(self._hook(key, "bn_in")))

    def _remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []

    def on_before_backward(self, trainer: Any, pl_module: Any, loss: torch.Tensor) -> None:
        self._remove()  # the training forward is done; nothing else (validation, probes) is recorded

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if not self._active:
            return
        self._remove()
        for key, block in _blocks(pl_module):
            self._stats[f"grad/{key}"] = _norm([p.grad for p in block.parameters() if p.grad is not None])
        keys = list(self._stats)
        values = torch.stack([self._stats[k].float() for k in keys]).tolist()  # one host sync
        media = {}
        if self._hist:
            import numpy as np
            import wandb

            hk = list(self._hist)
            packed = torch.stack([self._hist[k] for k in hk]).cpu().numpy()  # (K, 2 + BINS): lo, hi, counts
            for k, row in zip(hk, packed, strict=True):
                lo, hi = float(row[0]), float(row[1])
                if math.isfinite(lo) and math.isfinite(hi) and hi >= lo:  # else: nothing finite
                    edges = np.linspace(lo, hi if hi > lo else lo + 1e-6, HIST_BINS + 1)
                    media[k] = wandb.Histogram(np_histogram=(row[2:].astype(np.int64).tolist(), edges.tolist()))
        _log(trainer, dict(zip(keys, values, strict=True)), media)
        self._stats, self._hist, self._active = {}, {}, False

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._remove()


class LandscapeProbe(Callback):
    """Loss variation and gradient predictiveness along the gradient (Santurkar et al. 2018) every `every` steps."""

    def __init__(self, every: int, scales: list[float] | tuple[float, ...] = (0.5, 1.0, 2.0, 4.0)) -> None:
        self.every = int(every)
        self.scales = [float(s) for s in scales]
        if not self.scales or any(not (s > 0 and math.isfinite(s)) for s in self.scales):
            raise ValueError(f"landscape scales must be positive numbers, got {list(scales)}")
        self._batch: Any = None

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, batch_idx: int) -> None:
        take = self.every > 0 and trainer.global_step % self.every == 0 and trainer.is_global_zero
        take = take and bool(trainer.loggers)
        self._batch = batch if take else None

    def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
        if self._batch is None:
            return
        x, y = self._batch
        self._batch = None
        params = [p for p in pl_module.parameters() if p.grad is not None]
        g = [p.grad.detach().clone() for p in params]
        g_norm = _norm(g)
        lr = float(optimizer.param_groups[0]["lr"])
        saved = [p.detach().clone() for p in params]
        losses, changes, betas = [], [], []
        with pl_module.on_batch_stats():  # BN on batch statistics; running buffers restored on exit
            with torch.no_grad():
                losses.append(pl_module.loss_on(x, y))
            for s in self.scales:
                eta = s * lr
                with torch.no_grad():
                    torch._foreach_add_(params, g, alpha=-eta)  # w - eta g
                with torch.enable_grad():
                    loss = pl_module.loss_on(x, y)
                    g_eta = torch.autograd.grad(loss, params)
                with torch.no_grad():
                    for p, w in zip(params, saved, strict=True):
                        p.copy_(w)
                diff = _norm(torch._foreach_sub(list(g_eta), g))
                losses.append(loss.detach())
                changes.append(diff)
                betas.append(diff / (eta * g_norm))
        ls = torch.stack(losses)
        vals = torch.stack(
            [ls.max() - ls.min(), torch.stack(changes).max(), torch.stack(betas).max(), g_norm, ls[0]]
        ).tolist()  # one host sync
        _log(trainer, dict(zip(LANDSCAPE_KEYS, vals, strict=True)))


class WandbFinishOnError(Callback):
    """A training that raises closes its W&B run as failed instead of leaving it open."""

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        from lightning.pytorch.loggers import WandbLogger

        from bnexp.tracking.wandb_runs import fail_wandb

        for lg in trainer.loggers:
            if isinstance(lg, WandbLogger):
                fail_wandb(lg)
