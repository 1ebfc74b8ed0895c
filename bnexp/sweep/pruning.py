"""Stopping hopeless trials early: a trial at chance whose net has gone *silent* is pruned (`sweep.prune`).

The rule and its checks (pure: no torch, no Optuna); the Optuna pruner and the training callback that apply
it are bnexp.sweep.pruner's.

* A trial is *at chance* at a validation when both views score below `CHANCE_ACC` (0.2): the population
  statistics (inference mode) and the batch statistics. MNIST's chance is 0.10-0.11; a subset validation of
  1000 images (trainer.val_subset) has a standard error under 0.01 there. Judged by the better view: BN's
  running averages lag (momentum 0.01), so early on the population view reads chance while the batch view
  shows the net training.
* A trial is *silent* when no gradient has reached its first layer (all exactly zero) at any of the last
  `silent_window` steps (100 with Adam, of 64 images; smaller batches need as many images). No gradient at the
  first layer means some layer's output was zero for every image of the batch (a dead ReLU layer): every
  parameter up to it gets an exact zero gradient, so that part of the net stops changing, and every layer after
  it sees the same input for every image, so the net gives every image the same answer. Nothing moves the frozen
  parameters but the optimizer's memory of earlier gradients, and after 100 silent steps Adam's first moment
  (beta1 0.9) is 0.9**100 = 3e-5 of what it was; SGD's momentum gets the window that decays it as far. Weight
  decay moves every parameter, so with it silence is not judged; nor in float16 or float8 precision
  (`UNDERFLOWS`), where a gradient too small for the format is an exact zero in a layer that is alive (float32
  and bfloat16 share an exponent range wide enough: a live first layer's gradients measured here are 1e-10 and
  up).
* Silence is judged in a net without BN only. With BN a layer's output depends on the batch (its
  statistics), so a layer dead on every batch so far can come alive on the next: BN pre at lr 1 and 3.16
  falls silent for 100-280 steps at a time, and in 5 of the 7 such trials a gradient reached the first layer
  again (none of them left chance, but the argument above does not hold for them).
* A trial at chance *and* silent is pruned, at any validation before its last. One at chance but not silent
  is a possible late starter and is never pruned: its gradients are small but flowing (BN off at lr 1e-5 to
  1e-3, or at depth 19), and late starters leave chance late. In the committed studies the latest was at
  step 500 (BN off, depth 4, seed 2, lr 0.001: 0.11 at step 400, 0.91 at 500); on a held-out seed it was step
  600 (BN off, depth 8, seed 5, lr 0.00178, channels_last: 0.09 at step 600, 0.90 at 700, 0.96 at 800), which
  a rule that pruned at chance from step 600 of 800 stopped (bench/bench_study.py --seeds 3,4,5). So no step
  is late enough to prune a trial for being at chance alone, and `sweep.prune_after` (that rule's first step)
  is refused.
* The evidence (`python bench/silent_evidence.py`, docs/results/silent_evidence/runs.csv): 89 trials trained
  to their end with each step's silence kept. BN off: 46 of 65 fell silent, all at lr 0.00316 and up, 100
  steps in a row by step 146; in the 31849 steps they trained after, none had a gradient at its first layer
  again, none scored above 0.117 at a validation, and all ended at chance (at most 0.113). The rule prunes
  each of them at step 200. On the late starters' ground (BN off, depth 8, lr 1e-5 to 0.00178, seeds 0-2 and
  5) none fell silent, the two late starters included (0.971 and 0.961 at step 800). With SGD (momentum 0.9,
  its window 100; docs/results/silent_evidence/sgd): 6 of 24 fell silent (lr 1 and 3.16), none trained again.
* 0 false stops over the committed curves (`python bench/silent_evidence.py --committed`,
  docs/results/silent_evidence/committed.csv): every committed trial without BN at chance at a validation
  before its last, 170, replayed in its own arithmetic. The 17 that ended stable (late starters) never had a
  silent step; the 77 the rule stops (all at step 200) stayed at chance to their committed end.

Only a rule that cannot be met at chance can be decided this way: the threshold rule with a threshold
above `CHANCE_ACC`. A relative rule (stable = near the variant's best, which may itself be chance) or a
threshold at or below chance turns pruning off under `sweep.prune=auto` and is refused under
`sweep.prune=true`. A pruned trial is recorded PRUNED in Optuna (optuna-dashboard and `optuna trials` show
it so) with its curve and user attrs; the report counts it per variant and judges it unstable at its lr.

Why a pruner of our own (bnexp.sweep.pruner.SilentPruner): Optuna's MedianPruner, PercentilePruner and
ThresholdPruner read one intermediate value (here val/acc, the population view); silence is not a value a
learning curve holds. This one reads the better view and the silent steps, which the worker keeps in the
trial's `early_acc` and `silent_steps` user attrs, through the same interface (`BasePruner.prune`,
`trial.report`, `trial.should_prune`).
"""

from __future__ import annotations

import math
from typing import Any

from bnexp.analysis.stability import StabilityRule
from bnexp.cli import ConfigError
from bnexp.record import VAL_ACC, VAL_ACC_BATCH

