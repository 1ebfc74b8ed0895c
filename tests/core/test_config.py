import subprocess
import sys

import pytest
from helpers.env import REPO, TINY, compose_cfg
from hydra.errors import ConfigCompositionException
from omegaconf.errors import ValidationError

from bnexp.cli import ConfigError
from bnexp.core.config import validate


def test_defaults_are_the_seed():
    cfg = compose_cfg()
    assert cfg.model.depth == 19 and cfg.model.bn == "pre" and cfg.model.bias == "auto"
    assert cfg.model.bn_momentum == 0.01 and cfg.model.bn_eps == 1e-3 and cfg.model.init_std == 0.05
    assert cfg.optim.name == "adam" and cfg.optim.lr == 0.002
    assert cfg.data.batch_size == 64 and cfg.trainer.max_steps == 800
    assert cfg.trainer.val_every == 100 and cfg.trainer.log_every == 25
    assert cfg.loss == "sigmoid" and cfg.seed == 0


def test_overrides_compose():
    cfg = compose_cfg(["model.bn=off", "model.bias=false", "model.depth=7", "optim=sgd", "logger=none", "seed=3"])
    validate(cfg)
    assert (cfg.model.bn, cfg.model.bias, cfg.model.depth) == ("off", "false", 7)
    assert cfg.optim.name == "sgd" and cfg.logger.name == "none" and cfg.seed == 3


def test_unknown_key_fails_at_compose():
    with pytest.raises(ConfigCompositionException, match="bm"):
        compose_cfg(["model.bm=pre"])


def test_wrong_type_fails_at_compose():
    with pytest.raises((ConfigCompositionException, ValidationError)):
        compose_cfg(["model.depth=abc"])


@pytest.mark.parametrize(
    "override,needle",
    [
        ("model.bn=foo", "choose one of: off, pre, post"),
        ("model.bias=maybe", "choose one of: auto, true, false"),
        ("model.bn_impl=tf", "choose one of: torch, manual"),
        ("model.depth=0", "model.depth=0 must be >= 1"),
        ("optim.lr=-1", "optim.lr=-1.0 must be a positive number"),
        ("optim.lr=0", "must be a positive number"),
        ("optim.name=rmsprop", "choose one of: adam, sgd"),
        ("data.batch_size=0", "data.batch_size=0 must be >= 1"),
        ("trainer.max_steps=0", "trainer.max_steps=0 must be >= 1"),
        ("loss=mse", "choose one of: sigmoid, softmax"),
        ("trainer.compile=fast", "choose one of: none, default"),
    ],
)
def test_bad_values_name_the_fix(override, needle):
    with pytest.raises(ConfigError, match=needle.replace("(", r"\(").replace(".", r"\.")):
        validate(compose_cfg([override]))


def test_yaml_off_is_normalised():
    cfg = compose_cfg()
    cfg.model.bn = False  # what an unquoted `bn: off` in YAML becomes
    assert validate(cfg).model.bn == "off"


@pytest.mark.parametrize(
    "args,needle",
    [
        (
            ["model.bm=pre"],
            "unknown config key 'model.bm'; valid keys under model: depth, bn, bias",
        ),
        (["model.bn=foo"], "model.bn='foo' is not allowed; choose one of: off, pre, post"),
        (["model.depth=0"], "model.depth=0 must be >= 1"),
        (["optim.lr=-1"], "must be a positive number"),
        (["data.dir=/nonexistent/mnist", "data.download=false"], "does not exist"),
    ],
)
def test_cli_bad_input_exit_2(args, needle, tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "bnexp.run", *TINY, *args, f"hydra.run.dir={tmp_path}/run"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert r.returncode == 2, r.stderr[-2000:]
    err = r.stderr.strip().splitlines()
    assert needle in err[-1] and err[-1].startswith("bnexp: error:"), r.stderr[-2000:]
    assert "Traceback" not in r.stderr
    assert not (tmp_path / "run" / "metrics.json").exists()


# ---- values Lightning, torch or numpy would reject later ---------------------------------------------
@pytest.mark.parametrize(
    "overrides,needle",
    [
        (["seed=-1"], "seed=-1 must be a whole number in [0, 4294967295]"),
        (["seed=4294967296"], "must be a whole number in [0, 4294967295]"),
        (["optim.weight_decay=-1"], "optim.weight_decay=-1.0 must be a finite number >= 0"),
        (["optim=sgd", "optim.momentum=-1"], "optim.momentum=-1.0 must be in [0, 1)"),
        (["optim=sgd", "optim.momentum=1"], "optim.momentum=1.0 must be in [0, 1)"),
        (["model.init_std=0"], "model.init_std=0.0 must be a positive number"),
        (["trainer.devices=0"], "trainer.devices=0 selects no device"),
        (["trainer.devices=-2"], "trainer.devices=-2 selects no device"),
        (["trainer.devices=abc"], "trainer.devices='abc' is not a device count or list"),
        (["trainer.devices=[]"], "must list distinct GPU indices"),
        (["trainer.devices=[0,0]"], "must list distinct GPU indices"),
        (["trainer.accelerator=cpu", "trainer.devices=[0]"], "which a CPU does not have"),
        (["trainer.accelerator=cpu", "trainer.devices=-1"], "with trainer.accelerator=cpu"),
        (["trainer.num_nodes=0"], "trainer.num_nodes=0 must be >= 1"),
        (["trainer.precision=bogus"], "trainer.precision='bogus' is not allowed"),
        (["trainer.accelerator=bogus"], "trainer.accelerator='bogus' is not allowed"),
        (["trainer.strategy=bogus"], "trainer.strategy='bogus' is not allowed"),
        (["trainer.max_memory_gb=0"], "trainer.max_memory_gb=0.0 must be a positive number"),
        (["data.eval_batch_size=0"], "data.eval_batch_size=0 must be >= 1 (e.g. data.eval_batch_size=1000)"),
        (["data.single_n=100", "data.limit_test=10"], "but data.limit_test=10 keeps only 10"),
        (["data.single_n=10001"], "the MNIST test set has only 10000"),
        (["logger.landscape_every=-1"], "logger.landscape_every=-1 must be >= 0"),
        (["logger.init_timeout=0"], "logger.init_timeout=0.0 must be a positive number"),
    ],
)
def test_values_rejected_later_are_refused_first(overrides, needle):
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(overrides))
    assert needle in str(e.value), str(e.value)


