"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files: $BNEXP_DATA_DIR, else ../shared/data/mnist beside the repo root."""
    env = os.environ.get("BNEXP_DATA_DIR")
    path = Path(env) if env else Path(__file__).resolve().parents[1].parent / "shared/data/mnist"
    if not path.is_dir():
        # fail, not skip: a CI that silently skips every data test would hide a broken data path
        pytest.fail(f"MNIST not found at {path}; set BNEXP_DATA_DIR to a dir with the four files")
    return path


REPO = Path(__file__).resolve().parents[1]
CONF_DIR = str(REPO / "conf")

# Tiny, fast settings on a slice of real MNIST: depth 3, 30 steps; every key is a real override.
TINY = [
    "model.depth=3",
    "trainer.max_steps=30",
    "trainer.val_every=10",
    "trainer.log_every=5",
    "trainer.accelerator=cpu",
    "trainer.progress_bar=false",
    "data.limit_train=1024",
    "data.limit_val=256",
    "data.limit_test=256",
    "data.single_n=20",
    "data.eval_batch_size=256",
    "logger=none",
]


@pytest.fixture(autouse=True)
def _env(monkeypatch, mnist_dir):
    # tests run on the CPU, on the real data, with W&B never reaching the network
    monkeypatch.setenv("BNEXP_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_SILENT", "true")


def compose_cfg(overrides: list[str] | None = None, config_name: str = "config"):
    """Compose a config exactly as the CLI does (real Hydra, real schema)."""
    from hydra import compose, initialize_config_dir

    import bnexp.config  # noqa: F401  registers the schema

    bnexp.config.register_configs()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose(config_name=config_name, overrides=list(overrides or []))
