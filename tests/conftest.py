"""Shared fixtures: the real MNIST files, and an environment where tests run on the CPU with W&B offline.

Helpers that tests import (paths, tiny settings, subprocess runners, the offline W&B reader) are in
tests/helpers/ (pytest puts tests/ on sys.path: `pythonpath` in pyproject.toml)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from helpers.env import REPO


@pytest.fixture(scope="session")
def mnist_dir() -> Path:
    """The real MNIST files: $BNEXP_DATA_DIR (a relative path means the directory it names from where pytest
    was started), else ../shared/data/mnist beside the repo root."""
    env = os.environ.get("BNEXP_DATA_DIR")
    path = Path(env).expanduser().resolve() if env else REPO.parent / "shared/data/mnist"
    if not path.is_dir():
        # fail, not skip: a CI that silently skips every data test would hide a broken data path
        pytest.fail(f"MNIST not found at {path}; set BNEXP_DATA_DIR to a dir with the four files")
    return path


@pytest.fixture(autouse=True)
def _env(monkeypatch, mnist_dir):
    # tests run on the CPU, on the real data (an absolute path: subprocesses run in other dirs), with W&B
    # never reaching the network
    monkeypatch.setenv("BNEXP_DATA_DIR", str(mnist_dir))
    monkeypatch.setenv("WANDB_MODE", os.environ.get("WANDB_MODE", "offline"))
    monkeypatch.setenv("WANDB_SILENT", "true")
