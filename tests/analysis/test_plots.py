"""The report's figures: one colour per variant everywhere, exactly the stable lrs shaded, nothing drawn
that has nothing to show, cell values on the heatmap, and png/svg/pdf output."""

from __future__ import annotations

from pathlib import Path

import matplotlib
import pytest
from helpers.tables import GRID, PNG_MAGIC, RULE, lagging_table, seeded, sweep, trial

from bnexp.analysis.figures import BN_COLOURS, stable_runs, variant_palette, write_figures
from bnexp.analysis.report import write_report
from bnexp.analysis.stability import analyse

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
