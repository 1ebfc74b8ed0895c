"""The study spec as Hydra composes it (real configs, real schema) and its pure design functions."""

import math

import pytest
from helpers.env import TINY, compose_cfg
from omegaconf import OmegaConf

from bnexp.cli import ConfigError
from bnexp.sweep.spec import design, grid_axes, lr_points, rerun_overrides, resolve, spec_hash, training_cfg


def study(*overrides: str):
    args = list(overrides)
    cfg = compose_cfg(args, config_name="study")
    return cfg, *resolve(cfg, args)


def test_specs_are_a_config_group_over_the_run_config():
    cfg, sw, _ = study("sweep=lr_stability", "sweep.lr.points=12")
    run = compose_cfg([])
    # the same root config: every training key and value as bnexp.run's defaults, the same default logger, but
    # the two evaluation savings of a sweep's trials (bnexp/conf/study.yaml), which change no verdict, and their
    # conv layout (channels_last on a CPU: another rounding, not another computation)
    swept, ran = OmegaConf.to_container(training_cfg(cfg)), OmegaConf.to_container(training_cfg(run))
    keys = ("val_subset", "test", "memory_format")
    assert tuple(swept["trainer"].pop(k) for k in keys) == (1000, False, "auto")
    assert tuple(ran["trainer"].pop(k) for k in keys) == (None, True, "contiguous")
    assert swept == ran
    assert cfg.logger.name == run.logger.name == "wandb"
    lrs = lr_points(sw)
    assert len(lrs) == 12 and lrs[0] == pytest.approx(1e-5) and lrs[-1] == pytest.approx(1.0)
    assert len({round(b / a, 4) for a, b in zip(lrs, lrs[1:], strict=False)}) == 1  # evenly log-spaced
    assert grid_axes(sw.grid) == {"model.bn": ["off", "pre", "post"]}  # YAML 'off' stays a string
    assert len(design(sw)) == 108 and len({p["key"] for p in design(sw)}) == 108
    assert list(sw.seeds) == [0, 1, 2]  # the headline study: per-seed widths and an interval
    _, dep, _ = study("sweep=depth_ablation")
    assert grid_axes(dep.grid) == {"model.bn": ["off", "pre"], "model.depth": [4, 7, 10, 13, 16, 19]}
    cfg, opt, _ = study("sweep=optim_divergence")  # an optimizer axis: where does each diverge outright?
    assert grid_axes(opt.grid) == {"optim.name": ["adam", "sgd"], "model.bn": ["off", "pre"]}
    assert len(design(opt)) == 2 * 2 * 13 * 3 and opt.lr.high == 100.0
    from bnexp.names import variant_keys, variant_label

    keys = variant_keys(list(grid_axes(opt.grid)))
    assert keys == ("bn", "bias", "depth", "optim.name")
    assert variant_label({"bn": "pre", "bias": "auto", "depth": 19, "optim.name": "sgd"}, keys) == "pre-auto-d19-sgd"


def test_a_grid_axis_on_the_command_line_narrows_it():
    _, sw, notes = study("sweep=lr_stability", "model.bn=off")
    assert grid_axes(sw.grid) == {"model.bn": ["off"]} and "narrow" not in notes[0] and "[off]" in notes[0]
    _, sw, _ = study("sweep=depth_ablation", "model.depth=4")
    assert grid_axes(sw.grid) == {"model.bn": ["off", "pre"], "model.depth": [4]}
    _, sw, _ = study("sweep=lr_stability", "seed=3")
    assert list(sw.seeds) == [3]
    # a key the grid does not vary is a training override of every trial, not an axis
    cfg, sw, notes = study("sweep=lr_stability", "model.depth=4")
    assert notes == [] and training_cfg(cfg).model.depth == 4 and len(design(sw)) == 3 * 24 * 3


def test_the_swept_lr_on_the_command_line_is_refused_naming_the_range():
    with pytest.raises(ConfigError, match=r"optim.lr=0.5 is the axis every study varies; set the range instead"):
        study("sweep=lr_stability", "optim.lr=0.5")


@pytest.mark.parametrize(
    "override,needle",
    [
        ("sweep.lr.high=inf", "sweep.lr.high=inf is not a finite number"),
        ("sweep.lr.low=-1", "sweep.lr.low=-1.0 must be positive"),
        ("sweep.lr.low=1", "sweep.lr.low=1.0 must be < sweep.lr.high=1.0"),
        ("sweep.lr.points=0", "sweep.lr.points=0 must be >= 1"),
        ("sweep.rule.statistics=both", "sweep.rule.statistics='both' is not allowed; choose one of: population, batch"),
        ("sweep.seeds=[0,0]", "lists a seed twice"),
        ("sweep.seeds=[0,-2]", "seeds are whole numbers >= 0"),
        ("sweep.retries=-1", "sweep.retries=-1 must be >= 0"),
        ("+sweep.grid.optim.lr=[0.1]", "sweep.grid.optim.lr: optim.lr is swept by sweep.lr"),
        ("+sweep.grid.model.bm=[1]", "model.bm is not a training config key"),
    ],
)
def test_bad_spec_values(override, needle):
    with pytest.raises(ConfigError) as e:
        study("sweep=lr_stability", override)
    assert needle in str(e.value), str(e.value)


def test_spec_hash_counts_results_not_where_they_run():
    def h(*ov):
        cfg, sw, _ = study("sweep=lr_stability", *ov)
        return spec_hash(sw, training_cfg(cfg))

    same = h()
    for ov in (
        "logger=csv",
        "data.dir=/elsewhere",
        "trainer.accelerator=cpu",
        "trainer.compile=default",
        "trainer.max_memory_gb=64",
    ):
        assert h(ov) == same, ov  # a worker may log elsewhere or run on another machine and join the study
    for ov in ("model.depth=4", "trainer.max_steps=10", "sweep.lr.points=3", "model.bn=off", "optim=sgd"):
        assert h(ov) != same, ov


def test_rerun_overrides_rebuild_the_trial_config():
    from bnexp.sweep.spec import trial_cfg

    cfg, sw, _ = study("sweep=lr_stability", *TINY, "optim=sgd", "seed=2")
    trial = trial_cfg(training_cfg(cfg), {"model.bn": "post"}, 0.0316228, 2)
    ov = rerun_overrides(trial, compose_cfg([]))
    assert len({o.split("=")[0] for o in ov}) == len(ov)  # each key once
    assert "optim.lr=0.0316228" in ov and "seed=2" in ov and "model.bn=post" in ov
    again = training_cfg(compose_cfg(ov))  # what `python -m bnexp.run <overrides>` composes
    again.trainer.progress_bar = trial.trainer.progress_bar  # a rerun by hand shows its bar; a trial never does
    assert OmegaConf.to_container(again) == OmegaConf.to_container(trial)
    assert math.isclose(again.optim.lr, 0.0316228)
