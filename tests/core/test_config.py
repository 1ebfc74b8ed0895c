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
