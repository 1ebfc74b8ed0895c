"""Results as data: `bnexp.load(...)` reads any bnexp result into pandas.

    r = bnexp.load("docs/results/depth_ablation")                       # a report dir (trials.csv, summary.json)
    r = bnexp.load("outputs/sweeps/lr_stability")                        # a sweep's out dir (its sweep.json)
    r = bnexp.load("sqlite:///outputs/sweeps/lr_stability/study.db", "lr_stability")  # a storage + study name
    r = bnexp.load("outputs/multirun/2026-01-01/12-00-00")               # a `bnexp.run -m` dir (summary.csv)
    r.trials    # one row per trial (a multirun: per job), columns as the files name them
    r.curves    # every validation of every trial, long format: number, variant, lr, seed, step, metrics...
    r.summary   # summary.json as a dict (per variant: stable range, width, per seed, ...)

Column names are taken from the files and records as they are, never translated, so the table speaks the
metrics' own names. A sweep dir and a storage read the study itself (live, while workers run) and judge it
by the rule the study was created with; a report dir reads what its report wrote.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bnexp import sweep_file
from bnexp.cli import ConfigError, redact

_CURVE_ID = ["number", "variant", "lr", "seed", "step"]


@dataclass
class Results:
    """A study's (or a multirun's) results as tables. `kind` is 'study', 'multirun' (bnexp.run -m jobs) or
    'studies' (bnexp.sweep -m: one study per job, each row tagged with its `job`)."""

    trials: Any  # pandas.DataFrame
    curves: Any  # pandas.DataFrame
    summary: dict = field(default_factory=dict)
    source: str = ""
    kind: str = "study"

    @property
    def variants(self) -> Any:
        """summary's per-variant rows as a DataFrame (label, stable_decades, stable_lr_min, ...)."""
        import pandas as pd

        rows = [{k: v for k, v in row.items() if not isinstance(v, (list, dict))} for row in self.variants_list()]
        return pd.DataFrame(rows)

    def variants_list(self) -> list[dict]:
        return list(self.summary.get("variants") or [])

    def __repr__(self) -> str:
        return (
            f"Results({self.kind} {self.summary.get('study', self.source)!r}: trials {self.trials.shape},"
            f" curves {self.curves.shape}, {len(self.variants_list())} variants)"
        )


def load(path_or_storage: str | os.PathLike, study_name: str | None = None) -> Results:
    """Read results: a report dir (trials.csv + summary.json, e.g. docs/results/<study>), a sweep's out dir
    (sweep.json: read from its storage), a storage URL with `study_name`, or a multirun dir (summary.csv).
    Bad input raises bnexp.cli.ConfigError, its message naming what to give instead."""
    src = str(path_or_storage)
    if "://" in src:
        if not study_name:
            raise ConfigError(f"a storage URL needs a study name: bnexp.load({redact(src)!r}, study_name='NAME')")
        return _from_storage(src, study_name)
    path = Path(src)
    if not path.is_dir():
        raise ConfigError(f"{path} is not a directory; give a sweep or report dir, a multirun dir, or a storage URL")
    if sweep_file.exists(path):
        storage, name = _sweep_json(path)
        return _from_storage(storage, study_name or name, source=str(path))
    if (path / "trials.csv").is_file():
        return _from_report_dir(path)
    if (path / "summary.csv").is_file():
        return _from_multirun(path)
    raise ConfigError(
        f"{path} holds no sweep.json, trials.csv or summary.csv; give a sweep's out dir, a report dir, "
        "a `bnexp.run -m` multirun dir, or a storage URL and a study name"
    )


def _sweep_json(path: Path) -> tuple[str, str]:
    """(storage URL, study name) from a sweep dir's sweep.json: the one reader every command uses (a SQLite
    file recorded relative to the dir is found inside it; a masked password comes from $BNEXP_STORAGE)."""
    from bnexp.sweep.locate import storage_and_study

    return storage_and_study(str(path), None, None)


def _frame(rows: list[dict], columns: list[str] | None = None) -> Any:
    import pandas as pd

    return pd.DataFrame(rows, columns=columns) if columns is not None else pd.DataFrame(rows)


