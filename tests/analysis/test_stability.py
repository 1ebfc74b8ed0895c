"""Stability analysis on hand-made trial tables (no training)."""

from __future__ import annotations

import pytest
from helpers.tables import GRID, RULE, only, seeded, sweep, trial, with_curve

from bnexp.analysis.bn_gain import compare
from bnexp.analysis.edges import add_widths
from bnexp.analysis.stability import (
    DEFAULT_VARIANT_KEYS,
    StabilityRule,
    analyse,
    is_stable,
    judge,
    record_of,
    variant_best,
    variant_key,
    variant_label,
)

# ---------------------------------------------------------------------------- keys


def test_variant_key_and_label() -> None:
    rec = trial(0.1, 0.95, bn="pre", bias="auto", depth=19, **{"model.channels": 32})
    assert variant_key(rec) == ("pre", "auto", 19)
    assert variant_label(variant_key(rec)) == "pre-auto-d19"
    keys = ("bn", "bias", "depth", "model.channels")
    assert variant_key(rec, keys) == ("pre", "auto", 19, 32)
    assert variant_label(variant_key(rec, keys), keys) == "pre-auto-d19-channels=32"


def test_extra_variant_axis_splits_variants_and_sorts_bn_off_first() -> None:
    trials = [
        *sweep([0.95] * 5, **{"model.channels": 16}),
        *sweep([0.95] * 5, **{"model.channels": 32}),
        *sweep([0.95] * 5, bn="off", **{"model.channels": 16}),
    ]
    vs = analyse(trials, RULE, variant_keys=("bn", "bias", "depth", "model.channels"))
    assert [v["label"] for v in vs] == [
        "off-auto-d19-channels=16",
        "pre-auto-d19-channels=16",
        "pre-auto-d19-channels=32",
    ]
    assert [v["model.channels"] for v in vs] == [16, 16, 32]
    assert all(v["n_trials"] == 5 for v in vs)


# ---------------------------------------------------------------------------- interval, width, runs


def test_interval_and_width() -> None:
    v = only(analyse(sweep([0.5, 0.95, 0.97, 0.92, 0.3]), RULE))
    assert v["stable_lr_min"] == pytest.approx(1e-3)
    assert v["stable_lr_max"] == pytest.approx(1e-1)
    assert v["stable_span"] == pytest.approx(2.0)
    assert v["holes"] == [] and v["n_holes"] == 0 and v["span_with_holes"] == pytest.approx(2.0)
    assert (v["n_trials"], v["n_stable"], v["n_lrs"], v["n_stable_lrs"]) == (5, 3, 5, 3)
    assert v["best_lr"] == pytest.approx(1e-2) and v["best_value"] == pytest.approx(0.97)
    assert [p["stable"] for p in v["points"]] == [False, True, True, True, False]


def test_the_headline_is_the_unbroken_range_around_the_best_lr_and_holes_are_named() -> None:
    # stable at 1e-5; a hole at 1e-4; stable 1e-3..1e-1 with the best at 1e-2; unstable at 1
    lrs = [1e-5, *GRID]
    v = only(analyse(sweep([0.95, 0.2, 0.95, 0.99, 0.95, 0.2], lrs=lrs), RULE))
    assert v["stable_lr_min"] == pytest.approx(1e-3) and v["stable_lr_max"] == pytest.approx(1e-1)
    assert v["stable_span"] == pytest.approx(2.0)  # not 4: the failing 1e-4 breaks the range
    assert v["holes"] == [pytest.approx(1e-4)] and v["n_holes"] == 1
    assert v["span_lr_min"] == pytest.approx(1e-5) and v["span_with_holes"] == pytest.approx(4.0)  # labelled apart
    assert v["n_stable_lrs"] == 4


def test_the_unbroken_range_follows_the_best_lr_not_the_longest_run() -> None:
    # two runs: 1e-5..1e-4 (best 0.99 at 1e-4) and 1e-2..1 (three points, 0.92): the best lr's run is the headline
    lrs = [1e-5, *GRID]
    v = only(analyse(sweep([0.95, 0.99, 0.2, 0.92, 0.92, 0.92], lrs=lrs), RULE))
    assert (v["stable_lr_min"], v["stable_lr_max"]) == (pytest.approx(1e-5), pytest.approx(1e-4))
    assert v["holes"] == [pytest.approx(1e-3)]


