"""The W&B sweep-summary run of a hand-made study, offline, read back from its .wandb file: it carries the
report's widths judged both ways, the per-seed widths, the learning curves and every figure with its caption."""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers.env import compose_cfg
from helpers.tables import RULE, lagging_table
from helpers.wandb_offline import offline_runs, read_offline_run

from bnexp.analysis.report import write_report
from bnexp.tracking.sweep_summary import log_sweep_summary


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp() / "wandb_home"  # W&B's config and cache not in the real home
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(base / sub))


def test_summary_run_holds_both_widths_per_seed_widths_curves_and_figures(tmp_path: Path) -> None:
    trials = lagging_table()
    summary = write_report(tmp_path, "lag", trials, RULE, ["echo"])
    cfg = compose_cfg(["logger=wandb", "logger.mode=offline"])
    log_sweep_summary("lag", tmp_path, trials, summary, {"sweep": {"name": "lag"}}, cfg)
    (path,) = offline_runs(tmp_path)
    run = read_offline_run(path, wait_s=30)
    assert run["job_type"] == "sweep-summary" and run["exit_code"] == 0
    sm = run["summary"]

    for v in summary["variants"]:  # the same numbers as summary.json, both ways
        assert sm[f"width/{v['label']}"] == pytest.approx(v["width"])
        for stats, key in (("population", "width_population"), ("batch", "width_batch")):
            assert sm[f"{key}/{v['label']}"] == pytest.approx(v["by_statistics"][stats]["width"])
            for s in v["by_statistics"][stats]["per_seed"]:
                assert sm[f"width_seed{s['seed']}_{stats}/{v['label']}"] == pytest.approx(s["width"])
    assert sm["width_population/pre-auto-d4"] == pytest.approx(2.0)  # brackets' midpoints: 10^-3.5 .. 10^-1.5
    assert sm["width_batch/pre-auto-d4"] == pytest.approx(3.0)
    assert sm["rule"]["threshold"] == summary["rule"]["threshold"]  # the rule it judged by, stated

    n_validations = sum(len(t.get("val_history") or []) for t in trials)
    for table, nrows in (("trials", 20), ("variants", 2), ("per_seed", 2 * 2 * 2), ("curves", n_validations)):
        assert sm[table]["_type"] == "table-file" and sm[table]["nrows"] == nrows, table
    for chart in ("width_batchstats_by_variant", "width_per_seed", "divergence_step_vs_log_lr", "stats_lag"):
        assert any(k.startswith(f"charts/{chart}") for k in sm), chart
    for v in summary["variants"]:
        for stats in ("population", "batch"):
            assert any(k.startswith(f"charts/curves/{v['label']}/{stats}") for k in sm)

    # every figure of report.md, with report.md's caption; stability.png keeps its media key
    keys = ["stability", "widths", "divergence", "stats_lag", "curves/off-auto-d4", "curves/pre-auto-d4", "edges"]
    assert len(summary["figures"]) == len(keys)
    for fig, key in zip(summary["figures"], keys, strict=True):
        assert sm[key]["_type"] == "image-file" and sm[key]["caption"] == fig["caption"], key
    (art,) = [a for a in run["artifacts"] if a["type"] == "sweep-report"]
    assert set(art["files"]) == set(summary["files"])
