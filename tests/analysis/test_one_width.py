"""One width, said once: every output of one study gives each variant the same width.

The study is the committed three-seed edge search at depth 19, re-judged at threshold 0.95 (no training): the
case where report.md once printed pre's per-seed widths as 0.00, 0.00, 0.75 in one table and 0.75 [0.75, 1.06]
in another, and post's 0.00 with an interval [0.00, 1.00]. Read back from report.md (every table), summary.json,
`bnexp.load` (`.variants`, `.edges`), `python -m bnexp.compare` and the W&B summary run's offline record.
"""

from __future__ import annotations

import csv
import json
import re
import statistics
from pathlib import Path

import pytest
from helpers.env import REPO, bnexp, compose_cfg
from helpers.wandb_offline import offline_runs, read_offline_run

import bnexp as bnexp_pkg
from bnexp.analysis.report import load_trials_csv
from bnexp.tracking.sweep_summary import log_sweep_summary

STUDY = REPO / "docs" / "results" / "edges_d19"


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp() / "wandb_home"  # W&B's config and cache not in the real home
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(base / sub))


def _tables(md: str) -> dict[str, list[dict[str, str]]]:
    """report.md's tables by the section they sit in: a list of {column: cell} per row."""
    out: dict[str, list[dict[str, str]]] = {}
    section, head = "", None
    for line in md.splitlines():
        if line.startswith("## "):
            section, head = line[3:], None
        elif line.startswith("|") and head is None:
            head = [c.strip() for c in line.strip("|").split("|")]
        elif line.startswith("|") and not line.startswith("|---"):
            cells = [c.strip() for c in line.strip("|").split("|")]
            row: dict[str, str] = {}
            for k, c in zip(head, cells, strict=True):
                row.setdefault(k, c)  # a repeated column name (width by each statistics): the first, the rule's
            out.setdefault(section, []).append(row)
        elif not line.startswith("|"):
            head = None
    return out


def _number(cell: str) -> float:
    return float(re.match(r"[+-]?\d+\.\d+", cell).group())  # '1.75 [1.63, 2.00]' -> 1.75


def _per_seed(cell: str) -> list[float]:
    return [float(x) for x in re.findall(r"s\d+ (\d+\.\d+)", cell)]  # 's0 1.75, s1 2.00' -> [1.75, 2.0]


def test_every_output_of_a_rejudged_study_gives_the_same_width_per_variant(tmp_path: Path) -> None:
    out = tmp_path / "rejudged"
    r = bnexp("report", str(STUDY), "--threshold", "0.95", "--out", str(out))
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    width = {v["label"]: round(v["width"], 2) for v in summary["variants"]}
    seeds = {v["label"]: [round(s["width"], 2) for s in v["per_seed"]] for v in summary["variants"]}
    assert set(width) == {"off-auto-d19", "pre-auto-d19", "post-auto-d19"}
    for v in summary["variants"]:  # the width is the median of the seeds' widths, its range theirs
        assert v["width"] == pytest.approx(statistics.median(s["width"] for s in v["per_seed"]))
        assert v["width_range"] == pytest.approx([min(seeds[v["label"]]), max(seeds[v["label"]])], abs=0.006)
        assert "stable_decades" not in v and "stable_decades_ci" not in v

    # report.md: the variants table, the edges table, the statistics table (the rule's: population) and the
    # BN vs no BN table say the same width, and the per-seed cells the same seeds' widths
    tables = _tables((out / "report.md").read_text())
    for row in tables["Variants"]:
        assert _number(row["width (decades)"]) == width[row["variant"]], row
        assert _per_seed(row["per-seed width"]) == seeds[row["variant"]], row
    for row in tables["Edges"]:
        if row["width (decades)"] != "–":
            assert _number(row["width (decades)"]) == width[row["variant"]], row
    for row in tables["Population, batch and recalibrated statistics"]:
        assert _number(row["width"]) == width[row["variant"]], row
        assert _per_seed(row["per seed"]) == seeds[row["variant"]], row
    for row in tables["BN vs no BN"]:
        assert _number(row["width"]) == width[f"{row['bn']}-auto-d19"]
        assert _number(row["off width"]) == width["off-auto-d19"]
    assert "95%" not in (out / "report.md").read_text()  # no bootstrap "interval" of three seeds

    # bnexp.load: .variants and .edges (each seed's width, the median of them per variant)
    res = bnexp_pkg.load(out)
    assert dict(zip(res.variants["label"], res.variants["width"].round(2), strict=True)) == width
    per_seed = res.edges.drop_duplicates(["variant", "seed"])
    for label, g in per_seed.groupby("variant"):
        assert round(statistics.median(g["width"]), 2) == width[label], label

    # python -m bnexp.compare
    r = bnexp("compare", str(out), "--out", str(tmp_path / "cmp"))
    assert r.returncode == 0, r.stderr[-3000:]
    with open(tmp_path / "cmp" / "compare.csv") as f:
        assert {row["variant"]: round(float(row["width"]), 2) for row in csv.DictReader(f)} == width

    # the W&B sweep-summary run, offline, read back from its record
    cfg = compose_cfg(["logger=wandb", "logger.mode=offline"])
    log_sweep_summary("edges_d19", out, load_trials_csv(out / "trials.csv"), summary, {"sweep": {}}, cfg)
    (path,) = offline_runs(out)
    sm = read_offline_run(path, wait_s=30)["summary"]
    for label, w in width.items():
        assert round(sm[f"width/{label}"], 2) == w and round(sm[f"width_population/{label}"], 2) == w, label
        assert [round(sm[f"width_seed{s}_population/{label}"], 2) for s in (0, 1, 2)] == seeds[label]
