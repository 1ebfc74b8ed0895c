"""Silent trials (bnexp.sweep.pruning): what the rule reads and counts, on real Optuna trials, a real net's
gradients and the committed evidence (bench/silent_evidence.py). The sweep through the real command:
tests/sweep/test_savings.py."""

from __future__ import annotations

import csv
import json
import sys

import optuna
import pytest
import torch
from helpers.env import REPO
from omegaconf import OmegaConf

from bnexp.core.net import DeepConvNet
from bnexp.sweep.pruner import SilentPruner, callback
from bnexp.sweep.pruning import EARLY_ATTR, SILENT_ATTR, SILENT_WINDOW, WINDOW_ATTR, silent_window

RESULTS = REPO / "docs" / "results"
sys.path.insert(0, str(REPO / "bench"))
EVIDENCE = RESULTS / "silent_evidence" / "runs.csv"
COMMITTED = RESULTS / "silent_evidence" / "committed.csv"  # bench/silent_evidence.py --committed


@pytest.mark.parametrize(
    "optim, window",
    [
        ({"name": "adam", "weight_decay": 0.0}, 100),
        ({"name": "adam", "weight_decay": 1e-4}, None),  # decay moves the frozen parameters
        ({"name": "sgd", "momentum": 0.0, "weight_decay": 0.0}, 100),
        ({"name": "sgd", "momentum": 0.9, "weight_decay": 0.0}, 100),  # as Adam's beta1
        ({"name": "sgd", "momentum": 0.99, "weight_decay": 0.0}, 1049),  # 0.99**1049 <= 0.9**100
        ({"name": "sgd", "momentum": 1.0, "weight_decay": 0.0}, None),
    ],
)
def test_the_window_is_as_long_as_the_optimizer_remembers(optim, window):
    assert silent_window(OmegaConf.create(optim)) == window
    if window and optim.get("momentum"):
        assert optim["momentum"] ** window <= 0.9**SILENT_WINDOW * (1 + 1e-9)


@pytest.mark.parametrize(
    "optim, batch, window",
    [({"name": "adam"}, 64, 100), ({"name": "adam"}, 128, 100), ({"name": "adam"}, 32, 200),
     ({"name": "adam"}, 16, 400), ({"name": "adam"}, 1, 6400), ({"name": "adam"}, 50, 128),
     ({"name": "sgd", "momentum": 0.99}, 16, 1049), ({"name": "sgd", "momentum": 0.9}, 8, 800)],
)  # fmt: skip
def test_the_window_holds_as_many_images_with_smaller_batches(optim, batch, window):
    """A batch with no gradient at the first layer says its images found the net dead: the evidence's 100
    steps of 64 images are 6400 images, and a smaller batch needs as many; a larger one still needs the
    optimizer's 100 steps."""
    assert silent_window(OmegaConf.create({"weight_decay": 0.0, **optim}), batch) == window


@pytest.mark.parametrize(
    "precision, window",
    [("32-true", 100), ("64-true", 100), ("bf16-mixed", 100), ("bf16-true", 100), ("16-mixed", None),
     ("16", None), ("16-true", None), ("transformer-engine", None), ("transformer-engine-float16", None)],
)  # fmt: skip
def test_silence_is_not_judged_where_a_live_gradient_can_underflow_to_zero(precision, window):
    """float16 and float8 flush a live first layer's smallest gradients (1e-10 at depth 19) to exact zeros:
    sweep.prune=auto does not prune there (=true is refused: tests/sweep/test_savings.py)."""
    from helpers.env import compose_cfg

    from bnexp.analysis.stability import StabilityRule
    from bnexp.sweep.pruning import plan

    cfg = compose_cfg([f"trainer.precision={precision}"], "study")
    assert plan(cfg.sweep, cfg, StabilityRule()) == window


def frozen(early: dict, silent: dict | None) -> optuna.trial.FrozenTrial:
    attrs = {EARLY_ATTR: {str(k): v for k, v in early.items()}}
    if silent is not None:
        attrs[SILENT_ATTR] = {str(k): v for k, v in silent.items()}
    return optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, user_attrs=attrs)


