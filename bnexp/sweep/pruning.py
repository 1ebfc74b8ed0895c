"""Stopping hopeless trials early: a trial still at chance late in training is pruned (`sweep.prune`).

The rule and its checks (pure: no torch, no Optuna); the Optuna pruner and the training callback that apply
it are bnexp.sweep.pruner's.

The rule, from the committed studies' curves (docs/results/*/curves.csv, 570 finished trials of 800 steps;
`python bench/prune_evidence.py` recomputes every figure below):

* A trial is *at chance* at a validation when both views score below `CHANCE_ACC` (0.2): the population
  statistics (inference mode) and the batch statistics. MNIST's chance is 0.10-0.11; a subset validation of
  1000 images (trainer.val_subset) has a standard error under 0.01 there.
* Judged by the better view, not the population statistics alone: BN's running averages lag (momentum
  0.01), so early on the population view reads chance while the batch view shows the net training.
* Late starters exist, and when they leave chance is a matter of steps, not of the run's share: a run of
  T steps is the first T steps of a longer one (a constant lr, the same batches). Of the committed trials
  that left chance, the latest was still at chance at step 500 (and went on to 0.26); of those that ended
  stable, step 400 (BN off, depth 4, seed 2, lr 0.001: 0.11 at step 400, 0.91 at 500), and a BN-off seed at
  depth 8 goes from chance at step 350 to 0.92 at 500 (docs/results/no_bn_seeds: seed 5). So a trial is
  pruned only at a validation at or after three quarters of `trainer.max_steps` *and* after step
  `LATE_DEPARTURE` (500): 600 of 800, and nothing in a run of 600 steps or fewer. A share alone is not
  enough: in a run of 500 steps, 3/4 is step 400, where the depth-4 late starter was at chance one
  validation before it ended stable (`python bench/prune_evidence.py --prefixes` judges every committed
  curve cut at every validation step as a run of that length: 0 false stops under this rule, 1 under the
  share alone). Earlier is refused (`check`).
* A collapsed trial (a learning rate past the upper edge: trained, then fell back to chance) is at chance
  too and is pruned by the same test. None of the committed trials at chance at step 600 or later ended
  above 0.2.

Only a rule that cannot be met at chance can be decided this way: the threshold rule with a threshold
above `CHANCE_ACC`. A relative rule (stable = near the variant's best, which may itself be chance) or a
threshold at or below chance turns pruning off under `sweep.prune=auto` and is refused under
`sweep.prune=true`. A pruned trial is recorded PRUNED in Optuna (optuna-dashboard and `optuna trials` show
it so) with its curve and user attrs; the report counts it per variant and judges it unstable at its lr.

Why a pruner of our own (bnexp.sweep.pruner.ChancePruner): Optuna's MedianPruner, PercentilePruner and
ThresholdPruner read one intermediate value (here val/acc, the population view, which reads chance early
for a healthy BN net); ThresholdPruner(lower=0.2, n_warmup_steps=600) is the nearest fit, but it has no
second view. This one reads the better view, which the worker keeps in the trial's `early_acc` user attr,
through the same interface (`BasePruner.prune`, `trial.report`, `trial.should_prune`).
"""

from __future__ import annotations

import math
from typing import Any

from bnexp.analysis.stability import StabilityRule
from bnexp.cli import ConfigError
from bnexp.record import VAL_ACC, VAL_ACC_BATCH

CHANCE_ACC = 0.2  # both views below this at a validation: at chance (MNIST's chance is 0.10-0.11)
AFTER_FRACTION = 0.75  # the earliest step a trial may be pruned at, as a fraction of trainer.max_steps
LATE_DEPARTURE = 500  # and after this step: the latest a committed trial was at chance before it left chance
EARLY_ATTR = "early_acc"  # user attr: {step: the better view's accuracy} at each validation so far
PRUNE_VALUES = ("auto", "true", "false")


