"""Config schema: dataclasses registered in Hydra's ConfigStore (keys + types); YAML in bnexp/conf/ holds values.

The schema makes Hydra reject unknown keys (`model.bm=pre`) and wrong types (`model.depth=abc`) at
compose time; `validate()` then checks values (allowed choices, ranges) before any data is loaded or
a step is trained. Both end in `ConfigError`, which the CLIs turn into one line and exit status 2.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, ListConfig, OmegaConf

from bnexp.cli import ConfigError
from bnexp.core.arch import BIAS_MODES, BN_IMPLS, BN_MODES, conv_plan, use_bias
from bnexp.core.layout import FORMATS

OPTIMS = ("adam", "sgd")
LOSSES = ("sigmoid", "softmax")
LOGGERS = ("csv", "wandb", "none")
WANDB_MODES = ("auto", "online", "offline", "disabled")
COMPILE_MODES = ("none", "default", "reduce-overhead", "max-autotune", "auto")
MEMORY_FORMATS = FORMATS  # trainer.memory_format (bnexp.core.layout)
# What Lightning 2.x's Trainer accepts (tests/core/test_config.py checks these against Lightning's own lists, so
# a new Lightning that adds or drops one fails a test, not a user's run 40 minutes in)
ACCELERATORS = ("auto", "cpu", "gpu", "cuda", "mps", "tpu")
PRECISIONS = ("32-true", "16-mixed", "bf16-mixed", "16-true", "bf16-true", "64-true",
              "transformer-engine", "transformer-engine-float16", "32", "16", "bf16", "64")  # fmt: skip
STRATEGIES = (
    "auto", "ddp", "ddp_spawn", "ddp_fork", "ddp_notebook", "ddp_find_unused_parameters_false",
    "ddp_find_unused_parameters_true", "ddp_spawn_find_unused_parameters_false",
    "ddp_spawn_find_unused_parameters_true", "ddp_fork_find_unused_parameters_false",
    "ddp_fork_find_unused_parameters_true", "ddp_notebook_find_unused_parameters_false",
    "ddp_notebook_find_unused_parameters_true", "deepspeed", "deepspeed_stage_1", "deepspeed_stage_2",
    "deepspeed_stage_2_offload", "deepspeed_stage_3", "deepspeed_stage_3_offload",
    "deepspeed_stage_3_offload_nvme", "fsdp", "fsdp_cpu_offload", "single_device", "single_xla", "xla_debug",
    "xla", "single_tpu",
)  # fmt: skip
MAX_SEED = 2**32 - 1  # numpy's seed range (Lightning's seed_everything seeds numpy too)
MNIST_TEST_SIZE = 10_000


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
    # auto: compile where the steps one process trains reach the break-even (bnexp.core.compiled.choose): a sweep
    # worker with enough trials compiles once and reuses the graphs; a single run stays eager
    compile: str = "auto"  # auto | none | default | reduce-overhead | max-autotune
    compile_break_even_steps: Optional[int] = None  # auto's threshold in steps per process; null: measured default
    # the conv layout (bnexp.core.layout): auto is channels_last on a CPU (0.83x a step at one thread), contiguous
    # on a GPU; it changes float32 rounding, not what is computed. bnexp.run keeps the seed's numerics
    # (contiguous: the README's pinned values); sweeps default to auto (bnexp/conf/study.yaml)
    memory_format: str = "contiguous"  # contiguous | channels_last | auto
    recal_batches: int = 50  # after training: BN statistics recomputed over N training batches (val/acc_recal)
    # validations before the last score the first N validation images (the curves, at that precision: a
    # binomial standard error of at most 0.5/sqrt(N)); the final validation, which a verdict reads, is whole.
    # null: every validation whole. Sweeps default to 1000 (bnexp/conf/study.yaml)
    val_subset: Optional[int] = None
    test: bool = True  # the test pass and the single-image checks after training (a sweep's trials: false)
    deterministic: bool = False
    progress_bar: bool = True
    # refuse a config whose net needs more (parameters, gradients, optimizer state, activations: memory_estimate);
    # the seed's net at depth 19 needs about 0.1 GB
    max_memory_gb: float = 16.0


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
    dir: Optional[str] = None  # W&B keeps the run in <dir>/wandb/; None: the run dir (a sweep: its out dir)
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
    "trainer.recal_batches",  # a view added after training: the weights and the other metrics do not change
    "trainer.val_subset",  # the intermediate validations' precision: the weights and the final validation do not change
    "trainer.test",  # the test pass after training: the weights and the validations do not change
    "trainer.compile_break_even_steps",
    "trainer.memory_format",  # the kernels' layout, as trainer.compile: the same computation, another rounding
    "trainer.progress_bar",
    "trainer.deterministic",
    "trainer.max_memory_gb",  # a guard checked before building, not a setting of what is computed
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
    # `${bnexp.run_name:...}` in the run dirs of config.yaml: a run's dir, its W&B name and its W&B id (derived
    # from the dir) share one name, bnexp.names.run_name's (`pre-auto-d19-lr2e-03-s0`)
    OmegaConf.register_new_resolver("bnexp.run_name", _run_name, replace=True)


def _run_name(bn: Any, bias: Any, depth: Any, lr: Any, seed: Any) -> str:
    from bnexp import names

    try:
        return names.safe(names.run_name({"bn": bn, "bias": bias, "depth": depth}, float(lr), int(seed)))
    except (TypeError, ValueError):  # a bad value: validation names it; the dir keeps the raw values
        return names.safe(f"{bn}-{bias}-d{depth}-lr{lr}-s{seed}")


def _choice(value: Any, key: str, allowed: tuple[str, ...]) -> str:
    v = str(value)
    if v not in allowed:
        raise ConfigError(f"{key}={v!r} is not allowed; choose one of: {', '.join(allowed)} (e.g. {key}={allowed[0]})")
    return v


def _positive(value: Any, key: str, example: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
        raise ConfigError(f"{key}={value} must be a positive number (e.g. {key}={example})")


def _at_least(value: Any, key: str, low: int, example: Any) -> None:
    if value < low:
        raise ConfigError(f"{key}={value} must be >= {low} (e.g. {key}={example})")


def _non_negative(value: Any, key: str, example: str) -> None:
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ConfigError(f"{key}={value} must be a finite number >= 0 (e.g. {key}={example})")


def _devices(t: DictConfig) -> None:
    """Lightning's `devices`: a count >= 1, -1 (all), "auto", or GPU indices ([0, 1] or "0,1")."""
    d = t.devices
    hint = "trainer.devices=1 (a count), -1 (all), auto, or GPU indices like [0,1]"
    if isinstance(d, str) and d.strip() != "auto":
        s = d.strip()
        if re.fullmatch(r"-?\d+", s):
            d = int(s)
        elif re.fullmatch(r"\d+(,\d+)*,?", s):
            d = [int(x) for x in s.split(",") if x]
        else:
            raise ConfigError(f"trainer.devices={d!r} is not a device count or list; use {hint}")
    if isinstance(d, bool):
        raise ConfigError(f"trainer.devices={d} is not a device count or list; use {hint}")
    if isinstance(d, int) and d < 1 and d != -1:
        raise ConfigError(f"trainer.devices={d} selects no device; use {hint}")
    if isinstance(d, (list, ListConfig)):
        if not d or any(not isinstance(x, int) or isinstance(x, bool) or x < 0 for x in d) or len(set(d)) < len(d):
            raise ConfigError(f"trainer.devices={list(d)} must list distinct GPU indices >= 0; use {hint}")
        if str(t.accelerator) == "cpu":
            raise ConfigError(
                f"trainer.devices={list(d)} lists device indices, which a CPU does not have; with "
                "trainer.accelerator=cpu give a number of processes, e.g. trainer.devices=2"
            )
    elif str(t.accelerator) == "cpu" and d == -1:
        raise ConfigError(
            "trainer.devices=-1 (all GPUs) with trainer.accelerator=cpu; give a number, e.g. trainer.devices=2"
        )


