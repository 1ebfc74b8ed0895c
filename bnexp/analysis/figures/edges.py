"""edges.png: each variant's stable range as an interval on a log-lr axis, with each edge's bracket and each
seed's range (bnexp.analysis.edges). With a second axis in the grid (depth, model.init_std, ...), the rows
are that axis's values per variant: the stable region of lr x that axis, BN's beside no-BN's in one picture.

Each seed has a row of its own, labelled with the seed and its width; with several seeds the variant's first
row is the median range over seeds (thick) with the median width and the seeds' range. A bracket is a hatched
box from its stable lr to its unstable one, low side and high side hatched apart, so a re-judged study with
wide brackets still shows two boxes per seed, not one block.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnexp.analysis.edges import estimate
from bnexp.analysis.figures.common import plt_module, save_figure

EDGES_CAPTION = (
    "Each variant's stable lr range as an interval, one labelled row per seed with its width: a thin line spans"
    " the seed's range and each hatched box the bracket (last stable lr, a dot, to the first unstable one) an"
    " edge lies in (the low edge's hatched one way, the high edge's the other); with several seeds the thick"
    " first row spans the median edges over seeds, with the median width and the seeds' range; an arrow is an"
    " edge past the searched range."
)
SEED_ROW = 0.3  # height of a seed's row, in variant-row units
HATCH = {"low": "\\\\\\\\", "high": "////"}


def _rows(variants: list[dict]) -> list[tuple[dict, list[tuple[str, dict]], bool]]:
    """(variant, its seeds' edges, whether it has a median row) per variant."""
    out = []
    for v in variants:
        e = v.get("edges") or {}
        seeds = list((e.get("per_seed") or {}).items())
        out.append((v, seeds, len(seeds) > 1))
    return out


def _width_txt(width: float | None) -> str:
    return "–" if width is None else f"{width:.2f} dec"


def _draw_seed(ax: Any, y: float, seed: str, s: dict, c: Any) -> None:
    """One seed's row: its range (thin), its two brackets (hatched boxes), its label and width on the right."""
    if not s.get("low"):
        ax.text(1.0, y, f"seed {seed}: nothing stable", va="center", ha="left", fontsize=7, color="0.4",
                transform=ax.get_yaxis_transform())  # fmt: skip
        return
    ax.plot([estimate(s["low"]), estimate(s["high"])], [y, y], "-", color=c, lw=1.2)
    for side in ("low", "high"):
        stable, unstable = s[side]
        if unstable is None:  # open: the range goes on past the searched lrs
            ax.annotate("", (stable * (0.6 if side == "low" else 1.6), y), (stable, y),
                        arrowprops={"arrowstyle": "->", "color": c})  # fmt: skip
            continue
        lo, hi = sorted((stable, unstable))
        h = SEED_ROW * 0.3
        ax.fill_betweenx([y - h, y + h], lo, hi, facecolor="white", edgecolor=c, hatch=HATCH[side], lw=0.8)
        ax.plot([stable], [y], "o", color=c, ms=3.5, zorder=3)  # the bracket's stable end
    ax.text(1.0, y, f" seed {seed}: {_width_txt(s.get('width'))}", va="center", ha="left", fontsize=7, color=c,
            transform=ax.get_yaxis_transform())  # fmt: skip


def plot_edges(out: Path, study: str, variants: list[dict], colour_of: Any, fmt: str = "png") -> str | None:
    """Draw `edges.<fmt>` (None, nothing drawn, when no variant has a stable lr). `colour_of(label)`: the
    variant's colour in every figure."""
    fig = draw_edges(study, variants, colour_of)
    if fig is None:
        return None
    fname = f"edges.{fmt}"
    save_figure(fig, out / fname, fmt)
    return fname


def draw_edges(study: str, variants: list[dict], colour_of: Any) -> Any:
    """The edges figure (None when no variant has a stable lr)."""
    rows = _rows(variants)
    if not any((v.get("edges") or {}).get("n_seeds_stable") for v, _, _ in rows):
        return None
    several = any(median for _, _, median in rows)
    n_lines = sum(len(seeds) + median if any(st.get("low") for _, st in seeds) else 1 for _, seeds, median in rows)
    plt = plt_module()
    fig, ax = plt.subplots(figsize=(10, 1.6 + 0.3 * n_lines + 0.2 * len(rows)), layout="constrained")
    y, ticks, labels = 0.0, [], []
    for v, seeds, median in rows:
        e, c = v.get("edges") or {}, colour_of(v["label"])
        top = y
        if median and e.get("low", {}).get("median") is not None:
            w = e.get("width") or {}
            rng = w.get("range")
            txt = f" median: {_width_txt(w.get('median'))}" + (f" [{rng[0]:.2f}, {rng[1]:.2f}]" if rng else "")
            ax.plot([e["low"]["median"], e["high"]["median"]], [y, y], "-", color=c, lw=5, solid_capstyle="butt")
            ax.text(1.0, y, txt, va="center", ha="left", fontsize=7, color=c, fontweight="bold",
                    transform=ax.get_yaxis_transform())  # fmt: skip
            y += SEED_ROW
        if not any(st.get("low") for _, st in seeds):  # one row says it for every seed
            n = f"{len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
            ax.text(1.0, y, f" nothing stable ({n})", va="center", ha="left", fontsize=7, color="0.4",
                    transform=ax.get_yaxis_transform())  # fmt: skip
            y += SEED_ROW
        for seed, s in seeds if any(st.get("low") for _, st in seeds) else []:
            _draw_seed(ax, y, seed, s, c)
            y += SEED_ROW
        ticks.append((top + y - SEED_ROW) / 2)
        labels.append(v["label"])
        ax.axhline(y - SEED_ROW / 2 + 0.05, color="0.85", lw=0.8)  # between variants
        y += 0.1
    ax.set_xscale("log")
    ax.set_yticks(ticks, labels)
    for tick, lbl in zip(ax.get_yticklabels(), labels, strict=True):
        tick.set_color(colour_of(lbl))
    ax.set_ylim(y - 0.1, -SEED_ROW)  # top to bottom
    ax.set_xlabel("learning rate")
    ax.grid(axis="x", alpha=0.3)
    what = "thick = median edges over seeds, thin = each seed's range" if several else "line = the stable range"
    ax.set_title(f"{study}: stable lr range per variant ({what})\nhatched box = the bracket an edge lies in"
                 " (dot: its last stable lr), low and high hatched apart; arrow = open", fontsize=9)  # fmt: skip
    return fig
