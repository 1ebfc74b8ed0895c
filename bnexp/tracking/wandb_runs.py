"""Weights & Biases runs: one per `train(cfg)` (every `bnexp.run`, every sweep trial), started, named and closed here;
the sweep-summary run is bnexp.tracking.sweep_summary's, the mode and credentials bnexp.tracking.wandb_mode's.

Each run carries the full resolved config as flat keys (`model.bn`, `optim.lr`, ...) plus `variant`, a readable
name (`pre-auto-d19-lr2e-03-s0`, bnexp.names), `group` = the sweep's study (or `single`), `job_type` = run /
trial / sweep-summary and the variant as tags. Its summary holds the final metrics, `diverged`, `steps_per_s`,
and what the caller judged: `stable` under the sweep's rule for a trial, the default rule for a single run.

Mode (`logger.mode`):
  auto       WANDB_MODE when set; else online when W&B finds credentials without asking (WANDB_API_KEY,
             ~/.netrc from `wandb login`, an identity token file), else offline. Never a prompt, also on a tty.
  online     forced; without credentials it is a config error naming `wandb login` (not a prompt).
  offline    runs land in <run dir>/wandb/offline-run-*/; upload them later (wandb sync takes many paths):
                 wandb sync <run dir>/wandb/offline-run-*                      # one run
                 wandb sync outputs/runs/*/*/wandb/offline-run-*               # every bnexp.run
                 wandb sync $(find outputs/sweeps/<study> -name 'offline-run-*')  # a sweep: trials + summary
             (`wandb sync --dry-run PATHS` shows what would be uploaded)
  disabled   W&B calls become no-ops.
In auto mode an online start that fails (no network, server down) falls back to offline after
`logger.init_timeout` seconds, with a warning.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp import names
from bnexp.cli import redact
from bnexp.files import FileWriteError
from bnexp.record import GLOBAL_STEP
from bnexp.tracking import wandb_record
from bnexp.tracking.wandb_mode import resolve_mode

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "bnexp"
SUMMARY_JOB_TYPE = "sweep-summary"


# ---- names, config ------------------------------------------------------------------------------
def variant_name(cfg: DictConfig) -> str:
    """e.g. `pre-auto-d19` (bnexp.names: the label a report gives the same variant)."""
    return names.variant_label(names.cfg_values(cfg))


def run_name(cfg: DictConfig) -> str:
    """`logger.run_name`, else e.g. `pre-auto-d19-lr2e-03-s0`."""
    if cfg.logger.get("run_name"):
        return str(cfg.logger.run_name)
    return names.run_name(names.cfg_values(cfg), float(cfg.optim.lr), int(cfg.seed))


def run_tags(cfg: DictConfig) -> list[str]:
    m = cfg.model
    tags = [variant_name(cfg), f"bn={m.bn}", f"bias={m.bias}", f"depth={m.depth}", f"optim={cfg.optim.name}"]
    return tags + [str(t) for t in (cfg.logger.get("tags") or []) if str(t) not in tags]


# ---- run start / finish ---------------------------------------------------------------------------
def _settings(cfg: DictConfig, mode: str) -> Any:
    import wandb

    # console output is captured (W&B's default); system metrics follow the user's own W&B settings
    return wandb.Settings(
        init_timeout=float(cfg.logger.get("init_timeout", 60.0)),
        quiet=True,  # no history sparklines at exit; we print where the run is
        save_code=False,
    )


def start_run(
    cfg: DictConfig,
    out_dir: Path,
    *,
    name: str,
    job_type: str,
    group: str,
    config: dict,
    tags: list[str],
    run_id: str | None = None,
    reinit: str = "finish_previous",
) -> Any:
    """wandb.init in the resolved mode under out_dir; in auto mode a failed online start falls back offline.
    W&B records the command line: it sees it with any URL password masked (bnexp.cli.redact).

    `run_id` (bnexp.names.run_id): a deterministic id, so a retried trial or a rerun into the same run dir
    resumes its run (`resume="allow"`; offline, both run dirs carry the id and `wandb sync` joins them).
    `reinit="create_new"` leaves the process's other runs open (a population's members log side by side)."""
    import wandb

    mode = resolve_mode(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=cfg.logger.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=cfg.logger.get("entity") or None,  # None: WANDB_ENTITY, else the user's default
        name=name,
        group=group,
        job_type=job_type,
        tags=tags,
        config=config,
        dir=str(out_dir),
        reinit=reinit,
        id=run_id,
        resume="allow" if run_id else None,
    )
    try:
        with _argv_redacted():
            run = wandb.init(mode=mode, settings=_settings(cfg, mode), **kwargs)
    except Exception as e:
        if mode != "online" or str(cfg.logger.mode) != "auto":
            raise
        log.warning("W&B online start failed (%s); logging offline instead", " ".join(str(e).split())[:300])
        with _argv_redacted():
            run = wandb.init(mode="offline", settings=_settings(cfg, "offline"), **kwargs)
    log.info("W&B %s run %s (%s/%s): %s", run.settings.mode, name, group, job_type, _where(run) or "-")
    return run


@contextlib.contextmanager
def _argv_redacted() -> Iterator[None]:
    saved = sys.argv
    sys.argv = [redact(a) for a in saved]
    try:
        yield
    finally:
        sys.argv = saved


def _where(run: Any) -> str | None:
    """The run's URL online; its offline-run-* directory offline."""
    try:
        if run.settings.mode == "offline":
            return str(Path(run.dir).parent)
        return getattr(run, "url", None)
    except Exception:
        return None


