"""stability.png: the value the rule judged against learning rate per variant, the lrs it judged stable as one
bar row per variant underneath.

Each trial is a marker (filled: passes the rule, hollow: fails it, x: diverged) in the variant's colour and
shape, and the variant's line joins the median over seeds at the lrs every seed trained: an edge search
trains different bisection lrs per seed, and a line through one seed's points there zigzags between seeds.
Variants that lie on top of each other (two no-BN variants at chance) keep apart by shape and a small
sideways nudge in lr; the legend sits outside every axes.
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.analysis.figures.common import (
    THRESHOLD_STYLE,
    FigureData,
    colour_key,
    facets,
    plt_module,
    save_figure,
    seeds_of,
)
from bnexp.analysis.stability import as_float, is_stable, judged_value, lr_key
from bnexp.record import as_bool


def stable_runs(grid: Sequence[float], stable: set[float]) -> list[tuple[float, float]]:
    """The stable lrs of a grid as shaded spans: each maximal run of neighbouring stable grid lrs from half a
    grid step below its first lr to half a step above its last (on a log axis), so an unstable lr between two
    stable ones is never shaded and one stable lr is one grid cell wide."""
    lrs = sorted(set(grid))
    if not lrs:
        return []
    logs = np.log10(lrs)
    half = [np.diff(logs)[0] / 2 if len(lrs) > 1 else 0.05] * len(lrs)
    edges_lo = [logs[0] - half[0]] + [(a + b) / 2 for a, b in zip(logs[:-1], logs[1:], strict=True)]
    edges_hi = edges_lo[1:] + [logs[-1] + (half[-1] if len(lrs) == 1 else (logs[-1] - logs[-2]) / 2)]
    runs, start = [], None
    for i, lr in enumerate(lrs):
        if lr in stable and start is None:
            start = i
        if start is not None and (lr not in stable or i == len(lrs) - 1):
            last = i if lr in stable else i - 1
            runs.append((10 ** edges_lo[start], 10 ** edges_hi[last]))
            start = None
    return runs


def stable_strip(ax: Any, members: list[dict], colours: list) -> None:
    """One row per variant under the main panel: its stable lrs (each point's `stable` flag under the rule)
    as solid spans in the variant's colour, rows apart so ranges never overlap or blend. Runs are taken on
    the variant's own lrs, as its width is: an lr another variant trained (an edge search's bisection points
    differ per variant) is no gap in this one's bar."""
    for i, (v, c) in enumerate(zip(members, colours, strict=True)):
        stable = {p["lr"] for p in v["points"] if p.get("stable")}
        for lo, hi in stable_runs([p["lr"] for p in v["points"]], stable):
            ax.axvspan(lo, hi, ymin=1 - (i + 0.85) / len(members), ymax=1 - (i + 0.15) / len(members), color=c, lw=0)
    ticks = [f"{v['label']} (width {v['width']:.2f} dec)" if v.get("width") is not None else v["label"]
             for v in members]  # fmt: skip
    ax.set_yticks([1 - (i + 0.5) / max(len(members), 1) for i in range(len(members))], ticks, fontsize=7)
    for tick, c in zip(ax.get_yticklabels(), colours, strict=True):
        tick.set_color(c)
    ax.set_ylim(0, 1)
    ax.set_xscale("log")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.set_xlabel("learning rate (bars: the lrs the rule judged stable)")


def median_line(recs: list[dict], values: dict[int, float | None]) -> tuple[list[float], list[float]]:
    """(lrs, median over seeds) at the lrs every seed of `recs` trained; NaN where a seed's value is missing
    (diverged): a gap in the line, not a bridge. `values`: id(record) -> its judged value."""
    seeds = seeds_of(recs)
    by_lr: dict[float, dict] = {}
    for r in recs:
        if (lr := lr_key(r)) is not None:
            by_lr.setdefault(lr, {})[r.get("seed")] = values[id(r)]
    xs, ys = [], []
    for lr in sorted(by_lr):
        got = by_lr[lr]
        if len(got) < len(seeds):
            continue  # a bisection lr of some seeds only
        vals = list(got.values())
        xs.append(lr)
        ys.append(np.nan if any(v is None for v in vals) else statistics.median(vals))
    return xs, ys


def draw_judged(ax: Any, d: FigureData, v: dict, nudge: float) -> None:
    """One variant on the stability axes: every trial's judged value as a marker of the variant's shape,
    filled where it passes the rule, hollow where it fails, x where it diverged; the median line over seeds.
    `nudge` multiplies every lr so variants on top of each other stay apart."""
    rule, recs, colour, marker = d.rule, d.recs(v), d.colour(v), d.marker(v)
    values = {id(r): judged_value(r, rule) for r in recs}
    xs, ys = median_line(recs, values)
    ax.plot([x * nudge for x in xs], ys, "-", color=colour, lw=1.5, label=v["label"], marker=marker, ms=0)
    ok_x, ok_y, bad_x, bad_y = [], [], [], []
    for r in recs:
        lr, y = lr_key(r), values[id(r)]
        if lr is None or y is None:
            continue
        stable = is_stable(r, rule, v.get("variant_best"))
        (ok_x if stable else bad_x).append(lr * nudge)
        (ok_y if stable else bad_y).append(y)
    ax.plot(ok_x, ok_y, marker, color=colour, ms=4.5, ls="none")
    ax.plot(bad_x, bad_y, marker, mfc="white", mec=colour, ms=4.5, mew=1.2, ls="none")
    div = [r for r in recs if as_bool(r.get("diverged", False)) and lr_key(r)]
    if div:
        dx = [lr_key(r) * nudge for r in div]
        dy = [as_float(r.get(rule.metric)) or 0.0 for r in div]
        ax.plot(dx, dy, "x", color="tab:red", alpha=0.45, ms=10, mew=3.5, ls="none")
        ax.plot(dx, dy, "x", color=colour, ms=7, mew=1.6, ls="none")


