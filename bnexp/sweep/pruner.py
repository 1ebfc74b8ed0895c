"""The Optuna pruner and the Lightning callback that apply bnexp.sweep.pruning's rule to a sweep trial."""

from __future__ import annotations

import math
from typing import Any

import optuna

from bnexp.record import VAL_ACC
from bnexp.sweep.pruning import CHANCE_ACC, EARLY_ATTR, better_view


class ChancePruner(optuna.pruners.BasePruner):
    """Prune a trial at a validation at or after `after` steps where it is at chance in both views (module
    docstring). Reads the trial's `early_acc` user attr, which the sweep worker writes at each validation."""

    def __init__(self, after: int, chance: float = CHANCE_ACC) -> None:
        self.after, self.chance = int(after), float(chance)

    def prune(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> bool:
        early = trial.user_attrs.get(EARLY_ATTR) or {}
        if not early:
            return False
        step = max(int(s) for s in early)
        acc = early[str(step)] if str(step) in early else early.get(step)
        return step >= self.after and acc is not None and acc < self.chance


def callback(trial: Any) -> Any:
    """A Lightning callback for one sweep trial: at each validation during fit, report val/acc (the trial's
    intermediate value: optuna-dashboard's curve), record the better view in `early_acc`, and ask the study's
    pruner; a trial to prune has its `record.pruned_step` set and stops (train() then skips the evaluations
    after it)."""
    import lightning as L

    class PruneOnValidation(L.Callback):
        finished_elsewhere = False  # another worker failed the trial as stale: its result is kept at the end

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
                prune = step < trainer.max_steps and trial.should_prune()
            except optuna.exceptions.UpdateFinishedTrialError:
                # failed as stale while it trained (a long pause): training goes on, the worker records the
                # result on the retry of its point (bnexp.sweep.worker: _keep_stale_result)
                self.finished_elsewhere = True
                return
            if prune:
                pl_module.record.pruned_step = step
                trainer.should_stop = True

    return PruneOnValidation()
