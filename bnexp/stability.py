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

Rebuild a report from a saved table: ``python -m bnexp.stability trials.csv --out DIR``.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

DEFAULT_VARIANT_KEYS: tuple[str, ...] = ("bn", "bias", "depth")
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
    """Short name like ``pre-auto-d19`` (depth gets a ``d`` prefix, other axes their value)."""
    parts = []
    for name, value in zip(variant_keys, key, strict=True):
        parts.append(f"d{value}" if name == "depth" else str(value))
    return "-".join(parts)


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


# ------------------------------------------------------------------------------ csv i/o

# Known columns get a fixed type on reading back, so e.g. bias "true" stays a string.
_COLUMN_TYPES: dict[str, type] = {
    "number": int,
    "state": str,
    "bn": str,
    "bias": str,
    "depth": int,
    "lr": float,
    "seed": int,
    "diverged": bool,
    "val_acc": float,
    "val_acc_best": float,
    "val_acc_batchstats": float,
    "test_acc": float,
    "step": int,
    "wall_s": float,
    "overrides": str,
    "stable": bool,
}
_INT_RE = re.compile(r"^[+-]?\d+$")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)  # exact round trip; nan/inf become "nan"/"inf"
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v)
    return str(v)


def _parse_cell(text: str, typ: type | None) -> Any:
    if typ is str:
        return text  # an empty string stays a string for known text columns
    if text == "":
        return None
    if typ is bool or (typ is None and text in ("True", "False")):
        return _as_bool(text)
    if typ is int:
        if _INT_RE.match(text):
            return int(text)
        f = float(text)  # "3.0" from a float-typed writer; nan stays a float
        return int(f) if f.is_integer() else f
    if typ is float:
        return float(text)
    # unknown column: int, then float, else the text
    if _INT_RE.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def write_trials_csv(path: str | Path, trials: Sequence[dict]) -> list[str]:
    """One row per trial; columns = the union of keys in first-seen order. Returns columns."""
    columns: list[str] = []
    for rec in trials:
        for k in rec:
            if k not in columns:
                columns.append(k)
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(columns)
        for rec in trials:
            w.writerow([_cell(rec.get(k)) for k in columns])
    return columns


