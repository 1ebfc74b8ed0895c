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

from bnexp import record
from bnexp.cli import ConfigError, training_begins
from bnexp.core.alloc import applied
from bnexp.core.config import validate
from bnexp.core.ddp import ddp_job
from bnexp.core.metrics import run_metrics
from bnexp.core.provenance import provenance
from bnexp.core.recal import recalibrated
from bnexp.files import write_json_atomic, write_text_atomic

log = logging.getLogger("bnexp")
CHECKPOINT = "last.ckpt"  # taken when a run is stopped (SIGTERM, SIGINT, a sweep's stop); a rerun resumes it


class StopRequested(Exception):
    """A stop asked for from outside the training (a sweep worker's SIGTERM/SIGINT flag, at the next batch)."""


def is_stop(e: BaseException) -> bool:
    """A stop, not a failure: StopRequested, Ctrl-C, or Lightning's SIGTERMException (a SystemExit its loops raise
    at the next batch after its SIGTERM handler ran). Matched by name so that an except clause imports nothing."""
    return isinstance(e, (StopRequested, KeyboardInterrupt)) or (
        isinstance(e, SystemExit) and type(e).__name__ == "SIGTERMException"
    )


def checkpoint_on_stop(path: Path) -> Any:
    """A callback that saves the whole training state (weights, BN buffers, optimizer, step, the module's
    history) when the run is stopped, so that `train` into the same dir resumes at that step."""
    import lightning as L

    class CheckpointOnStop(L.Callback):
        def on_save_checkpoint(self, trainer: Any, pl_module: Any, checkpoint: dict) -> None:
            # a stop lands at the start of a batch, after the loop counted it "ready": record the loop at the
            # last finished batch, or the resumed run validates every val_every steps one step early
            progress = checkpoint.get("loops", {}).get("fit_loop", {}).get("epoch_loop.batch_progress", {})
            for part in ("total", "current"):
                if part in progress:
                    done = progress[part]["completed"]
                    progress[part].update(ready=done, started=done, processed=done)

        def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
            if is_stop(exception) and trainer.global_step > 0 and trainer.is_global_zero:
                trainer.save_checkpoint(path, weights_only=False)  # the whole state: optimizer and loops too
                log.warning("stopped at step %d: checkpoint %s; the same run into this dir resumes it",
                            trainer.global_step, path)  # fmt: skip

    return CheckpointOnStop()


def _run_dir_key() -> str:
    """The setting that moves a run's dir: hydra.run.dir, or with -m hydra.sweep.dir (its jobs are subdirs)."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return "hydra.sweep.dir"
    except ImportError:
        pass
    return "hydra.run.dir"


def _resume_point(cfg: DictConfig, out: Path) -> Path | None:
    """The checkpoint to resume in `out`, if any. A dir that holds a finished run, or a checkpoint of another
    configuration, is refused: results are never silently mixed."""
    from bnexp.core.config import result_settings

    if (out / "metrics.json").is_file():
        raise ConfigError(
            f"{out} already holds a finished run (metrics.json); choose another run dir ({_run_dir_key()}=...) "
            "or remove it to train again"
        )
    ckpt = out / CHECKPOINT
    if not ckpt.is_file():
        return None
    if (out / "config.yaml").is_file():
        old, new = result_settings(OmegaConf.load(out / "config.yaml")), result_settings(cfg)
        differ = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
        if differ:
            raise ConfigError(
                f"{out} holds a checkpoint of another configuration ({', '.join(differ[:4])} differ); "
                f"choose another run dir ({_run_dir_key()}=...), or rerun with the settings it was started with"
            )
    return ckpt


def quiet_lightning() -> None:
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
    return compile_model(with_layout(module, cfg), compile_mode(cfg))


def run_device(cfg: DictConfig) -> str:
    """'cuda' or 'cpu': where `trainer.accelerator` puts this config's training (what `auto`s decide for)."""
    from bnexp.core.compiled import device_type

    t = cfg.trainer
    cuda = False
    if str(t.accelerator) in ("auto", "gpu", "cuda"):
        import torch

        cuda = torch.cuda.is_available()
    return device_type(t.accelerator, cuda)


