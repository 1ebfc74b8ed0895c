"""bnexp.names: one name per trial (dir, W&B name, W&B id) and variant labels that name the axis they vary."""

from __future__ import annotations

import pytest

from bnexp import names

KEYS = ("bn", "bias", "depth", "model.init_std")
POINT = {"bn": "pre", "bias": "auto", "depth": 8, "model.init_std": "0.01"}


@pytest.mark.parametrize("lr", [1.0, 10.0, 2.35e-3, 1e-5, 0.1])
def test_a_trial_has_one_name_in_its_dir_its_wandb_name_and_its_wandb_id(lr: float) -> None:
    # what the sweep worker gives a trial: its dir, logger.run_name, logger.run_id (bnexp.sweep.worker)
    name = names.run_name(POINT, lr, 3, KEYS)
    trial_dir = names.trial_dir_name(7, POINT, lr, 3, KEYS)
    run_id = names.run_id(name, "init_scale", "3f2a9c1d", "key")
    assert trial_dir == f"0007_{name}"
    assert run_id.rsplit("-", 1)[0] == name, (trial_dir, name, run_id)  # lr 1: lr1e+00 everywhere, not lr1e-00
    assert float(name.split("-lr")[1].rsplit("-s", 1)[0]) == pytest.approx(lr)
    assert not set(run_id) & set(":;,#?/'"), run_id  # W&B refuses these in an id


def test_variant_labels_name_the_axis_they_vary() -> None:
    init = names.variant_label({"bn": "pre", "bias": "auto", "depth": 8, "model.init_std": "0.01"}, KEYS)
    mom_keys = ("bn", "bias", "depth", "model.bn_momentum")
    mom = names.variant_label({"bn": "pre", "bias": "auto", "depth": 8, "model.bn_momentum": "0.01"}, mom_keys)
    assert (init, mom) == ("pre-auto-d8-init0.01", "pre-auto-d8-mom0.01")  # one value, two settings: two labels
    sgd = names.variant_label(
        {"bn": "off", "bias": "auto", "depth": 19, "optim.name": "sgd"}, names.variant_keys(["optim.name", "model.bn"])
    )
    assert sgd == "off-auto-d19-sgd"  # a name that says what it is keeps no tag
    other = names.variant_label(
        {"bn": "pre", "bias": "auto", "depth": 4, "trainer.compile": True}, ("bn", "bias", "depth", "trainer.compile")
    )
    assert other == "pre-auto-d4-compile=True"  # an axis without a tag: its key's last part
