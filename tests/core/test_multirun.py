"""`bnexp.run -m`: a summary table of every job in the multirun dir (Hydra callback), one W&B group per multirun."""

import csv

from helpers.env import TINY, bnexp, replace
from helpers.wandb_offline import offline_runs, read_offline_run


def test_multirun_writes_one_table_and_logs_one_wandb_group(tmp_path):
    args = replace(TINY, "trainer.max_steps=6", "trainer.val_every=3", "logger=wandb")
    r = bnexp("run", "-m", "model.bn=off,pre", *args, "logger.mode=offline", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (sweep_dir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    with open(sweep_dir / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    assert [(row["bn"], row["step"]) for row in rows] == [("off", "6"), ("pre", "6")]
    assert all(0 <= float(row["val/acc"]) <= 1 for row in rows) and "model.bn=pre" in rows[1]["overrides"]
    assert (sweep_dir / "summary.md").read_text().count("\n| ") == 3  # header + 2 jobs
    runs = [read_offline_run(p, wait_s=30) for p in offline_runs(sweep_dir)]
    groups = {run["group"] for run in runs}
    assert len(runs) == 2 and len(groups) == 1 and groups.pop().startswith("multirun-")
