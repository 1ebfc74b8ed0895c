"""Stable learning-rate ranges from sweep trial tables (pure analysis: no torch, W&B, Optuna).

Input is a list of trial records (dicts), one per sweep trial, with at least
``number, state, bn, bias, depth, lr, seed, diverged`` and the metric judged (``val/acc`` by default), keyed
by bnexp.record's names (``TrialRecord.row()``).
A *variant* is the tuple of the ``variant_keys`` values (default ``("bn", "bias", "depth")``).

Conventions (the choices a reader needs to interpret the numbers):

* ``COMPLETE`` and ``PRUNED`` trials are results (``n_trials``; ``n_pruned`` of them pruned: stopped early
  by the sweep's pruner because they could not end stable, so never stable). ``FAIL`` trials are counted as
  ``n_failed`` (attempts; ``n_failed_retried`` of them a later attempt of the same lr and seed completed);
  any other state (RUNNING, ...) as ``n_other``. A diverged run is a
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
* ``width`` is not this module's: it is the edges' (bnexp.analysis.edges, attached by ``edges.add_widths``):
  per seed, log10 of the ratio of the midpoints of the brackets around its stable range; median over seeds.
  This module gives the *stable span*, what the trained lrs themselves show: ``stable_lr_min`` /
  ``stable_lr_max`` are the first and last lr of the run of consecutive stable lrs (on the variant's own
  sorted lr list) that holds the stable lr with the highest mean judged value, and ``stable_span`` =
  log10(max / min) of them, pooled over seeds by the quorum. An unstable lr between the lowest and the
  highest stable lr is a *hole*: ``holes`` lists them and ``n_holes`` counts them. ``span_lr_min`` /
  ``span_lr_max`` / ``span_with_holes`` is the span that ignores holes (lowest to highest stable lr), for
  what it is worth. With no stable lr the spans are 0.0 and the bounds None; with exactly one they are 0.0
  too (``n_stable_lrs`` tells the cases apart). A seed's stable span is its width less half a bracket at each
  end: it stops at the trained lrs.
* Where seeds trained different lrs (the edge search bisects each seed's own brackets), a seed's verdict at
  an lr it did not train is taken from its own nearest trained lrs when they agree, and left out of that
  lr's quorum when they do not (``_inferred``; ``seeds_inferred`` per point). A grid, every seed at every
  lr, has nothing to infer.
* ``best_lr`` / ``best_value``: the lr with the highest mean judged value over its non-diverged
  finite seeds, and that mean (ties: the lowest lr). Each of ``points`` gives an lr's ``values`` (the value
  judged, per seed in ``seeds``), ``frac_stable`` and ``stable`` (the rule's verdict on the lr).
* ``per_seed``: one entry per seed, its stable range from its own trials alone (relative mode:
  against its own best); their spread is the seed-to-seed variation. There is no bootstrap interval: with
  the 1-3 seeds a study runs, resampling them says nothing a reader cannot see in the seeds themselves.
* ``by_statistics``: the same spans judged by the population statistics (``population``:
  ``val/acc``, inference mode, what the default rule uses) and by the batch statistics (``batch``:
  ``val/acc_batchstats``), with the rule's other settings; the view the rule's ``statistics`` names is
  the top-level numbers. ``statistics_differ``: both recorded and their stable
  ranges differ. "Stable" itself is always the rule's verdict (``is_stable``).

The report files (tables, plots, report.md) are bnexp.analysis.report's and bnexp.analysis.figures'.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from bnexp import names, record
from bnexp.analysis.rule import RULE_MODES, STATISTICS, StabilityRule  # noqa: F401  (re-exported: the rule is judged here)
from bnexp.record import as_bool

DEFAULT_VARIANT_KEYS: tuple[str, ...] = names.BASE_AXES
# Canonical order for the categorical axes so tables read off -> pre -> post, not alphabetically.
CATEGORY_ORDER: dict[str, tuple[str, ...]] = {
    "bn": ("off", "pre", "post"),
    "bias": ("auto", "true", "false"),
}
_LR_SIG_DIGITS = 10


# ---------------------------------------------------------------------------- small helpers


def as_float(v: Any) -> float | None:
    """A finite float, or None (None, NaN, inf, bools and junk strings are 'no value')."""
    if v is None or isinstance(v, bool):
        return None
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def state_of(rec: dict) -> str:
    return str(rec.get("state", "COMPLETE")).upper()


# the states that are results: a PRUNED trial was stopped early because it could not end stable (the sweep's
# pruner, bnexp.sweep.pruning): an unstable result at its lr, never stable (`_eligible_value`)
RESULT_STATES = ("COMPLETE", "PRUNED")


def n_failed_retried(recs: list[dict]) -> int:
    """How many of one variant's FAIL attempts (a stop, kill -9, OOM) a later attempt of the same point (lr,
    seed) completed: retried, so no result is missing for them."""
    done = {(lr_key(r), r.get("seed")) for r in recs if state_of(r) in RESULT_STATES}
    return sum(state_of(r) == "FAIL" and (lr_key(r), r.get("seed")) in done for r in recs)


def lr_key(rec: dict) -> float | None:
    lr = as_float(rec.get("lr"))
    if lr is None or lr <= 0:
        return None  # no place on a log axis
    return float(f"{lr:.{_LR_SIG_DIGITS}g}")


def _eligible_value(rec: dict, metric: str) -> float | None:
    """The metric if the trial can be stable at all (complete, not diverged, finite)."""
    if state_of(rec) != "COMPLETE" or as_bool(rec.get("diverged", False)):
        return None
    return as_float(rec.get(metric))


def history(rec: dict, metric: str) -> list[tuple[int | None, float | None]]:
    """(step, value) of ``metric`` at each validation in the trial's ``val_history`` (None: not finite)."""
    key = metric
    out = []
    for h in rec.get("val_history") or []:
        if isinstance(h, dict):
            step = as_float(h.get("step"))
            out.append((None if step is None else int(step), as_float(h.get(key))))
    return out