def _legend(fig: Any, d: FigureData, variants: list[dict], several: bool) -> None:
    """One legend for every panel, outside the axes (under them): the variants, then the marks."""
    from matplotlib.lines import Line2D

    looks: dict[tuple, list[dict]] = {}  # variants drawn alike, in different depth panels: one entry
    for v in variants:
        looks.setdefault((str(d.colour(v)), d.marker(v)), []).append(v)
    handles = []
    for (_, marker), same in looks.items():
        label = same[0]["label"]
        if len(same) > 1:
            label = "-".join(str(x) for _, x in colour_key(same[0], d.variant_keys)) + " (every depth panel)"
        handles.append(Line2D([], [], color=d.colour(same[0]), marker=marker, lw=1.5, ms=5, label=label))
    handles += [
        Line2D([], [], marker="o", color="0.3", ls="none", ms=4.5, label="a trial that passes the rule"),
        Line2D([], [], marker="o", mfc="white", mec="0.3", ls="none", ms=4.5, label="a trial that fails it"),
    ]
    if any(as_bool(r.get("diverged", False)) for v in variants for r in d.recs(v)):
        handles.append(Line2D([], [], marker="x", color="tab:red", mew=2, ls="none", label="diverged"))
    if several:
        handles.append(Line2D([], [], color="0.3", lw=1.5, label="median over seeds (lrs all seeds trained)"))
    if d.rule.mode == "threshold":
        handles.append(Line2D([], [], **{**THRESHOLD_STYLE, "zorder": 2}, label=f"threshold {d.rule.threshold:g}"))
    ncols = 2 if len(facets(variants)) == 1 else 4  # one panel: two columns fit under it
    fig.legend(handles=handles, loc="outside lower center", ncols=ncols, fontsize=7, frameon=False)


def plot_stability(path: Path, d: FigureData) -> None:
    """Write draw_stability's figure to `path` (its suffix: the format)."""
    save_figure(draw_stability(d), path)


def draw_stability(d: FigureData) -> Any:
    """The value the rule judged against learning rate per variant, the lrs the rule judged stable as one bar
    row per variant underneath, diverged trials as x."""
    plt = plt_module()
    study, variants, trials, rule = d.study, d.variants, d.trials, d.rule
    panels = facets(variants)
    ncol = min(len(panels), 3)
    nrow = -(-len(panels) // ncol)
    n_rows_strip = max(max(sum(1 for v in variants if f is None or v.get("depth") == f) for f in panels), 1)
    strip_h = 0.22 * n_rows_strip + 0.2
    n_legend = len(variants) + 5
    legend_rows = -(-n_legend // (2 if ncol == 1 else 4))
    width = max(6.5 * ncol, 7.5)
    fig = plt.figure(figsize=(width, (4.4 + strip_h + 0.6) * nrow + 0.17 * legend_rows), layout="constrained")
    outer = fig.add_gridspec(nrow, ncol)
    grid = sorted({p["lr"] for v in variants for p in v["points"]})
    all_vals = [v for r in trials if (v := as_float(r.get(rule.metric))) is not None]
    unit_range = all(0.0 <= v <= 1.0 for v in all_vals)
    several = any(len(seeds_of(d.recs(v))) > 1 for v in variants)
    first_ax = None
    for fi, facet in enumerate(panels):
        sub = outer[fi // ncol, fi % ncol].subgridspec(2, 1, height_ratios=[4.4, strip_h], hspace=0.02)
        ax = fig.add_subplot(sub[0], sharey=first_ax)
        strip = fig.add_subplot(sub[1], sharex=ax)
        first_ax = first_ax or ax
        members = [v for v in variants if facet is None or v.get("depth") == facet]
        for vi, v in enumerate(members):
            nudge = 10 ** (0.12 * (vi / max(len(members) - 1, 1) - 0.5)) if len(members) > 1 else 1.0
            draw_judged(ax, d, v, nudge)
        stable_strip(strip, members, [d.colour(v) for v in members])
        if rule.mode == "threshold":
            ax.axhline(rule.threshold, **THRESHOLD_STYLE)
        ax.set_xscale("log")
        ax.set_ylabel(f"{rule.metric} (as judged)")
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelbottom=False)
        if unit_range:
            ax.set_ylim(-0.05, 1.05)
        if facet is not None:
            ax.set_title(f"depth {facet}", fontsize=10)
        if not members or not any(v["points"] for v in members):
            ax.text(0.5, 0.5, "no completed trials", ha="center", transform=ax.transAxes)
            ax.set_xlim(1e-4, 1.0)  # a log axis with no data cannot autoscale
        elif grid:
            ax.set_xlim(grid[0] / 10**0.3, grid[-1] * 10**0.3)
    _legend(fig, d, variants, several)
    quorum = "; an lr: when enough of its seeds are" if several else ""
    fig.suptitle(f"{study}: {rule.metric} against learning rate\nstable = {rule.describe()}{quorum}", fontsize=10)
    return fig
