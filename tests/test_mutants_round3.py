"""Guards for what the third break-test round's mutants showed unguarded: where the edge search bisects and
what it waits for, the brackets' order and an open edge in report.md, tables and studies with the older
metric names, the recalibrated view being a recalibration, `bnexp.load` judging by the study's recorded
rule, and the status ETA (median trial, over the workers). Each test fails against its mutant."""

from __future__ import annotations

import copy
import csv
import math

import pytest
import torch
from helpers.env import TINY, compose_cfg
from helpers.sweeps import parts, sweep_args

from bnexp.analysis.edges import edges, next_points, seed_edges
from bnexp.analysis.stability import StabilityRule
from bnexp.record import VAL_ACC, VAL_ACC_BATCH, TrialRecord

RULE = StabilityRule(threshold=0.9)


def _rec(lr: float, acc: float, state: str = "COMPLETE", seed: int = 0) -> dict:
    return {"lr": lr, "state": state, VAL_ACC: acc, "diverged": False, "seed": seed, "bn": "pre", "bias": "auto",
            "depth": 3, "key": f"model.bn=pre seed={seed} lr={lr}"}  # fmt: skip


# one seed's coarse grid: unstable, stable, stable, unstable (4 decades apart end to end)
GRID = [_rec(1e-4, 0.1), _rec(1e-3, 0.95), _rec(1e-2, 0.96), _rec(1e-1, 0.2)]


def test_the_edge_search_bisects_each_bracket_at_its_geometric_midpoint():
    pts = sorted(next_points(GRID, RULE, 0.1))
    assert pts == pytest.approx([math.sqrt(1e-4 * 1e-3), math.sqrt(1e-2 * 1e-1)], rel=1e-5)  # not (a + b) / 2
    assert all(lo < p < hi for p, (lo, hi) in zip(pts, [(1e-4, 1e-3), (1e-2, 1e-1)], strict=True))


def test_a_seeds_brackets_are_low_below_high_each_from_its_stable_end():
    e = seed_edges(GRID, RULE)
    assert e["low"] == [1e-3, 1e-4] and e["high"] == [1e-2, 1e-1]
    assert e["stable_lr_min"] == 1e-3 < e["stable_lr_max"] == 1e-2


@pytest.mark.parametrize("state", ["WAITING", "RUNNING"])
def test_no_bisection_while_a_trial_of_the_seed_is_unfinished(state):
    assert next_points(GRID, RULE, 0.1)  # finished: there is something to bisect
    assert next_points([*GRID, _rec(0.5, 0.0, state=state)], RULE, 0.1) == []


def test_an_edge_at_the_end_of_the_searched_range_is_open_in_the_summary_and_report_md(tmp_path):
    from bnexp.sweep.report import main

    top_stable = [_rec(1e-4, 0.1), _rec(1e-3, 0.95), _rec(1e-2, 0.96), _rec(1e-1, 0.97)]  # stable at the top
    e = edges(top_stable, RULE)
    assert e["high"]["open"] is True and e["low"]["open"] is False
    table = tmp_path / "trials.csv"
    cols = list(top_stable[0])
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        w.writerows(top_stable)
    with pytest.raises(SystemExit) as ex:
        main(["--trials", str(table), "--out", str(tmp_path / "r"), "--format", "svg"])
    assert ex.value.code == 0
    assert "(open: the range goes on past the search)" in (tmp_path / "r" / "report.md").read_text()


# ---- older metric names (record.LEGACY_NAMES, record.canonical) ----------------------------------------
OLD = {"val_acc": 0.95, "val_acc_batchstats": 0.5, "val_acc_best": 0.96, "test_acc": 0.94, "val_loss": 0.2}


def test_a_table_with_the_older_metric_names_is_read_under_todays(tmp_path):
    from bnexp.analysis.report import load_trials_csv

    table = tmp_path / "trials.csv"
    row = {"number": 0, "state": "COMPLETE", "bn": "pre", "bias": "auto", "depth": 3, "lr": 0.01, "seed": 0,
           "diverged": False, **OLD}  # fmt: skip
    with open(table, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(row))
        w.writeheader()
        w.writerow(row)
    t = load_trials_csv(table)[0]
    assert t[VAL_ACC] == 0.95 and t[VAL_ACC_BATCH] == 0.5 and t["val/acc_best"] == 0.96 and t["test/acc"] == 0.94
    assert not set(OLD) & set(t)


