"""Stable learning-rate ranges from sweep trial tables (pure analysis: no torch, W&B, Optuna).

Input is a list of trial records (dicts), one per sweep trial, with at least
``number, state, bn, bias, depth, lr, seed, diverged`` and the metric (``val_acc`` by default).
A *variant* is the tuple of the ``variant_keys`` values (default ``("bn", "bias", "depth")``).

Conventions (the choices a reader needs to interpret the numbers):

* Only ``state == "COMPLETE"`` trials are results (``n_trials``). ``FAIL`` trials are counted as
  ``n_failed``; any other state (PRUNED, RUNNING, ...) as ``n_other``. A diverged run is a
  COMPLETE trial with ``diverged=True``: an infeasible *result*, counted, never stable.
* A trial is stable (``is_stable``) when it did not diverge, its metric is finite, and
  - ``mode="threshold"``: metric >= ``threshold``;
  - ``mode="relative"``: metric >= best - ``epsilon``, best = the highest finite metric of a
    non-diverged trial of the same variant.
  A None / NaN / inf metric is never stable. With ``last_k`` > 1 the metric compared is the lowest of
  the final value and the last ``last_k`` validations in the trial's ``val_history`` (so all k must
  pass; relative mode's best is the highest such value); a trial with fewer than k finite
  validations recorded is not stable. ``last_k=1`` (default) judges the final value alone.
* Learning rates are grouped after rounding to 10 significant digits (so 1e-3 and 10**-3 merge).
  An lr is *stable* when the fraction of its COMPLETE trials (seeds) that are stable is
  ``>= seed_quorum`` (default 0.5, inclusive: 1 of 2 seeds is enough).
* ``stable_lr_min`` / ``stable_lr_max``: lowest / highest stable lr; ``stable_decades`` =
  log10(max / min). It spans gaps (stable, unstable, stable counts the whole range);
  ``longest_run`` (grid points) and ``longest_run_decades`` measure the longest gap-free run
  on the variant's own sorted distinct lr list. With no stable lr both widths are 0.0 and the
  bounds None; with exactly one they are 0.0 too (``n_stable_lrs`` tells the cases apart).
* ``best_lr`` / ``best_val_acc``: the lr with the highest mean metric over its non-diverged
  finite seeds, and that mean (ties: the lowest lr).
* ``stable_decades_ci``: percentile-bootstrap 95% interval on ``stable_decades``, resampling
  the trials (seeds) within each lr with replacement (the relative-mode best is recomputed in
  each resample). None when no lr has more than one trial, or ``n_boot == 0``. It only recombines
  the seeds that ran: with 2-3 seeds it says how much the width moves where an lr's seeds disagree,
  not where a new seed's width would fall.
* ``per_seed``: one entry per seed, its stable range from its own trials alone (relative mode:
  against its own best); their spread is the seed-to-seed variation of the width.
* ``by_statistics``: the same widths judged by the population statistics (``population``:
  ``val_acc``, inference mode, what the default rule uses) and by the batch statistics (``batch``:
  ``val_acc_batchstats``), with the rule's threshold/mode/epsilon/last_k; the view whose metric is
  the rule's is the top-level numbers. ``statistics_differ``: both recorded and their stable
  ranges differ. "Stable" itself is always the rule's verdict (``is_stable``).

The report files (tables, plots, report.md) are bnexp.analysis.report's and bnexp.analysis.plots'.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from bnexp import names

DEFAULT_VARIANT_KEYS: tuple[str, ...] = names.BASE_AXES
RULE_MODES = ("threshold", "relative")
# Canonical order for the categorical axes so tables read off -> pre -> post, not alphabetically.
_CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "bn": ("off", "pre", "post"),
    "bias": ("auto", "true", "false"),
}
_LR_SIG_DIGITS = 10


@dataclass
class StabilityRule:
    """When a single trial counts as stable (see module docstring)."""

    threshold: float = 0.9  # stable = not diverged and final metric >= threshold
    mode: str = "threshold"  # or "relative": metric >= best_of_variant - epsilon
    epsilon: float = 0.02
    metric: str = "val_acc"
    last_k: int = 1  # the final k validations must all pass (1: the final value alone)

    def __post_init__(self) -> None:
        if self.mode not in RULE_MODES:
            raise ValueError(f"mode must be one of {RULE_MODES}, got {self.mode!r}")
        if isinstance(self.last_k, bool) or not isinstance(self.last_k, int) or self.last_k < 1:
            raise ValueError(f"last_k must be a whole number >= 1, got {self.last_k!r}")

    def describe(self) -> str:
        if self.mode == "threshold":
            text = f"not diverged and {self.metric} >= {self.threshold:g}"
        else:
            text = f"not diverged and {self.metric} >= (best {self.metric} of the variant) - {self.epsilon:g}"
        return text + (f" at each of the last {self.last_k} validations" if self.last_k > 1 else "")

    def with_metric(self, metric: str) -> StabilityRule:
        """The same rule judged on another metric (population vs batch statistics)."""
        return replace(self, metric=metric)


# What each "statistics" view of a width judges by: record column of the final value. BN off has no batch
# statistics to differ: its val_acc_batchstats is its val_acc (bnexp.core.lit).
STATISTICS: dict[str, str] = {"population": "val_acc", "batch": "val_acc_batchstats"}
# record column -> the key of the same metric in a val_history entry (metrics.json names)
HISTORY_KEYS: dict[str, str] = {
    "val_acc": "val/acc",
    "val_acc_batchstats": "val/acc_batchstats",
    "val_acc_best": "val/acc_best",
    "val_loss": "val/loss",
    "val_loss_batchstats": "val/loss_batchstats",
}


# ---------------------------------------------------------------------------- small helpers


def _as_float(v: Any) -> float | None:
    """A finite float, or None (None, NaN, inf, bools and junk strings are 'no value')."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _as_bool(v: Any) -> bool:
    # Records may come from csv or json: accept "True"/"true"/"1" as well as real bools.
    if isinstance(v, str):
        return v.strip().lower() in ("true", "1", "yes")
    return bool(v)


