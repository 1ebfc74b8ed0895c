"""The Optuna pruner and the Lightning callback that apply bnexp.sweep.pruning's rule to a sweep trial."""

from __future__ import annotations

import math
from typing import Any

import optuna

from bnexp.record import VAL_ACC
from bnexp.sweep.pruning import CHANCE_ACC, EARLY_ATTR, SILENT_ATTR, WINDOW_ATTR, better_view


def _at(attr: dict, step: int) -> Any:
    return attr[str(step)] if str(step) in attr else attr.get(step)


class SilentPruner(optuna.pruners.BasePruner):
    """Prune a trial at a validation where it is at chance in both views and has had no gradient at its first
    layer for the last `silent` steps (bnexp.sweep.pruning). Reads the trial's `early_acc` and `silent_steps`
    user attrs, which the sweep worker's callback writes at each validation, and the trial's own window
    (`silent_window`, from its config: a grid may vary the optimizer or the batch), else `silent`."""

    def __init__(self, silent: int | None = None, chance: float = CHANCE_ACC) -> None:
        self.silent, self.chance = silent, float(chance)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        early = trial.user_attrs.get(EARLY_ATTR) or {}
        if not early:
            return False
        step = max(int(s) for s in early)
        acc = _at(early, step)
        quiet = _at(trial.user_attrs.get(SILENT_ATTR) or {}, step)
        window = trial.user_attrs.get(WINDOW_ATTR, self.silent)
        return acc is not None and acc < self.chance and None not in (quiet, window) and quiet >= window


def callback(trial: Any, window: int | None = None) -> Any:
    """A Lightning callback for one sweep trial: at every step of a net without BN, count the steps in a row in
    which no gradient reached the first layer (a tensor on the trial's device: nothing waits for it); at each
    validation during fit, report val/acc (the trial's intermediate value: optuna-dashboard's curve), record the
    better view in `early_acc` and that count in `silent_steps`, and ask the study's pruner; a trial to prune
    has its `record.pruned_step` set and stops (train() then skips the evaluations after it). `window`: the
    trial's own silent window, kept in its `silent_window` user attr for the pruner."""
    if trial is not None and window is not None:
        trial.set_user_attr(WINDOW_ATTR, int(window))
    import lightning as L
    import torch

    class PruneOnValidation(L.Callback):
        finished_elsewhere = False  # another worker failed the trial as stale: its result is kept at the end
        silent: torch.Tensor | None = None  # steps in a row with an all-zero gradient at the first layer
        first: Any = None  # the first layer's weight, found once per trial; False: a net with BN, not judged

        def on_before_optimizer_step(self, trainer: Any, pl_module: Any, optimizer: Any) -> None:
            if self.first is None:
                from bnexp.core.lit import has_bn

                # with BN, silence comes and goes with the batch's statistics: not judged (bnexp.sweep.pruning)
                self.first = False if has_bn(pl_module) else next(pl_module.parameters())
                if self.first is not False:
                    self.silent = torch.zeros((), dtype=torch.int64, device=self.first.device)
            if self.first is False:
                return
            g = self.first.grad  # no gradient tensor at all is not a zero gradient: the count starts again
            self.silent = (self.silent + 1) * (g == 0).all() if g is not None else torch.zeros_like(self.silent)

        def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
            if trainer.sanity_checking or trainer.state.fn != "fit" or not pl_module.record.val_history:
                return
            if self.finished_elsewhere:
                return
            h = pl_module.record.val_history[-1]
            step, acc = int(h["step"]), h.get(VAL_ACC)
            try:
                if acc is not None and math.isfinite(acc):
                    trial.report(float(acc), step)
                early = dict(trial.user_attrs.get(EARLY_ATTR) or {})
                early[str(step)] = better_view(h)
                trial.set_user_attr(EARLY_ATTR, early)
                if self.silent is not None:
                    quiet = dict(trial.user_attrs.get(SILENT_ATTR) or {})
                    quiet[str(step)] = int(self.silent)
                    trial.set_user_attr(SILENT_ATTR, quiet)
                prune = step < trainer.max_steps and trial.should_prune()
            except optuna.exceptions.UpdateFinishedTrialError:
                # failed as stale while it trained (a long pause): training goes on, the worker records the
                # result on the retry of its point (bnexp.sweep.worker: _keep_stale_result)
                self.finished_elsewhere = True
                return
            if prune:
                pl_module.record.pruned_step = step
                if self.silent is not None:
                    pl_module.record.pruned_silent_steps = int(self.silent)
                trainer.should_stop = True

    return PruneOnValidation()