def test_a_study_recorded_with_the_older_metric_names_is_read_under_todays():
    r = TrialRecord.from_row({"lr": 0.01, "seed": 0, "bn": "pre", **OLD}).row()
    assert r[VAL_ACC] == 0.95 and r[VAL_ACC_BATCH] == 0.5 and r["val/loss"] == 0.2


# ---- the recalibrated view ------------------------------------------------------------------------------
def test_the_recalibrated_view_is_the_net_scored_with_statistics_recomputed_over_training_batches():
    """Against a recalibration done here by hand (BN statistics as the plain average over the first n training
    batches, then the validation set scored in eval mode): equal; the batch-statistics view is not it."""
    from bnexp.core.metrics import compute_loss
    from bnexp.core.recal import recalibrated
    from bnexp.core.train import build_datamodule, build_module

    cfg = compose_cfg([*TINY, "model.bn=pre"])
    dm, module = build_datamodule(cfg), build_module(cfg)
    dm.setup("fit")
    model = module.model
    for m in model.modules():  # running averages far from the truth: a view that keeps them scores badly
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.running_mean.fill_(3.0)
            m.running_var.fill_(50.0)
    out = recalibrated(module, dm, 4)
    ref = copy.deepcopy(model)
    bns = [m for m in ref.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a cumulative average
    ref.train()
    with torch.no_grad():
        for i, (x, _) in enumerate(dm.train_dataloader()):
            if i == 4:
                break
            ref(x)
        ref.eval()
        loss, correct, n, bs_loss = 0.0, 0, 0, 0.0
        for x, y in dm.val_dataloader():
            logits = ref(x)
            loss += float(compute_loss(logits, y, cfg.loss)) * len(y)
            correct += int((logits.argmax(-1) == y).sum())
            n += len(y)
            ref.train()  # the batch-statistics view of the same weights, for contrast
            bs_loss += float(compute_loss(ref(x), y, cfg.loss)) * len(y)
            ref.eval()
    assert out["val/acc_recal"] == pytest.approx(correct / n, abs=1e-9)
    assert out["val/loss_recal"] == pytest.approx(loss / n, rel=1e-5)
    assert abs(out["val/loss_recal"] - bs_loss / n) > 1e-4  # not the batch-statistics value


# ---- bnexp.load and the recorded rule ----------------------------------------------------------------------
def _finish(study, acc: float) -> None:
    from bnexp.sweep import liveness

    trial = liveness.claim(study, heartbeat=0)
    key = trial.user_attrs["key"]
    rec = TrialRecord.from_metrics({"bn": "pre", "bias": "auto", "depth": 3, VAL_ACC: acc, "diverged": False})
    for k, v in {**rec.attrs(), "key": key}.items():
        trial.set_user_attr(k, v)
    study.tell(trial, acc)


def test_load_judges_a_study_by_the_rule_it_was_recorded_with(tmp_path):
    import bnexp

    p = parts(sweep_args(tmp_path / "sw", extra=["sweep.grid.model.bn=[pre]", "sweep.rule.threshold=0.3"]))
    (tmp_path / "sw" / "sweep.json").write_text(f'{{"study": "t", "storage": "{p.url}"}}')
    _finish(p.study, 0.5)  # stable at 0.3, not at the default 0.9
    _finish(p.study, 0.1)
    r = bnexp.load(tmp_path / "sw")
    assert r.summary["rule"]["threshold"] == 0.3
    by_acc = dict(zip(r.trials[VAL_ACC], r.trials["stable"], strict=True))
    assert by_acc == {0.5: True, 0.1: False}
    assert r.variants_list[0]["stable_lr_min"] is not None  # judged stable somewhere: by 0.3, not 0.9


# ---- the status ETA ----------------------------------------------------------------------------------------
def test_the_status_eta_is_the_median_trial_times_the_points_left_over_the_workers_running():
    from bnexp.sweep.status import eta_s, render

    rows = [
        {"variant": "pre-auto-d3", "done": 3, "running": 2, "waiting": 4, "failed": 0, "walls": [10.0, 10.0, 100.0],
         "stable_lr_min": None, "stable_lr_max": None, "width": None, "width_range": None},
    ]  # fmt: skip
    assert eta_s(rows) == pytest.approx(10.0 * 6 / 2)  # median 10 s (mean 40), 6 points left, 2 workers
    assert "ETA 30 s (median trial 10 s)" in render("t", rows)
    one = [{**rows[0], "running": 0, "waiting": 6}]
    assert eta_s(one) == pytest.approx(60.0)  # no worker running now: counted as one
