"""Config schema: dataclasses registered in Hydra's ConfigStore (keys + types); YAML in bnexp/conf/ holds values.

The schema makes Hydra reject unknown keys (`model.bm=pre`) and wrong types (`model.depth=abc`) at
compose time; `validate()` then checks values (allowed choices, ranges) before any data is loaded or
a step is trained. Both end in `ConfigError`, which the CLIs turn into one line and exit status 2.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from bnexp.cli import ConfigError
from bnexp.core.net import BIAS_MODES, BN_MODES
from bnexp.core.norm import BN_IMPLS

OPTIMS = ("adam", "sgd")
LOSSES = ("sigmoid", "softmax")
LOGGERS = ("csv", "wandb", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune")


@dataclass
class ModelConfig:
    depth: int = 19  # conv layers; layer i has 4*i channels, stride 2 when i % 3 == 0
    bn: str = "pre"  # off | pre (conv -> BN -> ReLU) | post (conv -> ReLU -> BN)
    bias: str = "auto"  # auto | true | false
    bn_impl: str = "torch"  # torch (library layer) | manual (the seed's hand-written BN)
    bn_momentum: float = 0.01  # PyTorch momentum = 1 - TF decay (0.99)
    bn_eps: float = 1e-3
    sync_bn: bool = False  # SyncBatchNorm under DDP (torch impl only)
    fc_units: int = 100
    init_std: float = 0.05  # truncated normal std of conv weights


@dataclass
class DataConfig:
    dir: Optional[str] = None  # None: $BNEXP_DATA_DIR, else ~/.cache/bnexp/mnist
    download: bool = True  # fetch (with checksum check) when files are missing
    batch_size: int = 64
    eval_batch_size: int = 1000
    limit_train: Optional[int] = None  # first N of each split: quick runs and tests
    limit_val: Optional[int] = None
    limit_test: Optional[int] = None
    single_n: int = 100  # first N test images scored one at a time (population statistics check)
    on_device: bool = True  # keep the whole dataset on the accelerator


@dataclass
class OptimConfig:
    name: str = "adam"  # adam | sgd
    lr: float = 0.002
    momentum: float = 0.9  # sgd only
    weight_decay: float = 0.0


@dataclass
class TrainerConfig:
    max_steps: int = 800
    val_every: int = 100  # validation every N steps
    log_every: int = 25  # training metrics every N steps
    accelerator: str = "auto"  # auto | cpu | gpu | cuda | mps
    devices: Any = 1
    num_nodes: int = 1
    strategy: str = "auto"  # auto | ddp | ddp_spawn ...
    precision: str = "32-true"
    compile: str = "none"  # none | default | reduce-overhead | max-autotune
    deterministic: bool = False
    progress_bar: bool = True


@dataclass
class LoggerConfig:
    name: str = "csv"  # csv | wandb | none
    project: Optional[str] = None  # wandb: None -> $WANDB_PROJECT, else "bnexp"
    entity: Optional[str] = None  # wandb: None -> $WANDB_ENTITY, else your default entity
    mode: str = "auto"  # wandb: auto (online if logged in, else offline) | online | offline | disabled
    group: Optional[str] = None  # wandb group: the sweep's study; None -> "single"
    job_type: str = "run"  # run | trial (set by the sweep) | sweep-summary
    run_name: Optional[str] = None  # None -> e.g. pre-auto-d19-lr2e-03-s0
    run_id: Optional[str] = None  # W&B run id; None -> derived from the run dir (a sweep: from the study and point)
    tags: list = field(default_factory=list)  # extra tags beside the variant's
    diagnostics_every: int = 0  # per-layer activation/grad stats every N steps (0: off)
    log_histograms: bool = True  # wandb: activation histograms with the per-layer stats
    landscape_every: int = 0  # loss-landscape probe every N steps (0: off); costs ~2x a step per scale
    landscape_scales: list = field(default_factory=lambda: [0.5, 1.0, 2.0, 4.0])  # step sizes, multiples of lr
    init_timeout: float = 60.0  # wandb: seconds to wait for a run to start (online; auto falls back offline)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    trainer: TrainerConfig = field(default_factory=TrainerConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    seed: int = 0
    loss: str = "sigmoid"  # sigmoid (the seed: sigmoid cross-entropy on one-hot) | softmax


# settings of where and how a run runs, not of what it computes: they never make a result "different"
# (a study's identity, a checkpoint's config check)
EXECUTION_KEYS = (
    "logger",
    "data.dir",
    "data.download",
    "data.on_device",
    "data.eval_batch_size",
    "trainer.accelerator",
    "trainer.devices",
    "trainer.num_nodes",
    "trainer.strategy",
    "trainer.compile",
    "trainer.progress_bar",
    "trainer.deterministic",
)


def flat(node: Any, prefix: str = "") -> dict[str, Any]:
    """A nested config container as {dotted.key: value}."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        if isinstance(v, dict) and v:
            out.update(flat(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def result_settings(cfg: DictConfig | dict) -> dict[str, Any]:
    """The settings that change a run's result: every key but EXECUTION_KEYS, flat."""
    from omegaconf import OmegaConf

    node = OmegaConf.to_container(cfg, resolve=True) if isinstance(cfg, DictConfig) else cfg
    return {k: v for k, v in flat(node).items() if not any(k == e or k.startswith(e + ".") for e in EXECUTION_KEYS)}


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(group="schema", name="run", node=Config, package="_global_")


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    v = str(value)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not allowed; choose one of: {', '.join(allowed)} (e.g. {key}={allowed[0]})")
    return v


def _positive(value: Any, key: str, example: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} must be a positive number (e.g. {key}={example})")


def validate(cfg: DictConfig) -> DictConfig:
    """Check values; raise ConfigError naming the fix. Normalises YAML's `off` (parsed as False)."""
    m = cfg.model
    if str(m.bn) == "False":  # YAML 1.1 reads an unquoted `bn: off` as false
        m.bn = "off"
    _choice(m.bn, "model.bn", BN_MODES)
    _choice(str(m.bias).lower(), "model.bias", BIAS_MODES)
    m.bias = str(m.bias).lower()
    _choice(m.bn_impl, "model.bn_impl", BN_IMPLS)
    if m.depth < 1:
        raise ConfigError(f"model.depth={m.depth} must be >= 1 (the seed uses model.depth=19)")
    if not 0.0 <= m.bn_momentum <= 1.0:
        raise ConfigError(f"model.bn_momentum={m.bn_momentum} must be in [0, 1] (TF decay 0.99 = momentum 0.01)")
    _positive(m.bn_eps, "model.bn_eps", "1e-3")
    if m.fc_units < 1:
        raise ConfigError(f"model.fc_units={m.fc_units} must be >= 1 (e.g. model.fc_units=100)")
    if m.sync_bn and m.bn_impl != "torch":
        raise ConfigError("model.sync_bn=true needs model.bn_impl=torch")
    _choice(cfg.optim.name, "optim.name", OPTIMS)
    _positive(cfg.optim.lr, "optim.lr", "0.002")
    d = cfg.data
    for key in ("batch_size", "eval_batch_size", "single_n"):
        if d[key] < 1:
            raise ConfigError(f"data.{key}={d[key]} must be >= 1 (e.g. data.batch_size=64)")
    for key in ("limit_train", "limit_val", "limit_test"):
        if d[key] is not None and d[key] < 1:
            raise ConfigError(f"data.{key}={d[key]} must be >= 1 or null")
    if d.limit_train is not None and d.limit_train < d.batch_size:
        raise ConfigError(f"data.limit_train={d.limit_train} is smaller than data.batch_size={d.batch_size}")
    t = cfg.trainer
    for key in ("max_steps", "val_every", "log_every"):
        if t[key] < 1:
            raise ConfigError(f"trainer.{key}={t[key]} must be >= 1 (e.g. trainer.max_steps=800)")
    _choice(t.compile, "trainer.compile", COMPILE_MODES)
    _choice(cfg.loss, "loss", LOSSES)
    _choice(cfg.logger.name, "logger", LOGGERS)
    _choice(cfg.logger.mode, "logger.mode", WANDB_MODES)
    return cfg