def with_layout(module: Any, cfg: DictConfig) -> Any:
    """The module's net in `trainer.memory_format`'s layout (auto: bnexp.core.layout.choose for this device), before
    any compile: a compiled graph is traced for the layout it sees."""
    from bnexp.core import layout

    return layout.apply(module, layout.choose(cfg.trainer.memory_format, run_device(cfg)))


def compile_mode(cfg: DictConfig, runs: int = 1) -> str:
    """`trainer.compile`, with `auto` decided (bnexp.core.compiled.choose) for `runs` trainings of this config in
    this process: a single run is one; a sweep decides for its workers before its trials (bnexp.sweep.app)."""
    t = cfg.trainer
    if t.compile != "auto":
        return t.compile
    from bnexp.core.compiled import choose

    return choose("auto", run_device(cfg), runs, t.max_steps, t.compile_break_even_steps)


def compile_model(module: Any, mode: str, cfg: DictConfig | None = None) -> Any:
    """torch.compile the module's net (not the LightningModule) unless mode is "none", through the process's cache
    of compiled nets (bnexp.core.compiled: a later trial of the same variant reuses the graphs of the first, its
    evaluation passes included). "reduce-overhead" captures the forward and backward in CUDA graphs on a GPU.
    "auto" is decided for `cfg` as a single run (`compile_mode`); without `cfg`, eager."""
    if mode == "auto":
        mode = compile_mode(cfg) if cfg is not None else "none"
    if mode != "none":
        from bnexp.core.compiled import compiled_net

        module.model = compiled_net(module.model, mode)
    module.compile_mode = mode
    return module


def graphs_compiled(mode: str) -> int:
    """Graphs torch has compiled in this process (0 when eager: nothing to count, dynamo not needed)."""
    if mode == "none":
        return 0
    from bnexp.core.compiled import graphs

    return graphs()


def log_compiled(mode: str, before: int) -> int | None:
    """Log (and return) the graphs this run compiled: the first run of a variant in a process compiles its training
    step and evaluation passes, every later one none (None: eager)."""
    if mode == "none":
        return None
    new = graphs_compiled(mode) - before
    log.info(
        "compile=%s: %d new graph(s) in this run, %d in this process (pid %d)",
        mode,
        new,
        before + new,
        os.getpid(),
    )
    return new


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


_RAW: dict[tuple, Any] = {}


def _mnist(where: str | None, download: bool, load: Callable) -> Any:
    """load_mnist, kept for the process: a sweep worker's trials read (and verify) the four files once, not once
    per trial (about 0.9 s of each CPU trial). Keyed by the files' names, sizes and times: changed files are
    read again; a failed read is never kept."""
    from bnexp.core.data import default_data_dir

    root = os.path.abspath(os.path.expanduser(where or default_data_dir()))
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
        files = tuple((e.name, e.stat().st_size, e.stat().st_mtime_ns) for e in entries)
    except OSError:
        files = None
    key = (root, files)
    if files is None or key not in _RAW:
        raw = load(where, download=download)
        if files is None:
            return raw
        _RAW.clear()  # one data dir at a time
        _RAW[key] = raw
    return _RAW[key]


def build_datamodule(cfg: DictConfig, member_seeds: list[int] | None = None):
    """The data; `member_seeds`: a population's, each member drawing its solo run's batches."""
    from bnexp.core.data import load_mnist, make_splits
    from bnexp.core.lit import MNISTDataModule

    d = cfg.data
    raw = _mnist(data_dir(cfg), d.download, load_mnist)
    splits = make_splits(raw, d.limit_train, d.limit_val, d.limit_test)
    return MNISTDataModule(
        splits, d.batch_size, d.eval_batch_size, cfg.seed, d.single_n, d.on_device, member_seeds,
        val_subset=cfg.trainer.val_subset,
    )  # fmt: skip