def test_a_value_exactly_at_the_threshold_is_stable() -> None:
    rule = StabilityRule(threshold=0.5)
    trials = sweep([0.5, 0.5, 0.4999, 0.5, 0.5])
    assert is_stable(trials[0], rule) and not is_stable(trials[2], rule)
    v = only(analyse(trials, rule))
    assert [p["stable"] for p in v["points"]] == [True, True, False, True, True]


def test_lrs_merge_after_rounding() -> None:
    # 10**-3 and 1e-3 differ in the last bit; a grid point must not split in two
    trials = [trial(1e-3, 0.95, seed=0), trial(10**-3 * (1 + 1e-14), 0.95, seed=1)]
    v = only(analyse(trials, RULE))
    assert v["n_lrs"] == 1 and v["points"][0]["n_seeds"] == 2


# ---------------------------------------------------------------------------- infeasible and failed


def test_diverged_counted_and_never_stable() -> None:
    trials = sweep([0.5, 0.95, 0.95, 0.95, 0.99])
    trials[-1]["diverged"] = True  # high accuracy, but diverged: infeasible
    assert not is_stable(trials[-1], RULE)
    assert is_stable(trials[1], RULE)
    v = only(analyse(trials, RULE))
    assert v["n_trials"] == 5 and v["n_diverged"] == 1 and v["n_stable"] == 3
    assert v["stable_lr_max"] == pytest.approx(1e-1)
    assert v["points"][-1]["diverged_any"] and v["points"][-1]["frac_stable"] == 0.0
    assert v["points"][-1]["mean"] is None  # the diverged value is not averaged in
    assert v["best_lr"] == pytest.approx(1e-3)


def test_failed_trials_counted_apart() -> None:
    trials = sweep([0.5, 0.95, 0.95, 0.95, 0.5])
    trials.append(trial(10.0, 0.99, state="FAIL", number=9))  # would widen the range if counted
    trials.append(trial(1e-5, 0.99, state="PRUNED", number=10))  # stopped at chance: a result, never stable
    trials.append(trial(1e-5, 0.99, state="RUNNING", number=11))
    v = only(analyse(trials, RULE))
    assert v["n_failed"] == 1 and v["n_pruned"] == 1 and v["n_other"] == 1
    assert v["n_trials"] == 6 and v["n_lrs"] == 6 and v["n_stable"] == 3
    assert v["stable_lr_max"] == pytest.approx(1e-1) and v["stable_lr_min"] == pytest.approx(1e-3)
    assert not is_stable(trials[-3], RULE) and not is_stable(trials[-2], RULE)


@pytest.mark.parametrize("bad", [None, float("nan"), float("inf"), "oops"])
def test_missing_or_nan_metric_not_stable(bad: object) -> None:
    trials = sweep([0.95, bad, 0.95, 0.5, 0.5])
    assert not is_stable(trials[1], RULE)
    v = only(analyse(trials, RULE))
    assert v["n_stable"] == 2 and v["stable_span"] == 0.0 and v["holes"] == [pytest.approx(1e-3)]
    assert v["points"][1]["mean"] is None


# ---------------------------------------------------------------------------- relative mode


def test_relative_mode() -> None:
    rel = StabilityRule(mode="relative", epsilon=0.02)
    trials = sweep([0.70, 0.80, 0.79, 0.75, 0.99])
    trials[-1]["diverged"] = True  # a diverged value must not set the bar
    v = only(analyse(trials, rel))
    assert v["variant_best"] == pytest.approx(0.80)
    assert [p["stable"] for p in v["points"]] == [False, True, True, False, False]
    assert v["stable_span"] == pytest.approx(1.0)
    # the same table under the absolute rule has nothing stable
    assert only(analyse(trials, RULE))["n_stable"] == 0
    assert is_stable(trials[2], rel, variant_best=0.80)
    assert not is_stable(trials[2], rel, variant_best=0.85)
    assert not is_stable(trials[2], rel)  # no best known: cannot be within epsilon of it


def test_rule_rejects_unknown_mode() -> None:
    with pytest.raises(ValueError, match="threshold"):
        StabilityRule(mode="absolute")


# ---------------------------------------------------------------------------- the last k validations


