"""`python -m bnexp.compare DIR... --out OUT`: several studies (or `-m` jobs) in one table and one figure.

    python -m bnexp.compare docs/results/depth_ablation docs/results/lr_stability_d19 --out outputs/compare
    python -m bnexp.compare outputs/sweeps/lr_stability --out cmp     # a `bnexp.sweep -m model.init_std=0.02,0.1` dir

Each DIR is a study `bnexp.load` reads (a report dir, a sweep dir, a `bnexp.sweep -m` dir of studies). One row
per variant of each study: its settings (the overrides shared by all of its trials, e.g. model.depth=4,
model.init_std=0.1, and its variant keys), the width in decades (median over seeds), the seeds' range where it
has several, and the rule it was judged by. The settings that differ between rows, other than the BN
placement and bias (the series), are the x axis: width against depth, init std, ... per variant, with the
seeds' range and each seed's width where seeds allow. The key may differ inside one study (a depth ablation) or
between studies. Only design settings are the x axis: settings of where and how a study ran
(bnexp.core.config.EXECUTION_KEYS: trainer.compile, logger.*, data.dir, ...) change no result. Each source
is named by its directory (the `source` column: two studies may share a name), and a directory given twice
is compared once, with a warning. Writes OUT/compare.csv, OUT/compare.md and OUT/compare.{png,svg,pdf}.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path
from typing import Any

from bnexp.cli import UsageError, check_writable_dir, guard

SERIES_KEYS = ("model.bn", "model.bias")  # a variant's placement: one line (and colour) each
NOT_SETTINGS = ("optim.lr", "seed")  # what a study varies inside a variant, not a setting of it
VALUE_COLUMNS = ["n_seeds", "width", "width_low", "width_high", "per_seed_width", "stable_lr_min",
                 "stable_lr_max", "n_holes", "rule"]  # fmt: skip


def _settings(overrides: list[str]) -> dict[str, str]:
    """The overrides every trial of a variant shares (KEY=VALUE), minus what varies inside it."""
    common: dict[str, str] | None = None
    for line in overrides:
        pairs = dict(o.split("=", 1) for o in str(line).split() if "=" in o)
        pairs = {k.lstrip("+~"): v for k, v in pairs.items() if k.lstrip("+~") not in NOT_SETTINGS}
        common = pairs if common is None else {k: v for k, v in common.items() if pairs.get(k) == v}
    return common or {}


def _value(text: Any) -> Any:
    """'4' -> 4, '0.1' -> 0.1, else the text: so a numeric key sorts and plots as a number."""
    if isinstance(text, (int, float)):
        return text
    for cast in (int, float):
        try:
            return cast(text)
        except (TypeError, ValueError):
            pass
    return text


def rows_of(source: str, label: str | None = None) -> list[dict]:
    """One row per variant of the study (or studies) at `source`, named `label` (default: its path)."""
    from bnexp.names import BASE_AXIS_KEYS
    from bnexp.results import load

    r = load(source)
    t = r.trials
    label = label or source
    rows = []
    for v in r.variants_list:
        keys = [k for k in (r.summary.get("variant_keys") or ("bn", "bias", "depth")) if k in v]
        in_variant = t
        for k in keys:
            if k in t:
                in_variant = in_variant[in_variant[k].astype(str) == str(v[k])]
        if "job" in v and "job" in t:
            in_variant = in_variant[in_variant["job"] == v["job"]]
        settings = _settings(list(in_variant["overrides"].dropna())) if "overrides" in t else {}
        for k in keys:
            settings[BASE_AXIS_KEYS.get(k, k)] = str(v[k])
        study = r.summary.get("study") if "job" not in v else r.summary["jobs"][v["job"]].get("study", v["job"])
        name = label if "job" not in v else f"{label}/{v['job']}"
        rule = r.summary.get("rule_describe") or (r.summary.get("jobs", {}).get(v.get("job"), {}).get("rule_describe"))
        seeds = v.get("per_seed") or []
        rng = v.get("width_range") or [None, None]  # the lowest and highest seed's width
        rows.append(
            {
                "source": name,
                "study": study,
                "variant": v["label"],
                **{k: _value(x) for k, x in settings.items()},
                "n_seeds": max(len(seeds), 1),
                "width": v.get("width"),
                "width_low": rng[0],
                "width_high": rng[1],
                "per_seed_width": " ".join(f"{s['width']:.2f}" for s in seeds) if len(seeds) > 1 else "",
                "stable_lr_min": v.get("stable_lr_min"),
                "stable_lr_max": v.get("stable_lr_max"),
                "n_holes": v.get("n_holes"),
                "rule": rule,
            }
        )
    if not rows:
        raise UsageError(f"{source} holds no study with variants (give a sweep or report dir, or a sweep -m dir)")
    return rows


def compare(sources: list[str]) -> tuple[Any, list[str]]:
    """(table, x keys): one row per variant of every source; x keys = the settings that differ between rows,
    other than the series keys (BN placement, bias)."""
    import pandas as pd

    labels = source_labels(sources)
    table = pd.DataFrame([row for s in sources for row in rows_of(s, labels[s])])
    settings = [c for c in table.columns if "." in c and c not in ("source",)]
    _fill_defaults(table, settings)
    design = [c for c in settings if not _execution(c)]  # trainer.compile differing says nothing of a result
    differ = [c for c in design if c not in SERIES_KEYS and table[c].astype(str).nunique(dropna=False) > 1]
    series = [c for c in SERIES_KEYS if c in table]
    order = series + differ + [c for c in settings if c not in series + differ]
    cols = ["source", "study", "variant", *order, *VALUE_COLUMNS]
    table = table[cols].sort_values([*series, *differ, "source"], key=_sort_col, kind="stable")
    return table.reset_index(drop=True), differ


def _execution(key: str) -> bool:
    """A setting of where and how a study ran, not of what it computed: never an x axis."""
    from bnexp.core.config import EXECUTION_KEYS

    return any(key == e or key.startswith(e + ".") for e in EXECUTION_KEYS)


def source_labels(sources: list[str]) -> dict[str, str]:
    """Each source's name in the table: its directory's name, with as many parent dirs as make it unique
    (two `depth_ablation` dirs under different parents stay apart)."""
    parts = {s: Path(s).resolve().parts for s in sources}
    for n in range(1, max((len(p) for p in parts.values()), default=1) + 1):
        labels = {s: "/".join(p[-n:]) for s, p in parts.items()}
        if len(set(labels.values())) == len(labels):
            return labels
    return {s: s for s in sources}


def unique_sources(dirs: list[str]) -> list[str]:
    """`dirs` with a directory given twice (by any spelling of its path) kept once, with a warning."""
    from bnexp.cli import warn

    seen: dict[Path, str] = {}
    for d in dirs:
        key = Path(d).resolve()
        if key in seen:
            warn(f"{d} is the same directory as {seen[key]}: compared once")
            continue
        seen[key] = d
    return list(seen.values())


def _fill_defaults(table: Any, settings: list[str]) -> None:
    """A trial records only the overrides that differ from the defaults: a setting missing from a row is the
    default (bnexp.run's composed config), e.g. model.init_std=0.05 where another study set 0.1."""
    missing = [c for c in settings if table[c].isna().any()]
    if not missing:
        return
    from omegaconf import OmegaConf

    from bnexp.conf import compose

    cfg = compose([])
    for c in missing:
        default = OmegaConf.select(cfg, c, default=None)
        if default is not None:
            table[c] = table[c].astype(object).where(table[c].notna(), _value(default))


def _sort_col(col: Any) -> Any:
    from bnexp.analysis.stability import CATEGORY_ORDER as _CATEGORY_ORDER

    order = _CATEGORY_ORDER.get(col.name.split(".")[-1], ())
    if order:
        return col.map(lambda x: order.index(x) if x in order else len(order))
    return col.map(lambda x: (0, x, "") if isinstance(x, (int, float)) else (1, 0, str(x)))


def _markdown(table: Any, differ: list[str], sources: list[str]) -> str:
    def cell(x: Any) -> str:
        if x is None or (isinstance(x, float) and math.isnan(x)):
            return "–"
        return f"{x:.3g}" if isinstance(x, float) else str(x)

    rules = sorted(set(table["rule"].dropna()))
    head = [
        "# Studies compared",
        "",
        "Sources: " + ", ".join(f"`{s}`" for s in sources) + ".",
        "",
        f"Differing setting(s): {', '.join(f'`{d}`' for d in differ) or 'none (one point per study)'}. "
        "Width in decades: per seed log10(high / low edge), each edge the midpoint of its bracket; the median"
        " over seeds, width_low / width_high the lowest and highest seed's.",
        "",
    ]
    if len(rules) > 1:
        head += [f"**The studies were judged by different rules** ({'; '.join(rules)}): compare with care.", ""]
    cols = list(table.columns)
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    lines += ["| " + " | ".join(cell(r[c]) for c in cols) + " |" for _, r in table.iterrows()]
    return "\n".join(head + lines) + "\n"


def plot_compare(path: Path, table: Any, differ: list[str], fmt: str = "png") -> Path:
    """Width against the differing setting per placement (its fixed colour) and source (its marker), the seeds'
    range as a whisker and each seed's width as a dot where there are several seeds; a line joins one source's
    points only, and the legend sits beside the axes."""
    from bnexp.analysis.figures import plt_module, save_figure, variant_palette

    plt = plt_module()
    series = [c for c in SERIES_KEYS if c in table]
    x_key = differ[0] if differ else "source"
    rest = differ[1:]
    xs_all = list(dict.fromkeys(table[x_key]))
    numeric = all(isinstance(x, (int, float)) for x in xs_all)
    pos = {x: x if numeric else i for i, x in enumerate(xs_all)}
    groups = table.groupby([*series, *rest], sort=False, dropna=False) if series or rest else [((), table)]
    keys = [g if isinstance(g, tuple) else (g,) for g, _ in groups]
    palette = variant_palette(
        list(dict.fromkeys(tuple((c.split(".")[-1], k[i]) for i, c in enumerate(series)) for k in keys))
    )
    fig, ax = plt.subplots(figsize=(8.5, 4.8), layout="constrained")
    handles = _draw_compare(ax, table, groups, series, rest, x_key, pos, palette, numeric)
    if not numeric:
        ax.set_xticks(range(len(xs_all)), [str(x) for x in xs_all], rotation=20 if len(xs_all) > 3 else 0)
    ax.set_xlabel(x_key)
    ax.set_ylabel("width (decades of lr, median over seeds)")
    ax.set_ylim(bottom=-0.1)  # a zero width stays visible on the axis
    ax.grid(True, alpha=0.3)
    # beside the axes, never over a point
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.set_title(f"learning-rate width against {x_key}\n(whisker: range over seeds; dots: each seed)",
                 fontsize=10)  # fmt: skip
    out = path.with_suffix(f".{fmt}")
    save_figure(fig, out, fmt)
    return out


def _draw_compare(ax: Any, table: Any, groups: Any, series: list[str], rest: list[str], x_key: str, pos: dict,
                  palette: dict, numeric: bool) -> list:  # fmt: skip
    """Each placement (colour) of each source (marker): its widths, the seeds' range as a whisker, each seed as
    a dot. A line joins only one source's own points along a design setting: never two studies, never the
    sources themselves. Returns the legend's handles: placements, sources, second settings."""
    from matplotlib.lines import Line2D

    markers, styles = "osD^v<>P", ("-", "--", ":", "-.")
    sources = list(dict.fromkeys(table["source"]))
    src_marker = {s: markers[i % len(markers)] for i, s in enumerate(sources)}
    rests = list(dict.fromkeys(tuple(k if isinstance(k, tuple) else (k,))[len(series) :] for k, _ in groups))
    span = (max(pos.values()) - min(pos.values())) if numeric and len(pos) > 1 else 1.0
    cells = [(key, src) for key, g in groups for src in dict.fromkeys(g["source"])]
    handles, seen = [], set()
    ci = 0
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        ck = tuple((c.split(".")[-1], key[i]) for i, c in enumerate(series))
        colour = palette.get(ck, "0.3")
        rest_key = key[len(series) :]
        style = styles[rests.index(rest_key) % len(styles)]
        for src, gs in g.groupby("source", sort=False):
            dx = (ci - (len(cells) - 1) / 2) * 0.012 * span  # a small sideways nudge: whiskers at one x apart
            ci += 1
            gs = gs.sort_values(x_key, key=_sort_col)
            x = [pos[v] + dx for v in gs[x_key]]
            joined = x_key != "source" and len(x) > 1
            ax.plot(x, gs["width"], style if joined else "none", marker=src_marker[src], color=colour, ms=6, lw=1.6)
            lo, hi = gs["width_low"], gs["width_high"]
            has = lo.notna() & hi.notna()
            if has.any():
                ax.vlines([xx for xx, h in zip(x, has, strict=True) if h], lo[has], hi[has], color=colour, lw=1.2)
            for xx, per in zip(x, gs["per_seed_width"], strict=True):
                vals = [float(v) for v in str(per).split()] if isinstance(per, str) and per else []
                ax.plot([xx] * len(vals), vals, "o", mfc="white", mec=colour, ms=4, ls="none")
        label = " ".join(str(k) for k in key[: len(series)])
        if label not in seen:
            seen.add(label)
            handles.append(Line2D([], [], color=colour, lw=6, label=label))
    if len(sources) > 1:
        handles += [Line2D([], [], marker=src_marker[s], color="0.3", ls="none", label=str(s)) for s in sources]
    if len(rests) > 1:
        handles += [Line2D([], [], color="0.3", ls=styles[i % len(styles)],
                           label=", ".join(f"{c}={v}" for c, v in zip(rest, r, strict=True)))
                    for i, r in enumerate(rests)]  # fmt: skip
    return handles


FORMATS = ("png", "svg", "pdf")


def main(argv: list[str] | None = None) -> None:
    """CLI: compare studies; OUT/compare.csv, compare.md and the figure."""
    p = argparse.ArgumentParser(
        prog="python -m bnexp.compare",
        description="Join several studies (report dirs, sweep dirs, `bnexp.sweep -m` dirs) into one table and"
        " one figure: stable width against the setting that differs between them, per variant.",
    )
    p.add_argument("dirs", nargs="+", metavar="DIR", help="report, sweep or `bnexp.sweep -m` dirs")
    p.add_argument("--out", required=True, help="directory for compare.csv, compare.md and the figure")
    p.add_argument("--format", default="png", choices=FORMATS, help="the figure's file format (default png)")
    a = p.parse_args(argv)

    def go() -> None:
        check_writable_dir(a.out, "--out")
        dirs = unique_sources(a.dirs)
        table, differ = compare(dirs)
        out = Path(a.out)
        out.mkdir(parents=True, exist_ok=True)
        from bnexp.files import write_text_atomic

        write_text_atomic(out / "compare.csv", table.to_csv(index=False))
        write_text_atomic(out / "compare.md", _markdown(table, differ, dirs))
        fig = plot_compare(out / "compare", table, differ, a.format)
        print(f"{len(table)} variants from {len(dirs)} source(s); x = {differ[0] if differ else 'source'}")
        print(f"wrote {out / 'compare.csv'}, {out / 'compare.md'}, {fig}")

    guard(go, prog="python -m bnexp.compare", out_key="--out")


if __name__ == "__main__":
    main(sys.argv[1:])