def judged_value(rec: dict, rule: StabilityRule) -> float | None:
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


def variant_sort_key(key: tuple, variant_keys: Sequence[str]) -> tuple:
    # Mixed / None values must not crash sorted(): rank by kind, then by value.
    out = []
    for name, value in zip(variant_keys, key, strict=True):
        order = CATEGORY_ORDER.get(name, ())
        if value in order:
            out.append((0, order.index(value), ""))
        elif value is None:
            out.append((3, 0, ""))
        elif isinstance(value, (int, float)) and not isinstance(value, bool):
            out.append((1, float(value), ""))
        else:
            out.append((2, 0, str(value)))
    return tuple(out)


def variant_best(trials: Sequence[dict], rule: StabilityRule | str = record.VAL_ACC) -> float | None:
    """Highest finite judged metric over a variant's non-diverged COMPLETE trials (relative mode); a metric
    name means that metric's final value."""
    rule = StabilityRule().with_metric(rule) if isinstance(rule, str) else rule
    vals = [v for r in trials if (v := judged_value(r, rule)) is not None]
    return max(vals) if vals else None


def is_stable(rec: dict, rule: StabilityRule, variant_best: float | None = None) -> bool:
    """Whether one trial is stable under ``rule``.

    In relative mode ``variant_best`` (see ``variant_best()``) is required; None there means
    the variant has no finite result, so nothing is stable.
    """
    value = judged_value(rec, rule)
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
        **{m: metrics.get(m) for m in STATISTICS.values()},
        "val_history": metrics.get("val_history") or [],
    }


def verdict_summary(metrics: dict, rule: StabilityRule) -> dict[str, Any]:
    """What a run's W&B summary says of it under ``rule``: ``stable`` (left out in relative mode, where one
    trial cannot be judged alone: the sweep-summary run has the verdict), the rule in words and as settings."""
    out: dict[str, Any] = {"stable_rule": rule.describe(), "rule": rule.settings()}
    verdict = judge(record_of(metrics), rule)
    if verdict is not None:
        out["stable"] = bool(verdict)
    return out


# ------------------------------------------------------------------------------ analysis


def _stable_lr_mask(vals: list[np.ndarray], rule: StabilityRule, seed_quorum: float) -> np.ndarray:
    """Which lrs are stable, for a batch of tables.

    ``vals[i]`` has shape (B, n_i): metric of each trial at lr i, NaN where the trial cannot be
    stable (diverged / non-finite). Returns a (B, L) bool array. The same code serves the point
    estimate (B = 1); any batch of resampled tables would be judged by the same code.
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


def _run_around(mask: np.ndarray, means: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(first, last) index of the unbroken run of stable lrs around each row's best stable lr (the stable lr
    with the highest mean judged value; ties: the lowest lr); (-1, -1) where no lr is stable.

    ``mask`` and ``means`` are (B, L). Python over rows: B is small and L is a few dozen lrs at most.
    """
    n_rows, n_lrs = mask.shape
    lo, hi = np.full(n_rows, -1), np.full(n_rows, -1)
    score = np.where(mask, np.nan_to_num(means, nan=-np.inf), np.nan)
    for b in range(n_rows):
        if not mask[b].any():
            continue
        row = np.where(mask[b], score[b], -np.inf)
        a = int(np.flatnonzero(row == row.max())[0])  # best stable lr, lowest on a tie
        i, j = a, a
        while i > 0 and mask[b, i - 1]:
            i -= 1
        while j < n_lrs - 1 and mask[b, j + 1]:
            j += 1
        lo[b], hi[b] = i, j
    return lo, hi