def test_last_k_needs_each_of_the_last_k_validations() -> None:
    swings = with_curve(trial(0.1, None), [0.3, 0.95, 0.4, 0.95])  # ends above, was below one validation ago
    steady = with_curve(trial(0.1, None), [0.3, 0.92, 0.95, 0.95])
    short = with_curve(trial(0.1, None), [0.95])  # one validation recorded
    gap = with_curve(trial(0.1, None), [0.95, None, 0.95])  # a non-finite validation in the window
    last = {k: StabilityRule(threshold=0.9, last_k=k) for k in (1, 2, 3, 4)}
    assert is_stable(swings, last[1]) and not is_stable(swings, last[2])
    assert is_stable(steady, last[3]) and not is_stable(steady, last[4])
    assert is_stable(short, last[1]) and not is_stable(short, last[2])  # fewer than k: not shown stable
    assert is_stable(gap, last[1]) and not is_stable(gap, last[2])
    assert last[2].describe() == "not diverged and val/acc >= 0.9 at each of the last 2 validations"
    assert last[1].describe() == "not diverged and val/acc >= 0.9"
    # a single run's verdict (W&B, progress bar) reads the same history from its metrics.json
    metrics = {"val/acc": 0.95, "diverged": False, "val_history": swings["val_history"]}
    assert judge(record_of(metrics), last[1]) is True and judge(record_of(metrics), last[2]) is False


def test_last_k_decides_the_width() -> None:
    # the 0.1 trial ends at 0.95 but was at 0.3 one validation earlier
    curves = [[0.5, 0.5], [0.95, 0.95], [0.95, 0.95], [0.3, 0.95], [0.2, 0.2]]
    trials = [with_curve(trial(lr, None, number=i), c) for i, (lr, c) in enumerate(zip(GRID, curves, strict=True))]
    assert only(analyse(trials, RULE))["stable_lr_max"] == pytest.approx(1e-1)
    v = only(analyse(trials, StabilityRule(threshold=0.9, last_k=2)))
    assert v["stable_lr_max"] == pytest.approx(1e-2) and v["n_stable"] == 2 and v["stable_span"] == pytest.approx(1)


def test_last_k_in_relative_mode_measures_against_the_best_held_level() -> None:
    a = with_curve(trial(1e-3, None), [0.80, 0.80])
    b = with_curve(trial(1e-2, None, number=1), [0.70, 0.90])  # best final value, but held only once
    c = with_curve(trial(1e-1, None, number=2), [0.79, 0.79])
    rel1, rel2 = StabilityRule(mode="relative", epsilon=0.02), StabilityRule(mode="relative", epsilon=0.02, last_k=2)
    assert variant_best([a, b, c], rel1) == pytest.approx(0.90) and variant_best([a, b, c], rel2) == pytest.approx(0.80)
    assert [p["stable"] for p in only(analyse([a, b, c], rel1))["points"]] == [False, True, False]
    assert [p["stable"] for p in only(analyse([a, b, c], rel2))["points"]] == [True, False, True]
    assert judge(b, rel2) is None and judge(a, rel2, 0.80) is True  # relative: only the study knows the best


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_rule_rejects_bad_last_k(bad: object) -> None:
    with pytest.raises(ValueError, match="last_k"):
        StabilityRule(last_k=bad)


# ---------------------------------------------------------------------------- population vs batch statistics