def memory_estimate(cfg: DictConfig) -> dict[str, float]:
    """Bytes the net needs to train under `cfg`, from the config alone (nothing is built): parameters with
    their gradients and optimizer state, activations kept for the backward pass at data.batch_size (and
    their gradients), and the widest layer of an evaluation pass at data.eval_batch_size."""
    m, d, o = cfg.model, cfg.data, cfg.optim
    plan = conv_plan(int(m.depth))
    bn, bias = m.bn != "off", use_bias(str(m.bn), str(m.bias).lower())
    per_layer = (1 if bias else 0) + (4 if bn else 0)  # per channel: bias; BN weight, bias and 2 running stats
    params, kept, widest = 0, 0, 28 * 28
    for p in plan:
        params += 9 * p["c_in"] * p["c_out"] + per_layer * p["c_out"]
        size = p["c_out"] * p["hw_out"] ** 2  # one image's activation, (C, H, W)
        kept += size * (3 if bn else 2)  # conv output, (BN output,) ReLU output
        widest = max(widest, size)
    flat = plan[-1]["c_out"] * plan[-1]["hw_out"] ** 2
    params += flat * m.fc_units + per_layer * m.fc_units + 10 * m.fc_units + 10
    word = 8 if str(cfg.trainer.precision).startswith("64") else 4
    states = 2 if o.name == "adam" else (1 if o.momentum > 0 else 0)  # Adam: 2 moments; SGD: momentum buffer
    return {
        "params": params,
        "param_bytes": params * word * (2 + states),  # weights, gradients, optimizer state
        "train_bytes": d.batch_size * kept * word * 2,  # kept activations and their gradients
        "eval_bytes": d.eval_batch_size * widest * word * 3,  # one layer's input, pre-activation and output
    }