def prune_setting(value: Any) -> str:
    """`sweep.prune` as one of auto | true | false (YAML and Hydra give bools for true/false)."""
    v = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    if v not in PRUNE_VALUES:
        raise ConfigError(
            f"sweep.prune={value!r} is not allowed; choose one of: auto, true, false (e.g. sweep.prune=false)"
        )
    return v


def earliest_step(max_steps: int) -> int:
    """The earliest step a trial may be pruned at: at or after 3/4 of the run and after step LATE_DEPARTURE."""
    return max(math.ceil(AFTER_FRACTION * max_steps), LATE_DEPARTURE + 1)


def earliest_after(max_steps: int, val_every: int) -> int:
    """The first validation at or after `earliest_step` (the pruner only judges at validations)."""
    return math.ceil(earliest_step(max_steps) / val_every) * val_every


def default_after(max_steps: int, val_every: int) -> int | None:
    """`earliest_after`, or None where it is not before the last step (a run too short to prune)."""
    step = earliest_after(max_steps, val_every)
    return step if step < max_steps else None


def plan(sw: Any, trainer: Any, rule: StabilityRule) -> int | None:
    """The step from which a trial may be pruned, or None (no pruning): checks `sweep.prune` and
    `sweep.prune_after` against the training and the rule, each refusal one ConfigError naming the fix."""
    mode = prune_setting(sw.get("prune", "auto"))
    after = sw.get("prune_after")
    max_steps, val_every = int(trainer.max_steps), int(trainer.val_every)
    if mode == "false":
        if after is not None:
            raise ConfigError(f"sweep.prune_after={after} with sweep.prune=false: nothing is pruned; drop one of them")
        return None
    decidable = rule.mode == "threshold" and rule.threshold > CHANCE_ACC
    if not decidable:
        if mode == "true" or after is not None:
            why = (
                "a relative rule judges against the variant's best, which may itself be chance"
                if rule.mode != "threshold"
                else f"sweep.rule.threshold={rule.threshold:g} is met at chance (< {CHANCE_ACC:g} counts as chance)"
            )
            raise ConfigError(f"sweep.prune cannot decide this rule: {why}; set sweep.prune=false (or auto)")
        return None
    if sw.get("population", 1) > 1:
        if mode == "true" or after is not None:
            raise ConfigError(
                f"sweep.prune=true with sweep.population={sw.population}: a population trains its members as one "
                "model and is not pruned member by member; set sweep.prune=false or sweep.population=1"
            )
        return None
    if after is None:
        step = default_after(max_steps, val_every)
        if step is None and mode == "true":
            raise ConfigError(
                f"sweep.prune=true with trainer.max_steps={max_steps}: a trial may be pruned only at a validation "
                f"after step {LATE_DEPARTURE} (committed trials were at chance that late and went on to train) and "
                f"before its last, and this run has none; use trainer.max_steps>"
                f"{earliest_after(max_steps, val_every)}, or sweep.prune=auto"
            )
        return step
    if isinstance(after, bool) or not isinstance(after, int):
        raise ConfigError(f"sweep.prune_after={after!r} must be a whole number of steps (e.g. sweep.prune_after=600)")
    if after > max_steps:
        raise ConfigError(
            f"sweep.prune_after={after} is after trainer.max_steps={max_steps}: nothing would be pruned; "
            f"use sweep.prune_after<={max_steps} or sweep.prune=false"
        )
    earliest = earliest_step(max_steps)  # the pruner judges at the first validation at or after `after`
    if after < earliest:
        raise ConfigError(
            f"sweep.prune_after={after} of trainer.max_steps={max_steps} is earlier than step {earliest} (3/4 of the "
            f"run, after step {LATE_DEPARTURE}): committed trials still at chance at step {LATE_DEPARTURE} went on "
            f"to train (docs/sweeps.md, pruning); use sweep.prune_after>={earliest}, or sweep.prune=false"
        )
    return after


def better_view(entry: dict) -> float | None:
    """The better of a validation's two views (population, batch statistics); None when neither is finite."""
    vals = [v for k in (VAL_ACC, VAL_ACC_BATCH) if isinstance(v := entry.get(k), (int, float)) and math.isfinite(v)]
    return max(vals) if vals else None
