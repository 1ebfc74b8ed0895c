"""curves-<variant>.png: one variant's validation accuracy against step, one line per lr (colour: a
perceptual colour map over log10(lr)) and seed (line style), population statistics beside batch
statistics. The rule's threshold is a thick pale solid line, unlike any seed's style."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from bnexp import names
from bnexp.analysis.figures.common import (
    PLOTTED,
    STATS_NAMES,
    THRESHOLD_STYLE,
    FigureData,
    diverged_at,
    is_off,
    plt_module,
    rule_stats,
    save_figure,
    seed_styles,
    seeds_of,
)
from bnexp.analysis.stability import history, lr_key, variant_sort_key
from bnexp.record import as_bool


def curves_file(label: str, fmt: str = "png") -> str:
    return f"curves-{names.safe(label)}.{fmt}"


def plot_curves(path: Path, d: FigureData, variant: dict) -> None:
    """Write draw_curves's figure to `path` (its suffix: the format)."""
    save_figure(draw_curves(d, variant), path)


def draw_curves(d: FigureData, variant: dict) -> Any:
    """One variant's validation accuracy against step, one line per lr (and seed), population statistics
    beside batch statistics."""
    from matplotlib.lines import Line2D

    plt = plt_module()
    study, rule, recs = d.study, d.rule, d.recs(variant)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), sharey=True, squeeze=False, layout="constrained")
    seeds = seeds_of(recs)
    style = seed_styles(seeds)
    ordered = sorted(recs, key=lambda r: (lr_key(r) or 0.0, variant_sort_key((r.get("seed"),), ("seed",))))
    any_history = False
    for ax, (stats, metric) in zip(axes[0], PLOTTED.items(), strict=True):
        for r in ordered:
            lr = lr_key(r)
            h = [(s, v) for s, v in history(r, metric) if s is not None]
            if lr is None or not h:
                continue
            any_history = True
            colour = d.lr_colours(lr)
            xs = [s for s, _ in h]
            ys = [np.nan if v is None else v for _, v in h]
            ax.plot(xs, ys, ls=style[r.get("seed")], marker=".", ms=3, lw=1.3, color=colour)
            if as_bool(r.get("diverged", False)):
                finite = [(s, v) for s, v in h if v is not None]
                at = diverged_at(r)
                y = finite[-1][1] if finite else 0.0
                x = at if at is not None else (finite[-1][0] if finite else xs[-1])
                ax.plot([x], [y], "x", color="tab:red", alpha=0.5, ms=10, mew=3.5)
                ax.plot([x], [y], "x", color=colour, ms=7, mew=1.6)
        if rule.mode == "threshold":
            ax.axhline(rule.threshold, **THRESHOLD_STYLE)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        title = STATS_NAMES[stats]
        if stats == "batch" and is_off(variant):
            title += "\n(BN off: no batch statistics, same as left)"
        elif stats == rule_stats(rule):
            title += "\n(what the rule judges)"
        ax.set_title(title, fontsize=9)
    axes[0, 0].set_ylabel("validation accuracy")
    axes[0, 0].set_ylim(-0.03, 1.03)
    if not any_history:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no validation history recorded", ha="center", transform=ax.transAxes)
    handles = [Line2D([], [], color="0.2", ls=style[s], label=f"seed {s}") for s in seeds] if len(seeds) > 1 else []
    if any(as_bool(r.get("diverged", False)) for r in recs):
        handles.append(
            Line2D([], [], marker="x", color="tab:red", mew=2, ls="none", label="diverged (last finite value)")
        )
    if rule.mode == "threshold":
        handles.append(Line2D([], [], **{**THRESHOLD_STYLE, "zorder": 2}, label=f"threshold {rule.threshold:g}"))
    if handles:
        fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    d.lr_colours.colourbar(fig, axes)
    fig.suptitle(
        f"{study}: {variant['label']} learning curves, one line per learning rate (colour) and seed\n"
        "where the left (population statistics) swings and the right (batch statistics) does not, "
        "BN's running averages lag the weights",
        fontsize=10,
    )
    return fig