def test_the_pruner_stops_a_trial_only_at_chance_and_silent_past_its_window():
    p, study = SilentPruner(silent=100), None
    assert p.prune(study, frozen({100: 0.11, 200: 0.1}, {100: 96, 200: 196}))
    assert not p.prune(study, frozen({100: 0.11}, {100: 96}))  # not yet 100 steps
    assert not p.prune(study, frozen({100: 0.11, 200: 0.1}, {100: 96, 200: 99}))  # a gradient came 99 steps ago
    assert not p.prune(study, frozen({100: 0.11, 200: 0.5}, {100: 96, 200: 196}))  # silent, but not at chance
    assert not p.prune(study, frozen({100: 0.11, 200: 0.1}, None))  # no count: not judged
    assert not p.prune(study, frozen({600: 0.1, 700: 0.1}, {600: 0, 700: 0}))  # at chance, not silent: never
    assert not p.prune(study, frozen({}, None))

    # a trial's own window (its user attr, set from its config: a grid may vary the batch) comes first
    own = frozen({100: 0.11, 200: 0.1}, {100: 96, 200: 196})
    own.set_user_attr(WINDOW_ATTR, 400)
    assert not p.prune(study, own) and not SilentPruner().prune(study, frozen({200: 0.1}, {200: 196}))
    own.set_user_attr(SILENT_ATTR, {"100": 96, "200": 196, "400": 396})
    own.set_user_attr(EARLY_ATTR, {"100": 0.11, "200": 0.1, "400": 0.1})
    assert not p.prune(study, own)
    own.set_user_attr(SILENT_ATTR, {"100": 96, "200": 196, "400": 400})
    assert p.prune(study, own)


def test_the_callback_counts_steps_in_a_row_without_a_gradient_at_the_first_layer():
    """A real net's backward: a batch of zeros through a net whose first layer's output is all zero (its
    bias pushed far below zero: a dead layer) leaves the first layer's gradient exactly zero, a batch of
    images does not (here the first layer is alive)."""
    torch.manual_seed(0)
    net = DeepConvNet(depth=2, bn="off")
    cb = callback(trial=None)

    def step(dead: bool) -> int:
        net.zero_grad(set_to_none=True)
        with torch.no_grad():
            net.features[0].layer.bias.fill_(-100.0 if dead else 0.1)
        net(torch.rand(8, 1, 28, 28)).sum().backward()
        cb.on_before_optimizer_step(None, net, None)
        return int(cb.silent)

    assert next(net.parameters()) is net.features[0].layer.weight  # what "the first layer" is
    assert [step(True), step(True), step(True)] == [1, 2, 3]
    assert [step(False), step(True)] == [0, 1]  # one step with a gradient starts the count again

    bn = DeepConvNet(depth=2, bn="pre")  # with BN, silence comes and goes with the batch: not counted
    bn(torch.rand(8, 1, 28, 28)).sum().backward()
    with_bn = callback(trial=None)
    with_bn.on_before_optimizer_step(None, bn, None)
    assert with_bn.silent is None


def rule_on(runs: list[list[int]], chance: list[int], last: int, window: int = SILENT_WINDOW) -> int | None:
    """The rule on the very steps trained: the first validation v before the `last` step at which the trial is
    at chance (`chance`: those validations) and silent for the `window` steps up to v (`runs`: [first, last]
    step of each run of silent steps)."""
    ok = (v for v in sorted(chance) if v < last and any(a <= v - window + 1 and v <= b for a, b in runs))
    return next(ok, None)


