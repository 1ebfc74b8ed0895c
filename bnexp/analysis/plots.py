"""The report's figures (matplotlib, Agg). `write_figures(out, study, variants, trials, rule, variant_keys,
fmt="png")` draws every figure that has something to show, as png, svg or pdf, and returns the ones drawn as
(file, caption) pairs: the caption (what to read from the figure) is report.md's line under it and the W&B
image's caption. Every `plot_*(path, d, ...)` function takes a `FigureData` (the analysis dicts, the trial
records, the rule) and writes one figure in the format of `path`'s suffix, whole or not at all (bnexp.files).

Conventions: a variant has one colour in every figure of every study (`variant_palette`: BN off grey, pre
blue, post orange; other variants the next colours), so colour never means anything else; population vs
batch statistics are told apart by fill (solid vs hatched) or by panel, never by colour; a learning rate has
one colour (darkened turbo, blue = low, red = high) in the learning curves and the statistics-lag picture,
with a colourbar. What is shaded as stable is exactly what the rule judged stable (each point's `stable`
flag), never a span across an unstable lr.

One module for every figure (~750 lines) because they share those conventions, `FigureData` and the
captions; split it when a figure grows its own helpers.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import names
from bnexp.analysis.stability import STATISTICS, StabilityRule, history, is_stable, variant_key
from bnexp.analysis.stability import as_float as _as_float
from bnexp.analysis.stability import judged_value as _judged_value
from bnexp.analysis.stability import lr_key as _lr_key
from bnexp.analysis.stability import state_of as _state
from bnexp.analysis.stability import variant_sort_key as _sort_key
from bnexp.files import write_bytes_atomic
from bnexp.record import as_bool as _as_bool

# A variant's colour: its BN placement's when its other keys are the defaults (variant_palette).
BN_COLOURS = {"off": "0.45", "pre": "tab:blue", "post": "tab:orange"}
EXTRA_COLOURS = ("tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
_DEFAULTS = {"bias": "auto"}
# Population vs batch statistics: told apart by line style (and marker fill), never by colour, which is the variant's.
STATS_STYLES = {"population": "-", "batch": "--"}
STATS_HATCH = {"population": "", "batch": "////"}
STATS_COLOURS = {"population": "0.15", "batch": "0.15"}  # titles and legend text only
STATS_NAMES = {"population": "population statistics (val/acc)", "batch": "batch statistics (val/acc_batchstats)"}
SEED_STYLES = ("-", "--", ":", "-.")
_PLOTTED = {k: STATISTICS[k] for k in ("population", "batch")}  # recalibrated: a final value, no learning curve
_DPI = 110


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


FORMATS = ("png", "svg", "pdf")


def save_figure(fig: Any, path: Path, fmt: str = "png") -> None:
    """Write `fig` to `path` in `fmt` (png, svg or pdf), whole or not at all; the figure is closed."""
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=_DPI)
    _plt().close(fig)
    write_bytes_atomic(path, buf.getvalue())


def _save(fig: Any, path: Path) -> None:
    save_figure(fig, path, path.suffix.lstrip(".") or "png")


def _colours(n: int) -> list:
    import matplotlib

    cmap = matplotlib.colormaps["tab10" if n <= 10 else "tab20"]
    return [cmap(i % cmap.N) for i in range(n)]


def _facets(variants: list[dict]) -> list:
    depths = sorted({v.get("depth") for v in variants}, key=lambda d: _sort_key((d,), ("x",)))
    return depths if len(depths) > 1 else [None]


def _grid(n: int, w: float, h: float, **kw: Any) -> tuple[Any, Any]:
    ncol = min(max(n, 1), 3)
    nrow = math.ceil(max(n, 1) / ncol)
    return _plt().subplots(nrow, ncol, figsize=(w * ncol, h * nrow), squeeze=False, **kw)


def variant_palette(colour_keys: Sequence[tuple]) -> dict[tuple, Any]:
    """One fixed colour per variant (a tuple of (key, value) pairs, depth left out): the BN placement alone
    picks it (BN_COLOURS: off grey, pre blue, post orange) when its other keys are the defaults (bias auto),
    so every figure of every study, and bnexp.compare's, colours a placement alike; other variants take
    EXTRA_COLOURS in their sorted order."""
    out: dict[tuple, Any] = {}
    rest = []
    for ck in colour_keys:
        d = dict(ck)
        if d.get("bn") in BN_COLOURS and all(v == _DEFAULTS.get(k) for k, v in d.items() if k != "bn"):
            out[ck] = BN_COLOURS[d["bn"]]
        else:
            rest.append(ck)
    rest.sort(key=lambda ck: _sort_key(tuple(x[1] for x in ck), [x[0] for x in ck]))
    for i, ck in enumerate(rest):
        out[ck] = EXTRA_COLOURS[i % len(EXTRA_COLOURS)]
    return out


def _variant_palette(variants: list[dict], variant_keys: Sequence[str]) -> dict[tuple, Any]:
    """Colour by the variant minus depth, so one placement has one colour in every depth's panel."""
    return variant_palette(list(dict.fromkeys(_colour_key(v, variant_keys) for v in variants)))


