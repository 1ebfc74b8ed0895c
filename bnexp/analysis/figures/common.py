"""What every figure shares: matplotlib (Agg), writing a figure whole, the colours and `FigureData`.

Conventions: a variant has one colour in every figure of every study (`variant_palette`): BN off in greys,
pre in blues, post in oranges, so a placement reads as one family whatever else varies (a default variant
takes its family's base colour: off grey, pre blue, post orange; the variants of one placement that differ
in another key, init scale or momentum, take that family's shades in their sorted order). Colour never
means anything else. Population vs batch statistics are told apart by fill (solid vs hatched) or by
panel, never by colour. A learning rate has one colour (`LrColours`: a perceptual colour map over log10(lr),
dark purple = low, orange = high) in the learning curves and the statistics-lag picture, with a colourbar.
What is shaded as stable is exactly what the rule judged stable (each point's `stable` flag), never a span
across an unstable lr.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.analysis.stability import (
    STATISTICS,
    StabilityRule,
    as_float,
    lr_key,
    state_of,
    variant_key,
    variant_sort_key,
)
from bnexp.files import write_bytes_atomic

FORMATS = ("png", "svg", "pdf")
# A variant's colour family: its BN placement's (variant_palette). The base colour is a default variant's.
BN_COLOURS = {"off": "0.45", "pre": "tab:blue", "post": "tab:orange"}
BN_FAMILIES = {"off": "Greys", "pre": "Blues", "post": "Oranges"}  # shades for variants of one placement
EXTRA_COLOURS = ("tab:green", "tab:purple", "tab:red", "tab:brown", "tab:pink", "tab:olive", "tab:cyan")
DEFAULTS = {"bias": "auto"}
# Markers that tell variants of one colour family apart where they lie on top of each other
VARIANT_MARKERS = ("o", "s", "^", "D", "v", "P", "X")
# Population vs batch statistics: told apart by line style (and marker fill), never by colour, which is the variant's.
STATS_HATCH = {"population": "", "batch": "////"}
STATS_NAMES = {s: f"{s} statistics ({STATISTICS[s]})" for s in ("population", "batch")}
SEED_STYLES = ("-", "--", ":", (0, (5, 1, 1, 1, 1, 1)))  # solid, dashed, dotted, dash-dot-dot
# the rule's threshold: a thick pale solid line, unlike any seed's style
THRESHOLD_STYLE = {"ls": "-", "color": "0.55", "lw": 3.0, "alpha": 0.45, "zorder": 0.5}
PLOTTED = {k: STATISTICS[k] for k in ("population", "batch")}  # recalibrated: a final value, no learning curve
LR_CMAP = "plasma"  # perceptually uniform: equal steps in log10(lr) look equally different
DPI = 110


def plt_module() -> Any:
    """matplotlib.pyplot on the Agg backend (no display needed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: Path, fmt: str | None = None) -> None:
    """Write `fig` to `path` in `fmt` (png, svg or pdf; default: `path`'s suffix), whole or not at all; the
    figure is closed."""
    fmt = fmt or path.suffix.lstrip(".") or "png"
    if fmt not in FORMATS:
        raise ValueError(f"figure format {fmt!r} is not one of {', '.join(FORMATS)}")
    buf = io.BytesIO()
    fig.savefig(buf, format=fmt, dpi=DPI)
    plt_module().close(fig)
    write_bytes_atomic(path, buf.getvalue())


def facets(variants: list[dict]) -> list:
    """One panel per depth where depth varies, else one panel (None)."""
    depths = sorted({v.get("depth") for v in variants}, key=lambda d: variant_sort_key((d,), ("x",)))
    return depths if len(depths) > 1 else [None]


def grid_axes(n: int, w: float, h: float, **kw: Any) -> tuple[Any, Any]:
    ncol = min(max(n, 1), 3)
    nrow = math.ceil(max(n, 1) / ncol)
    return plt_module().subplots(nrow, ncol, figsize=(w * ncol, h * nrow), squeeze=False, **kw)


def _shades(family: str, n: int) -> list:
    """n shades of a sequential colour map, light enough to tell apart, dark enough to see on white."""
    import matplotlib

    cmap = matplotlib.colormaps[family]
    return [cmap(x) for x in (np.linspace(0.5, 0.92, n) if n > 1 else [0.75])]


