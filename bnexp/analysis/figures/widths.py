"""widths.png: per variant, the lrs judged stable (left) and the width in decades (right), judged by
population statistics (solid) and by batch statistics (hatched), in the variant's colour.

With several seeds, each seed's own stable range is a thin line with end ticks under the bar (left) and its
width a dot (right), and the whisker spans the seeds' range (lowest to highest seed width), so it holds
every seed's dot. A seed with no stable lr is counted in words beside the bar, not drawn as a mark at 0.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnexp.analysis.figures.common import PLOTTED, STATS_HATCH, STATS_NAMES, FigureData, plt_module, save_figure
from bnexp.analysis.figures.stability import stable_runs

OFFSETS = {"population": -0.2, "batch": 0.2}


def seed_range(view: dict) -> tuple[float, float] | None:
    """(lowest, highest) width over the seeds (a seed with no stable lr counts as 0), None for one seed."""
    widths = [s["width"] for s in view.get("per_seed") or [] if s.get("width") is not None]
    return (min(widths), max(widths)) if len(widths) > 1 else None


def width_txt(width: float | None) -> str:
    return "no width" if width is None else f"{width:.2f} dec"


def draw_view(ax_r: Any, ax_w: Any, view: dict, stats: str, y: float, c: Any, grid: list, all_lrs: list) -> None:
    """One variant judged one way (population: solid, batch: hatched): the lrs judged stable (left), the
    width (right), each seed alone and the seeds' range where there are several seeds."""
    hatch = STATS_HATCH[stats]
    if not view["n_finite"]:
        ax_w.text(0.02, y, f"{stats}: not recorded", va="center", fontsize=7, color=c)
        return
    seeds = view.get("per_seed") or []
    runs = stable_runs(grid, set(view.get("stable_lrs") or []))
    for lo, hi in runs:  # exactly the lrs judged stable: an unstable lr inside the range is a gap
        ax_r.fill_between([lo, hi], y - 0.15, y + 0.15, facecolor="white" if hatch else c, edgecolor=c,
                          hatch=hatch, lw=1.2)  # fmt: skip
    none = sum(s["stable_lr_min"] is None for s in seeds) if len(seeds) > 1 else 0
    note = f"; {none} of {len(seeds)} seeds: no stable lr" if 0 < none < len(seeds) else ""
    if runs:  # the label right of the bar and of every seed's own range end, which may reach past it
        ends = [runs[-1][1], *(s["stable_lr_max"] * 1.15 for s in seeds if s["stable_lr_max"])]
        ax_r.annotate(f"{width_txt(view.get('width'))}{note}", (max(ends), y), xytext=(6, 0),
                      textcoords="offset points", va="center", fontsize=7, color=c)  # fmt: skip
    else:
        every = f" in any of {len(seeds)} seeds" if len(seeds) > 1 else ""
        ax_r.text(min(all_lrs or [1e-3]), y, f"no stable lr{every} ({stats} statistics)", va="center", fontsize=7,
                  color=c)  # fmt: skip
        ax_w.text(0.02, y, "no stable lr", va="center", fontsize=7, color=c, transform=ax_w.get_yaxis_transform())
    ax_w.barh(y, view.get("width") or 0.0, height=0.3, facecolor="white" if hatch else c, edgecolor=c,
              hatch=hatch, lw=1.2)  # fmt: skip
    rng = seed_range(view)
    if rng and rng[1] > 0:
        ax_w.plot(rng, [y, y], "-", color="k", lw=1.2)
        ax_w.plot(rng, [y, y], "|", color="k", ms=9)
    if len(seeds) > 1:
        # each seed alone, top to bottom in seed order: its range's ends (left) and its width (right)
        ys = y + np.linspace(-0.12, 0.12, len(seeds))
        for s, yy in zip(seeds, ys, strict=True):
            if s["stable_lr_min"] is None:  # no stable lr: counted in the label, no mark
                continue
            ax_w.plot([s.get("width") or 0.0], [yy], "o", mfc="white", mec="k", mew=1.2, ms=5)
            ax_r.plot([s["stable_lr_min"], s["stable_lr_max"]], [yy, yy], "-", color="k", lw=0.7)
            ax_r.plot([s["stable_lr_min"], s["stable_lr_max"]], [yy, yy], "|", color="k", ms=6)


def _legend(fig: Any, several: bool) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [
        Patch(facecolor="0.45", edgecolor="0.45", label=f"solid: {STATS_NAMES['population']}"),
        Patch(facecolor="white", edgecolor="0.45", hatch="////", label=f"hatched: {STATS_NAMES['batch']}"),
    ]
    if several:
        handles += [
            Line2D([], [], color="k", marker="|", lw=0.7, ms=6, label="left: each seed's stable range (ends ticked)"),
            Line2D([], [], color="k", marker="o", mfc="white", ls="none", ms=5, label="right: each seed's width"),
            Line2D([], [], color="k", lw=1.2, marker="|", ms=9, label="right: the seeds' range (lowest to highest)"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=7, frameon=False)


def plot_widths(path: Path, d: FigureData) -> None:
    """Write draw_widths's figure to `path` (its suffix: the format)."""
    save_figure(draw_widths(d), path)


def draw_widths(d: FigureData) -> Any:
    """Per variant: the stable lrs (left) and the width in decades (right), judged by population statistics
    (solid) and by batch statistics (hatched), in the variant's colour; each seed alone and the seeds' range
    where there are several seeds."""
    plt = plt_module()
    study, variants = d.study, d.variants
    n = max(len(variants), 1)
    fig, (ax_r, ax_w) = plt.subplots(
        1, 2, figsize=(13, 2.2 + 0.8 * n), sharey=True, width_ratios=[1.4, 1], layout="constrained"
    )
    several = any(len(v.get("per_seed") or []) > 1 for v in variants)
    all_lrs = [p["lr"] for v in variants for p in v["points"]]
    for i, v in enumerate(variants):
        grid = [p["lr"] for p in v["points"]]
        for stats, view in (v.get("by_statistics") or {}).items():
            if stats in PLOTTED:
                draw_view(ax_r, ax_w, view, stats, i + OFFSETS[stats], d.colour(v), grid, all_lrs)
    ax_r.set_xscale("log")
    if not all_lrs:
        ax_r.set_xlim(1e-4, 1.0)
    else:  # room on the right for the decades label
        ax_r.set_xlim(min(all_lrs) / 10**0.3, max(all_lrs) * 10**1.1)
    ax_r.set_yticks(range(len(variants)), [v["label"] for v in variants])
    for tick, v in zip(ax_r.get_yticklabels(), variants, strict=True):
        tick.set_color(d.colour(v))
    ax_r.set_ylim(max(len(variants), 1) - 0.5, -0.5)
    ax_r.set_xlabel("learning rate")
    ax_r.set_title("the lrs judged stable", fontsize=9)
    ax_w.set_xlabel("width (decades: log10 of high edge / low edge)")
    ax_w.set_title("width (median over seeds)" if several else "width", fontsize=9)
    ax_w.set_xlim(left=0)
    for ax in (ax_r, ax_w):
        ax.grid(True, axis="x", alpha=0.3)
    if not variants:
        ax_r.text(0.5, 0.5, "no completed trials", ha="center", transform=ax_r.transAxes)
    _legend(fig, several)
    fig.suptitle(f"{study}: stable learning rates, population statistics (solid) vs batch statistics (hatched)",
                 fontsize=10)  # fmt: skip
    return fig