def _colour_key(v: dict, variant_keys: Sequence[str]) -> tuple:
    return tuple((k, v[k]) for k in variant_keys if k != "depth")


def _by_variant(trials: list[dict], variant_keys: Sequence[str]) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for r in trials:
        if _state(r) == "COMPLETE":
            out.setdefault(variant_key(r, variant_keys), []).append(r)
    return out


def _lr_cmap_colours(n: int) -> np.ndarray:
    """n colours from turbo (blue -> green -> red: neighbours differ in hue, not only in lightness, unlike
    viridis), each darkened to a luminance of at most 0.5 so a thin line on white stays visible."""
    import matplotlib

    rgba = matplotlib.colormaps["turbo"](np.linspace(0.04, 0.96, n))
    lum = rgba[:, :3] @ np.array([0.2126, 0.7152, 0.0722])
    rgba[:, :3] *= np.minimum(1.0, 0.5 / np.maximum(lum, 1e-6))[:, None]
    return rgba


class _LrColours:
    """One colour per lr of the study, blue = low, red = high (darkened turbo: neighbouring lrs differ in hue).
    Up to 12 lrs: one band each on the colourbar, labelled with its lr; more: a continuous log scale."""

    def __init__(self, trials: list[dict], max_bands: int = 12) -> None:
        from matplotlib.colors import BoundaryNorm, ListedColormap, LogNorm

        self.lrs = sorted({lr for r in trials if (lr := _lr_key(r)) is not None}) or [1e-3]
        n = len(self.lrs)
        self.index: dict[float, int] | None = None
        if n <= max_bands:
            self.cmap = ListedColormap(_lr_cmap_colours(n))
            self.norm: Any = BoundaryNorm(np.arange(n + 1) - 0.5, n)  # band i = the i-th lowest lr
            self.index = {lr: i for i, lr in enumerate(self.lrs)}
        else:
            self.cmap = ListedColormap(_lr_cmap_colours(256))
            self.norm = LogNorm(self.lrs[0], self.lrs[-1])

    def __call__(self, lr: float) -> Any:
        return self.cmap(self.norm(self.index.get(lr, 0) if self.index is not None else lr))

    def colourbar(self, fig: Any, axes: Any) -> None:
        from matplotlib.cm import ScalarMappable

        cb = fig.colorbar(ScalarMappable(norm=self.norm, cmap=self.cmap), ax=axes, pad=0.02)
        if self.index is not None:
            cb.set_ticks(range(len(self.lrs)), labels=[f"{lr:.2g}" for lr in self.lrs])
            cb.minorticks_off()
            cb.set_label("learning rate (one colour per grid lr)")
        else:
            cb.set_label("learning rate (log colour scale)")


def _diverged_at(rec: dict) -> float | None:
    """The step of a diverged trial's first non-finite loss; its last step where older records lack it."""
    step = _as_float(rec.get("diverged_step"))
    return step if step is not None else _as_float(rec.get("step"))


def _seed_style(seeds: list) -> dict:
    return {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(seeds)}


def _seeds(recs: list[dict]) -> list:
    return sorted({r.get("seed") for r in recs}, key=lambda s: _sort_key((s,), ("seed",)))


def _is_off(v: dict) -> bool:
    return v.get("bn") == "off"


@dataclass
class FigureData:
    """What every figure reads: the study's name, its analysis (bnexp.analysis.stability.analyse), its trial
    records and the rule they were judged by."""

    study: str
    variants: list[dict]
    trials: list[dict]
    rule: StabilityRule
    variant_keys: tuple[str, ...]

    def __post_init__(self) -> None:
        self.variant_keys = tuple(self.variant_keys)
        self.by_variant = _by_variant(self.trials, self.variant_keys)
        self.lr_colours = _LrColours(self.trials)  # one lr, one colour, in every figure

    def recs(self, v: dict) -> list[dict]:
        """A variant's COMPLETE trials."""
        return self.by_variant.get(variant_key(v, self.variant_keys), [])


