"""The edges figure: each variant's stable range as an interval on a log-lr axis, one row per variant, with
each edge's bracket and the seeds' spread (bnexp.analysis.edges). With a second axis in the grid (depth,
model.init_std, data.batch_size, ...), the rows are that axis's values per variant: the stable region of
lr x that axis, BN's beside no-BN's in one picture.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bnexp.analysis.edges import estimate


def plot_edges(out: Path, study: str, variants: list[dict], colour_of: Any, fmt: str = "png") -> str | None:
    """Draw `edges.<fmt>` (None, nothing drawn, when no variant has a stable lr). `colour_of(label)`: the
    variant's colour in every figure."""
    from bnexp.analysis.plots import _plt, save_figure

    rows = [v for v in variants if (v.get("edges") or {}).get("n_seeds_stable")]
    if not rows:
        return None
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8.5, 1.4 + 0.55 * len(variants)), layout="constrained")
    labels = []
    for y, v in enumerate(variants):
        labels.append(v["label"])
        e, c = v.get("edges") or {}, colour_of(v["label"])
        per_seed = [s for s in (e.get("per_seed") or {}).values() if s.get("low")]
        if not per_seed:
            ax.text(1e-3, y, "nothing stable", va="center", fontsize=8, color="0.4")
            continue
        if e["low"]["median"] is not None:  # the median range over seeds: the thick line
            ax.plot([e["low"]["median"], e["high"]["median"]], [y, y], "-", color=c, lw=5, alpha=0.9,
                    solid_capstyle="butt")  # fmt: skip
        for k, s in enumerate(per_seed):  # each seed: its range, its two brackets as hatched boxes
            dy = (k - (len(per_seed) - 1) / 2) * 0.16
            ax.plot([estimate(s["low"]), estimate(s["high"])], [y + dy, y + dy], "-", color=c, lw=1)
            for side in ("low", "high"):
                stable, unstable = s[side]
                if unstable is None:  # open: the range goes on past the searched lrs
                    ax.annotate("", (stable * (0.6 if side == "low" else 1.6), y + dy), (stable, y + dy),
                                arrowprops={"arrowstyle": "->", "color": c})  # fmt: skip
                    continue
                lo, hi = sorted((stable, unstable))
                ax.fill_betweenx([y + dy - 0.06, y + dy + 0.06], lo, hi, facecolor="none", edgecolor=c, hatch="////")
    ax.set_xscale("log")
    ax.set_yticks(range(len(variants)), labels)
    ax.set_ylim(len(variants) - 0.5, -0.5)  # top to bottom, half a row of room at each end
    ax.set_xlabel("learning rate")
    ax.grid(axis="x", alpha=0.3)
    ax.set_title(
        f"{study}: stable lr range per variant\nthick = median edges over seeds, thin = each seed,\n"
        "hatched = the bracket (last stable, first unstable lr) each edge lies in",
        fontsize=9,
    )
    fname = f"edges.{fmt}"
    save_figure(fig, out / fname, fmt)
    return fname
