"""From a config to a result: the explicit builders and `train(cfg)`, the one training path.

`train(cfg)` is what `python -m bnexp.run` runs and what every sweep trial runs. It writes the resolved
config (`config.yaml`) and `metrics.json` into the run directory (Hydra's run dir, or `output_dir`) and
returns the metrics dict (keys: see bnexp.core.metrics). bnexp.population.train_population trains K learning
rates as one model through the same pieces: build_datamodule, compile_model, build_trainer, fit_evaluate,
run_metrics and finish_run.
"""

from __future__ import annotations

import logging
import os
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp.cli import ConfigError
from bnexp.core.config import validate
from bnexp.core.ddp import ddp_job
from bnexp.core.metrics import run_metrics
from bnexp.core.provenance import provenance
from bnexp.files import write_json_atomic, write_text_atomic

log = logging.getLogger("bnexp")


def _quiet_lightning() -> None:
    # Lightning's advice lines assume DataLoaders and epochs; ours are tensor-indexed streams by step.
    for pat in (
        ".*does not have many workers.*",
        ".*Total length of .* across ranks is zero.*",
        ".*`training_step` returned `None`.*",
        ".*GPU available but not used.*",
        ".*The number of training batches .* is smaller than the logging interval.*",
        ".*LeafSpec.*",
        ".*isinstance\\(treespec, LeafSpec\\).*",
    ):
        warnings.filterwarnings("ignore", message=pat)
    for name in ("lightning.pytorch.utilities.rank_zero", "lightning.pytorch.accelerators.cuda", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)


def model_kwargs(cfg: DictConfig) -> dict[str, Any]:
    """cfg.model -> the net's constructor arguments (DeepConvNet; a population builds its members from them)."""
    m = cfg.model
    keys = ("depth", "bn", "bias", "bn_impl", "bn_momentum", "bn_eps", "fc_units", "init_std")
    return {k: m[k] for k in keys}


def build_module(cfg: DictConfig):
    from bnexp.core.lit import BNExpModule

    o = cfg.optim
    module = BNExpModule(
        net=model_kwargs(cfg),
        sync_bn=cfg.model.sync_bn,
        optim=o.name,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        loss=cfg.loss,
        log_every=cfg.trainer.log_every,
    )
    return compile_model(module, cfg.trainer.compile)


def compile_model(module: Any, mode: str) -> Any:
    """torch.compile the module's net (not the LightningModule) unless mode is "none": "reduce-overhead" captures
    the forward and backward in CUDA graphs on a GPU. Eval mode and the batch-of-1 test compile their own graphs
    (guards recompile). $BNEXP_COMPILE_BACKEND picks another torch.compile backend than inductor (then `mode`
    only switches compilation on): aot_eager traces the very graphs (capture, autograd, BN buffer updates)
    without code generation, for quick CPU checks of the compiled paths (bench/gpu_check.py --quick, tests)."""
    if mode != "none":
        import torch

        backend = os.environ.get("BNEXP_COMPILE_BACKEND", "inductor")
        log.info("torch.compile(model, mode=%s, backend=%s)", mode, backend)
        kw = dict(mode=mode) if backend == "inductor" else dict(backend=backend)
        module.model = torch.compile(module.model, **kw)
    return module


def data_dir(cfg: DictConfig) -> str | None:
    """`data.dir` as an absolute path: a relative one means the directory it named where the command was typed
    (Hydra's original cwd), whatever directory a job or a child process runs in. None: $BNEXP_DATA_DIR."""
    d = cfg.data.dir
    if d is None or os.path.isabs(os.path.expanduser(str(d))):
        return None if d is None else os.path.expanduser(str(d))
    from hydra.utils import to_absolute_path

    try:
        return to_absolute_path(str(d))  # relative to hydra.runtime.cwd inside a Hydra job
    except ValueError:  # no Hydra job (a library call): the current directory
        return os.path.abspath(str(d))


def build_datamodule(cfg: DictConfig, member_seeds: list[int] | None = None):
    """The data; `member_seeds`: a population's, each member drawing its solo run's batches."""
    from bnexp.core.data import load_mnist, make_splits
    from bnexp.core.lit import MNISTDataModule

    d = cfg.data
    raw = load_mnist(data_dir(cfg), download=d.download)
    splits = make_splits(raw, d.limit_train, d.limit_val, d.limit_test)
    return MNISTDataModule(splits, d.batch_size, d.eval_batch_size, cfg.seed, d.single_n, d.on_device, member_seeds)


def _progress_bar(every: int) -> Any:
    from lightning.pytorch.callbacks import TQDMProgressBar

    class StepBar(TQDMProgressBar):
        """One training bar refreshed every `every` steps; no bars for the short evaluation passes."""

        def init_validation_tqdm(self):
            bar = super().init_validation_tqdm()
            bar.disable = True
            return bar

        def init_test_tqdm(self):
            bar = super().init_test_tqdm()
            bar.disable = True
            return bar

    return StepBar(refresh_rate=every)


