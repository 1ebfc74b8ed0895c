"""A value exactly at the threshold is stable ("metric >= threshold"), in the one-trial judgement and in the
study's per-lr mask and width alike; and exactly at best - epsilon in relative mode."""

from helpers.tables import GRID, only, sweep, trial

from bnexp.analysis.stability import StabilityRule, analyse, is_stable


def test_a_value_exactly_at_the_threshold_is_stable():
    rule = StabilityRule(threshold=0.5)  # 0.5 and 0.25 are exact in binary: no rounding hides the edge
    assert is_stable(trial(1e-3, 0.5), rule) and not is_stable(trial(1e-3, 0.5 - 1e-9), rule)
    v = only(analyse(sweep([0.25, 0.5, 0.5, 0.49, None]), rule))
    assert [p["frac_stable"] for p in v["points"]] == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert v["stable_lr_min"] == GRID[1] and v["stable_lr_max"] == GRID[2] and v["n_stable"] == 2


def test_a_value_exactly_at_best_minus_epsilon_is_stable():
    rule = StabilityRule(threshold=0.9, mode="relative", epsilon=0.25)
    v = only(analyse(sweep([0.5, 0.75, 0.5, 0.25, None]), rule))  # best 0.75: the bar is 0.5 exactly
    assert [p["frac_stable"] for p in v["points"]] == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert is_stable(trial(1e-3, 0.5), rule, variant_best=0.75)


def test_two_equally_good_best_lrs_report_the_run_around_the_lower_one():
    # stable, stable, unstable, stable, stable, all equal: the best lr's tie goes to the lowest lr, as the docs say
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    v = only(analyse(sweep([0.95, 0.95, 0.1, 0.95, 0.95], lrs), StabilityRule(threshold=0.9)))
    assert (v["stable_lr_min"], v["stable_lr_max"]) == (1e-4, 1e-3) and v["holes"] == [1e-2]
