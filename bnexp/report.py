"""`python -m bnexp.report`: rebuild a study's report from its storage alone (nothing is trained).

    python -m bnexp.report outputs/sweeps/lr_stability                 # a sweep's output dir (its sweep.json)
    python -m bnexp.report --storage URL --study-name NAME [--out DIR]  # any study in any storage
    python -m bnexp.report --trials trials.csv --out DIR [--threshold 0.8 ...]   # re-judge a saved table

Flags follow Optuna's own CLI (`optuna trials --study-name S --storage URL`): report and dashboard read a
study that exists, they compose no training config, so they take argparse flags, not Hydra overrides.
From storage, "stable" is judged by the rule the study was created with; `--trials` takes the rule from
flags. The storage URL may come from `$BNEXP_STORAGE` (a password need not be on the command line).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

from bnexp.cli import ConfigError, check_writable_dir, guard, one_line


def _storage_from_dir(sweep_dir: Path, storage: str | None) -> tuple[str, str]:
    meta_path = sweep_dir / "sweep.json"
    if not meta_path.is_file():
        raise ConfigError(f"{meta_path} not found; give a sweep output dir, or --storage URL --study-name NAME")
    try:
        meta = json.loads(meta_path.read_text())
        recorded, study = meta["storage"], meta["study"]
        if not (isinstance(recorded, str) and isinstance(study, str)):
            raise TypeError("its storage and study are not text")
    except (ValueError, KeyError, TypeError) as e:  # cut off, garbled bytes, not the object a sweep writes
        db = sweep_dir / "study.db"
        where = f"sqlite:///{db.resolve()}" if db.is_file() else "URL"
        raise ConfigError(
            f"{meta_path} is damaged ({one_line(e)[:120]}); rebuild with --storage {where} --study-name NAME "
            f"--out {sweep_dir} (a wrong NAME lists the studies there)"
        ) from None
    if storage is None and ":***@" in recorded:  # sweep.json never holds a password
        storage = os.environ.get("BNEXP_STORAGE")
        if not storage:
            raise ConfigError(f"the study's storage needs its password: set BNEXP_STORAGE or --storage ({recorded})")
    from bnexp.sweep.storage import storage_from_record  # a relative SQLite path is inside the sweep dir

    return storage or storage_from_record(recorded, sweep_dir), study


def storage_and_study(sweep_dir: str | None, storage: str | None, study_name: str | None) -> tuple[str, str]:
    """(storage URL, study name) from a sweep dir (its sweep.json), or --storage / $BNEXP_STORAGE and --study-name."""
    if sweep_dir:
        return _storage_from_dir(Path(sweep_dir), storage)
    storage = storage or os.environ.get("BNEXP_STORAGE")
    if storage and study_name:
        return storage, study_name
    raise ConfigError("give a sweep dir, or --storage URL (or $BNEXP_STORAGE) and --study-name NAME")


def _from_storage(url: str, study_name: str, out: Path) -> dict:
    from bnexp.sweep.records import build_report
    from bnexp.sweep.storage import load_study

    study = load_study(url, study_name)
    commands = [f"python -m bnexp.report --storage $BNEXP_STORAGE --study-name {study_name} --out {out}"]
    return build_report(study, out, commands)


def _from_csv(a: argparse.Namespace) -> dict:
    from bnexp.analysis.report import load_trials_csv, write_report
    from bnexp.analysis.stability import StabilityRule
    from bnexp.sweep.spec import check_rule

    path = Path(a.trials)
    if not path.is_file():
        raise ConfigError(f"{path} not found; give a trials.csv written by a sweep's report")
    check_rule(a.threshold, a.mode, a.epsilon, a.seed_quorum, lambda k, v: f"--{k.replace('_', '-')} {v}")
    keys = tuple(a.variant_keys.split(","))
    try:
        trials = load_trials_csv(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path} is not a trials.csv ({one_line(e)[:100]}); give one a report wrote") from None
    have = set(trials[0]) if trials else set()
    missing = [k for k in ("lr", "state", "val_acc", *keys) if k not in have]
    if missing:  # a foreign CSV, or --variant-keys naming no column: never a report of "None-None-dNone"
        raise ConfigError(
            f"{path} has no column {', '.join(missing)} (it has: {', '.join(sorted(have))[:200] or 'no rows'}); "
            "give a trials.csv a sweep's report wrote, and --variant-keys from its columns (default bn,bias,depth)"
        )
    for t in trials:
        t.pop("stable", None)  # recomputed under the (possibly new) rule
    rule = StabilityRule(a.threshold, a.mode, a.epsilon)
    cmd = (
        f"python -m bnexp.report --trials {a.trials} --out {a.out} --study-name {a.study_name or 'study'}"
        f" --threshold {a.threshold} --mode {a.mode} --epsilon {a.epsilon} --seed-quorum {a.seed_quorum}"
        f" --variant-keys {a.variant_keys}"
    )
    return write_report(a.out, a.study_name or "study", trials, rule, [cmd], keys, seed_quorum=a.seed_quorum)


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bnexp.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", nargs="?", help="a sweep's output dir (holds sweep.json)")
    ap.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., journal:///...)")
    ap.add_argument("--study-name", help="the study's name (with --storage, or --trials)")
    ap.add_argument("--out", help="where to write the report (default: the sweep dir, or ./report-<study>)")
    g = ap.add_argument_group("re-judging a saved trials.csv")
    g.add_argument("--trials", help="a trials.csv to rebuild the report from (no storage)")
    g.add_argument("--threshold", type=float, default=0.9)
    g.add_argument("--mode", choices=("threshold", "relative"), default="threshold")
    g.add_argument("--epsilon", type=float, default=0.02)
    g.add_argument("--seed-quorum", type=float, default=0.5)
    g.add_argument("--variant-keys", default="bn,bias,depth")
    return ap


def _report(a: argparse.Namespace) -> tuple[dict, Path]:
    if a.trials:
        if not a.out:
            raise ConfigError("--trials needs --out DIR")
        check_writable_dir(a.out, "--out")
        return _from_csv(a), Path(a.out)
    storage, study = storage_and_study(a.sweep_dir, a.storage, a.study_name)
    out = Path(a.out or a.sweep_dir or f"report-{study}")
    check_writable_dir(out, "--out")  # before the storage is read: a report that cannot be written is not made
    return _from_storage(storage, study, out), out


def main(argv: list[str] | None = None) -> None:
    from bnexp.sweep.app import _print_summary

    a = parser().parse_args(argv)
    # guard: bad input (a damaged study.db or sweep.json, an --out that cannot be written, a full disk while
    # the report is written) is one line and exit status 2; the report's earlier files stay whole
    summary, out = guard(lambda: _report(a), prog="python -m bnexp.report", out_key="--out")
    _print_summary(summary, out)
    sys.exit(0)


if __name__ == "__main__":
    main()