def _state(rec: dict) -> str:
    return str(rec.get("state", "COMPLETE")).upper()


def _lr_key(rec: dict) -> float | None:
    lr = _as_float(rec.get("lr"))
    if lr is None or lr <= 0:
        return None  # no place on a log axis
    return float(f"{lr:.{_LR_SIG_DIGITS}g}")


def _eligible_value(rec: dict, metric: str) -> float | None:
    """The metric if the trial can be stable at all (complete, not diverged, finite)."""
    if _state(rec) != "COMPLETE" or _as_bool(rec.get("diverged", False)):
        return None
    return _as_float(rec.get(metric))


def history(rec: dict, metric: str) -> list[tuple[int | None, float | None]]:
    """(step, value) of ``metric`` at each validation in the trial's ``val_history`` (None: not finite)."""
    key = HISTORY_KEYS.get(metric, metric)
    out = []
    for h in rec.get("val_history") or []:
        if isinstance(h, dict):
            step = _as_float(h.get("step"))
            out.append((None if step is None else int(step), _as_float(h.get(key))))
    return out


def _judged_value(rec: dict, rule: StabilityRule) -> float | None:
    """The value ``rule`` compares: the final metric, or with ``last_k`` > 1 the lowest of it and the last
    k validations (None when fewer than k finite ones are recorded)."""
    value = _eligible_value(rec, rule.metric)
    if value is None or rule.last_k <= 1:
        return value
    last = [v for _, v in history(rec, rule.metric)[-rule.last_k :]]
    if len(last) < rule.last_k or any(v is None for v in last):
        return None
    return min(value, *last)


def variant_key(rec: dict, variant_keys: Sequence[str] = DEFAULT_VARIANT_KEYS) -> tuple:
    """The variant a trial belongs to: its values of ``variant_keys``, in that order."""
    return tuple(rec.get(k) for k in variant_keys)


def variant_label(key: tuple, variant_keys: Sequence[str] = DEFAULT_VARIANT_KEYS) -> str:
    """Short name like ``pre-auto-d19`` (bnexp.names: the one namer of variants, runs and trials)."""
    return names.variant_label(tuple(key), tuple(variant_keys))


def _sort_key(key: tuple, variant_keys: Sequence[str]) -> tuple:
    # Mixed / None values must not crash sorted(): rank by kind, then by value.
    out = []
    for name, value in zip(variant_keys, key, strict=True):
        order = _CATEGORY_ORDER.get(name, ())
        if value in order:
            out.append((0, order.index(value), ""))
        elif value is None:
            out.append((3, 0, ""))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((1, float(value), ""))
        else:
            out.append((2, 0, str(value)))
    return tuple(out)