CHANCE_ACC = 0.2  # both views below this at a validation: at chance (MNIST's chance is 0.10-0.11)
SILENT_WINDOW = 100  # steps in a row with no gradient at the first layer before a trial is silent (Adam)
SILENT_BATCH = 64  # ... of this many images each (the seed's batch, the evidence's): a smaller batch, more steps
ADAM_BETA1 = 0.9  # torch.optim.Adam's default, which bnexp.core.lit.build_optimizer keeps
EARLY_ATTR = "early_acc"  # user attr: {step: the better view's accuracy} at each validation so far
SILENT_ATTR = "silent_steps"  # user attr: {step: steps in a row up to it with no gradient at the first layer}
WINDOW_ATTR = "silent_window"  # user attr: the trial's own window (`silent_window` of its optimizer and batch)
PRUNE_VALUES = ("auto", "true", "false")
# precisions whose gradients underflow where float32's do not (float16's smallest is 6e-8, float8's larger):
# there a first layer without a gradient may be alive; bfloat16 has float32's exponent range
UNDERFLOWS = ("16-mixed", "16", "16-true", "transformer-engine", "transformer-engine-float16")


def prune_setting(value: Any) -> str:
    """`sweep.prune` as one of auto | true | false (YAML and Hydra give bools for true/false)."""
    v = str(value).strip().lower() if not isinstance(value, bool) else str(value).lower()
    if v not in PRUNE_VALUES:
        raise ConfigError(
            f"sweep.prune={value!r} is not allowed; choose one of: auto, true, false (e.g. sweep.prune=false)"
        )
    return v


def silent_window(optim: Any, batch_size: int = SILENT_BATCH) -> int | None:
    """Steps in a row with no gradient at the first layer after which the silent part of the net stays as it
    is (module docstring), for the optimizer `optim` (cfg.optim) and batches of `batch_size` images; None where
    silence cannot be judged (weight decay moves every parameter; SGD with momentum 1 never forgets a gradient).
    At least `SILENT_WINDOW` steps of `SILENT_BATCH` images' worth: a batch with no gradient says its images
    found the net dead, so a smaller batch needs more steps to say it of as many images (the evidence is for
    batches of 64: 6400 images)."""
    if float(optim.get("weight_decay", 0.0) or 0.0) != 0.0:
        return None
    images = max(SILENT_WINDOW, math.ceil(SILENT_WINDOW * SILENT_BATCH / max(1, int(batch_size))))
    if optim.name != "sgd":
        return images
    momentum = float(optim.get("momentum", 0.0) or 0.0)
    if momentum <= 0.0:
        return images
    if momentum >= 1.0:
        return None
    # as far as Adam's first moment decays over SILENT_WINDOW steps
    return max(images, math.ceil(SILENT_WINDOW * math.log(ADAM_BETA1) / math.log(momentum)))


def first_validation(step: int, val_every: int) -> int:
    """The first validation at or after `step`."""
    return math.ceil(step / val_every) * val_every


def plan(sw: Any, cfg: Any, rule: StabilityRule) -> int | None:
    """The silent window the pruner judges (`silent_window`), or None (no pruning): checks `sweep.prune` and
    `sweep.prune_after` against the training (cfg.trainer, cfg.optim) and the rule, each refusal one
    ConfigError naming the fix."""
    mode = prune_setting(sw.get("prune", "auto"))
    after = sw.get("prune_after")
    if after is not None:
        raise ConfigError(
            f"sweep.prune_after={after}: a trial is no longer pruned for being at chance from a step on (a held-out "
            "late starter was at chance at step 600 of 800 and ended stable; docs/sweeps.md, pruning), only when "
            "it has gone silent as well; drop sweep.prune_after"
        )
    if mode == "false":
        return None
    if not (rule.mode == "threshold" and rule.threshold > CHANCE_ACC):
        if mode == "true":
            why = (
                "a relative rule judges against the variant's best, which may itself be chance"
                if rule.mode != "threshold"
                else f"sweep.rule.threshold={rule.threshold:g} is met at chance (< {CHANCE_ACC:g} counts as chance)"
            )
            raise ConfigError(f"sweep.prune cannot decide this rule: {why}; set sweep.prune=false (or auto)")
        return None
    if sw.get("population", 1) > 1:
        if mode == "true":
            raise ConfigError(
                f"sweep.prune=true with sweep.population={sw.population}: a population trains its members as one "
                "model and is not pruned member by member; set sweep.prune=false or sweep.population=1"
            )
        return None
    t = cfg.trainer
    if str(t.precision) in UNDERFLOWS:
        if mode == "true":
            raise ConfigError(
                f"sweep.prune=true cannot judge a silent trial in trainer.precision={t.precision}: a gradient too "
                "small for its 16- or 8-bit floats underflows to an exact zero, so a first layer without a gradient "
                "need not be dead (without BN at depth 19 the first layer's gradients start at 1e-10 to 1e-7); use "
                "trainer.precision=bf16-mixed or 32-true, or sweep.prune=auto"
            )
        return None
    window = silent_window(cfg.optim, int(cfg.data.batch_size))
    if window is not None and first_validation(window, int(t.val_every)) < int(t.max_steps):
        return window
    if mode == "true":
        why = (
            f"no validation before the last comes {window} steps (of data.batch_size={cfg.data.batch_size} images)"
            f" in; use trainer.max_steps>{first_validation(window, int(t.val_every))}"
            if window is not None
            else "optim.weight_decay moves every parameter; set optim.weight_decay=0"
            if float(cfg.optim.get("weight_decay") or 0.0) != 0.0
            else "optim.momentum=1 never forgets a gradient; use optim.momentum<1"
        )
        raise ConfigError(f"sweep.prune=true cannot judge a silent trial here: {why}, or sweep.prune=auto")
    return None


def better_view(entry: dict) -> float | None:
    """The better of a validation's two views (population, batch statistics); None when neither is finite."""
    vals = [v for k in (VAL_ACC, VAL_ACC_BATCH) if isinstance(v := entry.get(k), (int, float)) and math.isfinite(v)]
    return max(vals) if vals else None