@pytest.mark.parametrize(
    "overrides",
    [
        ["trainer.devices=-1"],
        ["trainer.devices=auto"],
        ["trainer.accelerator=gpu", "trainer.devices=[0,1]"],
        ["trainer.accelerator=gpu", "trainer.devices='0,1'"],
        ["trainer.accelerator=cpu", "trainer.devices=2"],
        ["trainer.precision=bf16-mixed"],
        ["trainer.precision=64-true"],
        ["trainer.strategy=ddp_spawn"],
        ["optim=sgd", "optim.momentum=0"],
        ["data.limit_test=20", "data.single_n=20"],
        ["model.depth=1000", "trainer.max_memory_gb=1000"],  # the bound is the user's to raise
    ],
)
def test_valid_values_pass(overrides):
    validate(compose_cfg(overrides))


def test_lightning_accepts_exactly_these():
    """bnexp's lists of accelerators, precisions and strategies are Lightning's (a new Lightning fails here)."""
    import typing

    from lightning.fabric import connector
    from lightning.pytorch.accelerators import AcceleratorRegistry
    from lightning.pytorch.strategies import StrategyRegistry

    from bnexp.core.config import ACCELERATORS, PRECISIONS, STRATEGIES

    def flat(t) -> set:
        args = typing.get_args(t)
        return {x for a in args for x in (flat(a) if typing.get_args(a) else [a])} if args else {t}

    assert {str(p) for p in flat(connector._PRECISION_INPUT)} == set(PRECISIONS)
    assert set(AcceleratorRegistry.available_accelerators()) | {"auto", "gpu"} == set(ACCELERATORS)
    assert set(StrategyRegistry.available_strategies()) | {"auto"} == set(STRATEGIES)


@pytest.mark.parametrize("depth", [1, 2, 3, 7, 19, 25])
@pytest.mark.parametrize("bn,bias", [("pre", "auto"), ("post", "auto"), ("off", "auto"), ("pre", "true")])
def test_memory_estimate_counts_the_real_nets_parameters(depth, bn, bias):
    from bnexp.core.config import memory_estimate
    from bnexp.core.net import DeepConvNet

    net = DeepConvNet(depth=depth, bn=bn, bias=bias)
    real = sum(p.numel() for p in net.parameters()) + sum(b.numel() for b in net.buffers() if b.is_floating_point())
    cfg = compose_cfg([f"model.depth={depth}", f"model.bn={bn}", f"model.bias={bias}"])
    assert memory_estimate(validate(cfg))["params"] == real


def test_memory_bound_refuses_a_net_that_cannot_fit_and_passes_the_seed():
    from bnexp.core.config import memory_estimate

    seed = compose_cfg()  # depth 19: about 0.1 GB, far under the default bound
    est = memory_estimate(validate(seed))
    assert (est["param_bytes"] + max(est["train_bytes"], est["eval_bytes"])) / 1e9 < seed.trainer.max_memory_gb / 100
    with pytest.raises(ConfigError) as e:
        validate(compose_cfg(["model.depth=1000"]))  # 48 billion parameters: ~770 GB with Adam
    msg = str(e.value)
    assert msg.startswith("model.depth=1000 needs about 771.2 GB (48.0 billion parameters")
    assert "more than trainer.max_memory_gb=16; raise trainer.max_memory_gb=849 or lower model.depth" in msg
    with pytest.raises(
        ConfigError, match=r"^data.batch_size=100000 \(model.depth=19\) needs about .* lower data.batch"
    ):
        validate(compose_cfg(["data.batch_size=100000"]))


def test_hardware_this_machine_lacks_is_named():
    import torch

    from bnexp.core.config import check_hardware

    check_hardware(validate(compose_cfg(["trainer.accelerator=cpu"])))
    if torch.cuda.is_available():
        n = torch.cuda.device_count()
        with pytest.raises(ConfigError, match=f"this machine has {n}"):
            check_hardware(validate(compose_cfg(["trainer.accelerator=gpu", f"trainer.devices={n + 1}"])))
    else:
        with pytest.raises(ConfigError, match="no CUDA device"):
            check_hardware(validate(compose_cfg(["trainer.accelerator=gpu"])))
        with pytest.raises(ConfigError, match="does not run on a CPU"):
            check_hardware(validate(compose_cfg(["trainer.precision=16-mixed"])))