def _inferred(complete: list[dict], lrs: list[float], rule: StabilityRule, best: float | None) -> dict:
    """Each seed's verdict at the lrs it did not train, where its own trials decide it: {lr: [(seed, value,
    stable)]}. A seed missing an lr is judged there only when its nearest trained lrs below and above agree
    (both stable or both not); the value is the lower of theirs (NaN where either could not be stable), so
    the rule, the quorum and the bootstrap judge it as they judge a trained one. Between a stable and an
    unstable lr of its own the seed is undecided and left out of that lr's quorum.

    Why: the edge search trains each seed at its own bisection points, so an lr near an edge is trained by
    one seed. Counting only the seeds that trained there made that one seed a quorum (1 of 1), and drew
    the pooled range out to a single seed's edge; a grid, where every seed trains every lr, gets nothing
    inferred. The same unbroken-range assumption the search bisects under fills the gaps."""
    by_seed: dict[Any, list[tuple[float, dict]]] = {}
    for r in complete:
        lr = lr_key(r)
        if lr is not None:
            by_seed.setdefault(r.get("seed"), []).append((lr, r))
    out: dict[float, list[tuple[Any, float, bool]]] = {}
    if len(by_seed) < 2:
        return out
    for seed, own in by_seed.items():
        own.sort(key=lambda t: t[0])
        trained = [lr for lr, _ in own]
        for lr in lrs:
            i = int(np.searchsorted(trained, lr))
            if (i < len(trained) and trained[i] == lr) or i == 0 or i == len(trained):
                continue  # trained here, or outside what this seed searched
            below, above = own[i - 1][1], own[i][1]
            st = is_stable(below, rule, best)
            if st != is_stable(above, rule, best):
                continue  # inside this seed's own bracket: undecided
            vs = [judged_value(below, rule), judged_value(above, rule)]
            value = math.nan if None in vs else min(vs)  # type: ignore[type-var]
            out.setdefault(lr, []).append((seed, value, st))
    return out


def stable_range(complete: list[dict], rule: StabilityRule) -> dict[str, Any]:
    """Stable lrs and the stable span of one variant's COMPLETE trials under ``rule`` (module docstring)."""
    best = variant_best(complete, rule)
    by_lr: dict[float, list[dict]] = {}
    for r in complete:
        lr = lr_key(r)
        if lr is not None:
            by_lr.setdefault(lr, []).append(r)
    lrs = sorted(by_lr)
    inferred = _inferred(complete, lrs, rule, best)

    points = []
    vals: list[np.ndarray] = []  # per lr: (1, n_seeds) judged values, NaN where a trial cannot be stable
    for lr in lrs:
        group = by_lr[lr]
        judged = [judged_value(r, rule) for r in group]
        n_st = sum(is_stable(r, rule, best) for r in group)
        n_div = sum(as_bool(r.get("diverged", False)) for r in group)
        extra = inferred.get(lr, [])
        vals.append(np.array([[np.nan if v is None else v for v in judged] + [v for _, v, _ in extra]], dtype=float))
        finite = [v for v in judged if v is not None]
        points.append(
            {
                "lr": lr,
                "n_seeds": len(group),
                "n_stable": n_st,
                "n_diverged": n_div,
                # over the seeds trained here and those their own neighbours decide (_inferred)
                "frac_stable": (n_st + sum(st for *_, st in extra)) / (len(group) + len(extra)),
                "seeds": [r.get("seed") for r in group],
                "seeds_inferred": [s for s, *_ in extra],
                "values": judged,  # the value the rule judged, per seed (None: diverged / not finite)
                "mean": float(np.mean(finite)) if finite else None,
                "diverged_any": n_div > 0,
            }
        )

    log_lrs = np.log10(np.array(lrs, dtype=float)) if lrs else np.zeros(0)
    mask = _stable_lr_mask(vals, rule, rule.seed_quorum) if lrs else np.zeros((1, 0), dtype=bool)
    means = np.array([[p["mean"] if p["mean"] is not None else np.nan for p in points]], dtype=float)
    stable_lrs: list[bool] = mask[0].tolist()
    for p, s in zip(points, stable_lrs, strict=True):
        p["stable"] = bool(s)
    idx = [i for i, s in enumerate(stable_lrs) if s]
    lo, hi = (int(x[0]) for x in _run_around(mask, means)) if lrs else (-1, -1)
    holes = [lrs[i] for i in range(idx[0], idx[-1] + 1) if not stable_lrs[i]] if idx else []

    return {
        "n_stable": sum(is_stable(r, rule, best) for r in complete),
        "n_lrs": len(lrs),
        "n_stable_lrs": len(idx),
        "stable_lr_min": lrs[lo] if lo >= 0 else None,
        "stable_lr_max": lrs[hi] if lo >= 0 else None,
        "stable_span": float(log_lrs[hi] - log_lrs[lo]) if lo >= 0 else 0.0,
        "holes": holes,
        "n_holes": len(holes),
        "span_lr_min": lrs[idx[0]] if idx else None,
        "span_lr_max": lrs[idx[-1]] if idx else None,
        "span_with_holes": float(log_lrs[idx[-1]] - log_lrs[idx[0]]) if idx else 0.0,
        "variant_best": best,
        "points": points,
    }


