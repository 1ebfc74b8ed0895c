"""Recalibrated ("precise BN") statistics: the final weights with BN statistics recomputed over training
batches by torch's update_bn, scored once; the run's own running averages left as they were."""

from __future__ import annotations

import json

import torch
from helpers.env import TINY, bnexp, compose_cfg

from bnexp.core.recal import recalibrated
from bnexp.core.train import build_datamodule, build_module

LAG = [*TINY, "model.bn=pre", "optim.lr=0.003", "trainer.max_steps=30", "trainer.val_every=15"]


def test_a_run_records_the_recalibrated_view_and_it_undoes_the_running_averages_lag(tmp_path):
    r = bnexp("run", *LAG, f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    # 30 steps at momentum 0.01: the running averages lag the weights; batch statistics and a recalibration agree
    assert m["val/acc"] < 0.5 < 0.8 < m["val/acc_batchstats"]
    assert abs(m["val/acc_recal"] - m["val/acc_batchstats"]) < 0.1 and m["recal_s"] > 0


def test_recalibration_leaves_the_runs_own_statistics_and_skips_nets_it_cannot_recalibrate():
    cfg = compose_cfg(LAG)
    dm, module = build_datamodule(cfg), build_module(cfg)
    dm.setup("fit")
    before = {k: v.clone() for k, v in module.model.state_dict().items()}
    out = recalibrated(module, dm, 5)
    assert set(out) == {"val/acc_recal", "val/loss_recal"}
    after = module.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running averages restored
    for extra in (["model.bn=off"], ["model.bn_impl=manual"]):  # no BN; the tutorial's hand-written BN
        c = compose_cfg([*LAG, *extra])
        assert recalibrated(build_module(c), dm, 5) == {}
    assert recalibrated(module, dm, 0) == {}