def _check_memory(cfg: DictConfig) -> None:
    t, m, d = cfg.trainer, cfg.model, cfg.data
    _positive(t.max_memory_gb, "trainer.max_memory_gb", "16")
    est = memory_estimate(cfg)
    need = (est["param_bytes"] + max(est["train_bytes"], est["eval_bytes"])) / 1e9
    if need <= t.max_memory_gb:
        return
    gb = {k: est[k] / 1e9 for k in ("param_bytes", "train_bytes", "eval_bytes")}
    if gb["param_bytes"] >= max(gb["train_bytes"], gb["eval_bytes"]):
        lower = "model.depth (or model.fc_units)"
    else:
        lower = "data.batch_size" if gb["train_bytes"] >= gb["eval_bytes"] else "data.eval_batch_size"
    n = est["params"]
    count = f"{n / 1e9:,.1f} billion" if n >= 1e9 else f"{n / 1e6:,.1f} million"
    what = f"model.depth={m.depth}" if lower.startswith("model") else f"{lower}={d[lower[5:]]} (model.depth={m.depth})"
    raise ConfigError(
        f"{what} needs about {need:,.1f} GB ({count} parameters with gradients and {cfg.optim.name} state: "
        f"{gb['param_bytes']:,.1f} GB; activations at data.batch_size={d.batch_size}: {gb['train_bytes']:,.1f} GB, "
        f"at data.eval_batch_size={d.eval_batch_size}: {gb['eval_bytes']:,.1f} GB), more than "
        f"trainer.max_memory_gb={t.max_memory_gb:g}; raise trainer.max_memory_gb={math.ceil(need * 1.1):d} "
        f"or lower {lower}"
    )