def _per_seed(complete: list[dict], rule: StabilityRule) -> list[dict]:
    """Each seed's stable range from its own trials alone (relative mode: against its own best)."""
    by_seed: dict[Any, list[dict]] = {}
    for r in complete:
        by_seed.setdefault(r.get("seed"), []).append(r)
    out = []
    for s in sorted(by_seed, key=lambda s: variant_sort_key((s,), ("seed",))):
        w = stable_range(by_seed[s], rule)
        out.append({"seed": s, "n_trials": len(by_seed[s])} | {k: w[k] for k in _SEED_KEYS})
    return out


_SEED_KEYS = ("n_stable_lrs", "stable_lr_min", "stable_lr_max", "stable_span", "holes", "n_holes", "span_with_holes")
_VIEW_KEYS = ("n_stable", "variant_best", *_SEED_KEYS)


def _views(complete: list[dict], rule: StabilityRule, main: dict, per_seed: list[dict]) -> dict[str, dict]:
    """The same rule judged by each statistics (population, batch): stable lrs and spans, per seed too."""
    views: dict[str, dict] = {}
    for name, metric in STATISTICS.items():
        if metric == rule.metric:
            w, ps = main, per_seed
        else:
            r_m = rule.with_metric(metric)
            w = stable_range(complete, r_m)
            ps = _per_seed(complete, r_m)
        views[name] = {
            "metric": metric,
            "n_finite": sum(_eligible_value(r, metric) is not None for r in complete),
            **{k: w[k] for k in _VIEW_KEYS},
            "stable_lrs": [p["lr"] for p in w["points"] if p["stable"]],
            "per_seed": ps,
        }
    return views


def _analyse_variant(key: tuple, recs: list[dict], rule: StabilityRule, variant_keys: Sequence[str]) -> dict:
    label = variant_label(key, variant_keys)
    complete = [r for r in recs if state_of(r) in RESULT_STATES]  # pruned: unstable results, counted
    main = stable_range(complete, rule)
    per_seed = _per_seed(complete, rule)
    views = _views(complete, rule, main, per_seed)
    pop, bat = views["population"], views["batch"]
    differ = bool(pop["n_finite"] and bat["n_finite"]) and (pop["stable_lrs"] != bat["stable_lrs"])

    means = [(p["mean"], p["lr"]) for p in main["points"] if p["mean"] is not None]
    # ties go to the lowest lr
    best_mean, best_lr = max(means, key=lambda m: (m[0], -m[1])) if means else (None, None)

    out: dict[str, Any] = dict(zip(variant_keys, key, strict=True))
    out.update(
        {
            "label": label,
            "metric": rule.metric,
            "n_trials": len(complete),
            "n_stable": main["n_stable"],
            "n_diverged": sum(as_bool(r.get("diverged", False)) for r in complete),
            "n_failed": sum(state_of(r) == "FAIL" for r in recs),
            "n_failed_retried": n_failed_retried(recs),
            "n_pruned": sum(state_of(r) == "PRUNED" for r in recs),
            "n_other": sum(state_of(r) not in ("COMPLETE", "FAIL", "PRUNED") for r in recs),
        }
    )
    out.update({k: v for k, v in main.items() if k not in ("n_stable", "variant_best", "points")})
    out.update(
        {
            "best_lr": best_lr,
            "best_value": best_mean,
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
) -> list[dict]:
    """One summary dict per variant, sorted by variant key (see module docstring); its ``width`` comes from
    bnexp.analysis.edges.add_widths."""
    variant_keys = tuple(variant_keys)
    groups: dict[tuple, list[dict]] = {}
    for rec in trials:
        groups.setdefault(variant_key(rec, variant_keys), []).append(rec)
    keys = sorted(groups, key=lambda k: variant_sort_key(k, variant_keys))
    return [_analyse_variant(k, groups[k], rule, variant_keys) for k in keys]
