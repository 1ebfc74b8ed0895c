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
    rule = rule_of(_spec("sweep.rule.last_k=3", "sweep.rule.seed_quorum=1.0"))
    assert rule == StabilityRule(threshold=0.9, last_k=3, seed_quorum=1.0)
    assert rule_of(_spec()).last_k == 1  # default: the final validation alone, as before last_k existed


def test_a_spec_recorded_before_last_k_judges_the_final_validation() -> None:
    rule = rule_of({"rule": {"threshold": 0.8, "mode": "relative", "epsilon": 0.01, "seed_quorum": 0.5}})
    assert rule == StabilityRule(threshold=0.8, mode="relative", epsilon=0.01, last_k=1, seed_quorum=0.5)


def test_last_k_below_one_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match=r"sweep.rule.last_k=0 must be a whole number >= 1"):
        _spec("sweep.rule.last_k=0")
