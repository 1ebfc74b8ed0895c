"""stats_lag.png: per BN variant, validation accuracy with population statistics against batch statistics,
every validation faint, the final one bold, coloured by lr. The shaded "stable by batch statistics only"
corner is named in the legend under the panels, never written over the data."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnexp.analysis.figures.common import FigureData, grid_axes, is_off, save_figure
from bnexp.analysis.stability import STATISTICS, as_float, history, lr_key

ONLY_BATCH = "stable by batch statistics only"


def plot_stats_lag(path: Path, d: FigureData) -> None:
    """Write draw_stats_lag's figure to `path` (its suffix: the format)."""
    save_figure(draw_stats_lag(d), path)


def draw_stats_lag(d: FigureData) -> Any:
    """Per BN variant: validation accuracy with population statistics against batch statistics, every
    validation faint, the final one bold, coloured by lr."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    study, rule = d.study, d.rule
    bn = [v for v in d.variants if not is_off(v)]
    fig, axes = grid_axes(len(bn), 4.6, 4.4, sharex=True, sharey=True, layout="constrained")
    if len(bn) <= 1:
        fig.set_size_inches(7.5, 5.6)
    pop, bat = STATISTICS["population"], STATISTICS["batch"]
    for ax, v in zip(axes.flat, bn, strict=False):
        for r in d.recs(v):
            lr = lr_key(r)
            if lr is None:
                continue
            colour = d.lr_colours(lr)
            hp, hb = dict(history(r, pop)), dict(history(r, bat))
            pairs = [(hb[s], hp[s]) for s in hp if s in hb and hp[s] is not None and hb[s] is not None]
            ax.scatter([b for b, _ in pairs], [p for _, p in pairs], s=9, color=colour, alpha=0.35, lw=0)
            fp, fb = as_float(r.get(pop)), as_float(r.get(bat))
            if fp is not None and fb is not None:
                ax.scatter([fb], [fp], s=40, color=colour, edgecolor="k", lw=0.8, zorder=3)
        ax.plot([0, 1], [0, 1], "-", color="0.5", lw=0.8)
        if rule.mode == "threshold":
            t = rule.threshold
            ax.axhline(t, ls="--", color="0.3", lw=0.8)
            ax.axvline(t, ls="--", color="0.3", lw=0.8)
            ax.fill_between([t, 1.05], -0.05, t, color="tab:red", alpha=0.08, lw=0)
        ax.set_title(v["label"], fontsize=9)
        ax.set_xlabel("val acc, batch statistics")
        ax.set_ylabel("val acc, population statistics")
        ax.set_xlim(-0.03, 1.03)
        ax.set_ylim(-0.03, 1.03)
        ax.grid(True, alpha=0.3)
    if not bn:
        ax = axes[0, 0]
        ax.text(0.5, 0.5, "no BN variant: population and\nbatch statistics are the same", ha="center",
                va="center", transform=ax.transAxes)  # fmt: skip
        ax.set_xticks([])
        ax.set_yticks([])
    for ax in list(axes.flat)[max(len(bn), 1) :]:
        ax.set_visible(False)
    d.lr_colours.colourbar(fig, axes)
    handles = [
        Line2D([], [], marker="o", color="0.5", mec="k", ls="none", ms=7, label="final validation"),
        Line2D([], [], marker="o", color="0.5", alpha=0.5, ls="none", ms=3, label="every validation"),
    ]
    if rule.mode == "threshold" and bn:
        handles += [
            Line2D([], [], ls="--", color="0.3", lw=0.8, label=f"threshold {rule.threshold:g}"),
            Patch(facecolor="tab:red", alpha=0.15, label=f"{ONLY_BATCH} (population fails, batch passes)"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=7, frameon=False)
    fig.suptitle(
        f"{study}: population-statistics lag, colour = learning rate\n"
        "below the diagonal: BN's running averages do worse than each batch's own statistics",
        fontsize=10,
    )
    return fig
