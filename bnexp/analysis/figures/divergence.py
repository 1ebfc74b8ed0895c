"""divergence.png: the step of the first non-finite loss against learning rate, one point per trial; the
trials that trained to the end on a dotted top line. Drawn only when a trial diverged."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnexp.analysis.figures.common import FigureData, diverged_at, facets, grid_axes, save_figure
from bnexp.analysis.stability import as_float, lr_key
from bnexp.record import as_bool


def plot_divergence(path: Path, d: FigureData) -> None:
    """Write draw_divergence's figure to `path` (its suffix: the format)."""
    save_figure(draw_divergence(d), path)


def draw_divergence(d: FigureData) -> Any:
    """Step of the first non-finite loss against learning rate; trials that trained to the end on a top line."""
    from matplotlib.lines import Line2D

    study, variants, trials = d.study, d.variants, d.trials
    panels = facets(variants)
    fig, axes = grid_axes(len(panels), 6.5, 4.6, sharey=True, layout="constrained")
    end = max([s for r in trials if (s := as_float(r.get("step"))) is not None] or [1.0])
    n_div = 0
    for ax, facet in zip(axes.flat, panels, strict=False):
        members = [v for v in variants if facet is None or v.get("depth") == facet]
        for vi, v in enumerate(members):
            colour, marker = d.colour(v), d.marker(v)
            recs = [r for r in d.recs(v) if lr_key(r)]
            nudge = 10 ** (0.16 * (vi / max(len(members) - 1, 1) - 0.5)) if len(members) > 1 else 1.0
            div = [
                (lr_key(r) * nudge, s) for r in recs if as_bool(r.get("diverged")) and (s := diverged_at(r)) is not None
            ]
            ok = [lr_key(r) * nudge for r in recs if not as_bool(r.get("diverged"))]
            n_div += len(div)
            ax.plot([x for x, _ in div], [y for _, y in div], marker, color=colour, ms=6, ls="none", label=v["label"])
            ax.plot(ok, [end] * len(ok), marker, mfc="none", mec=colour, ms=6, ls="none")
        ax.axhline(end, ls=":", color="0.4", lw=1)
        ax.set_xscale("log")
        ax.set_yscale("symlog", linthresh=10)  # steps 0..9 linear, then log: early and late divergence both show
        ax.set_ylim(-0.5, end * 1.6)
        ax.set_xlabel("learning rate")
        ax.set_ylabel("step of the first non-finite loss")
        ax.grid(True, which="major", alpha=0.3)
        if facet is not None:
            ax.set_title(f"depth {facet}")
        if not any(v["points"] for v in members):
            ax.set_xlim(1e-4, 1.0)
        handles, _ = ax.get_legend_handles_labels()
        handles.append(
            Line2D([], [], marker="o", mfc="none", mec="0.3", ls="none", label=f"no divergence in {end:g} steps")
        )
        ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    if n_div == 0:
        for ax in list(axes.flat)[: len(panels)]:
            ax.text(0.5, 0.5, "no trial diverged", ha="center", transform=ax.transAxes)
    fig.suptitle(
        f"{study}: when training diverges (one point per trial)\n"
        "filled = diverged at that step; hollow on the dotted line = trained to the end",
        fontsize=10,
    )
    return fig