def test_widths_judged_by_population_and_by_batch_statistics() -> None:
    # pre: population statistics fail at 1e-1 (the running averages lag), batch statistics do not
    pre = sweep([0.5, 0.95, 0.95, 0.6, 0.3])
    for t, b in zip(pre, [0.5, 0.96, 0.97, 0.95, 0.3], strict=True):
        t["val/acc_batchstats"] = b
    off = sweep([0.5, 0.95, 0.5, 0.5, 0.5], bn="off")  # no BN: batch statistics = population statistics
    old = sweep([0.95] * 5, bn="post", **{"val/acc_batchstats": None})  # recorded before val/acc_batchstats existed
    vs = {v["bn"]: v for v in analyse(pre + off + old, RULE)}
    pop, bat = vs["pre"]["by_statistics"]["population"], vs["pre"]["by_statistics"]["batch"]
    assert (pop["metric"], bat["metric"]) == ("val/acc", "val/acc_batchstats")
    assert (pop["stable_lr_min"], pop["stable_lr_max"], pop["stable_span"]) == pytest.approx((1e-3, 1e-2, 1.0))
    assert (bat["stable_lr_min"], bat["stable_lr_max"], bat["stable_span"]) == pytest.approx((1e-3, 1e-1, 2.0))
    assert bat["stable_lrs"] == pytest.approx([1e-3, 1e-2, 1e-1]) and bat["n_stable"] == 3
    assert [ps["stable_span"] for ps in bat["per_seed"]] == pytest.approx([2.0])  # each view its own seeds
    assert [ps["stable_span"] for ps in pop["per_seed"]] == pytest.approx([1.0])
    assert vs["pre"]["statistics_differ"] is True
    # "stable" is the rule's verdict, on population statistics: the top level is that view
    assert vs["pre"]["metric"] == "val/acc" and vs["pre"]["n_stable"] == 2
    assert vs["pre"]["stable_span"] == pop["stable_span"] and vs["pre"]["per_seed"] == pop["per_seed"]
    assert vs["off"]["statistics_differ"] is False
    assert vs["off"]["by_statistics"]["batch"]["stable_span"] == vs["off"]["stable_span"] == pytest.approx(0)
    assert vs["post"]["by_statistics"]["batch"]["n_finite"] == 0 and vs["post"]["statistics_differ"] is False
    # a rule on batch statistics makes that view the verdict
    b = only(analyse(pre, RULE.with_metric("val/acc_batchstats")))
    assert b["metric"] == "val/acc_batchstats" and b["stable_span"] == pytest.approx(2.0) and b["n_stable"] == 3
    assert b["by_statistics"]["population"]["stable_span"] == pytest.approx(1.0)


def test_seed_fraction_and_quorum() -> None:
    # seed 2 did not train lr 1e-2, and its own neighbours disagree (1e-3 stable, 1e-1 not): undecided there
    trials = seeded([(3, 3), (3, 3), (1, 2), (1, 3), (0, 3)])
    v = only(analyse(trials, RULE))
    pts = v["points"]
    assert [p["n_seeds"] for p in pts] == [3, 3, 2, 3, 3]
    assert [p["seeds_inferred"] for p in pts] == [[], [], [], [], []]
    assert [p["frac_stable"] for p in pts] == pytest.approx([1, 1, 0.5, 1 / 3, 0])
    assert [p["stable"] for p in pts] == [True, True, True, False, False]  # 1 of 2 meets 0.5
    assert v["stable_lr_max"] == pytest.approx(1e-2) and v["n_stable"] == 8
    strict = only(analyse(trials, StabilityRule(threshold=0.9, seed_quorum=1.0)))
    assert strict["stable_lr_max"] == pytest.approx(1e-3)
    loose = only(analyse(trials, StabilityRule(threshold=0.9, seed_quorum=0.3)))
    assert loose["stable_lr_max"] == pytest.approx(1e-1)
    mixed = only(analyse(seeded([(3, 3), (2, 3), (1, 3), (0, 3)], GRID[:4]), RULE))
    assert mixed["points"][1]["mean"] == pytest.approx((0.95 * 2 + 0.5) / 3)


def test_a_seed_is_judged_where_it_did_not_train_only_where_its_own_neighbours_agree() -> None:
    # the edge search's shape: coarse lrs for every seed, then one seed's own bisection points
    coarse = {1e-4: (1, 1, 1), 1e-3: (1, 1, 1), 1e-2: (1, 0, 0), 1e-1: (0, 0, 0)}
    trials = [trial(lr, 0.95 if ok[s] else 0.5, seed=s) for lr, ok in coarse.items() for s in range(3)]
    trials += [trial(3.16e-4, 0.95, seed=0), trial(0.0316, 0.95, seed=0)]
    v = only(analyse(trials, RULE))
    pts = {p["lr"]: p for p in v["points"]}
    # 3.16e-4: seeds 1 and 2 are stable at 1e-4 and 1e-3, so stable between; 0.0316: unstable at 1e-2 and 0.1
    assert pts[3.16e-4]["seeds_inferred"] == [1, 2] and pts[3.16e-4]["frac_stable"] == 1.0
    assert pts[0.0316]["seeds_inferred"] == [1, 2] and pts[0.0316]["frac_stable"] == pytest.approx(1 / 3)
    assert not pts[0.0316]["stable"]  # one seed alone is not a quorum of three
    assert (v["stable_lr_min"], v["stable_lr_max"], v["holes"]) == (1e-4, 1e-3, [])
    assert pts[3.16e-4]["n_seeds"] == 1  # what trained is still told apart from what was inferred


