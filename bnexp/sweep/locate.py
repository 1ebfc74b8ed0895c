"""Where a study is, and how a command that reads one says so: the flags `bnexp.report` and `bnexp.status`
share (Optuna's own CLI names: `optuna trials --study-name S --storage URL`).

A study is found by a sweep's output dir (its sweep.json names storage and study), or by `--storage URL`
(or `$BNEXP_STORAGE`, so a password need not be on the command line) and `--study-name NAME`.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from bnexp import sweep_file
from bnexp.cli import ConfigError
from bnexp.record import STATISTICS


def add_study_args(ap: argparse.ArgumentParser) -> None:
    """The positional sweep dir and --storage/--study-name."""
    ap.add_argument("sweep_dir", nargs="?", help="a sweep's output dir (holds sweep.json), or a saved report's dir")
    ap.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., journal:///...)")
    ap.add_argument("--study-name", help="the study's name (with --storage)")


def add_rule_args(ap: argparse.ArgumentParser) -> None:
    """The stability rule's settings as flags; each one given replaces the study's recorded setting."""
    g = ap.add_argument_group("judging (default: the rule the study was created with)")
    g.add_argument("--threshold", type=float, help="stable when the judged val/acc >= this (e.g. 0.9)")
    g.add_argument("--mode", choices=("threshold", "relative"), help="relative: within --epsilon of the best")
    g.add_argument("--epsilon", type=float, help="relative mode's margin (e.g. 0.02)")
    g.add_argument("--seed-quorum", type=float, help="an lr is stable when this fraction of its seeds is (0.5)")
    g.add_argument("--last-k", type=int, help="every one of the last k validations must pass (1)")
    g.add_argument(
        "--statistics", choices=tuple(STATISTICS), help="judge population, batch or recal(ibrated) statistics"
    )


def rule_flags(a: argparse.Namespace) -> dict[str, Any]:
    """The rule settings given on the command line (None: not given)."""
    keys = ("threshold", "mode", "epsilon", "seed_quorum", "last_k", "statistics")
    return {k: getattr(a, k) for k in keys if getattr(a, k, None) is not None}


def flag(key: str, value: str) -> str:
    """`--seed-quorum 3`: a rule setting spelled as this command takes it."""
    return f"--{key.replace('_', '-')} {value}"


def _storage_from_dir(sweep_dir: Path, storage: str | None) -> tuple[str, str]:
    rec = sweep_file.read(sweep_dir)
    recorded, study = rec.storage, rec.study
    if storage is None and ":***@" in recorded:  # sweep.json never holds a password
        storage = os.environ.get("BNEXP_STORAGE")
        if not storage:
            raise ConfigError(f"the study's storage needs its password: set BNEXP_STORAGE or --storage ({recorded})")
    from bnexp.sweep.storage import storage_from_record  # a relative SQLite path is inside the sweep dir

    return storage or storage_from_record(recorded, sweep_dir), study


def storage_and_study(sweep_dir: str | None, storage: str | None, study_name: str | None) -> tuple[str, str]:
    """(storage URL, study name) from a sweep dir (its sweep.json), or --storage / $BNEXP_STORAGE and --study-name."""
    if sweep_dir:
        d = Path(sweep_dir)
        if not sweep_file.exists(d):
            raise ConfigError(
                f"{sweep_file.path(d)} not found; give a sweep output dir, a saved report's dir (with trials.csv), "
                "or --storage URL --study-name NAME"
            )
        return _storage_from_dir(d, storage)
    storage = storage or os.environ.get("BNEXP_STORAGE")
    if storage and study_name:
        return storage, study_name
    raise ConfigError("give a sweep dir, or --storage URL (or $BNEXP_STORAGE) and --study-name NAME")