def variant_best(trials: Sequence[dict], rule: StabilityRule | str = "val_acc") -> float | None:
    """Highest finite judged metric over a variant's non-diverged COMPLETE trials (relative mode); a metric
    name means that metric's final value."""
    rule = StabilityRule(metric=rule) if isinstance(rule, str) else rule
    vals = [v for r in trials if (v := _judged_value(r, rule)) is not None]
    return max(vals) if vals else None


def is_stable(rec: dict, rule: StabilityRule, variant_best: float | None = None) -> bool:
    """Whether one trial is stable under ``rule``.

    In relative mode ``variant_best`` (see ``variant_best()``) is required; None there means
    the variant has no finite result, so nothing is stable.
    """
    value = _judged_value(rec, rule)
    if value is None:
        return False
    if rule.mode == "threshold":
        return value >= rule.threshold
    if variant_best is None or not math.isfinite(variant_best):
        return False
    return value >= variant_best - rule.epsilon


def judge(rec: dict, rule: StabilityRule, variant_best: float | None = None) -> bool | None:
    """``is_stable`` where one trial can be judged on its own; None in relative mode without the variant's
    best (only the whole study knows it: its report decides)."""
    if rule.mode == "relative" and variant_best is None:
        return None
    return is_stable(rec, rule, variant_best)


def record_of(metrics: dict) -> dict:
    """A trial record (the keys this module reads) from a run's metrics.json dict."""
    return {
        "state": "COMPLETE",
        "diverged": bool(metrics.get("diverged", False)),
        "val_acc": metrics.get("val/acc"),
        "val_acc_batchstats": metrics.get("val/acc_batchstats"),
        "val_history": metrics.get("val_history") or [],
    }


# ------------------------------------------------------------------------------ analysis


def _stable_lr_mask(vals: list[np.ndarray], rule: StabilityRule, seed_quorum: float) -> np.ndarray:
    """Which lrs are stable, for a batch of tables.

    ``vals[i]`` has shape (B, n_i): metric of each trial at lr i, NaN where the trial cannot be
    stable (diverged / non-finite). Returns a (B, L) bool array. The same code serves the point
    estimate (B = 1) and the bootstrap (B = n_boot), so the two cannot disagree on the rule.
    """
    n_rows = vals[0].shape[0]
    if rule.mode == "threshold":
        thr = np.full(n_rows, rule.threshold)
    else:
        filled = [np.where(np.isnan(v), -np.inf, v) for v in vals]
        best = np.max(np.concatenate(filled, axis=1), axis=1)
        thr = best - rule.epsilon  # -inf when nothing finite; guarded by ~isnan below
    out = np.zeros((n_rows, len(vals)), dtype=bool)
    for i, v in enumerate(vals):
        ok = ~np.isnan(v) & (np.nan_to_num(v, nan=-np.inf) >= thr[:, None])
        # small tolerance: 1/2 must count as >= 0.5 whatever the float rounding
        out[:, i] = ok.mean(axis=1) >= seed_quorum - 1e-12
    return out


def _decades(mask: np.ndarray, log_lrs: np.ndarray) -> np.ndarray:
    """log10(max stable lr / min stable lr) per row of a (B, L) mask; 0.0 where none."""
    any_ = mask.any(axis=1)
    first = np.argmax(mask, axis=1)
    last = mask.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1)
    return np.where(any_, log_lrs[last] - log_lrs[first], 0.0)


def _longest_run(stable: list[bool]) -> tuple[int, int, int]:
    """(length, start, end) of the longest run of True; ties go to the lowest lr."""
    best = (0, -1, -1)
    start = None
    for i, s in enumerate([*stable, False]):  # sentinel closes a run at the end
        if s and start is None:
            start = i
        elif not s and start is not None:
            if i - start > best[0]:
                best = (i - start, start, i - 1)
            start = None
    return best


