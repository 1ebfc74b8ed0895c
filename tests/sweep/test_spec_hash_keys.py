"""Every part of a study's design changes its spec hash (a rerun with another one is refused, not mixed in)."""

import pytest
from helpers.env import compose_cfg

from bnexp.sweep.spec import resolve, spec_hash, training_cfg


def _hash(*ov: str) -> str:
    args = ["sweep=lr_stability", *ov]
    cfg = compose_cfg(args, config_name="study")
    sw, _ = resolve(cfg, args)
    return spec_hash(sw, training_cfg(cfg))


@pytest.mark.parametrize(
    "ov",
    ["sweep.seeds=[0,1]", "sweep.seeds=[1]", "sweep.lr.low=1e-4", "sweep.lr.high=0.5", "sweep.lr.points=5",
     "sweep.grid.model.bn=[off,pre]", "sweep.lr.search=edges", "seed=3", "data.limit_train=2048"],
)  # fmt: skip
def test_each_part_of_the_design_changes_the_spec_hash(ov):
    assert _hash(ov) != _hash()


@pytest.mark.parametrize("ov", ["sweep.rule.threshold=0.3", "sweep.rule.statistics=batch", "trainer.compile=none"])
def test_the_rule_and_how_a_study_runs_leave_its_spec_hash(ov):
    """The rule is a report-time choice and compile a way of running: neither makes another study."""
    assert _hash(ov) == _hash()