def variant_palette(colour_keys: Sequence[tuple]) -> dict[tuple, Any]:
    """One fixed colour per variant (a tuple of (key, value) pairs, depth left out). The BN placement picks
    the family (off greys, pre blues, post oranges): a variant whose other keys are the defaults (bias auto)
    takes the family's base colour (BN_COLOURS), so every figure of every study, and bnexp.compare's, colours
    a placement alike; the variants of one placement that differ in another key take the family's shades in
    their sorted order; a variant with no placement takes EXTRA_COLOURS."""
    out: dict[tuple, Any] = {}
    family: dict[str, list[tuple]] = {}
    rest = []
    for ck in dict.fromkeys(colour_keys):
        d = dict(ck)
        if d.get("bn") in BN_COLOURS and all(v == DEFAULTS.get(k) for k, v in d.items() if k != "bn"):
            out[ck] = BN_COLOURS[d["bn"]]
        elif d.get("bn") in BN_FAMILIES:
            family.setdefault(d["bn"], []).append(ck)
        else:
            rest.append(ck)
    for bn, cks in family.items():
        cks.sort(key=lambda ck: variant_sort_key(tuple(x[1] for x in ck), [x[0] for x in ck]))
        out.update(zip(cks, _shades(BN_FAMILIES[bn], len(cks)), strict=True))
    rest.sort(key=lambda ck: variant_sort_key(tuple(x[1] for x in ck), [x[0] for x in ck]))
    for i, ck in enumerate(rest):
        out[ck] = EXTRA_COLOURS[i % len(EXTRA_COLOURS)]
    return out


def colour_key(v: dict, variant_keys: Sequence[str]) -> tuple:
    """A variant's colour key: its variant keys minus depth, so one placement has one colour at every depth."""
    return tuple((k, v[k]) for k in variant_keys if k != "depth")


def study_palette(variants: list[dict], variant_keys: Sequence[str]) -> dict[tuple, Any]:
    """`variant_palette` over a study's variants, keyed by `colour_key`."""
    return variant_palette(list(dict.fromkeys(colour_key(v, variant_keys) for v in variants)))


def colour_of_label(variants: list[dict], variant_keys: Sequence[str]) -> Any:
    """label -> the variant's colour, the one every other figure gives it."""
    palette = study_palette(variants, variant_keys)
    by_label = {v["label"]: palette[colour_key(v, variant_keys)] for v in variants}
    return lambda label: by_label[label]


def lr_cmap() -> Any:
    """The lr colour map: plasma without its pale yellow end, which vanishes on white."""
    import matplotlib
    from matplotlib.colors import ListedColormap

    return ListedColormap(matplotlib.colormaps[LR_CMAP](np.linspace(0.0, 0.85, 256)), name="lr")


class LrColours:
    """One colour per lr of the study on a log scale over the study's lrs (a perceptual colour map, dark
    purple = lowest, orange = highest): equal steps in log10(lr) are equally different colours, so lrs between
    1e-3 and 1e-2 differ as much as any other decade's."""

    def __init__(self, trials: list[dict]) -> None:
        from matplotlib.colors import LogNorm

        self.lrs = sorted({lr for r in trials if (lr := lr_key(r)) is not None}) or [1e-3]
        lo, hi = self.lrs[0], self.lrs[-1]
        if hi <= lo:
            lo, hi = lo / 10, hi * 10
        self.cmap = lr_cmap()
        self.norm = LogNorm(lo, hi)

    def __call__(self, lr: float) -> Any:
        return self.cmap(self.norm(lr))

    def colourbar(self, fig: Any, axes: Any) -> Any:
        from matplotlib.cm import ScalarMappable

        cb = fig.colorbar(ScalarMappable(norm=self.norm, cmap=self.cmap), ax=axes, pad=0.02)
        cb.set_label("learning rate (log colour scale)")
        return cb


def diverged_at(rec: dict) -> float | None:
    """The step of a diverged trial's first non-finite loss; its last step where older records lack it."""
    step = as_float(rec.get("diverged_step"))
    return step if step is not None else as_float(rec.get("step"))


def seed_styles(seeds: list) -> dict:
    return {s: SEED_STYLES[i % len(SEED_STYLES)] for i, s in enumerate(seeds)}


def seeds_of(recs: list[dict]) -> list:
    return sorted({r.get("seed") for r in recs}, key=lambda s: variant_sort_key((s,), ("seed",)))


def is_off(v: dict) -> bool:
    return v.get("bn") == "off"


def rule_stats(rule: StabilityRule) -> str | None:
    """Which statistics view the rule's metric is ('population', 'batch'), else None."""
    return next((s for s, m in STATISTICS.items() if m == rule.metric), None)


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
        self.by_variant: dict[tuple, list[dict]] = {}
        for r in self.trials:
            if state_of(r) == "COMPLETE":
                self.by_variant.setdefault(variant_key(r, self.variant_keys), []).append(r)
        self.lr_colours = LrColours(self.trials)  # one lr, one colour, in every figure
        self.palette = study_palette(self.variants, self.variant_keys)

    def recs(self, v: dict) -> list[dict]:
        """A variant's COMPLETE trials."""
        return self.by_variant.get(variant_key(v, self.variant_keys), [])

    def colour(self, v: dict) -> Any:
        return self.palette[colour_key(v, self.variant_keys)]

    def marker(self, v: dict) -> str:
        """A variant's marker: its place among the variants of its colour family (same placement), so two
        variants drawn on top of each other still show as two shapes."""
        same = [u for u in self.variants if u.get("bn") == v.get("bn") and u.get("depth") == v.get("depth")]
        i = next((i for i, u in enumerate(same) if u["label"] == v["label"]), 0)
        return VARIANT_MARKERS[i % len(VARIANT_MARKERS)]