# ------------------------------------------------------------------------------------- the figures


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


def _stable_strip(ax: Any, members: list[dict], colours: list) -> None:
    """One row per variant under the main panel: its stable lrs (each point's `stable` flag under the rule)
    as solid spans in the variant's colour, rows apart so ranges never overlap or blend. Runs are taken on
    the variant's own lrs, as its width is: an lr another variant trained (an edge search's bisection points
    differ per variant) is no gap in this one's bar."""
    for i, (v, c) in enumerate(zip(members, colours, strict=True)):
        stable = {p["lr"] for p in v["points"] if p.get("stable")}
        for lo, hi in stable_runs([p["lr"] for p in v["points"]], stable):
            ax.axvspan(lo, hi, ymin=1 - (i + 0.85) / len(members), ymax=1 - (i + 0.15) / len(members), color=c, lw=0)
    ax.set_yticks([1 - (i + 0.5) / max(len(members), 1) for i in range(len(members))],
                  [f"{v['label']} ({v['stable_decades']:.2f} dec)" for v in members], fontsize=7)  # fmt: skip
    for tick, c in zip(ax.get_yticklabels(), colours, strict=True):
        tick.set_color(c)
    ax.set_ylim(0, 1)
    ax.set_xscale("log")
    ax.grid(True, axis="x", which="major", alpha=0.3)
    ax.set_xlabel("learning rate (bars: the lrs the rule judged stable)")


def _draw_judged(ax: Any, d: FigureData, v: dict, colour: Any, nudge: float) -> None:
    """One variant on the stability axes: each seed's judged values as a line, filled where the trial passes
    the rule, hollow where it fails; diverged trials as x, nudged sideways by `nudge` so variants stay apart."""
    rule = d.rule
    recs = d.recs(v)
    seeds = _seeds(recs)
    style = _seed_style(seeds)
    for s in seeds:
        # the value the rule judged, per trial (NaN breaks the line: a diverged lr is a gap, not a bridge)
        by_lr = sorted((_lr_key(r), r) for r in recs if r.get("seed") == s and _lr_key(r))
        xs = [lr for lr, _ in by_lr]
        ys = [np.nan if (y := _judged_value(r, rule)) is None else y for _, r in by_lr]
        ok = [is_stable(r, rule, v.get("variant_best")) for _, r in by_lr]
        lbl = v["label"] if s == seeds[0] else None
        ax.plot(xs, ys, ls=style[s], color=colour, lw=1.5 if len(seeds) == 1 else 1.1, label=lbl)
        ax.plot([x for x, k in zip(xs, ok, strict=True) if k], [y for y, k in zip(ys, ok, strict=True) if k],
                "o", color=colour, ms=4.5, ls="none")  # fmt: skip
        ax.plot([x for x, k in zip(xs, ok, strict=True) if not k], [y for y, k in zip(ys, ok, strict=True) if not k],
                "o", mfc="white", mec=colour, ms=4.5, mew=1.2, ls="none")  # fmt: skip
    div = [r for r in recs if _as_bool(r.get("diverged", False)) and _lr_key(r)]
    if div:
        dx = [_lr_key(r) * nudge for r in div]
        dy = [_as_float(r.get(rule.metric)) or 0.0 for r in div]
        ax.plot(dx, dy, "x", color="tab:red", alpha=0.45, ms=10, mew=3.5, ls="none")
        ax.plot(dx, dy, "x", color=colour, ms=7, mew=1.6, ls="none")


def _stability_legend(ax: Any, d: FigureData, members: list[dict], several: bool) -> None:
    from matplotlib.lines import Line2D

    handles, labels = ax.get_legend_handles_labels()
    extra = [
        Line2D([], [], marker="o", color="0.3", ls="none", ms=4.5, label="passes the rule"),
        Line2D([], [], marker="o", mfc="white", mec="0.3", ls="none", ms=4.5, label="fails it"),
    ]
    if any(_as_bool(r.get("diverged", False)) for v in members for r in d.recs(v)):
        extra.append(Line2D([], [], marker="x", color="tab:red", mew=2, ls="none", label="diverged"))
    if several:
        seeds = _seeds([r for v in members for r in d.recs(v)])
        extra += [Line2D([], [], color="0.3", ls=st, label=f"seed {s}") for s, st in _seed_style(seeds).items()]
    ax.legend(handles + extra, labels + [h.get_label() for h in extra], fontsize=7, loc="best")


