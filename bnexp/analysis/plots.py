"""The report's figures (matplotlib, Agg): every function takes the analysis dicts and trial records and
writes one PNG. What each shows, and how to read it, is its docstring's first line (report.md's caption).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bnexp.analysis.stability import (
    StabilityRule,
    _as_bool,
    _as_float,
    _eligible_value,
    _lr_key,
    _sort_key,
    _state,
    variant_key,
)
from bnexp.files import savefig_atomic


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _facets(variants: list[dict]) -> list:
    depths = sorted({v.get("depth") for v in variants}, key=lambda d: _sort_key((d,), ("x",)))
    return depths if len(depths) > 1 else [None]


def plot_stability(
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
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)


def plot_heatmap(path: Path, study: str, variants: list[dict], rule: StabilityRule) -> None:
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
    savefig_atomic(fig, path, dpi=110)
    plt.close(fig)
