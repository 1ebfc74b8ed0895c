"""One real sweep through the command a user types: 2 seeds x 2 variants x 3 lrs of a tiny net on real MNIST
slices. Every figure the report lists is on disk, and report.md shows and captions each one."""

from __future__ import annotations

import csv
import json
from pathlib import Path

from helpers.env import bnexp
from helpers.tables import PNG_MAGIC


def test_tiny_two_seed_sweep_writes_every_figure_and_captions_it(tmp_path: Path) -> None:
    out = tmp_path / "sw"
    r = bnexp(
        "sweep",
        *"sweep=lr_stability sweep.name=tiny model.depth=2 sweep.grid.model.bn=[off,pre] sweep.seeds=[0,1]"
        " sweep.lr.points=3 trainer.max_steps=12 trainer.val_every=6 data.limit_train=1024 data.limit_val=256"
        " data.limit_test=256 data.single_n=20 data.eval_batch_size=256 trainer.accelerator=cpu logger=none"
        " trainer.progress_bar=false sweep.progress=false".split(),
        f"sweep.out_dir={out}",
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    md = (out / "report.md").read_text()

    figures = [f["file"] for f in summary["figures"]]
    labels = ["off-auto-d2", "pre-auto-d2"]
    diverged = any(v["n_diverged"] for v in summary["variants"])  # divergence.png only when a trial diverged
    assert figures == ["stability.png", "widths.png", *(["divergence.png"] if diverged else []), "stats_lag.png"] + [
        f"curves-{label}.png" for label in labels
    ]  # one depth: no heatmap
    assert diverged or "No trial diverged." in md
    for f in summary["figures"]:
        assert (out / f["file"]).read_bytes()[:8] == PNG_MAGIC, f["file"]
        assert f"]({f['file']})\n\n*{f['caption']}*\n" in md, f["file"]  # shown, its caption under it

    for v in summary["variants"]:
        assert [s["seed"] for s in v["per_seed"]] == [0, 1]
        assert set(v["by_statistics"]) == {"population", "batch", "recal"}
        assert f"| {v['label']} |" in md.split("## Population, batch and recalibrated statistics")[1]
    assert "| per-seed width |" in md and "not a confidence interval" in md

    # the learning curves: in curves.csv for every trial, not as JSON in trials.csv
    with open(out / "trials.csv", newline="") as f:
        trials = list(csv.DictReader(f))
    with open(out / "curves.csv", newline="") as f:
        curves = list(csv.DictReader(f))
    assert len(trials) == 12 and "val_history" not in trials[0] and "diverged_step" in trials[0]
    assert {c["number"] for c in curves} == {t["number"] for t in trials}
    for t in trials:
        steps = [int(c["step"]) for c in curves if c["number"] == t["number"]]
        assert steps == [6, 12] if t["diverged"] == "False" else 0 <= steps[-1] <= 12, (t, steps)
