"""`python -m bnexp.run [overrides]`: Hydra main -> train(cfg) -> dict of final metrics.

train(cfg) is the one code path from config to result; the sweep calls it too. It writes the resolved
config (`config.yaml`) and `metrics.json` into the run directory (Hydra's run dir, or `output_dir`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sys
import time
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from bnexp.config import ConfigError, register_configs, validate

log = logging.getLogger("bnexp")
CONF_DIR = str(Path(__file__).resolve().parent.parent / "conf")
register_configs()


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
    """cfg.model -> the net's constructor arguments (DeepConvNet, PopulationNet)."""
    m = cfg.model
    keys = ("depth", "bn", "bias", "bn_impl", "bn_momentum", "bn_eps", "fc_units", "init_std")
    return {k: m[k] for k in keys}


def build_module(cfg: DictConfig):
    from bnexp.module import BNExpModule

    o = cfg.optim
    module = BNExpModule(
        **model_kwargs(cfg),
        sync_bn=cfg.model.sync_bn,
        optim=o.name,
        lr=o.lr,
        momentum=o.momentum,
        weight_decay=o.weight_decay,
        loss=cfg.loss,
        log_every=cfg.trainer.log_every,
    )
    if cfg.trainer.compile != "none":
        # torch.compile the net (not the LightningModule): "reduce-overhead" captures the step in CUDA
        # graphs on a GPU. Eval mode and the batch-of-1 test compile their own graphs (guards recompile).
        import torch

        log.info("torch.compile(model, mode=%s)", cfg.trainer.compile)
        module.model = torch.compile(module.model, mode=cfg.trainer.compile)
    return module


def build_datamodule(cfg: DictConfig):
    from bnexp.data import load_mnist, make_splits
    from bnexp.module import MNISTDataModule

    d = cfg.data
    raw = load_mnist(d.dir, download=d.download)
    splits = make_splits(raw, d.limit_train, d.limit_val, d.limit_test)
    return MNISTDataModule(splits, d.batch_size, d.eval_batch_size, cfg.seed, d.single_n, d.on_device)


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


