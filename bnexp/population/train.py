"""Population training: K learning rates of one variant trained as one model, each member a full run.

`train_population(cfg, lrs, output_dirs, seeds)` is bnexp.core.train.train's counterpart, built from the same
pieces: build_datamodule, compile_model (trainer.compile, reduce-overhead included), build_trainer (Lightning:
device, precision, determinism, progress bar), build_callbacks, fit_evaluate (fit, the last validation, the
test), run_metrics and finish_run (bnexp.core.metrics / bnexp.core.train). The model is
bnexp.population.net.PopulationNet (derived from DeepConvNet), the system bnexp.population.module.PopulationModule.
Member k gets its own config.yaml, metrics.json (train()'s keys, provenance included, plus `population`: K), and
logger: `<member dir>/csv/metrics.csv` with logger=csv, its own W&B run with logger=wandb (several live runs in
one process), each written while training as a solo run's is.

Lightning or a plain loop: Lightning, measured. The step is the same code either way (forward_backward in
bnexp.population.module); `bench/bench_population.py --arms step` times it inside trainer.fit against a plain
loop (this 2-core CPU under load, 1 thread, bn=pre, median of 3 rounds, thread CPU time): K=12 depth 4:
551.7 vs 533.2 ms per step (rounds 521-605 vs 521-547: within the noise; wall 2063 vs 2065 ms); K=2 depth 1:
20.2 vs 17.2 ms, i.e. Lightning's loop and manual-optimization hooks cost ~3 ms of CPU per step here. That is
noise next to a CPU population's compute; on a GPU it can overlap the device's work (no host sync per step:
divergence is read every trainer.log_every steps), not yet measured: bench/gpu_check.py's `population` section
times it. For it the population gets what a second loop had to
re-state (device and precision resolution, the loggers and callbacks, the progress bar, compile) and can no
longer drift from the solo path.

Not per member: LayerStats and LandscapeProbe (logger.diagnostics_every, logger.landscape_every) read the
solo net's blocks; in population mode they are left out with a log line. train/grad_norm, lr and
perf/steps_per_s are logged per member.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp.cli import ConfigError
from bnexp.core import layout
from bnexp.core.alloc import applied
from bnexp.core.config import validate
from bnexp.core.metrics import run_metrics
from bnexp.core.provenance import provenance
from bnexp.core.train import (
    build_datamodule,
    build_trainer,
    checkpoint_on_stop,
    compile_model,
    finish_run,
    fit_evaluate,
    graphs_compiled,
    log_compiled,
    model_kwargs,
    quiet_lightning,
    skipped,
)
from bnexp.files import write_text_atomic
from bnexp.record import VAL_ACC_RECAL, VAL_LOSS_RECAL

log = logging.getLogger("bnexp")
# a population's members are not recalibrated (bnexp.core.recal recalibrates one net); the keys say so
NO_RECAL = {VAL_ACC_RECAL: None, VAL_LOSS_RECAL: None}

POP_CHECKPOINT = "population.ckpt"  # in member 0's dir: a stopped population's whole state, resumed as one unit
_SHARED_KEYS = ("model", "data", "trainer", "loss")  # what every member of one population has in common


def _check_supported(cfg: DictConfig) -> None:
    t = cfg.trainer
    if str(t.precision) in ("16-mixed", "16"):
        raise ConfigError(
            f"trainer.precision={t.precision} is not supported by population training: its gradient scaler skips "
            "the step of every member when one member's gradients overflow; use 32-true, 64-true or bf16-mixed"
        )
    if int(t.num_nodes) != 1 or str(t.strategy) not in ("auto", "single_device") or str(t.devices) not in ("1", "auto"):
        raise ConfigError("population training runs on one device; set trainer.devices=1 trainer.strategy=auto")
    if cfg.model.sync_bn:
        raise ConfigError("model.sync_bn=true needs several devices; population training runs on one")
    if t.memory_format == "channels_last":  # auto and contiguous train contiguous
        raise ConfigError(
            "trainer.memory_format=channels_last is not supported by population training: its optimizer updates "
            "each member's slice of the packed weights as one contiguous block; use trainer.memory_format=auto "
            "(contiguous there) or contiguous"
        )


def member_configs(
    cfg: DictConfig, lrs: Sequence[float], seeds: Sequence[int], member_cfgs: Sequence[DictConfig] | None
) -> list[DictConfig]:
    """Each member's resolved config: `member_cfgs[k]` (a sweep's trial configs: their own run names), else cfg
    with optim.lr and seed set (and no logger.run_name: each member's name comes from its lr and seed)."""
    shared = OmegaConf.to_container(cfg, resolve=True)
    out = []
    for k, (lr, seed) in enumerate(zip(lrs, seeds, strict=True)):
        own = shared if member_cfgs is None else OmegaConf.to_container(member_cfgs[k], resolve=True)
        if any(own[key] != shared[key] for key in _SHARED_KEYS):
            raise ValueError(f"member {k}'s config differs from the population's in {', '.join(_SHARED_KEYS)}")
        c = OmegaConf.create(own)
        if member_cfgs is None and len(lrs) > 1:
            c.logger.run_name = None
        c.optim.lr, c.seed = float(lr), int(seed)
        out.append(c)
    return out


def _member_loggers(cfgs: list[DictConfig], outs: list[Path]) -> list:
    """Logger k for member k (none: an empty list); W&B runs are started side by side ("create_new")."""
    from bnexp.tracking.loggers import build_logger

    if cfgs[0].logger.name != "wandb":
        return [lg for lg in (build_logger(c, o) for c, o in zip(cfgs, outs, strict=True)) if lg is not False]
    from bnexp.tracking.wandb_runs import build_wandb_logger, fail_wandb

    loggers: list = []
    try:
        for c, o in zip(cfgs, outs, strict=True):
            loggers.append(build_wandb_logger(c, o, reinit="create_new"))
    except BaseException:
        for lg in loggers:  # do not leave the members already started open
            fail_wandb(lg)
        raise
    return loggers


def _callbacks(cfg: DictConfig, on_step: Callable[[], None] | None) -> list:
    import lightning as L

    from bnexp.tracking.diagnostics import LandscapeProbe, LayerStats
    from bnexp.tracking.loggers import build_callbacks

    cbs = build_callbacks(cfg)
    solo_only = [c for c in cbs if isinstance(c, (LayerStats, LandscapeProbe))]
    if solo_only:
        log.info("population: %s not run (not per member)", ", ".join(type(c).__name__ for c in solo_only))
    cbs = [c for c in cbs if c not in solo_only]
    if on_step is not None:

        class OnStep(L.Callback):
            """The caller's check (a sweep's stop flag) before every batch; it may raise to end the run."""

            def _check(self, *_: Any) -> None:
                on_step()

            on_train_batch_start = on_validation_batch_start = on_test_batch_start = _check

        cbs.append(OnStep())
    return cbs


@contextlib.contextmanager
def _cudnn_benchmark(on: bool) -> Iterator[None]:
    """Grouped convs on CUDA: let cuDNN pick a kernel per (static) shape; the setting restored after."""
    import torch

    saved = torch.backends.cudnn.benchmark
    if on:
        torch.backends.cudnn.benchmark = True
    try:
        yield
    finally:
        torch.backends.cudnn.benchmark = saved


def _check_members(cfg: DictConfig, lrs: Sequence[float], output_dirs: Sequence, seeds: Sequence[int] | None,
                   member_cfgs: Sequence[DictConfig] | None) -> tuple[int, list[int]]:  # fmt: skip
    """(K, one seed per member): one output dir, seed and config per lr, every lr a positive number."""
    K = len(lrs)
    seeds = [int(cfg.seed)] * K if seeds is None else [int(s) for s in seeds]
    if K < 1 or len(output_dirs) != K or len(seeds) != K or (member_cfgs is not None and len(member_cfgs) != K):
        raise ValueError(f"need one output dir and seed per lr: {K} lrs, {len(output_dirs)} dirs, {len(seeds)} seeds")
    for lr in lrs:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rates must be positive numbers, got {lr}")
    return K, seeds


def train_population(
    cfg: DictConfig,
    lrs: Sequence[float],
    output_dirs: Sequence[str | os.PathLike],
    seeds: Sequence[int] | None = None,
    on_step: Callable[[], None] | None = None,
    *,
    member_cfgs: Sequence[DictConfig] | None = None,
    summarize: Callable[[dict], dict] | None = None,
) -> list[dict[str, Any]]:
    """Train K = len(lrs) learning rates of one variant together; return each member's `train()` metrics.

    Member k equals the solo run `train(cfg with optim.lr=lrs[k], seed=seeds[k])`: the same init and the same
    batches (its seed's BatchStream; members with one seed share one stream). seeds defaults to cfg.seed for
    every member. `member_cfgs` (optional): each member's own config (a sweep's trials: run name, tags), equal
    to cfg in model, data, trainer and loss. `on_step` is called before every batch (it may raise to stop);
    `summarize(metrics)` gives extra W&B summary fields per member (a sweep's verdict). The timing keys
    (wall_s, train_s, steps_per_s) are the population's, shared by its members.

    A stop (StopRequested from `on_step`, SIGTERM, Ctrl-C) saves the whole population (every member's weights,
    BN buffers, optimizer moments, records, the step) to `<output_dirs[0]>/population.ckpt` and re-raises;
    the same call again (the same lrs, seeds and dirs) resumes all members at that step, as one unit.
    """
    import lightning as L

    from bnexp.population.module import PopulationModule

    quiet_lightning()
    validate(cfg)
    _check_supported(cfg)
    K, seeds = _check_members(cfg, lrs, output_dirs, seeds, member_cfgs)
    cfgs = member_configs(cfg, lrs, seeds, member_cfgs)
    outs = [Path(d) for d in output_dirs]
    t0, t_wall, cpu0 = time.perf_counter(), time.time(), time.process_time()
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    dm = build_datamodule(cfg, member_seeds=seeds)  # data errors surface here, before any file is written
    for out, c in zip(outs, cfgs, strict=True):
        out.mkdir(parents=True, exist_ok=True)
        write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(c, resolve=True))
    o, t = cfg.optim, cfg.trainer
    hp = dict(loss=cfg.loss, optim=o.name, momentum=o.momentum, weight_decay=o.weight_decay, log_every=t.log_every)
    module = PopulationModule(model_kwargs(cfg), seeds, lrs, **hp)
    compile_model(layout.apply(module, "contiguous"), t.compile, cfg)  # the packed weights' slices (_check_supported)
    g0 = graphs_compiled(module.compile_mode)
    loggers = _member_loggers(cfgs, outs)
    ckpt = outs[0] / POP_CHECKPOINT
    resume = ckpt if ckpt.is_file() else None
    trainer = build_trainer(cfg, outs[0], loggers or False, [*_callbacks(cfg, on_step), checkpoint_on_stop(ckpt)])
    device = trainer.strategy.root_device
    m = cfg.model
    log.info(
        "population K=%d bn=%s bias=%s depth=%d bn_impl=%s lrs=[%s] steps=%d on %s",
        *(K, m.bn, m.bias, m.depth, m.bn_impl, ", ".join(f"{v:g}" for v in lrs), t.max_steps, device),
    )
    if resume is not None:
        log.info("population: resuming from %s", resume)
    with _cudnn_benchmark(device.type == "cuda" and not t.deterministic):
        train_s = fit_evaluate(trainer, module, dm, resume, test=bool(cfg.trainer.test))
    new_graphs = log_compiled(module.compile_mode, g0)
    done, wall_s, prov = int(trainer.global_step), time.perf_counter() - t0, provenance(device, t_wall)
    timing = dict(wall_s=wall_s, train_s=train_s, steps_trained=done - (module.resumed_from_step or 0))
    results = []
    for k, (c, out, step) in enumerate(zip(cfgs, outs, module.steps(), strict=True)):
        met = run_metrics(module.records[k], c, step=step, **timing, provenance=prov,
                          resumed_from_step=module.resumed_from_step, population=K, compile=module.compile_mode,
                          compile_new_graphs=new_graphs, memory_format=module.memory_format,
                          cpu_s=time.process_time() - cpu0,
                          recal_s=None, **NO_RECAL, pruned_step=None, pruned_silent_steps=None, malloc=applied(),
                          val_subset=c.trainer.val_subset, skipped=skipped(c, False))  # fmt: skip
        finish_run(out, met, loggers[k] if loggers else False, summarize)
        results.append(met)
    ckpt.unlink(missing_ok=True)  # every member's metrics.json is the result now
    log.info("population K=%d: %d steps in %.1fs (%.1f steps/s)", K, done, train_s, done / max(train_s, 1e-9))
    return results