def test_per_seed_widths() -> None:
    s0 = sweep([0.5, 0.95, 0.95, 0.95, 0.5], seed=0)  # 1e-3 .. 1e-1
    s1 = sweep([0.5, 0.95, 0.95, 0.5, 0.5], seed=1)  # 1e-3 .. 1e-2
    v = only(analyse(s0 + s1, RULE))
    per = v["per_seed"]
    assert [(s["seed"], s["n_trials"], s["n_stable_lrs"]) for s in per] == [(0, 5, 3), (1, 5, 2)]
    assert [s["stable_span"] for s in per] == pytest.approx([2.0, 1.0])
    assert per[1]["stable_lr_min"] == pytest.approx(1e-3) and per[1]["stable_lr_max"] == pytest.approx(1e-2)
    assert v["stable_span"] == pytest.approx(2.0)  # pooled: 1 of 2 seeds is enough at 1e-1
    assert "stable_decades_ci" not in v and "stable_span_ci" not in v  # no bootstrap of 2-3 seeds


def test_per_seed_widths_in_relative_mode_use_each_seeds_own_best() -> None:
    rel = StabilityRule(mode="relative", epsilon=0.02)
    a = sweep([0.80, 0.80, 0.5, 0.5, 0.5], seed=0)
    b = sweep([0.5, 0.5, 0.6, 0.6, 0.5], seed=1)  # its own best is 0.6
    v = only(analyse(a + b, rel))
    assert [s["stable_span"] for s in v["per_seed"]] == pytest.approx([1.0, 1.0])
    assert v["per_seed"][1]["stable_lr_min"] == pytest.approx(1e-2)
    assert v["stable_lr_max"] == pytest.approx(1e-3)  # pooled: against the variant's best, 0.8


# ---------------------------------------------------------------------------- compare


def _widths(trials: list[dict]) -> list[dict]:
    variants = analyse(trials, RULE)
    add_widths(variants, trials, RULE, DEFAULT_VARIANT_KEYS)
    return variants


def test_compare_gives_delta() -> None:
    # widths from the edges: a closed edge is its bracket's midpoint (half a decade out), an open one its lr
    trials = (
        sweep([0.5, 0.5, 0.95, 0.95, 0.5], bn="off")  # 10^-2.5 .. 10^-0.5: 2 decades
        + sweep([0.95, 0.95, 0.95, 0.95, 0.5], bn="pre")  # 1e-4 (open) .. 10^-0.5: 3.5
        + sweep([0.5, 0.95, 0.95, 0.5, 0.5], bn="post")  # 10^-3.5 .. 10^-1.5: 2
        + sweep([0.95, 0.95, 0.5, 0.5, 0.5], bn="pre", depth=7)  # no off baseline at depth 7
    )
    rows = compare(_widths(trials))
    by = {(r["depth"], r["bn"]): r for r in rows}
    assert set(by) == {(19, "pre"), (19, "post"), (7, "pre")}
    assert by[(19, "pre")]["delta_width"] == pytest.approx(1.5)
    assert by[(19, "pre")]["off_width"] == pytest.approx(2.0) and by[(19, "pre")]["width"] == pytest.approx(3.5)
    assert by[(19, "post")]["delta_width"] == pytest.approx(0.0)
    assert by[(19, "pre")]["bias"] == "auto"
    assert by[(7, "pre")]["off_width"] is None and by[(7, "pre")]["delta_width"] is None


def test_compare_pairs_within_bias() -> None:
    trials = (
        sweep([0.95, 0.95, 0.5, 0.5, 0.5], bn="off", bias="true")  # 1.5 decades
        + sweep([0.95, 0.5, 0.5, 0.5, 0.5], bn="off", bias="false")  # 0.5
        + sweep([0.95, 0.95, 0.95, 0.95, 0.5], bn="pre", bias="false")  # 3.5
    )
    (row,) = compare(_widths(trials))
    assert row["bias"] == "false" and row["delta_width"] == pytest.approx(3.0)


# ---------------------------------------------------------------------------- report