def _finite_or_none(v: Any) -> Any:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def train(
    cfg: DictConfig,
    output_dir: str | os.PathLike | None = None,
    callbacks: list | None = None,
    logger: Any = "from_cfg",
    on_module: Callable[[Any], None] | None = None,
) -> dict[str, Any]:
    """Train one configuration; return (and write to metrics.json) its final metrics.

    A non-finite loss is a result, not a crash: training stops, `diverged` is true, the metrics
    so far are kept and the test metrics are still computed on the weights it ended with.
    """
    import lightning as L

    from bnexp.tracking import build_callbacks, build_logger, finish_logger

    _quiet_lightning()
    validate(cfg)
    out = Path(output_dir) if output_dir is not None else _hydra_output_dir()
    t0 = time.perf_counter()
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
        (out / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
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
    with _ddp_job(trainer, out):
        t_fit = time.perf_counter()
        trainer.fit(module, datamodule=dm)
        train_s = time.perf_counter() - t_fit
        if module.last_val_step != trainer.global_step:  # stopped between validations (diverged)
            trainer.validate(module, datamodule=dm, verbose=False)
        trainer.test(module, datamodule=dm, verbose=False)
    steps = int(trainer.global_step)
    metrics: dict[str, Any] = {k: _finite_or_none(float(v)) for k, v in module.final.items()}
    metrics.update(
        diverged=bool(module.diverged),
        diverged_step=module.diverged_step,
        step=steps,
        wall_s=time.perf_counter() - t0,
        train_s=train_s,
        steps_per_s=steps / train_s if train_s > 0 else None,
        bn=cfg.model.bn,
        bias=cfg.model.bias,
        depth=int(cfg.model.depth),
        lr=float(cfg.optim.lr),
        seed=int(cfg.seed),
        val_history=[{k: _finite_or_none(v) for k, v in h.items()} for h in module.val_history],
    )
    if trainer.is_global_zero:
        (out / "metrics.json").write_text(json.dumps(metrics, indent=2))
        finish_logger(lg, metrics)
    return metrics


# ---- DDP: every rank in one run dir --------------------------------------------------------------
# Lightning's DDP launcher starts the extra ranks of a node by running this command again (with
# LOCAL_RANK set). Its Hydra hook re-passes sys.argv plus hydra.run.dir, which suffices for a single
# run but not for `-m`: each child would run the whole multirun again into its own sweep dir
# (lightning-hydra-template issue 393). So rank 0 leaves the exact job in the environment the
# children inherit, and a child replaces its argv with it: this job's overrides, rank 0's run dir, no
# .hydra/ of its own.
_CHILD_ARGV = "BNEXP_DDP_CHILD_ARGV"
_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def is_rank_zero() -> bool:
    """False in a process its launcher started as a DDP rank other than 0.

    Known before any Trainer exists (Hydra's job, the summary line). LOCAL_RANK/NODE_RANK: Lightning's
    launcher and torchrun; RANK: torchrun; SLURM_PROCID: srun with one task per device.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and int(env.get("SLURM_PROCID", "0")) != 0:
        return False
    return int(env.get("LOCAL_RANK", 0)) == 0 and int(env.get("NODE_RANK", 0)) == 0


def _share_run_dir_with_ranks(out: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not is_rank_zero():
        return
    hc = HydraConfig.get()
    flags, argv = [], sys.argv[1:]
    for i, a in enumerate(argv):  # keep --config-name/-cp/... (and their values); drop -m and sweeps
        if a.split("=")[0] in _CONFIG_FLAGS:
            flags += [a] if "=" in a else argv[i : i + 2]
    rundir = str(out.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    child = [*flags, *hc.overrides.task, f'hydra.run.dir="{rundir}"', "hydra.output_subdir=null", "hydra.job.name=rank"]
    os.environ[_CHILD_ARGV] = json.dumps(child)


@contextlib.contextmanager
def _ddp_job(trainer: Any, out: Path) -> Iterator[None]:
    """One DDP job per process group: Lightning's launcher leaves LOCAL_RANK etc. in rank 0's environment
    and the process group up, so a second job in the same process (the next `-m` job) would take itself
    for an externally launched rank and talk to the exited children. Undo both when the job ends."""
    if trainer.world_size <= 1:
        yield
        return
    keys = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", _CHILD_ARGV)
    saved = {k: os.environ.get(k) for k in keys}
    _share_run_dir_with_ranks(out)
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _adopt_rank0_argv() -> None:
    """In a DDP child started by Lightning's launcher: run rank 0's job, not its command line."""
    child = os.environ.get(_CHILD_ARGV)
    if child and os.environ.get("LOCAL_RANK", "0") != "0":
        sys.argv = [sys.argv[0], *json.loads(child)]


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


@hydra.main(version_base="1.3", config_path=CONF_DIR, config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from bnexp.data import DataError

    try:
        metrics = train(cfg)
    except (ConfigError, DataError):
        _drop_empty_run_dir()
        raise
    if is_rank_zero():
        print(summary_line(metrics), flush=True)
    return metrics


def _drop_empty_run_dir() -> None:
    """Bad input found inside the job: remove the run dir Hydra just made if it holds nothing but Hydra's
    own bookkeeping (.hydra/, an empty run.log), so a typo leaves no empty run behind. A dir with
    anything else in it (an earlier run's results) is left alone."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not is_rank_zero():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    names = {p.name for p in out.iterdir()} if out.is_dir() else {"?"}
    log_file = out / f"{HydraConfig.get().job.name}.log"
    if names <= {".hydra", log_file.name} and (not log_file.exists() or log_file.stat().st_size == 0):
        shutil.rmtree(out, ignore_errors=True)


def fail(msg: str, code: int = 2) -> None:
    print(f"bnexp: error: {msg}", file=sys.stderr, flush=True)
    sys.exit(code)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def _explain_hydra_error(e: BaseException) -> str:
    """Hydra says "Could not override 'model.bm'. To append ... use +model.bm": name the valid keys instead."""
    import dataclasses
    import re

    from bnexp.config import Config

    msg = one_line(e)
    m = re.search(r"Could not override '([\w.]+)'", msg)
    if m:
        key = m.group(1)
        node: Any = Config
        parts = key.split(".")
        for part in parts[:-1]:
            f = {f.name: f for f in dataclasses.fields(node)}.get(part) if dataclasses.is_dataclass(node) else None
            if f is None:
                node = None  # not under bnexp's schema (e.g. hydra.launcher.*): keep Hydra's words
                break
            node = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        if node is not None and dataclasses.is_dataclass(node):
            where = ".".join(parts[:-1]) or "the top level"
            valid = ", ".join(f.name for f in dataclasses.fields(node))
            return f"unknown config key '{key}'; valid keys under {where}: {valid}"
    msg = msg.split(" Config search path:")[0]
    msg = re.sub(r"\. To append to your config use [^\s:]+", "", msg)  # a typo wants fixing, not appending
    if e.__cause__ is not None:  # e.g. "Value 'abc' of type 'str' could not be converted to Integer"
        msg += ": " + str(e.__cause__).splitlines()[0]
    return msg + " (python -m bnexp.run --cfg job shows every key and value)"


def cli_guard(fn: Callable[[], Any]) -> Any:
    """Run a Hydra entry point; config and data errors become one line and exit status 2."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    from bnexp.data import DataError

    os.environ["HYDRA_FULL_ERROR"] = "1"  # let Hydra raise, so we can tell bad input from crashes
    try:
        return fn()
    except (ConfigError, DataError) as e:
        fail(one_line(e))
    except (HydraException, OmegaConfBaseException) as e:
        fail(_explain_hydra_error(e))


def main() -> None:
    _adopt_rank0_argv()
    cli_guard(_hydra_main)


if __name__ == "__main__":
    main()