def plot_stability(path: Path, d: FigureData) -> None:
    """The value the rule judged against learning rate per variant (each seed its own line), the lrs the rule
    judged stable as one bar row per variant underneath, diverged trials as x."""
    plt = _plt()
    study, variants, trials, rule, variant_keys = d.study, d.variants, d.trials, d.rule, d.variant_keys
    facets = _facets(variants)
    palette = _variant_palette(variants, variant_keys)
    ncol = min(len(facets), 3)
    nrow = math.ceil(len(facets) / ncol)
    n_rows_strip = max(max(sum(1 for v in variants if f is None or v.get("depth") == f) for f in facets), 1)
    strip_h = 0.22 * n_rows_strip + 0.2
    fig = plt.figure(figsize=(6.5 * ncol, (4.4 + strip_h + 0.6) * nrow), layout="constrained")
    outer = fig.add_gridspec(nrow, ncol)
    grid = sorted({p["lr"] for v in variants for p in v["points"]})
    all_vals = [v for r in trials if (v := _as_float(r.get(rule.metric))) is not None]
    unit_range = all(0.0 <= v <= 1.0 for v in all_vals)
    several = any(len(_seeds(d.recs(v))) > 1 for v in variants)
    first_ax = None
    for fi, facet in enumerate(facets):
        sub = outer[fi // ncol, fi % ncol].subgridspec(2, 1, height_ratios=[4.4, strip_h], hspace=0.02)
        ax = fig.add_subplot(sub[0], sharey=first_ax)
        strip = fig.add_subplot(sub[1], sharex=ax)
        first_ax = first_ax or ax
        members = [v for v in variants if facet is None or v.get("depth") == facet]
        colours = [palette[_colour_key(v, variant_keys)] for v in members]
        for vi, (v, colour) in enumerate(zip(members, colours, strict=True)):
            nudge = 10 ** (0.2 * (vi / max(len(members) - 1, 1) - 0.5)) if len(members) > 1 else 1.0
            _draw_judged(ax, d, v, colour, nudge)
        _stable_strip(strip, members, colours)
        if rule.mode == "threshold":
            ax.axhline(rule.threshold, ls="--", color="0.3", lw=1)
        ax.set_xscale("log")
        ax.set_ylabel(f"{rule.metric} judged by the rule")
        ax.grid(True, which="major", alpha=0.3)
        ax.tick_params(labelbottom=False)
        if unit_range:
            ax.set_ylim(-0.05, 1.05)
        if facet is not None:
            ax.set_title(f"depth {facet}")
        if not members or not any(v["points"] for v in members):
            ax.text(0.5, 0.5, "no completed trials", ha="center", transform=ax.transAxes)
            ax.set_xlim(1e-4, 1.0)  # a log axis with no data cannot autoscale
        elif grid:
            ax.set_xlim(grid[0] / 10**0.3, grid[-1] * 10**0.3)
        _stability_legend(ax, d, members, several)
    import textwrap

    quorum = " (an lr: when enough of its seeds are)" if several else ""
    title = (
        f"{study}: {rule.metric} vs learning rate, each trial's value as the rule judged it; "
        f"bars underneath = the lrs judged stable. Stable = {rule.describe()}{quorum}"
    )
    fig.suptitle("\n".join(textwrap.wrap(title, 75 * ncol)), fontsize=10)
    _save(fig, path)


def plot_curves(path: Path, d: FigureData, variant: dict) -> None:
    """One variant's validation accuracy against step, one line per lr (and seed), population statistics
    beside batch statistics."""
    from matplotlib.lines import Line2D

    plt = _plt()
    study, rule, recs = d.study, d.rule, d.recs(variant)
    fig, axes = plt.subplots(1, 2, figsize=(12.5, 4.8), sharey=True, squeeze=False, layout="constrained")
    seeds = _seeds(recs)
    style = _seed_style(seeds)
    ordered = sorted(recs, key=lambda r: (_lr_key(r) or 0.0, _sort_key((r.get("seed"),), ("seed",))))
    any_history = False
    for ax, (stats, metric) in zip(axes[0], _PLOTTED.items(), strict=True):
        for r in ordered:
            lr = _lr_key(r)
            h = [(s, v) for s, v in history(r, metric) if s is not None]
            if lr is None or not h:
                continue
            any_history = True
            colour = d.lr_colours(lr)
            xs = [s for s, _ in h]
            ys = [np.nan if v is None else v for _, v in h]
            ax.plot(xs, ys, ls=style[r.get("seed")], marker=".", ms=3, lw=1.3, color=colour)
            if _as_bool(r.get("diverged", False)):
                finite = [(s, v) for s, v in h if v is not None]
                at = _diverged_at(r)
                y = finite[-1][1] if finite else 0.0
                x = at if at is not None else (finite[-1][0] if finite else xs[-1])
                ax.plot([x], [y], "x", color="tab:red", alpha=0.5, ms=10, mew=3.5)
                ax.plot([x], [y], "x", color=colour, ms=7, mew=1.6)
        if rule.mode == "threshold":
            ax.axhline(rule.threshold, ls="--", color="0.3", lw=1)
        ax.set_xlabel("training step")
        ax.grid(True, alpha=0.3)
        title = STATS_NAMES[stats]
        if stats == "batch" and _is_off(variant):
            title += "\n(BN off: no batch statistics, same as left)"
        elif stats == rule_stats(rule):
            title += "\n(what the rule judges)"
        ax.set_title(title, fontsize=9, color=STATS_COLOURS[stats])
    axes[0, 0].set_ylabel("validation accuracy")
    axes[0, 0].set_ylim(-0.03, 1.03)
    if not any_history:
        for ax in axes[0]:
            ax.text(0.5, 0.5, "no validation history recorded", ha="center", transform=ax.transAxes)
    handles = [Line2D([], [], color="0.2", ls=style[s], label=f"seed {s}") for s in seeds] if len(seeds) > 1 else []
    if any(_as_bool(r.get("diverged", False)) for r in recs):
        handles.append(
            Line2D([], [], marker="x", color="tab:red", mew=2, ls="none", label="diverged (last finite value)")
        )
    if rule.mode == "threshold":
        handles.append(Line2D([], [], ls="--", color="0.3", label=f"threshold {rule.threshold:g}"))
    fig.legend(handles=handles, loc="outside lower center", ncols=len(handles), fontsize=8, frameon=False)
    d.lr_colours.colourbar(fig, axes)
    fig.suptitle(
        f"{study}: {variant['label']} learning curves, one line per learning rate (colour) and seed\n"
        "where the left (population statistics) swings and the right (batch statistics) does not, "
        "BN's running averages lag the weights",
        fontsize=10,
    )
    _save(fig, path)


def rule_stats(rule: StabilityRule) -> str | None:
    """Which statistics view the rule's metric is ('population', 'batch'), else None."""
    return next((s for s, m in STATISTICS.items() if m == rule.metric), None)


def plot_divergence(path: Path, d: FigureData) -> None:
    """Step of the first non-finite loss against learning rate; trials that trained to the end on a top line."""
    from matplotlib.lines import Line2D

    study, variants, trials, variant_keys = d.study, d.variants, d.trials, d.variant_keys
    facets = _facets(variants)
    palette = _variant_palette(variants, variant_keys)
    fig, axes = _grid(len(facets), 6.5, 4.6, sharey=True)
    end = max([s for r in trials if (s := _as_float(r.get("step"))) is not None] or [1.0])
    n_div = 0
    for ax, facet in zip(axes.flat, facets, strict=False):
        members = [v for v in variants if facet is None or v.get("depth") == facet]
        for vi, v in enumerate(members):
            colour = palette[_colour_key(v, variant_keys)]
            recs = [r for r in d.recs(v) if _lr_key(r)]
            nudge = 10 ** (0.16 * (vi / max(len(members) - 1, 1) - 0.5)) if len(members) > 1 else 1.0
            div = [
                (_lr_key(r) * nudge, s)
                for r in recs
                if _as_bool(r.get("diverged")) and (s := _diverged_at(r)) is not None
            ]
            ok = [_lr_key(r) * nudge for r in recs if not _as_bool(r.get("diverged"))]
            n_div += len(div)
            ax.plot([x for x, _ in div], [y for _, y in div], "o", color=colour, ms=6, ls="none", label=v["label"])
            ax.plot(ok, [end] * len(ok), "o", mfc="none", mec=colour, ms=6, ls="none")
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
        ax.legend(handles=handles, fontsize=7, loc="lower left")
    for ax in list(axes.flat)[len(facets) :]:
        ax.set_visible(False)
    if n_div == 0:
        for ax in list(axes.flat)[: len(facets)]:
            ax.text(0.5, 0.5, "no trial diverged", ha="center", transform=ax.transAxes)
    fig.suptitle(
        f"{study}: when training diverges (one point per trial)\n"
        "filled = diverged at that step; hollow on the dotted line = trained to the end",
        fontsize=10,
    )
    fig.tight_layout()
    _save(fig, path)


def _draw_view(ax_r: Any, ax_w: Any, view: dict, stats: str, y: float, c: Any, grid: list, all_lrs: list) -> None:
    """One variant judged one way (population: solid, batch: hatched): the lrs judged stable (left), the
    width (right), each seed alone and the bootstrap interval where there are several seeds."""
    hatch = STATS_HATCH[stats]
    if not view["n_finite"]:
        ax_w.text(0.02, y, f"{stats}: not recorded", va="center", fontsize=7, color=c)
        return
    runs = stable_runs(grid, set(view.get("stable_lrs") or []))
    for lo, hi in runs:  # exactly the lrs judged stable: an unstable lr inside the range is a gap
        ax_r.fill_between([lo, hi], y - 0.15, y + 0.15, facecolor="white" if hatch else c, edgecolor=c,
                          hatch=hatch, lw=1.2)  # fmt: skip
    if runs:  # the label right of the bar and of every seed's own range end, which may reach past it
        ends = [runs[-1][1], *(s["stable_lr_max"] * 1.15 for s in view.get("per_seed") or [] if s["stable_lr_max"])]
        ax_r.annotate(f"{view['stable_decades']:.2f} dec", (max(ends), y), xytext=(6, 0),
                      textcoords="offset points", va="center", fontsize=7, color=c)  # fmt: skip
    else:
        ax_r.text(min(all_lrs or [1e-3]), y, f"no stable lr ({stats} statistics)", va="center", fontsize=7, color=c)
    ax_w.barh(y, view["stable_decades"], height=0.3, facecolor="white" if hatch else c, edgecolor=c,
              hatch=hatch, lw=1.2)  # fmt: skip
    ci = view.get("stable_decades_ci")
    if ci:
        ax_w.plot(ci, [y, y], "-", color="k", lw=1.2)
        ax_w.plot(ci, [y, y], "|", color="k", ms=9)
    seeds = view.get("per_seed") or []
    if len(seeds) > 1:
        # each seed's own width, top to bottom in seed order; its range's ends as ticks
        ys = y + np.linspace(-0.12, 0.12, len(seeds))
        for s, yy in zip(seeds, ys, strict=True):
            if s["stable_lr_min"] is None:  # no stable lr at all: not the same as one stable lr
                ax_w.plot([0], [yy], "x", color="k", mew=1.5, ms=6)
                continue
            ax_w.plot([s["stable_decades"]], [yy], "o", mfc="white", mec="k", mew=1.2, ms=5)
            ax_r.plot([s["stable_lr_min"], s["stable_lr_max"]], [yy, yy], "|", color="k", ms=6)


def plot_widths(path: Path, d: FigureData) -> None:
    """Per variant: the stable lrs (left) and the width in decades (right), judged by population statistics
    (solid) and by batch statistics (hatched), in the variant's colour; each seed alone and the bootstrap
    interval where there are several seeds."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    plt = _plt()
    study, variants = d.study, d.variants
    palette = _variant_palette(variants, d.variant_keys)
    n = max(len(variants), 1)
    fig, (ax_r, ax_w) = plt.subplots(
        1, 2, figsize=(13, 2.2 + 0.8 * n), sharey=True, width_ratios=[1.4, 1], layout="constrained"
    )
    offsets = {"population": -0.2, "batch": 0.2}
    several = any(len(v.get("per_seed") or []) > 1 for v in variants)
    all_lrs = [p["lr"] for v in variants for p in v["points"]]
    for i, v in enumerate(variants):
        c = palette[_colour_key(v, d.variant_keys)]
        grid = [p["lr"] for p in v["points"]]
        for stats, view in (v.get("by_statistics") or {}).items():
            if stats not in _PLOTTED:
                continue
            _draw_view(ax_r, ax_w, view, stats, i + offsets[stats], c, grid, all_lrs)
    ax_r.set_xscale("log")
    if not all_lrs:
        ax_r.set_xlim(1e-4, 1.0)
    else:  # room on the right for the decades label
        ax_r.set_xlim(min(all_lrs) / 10**0.3, max(all_lrs) * 10**0.7)
    ax_r.set_yticks(range(len(variants)), [v["label"] for v in variants])
    ax_r.set_ylim(max(len(variants), 1) - 0.5, -0.5)
    ax_r.set_xlabel("learning rate")
    ax_r.set_title("the lrs judged stable", fontsize=9)
    ax_w.set_xlabel("stable width (decades: the unbroken range around the best lr)")
    ax_w.set_title("stable width", fontsize=9)
    ax_w.set_xlim(left=0)
    for ax in (ax_r, ax_w):
        ax.grid(True, axis="x", alpha=0.3)
    if not variants:
        ax_r.text(0.5, 0.5, "no completed trials", ha="center", transform=ax_r.transAxes)
    handles = [
        Patch(facecolor="0.45", edgecolor="0.45", label=f"solid: {STATS_NAMES['population']}"),
        Patch(facecolor="white", edgecolor="0.45", hatch="////", label=f"hatched: {STATS_NAMES['batch']}"),
    ]
    if several:
        handles += [
            Line2D([], [], color="k", marker="o", mfc="white", ls="none", ms=5, label="each seed alone"),
            Line2D([], [], color="k", marker="x", ls="none", ms=6, label="a seed with no stable lr"),
            Line2D([], [], color="k", lw=1.2, marker="|", ms=9, label="bootstrap 95% interval (seeds resampled)"),
        ]
    fig.legend(handles=handles, loc="outside lower center", ncols=min(len(handles), 3), fontsize=7, frameon=False)
    fig.suptitle(
        f"{study}: stable learning rates judged by population statistics (solid) vs batch statistics (hatched)",
        fontsize=10,
    )
    _save(fig, path)


def plot_stats_lag(path: Path, d: FigureData) -> None:
    """Per BN variant: validation accuracy with population statistics against batch statistics, every
    validation faint, the final one bold, coloured by lr."""
    study, rule = d.study, d.rule
    bn = [v for v in d.variants if not _is_off(v)]
    fig, axes = _grid(len(bn), 4.6, 4.4, sharex=True, sharey=True, layout="constrained")
    if len(bn) <= 1:
        fig.set_size_inches(7.5, 5.2)
    pop, bat = STATISTICS["population"], STATISTICS["batch"]
    for ax, v in zip(axes.flat, bn, strict=False):
        for r in d.recs(v):
            lr = _lr_key(r)
            if lr is None:
                continue
            colour = d.lr_colours(lr)
            hp, hb = dict(history(r, pop)), dict(history(r, bat))
            pairs = [(hb[s], hp[s]) for s in hp if s in hb and hp[s] is not None and hb[s] is not None]
            ax.scatter([b for b, _ in pairs], [p for _, p in pairs], s=9, color=colour, alpha=0.35, lw=0)
            fp, fb = _as_float(r.get(pop)), _as_float(r.get(bat))
            if fp is not None and fb is not None:
                ax.scatter([fb], [fp], s=40, color=colour, edgecolor="k", lw=0.8, zorder=3)
        ax.plot([0, 1], [0, 1], "-", color="0.5", lw=0.8)
        if rule.mode == "threshold":
            t = rule.threshold
            ax.axhline(t, ls="--", color="0.3", lw=0.8)
            ax.axvline(t, ls="--", color="0.3", lw=0.8)
            ax.fill_between([t, 1.05], -0.05, t, color="tab:red", alpha=0.06, lw=0)
            ax.text(
                1.02, t - 0.02, "stable by batch\nstatistics only", ha="right", va="top", fontsize=7, color="tab:red"
            )
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
    fig.suptitle(
        f"{study}: population-statistics lag, colour = learning rate\n"
        "bold: final validation, faint: every validation; below the diagonal: inference with BN's running\n"
        "averages is worse than the same weights normalised with each batch's own statistics",
        fontsize=10,
    )
    _save(fig, path)


def plot_heatmap(path: Path, d: FigureData) -> None:
    """Mean final metric per variant (rows) and lr (columns), stable cells boxed, diverged marked."""
    import matplotlib
    from matplotlib.patches import Rectangle

    plt = _plt()
    study, variants, rule = d.study, d.variants, d.rule
    lrs = sorted({p["lr"] for v in variants for p in v["points"]})
    col = {lr: j for j, lr in enumerate(lrs)}
    grid = np.full((len(variants), max(len(lrs), 1)), np.nan)
    for i, v in enumerate(variants):
        for p in v["points"]:
            if p["mean"] is not None:
                grid[i, col[p["lr"]]] = p["mean"]
    fig, ax = plt.subplots(figsize=(max(7.0, 0.6 * len(lrs) + 3), max(3.2, 0.35 * len(variants) + 2.0)))
    # no finite result (all diverged or not run): light grey
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad="0.85")
    finite = grid[np.isfinite(grid)]
    unit = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
    im = ax.imshow(
        np.ma.masked_invalid(grid), cmap=cmap, aspect="auto", vmin=0 if unit else None, vmax=1 if unit else None
    )
    other = "batch" if rule_stats(rule) == "population" else "population"
    used = {"diverged": False, "other": False, "stable": False, "missing": bool(np.isnan(grid).any())}
    for i, v in enumerate(variants):
        other_lrs = set(((v.get("by_statistics") or {}).get(other) or {}).get("stable_lrs") or [])
        for p in v["points"]:
            j = col[p["lr"]]
            val = grid[i, j]
            if np.isfinite(val):  # each cell's value, dark text on the light end of the colour map
                light = unit and val > 0.6
                ax.text(j, i + (0.18 if p["diverged_any"] else 0), f"{val:.2f}", ha="center", va="center",
                        fontsize=6.5, color="k" if light else "w")  # fmt: skip
            if p["diverged_any"]:
                used["diverged"] = True
                txt = "x" if p["n_diverged"] == p["n_seeds"] else f"x{p['n_diverged']}"
                ax.text(j, i - (0.22 if np.isfinite(val) else 0), txt, ha="center", va="center", color="tab:red",
                        fontsize=8, fontweight="bold")  # fmt: skip
            if p.get("stable"):
                used["stable"] = True
                ax.add_patch(Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, ec="k", lw=1.8))
            elif p["lr"] in other_lrs:
                used["other"] = True
                ax.add_patch(Rectangle((j - 0.42, i - 0.42), 0.84, 0.84, fill=False, ec="k", lw=1.1, ls="--"))
    ax.set_xticks(range(len(lrs)), [f"{lr:.2g}" for lr in lrs], rotation=60, fontsize=7)
    ax.set_yticks(range(len(variants)), [v["label"] for v in variants], fontsize=7)
    ax.set_xlabel("learning rate")
    fig.colorbar(im, ax=ax, label=f"mean final {rule.metric}")
    keys = {  # only the marks this figure uses
        "stable": "black box = stable lr",
        "other": f"dashed box = stable only by {other} statistics",
        "diverged": "x = diverged (xN: N seeds diverged)",
        "missing": "grey = no finite result",
    }
    key_txt = "; ".join(t for k, t in keys.items() if used[k])
    ax.set_title(f"{study}: mean {rule.metric} per variant and lr" + (f"\n{key_txt}" if key_txt else ""), fontsize=9)
    fig.tight_layout()
    _save(fig, path)


# ------------------------------------------------------------------------------------ all of them


def curves_file(label: str, fmt: str = "png") -> str:
    return f"curves-{names.safe(label)}.{fmt}"


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
    figs.append(
        (
            f"stability.{fmt}",
            f"Each trial's {m} as the rule judged it against learning rate (filled: passes the rule, hollow: fails,"
            " x: diverged; one line per seed); the bars underneath are exactly the lrs each variant keeps as"
            " stable: compare their widths, gaps and where each ends.",
        )
    )
    plot_widths(out / f"widths.{fmt}", d)
    seeds_txt = " Dots are each seed alone and the whisker is the bootstrap 95% interval." if several_seeds else ""
    figs.append(
        (
            f"widths.{fmt}",
            "The stable lrs and their width, judged by population statistics (solid, what inference uses) and by"
            " batch statistics (hatched), in each variant's colour: where hatched reaches further than solid,"
            f" BN's running averages, not the weights, end the stable range.{seeds_txt}",
        )
    )
    if any(_as_bool(r.get("diverged", False)) for recs in d.by_variant.values() for r in recs):
        plot_divergence(out / f"divergence.{fmt}", d)
        figs.append(
            (
                f"divergence.{fmt}",
                "Step of the first non-finite loss against learning rate (hollow on the dotted line: trained to"
                " the end): the lr where divergence sets in, and how much sooner it comes as the lr grows.",
            )
        )
    if any(not _is_off(v) for v in variants):
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
                f"Mean final {m} per variant and lr (the value in each cell), black boxes stable: read across"
                " a row for the stable band,"
                " down a column for how depth moves it.",
            )
        )
    for v in variants:
        f = curves_file(v["label"], fmt)
        plot_curves(out / f, d, v)
        figs.append(
            (
                f,
                f"{v['label']}: validation accuracy during training, one line per lr (colour) and seed (line style),"
                " population statistics left, batch statistics right: see at which lr the curves stop"
                " rising, swing, or diverge.",
            )
        )
    return figs