def load_trials_csv(path: str | Path) -> list[dict]:
    """Parse a ``trials.csv`` back with types. Empty cells become None (also for keys a trial
    never had), except in known text columns, where they stay ``""``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _parse_cell(v, _COLUMN_TYPES.get(k)) for k, v in row.items()} for row in rows]


# ------------------------------------------------------------------------------ plots


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _facets(variants: list[dict]) -> list:
    depths = sorted({v.get("depth") for v in variants}, key=lambda d: _sort_key((d,), ("x",)))
    return depths if len(depths) > 1 else [None]


def _plot_stability(
    path: Path,
    study: str,
    variants: list[dict],
    trials: list[dict],
    rule: StabilityRule,
    variant_keys: Sequence[str],
) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.legend_handler import HandlerTuple
    from matplotlib.lines import Line2D

    facets = _facets(variants)
    # Colour by the variant minus depth, so one placement has one colour in every panel.
    colour_keys = sorted(
        {tuple((k, v[k]) for k in variant_keys if k != "depth") for v in variants},
        key=lambda ck: _sort_key(tuple(x[1] for x in ck), [x[0] for x in ck]),
    )
    palette = dict(zip(colour_keys, _colours(len(colour_keys)), strict=True))
    ncol = min(len(facets), 3)
    nrow = math.ceil(len(facets) / ncol)
    fig, axes = plt.subplots(nrow, ncol, figsize=(6.5 * ncol, 4.8 * nrow), sharey=True, squeeze=False)
    by_variant: dict[tuple, list[dict]] = {}
    for r in trials:
        if _state(r) == "COMPLETE":
            by_variant.setdefault(variant_key(r, variant_keys), []).append(r)

    all_vals = [v for r in trials if (v := _as_float(r.get(rule.metric))) is not None]
    unit_range = all(0.0 <= v <= 1.0 for v in all_vals)
    for ax, facet in zip(axes.flat, facets, strict=False):  # spare axes are hidden below
        members = [v for v in variants if facet is None or v.get("depth") == facet]
        for vi, v in enumerate(members):
            ck = tuple((k, v[k]) for k in variant_keys if k != "depth")
            colour = palette[ck]
            pts = v["points"]
            xs = [p["lr"] for p in pts]
            ys = [np.nan if p["mean_val_acc"] is None else p["mean_val_acc"] for p in pts]
            ci = v.get("stable_decades_ci")
            ci_txt = f" [{ci[0]:.1f}, {ci[1]:.1f}]" if ci else ""
            legend = f"{v['label']}: {v['stable_decades']:.1f} dec{ci_txt}, run {v['longest_run_decades']:.1f}"
            # NaN breaks the line, so an all-diverged lr is a gap, not a bridge.
            ax.plot(xs, ys, "-o", color=colour, ms=4, lw=1.5, label=legend)
            recs = by_variant.get(variant_key(v, variant_keys), [])
            if any(p["n_seeds"] > 1 for p in pts):
                sx = [_lr_key(r) for r in recs if _eligible_value(r, rule.metric) is not None]
                sy = [_eligible_value(r, rule.metric) for r in recs if _eligible_value(r, rule.metric) is not None]
                ax.scatter(sx, sy, s=8, color=colour, alpha=0.35, lw=0)
            div = [r for r in recs if _as_bool(r.get("diverged", False)) and _lr_key(r)]
            if div:
                # nudge each variant sideways (+-0.1 decade) so stacked x's at y=0 stay apart
                nudge = 10 ** (0.2 * (vi / max(len(members) - 1, 1) - 0.5)) if len(members) > 1 else 1.0
                dx = [_lr_key(r) * nudge for r in div]
                dy = [_as_float(r.get(rule.metric)) or 0.0 for r in div]
                # red halo under a variant-coloured x: "diverged" at a glance, whose at a look
                ax.plot(dx, dy, "x", color="tab:red", alpha=0.45, ms=10, mew=3.5, ls="none")
                ax.plot(dx, dy, "x", color=colour, ms=7, mew=1.6, ls="none")
            if v["stable_lr_min"] is not None:
                lo, hi = v["stable_lr_min"], v["stable_lr_max"]
                if lo == hi:  # one stable lr: widen so the band is visible on a log axis
                    lo, hi = lo / 10**0.05, hi * 10**0.05
                ax.axvspan(lo, hi, color=colour, alpha=max(0.05, 0.3 / len(members)), lw=0)
        if rule.mode == "threshold":
            ax.axhline(rule.threshold, ls="--", color="0.3", lw=1)
        ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel(f"final {rule.metric}")
        ax.grid(True, which="major", alpha=0.3)
        if unit_range:
            ax.set_ylim(-0.05, 1.05)
        if facet is not None:
            ax.set_title(f"depth {facet}")
        if not members or not any(v["points"] for v in members):
            ax.text(0.5, 0.5, "no completed trials", ha="center", transform=ax.transAxes)
            ax.set_xlim(1e-4, 1.0)  # a log axis with no data cannot autoscale
        handles, labels = ax.get_legend_handles_labels()
        proxy = (
            Line2D([], [], marker="x", color="tab:red", alpha=0.45, ms=10, mew=3.5, ls="none"),
            Line2D([], [], marker="x", color="0.3", ms=7, mew=1.6, ls="none"),
        )
        handles.append(proxy)
        labels.append("diverged trial")
        ax.legend(
            handles,
            labels,
            fontsize=7,
            loc="best",
            handler_map={tuple: HandlerTuple(ndivide=1)},
            title="stable width (decades)",
            title_fontsize=7,
        )
    for ax in list(axes.flat)[len(facets) :]:
        ax.set_visible(False)
    fig.suptitle(
        f"{study}: final {rule.metric} vs learning rate\nstable = {rule.describe()}; shaded = stable lr range",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _plot_heatmap(path: Path, study: str, variants: list[dict], rule: StabilityRule) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Rectangle

    lrs = sorted({p["lr"] for v in variants for p in v["points"]})
    col = {lr: j for j, lr in enumerate(lrs)}
    grid = np.full((len(variants), max(len(lrs), 1)), np.nan)
    for i, v in enumerate(variants):
        for p in v["points"]:
            if p["mean_val_acc"] is not None:
                grid[i, col[p["lr"]]] = p["mean_val_acc"]
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * len(lrs) + 3), max(3.0, 0.35 * len(variants) + 1.8)))
    # no finite result (all diverged or not run): light grey
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    finite = grid[np.isfinite(grid)]
    unit = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
    im = ax.imshow(
        np.ma.masked_invalid(grid),
        cmap=cmap,
        aspect="auto",
        vmin=0 if unit else None,
        vmax=1 if unit else None,
    )
    for i, v in enumerate(variants):
        for p in v["points"]:
            j = col[p["lr"]]
            if p["diverged_any"]:
                txt = "x" if p["n_diverged"] == p["n_seeds"] else f"x{p['n_diverged']}"
                ax.text(j, i, txt, ha="center", va="center", color="tab:red", fontsize=9, fontweight="bold")
            if p.get("stable"):
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="white", lw=1.5))
    ax.set_xticks(range(len(lrs)), [f"{lr:.0e}" for lr in lrs], rotation=60, fontsize=7)
    ax.set_yticks(range(len(variants)), [v["label"] for v in variants], fontsize=7)
    ax.set_xlabel("learning rate")
    fig.colorbar(im, ax=ax, label=f"mean final {rule.metric}")
    ax.set_title(
        f"{study}: mean {rule.metric} per variant and lr\n"
        "x = diverged (xN: N seeds), white box = stable lr, grey = no finite result",
        fontsize=9,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ------------------------------------------------------------------------------ report


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null (json.dump would emit invalid 'NaN')."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _markdown(summary: dict, rule: StabilityRule, commands: Sequence[str], files: list[str]) -> str:
    lines = [
        f"# Stability report: {summary['study']}",
        "",
        f"**Rule.** A trial is stable when it is {rule.describe()}. An lr is stable when at"
        f" least {summary['seed_quorum']:g} of its seeds are. Widths are log10(max/min) of the"
        " stable lrs (they span gaps); *longest run* is the longest gap-free run of stable"
        " grid points. Diverged trials are COMPLETE results that are never stable; FAIL trials"
        " are counted apart.",
        "",
        f"Trials: {summary['n_trials']} complete, {summary['n_failed']} failed ({summary['n_records']} records).",
        "",
        "## Variants",
        "",
        "| variant | trials | stable | diverged | failed | stable lr range | decades"
        " | 95% CI | longest run (points / decades) | best lr | best acc |",
        "|---|---:|---:|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for v in summary["variants"]:
        rng = f"{v['stable_lr_min']:.3g} – {v['stable_lr_max']:.3g}" if v["stable_lr_min"] is not None else "none"
        ci = v["stable_decades_ci"]
        ci_txt = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "–"
        lines.append(
            f"| {v['label']} | {v['n_trials']} | {v['n_stable']} | {v['n_diverged']}"
            f" | {v['n_failed']} | {rng} | {v['stable_decades']:.2f} | {ci_txt}"
            f" | {v['longest_run']} / {v['longest_run_decades']:.2f}"
            f" | {_fmt(v['best_lr'], '.3g')} | {_fmt(v['best_val_acc'], '.4f')} |"
        )
    lines += ["", "## BN vs no BN", ""]
    if summary["comparison"]:
        lines += [
            "| depth | bias | bn | decades | off decades | Δ decades | Δ longest run |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for c in summary["comparison"]:
            lines.append(
                f"| {c.get('depth', '–')} | {c.get('bias', '–')} | {c['bn']}"
                f" | {c['stable_decades']:.2f} | {_fmt(c['off_decades'])}"
                f" | {_fmt(c['delta_decades'], '+.2f')}"
                f" | {_fmt(c['delta_longest_run_decades'], '+.2f')} |"
            )
    else:
        lines.append("No BN / no-BN pairs in this table.")
    lines += ["", "![stability](stability.png)", ""]
    if "heatmap.png" in files:
        lines += ["![heatmap](heatmap.png)", ""]
    lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    study: str,
    trials: list[dict],
    rule: StabilityRule,
    commands: list[str],
    variant_keys: Sequence[str] = DEFAULT_VARIANT_KEYS,
    *,
    seed_quorum: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Write summary.json, trials.csv, stability.png, heatmap.png (several depths), report.md.

    Returns the summary dict (as written to summary.json).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant_keys = tuple(variant_keys)
    variants = analyse(trials, rule, variant_keys, n_boot=n_boot, seed=seed, seed_quorum=seed_quorum)
    comparison = compare(variants, variant_keys)

    # Per-trial stable column; relative mode needs each trial's variant best.
    bests = {variant_key(v, variant_keys): v["variant_best"] for v in variants}
    rows = [{**r, "stable": is_stable(r, rule, bests.get(variant_key(r, variant_keys)))} for r in trials]
    write_trials_csv(out / "trials.csv", rows)

    files = ["summary.json", "trials.csv", "stability.png", "report.md"]
    _plot_stability(out / "stability.png", study, variants, trials, rule, variant_keys)
    if len({v.get("depth") for v in variants}) > 1:
        _plot_heatmap(out / "heatmap.png", study, variants, rule)
        files.insert(3, "heatmap.png")

    summary = _json_safe(
        {
            "study": study,
            "threshold": rule.threshold,
            "rule": asdict(rule),
            "seed_quorum": seed_quorum,
            "variant_keys": list(variant_keys),
            "n_boot": n_boot,
            "n_records": len(trials),
            "n_trials": sum(_state(r) == "COMPLETE" for r in trials),
            "n_failed": sum(_state(r) == "FAIL" for r in trials),
            "variants": variants,
            "comparison": comparison,
            "files": files,
        }
    )
    with open(out / "summary.json", "w") as f:
        json.dump(summary, f, indent=2, allow_nan=False)
    (out / "report.md").write_text(_markdown(summary, rule, commands, files))
    return summary


def main(argv: Sequence[str] | None = None) -> None:
    """Rebuild a report from a saved trials.csv."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("trials_csv")
    p.add_argument("--out", required=True)
    p.add_argument("--study", default="study")
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--mode", choices=RULE_MODES, default="threshold")
    p.add_argument("--epsilon", type=float, default=0.02)
    p.add_argument("--metric", default="val_acc")
    p.add_argument("--variant-keys", default=",".join(DEFAULT_VARIANT_KEYS))
    p.add_argument("--seed-quorum", type=float, default=0.5)
    p.add_argument("--n-boot", type=int, default=1000)
    a = p.parse_args(argv)
    trials = load_trials_csv(a.trials_csv)
    for t in trials:
        t.pop("stable", None)  # recomputed under the (possibly new) rule
    rule = StabilityRule(a.threshold, a.mode, a.epsilon, a.metric)
    cmd = (
        f"python -m bnexp.stability {a.trials_csv} --out {a.out} --study {a.study}"
        f" --threshold {a.threshold} --mode {a.mode} --epsilon {a.epsilon}"
        f" --metric {a.metric} --variant-keys {a.variant_keys}"
        f" --seed-quorum {a.seed_quorum} --n-boot {a.n_boot}"
    )
    write_report(
        a.out, a.study, trials, rule, [cmd], a.variant_keys.split(","), seed_quorum=a.seed_quorum, n_boot=a.n_boot
    )


if __name__ == "__main__":
    main()
