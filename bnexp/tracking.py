"""Experiment tracking: CSV (default, no dependencies) or Weights & Biases, or nothing."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

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
        from bnexp.wandb_logging import build_wandb_logger

        return build_wandb_logger(cfg, out_dir)
    raise ValueError(f"unknown logger {name!r}; choose csv, wandb or none")


def finish_logger(logger: Any, metrics: dict[str, Any]) -> None:
    """Put the final metrics into the run summary and close the run."""
    if logger is False or logger is None:
        return
    if type(logger).__name__ == "WandbLogger":
        from bnexp.wandb_logging import finish_wandb

        finish_wandb(logger, metrics)
