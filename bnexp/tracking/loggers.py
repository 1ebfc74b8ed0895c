"""The loggers a run writes to (CSV, Weights & Biases, or none) and the diagnostic callbacks it gets."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnexp.cli import ConfigError

log = logging.getLogger(__name__)


def build_logger(cfg: DictConfig, out_dir: Path) -> Any:
    """Return a Lightning logger for `cfg.logger.name`, or False for none."""
    name = cfg.logger.name
    if name == "none":
        return False
    if name == "csv":
        from lightning.pytorch.loggers import CSVLogger

        # out_dir/csv/metrics.csv: one row per logging step
        return CSVLogger(save_dir=str(out_dir), name="csv", version="")
    if name == "wandb":
        from bnexp.tracking.wandb_runs import build_wandb_logger

        return build_wandb_logger(cfg, out_dir)
    raise ValueError(f"unknown logger {name!r}; choose csv, wandb or none")


def build_callbacks(cfg: DictConfig) -> list:
    """The logging callbacks `cfg.logger` asks for (none with logger=none): throughput always, per-layer
    statistics every `logger.diagnostics_every` steps, the landscape probe every `logger.landscape_every`."""
    lc = cfg.logger
    every = {k: int(lc.get(k, 0) or 0) for k in ("diagnostics_every", "landscape_every")}
    for k, v in every.items():
        if v < 0:
            raise ConfigError(f"logger.{k}={v} must be >= 0 (0 turns it off; e.g. logger.{k}=100)")
    if lc.name == "none":
        return []
    from bnexp.tracking.diagnostics import LandscapeProbe, LayerStats, Throughput, WandbFinishOnError

    cbs: list = [Throughput(cfg.trainer.log_every)]
    if every["diagnostics_every"]:
        cbs.append(LayerStats(every["diagnostics_every"], histograms=bool(lc.get("log_histograms", True))))
    if every["landscape_every"]:
        scales = list(lc.get("landscape_scales") if lc.get("landscape_scales") is not None else [0.5, 1.0, 2.0, 4.0])
        if not scales:  # an empty list is a choice the user made: say so, never swap in the defaults
            raise ConfigError(
                "logger.landscape_scales=[] gives the landscape probe nothing to measure; give step sizes "
                "(e.g. logger.landscape_scales=[0.5,1.0,2.0,4.0]) or turn it off with logger.landscape_every=0"
            )
        try:
            cbs.append(LandscapeProbe(every["landscape_every"], scales))
        except ValueError as e:
            raise ConfigError(f"logger.landscape_scales={scales}: {e}") from None
    if lc.name == "wandb":
        cbs.append(WandbFinishOnError())
    return cbs


def finish_logger(logger: Any, metrics: dict[str, Any], extra: dict[str, Any] | None = None) -> None:
    """Put the final metrics (and `extra`: the caller's verdict) into the run summary and close the run."""
    if logger is False or logger is None:
        return
    from lightning.pytorch.loggers import WandbLogger

    if isinstance(logger, WandbLogger):
        from bnexp.tracking.wandb_runs import finish_wandb

        finish_wandb(logger, metrics, extra)
