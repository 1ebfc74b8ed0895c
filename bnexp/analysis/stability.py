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
  A None / NaN / inf metric is never stable.
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
  each resample). None when no lr has more than one trial, or ``n_boot == 0``.

The report files (tables, plots, report.md) are bnexp.analysis.report's and bnexp.analysis.plots'.
"""

from __future__ import annotations

import math
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
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

    def __post_init__(self) -> None:
        if self.mode not in RULE_MODES:
            raise ValueError(f"mode must be one of {RULE_MODES}, got {self.mode!r}")

    def describe(self) -> str:
        if self.mode == "threshold":
            return f"not diverged and {self.metric} >= {self.threshold:g}"
        return f"not diverged and {self.metric} >= (best {self.metric} of the variant) - {self.epsilon:g}"


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


def variant_best(trials: Sequence[dict], metric: str = "val_acc") -> float | None:
    """Highest finite metric over a variant's non-diverged COMPLETE trials (relative mode)."""
    vals = [v for r in trials if (v := _eligible_value(r, metric)) is not None]
    return max(vals) if vals else None


def is_stable(rec: dict, rule: StabilityRule, variant_best: float | None = None) -> bool:
    """Whether one trial is stable under ``rule``.

    In relative mode ``variant_best`` (see ``variant_best()``) is required; None there means
    the variant has no finite result, so nothing is stable.
    """
    value = _eligible_value(rec, rule.metric)
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
    best = variant_best(complete, rule.metric)
    by_lr: dict[float, list[dict]] = {}
    for r in complete:
        lr = _lr_key(r)
        if lr is not None:
            by_lr.setdefault(lr, []).append(r)
    lrs = sorted(by_lr)

    points = []
    vals: list[np.ndarray] = []
    for lr in lrs:
        group = by_lr[lr]
        ev = [_eligible_value(r, rule.metric) for r in group]
        finite = [v for v in ev if v is not None]
        n_st = sum(is_stable(r, rule, best) for r in group)
        vals.append(np.array([[np.nan if v is None else v for v in ev]], dtype=float))
        points.append(
            {
                "lr": lr,
                "n_seeds": len(group),
                "n_stable": n_st,
                "n_diverged": sum(_as_bool(r.get("diverged", False)) for r in group),
                "frac_stable": n_st / len(group),
                "mean_val_acc": float(np.mean(finite)) if finite else None,
                "diverged_any": any(_as_bool(r.get("diverged", False)) for r in group),
            }
        )

    log_lrs = np.log10(np.array(lrs, dtype=float)) if lrs else np.zeros(0)
    stable_lrs: list[bool] = []
    if lrs:
        stable_lrs = _stable_lr_mask(vals, rule, seed_quorum)[0].tolist()
    for p, s in zip(points, stable_lrs, strict=True):
        p["stable"] = bool(s)
    stable_idx = [i for i, s in enumerate(stable_lrs) if s]
    lo_i, hi_i = (stable_idx[0], stable_idx[-1]) if stable_idx else (None, None)
    decades = float(log_lrs[hi_i] - log_lrs[lo_i]) if stable_idx else 0.0
    run_len, run_lo, run_hi = _longest_run(stable_lrs)

    # Bootstrap only makes sense when at least one lr has more than one seed to resample.
    ci = None
    if n_boot > 0 and any(p["n_seeds"] > 1 for p in points):
        # per-variant stream from its label, so adding a variant leaves the others' CIs alone
        rng = np.random.default_rng([seed, zlib.crc32(label.encode())])
        boot_vals = []
        for v in vals:
            n = v.shape[1]
            boot_vals.append(v[0][rng.integers(0, n, size=(n_boot, n))])
        boot = _decades(_stable_lr_mask(boot_vals, rule, seed_quorum), log_lrs)
        lo, hi = np.percentile(boot, [2.5, 97.5])
        ci = [float(lo), float(hi)]

    means = [(p["mean_val_acc"], p["lr"]) for p in points if p["mean_val_acc"] is not None]
    # ties go to the lowest lr
    best_mean, best_lr = max(means, key=lambda m: (m[0], -m[1])) if means else (None, None)

    out: dict[str, Any] = dict(zip(variant_keys, key, strict=True))
    out.update(
        {
            "label": label,
            "n_trials": len(complete),
            "n_stable": sum(is_stable(r, rule, best) for r in complete),
            "n_diverged": sum(_as_bool(r.get("diverged", False)) for r in complete),
            "n_failed": sum(_state(r) == "FAIL" for r in recs),
            "n_other": sum(_state(r) not in ("COMPLETE", "FAIL") for r in recs),
            "n_lrs": len(lrs),
            "n_stable_lrs": len(stable_idx),
            "stable_lr_min": lrs[lo_i] if stable_idx else None,
            "stable_lr_max": lrs[hi_i] if stable_idx else None,
            "stable_decades": decades,
            "stable_decades_ci": ci,
            "longest_run": run_len,
            "longest_run_lr_min": lrs[run_lo] if run_len else None,
            "longest_run_lr_max": lrs[run_hi] if run_len else None,
            "longest_run_decades": (float(log_lrs[run_hi] - log_lrs[run_lo]) if run_len else 0.0),
            "best_lr": best_lr,
            "best_val_acc": best_mean,
            "variant_best": best,
            "points": points,
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
