"""The report's figures: one colour per variant everywhere, exactly the stable lrs shaded, nothing drawn
that has nothing to show, cell values on the heatmap, and png/svg/pdf output."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
import pytest
from helpers.tables import GRID, PNG_MAGIC, RULE, lagging_table, seeded, sweep, trial

from bnexp.analysis.edges import add_widths
from bnexp.analysis.figures import BN_COLOURS, stable_runs, variant_palette, write_figures
from bnexp.analysis.figures.common import FigureData, LrColours, plt_module
from bnexp.analysis.figures.curves import draw_curves
from bnexp.analysis.figures.edges import draw_edges
from bnexp.analysis.figures.heatmap import cell_edges, draw_heatmap
from bnexp.analysis.figures.stability import draw_stability, median_line
from bnexp.analysis.figures.stats_lag import draw_stats_lag
from bnexp.analysis.figures.widths import draw_widths
from bnexp.analysis.report import write_report
from bnexp.analysis.stability import StabilityRule, analyse

KEYS = ("bn", "bias", "depth")


def test_each_placement_has_one_colour_whatever_the_study_holds():
    alone = variant_palette([(("bn", "post"), ("bias", "auto"))])
    three = variant_palette([(("bn", b), ("bias", "auto")) for b in ("off", "pre", "post")])
    assert alone[(("bn", "post"), ("bias", "auto"))] == three[(("bn", "post"), ("bias", "auto"))] == "tab:orange"
    assert [three[(("bn", b), ("bias", "auto"))] for b in ("off", "pre")] == [BN_COLOURS["off"], BN_COLOURS["pre"]]
    other = variant_palette([(("bn", "pre"), ("bias", "true")), (("bn", "pre"), ("bias", "auto"))])
    assert other[(("bn", "pre"), ("bias", "true"))] not in BN_COLOURS.values()  # a bias variant: its own colour


def test_stable_spans_never_cross_an_unstable_lr():
    runs = stable_runs(GRID, {1e-4, 1e-3, 1e-1})  # 1e-2 between them is not stable
    assert len(runs) == 2
    (lo1, hi1), (lo2, hi2) = runs
    assert lo1 < 1e-4 and 1e-3 < hi1 < 1e-2 < lo2 < 1e-1 < hi2 < 1.0
    assert hi1 == pytest.approx(10**-2.5) and lo2 == pytest.approx(10**-1.5)  # half a grid step each side
    assert stable_runs(GRID, set()) == []


def test_stability_figure_shades_the_rule_s_stable_points(tmp_path):
    # 2 seeds; lr 1e-2 has one stable seed of two (quorum 0.5: stable), 1e-1 none: a gap inside the range
    trials = seeded([(2, 2), (2, 2), (1, 2), (0, 2), (2, 2)])
    v = analyse(trials, RULE, KEYS)[0]
    stable = {p["lr"] for p in v["points"] if p["stable"]}
    assert stable == {1e-4, 1e-3, 1e-2, 1.0}
    assert stable_runs([p["lr"] for p in v["points"]], stable)[0][1] < 1e-1  # the gap at 0.1 stays unshaded


def test_a_variant_s_bar_is_unbroken_where_only_another_variant_trained():
    """An edge search trains different lrs per variant: pre's bar must not break at an lr only off trained
    (init_scale's pre bars broke at off's bisection points 0.018-0.03 although pre's range has no hole)."""
    import matplotlib.pyplot as plt

    from bnexp.analysis.figures.stability import stable_strip

    off = sweep([0.5, 0.95, 0.95, 0.5, 0.5], bn="off") + [trial(3e-2, 0.5, bn="off", number=9)]  # a bisection
    pre = sweep([0.5, 0.95, 0.95, 0.95, 0.5], bn="pre")  # stable 1e-3 .. 1e-1, no lr between 1e-2 and 1e-1
    variants = analyse(off + pre, RULE, KEYS)
    fig, ax = plt.subplots()
    stable_strip(ax, variants, ["tab:gray", "tab:blue"])
    spans = [(p.get_facecolor(), p.get_x(), p.get_x() + p.get_width()) for p in ax.patches]
    plt.close(fig)
    blue = [(lo, hi) for c, lo, hi in spans if c == matplotlib.colors.to_rgba("tab:blue")]
    assert len(blue) == 1 and blue[0][0] < 1e-3 < 1e-1 < blue[0][1], spans
    assert len(spans) == 2  # off: 1e-3 .. 1e-2 in one span


def test_nothing_diverged_no_divergence_figure_and_the_report_says_so(tmp_path):
    trials = sweep([0.5, 0.95, 0.96, 0.5, 0.3])
    summary = write_report(tmp_path, "calm", trials, RULE, ["echo"])
    files = [f["file"] for f in summary["figures"]]
    assert "divergence.png" not in files and not (tmp_path / "divergence.png").exists()
    assert "No trial diverged." in (tmp_path / "report.md").read_text()
    for f in files:
        assert (tmp_path / f).read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize("fmt,magic", [("svg", b"<?xml"), ("pdf", b"%PDF")])
def test_every_figure_in_the_format_asked(tmp_path, fmt, magic):
    trials = lagging_table()  # two seeds, a diverged trial, both statistics
    variants = analyse(trials, RULE, KEYS)
    figs = write_figures(tmp_path, "lag", variants, trials, RULE, KEYS, fmt=fmt)
    names = [f for f, _ in figs]
    assert names[:4] == [f"stability.{fmt}", f"widths.{fmt}", f"divergence.{fmt}", f"stats_lag.{fmt}"]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(names)
    for f in names:
        assert (tmp_path / f).read_bytes()[: len(magic)] == magic
    with pytest.raises(ValueError, match="png, svg, pdf"):
        write_figures(tmp_path, "lag", variants, trials, RULE, KEYS, fmt="jpg")


def test_heatmap_shows_each_cell_value_and_only_the_keys_it_uses(tmp_path: Path):
    trials = sweep([0.5, 0.95, 0.96, 0.5, 0.3], depth=4) + sweep([0.4, 0.93, 0.5, 0.2, 0.1], depth=8)
    for i, t in enumerate(trials):
        t["number"] = i
    variants = analyse(trials, RULE, KEYS)
    with matplotlib.rc_context({"svg.fonttype": "none"}):  # text stays text in the SVG
        write_figures(tmp_path, "hm", variants, trials, RULE, KEYS, fmt="svg")
    svg = (tmp_path / "heatmap.svg").read_text()
    for value in ("0.50", "0.95", "0.96", "0.93", "0.10"):
        assert f">{value}<" in svg, value
    assert "black box = stable lr" in svg
    assert "diverged" not in svg and "dashed box" not in svg  # nothing diverged, statistics agree: no such key


# ------------------------------------------------------------------ the figure faults of a reader's review

INIT = ("bn", "bias", "depth", "model.init_std")


def _init_scale_study() -> tuple[list[dict], list[dict]]:
    """Three seeds; BN off at init 0.01 and 0.05 both at chance everywhere (drawn on top of each other),
    BN pre at both scales stable over 1e-3 .. 1e-1, with an edge search's bisection lrs per seed (seed s
    alone trained 10**(-3.5 + 0.1 s) and 10**(-0.5 - 0.1 s))."""
    trials = []
    for init in (0.01, 0.05):
        for seed in (0, 1, 2):
            for lr in GRID:
                trials.append(trial(lr, 0.11, bn="off", depth=8, seed=seed, number=len(trials),
                                    **{"model.init_std": init}))  # fmt: skip
            for lr, a in zip(GRID, [0.5, 0.95, 0.96, 0.93, 0.1], strict=True):
                trials.append(trial(lr, a, depth=8, seed=seed, number=len(trials), **{"model.init_std": init}))
            for lr, a in ((10 ** (-3.5 + 0.1 * seed), 0.7), (10 ** (-0.5 - 0.1 * seed), 0.4)):  # bisection lrs
                trials.append(trial(lr, a, depth=8, seed=seed, number=len(trials), **{"model.init_std": init}))
    variants = analyse(trials, RULE, INIT)
    add_widths(variants, trials, RULE, INIT)
    return trials, variants


def _data(trials: list[dict], variants: list[dict], keys: tuple = INIT) -> FigureData:
    return FigureData("study", variants, trials, RULE, keys)


def _px(fig, artist):
    fig.canvas.draw()
    return artist.get_window_extent(fig.canvas.get_renderer())


def test_stability_legend_sits_outside_the_data_and_the_title_is_short():
    trials, variants = _init_scale_study()
    fig = draw_stability(_data(trials, variants))
    try:
        assert len(fig.legends) == 1 and not [ax for ax in fig.axes if ax.get_legend()]
        legend = _px(fig, fig.legends[0])
        for ax in fig.axes:
            assert not legend.overlaps(_px(fig, ax)), ax.get_title()
        whole = fig.bbox
        assert whole.x0 <= legend.x0 and legend.x1 <= whole.x1 and whole.y0 <= legend.y0  # not cut off either
        assert fig._suptitle.get_text().count("\n") <= 1  # two lines at most
    finally:
        plt_module().close(fig)


def test_two_variants_on_top_of_each_other_are_drawn_apart():
    """off-init0.01 and off-init0.05 have identical values at every lr: their marks differ in colour, in shape,
    and in where they sit."""
    trials, variants = _init_scale_study()
    d = _data(trials, variants)
    off = [v for v in variants if v["bn"] == "off"]
    assert len(off) == 2
    fig = draw_stability(d)
    try:
        marks = {}
        for v in off:
            lines = [ln for ln in fig.axes[0].lines if ln.get_marker() == d.marker(v) and ln.get_xdata().size]
            marks[v["label"]] = {(tuple(matplotlib.colors.to_rgba(ln.get_color())), ln.get_marker(),
                                  tuple(ln.get_xdata())) for ln in lines}  # fmt: skip
        a, b = marks.values()
        assert a and b and not a & b
        assert d.marker(off[0]) != d.marker(off[1]) and d.colour(off[0]) != d.colour(off[1])
    finally:
        plt_module().close(fig)


def test_the_stability_line_joins_only_lrs_every_seed_trained():
    """An edge search's bisection lrs differ per seed: a line through them zigzags between seeds."""
    trials, variants = _init_scale_study()
    pre = next(v for v in variants if v["bn"] == "pre")
    recs = _data(trials, variants).recs(pre)
    xs, ys = median_line(recs, {id(r): r["val/acc"] for r in recs})
    assert xs == GRID and ys == [0.5, 0.95, 0.96, 0.93, 0.1]


def test_colours_group_bn_off_against_pre_and_post():
    trials, variants = _init_scale_study()
    d = _data(trials, variants)
    for v in variants:
        r, g, b, _ = matplotlib.colors.to_rgba(d.colour(v))
        if v["bn"] == "off":
            assert abs(r - g) < 0.02 and abs(g - b) < 0.02, v["label"]  # a grey
        else:
            assert b > r + 0.2, v["label"]  # a blue
    post = variant_palette([(("bn", "post"), ("bias", "auto"), ("model.init_std", x)) for x in (0.01, 0.05)])
    for c in post.values():
        r, g, b, _ = matplotlib.colors.to_rgba(c)
        assert r > b + 0.2  # an orange


def test_widths_whisker_holds_every_seed_and_the_legend_names_every_mark():
    trials, variants = _init_scale_study()
    fig = draw_widths(_data(trials, variants))
    try:
        ax_r, ax_w = fig.axes
        dots = [x for ln in ax_w.lines if ln.get_marker() == "o" for x in ln.get_xdata()]
        whiskers = [ln.get_xdata() for ln in ax_w.lines if ln.get_marker() == "|"]
        pre = [v for v in variants if v["bn"] == "pre"]
        assert len(whiskers) == 2 * len(pre) and dots  # one per variant and statistics
        lo, hi = min(min(w) for w in whiskers), max(max(w) for w in whiskers)
        assert all(lo - 1e-9 <= x <= hi + 1e-9 for x in dots)
        for v in pre:
            widths = [s["width"] for s in v["by_statistics"]["population"]["per_seed"]]
            assert any(min(w) == min(widths) and max(w) == max(widths) for w in whiskers), (widths, whiskers)
        assert not [ln for ax in fig.axes for ln in ax.lines if ln.get_marker() == "x"]  # no crosses piled at 0
        texts = " ".join(t.get_text() for ax in fig.axes for t in ax.texts)
        assert "no stable lr in any of 3 seeds" in texts
        labels = [t.get_text() for t in fig.legends[0].get_texts()]
        assert any("each seed's stable range" in t for t in labels)  # the tick marks on the left
        assert any("seeds' range" in t for t in labels)
    finally:
        plt_module().close(fig)


def test_stats_lag_names_the_shaded_corner_in_the_legend_not_over_the_data():
    trials = lagging_table()
    variants = analyse(trials, RULE, KEYS)
    fig = draw_stats_lag(_data(trials, variants, KEYS))
    try:
        assert not [t for ax in fig.axes for t in ax.texts if "only" in t.get_text()]
        assert any("stable by batch statistics only" in t.get_text() for t in fig.legends[0].get_texts())
    finally:
        plt_module().close(fig)


def test_curves_threshold_unlike_any_seed_and_lrs_of_one_decade_apart_by_colour():
    trials = lagging_table()
    variants = analyse(trials, RULE, KEYS)
    d = _data(trials, variants, KEYS)
    fig = draw_curves(d, variants[-1])
    try:
        ax = fig.axes[0]
        threshold = [ln for ln in ax.lines if list(ln.get_ydata()) == [RULE.threshold] * 2]
        assert len(threshold) == 1
        seeds = [ln for ln in ax.lines if ln.get_marker() == "."]
        assert {ln.get_linestyle() for ln in seeds} == {"-", "--"}  # two seeds
        assert all(ln.get_linestyle() != threshold[0].get_linestyle() or ln.get_linewidth() < 2 for ln in seeds)
        assert threshold[0].get_linewidth() >= 2 and threshold[0].get_color() not in {ln.get_color() for ln in seeds}
    finally:
        plt_module().close(fig)
    lrs = LrColours([{"lr": lr} for lr in (1e-5, 1.0)])
    between = [lrs(x) for x in (1e-3, 2e-3, 5e-3, 1e-2)]  # a decade apart at most
    lightness = [float(np.dot(c[:3], [0.2126, 0.7152, 0.0722])) for c in between]
    assert lightness == sorted(lightness)  # a perceptual map: lightness rises with lr, no two look alike
    assert min(b - a for a, b in zip(lightness, lightness[1:], strict=False)) > 0.02
    gaps = [np.abs(np.subtract(a[:3], b[:3])).max() for a, b in zip(between, between[1:], strict=False)]
    assert min(gaps) > 0.05, gaps


def test_heatmap_cells_sit_on_a_log_lr_axis_say_not_trained_and_count_seeds():
    trials, variants = _init_scale_study()
    trials += [trial(1e-2, 0.4, bn="off", depth=4, seed=0, number=999)]  # depth varies; one seed, one lr
    variants = analyse(trials, RULE, INIT)
    add_widths(variants, trials, RULE, INIT)
    fig = draw_heatmap(_data(trials, variants))
    try:
        ax = fig.axes[0]
        assert ax.get_xscale() == "log"
        lrs = sorted({p["lr"] for v in variants for p in v["points"]})
        xe = cell_edges(lrs)
        assert all(a < lr < b for a, b, lr in zip(xe[:-1], xe[1:], lrs, strict=True))  # each lr in its own cell
        assert np.allclose(xe[1:-1], np.sqrt(np.multiply(lrs[:-1], lrs[1:])))  # borders halfway in log lr
        mesh = next(c for c in ax.collections if hasattr(c, "get_coordinates"))
        assert np.allclose(mesh.get_coordinates()[0, :, 0], xe)  # the cells drawn are those: not equal columns
        title = ax.get_title()
        assert "grey = not trained" in title and "no finite result" not in title
        texts = [t.get_text() for t in ax.texts]
        assert "0.40 (1)" in texts and "0.95 (3)" in texts  # seed counts differ: each cell says its count
    finally:
        plt_module().close(fig)


def _edge_variants(n_seeds: int) -> list[dict]:
    trials = []
    for seed in range(n_seeds):
        for lr, a in zip(GRID, [0.5, 0.95, 0.91, 0.5, 0.1], strict=True):
            trials.append(trial(lr, a, seed=seed, number=len(trials)))
    variants = analyse(trials, StabilityRule(threshold=0.93), KEYS)  # one stable lr per seed: brackets touch
    add_widths(variants, trials, StabilityRule(threshold=0.93), KEYS)
    return variants


def test_edges_label_each_seed_with_its_width_and_keep_brackets_apart():
    variants = _edge_variants(3)
    fig = draw_edges("s", variants, lambda label: "tab:blue")
    try:
        ax = fig.axes[0]
        texts = [t.get_text().strip() for t in ax.texts]
        for seed in range(3):
            assert f"seed {seed}: {variants[0]['per_seed'][seed]['width']:.2f} dec" in texts, texts
        assert any(t.startswith("median: ") for t in texts) and "median" in ax.get_title()
        boxes = [c.get_paths()[0].get_extents() for c in ax.collections]
        assert len(boxes) == 6  # two brackets per seed
        hatches = {c.get_hatch() for c in ax.collections}
        assert len(hatches) == 2  # low and high hatched apart
        for i, a in enumerate(boxes):
            for b in boxes[i + 1 :]:
                inter_x = min(a.x1, b.x1) - max(a.x0, b.x0)
                inter_y = min(a.y1, b.y1) - max(a.y0, b.y0)
                assert inter_x <= 1e-12 or inter_y <= 1e-12, (a, b)  # touching, never overlapping
    finally:
        plt_module().close(fig)
    one = draw_edges("s", _edge_variants(1), lambda label: "tab:blue")
    try:
        assert "median" not in one.axes[0].get_title()
        assert not [t for t in one.axes[0].texts if "median" in t.get_text()]
    finally:
        plt_module().close(one)


def test_compare_joins_no_two_studies_and_keeps_its_legend_off_the_points(tmp_path, monkeypatch):
    import pandas as pd

    from bnexp.compare import plot_compare

    rows = [
        ("a/depth", "pre", 4, 4.0),
        ("a/depth", "pre", 12, 3.1),
        ("b/d19", "pre", 19, 1.75),
        ("b/d19", "off", 19, 0.0),
    ]
    table = pd.DataFrame(
        [{"source": s, "model.bn": bn, "model.bias": "auto", "model.depth": d, "width": w, "width_low": w - 0.2,
          "width_high": w + 0.2, "per_seed_width": f"{w - 0.2:.2f} {w:.2f} {w + 0.2:.2f}"} for s, bn, d, w in rows]
    )  # fmt: skip
    import bnexp.analysis.figures as figures

    captured, real_save = {}, figures.save_figure

    def keep(fig, path, fmt=None):
        fig.canvas.draw()
        captured["legend"] = fig.axes[0].get_legend().get_window_extent()
        captured["axes"] = fig.axes[0].get_window_extent()
        captured["lines"] = [(ln.get_linestyle(), list(ln.get_xdata())) for ln in fig.axes[0].lines]
        real_save(fig, path, fmt)

    monkeypatch.setattr(figures, "save_figure", keep)  # the figure itself, drawn, before it is written
    plot_compare(tmp_path / "compare", table, ["model.depth"], "png")
    assert not captured["legend"].overlaps(captured["axes"])
    joined = [xs for ls, xs in captured["lines"] if ls not in ("None", "none", "") and len(xs) > 1]
    assert joined, captured["lines"]  # a's two depths are one study's own axis: joined
    for xs in joined:
        assert max(xs) < 15 or min(xs) > 15, xs  # never from a's depths (4, 12) to b's (19)
