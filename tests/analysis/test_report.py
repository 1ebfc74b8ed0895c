"""The report files written from hand-made trial tables: summary.json, trials.csv, figures, report.md."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
from helpers.tables import PNG_MAGIC, RULE, lagging_table, seeded, sweep, trial

from bnexp.analysis.report import load_trials_csv, write_report
from bnexp.analysis.stability import StabilityRule, is_stable


def _strict_json(path: Path) -> dict:
    def no_nan(name: str) -> None:
        raise AssertionError(f"non-standard JSON constant {name}")

    return json.loads(path.read_text(), parse_constant=no_nan)


def _assert_png(path: Path) -> None:
    data = path.read_bytes()
    assert len(data) > 1000 and data[:8] == PNG_MAGIC, path


def _same(a: object, b: object) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    return a == b and type(a) is type(b)


def full_table() -> list[dict]:
    trials = []
    for depth in (7, 19):
        trials += seeded([(0, 2), (2, 2), (2, 2), (1, 2), (0, 2)])
        for t in trials[-10:]:
            t["bn"], t["depth"] = "off", depth
        trials += seeded([(2, 2), (2, 2), (2, 2), (2, 2), (1, 2)])
        for t in trials[-10:]:
            t["depth"] = depth
    trials[-1]["diverged"], trials[-1]["val/acc"] = True, float("nan")
    trials[-3]["val/acc_batchstats"] = 0.91
    trials.append(trial(3.0, None, state="FAIL", error="CUDA OOM, batch 64\nretry", depth=19))
    for i, t in enumerate(trials):
        t["number"] = i
    return trials


def test_write_report_files(tmp_path: Path) -> None:
    trials = full_table()
    cmds = ["python -m bnexp.sweep sweeps/lr_grid.yaml", "python -m bnexp.report --study lr_grid"]
    summary = write_report(tmp_path, "lr_grid", trials, RULE, cmds)

    for name in ("summary.json", "trials.csv", "stability.png", "heatmap.png", "report.md"):
        assert (tmp_path / name).stat().st_size > 0, name
    figures = [f["file"] for f in summary["figures"]]
    assert figures[:5] == ["stability.png", "widths.png", "divergence.png", "stats_lag.png", "heatmap.png"]
    assert figures[5:-1] == [f"curves-{v['label']}.png" for v in summary["variants"]]  # one per variant
    assert figures[-1] == "edges.png"  # each variant's range as an interval with its edge brackets
    for f in figures:
        _assert_png(tmp_path / f)
    assert set(summary["files"]) == {"summary.json", "trials.csv", "report.md", *figures}  # no curves: no curves.csv
    assert not list(tmp_path.glob(".*.tmp"))  # every file renamed into place

    js = _strict_json(tmp_path / "summary.json")
    assert js == summary
    assert {"study", "rule", "rule_describe", "n_trials", "variants", "comparison"} <= set(js)
    assert js["study"] == "lr_grid" and js["rule"]["threshold"] == 0.9 and js["rule"]["mode"] == "threshold"
    assert js["n_trials"] == 40 and js["n_failed"] == 1
    labels = [v["label"] for v in js["variants"]]
    assert labels == ["off-auto-d7", "off-auto-d19", "pre-auto-d7", "pre-auto-d19"]  # sorted by key: bn first
    for v in js["variants"]:
        assert {
            "n_trials",
            "n_stable",
            "n_diverged",
            "n_failed",
            "width",
            "width_range",
            "stable_span",
            "holes",
            "span_with_holes",
            "points",
        } <= set(v)
        assert {"lr", "n_seeds", "frac_stable", "values", "mean", "stable", "diverged_any"} <= set(v["points"][0])
    pre19 = js["variants"][-1]
    assert pre19["n_failed"] == 1 and pre19["n_diverged"] == 1 and pre19["stable_span"] == pytest.approx(4.0)
    assert "stable_decades_ci" not in pre19 and "stable_decades" not in pre19  # one width, no bootstrap
    # widths: off s0 3.0, s1 2.0 (brackets' midpoints, half a decade past the stable lrs), median 2.5; pre
    # s0 4.0 (both edges open: the searched range's ends), s1 3.5, median 3.75
    assert {(c["depth"], c["bn"]): c["delta_width"] for c in js["comparison"]} == pytest.approx(
        {(7, "pre"): 1.25, (19, "pre"): 1.25}
    )
    assert pre19["width"] == pytest.approx(3.75) and pre19["width_range"] == pytest.approx([3.5, 4.0])

    md = (tmp_path / "report.md").read_text()
    assert "| variant | trials | stable | diverged | pruned | failed |" in md
    assert "| pre-auto-d19 | 10 | 9 | 1 | 0 | 1 | 3.75 [3.50, 4.00] | s0 4.00, s1 3.50 | 0.0001 – 1 | 4.00 |" in md
    assert "| 19 | auto | pre | 3.75 | 2.50 | +1.25 | 0 / 0 |" in md
    assert "![stability](stability.png)" in md and "![heatmap](heatmap.png)" in md
    for f in summary["figures"]:  # each figure with its one-line caption under it
        assert f"]({f['file']})\n\n*{f['caption']}*\n" in md
        assert "\n" not in f["caption"] and len(f["caption"]) > 40
    assert "```bash\n" + "\n".join(cmds) + "\n```" in md
    # two seeds per lr: per-seed widths listed and their range said to be no confidence interval
    # seed 1 diverged at lr 1: its high edge is [0.1, 1] (3.5 decades), seed 0's is open (4)
    assert "| s0 4.00, s1 3.50 |" in md and "not a confidence interval" in md and "95%" not in md
    assert [s["seed"] for s in pre19["per_seed"]] == [0, 1]


def test_trials_csv_round_trip(tmp_path: Path) -> None:
    trials = full_table()
    trials[0]["extra_only_here"] = "x y"
    trials[1]["wall_s"], trials[2]["val/acc"] = 123.456789012345, 0.1 + 0.2  # full precision must survive
    trials[3]["flag"], trials[3]["ratio"] = True, float("inf")  # unknown columns: types inferred
    write_report(tmp_path, "rt", trials, RULE, [])
    back = load_trials_csv(tmp_path / "trials.csv")
    assert len(back) == len(trials)
    for orig, got in zip(trials, back, strict=True):
        for k, v in orig.items():
            assert _same(v, got[k]), (k, v, got[k])
        assert isinstance(got["stable"], bool)
        assert got["stable"] == is_stable(orig, RULE)
    assert back[0]["bias"] == "auto" and back[1]["extra_only_here"] is None
    assert back[-1]["error"] == "CUDA OOM, batch 64\nretry"  # quoting survives
    # a report rebuilt from the csv says the same thing
    again = write_report(tmp_path / "again", "rt", back, RULE, [])
    first = json.loads((tmp_path / "summary.json").read_text())
    assert again["variants"] == first["variants"]


def test_single_depth_has_no_heatmap(tmp_path: Path) -> None:
    write_report(tmp_path, "one", sweep([0.5, 0.95, 0.95, 0.95, 0.3]), RULE, ["echo"])
    assert not (tmp_path / "heatmap.png").exists()
    assert "heatmap" not in (tmp_path / "report.md").read_text()
    _assert_png(tmp_path / "stability.png")


@pytest.mark.parametrize(
    "trials",
    [
        pytest.param([], id="empty"),
        pytest.param([trial(0.1, 0.95)], id="one-trial"),
        pytest.param(sweep([0.1] * 5), id="none-stable"),
        pytest.param(
            [{**t, "diverged": True, "val/acc": float("nan")} for t in sweep([0.95] * 5)],
            id="all-diverged",
        ),
        pytest.param(sweep([None, float("nan"), None, 0.95, None]), id="none-and-nan"),
        pytest.param([trial(0.1, None, state="FAIL")], id="only-failed"),
        pytest.param(sweep([0.5] * 5, depth=7) + [trial(0.1, None, state="FAIL")], id="failed-other-depth"),
    ],
)
def test_write_report_edge_cases(tmp_path: Path, trials: list[dict]) -> None:
    summary = write_report(tmp_path, "edge", trials, RULE, ["echo"])
    js = _strict_json(tmp_path / "summary.json")
    assert js == summary
    _assert_png(tmp_path / "stability.png")
    assert len(load_trials_csv(tmp_path / "trials.csv")) == len(trials)
    assert sum(v["n_stable"] for v in js["variants"]) == sum(is_stable(t, RULE) for t in trials)


def test_write_report_relative_mode(tmp_path: Path) -> None:
    rel = StabilityRule(mode="relative", epsilon=0.02)
    trials = sweep([0.70, 0.80, 0.79, 0.75, 0.5])
    write_report(tmp_path, "rel", trials, rel, [])
    back = load_trials_csv(tmp_path / "trials.csv")
    assert [t["stable"] for t in back] == [False, True, True, False, False]
    assert "best" in (tmp_path / "report.md").read_text()


def test_report_judges_both_ways_and_says_where_they_differ(tmp_path: Path) -> None:
    summary = write_report(tmp_path, "lag", lagging_table(), RULE, ["echo"])
    off, pre = summary["variants"]
    assert pre["label"] == "pre-auto-d4" and pre["statistics_differ"] and not off["statistics_differ"]
    assert pre["by_statistics"]["population"]["stable_span"] == pytest.approx(1.0)
    assert pre["by_statistics"]["batch"]["stable_span"] == pytest.approx(2.0)
    assert summary["statistics"] == {"population": "val/acc", "batch": "val/acc_batchstats", "recal": "val/acc_recal"}
    md = (tmp_path / "report.md").read_text()
    assert "| pre-auto-d4 | 0.001 – 0.01 | 2.00 | s0 2.00, s1 2.00 | 0.001 – 0.1 | 3.00 | s0 3.00, s1 3.00 |" in md
    (line,) = [ln for ln in md.splitlines() if ln.startswith("- **")]  # one line, for the variant that differs
    assert line == (
        "- **pre-auto-d4**: population statistics 0.001 – 0.01 (width 2.00 decades), batch statistics"
        " 0.001 – 0.1 (width 3.00 decades); stable only by batch statistics at lr 0.1."
    )


def test_report_says_when_both_ways_agree(tmp_path: Path) -> None:
    write_report(tmp_path, "same", sweep([0.5, 0.95, 0.95, 0.5, 0.5]), RULE, ["echo"])
    md = (tmp_path / "report.md").read_text()
    assert "Both ways give the same stable learning rates for every variant." in md
    assert not [ln for ln in md.splitlines() if ln.startswith("- **")]
    assert "only recombines the seeds that ran" not in md  # one seed: no interval to explain


def test_curves_csv_keeps_the_histories_out_of_trials_csv(tmp_path: Path) -> None:
    trials = lagging_table()
    summary = write_report(tmp_path, "lag", trials, RULE, [])
    assert "curves.csv" in summary["files"]
    header = (tmp_path / "trials.csv").read_text().splitlines()[0].split(",")
    assert "val_history" not in header and "diverged_step" in header
    with open(tmp_path / "curves.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    n_validations = sum(len(t.get("val_history") or []) for t in trials)
    assert len(rows) == n_validations == 2 * (4 * 2 + 5 * 3)  # 2 seeds; off: 4 lrs, 2 validations; pre: 5, 3
    assert list(rows[0])[:7] == ["number", "variant", "lr", "seed", "step", "val/acc", "val/acc_batchstats"]
    assert rows[0]["variant"] == "off-auto-d4" and rows[0]["val/acc"] == "0.5"
    # read back, each trial has its history again: a last-k rule re-judged from the csv alone agrees
    back = load_trials_csv(tmp_path / "trials.csv")
    assert [t.get("val_history", []) for t in back] == [t.get("val_history", []) for t in trials]
    last2 = StabilityRule(threshold=0.9, last_k=2)
    again = write_report(tmp_path / "again", "lag", back, last2, [])
    direct = write_report(tmp_path / "direct", "lag", trials, last2, [])
    assert again["variants"] == direct["variants"]
    # every pre trial was below 0.9 one validation before its last: nothing pre is stable over the last 2
    assert direct["variants"][1]["n_stable"] == 0 and direct["variants"][0]["n_stable"] == 4


def test_a_second_axis_names_its_bn_no_bn_rows_and_retried_failures_are_told_apart(tmp_path: Path) -> None:
    """A grid over `model.init_std`: the BN vs no-BN table has an init_std column (its rows were three
    identical "8 | auto | pre" lines); BN off has no recalibrated view to record, and says why. A FAIL attempt
    whose point a later attempt completed (a stopped trial, retried) is counted as retried, apart from one
    whose point has no result."""
    trials = []
    for std in ("0.05", "0.2"):
        for bn in ("off", "pre"):
            accs = [0.5, 0.95, 0.95, 0.5, 0.5] if bn == "off" and std == "0.2" else [0.5] * 5
            accs = [0.5, 0.95, 0.95, 0.95, 0.5] if bn == "pre" else accs
            trials += [{**t, "model.init_std": std} for t in sweep(accs, bn=bn, depth=8)]
    for t in trials:  # as bnexp records them: recalibrated statistics only where there is BN to recalibrate
        if t["bn"] == "pre":
            t["val/acc_recal"] = t["val/acc"]
    pre = [t for t in trials if t["bn"] == "pre" and t["model.init_std"] == "0.2"]
    trials.append({**pre[2], "state": "FAIL", "val/acc": None})  # stopped, then retried: pre[2] completed it
    trials.append({**pre[2], "state": "FAIL", "val/acc": None, "seed": 1})  # no attempt of seed 1 completed
    for i, t in enumerate(trials):
        t["number"] = i
    keys = ("bn", "bias", "depth", "model.init_std")
    summary = write_report(tmp_path, "s", trials, RULE, ["echo"], keys)
    md = (tmp_path / "report.md").read_text()
    table = md[md.index("## BN vs no BN") :].splitlines()
    assert "| model.init_std | bn | width |" in table[2]
    assert [r.split(" | ")[2:5] for r in table[4:6]] == [["0.05", "pre", "3.00"], ["0.2", "pre", "3.00"]]
    assert table[5].split(" | ")[5:7] == ["2.00", "+1.00"]  # off trains at 0.2 only
    assert (summary["n_failed"], summary["n_failed_retried"]) == (2, 1)
    assert "2 failed attempts, 1 of them retried to completion" in md
    assert "| 2 (1 retried) |" in md
    rows = [r for r in md.splitlines() if r.startswith("| off-auto-d8-") and "population" in r]
    assert len(rows) == 2 and all("no BN: as population" in r for r in rows), rows  # not "not recorded"
    assert "not recorded" not in md


def test_a_seed_stable_again_past_an_unstable_lr_is_said(tmp_path: Path) -> None:
    """The bench study's pre seed 2 (depth 8, 800 steps, channels_last): stable at 0.1, not at 0.178, stable
    again at 0.316. Its high bracket holds the run around its best lr, [0.1, 0.178]; the report and
    summary.json say where stability came back: a chaotic band, not an edge."""
    from bnexp.analysis.edges import seed_edges

    lrs = [1e-3, 1e-2, 0.1, 0.177828, 0.316228, 0.562342]
    trials = sweep([0.97, 0.97, 0.97, 0.77, 0.92, 0.45], lrs=lrs)
    e = seed_edges(trials, RULE)
    assert e["high"] == [0.1, 0.177828] and e["stable_past"] == {"low": [], "high": [0.316228]}
    summary = write_report(tmp_path, "band", trials, RULE, ["echo"])
    (v,) = summary["variants"]
    assert v["edges"]["per_seed"]["0"]["stable_past"]["high"] == [0.316228]
    assert "high [0.1, 0.178], stable again at 0.316" in (tmp_path / "report.md").read_text()
    one_run = seed_edges(sweep([0.97, 0.97, 0.97, 0.77, 0.5, 0.45], lrs=lrs), RULE)
    assert one_run["stable_past"] == {"low": [], "high": []}