def _width(
    complete: list[dict], rule: StabilityRule, seed_quorum: float, n_boot: int, rng_key: list[int] | None
) -> dict[str, Any]:
    """Stable lrs and widths of one variant's COMPLETE trials under ``rule`` (module docstring); the
    bootstrap interval only with ``n_boot`` > 0 and an ``rng_key``."""
    best = variant_best(complete, rule)
    by_lr: dict[float, list[dict]] = {}
    for r in complete:
        lr = _lr_key(r)
        if lr is not None:
            by_lr.setdefault(lr, []).append(r)
    lrs = sorted(by_lr)

    points = []
    vals: list[np.ndarray] = []  # per lr: (1, n_seeds) judged values, NaN where a trial cannot be stable
    for lr in lrs:
        group = by_lr[lr]
        finals = [v for r in group if (v := _eligible_value(r, rule.metric)) is not None]
        n_st = sum(is_stable(r, rule, best) for r in group)
        n_div = sum(_as_bool(r.get("diverged", False)) for r in group)
        vals.append(np.array([[np.nan if (v := _judged_value(r, rule)) is None else v for r in group]], dtype=float))
        points.append(
            {
                "lr": lr,
                "n_seeds": len(group),
                "n_stable": n_st,
                "n_diverged": n_div,
                "frac_stable": n_st / len(group),
                "mean_val_acc": float(np.mean(finals)) if finals else None,
                "diverged_any": n_div > 0,
            }
        )

    log_lrs = np.log10(np.array(lrs, dtype=float)) if lrs else np.zeros(0)
    stable_lrs: list[bool] = _stable_lr_mask(vals, rule, seed_quorum)[0].tolist() if lrs else []
    for p, s in zip(points, stable_lrs, strict=True):
        p["stable"] = bool(s)
    idx = [i for i, s in enumerate(stable_lrs) if s]
    run_len, run_lo, run_hi = _longest_run(stable_lrs)

    # Bootstrap only makes sense when at least one lr has more than one seed to resample.
    ci = None
    if n_boot > 0 and rng_key is not None and any(p["n_seeds"] > 1 for p in points):
        rng = np.random.default_rng(rng_key)
        boot_vals = [v[0][rng.integers(0, v.shape[1], size=(n_boot, v.shape[1]))] for v in vals]
        boot = _decades(_stable_lr_mask(boot_vals, rule, seed_quorum), log_lrs)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        ci = [float(lo), float(hi)]

    return {
        "n_stable": sum(is_stable(r, rule, best) for r in complete),
        "n_lrs": len(lrs),
        "n_stable_lrs": len(idx),
        "stable_lr_min": lrs[idx[0]] if idx else None,
        "stable_lr_max": lrs[idx[-1]] if idx else None,
        "stable_decades": float(log_lrs[idx[-1]] - log_lrs[idx[0]]) if idx else 0.0,
        "stable_decades_ci": ci,
        "longest_run": run_len,
        "longest_run_lr_min": lrs[run_lo] if run_len else None,
        "longest_run_lr_max": lrs[run_hi] if run_len else None,
        "longest_run_decades": float(log_lrs[run_hi] - log_lrs[run_lo]) if run_len else 0.0,
        "variant_best": best,
        "points": points,
    }


def _per_seed(complete: list[dict], rule: StabilityRule, seed_quorum: float) -> list[dict]:
    """Each seed's stable range from its own trials alone (relative mode: against its own best)."""
    by_seed: dict[Any, list[dict]] = {}
    for r in complete:
        by_seed.setdefault(r.get("seed"), []).append(r)
    out = []
    for s in sorted(by_seed, key=lambda s: _sort_key((s,), ("seed",))):
        w = _width(by_seed[s], rule, seed_quorum, 0, None)
        out.append({"seed": s, "n_trials": len(by_seed[s])} | {k: w[k] for k in _SEED_KEYS})
    return out


_SEED_KEYS = ("n_stable_lrs", "stable_lr_min", "stable_lr_max", "stable_decades", "longest_run_decades")
_VIEW_KEYS = ("n_stable", "variant_best", "stable_decades_ci", *_SEED_KEYS)