def pruned_stay_at_chance(rows: list[dict], window: int) -> list[dict]:
    """The evidence rows without BN the rule prunes, each checked: it never had a gradient at its first layer
    again, and it scored at chance at every validation from there and at its end."""
    pruned = []
    for r in (r for r in rows if r["bn"] == "off"):
        vals = {int(k): v for k, v in json.loads(r["validations"]).items()}
        chance = [v for v in vals if vals[v] is not None and vals[v] < 0.2]
        at = rule_on(json.loads(r["silent_runs"]), chance, int(r["steps"]), window)
        if at is not None:
            pruned.append(r)
            assert r["revived"] == "False", r
            assert max(v for s, v in vals.items() if s >= at) < 0.2, r
            assert float(r["val_acc"]) < 0.2 and float(r["val_acc_batchstats"]) < 0.2, r
    return pruned


def test_no_trial_that_fell_silent_trained_again():
    """The committed evidence: trials trained to their end past the step where they fell silent. Without BN,
    the rule with its window prunes each of them at the first validation at chance from there; none of them
    ever had a gradient at the first layer again, and all ended at chance. The late starters' ground (BN off at
    lr 1e-5 to 0.00178, depth 8, with the seed that trains there) never falls silent. With BN, silence comes
    and goes (the reason it is not judged there)."""
    rows = list(csv.DictReader(EVIDENCE.open()))
    pruned = pruned_stay_at_chance(rows, SILENT_WINDOW)
    assert len(rows) >= 80 and len(pruned) >= 40
    late = [r for r in rows if r["bn"] == "off" and float(r["lr"]) < 0.002]
    assert len(late) >= 10 and all(r["silent_at"] == "" for r in late)
    assert sum(float(r["val_acc"]) > 0.9 for r in late) >= 2  # the late starters are among them
    assert any(r["revived"] == "True" for r in rows if r["bn"] != "off")


def test_sgd_trials_that_fell_silent_did_not_train_again():
    """SGD gets the window that decays its momentum as far as Adam's (100 steps at momentum 0.9): the
    evidence (bench/silent_evidence.py ... optim=sgd optim.momentum=0.9, BN off at depths 8 and 19, lr 0.01 to
    3.16, 2 seeds) has trials that fell silent (at lr 1 and 3.16), and none of them trained again."""
    from helpers.env import compose_cfg

    rows = list(csv.DictReader((RESULTS / "silent_evidence" / "sgd" / "runs.csv").open()))
    window = silent_window(compose_cfg(["optim=sgd", "optim.momentum=0.9"]).optim)
    assert window == SILENT_WINDOW and len(rows) >= 20
    assert len(pruned_stay_at_chance(rows, window)) >= 4


def test_the_rule_stops_no_committed_trial_that_ended_stable():
    """0 false stops over the committed curves. The rule can stop only a trial without BN at chance at a
    validation before its last; bench/silent_evidence.py --committed replayed every such trial of the
    committed studies (the set is read from their curves here, so a study added later must be replayed too),
    with each step's silence kept. None of the 17 that ended stable (the late starters) is stopped, each
    replay of them ends stable again (the same training), the replay's recorded stop is the rule's on its
    silence, and every trial it stops stayed at chance in its committed curve to the end."""
    from silent_evidence import committed

    rows = {(r["study"], int(r["number"])): r for r in csv.DictReader(COMMITTED.open())}
    want = committed(REPO / "docs" / "results")
    assert {(i["study"], i["number"]) for i in want} <= rows.keys()
    late = [r for r in rows.values() if r["committed_stable"] == "True"]
    assert len(late) >= 17
    assert [r for r in late if r["pruned_at"]] == []  # the false stops
    assert all(float(r["val_acc"]) >= 0.9 for r in late), late
    curves = {}
    for r in rows.values():
        chance = json.loads(r["chance_at"])
        at = rule_on(json.loads(r["silent_runs"]), chance, int(r["steps"]))
        assert at == (int(r["pruned_at"]) if r["pruned_at"] else None), r
        if at is not None:
            study = curves.setdefault(r["study"], list(csv.DictReader((RESULTS / r["study"] / "curves.csv").open())))
            later = [c for c in study if c["number"] == r["number"] and int(c["step"]) >= at]
            assert later and all(float(c["val/acc"]) < 0.2 for c in later), r
    assert sum(bool(r["pruned_at"]) for r in rows.values()) >= 50