def check_hardware(cfg: DictConfig) -> None:
    """What the config alone cannot say: whether this machine has the devices asked for. Apart from validate(),
    which must also pass where a study is only created (a login node without GPUs)."""
    import torch

    t = cfg.trainer
    acc, d = str(t.accelerator), t.devices
    gpu = acc in ("gpu", "cuda") or (acc == "auto" and torch.cuda.is_available())
    if acc in ("gpu", "cuda"):
        n = torch.cuda.device_count()
        if n == 0:
            raise ConfigError(
                f"trainer.accelerator={acc}, but this machine has no CUDA device (torch.cuda.device_count() is 0); "
                "use trainer.accelerator=cpu or auto"
            )
        if isinstance(d, str) and d.strip() not in ("auto", "-1"):
            d = [int(x) for x in d.split(",") if x] if "," in d else int(d)
        wanted = max(d) + 1 if isinstance(d, (list, ListConfig)) else (d if isinstance(d, int) else 1)
        if wanted > n:
            raise ConfigError(f"trainer.devices={t.devices} asks for {wanted} GPUs, this machine has {n}; "
                              f"use trainer.devices={n} or fewer")  # fmt: skip
    elif acc == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("trainer.accelerator=mps, but MPS is not available here; use trainer.accelerator=cpu or auto")
    if not gpu and str(t.precision) in ("16-mixed", "16"):
        raise ConfigError(
            f"trainer.precision={t.precision} (fp16 autocast) does not run on a CPU; use trainer.precision=bf16-mixed "
            "or 32-true"
        )


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
    _positive(m.init_std, "model.init_std", "0.05")
    _at_least(m.fc_units, "model.fc_units", 1, 100)
    if m.sync_bn and m.bn_impl != "torch":
        raise ConfigError("model.sync_bn=true needs model.bn_impl=torch")
    o = cfg.optim
    _choice(o.name, "optim.name", OPTIMS)
    _positive(o.lr, "optim.lr", "0.002")
    if not (math.isfinite(o.momentum) and 0.0 <= o.momentum < 1.0):
        raise ConfigError(f"optim.momentum={o.momentum} must be in [0, 1) (e.g. optim.momentum=0.9; 0: plain SGD)")
    _non_negative(o.weight_decay, "optim.weight_decay", "0.0001")
    if isinstance(cfg.seed, bool) or not 0 <= cfg.seed <= MAX_SEED:
        raise ConfigError(f"seed={cfg.seed} must be a whole number in [0, {MAX_SEED}] (e.g. seed=0)")
    d = cfg.data
    if d.dir is not None and not str(d.dir).strip():  # '' would silently mean the current directory
        raise ConfigError("data.dir='' names no directory; give a path (data.dir=/path/to/mnist) or data.dir=null")
    for key, example in (("batch_size", 64), ("eval_batch_size", 1000), ("single_n", 100)):
        _at_least(d[key], f"data.{key}", 1, example)
    for key in ("limit_train", "limit_val", "limit_test"):
        if d[key] is not None and d[key] < 1:
            raise ConfigError(f"data.{key}={d[key]} must be >= 1 or null")
    if d.limit_train is not None and d.limit_train < d.batch_size:
        raise ConfigError(f"data.limit_train={d.limit_train} is smaller than data.batch_size={d.batch_size}")
    n_test = min(d.limit_test or MNIST_TEST_SIZE, MNIST_TEST_SIZE)
    if d.single_n > n_test:  # the batch-of-1 check would silently score fewer images than asked
        where = f"data.limit_test={d.limit_test} keeps only" if d.limit_test else "the MNIST test set has only"
        raise ConfigError(
            f"data.single_n={d.single_n} scores the first {d.single_n} test images one at a time, but {where} "
            f"{n_test}; lower data.single_n to <= {n_test} or raise data.limit_test"
        )
    t = cfg.trainer
    for key, example in (("max_steps", 800), ("val_every", 100), ("log_every", 25), ("num_nodes", 1)):
        _at_least(t[key], f"trainer.{key}", 1, example)
    if t.val_subset is not None:
        _at_least(t.val_subset, "trainer.val_subset", 1, 1000)
    _choice(t.compile, "trainer.compile", COMPILE_MODES)
    _choice(t.memory_format, "trainer.memory_format", MEMORY_FORMATS)
    if t.compile_break_even_steps is not None:
        _at_least(t.compile_break_even_steps, "trainer.compile_break_even_steps", 0, 3000)
    _choice(t.accelerator, "trainer.accelerator", ACCELERATORS)
    _choice(t.precision, "trainer.precision", PRECISIONS)
    _choice(t.strategy, "trainer.strategy", STRATEGIES)
    _devices(t)
    _choice(cfg.loss, "loss", LOSSES)
    lg = cfg.logger
    _choice(lg.name, "logger", LOGGERS)
    _choice(lg.mode, "logger.mode", WANDB_MODES)
    for key in ("diagnostics_every", "landscape_every"):
        _at_least(lg[key], f"logger.{key}", 0, 100)
    _positive(lg.init_timeout, "logger.init_timeout", "60")
    for x in lg.landscape_scales:
        _positive(x, "logger.landscape_scales", "[0.5,1.0,2.0,4.0]")
    check_combinations(cfg)
    _check_memory(cfg)  # last: it reads the values checked above
    return cfg


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def check_combinations(cfg: DictConfig) -> None:
    """Settings each valid alone, unsafe (refused) or meaningless (a warning) together; and text settings
    that must stay on one line (a name with a newline makes a two-line config.yaml and W&B name)."""
    from bnexp.cli import warn

    t, lg, m = cfg.trainer, cfg.logger, cfg.model
    for key in ("project", "entity", "group", "job_type", "run_name", "run_id", "dir"):
        if lg[key] is not None and _CONTROL.search(str(lg[key])):
            raise ConfigError(f"logger.{key}={str(lg[key])!r} holds a control character (a newline, a tab); "
                              f"give logger.{key} on one line")  # fmt: skip
    for tag in lg.tags:
        if _CONTROL.search(str(tag)):
            raise ConfigError(f"logger.tags holds {str(tag)!r}, with a control character; give each tag on one line")
    _at_least(t.recal_batches, "trainer.recal_batches", 0, 50)
    if t.val_every > t.max_steps:
        warn(f"trainer.val_every={t.val_every} > trainer.max_steps={t.max_steps}: no validation before the final "
             f"one (no learning curve); lower trainer.val_every to {t.max_steps} or less")  # fmt: skip
    if t.log_every > t.max_steps:
        warn(f"trainer.log_every={t.log_every} > trainer.max_steps={t.max_steps}: no training metric is ever "
             f"logged; lower trainer.log_every")  # fmt: skip
    for key in ("diagnostics_every", "landscape_every"):
        every = lg[key]
        if every > t.max_steps:
            warn(f"logger.{key}={every} > trainer.max_steps={t.max_steps}: it never runs; lower it or set 0 (off)")
        elif every > 0 and lg.name == "none":
            warn(f"logger.{key}={every} with logger=none: its measurements are recorded nowhere; use logger=csv "
                 f"or logger=wandb, or logger.{key}=0")  # fmt: skip
    if m.sync_bn and str(m.bn) == "off":
        warn("model.sync_bn=true with model.bn=off: there is no BN to synchronise; drop model.sync_bn")
    if t.compile_break_even_steps is not None and t.compile != "auto":
        warn(f"trainer.compile_break_even_steps is auto's threshold; with trainer.compile={t.compile} it is unused")
    if cfg.optim.name == "adam" and cfg.optim.momentum != OptimConfig.momentum:
        warn(f"optim.momentum={cfg.optim.momentum} is SGD's; with optim.name=adam it is unused (optim=sgd uses it)")
    if lg.name != "wandb":
        for key, default in (("mode", "auto"), ("project", None), ("entity", None)):
            if lg[key] != default:
                warn(f"logger.{key}={lg[key]} is a W&B setting; with logger={lg.name} it is unused (logger=wandb)")
