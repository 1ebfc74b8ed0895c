"""A trial's own failure spends exactly one retry per attempt (sweep.retries=1: two attempts per point, then
the point is given up), and the value Optuna records is the final val/acc, not the best one on the way."""

import collections

import optuna
import pytest
from helpers.sweeps import run_sweep, sweep_args

import bnexp.core.train
from bnexp.sweep.worker import _objective_value


def test_a_trials_own_failure_uses_exactly_its_retries(tmp_path, monkeypatch):
    def broken(cfg, **kw):
        raise RuntimeError("a bug in training")  # the trial's own failure (not its environment's)

    monkeypatch.setattr(bnexp.core.train, "train", broken)
    out = tmp_path / "sw"
    run_sweep(sweep_args(out, points=1, extra=["sweep.retries=1"]))
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out}/study.db")
    attempts = collections.Counter(t.user_attrs["key"] for t in study.get_trials() if t.state.name == "FAIL")
    assert attempts and set(attempts.values()) == {2}, attempts  # 1 try + 1 retry per point, no more, no less
    assert not [t for t in study.get_trials() if t.state.name in ("WAITING", "RUNNING")]


@pytest.mark.parametrize("final,best", [(0.5, 0.9), (0.25, 0.25)])
def test_the_objective_is_the_final_val_acc(final, best):
    assert _objective_value({"val/acc": final, "val/acc_best": best}) == final
    assert _objective_value({"val/acc": float("nan"), "val/acc_best": best}) == 0.0  # diverged: infeasible