def _curves_of(trials: list[dict], keys: tuple[str, ...]) -> Any:
    """Every record's val_history as long-format rows (the columns curves.csv has)."""
    from bnexp.analysis.stability import variant_key, variant_label

    rows = []
    for r in trials:
        label = variant_label(variant_key(r, keys), keys)
        for h in r.get("val_history") or []:
            rows.append({"number": r.get("number"), "variant": label, "lr": r.get("lr"), "seed": r.get("seed"), **h})
    metrics = list(dict.fromkeys(k for row in rows for k in row if k not in _CURVE_ID))
    return _frame(rows, [*_CURVE_ID, *metrics])


def _from_storage(url: str, study_name: str, source: str | None = None) -> Results:
    """Read a study from its storage and judge it by its recorded rule (what its report would say)."""
    from bnexp.analysis.stability import STATISTICS, analyse, compare, is_stable, variant_key
    from bnexp.sweep.records import keys_of, recorded_spec, rule_of, trial_records
    from bnexp.sweep.storage import load_study

    study = load_study(url, study_name)
    spec = recorded_spec(study)
    rule = rule_of(spec["sweep"])
    keys = keys_of(spec["sweep"])
    records = trial_records(study)
    variants = analyse(records, rule, keys)
    bests = {variant_key(v, keys): v["variant_best"] for v in variants}
    rows = [
        {
            **{k: v for k, v in r.items() if k != "val_history"},
            "stable": is_stable(r, rule, bests.get(variant_key(r, keys))),
        }
        for r in records
    ]
    summary = {
        "study": study.study_name,
        "rule": rule.settings(),
        "rule_describe": rule.describe(),
        "statistics": dict(STATISTICS),
        "variant_keys": list(keys),
        "n_trials": sum(r.get("state") == "COMPLETE" for r in records),
        "n_failed": sum(r.get("state") == "FAIL" for r in records),
        "variants": variants,
        "comparison": compare(variants, keys),
    }
    return Results(_frame(rows), _curves_of(records, keys), summary, source or redact(url), "study")


def _from_report_dir(path: Path) -> Results:
    import pandas as pd

    from bnexp.analysis.report import load_trials_csv

    trials = load_trials_csv(path / "trials.csv")  # bnexp's typed reader: bias "true" stays text, "" is None
    for t in trials:
        t.pop("val_history", None)  # curves.csv is the long table itself
    curves = pd.read_csv(path / "curves.csv") if (path / "curves.csv").is_file() else _frame([], _CURVE_ID)
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    summary.setdefault("study", path.name)
    return Results(_frame(trials), curves, summary, str(path), "study")


def _from_multirun(path: Path) -> Results:
    """A `-m` dir: of bnexp.run jobs (each a metrics.json) or of bnexp.sweep jobs (each a study)."""
    import pandas as pd

    jobs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    studies = [j for j in jobs if (j / "trials.csv").is_file() or sweep_file.exists(j)]
    if studies:
        parts = [(j.name, load(j)) for j in studies]
        trials = pd.concat([r.trials.assign(job=name) for name, r in parts], ignore_index=True)
        curves = pd.concat([r.curves.assign(job=name) for name, r in parts], ignore_index=True)
        variants = [{**v, "job": name} for name, r in parts for v in r.variants_list()]
        summary = {"study": path.name, "jobs": {name: r.summary for name, r in parts}, "variants": variants}
        return Results(trials, curves, summary, str(path), "studies")
    from bnexp.analysis.stability import variant_key, variant_label

    trials = pd.read_csv(path / "summary.csv")
    rows = []
    for j in jobs:
        if (j / "metrics.json").is_file():
            m = json.loads((j / "metrics.json").read_text())
            label = variant_label(variant_key(m))
            for h in m.get("val_history") or []:
                rows.append({"number": j.name, "variant": label, "lr": m.get("lr"), "seed": m.get("seed"), **h})
    curves = _frame(rows, [*_CURVE_ID, *dict.fromkeys(k for r in rows for k in r if k not in _CURVE_ID)])
    return Results(trials, curves, {"study": path.name, "jobs": len(trials)}, str(path), "multirun")
