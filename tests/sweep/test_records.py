"""A study's rule as its spec states it (bnexp.sweep.records.rule_of): the one rule every view judges by."""

from __future__ import annotations

import pytest
from helpers.env import compose_cfg

from bnexp.analysis.stability import StabilityRule
from bnexp.cli import ConfigError
from bnexp.sweep.records import rule_of
from bnexp.sweep.spec import resolve


def _spec(*overrides: str):
    args = ["sweep=lr_stability", *overrides]
    return resolve(compose_cfg(args, config_name="study"), args)[0]


def test_last_k_from_the_command_line_reaches_the_rule() -> None:
    # last_k judges 3 validations: every one whole (a subset before the last is refused with it)
    rule = rule_of(_spec("sweep.rule.last_k=3", "sweep.rule.seed_quorum=1.0", "trainer.val_subset=null"))
    assert rule == StabilityRule(threshold=0.9, last_k=3, seed_quorum=1.0)
    assert rule_of(_spec()).last_k == 1  # default: the final validation alone, as before last_k existed


def test_a_spec_recorded_before_last_k_judges_the_final_validation() -> None:
    rule = rule_of({"rule": {"threshold": 0.8, "mode": "relative", "epsilon": 0.01, "seed_quorum": 0.5}})
    assert rule == StabilityRule(threshold=0.8, mode="relative", epsilon=0.01, last_k=1, seed_quorum=0.5)


def test_last_k_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sweep.rule.last_k=0 must be a whole number >= 1"):
        _spec("sweep.rule.last_k=0")


def test_a_trial_stopped_before_it_finished_joins_its_own_variant() -> None:
    """A stopped or killed trial records its key but not every variant field: a report must not invent a
    variant for it (a partial bn_momentum report showed `pre-auto-d8-None`), whether or not its point has
    finished since."""
    import optuna
    from optuna.distributions import FloatDistribution, IntDistribution
    from optuna.trial import TrialState, create_trial

    from bnexp.sweep.records import trial_records

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    dist = {"lr": FloatDistribution(1e-5, 1.0, log=True), "seed": IntDistribution(0, 9)}

    def add(state: TrialState, momentum: str, **attrs) -> None:
        key = f"model.bn=pre model.bn_momentum={momentum} seed=0 lr=0.1"
        value = 0.5 if state == TrialState.COMPLETE else None
        study.add_trial(create_trial(state=state, value=value, params={"lr": 0.1, "seed": 0}, distributions=dist,
                                     user_attrs={"key": key, **attrs}))  # fmt: skip

    full = {"bn": "pre", "bias": "auto", "depth": 8, "model.bn_momentum": "0.01", "val/acc": 0.5}
    add(TrialState.FAIL, "0.01", bn="pre")  # stopped, then trained again
    add(TrialState.COMPLETE, "0.01", **full)
    add(TrialState.FAIL, "0.1", bn="pre")  # stopped, its point not trained yet
    add(TrialState.FAIL, "0.1")  # killed before it recorded anything
    rows = trial_records(study)
    got = [(r["state"], r["bn"], r["bias"], r["depth"], r["model.bn_momentum"]) for r in rows]
    assert got == [
        ("FAIL", "pre", "auto", 8, "0.01"),
        ("COMPLETE", "pre", "auto", 8, "0.01"),
        ("FAIL", "pre", "auto", 8, "0.1"),
        ("FAIL", "pre", "auto", 8, "0.1"),
    ]


def test_a_trial_killed_between_its_suggest_calls_keeps_its_lr_and_seed(tmp_path) -> None:
    """kill -9 after a worker suggested a point's variant but before its seed and lr (test_edges' killed edge
    search hit this once in CI): the failed attempt's record and the edge planner take the missing params from
    the point's fixed params, not an empty lr."""
    from helpers.sweeps import parts, sweep_args
    from optuna.trial import TrialState

    from bnexp.sweep.edge_plan import seed_groups
    from bnexp.sweep.records import trial_records

    p = parts(sweep_args(tmp_path / "s", points=1, extra=["sweep.grid.model.bn=[pre]"]))
    t = p.study.ask()  # the enqueued point, RUNNING, nothing suggested yet
    t.suggest_categorical("model.bn", ["pre"])  # the variant only: then the kill
    p.study.tell(t, state=TrialState.FAIL)  # as the rerun fails a stale trial
    (rec,) = [r for r in trial_records(p.study) if r["state"] == "FAIL"]
    assert rec["lr"] == 1e-4 and rec["seed"] == 0 and rec["bn"] == "pre"
    groups = seed_groups(p.study, p.sw)
    assert list(groups) == [((("model.bn", "pre"),), 0)]