def _progress_bar(every: int) -> Any:
    from lightning.pytorch.callbacks import TQDMProgressBar

    class StepBar(TQDMProgressBar):
        """`step 300/800 [..., loss=0.0412, val/acc=0.943]`, refreshed every `every` steps: the steps of the one
        training stream (Lightning's epoch means nothing here), the training loss and the last validation
        accuracy (population statistics); no bars for the short evaluation passes."""

        @property
        def train_description(self) -> str:
            return "step"

        def on_train_epoch_start(self, trainer: Any, *_: Any) -> None:
            # not Lightning's (it renders "Epoch 0" once): one bar over max_steps; a resumed run starts where it was
            bar = self.train_progress_bar
            bar.set_description_str("step", refresh=False)
            bar.reset(total=trainer.max_steps)
            bar.n = bar.initial = trainer.global_step

        def on_train_batch_end(self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, batch_idx: int) -> None:
            bar, n = self.train_progress_bar, trainer.global_step
            if bar is not None and self._should_update(n, bar.total):
                bar.n = n
                bar.set_postfix(self.get_metrics(trainer, pl_module), refresh=True)

        def get_metrics(self, trainer: Any, pl_module: Any) -> dict[str, str]:
            m = trainer.callback_metrics
            out = {}
            if record.TRAIN_LOSS in m:
                out["loss"] = f"{float(m[record.TRAIN_LOSS]):.4f}"
            if record.VAL_ACC in m:
                out[record.VAL_ACC] = f"{float(m[record.VAL_ACC]):.3f}"
            return out

        def _quiet(self, *args: Any, **kwargs: Any) -> None:
            pass

        # no bars for the short evaluation passes (validation every val_every steps, the final test)
        on_validation_start = on_validation_batch_start = on_validation_batch_end = on_validation_end = _quiet
        on_test_start = on_test_batch_start = on_test_batch_end = on_test_end = _quiet
        on_sanity_check_start = on_sanity_check_end = _quiet

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
        # the test passes under no_grad as the validations during fit are (Lightning runs those so): under
        # inference_mode a compiled net would need its evaluation graph a second time (another grad-mode guard)
        inference_mode=False,
        default_root_dir=str(out_dir),
    )


def fit_evaluate(trainer: Any, module: Any, dm: Any, resume: Path | None = None, test: bool = True) -> float:
    """Fit (from the checkpoint `resume` of a stopped run, if given); validate once more where training stopped
    between validations (divergence); test (`test`: trainer.test). Returns the seconds fit took.
    `module.needs_validation(step)` says whether the last validation is missing; a run the sweep's pruner
    stopped (`module.record.pruned_step`) has it: its last validation is the one it was judged by."""
    t_fit = time.perf_counter()
    # weights_only=False: our own checkpoint (it holds the module's record beside the tensors)
    trainer.fit(module, datamodule=dm, ckpt_path=str(resume) if resume else None, weights_only=False)
    train_s = time.perf_counter() - t_fit
    pruned = any(getattr(r, "pruned_step", None) is not None for r in records_of(module))
    if module.needs_validation(trainer.global_step) and not pruned:
        trainer.validate(module, datamodule=dm, verbose=False)
    if test and not pruned:
        trainer.test(module, datamodule=dm, verbose=False)
    return train_s


def records_of(module: Any) -> list[Any]:
    """The RunRecord(s) a module fills: one (BNExpModule), or one per member (a population)."""
    return list(getattr(module, "records", None) or [module.record])


def skipped(cfg: DictConfig, pruned: bool) -> list[str]:
    """What a run did not compute, said in its metrics.json (`skipped`)."""
    t, out = cfg.trainer, []
    if t.val_subset is not None:
        out.append(f"validations before the last on the first {t.val_subset} images (trainer.val_subset)")
    if pruned:
        out.append("training after the pruner stopped it, and every evaluation after (sweep.prune)")
    elif not t.test:
        out.append("the test pass and the single-image checks (trainer.test=false)")
    return out


def finish_run(out: Path, metrics: dict[str, Any], logger: Any, summarize: Callable[[dict], dict] | None) -> None:
    """metrics.json (atomically), then the logger's summary (plus `summarize(metrics)`) and close (W&B)."""
    from bnexp.tracking.loggers import finish_logger

    write_json_atomic(out / "metrics.json", metrics)
    (out / CHECKPOINT).unlink(missing_ok=True)  # a stopped run's checkpoint: metrics.json is the result now
    finish_logger(logger, metrics, summarize(metrics) if summarize else {})