def close_run(run: Any, exit_code: int) -> None:
    """Finish a W&B run; an offline record that could not be written whole is a FileWriteError."""
    where, offline = _where(run), run.settings.mode == "offline"
    run.finish(exit_code=exit_code)
    if offline and where:
        errors = wandb_record.record_errors(where)
        if errors:  # a sweep stops on it as on any full disk (bnexp.sweep.faults: the point waits again)
            why = errors[-1].rsplit(": ", 1)[-1][:120]  # the OS's words ("file too large"), not the path again
            raise FileWriteError(
                f"W&B could not write its offline record {where} ({why}): it is cut off and cannot be synced; "
                "free disk space (or raise `ulimit -f`), delete that dir, and rerun"
            )
        log.info("W&B offline run saved in %s; upload it with: wandb sync %s", where, where)


def _define_axes(run: Any) -> None:
    # as Lightning's WandbLogger does for the runs it creates: every metric against trainer/global_step
    if getattr(run, "define_metric", None) is not None:
        run.define_metric(GLOBAL_STEP)
        run.define_metric("*", step_metric=GLOBAL_STEP, step_sync=True)


def _logger_class() -> type:
    from lightning.pytorch.loggers import WandbLogger

    class BNExpWandbLogger(WandbLogger):
        """WandbLogger on a run we started; the module's hparams are already in the config under their paths."""

        def log_hyperparams(self, params: Any) -> None:
            pass

    return BNExpWandbLogger


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's W&B config: the resolved config nested as Hydra composes it (W&B's Hydra convention; the UI
    shows `model.bn`), plus the variant and run name."""
    return {**OmegaConf.to_container(cfg, resolve=True), "variant": variant_name(cfg), "run_name": run_name(cfg)}


def run_group(cfg: DictConfig) -> str:
    """`logger.group` (a sweep sets its study), else one group per `bnexp.run -m` multirun, else `single`."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return names.safe("multirun-" + "_".join(Path(HydraConfig.get().sweep.dir).parts[-2:]))
    except (ImportError, ValueError, AttributeError):
        pass
    return "single"


def start_training_run(cfg: DictConfig, out_dir: Path, reinit: str = "finish_previous") -> Any:
    """The W&B run of one training (`bnexp.run`, a sweep trial, a population member): name, group, job type,
    tags, nested config; its id is `logger.run_id` (a sweep's per-point id) or derived from the run dir, so a
    rerun into the same dir resumes it. `reinit`: as start_run's."""
    rid = cfg.logger.get("run_id") or names.run_id(Path(out_dir).name, str(Path(out_dir).resolve()))
    run = start_run(
        cfg,
        Path(cfg.logger.dir) if cfg.logger.get("dir") else out_dir,  # a sweep's trials: all under its out dir
        name=run_name(cfg),
        job_type=str(cfg.logger.get("job_type") or "run"),
        group=run_group(cfg),
        config=run_config(cfg),
        tags=run_tags(cfg),
        run_id=rid,
        reinit=reinit,
    )
    _define_axes(run)
    return run


def build_wandb_logger(cfg: DictConfig, out_dir: Path, reinit: str = "finish_previous") -> Any:
    """A Lightning WandbLogger on the run of this training; the run starts now (rank 0 only). `reinit`: as
    start_run's."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    cls = _logger_class()
    if getattr(rank_zero_only, "rank", 0) != 0:  # DDP workers: Lightning hands them a dummy experiment
        return cls(name=run_name(cfg), save_dir=str(out_dir), project=cfg.logger.get("project") or DEFAULT_PROJECT)
    run = start_training_run(cfg, out_dir, reinit)
    return cls(experiment=run, name=run.name, save_dir=str(out_dir), project=getattr(run, "project", None))


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def final_summary(metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> dict[str, Any]:
    """The run summary for train()'s metrics: final metrics (under their metrics.json names), `diverged`, and
    `extra`, the caller's verdict (a sweep's `stable` under its rule; bnexp.run's under the default rule)."""
    summary = {k: v for k, v in metrics.items() if _scalar(v)}  # val_history stays in metrics.json
    summary["diverged_count"] = int(bool(metrics.get("diverged")))  # 0/1: sums to a count per variant
    return {**summary, **(extra or {})}


def finish_wandb(logger: Any, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Final metrics, `diverged`, `steps_per_s` and `extra` into the run summary; close the run."""
    run = getattr(logger, "_experiment", None)
    if run is None:
        return
    if metrics.get("provenance"):  # where and with what it ran: known once the device is
        run.config.update({"provenance": metrics["provenance"]}, allow_val_change=True)
    run.summary.update(final_summary(metrics, extra))
    close_run(run, 0)


def fail_wandb(logger: Any) -> None:
    """Close the run of a training that raised, marked failed (exit code 1)."""
    run = getattr(logger, "_experiment", None)
    if run is not None and hasattr(run, "finish"):
        close_run(run, 1)
