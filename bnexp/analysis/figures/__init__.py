"""The report's figures (matplotlib, Agg), one module per figure: `write_figures(out, study, variants, trials,
rule, variant_keys, fmt="png")` draws every figure that has something to show, as png, svg or pdf, and
returns the ones drawn as (file, caption) pairs: the caption (what to read from the figure) is report.md's
line under it and the W&B image's caption. Every `plot_*(path, d, ...)` takes a `FigureData` (the analysis
dicts, the trial records, the rule) and writes one figure in the format of `path`'s suffix, whole or not at
all (bnexp.files).

    common      the conventions every figure shares: colours, the lr colour map, FigureData, save_figure
    stability   stability.png: the judged value against lr, the stable lrs as bars (and stable_runs)
    widths      widths.png: the stable lrs and widths, population vs batch statistics, each seed
    stats_lag   stats_lag.png: population against batch statistics per BN variant
    heatmap     heatmap.png: mean metric per variant and lr, on a log-lr axis
    curves      curves-<variant>.png: learning curves per lr and seed
    divergence  divergence.png: the step of the first non-finite loss
    edges       edges.png: each seed's edges and brackets (the edge search)
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from bnexp.analysis.figures.common import (
    BN_COLOURS,
    FORMATS,
    FigureData,
    colour_key,
    colour_of_label,
    is_off,
    plt_module,
    save_figure,
    study_palette,
    variant_palette,
)
from bnexp.analysis.figures.curves import curves_file, plot_curves
from bnexp.analysis.figures.divergence import plot_divergence
from bnexp.analysis.figures.edges import plot_edges
from bnexp.analysis.figures.heatmap import plot_heatmap
from bnexp.analysis.figures.stability import plot_stability, stable_runs
from bnexp.analysis.figures.stats_lag import plot_stats_lag
from bnexp.analysis.figures.widths import plot_widths
from bnexp.analysis.stability import StabilityRule
from bnexp.record import as_bool

__all__ = [
    "BN_COLOURS",
    "FORMATS",
    "FigureData",
    "colour_key",
    "colour_of_label",
    "curves_file",
    "plot_edges",
    "plt_module",
    "save_figure",
    "stable_runs",
    "study_palette",
    "variant_palette",
    "write_figures",
]


CURVES_CAPTION = (
    "{label}: validation accuracy during training, one line per lr (colour) and seed (line style), population"
    " statistics left, batch statistics right: see at which lr the curves stop rising, swing, or diverge."
)


def write_figures(
    out: Path,
    study: str,
    variants: list[dict],
    trials: list[dict],
    rule: StabilityRule,
    variant_keys: Sequence[str],
    fmt: str = "png",
) -> list[tuple[str, str]]:
    """Draw every figure that has something to show into `out`, as `fmt` (png, svg or pdf); returns the ones
    drawn, (file name, one-line caption) in report order. divergence is drawn only when a trial diverged,
    heatmap only when depth varies, stats_lag only with a BN variant."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {', '.join(FORMATS)}")
    d = FigureData(study, variants, trials, rule, tuple(variant_keys))
    m = rule.metric
    several_seeds = any(len(v.get("per_seed") or []) > 1 for v in variants)
    figs: list[tuple[str, str]] = []
    plot_stability(out / f"stability.{fmt}", d)
    line = " the line joins the median over seeds at the lrs every seed trained;" if several_seeds else ""
    figs.append(
        (
            f"stability.{fmt}",
            f"Each trial's {m} as the rule judged it against learning rate (filled: passes the rule, hollow: fails,"
            f" x: diverged; one colour and marker per variant);{line} the bars underneath are exactly the lrs"
            " each variant keeps as stable: compare their widths, gaps and where each ends.",
        )
    )
    plot_widths(out / f"widths.{fmt}", d)
    seeds_txt = (
        " Thin lines and dots are each seed alone, and the whisker spans the seeds' range (lowest to highest)."
        if several_seeds
        else ""
    )
    figs.append(
        (
            f"widths.{fmt}",
            "The stable lrs and their width, judged by population statistics (solid, what inference uses) and by"
            " batch statistics (hatched), in each variant's colour: where hatched reaches further than solid,"
            f" BN's running averages, not the weights, end the stable range.{seeds_txt}",
        )
    )
    if any(as_bool(r.get("diverged", False)) for recs in d.by_variant.values() for r in recs):
        plot_divergence(out / f"divergence.{fmt}", d)
        figs.append(
            (
                f"divergence.{fmt}",
                "Step of the first non-finite loss against learning rate (hollow on the dotted line: trained to"
                " the end): the lr where divergence sets in, and how much sooner it comes as the lr grows.",
            )
        )
    if any(not is_off(v) for v in variants):
        plot_stats_lag(out / f"stats_lag.{fmt}", d)
        figs.append(
            (
                f"stats_lag.{fmt}",
                "Validation accuracy with population statistics (y) against batch statistics (x) for each BN"
                " variant, colour = lr: points far below the diagonal are trials whose inference accuracy"
                " lags what the same weights reach with batch statistics.",
            )
        )
    if len({v.get("depth") for v in variants}) > 1:
        plot_heatmap(out / f"heatmap.{fmt}", d)
        figs.append(
            (
                f"heatmap.{fmt}",
                f"Mean final {m} per variant and lr (the value in each cell; cells on a log-lr axis, grey where"
                " the variant did not train that lr), black boxes stable: read across a row for the stable"
                " band, down a column for how depth moves it.",
            )
        )
    for v in variants:
        f = curves_file(v["label"], fmt)
        plot_curves(out / f, d, v)
        figs.append((f, CURVES_CAPTION.format(label=v["label"])))
    return figs