def train(
    cfg: DictConfig,
    output_dir: str | os.PathLike | None = None,
    callbacks: list | None = None,
    summarize: Callable[[dict], dict] | None = None,
) -> dict[str, Any]:
    """Train one configuration; return (and write to metrics.json) its final metrics.

    `summarize(metrics)` gives extra fields for the logger's run summary (the caller's verdict: training
    itself judges nothing).

    A non-finite loss is a result, not a crash: training stops, `diverged` is true, the metrics
    so far are kept and the test metrics are still computed on the weights it ended with.
    """
    import lightning as L

    from bnexp.tracking.loggers import build_callbacks, build_logger

    quiet_lightning()
    validate(cfg)
    out = Path(output_dir) if output_dir is not None else _hydra_output_dir()
    t0, t_wall, cpu0 = time.perf_counter(), time.time(), time.process_time()
    L.seed_everything(cfg.seed, workers=False, verbose=False)
    dm = build_datamodule(cfg)  # data errors surface here, before any model is built or file written
    resume = _resume_point(cfg, out)  # a finished run there is refused; a stopped one is resumed
    out.mkdir(parents=True, exist_ok=True)
    module = build_module(cfg)
    g0 = graphs_compiled(module.compile_mode)
    lg = build_logger(cfg, out)
    stop_ckpt = checkpoint_on_stop(out / CHECKPOINT)
    trainer = build_trainer(cfg, out, lg, [*build_callbacks(cfg), *(callbacks or []), stop_ckpt])
    if cfg.model.sync_bn and trainer.world_size > 1 and trainer.strategy.root_device.type != "cuda":
        # torch's DDP refuses SyncBatchNorm on CPU modules ("only work with GPU modules"); say so now,
        # before any rank is started, instead of a traceback from every rank
        raise ConfigError(
            f"model.sync_bn=true needs CUDA devices (torch's SyncBatchNorm does not run on "
            f"{trainer.strategy.root_device.type}); use trainer.accelerator=gpu, or model.sync_bn=false"
        )
    if trainer.is_global_zero:  # DDP ranks share the run dir; one writer (as for metrics.json)
        write_text_atomic(out / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    _say_training(cfg, trainer, resume)
    training_begins()  # SIGINT/SIGTERM now stop training gracefully, with a checkpoint (bnexp.cli)
    with ddp_job(trainer, out):
        train_s = fit_evaluate(trainer, module, dm, resume, test=bool(cfg.trainer.test))
    pruned = module.record.pruned_step is not None
    t_recal = time.perf_counter()
    if not pruned:  # a pruned run's verdict is made: nothing to recalibrate for
        module.record.tested(recalibrated(module, dm, int(cfg.trainer.recal_batches)))
    recal_s = time.perf_counter() - t_recal
    steps = int(trainer.global_step)
    new_graphs = log_compiled(module.compile_mode, g0)
    metrics = run_metrics(
        module.record,
        cfg,
        step=steps,
        wall_s=time.perf_counter() - t0,
        train_s=train_s,
        steps_trained=steps - (module.resumed_from_step or 0),
        provenance=provenance(trainer.strategy.root_device, t_wall),
        resumed_from_step=module.resumed_from_step,
        recal_s=recal_s,
        compile=module.compile_mode,
        compile_new_graphs=new_graphs,
        memory_format=module.memory_format,
        cpu_s=time.process_time() - cpu0,  # this process's CPU time (all its threads): wall_s on a shared machine
        pruned_step=module.record.pruned_step,
        pruned_silent_steps=module.record.pruned_silent_steps,
        malloc=applied(),  # what bnexp.core.alloc set ({}: glibc's defaults)
        val_subset=cfg.trainer.val_subset,
        skipped=skipped(cfg, pruned),
    )
    if trainer.is_global_zero:
        finish_run(out, metrics, lg, summarize)
    return metrics


def _say_training(cfg: DictConfig, trainer: Any, resume: Path | None) -> None:
    m = cfg.model
    log.info("training bn=%s bias=%s depth=%d bn_impl=%s lr=%g steps=%d on %s", m.bn, m.bias, m.depth, m.bn_impl,
             cfg.optim.lr, cfg.trainer.max_steps, trainer.strategy.root_device)  # fmt: skip
    if resume is not None:
        log.info("resuming from %s", resume)


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
        f"steps={m['step']} diverged={m['diverged']} | "
        + " ".join(
            f"{k}={f(k)}"
            for k in (
                record.VAL_ACC,
                record.VAL_ACC_BATCH,
                record.VAL_ACC_BEST,
                record.TEST_ACC,
                record.TEST_ACC_SINGLE,
            )
        )  # fmt: skip
        + f" | {m['wall_s']:.1f}s"
    )
