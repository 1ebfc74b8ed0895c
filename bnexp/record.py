"""The one trial record and the one name of each metric (pure: no torch, Optuna or W&B).

Each metric has one name wherever a user sees it: metrics.json, trials.csv, curves.csv, summary.json, the
W&B run and the Optuna trial attrs all say `val/acc`, never `val_acc`. The spelling is Lightning's and
W&B's (`stage/metric`, so W&B groups the charts by stage). pandas reads such a column as `df["val/acc"]`.

`TrialRecord` is what a sweep worker writes (as Optuna user attrs), what storage holds, and what the
report, the CSVs, the W&B summary and the status command read back (`TrialRecord.row()`, a flat dict keyed
by these names, is what bnexp.analysis judges). `LEGACY_NAMES` reads tables and studies written before the
names were one (`val_acc`, `test_acc`, ...): the only translation left, and only on the way in.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# ---- metric names (metrics.json keys) --------------------------------------------------------------
VAL_ACC = "val/acc"  # population statistics: the net in inference mode (BN's running averages)
VAL_ACC_BATCH = "val/acc_batchstats"  # the same weights, each validation batch normalised by its own statistics
VAL_ACC_RECAL = "val/acc_recal"  # BN statistics recomputed with the final weights (bnexp.core.recal)
VAL_ACC_BEST = "val/acc_best"
VAL_LOSS = "val/loss"
VAL_LOSS_BATCH = "val/loss_batchstats"
VAL_LOSS_RECAL = "val/loss_recal"
TEST_ACC = "test/acc"
TEST_ACC_SINGLE = "test/acc_single"  # the first test images scored one at a time (population statistics)
TEST_LOSS = "test/loss"
STEP = "step"
DIVERGED = "diverged"
DIVERGED_STEP = "diverged_step"  # first step with a non-finite loss; None when the run did not diverge
WALL_S = "wall_s"
# logged while training (W&B / CSV loggers), not kept in metrics.json
TRAIN_LOSS = "train/loss"
TRAIN_ACC = "train/acc"
TRAIN_GRAD_NORM = "train/grad_norm"
STEPS_PER_S = "perf/steps_per_s"
GLOBAL_STEP = "trainer/global_step"  # Lightning's step, every W&B chart's x axis
# the loss landscape along the gradient (bnexp.tracking.diagnostics, logger.landscape_every), in the order computed
LANDSCAPE_LOSS_RANGE = "landscape/loss_range"
LANDSCAPE_GRAD_CHANGE_MAX = "landscape/grad_change_max"
LANDSCAPE_BETA_SMOOTHNESS = "landscape/beta_smoothness"
LANDSCAPE_KEYS = (LANDSCAPE_LOSS_RANGE, LANDSCAPE_GRAD_CHANGE_MAX, LANDSCAPE_BETA_SMOOTHNESS, "landscape/grad_norm",
                  "landscape/loss")  # fmt: skip

# what a run costs: kept with each trial, so trials.csv traces a study's CPU hours (older studies: empty)
TRAIN_S = "train_s"  # wall seconds in fit and the final validation
RECAL_S = "recal_s"  # wall seconds recomputing BN statistics (None: not recalibrated)
CPU_S = "cpu_s"  # the run's CPU seconds, all threads: what a trial costs on a shared machine

# what a trial record keeps of a run's metrics.json, in column order
RESULT_KEYS = (VAL_ACC, VAL_ACC_BEST, VAL_ACC_BATCH, VAL_ACC_RECAL, VAL_LOSS, TEST_ACC, TEST_ACC_SINGLE, STEP,
               DIVERGED_STEP, WALL_S, TRAIN_S, RECAL_S, CPU_S)  # fmt: skip
# the validation metrics of a learning curve (val_history entries, curves.csv columns), in column order
CURVE_KEYS = (VAL_ACC, VAL_ACC_BATCH, VAL_ACC_BEST, VAL_LOSS, VAL_LOSS_BATCH)
# which metric each way of judging a trial reads: population (inference), batch or recalibrated statistics
STATISTICS: dict[str, str] = {"population": VAL_ACC, "batch": VAL_ACC_BATCH, "recal": VAL_ACC_RECAL}

# names before they were one (trials.csv, summary.json and Optuna attrs of older studies)
LEGACY_NAMES = {
    "val_acc": VAL_ACC,
    "val_acc_best": VAL_ACC_BEST,
    "val_acc_batchstats": VAL_ACC_BATCH,
    "val_loss": VAL_LOSS,
    "val_loss_batchstats": VAL_LOSS_BATCH,
    "test_acc": TEST_ACC,
    "test_acc_single": TEST_ACC_SINGLE,
    "optim.lr": "lr",  # the Optuna param is named for the config key it sets; records call it lr
}

# identity columns first, then the variant's axes, then the results
ID_KEYS = ("number", "state", "key", "bn", "bias", "depth", "lr", "seed")


def canonical(name: str) -> str:
    """The one name of a column or metric, whatever older table it came from."""
    return LEGACY_NAMES.get(name, name)


@dataclass
class TrialRecord:
    """One trial of a study: its point (variant, lr, seed), its results and how to rebuild it.

    `axes` holds the grid axes beyond bn/bias/depth by config path (`optim.name`: "sgd"); `results` holds
    `RESULT_KEYS` (None where a run did not record one: a trial that failed before it finished).
    """

    number: int | None = None
    state: str = "COMPLETE"
    key: str | None = None
    bn: str | None = None
    bias: str | None = None
    depth: int | None = None
    lr: float | None = None
    seed: int | None = None
    diverged: bool = False
    results: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, Any] = field(default_factory=dict)
    overrides: str = ""
    val_history: list[dict[str, Any]] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)  # anything else the study kept (population, kept_from, ...)

    @classmethod
    def from_metrics(cls, metrics: Mapping[str, Any], **point: Any) -> TrialRecord:
        """A finished run's record from its metrics.json dict; `point` sets number/state/key/axes/overrides."""
        rec = cls(
            bn=metrics.get("bn"),
            bias=metrics.get("bias"),
            depth=metrics.get("depth"),
            lr=metrics.get("lr"),
            seed=metrics.get("seed"),
            diverged=bool(metrics.get(DIVERGED)),
            results={k: metrics.get(k) for k in RESULT_KEYS},
            val_history=list(metrics.get("val_history") or []),
        )
        for k, v in point.items():
            setattr(rec, k, v)
        return rec

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> TrialRecord:
        """Back from `row()` (a CSV row, Optuna user attrs); older names are read as today's."""
        row = {canonical(k): v for k, v in row.items()}
        known = {"diverged", "overrides", "val_history", *ID_KEYS, *RESULT_KEYS}
        rec = cls(**{k: row[k] for k in ID_KEYS if row.get(k) is not None})
        rec.diverged = as_bool(row.get(DIVERGED, False))
        rec.overrides = row.get("overrides") or ""
        rec.val_history = [{canonical(k): v for k, v in h.items()} for h in row.get("val_history") or []]
        rec.results = {k: row.get(k) for k in RESULT_KEYS}
        for k, v in row.items():
            if k in known:
                continue
            (rec.axes if "." in k else rec.extra)[k] = v
        return rec

    def row(self) -> dict[str, Any]:
        """The flat dict that bnexp.analysis judges and trials.csv writes (one column per name)."""
        out: dict[str, Any] = {k: getattr(self, k) for k in ID_KEYS}
        out.update(self.axes)
        out[DIVERGED] = self.diverged
        out.update({k: self.results.get(k) for k in RESULT_KEYS})
        out["overrides"] = self.overrides
        out.update(self.extra)
        out["val_history"] = self.val_history
        return out

    def attrs(self) -> dict[str, Any]:
        """What a sweep worker keeps on its Optuna trial (Optuna's own number, state and params are not)."""
        return {k: v for k, v in self.row().items() if k not in ("number", "state", "key", "lr", "seed")}


def as_bool(v: Any) -> bool:
    """A flag read from CSV or JSON: "True"/"true"/"1"/"yes" as well as a real bool."""
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)
