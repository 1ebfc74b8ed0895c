"""heatmap.png: the mean final metric per variant (rows) and lr (columns), stable cells boxed, diverged
marked.

The columns sit on a log-lr axis, each cell as wide as the lrs it stands for (from the geometric midpoint to
its lower neighbour to the one to its upper neighbour), so an edge search's bisection lrs are narrow cells
where they lie, not equal columns that hide how far apart the lrs are. Light grey is an lr this variant did
not train; white with a red x, one it trained where every seed diverged. Where the cells average different
numbers of seeds, each cell says how many.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.analysis.figures.common import FigureData, plt_module, rule_stats, save_figure

NOT_TRAINED = "0.85"


def cell_edges(lrs: list[float]) -> np.ndarray:
    """The cells' borders on the lr axis: geometric midpoints between neighbours, half a step past each end."""
    logs = np.log10(lrs)
    if len(logs) == 1:
        return 10 ** np.array([logs[0] - 0.25, logs[0] + 0.25])
    mids = (logs[:-1] + logs[1:]) / 2
    return 10 ** np.concatenate([[logs[0] - (mids[0] - logs[0])], mids, [logs[-1] + (logs[-1] - mids[-1])]])


def plot_heatmap(path: Path, d: FigureData) -> None:
    """Write draw_heatmap's figure to `path` (its suffix: the format)."""
    save_figure(draw_heatmap(d), path)


def draw_heatmap(d: FigureData) -> Any:
    """Mean final metric per variant (rows) and lr (columns, proportional to log lr), stable cells boxed,
    diverged marked, untrained cells grey, seed counts per cell where they differ."""
    import matplotlib
    from matplotlib.patches import Rectangle

    plt = plt_module()
    study, variants, rule = d.study, d.variants, d.rule
    lrs = sorted({p["lr"] for v in variants for p in v["points"]}) or [1e-3]
    col = {lr: j for j, lr in enumerate(lrs)}
    xe = cell_edges(lrs)
    grid = np.full((len(variants), len(lrs)), np.nan)
    for i, v in enumerate(variants):
        for p in v["points"]:
            if p["mean"] is not None:
                grid[i, col[p["lr"]]] = p["mean"]
    counts = Counter(p["n_seeds"] for v in variants for p in v["points"])
    show_n = len(counts) > 1  # cells average different numbers of seeds: say how many in each
    decades = np.log10(xe[-1] / xe[0])
    fig, ax = plt.subplots(figsize=(min(max(7.0, 2.4 * decades + 3), 18), max(3.2, 0.45 * len(variants) + 2.2)),
                           layout="constrained")  # fmt: skip
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=NOT_TRAINED)
    finite = grid[np.isfinite(grid)]
    unit = finite.size == 0 or (finite.min() >= 0 and finite.max() <= 1)
    im = ax.pcolormesh(xe, np.arange(len(variants) + 1) - 0.5, np.ma.masked_invalid(grid), cmap=cmap,
                       vmin=0 if unit else None, vmax=1 if unit else None)  # fmt: skip
    ax.set_xscale("log")
    other = "batch" if rule_stats(rule) == "population" else "population"
    used = {"diverged": False, "other": False, "stable": False, "missing": False}
    for i, v in enumerate(variants):
        other_lrs = set(((v.get("by_statistics") or {}).get(other) or {}).get("stable_lrs") or [])
        used["missing"] |= len(v["points"]) < len(lrs)
        for p in v["points"]:
            j = col[p["lr"]]
            x0, x1 = xe[j], xe[j + 1]
            xc = np.sqrt(x0 * x1)
            narrow = np.log10(x1 / x0) < 0.3
            val = grid[i, j]
            if not np.isfinite(val):  # trained, but no finite result (every seed diverged): not "not trained"
                ax.add_patch(Rectangle((x0, i - 0.5), x1 - x0, 1, facecolor="white", edgecolor="none"))
            else:  # each cell's value, dark text on the light end of the colour map
                txt = f"{val:.2f}" + (f" ({p['n_seeds']})" if show_n else "")
                ax.text(xc, i + (0.18 if p["diverged_any"] and not narrow else 0), txt, ha="center", va="center",
                        fontsize=6 if narrow else 6.5, rotation=90 if narrow else 0,
                        color="k" if unit and val > 0.6 else "w")  # fmt: skip
            if p["diverged_any"]:
                used["diverged"] = True
                txt = "x" if p["n_diverged"] == p["n_seeds"] else f"x{p['n_diverged']}"
                ax.text(xc, i - (0.3 if np.isfinite(val) else 0), txt, ha="center", va="center", color="tab:red",
                        fontsize=8, fontweight="bold")  # fmt: skip
            if p.get("stable"):
                used["stable"] = True
                ax.add_patch(Rectangle((x0, i - 0.5), x1 - x0, 1, fill=False, ec="k", lw=1.8))
            elif p["lr"] in other_lrs:
                used["other"] = True
                inset = (x1 / x0) ** 0.08
                ax.add_patch(Rectangle((x0 * inset, i - 0.42), x1 / inset - x0 * inset, 0.84, fill=False, ec="k",
                                       lw=1.1, ls="--"))  # fmt: skip
    ax.set_xlim(xe[0], xe[-1])
    ax.set_ylim(len(variants) - 0.5, -0.5)
    ax.set_xticks(lrs, minor=True)  # a minor tick at every trained lr; decades labelled
    ax.tick_params(axis="x", which="minor", length=4, labelbottom=False)
    ax.set_yticks(range(len(variants)), [v["label"] for v in variants], fontsize=7)
    ax.set_xlabel("learning rate (each cell spans the lrs it stands for; minor ticks: the lrs trained)")
    fig.colorbar(im, ax=ax, label=f"mean final {rule.metric}")
    keys = {  # only the marks this figure uses
        "stable": "black box = stable lr",
        "other": f"dashed box = stable only by {other} statistics",
        "diverged": "x = diverged (xN: N seeds diverged)",
        "missing": "grey = not trained",
    }
    key_txt = "; ".join(t for k, t in keys.items() if used[k])
    seeds_txt = "(N) = seeds averaged" if show_n else f"each cell the mean of {next(iter(counts), 0)} seed(s)"
    ax.set_title(f"{study}: mean {rule.metric} per variant and lr, {seeds_txt}" + (f"\n{key_txt}" if key_txt else ""),
                 fontsize=9)  # fmt: skip
    return fig