def _analyse_variant(
    key: tuple,
    recs: list[dict],
    rule: StabilityRule,
    variant_keys: Sequence[str],
    seed_quorum: float,
    n_boot: int,
    seed: int,
) -> dict:
    label = variant_label(key, variant_keys)
    complete = [r for r in recs if _state(r) == "COMPLETE"]
    # per-variant stream from its label, so adding a variant leaves the others' CIs alone
    main = _width(complete, rule, seed_quorum, n_boot, [seed, zlib.crc32(label.encode())])
    per_seed = _per_seed(complete, rule, seed_quorum)

    views: dict[str, dict] = {}
    for name, metric in STATISTICS.items():
        if metric == rule.metric:
            w, ps = main, per_seed
        else:
            r_m = rule.with_metric(metric)
            w = _width(complete, r_m, seed_quorum, n_boot, [seed, zlib.crc32(f"{label}/{name}".encode())])
            ps = _per_seed(complete, r_m, seed_quorum)
        views[name] = {
            "metric": metric,
            "n_finite": sum(_eligible_value(r, metric) is not None for r in complete),
            **{k: w[k] for k in _VIEW_KEYS},
            "stable_lrs": [p["lr"] for p in w["points"] if p["stable"]],
            "per_seed": ps,
        }
    pop, bat = views["population"], views["batch"]
    differ = bool(pop["n_finite"] and bat["n_finite"]) and (pop["stable_lrs"] != bat["stable_lrs"])

    means = [(p["mean_val_acc"], p["lr"]) for p in main["points"] if p["mean_val_acc"] is not None]
    # ties go to the lowest lr
    best_mean, best_lr = max(means, key=lambda m: (m[0], -m[1])) if means else (None, None)

    out: dict[str, Any] = dict(zip(variant_keys, key, strict=True))
    out.update(
        {
            "label": label,
            "metric": rule.metric,
            "n_trials": len(complete),
            "n_stable": main["n_stable"],
            "n_diverged": sum(_as_bool(r.get("diverged", False)) for r in complete),
            "n_failed": sum(_state(r) == "FAIL" for r in recs),
            "n_other": sum(_state(r) not in ("COMPLETE", "FAIL") for r in recs),
        }
    )
    out.update({k: v for k, v in main.items() if k not in ("n_stable", "variant_best", "points")})
    out.update(
        {
            "best_lr": best_lr,
            "best_val_acc": best_mean,
            "variant_best": main["variant_best"],
            "per_seed": per_seed,
            "by_statistics": views,
            "statistics_differ": differ,
            "points": main["points"],
        }
    )
    return out


def analyse(
    trials: list[dict],
    rule: StabilityRule,
    variant_keys: Sequence[str] = DEFAULT_VARIANT_KEYS,
    n_boot: int = 1000,
    seed: int = 0,
    seed_quorum: float = 0.5,
) -> list[dict]:
    """One summary dict per variant, sorted by variant key (see module docstring)."""
    variant_keys = tuple(variant_keys)
    groups: dict[tuple, list[dict]] = {}
    for rec in trials:
        groups.setdefault(variant_key(rec, variant_keys), []).append(rec)
    keys = sorted(groups, key=lambda k: _sort_key(k, variant_keys))
    return [_analyse_variant(k, groups[k], rule, variant_keys, seed_quorum, n_boot, seed) for k in keys]


def compare(variants: list[dict], variant_keys: Sequence[str] | None = None) -> list[dict]:
    """Width with BN minus width without, per group of the other variant keys.

    Groups are every variant key except ``bn`` (so ``depth`` and ``bias``, plus any extra grid
    axis). ``variant_keys`` defaults to the keys that precede ``"label"`` in each ``analyse()``
    dict (also true after a JSON round trip). A BN placement whose group has no
    ``bn == "off"`` variant gets ``off_decades = delta_decades = None`` rather than being
    dropped, so the missing baseline is visible.
    """
    groups: dict[tuple, dict[str, dict]] = {}
    group_names: dict[tuple, dict] = {}
    for v in variants:
        if "bn" not in v:
            continue
        if variant_keys is None:
            keys = list(v)[: list(v).index("label")] if "label" in v else []
        else:
            keys = list(variant_keys)
        names = {k: v.get(k) for k in keys if k != "bn"}
        gk = tuple(names.items())
        groups.setdefault(gk, {})[v["bn"]] = v
        group_names[gk] = names
    rows = []
    for gk, by_bn in groups.items():
        off = by_bn.get("off")
        for bn, v in by_bn.items():
            if bn == "off":
                continue
            row = dict(group_names[gk])
            row.update(
                {
                    "bn": bn,
                    "stable_decades": v["stable_decades"],
                    "off_decades": off["stable_decades"] if off else None,
                    "delta_decades": (v["stable_decades"] - off["stable_decades"] if off else None),
                    "longest_run_decades": v["longest_run_decades"],
                    "off_longest_run_decades": off["longest_run_decades"] if off else None,
                    "delta_longest_run_decades": (
                        v["longest_run_decades"] - off["longest_run_decades"] if off else None
                    ),
                }
            )
            rows.append(row)

    def order(row: dict) -> tuple:
        keys = [k for k in row if k not in _COMPARE_VALUE_KEYS]
        return _sort_key(tuple(row[k] for k in keys), keys)

    return sorted(rows, key=order)


_COMPARE_VALUE_KEYS = {
    "stable_decades",
    "off_decades",
    "delta_decades",
    "longest_run_decades",
    "off_longest_run_decades",
    "delta_longest_run_decades",
}