def build_trainer(cfg: DictConfig, out_dir: Path, logger: Any, callbacks: list) -> Any:
    import lightning as L

    t = cfg.trainer
    if t.progress_bar:
        callbacks = [*callbacks, _progress_bar(t.log_every)]
    return L.Trainer(
        max_steps=t.max_steps,
        val_check_interval=t.val_every,
        check_val_every_n_epoch=None,
        log_every_n_steps=t.log_every,
        accelerator=t.accelerator,
        devices=t.devices,
        num_nodes=t.num_nodes,
        strategy=t.strategy,
        precision=t.precision,
        deterministic=t.deterministic,
        sync_batchnorm=bool(cfg.model.sync_bn),
        logger=logger,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_model_summary=False,
        enable_progress_bar=t.progress_bar,
        num_sanity_val_steps=0,
        default_root_dir=str(out_dir),
    )


def fit_evaluate(trainer: Any, module: Any, dm: Any) -> float:
    """Fit; validate once more where training stopped between validations (divergence); test. Returns the
    seconds fit took. `module.needs_validation(step)` says whether the last validation is missing."""
    t_fit = time.perf_counter()
    trainer.fit(module, datamodule=dm)
    train_s = time.perf_counter() - t_fit
    if module.needs_validation(trainer.global_step):
        trainer.validate(module, datamodule=dm, verbose=False)
    trainer.test(module, datamodule=dm, verbose=False)
    return train_s


def finish_run(out: Path, metrics: dict[str, Any], logger: Any, rule: Any) -> None:
    """metrics.json (atomically), then the logger's summary and close (W&B)."""
    from bnexp.tracking.loggers import finish_logger

    write_json_atomic(out / "metrics.json", metrics)
    finish_logger(logger, metrics, rule)


def train(
    cfg: DictConfig,
    output_dir: str | os.PathLike | None = None,
    callbacks: list | None = None,
    logger: Any = "from_cfg",
    on_module: Callable[[Any], None] | None = None,
    rule: Any = None,
) -> dict[str, Any]:
    """Train one configuration; return (and write to metrics.json) its final metrics.

    A non-finite loss is a result, not a crash: training stops, `diverged` is true, the metrics
    so far are kept and the test metrics are still computed on the weights it ended with.
    """
    import lightning as L

    from bnexp.tracking.loggers import build_callbacks, build_logger

    _quiet_lightning()
    validate(cfg)
    out = Path(output_dir) if output_dir is not None else _hydra_output_dir()
    t0, t_wall = time.perf_counter(), time.time()
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    dm = build_datamodule(cfg)  # data errors surface here, before any model is built or file written
    out.mkdir(parents=True, exist_ok=True)
    module = build_module(cfg)
    if on_module is not None:
        on_module(module)
    lg = build_logger(cfg, out) if logger == "from_cfg" else logger
    trainer = build_trainer(cfg, out, lg, [*build_callbacks(cfg), *(callbacks or [])])
    if cfg.model.sync_bn and trainer.world_size > 1 and trainer.strategy.root_device.type != "cuda":
        # torch's DDP refuses SyncBatchNorm on CPU modules ("only work with GPU modules"); say so now,
        # before any rank is started, instead of a traceback from every rank
        raise ConfigError(
            f"model.sync_bn=true needs CUDA devices (torch's SyncBatchNorm does not run on "
            f"{trainer.strategy.root_device.type}); use trainer.accelerator=gpu, or model.sync_bn=false"
        )
    if trainer.is_global_zero:  # DDP ranks share the run dir; one writer (as for metrics.json)
        write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    log.info(
        "training bn=%s bias=%s depth=%d bn_impl=%s lr=%g steps=%d on %s",
        cfg.model.bn,
        cfg.model.bias,
        cfg.model.depth,
        cfg.model.bn_impl,
        cfg.optim.lr,
        cfg.trainer.max_steps,
        trainer.strategy.root_device,
    )
    with ddp_job(trainer, out):
        train_s = fit_evaluate(trainer, module, dm)
    steps = int(trainer.global_step)
    metrics = run_metrics(
        module.record,
        cfg,
        step=steps,
        wall_s=time.perf_counter() - t0,
        train_s=train_s,
        steps_trained=steps,
        provenance=provenance(trainer.strategy.root_device, t_wall),
    )
    if trainer.is_global_zero:
        finish_run(out, metrics, lg, rule)
    return metrics


def _hydra_output_dir() -> Path:
    from hydra.core.hydra_config import HydraConfig

    if HydraConfig.initialized():
        return Path(HydraConfig.get().runtime.output_dir)
    return Path("outputs") / time.strftime("run-%Y%m%d-%H%M%S")


def summary_line(m: dict[str, Any]) -> str:
    def f(k: str) -> str:
        v = m.get(k)
        return "nan" if v is None else f"{v:.4f}"

    return (
        f"bn={m['bn']} bias={m['bias']} depth={m['depth']} lr={m['lr']:g} seed={m['seed']} | "
        f"steps={m['step']} diverged={m['diverged']} | val/acc={f('val/acc')} "
        f"val/acc_batchstats={f('val/acc_batchstats')} val/acc_best={f('val/acc_best')} "
        f"test/acc={f('test/acc')} test/acc_single={f('test/acc_single')} | {m['wall_s']:.1f}s"
    )
