"""Results as data: `bnexp.load(...)` reads any bnexp result into pandas.

    r = bnexp.load("docs/results/depth_ablation")                       # a report dir (trials.csv, summary.json)
    r = bnexp.load("outputs/sweeps/lr_stability")                        # a sweep's out dir (its sweep.json)
    r = bnexp.load("sqlite:///outputs/sweeps/lr_stability/study.db", "lr_stability")  # a storage + study name
    r = bnexp.load("outputs/multirun/2026-01-01/12-00-00")               # a `bnexp.run -m` dir (summary.csv)
    r.trials    # one row per trial (a multirun: per job), columns as the files name them
    r.curves    # every validation of every trial, long format: number, variant, lr, seed, step, metrics...
    r.summary   # summary.json as a dict (per variant: stable range, width, per seed, ...)
    r.variants  # one row per variant: label, width (median over seeds), width_range, stable_span, ...
    r.edges     # one row per variant, seed and side: the bracket, the edge, the seed's width, resolution, open

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
        """summary's per-variant rows as a DataFrame: label, width (median over seeds, decades), width_low /
        width_high (the lowest and highest seed's), stable_span, stable_lr_min, ... (scalars only)."""
        import pandas as pd

        rows = []
        for row in self.variants_list:
            flat = {k: v for k, v in row.items() if not isinstance(v, (list, dict))}
            lo, hi = row.get("width_range") or (None, None)
            rows.append({**flat, "width_low": lo, "width_high": hi})
        return pd.DataFrame(rows)

    @property
    def variants_list(self) -> list[dict]:
        """summary's per-variant dicts as they are (per seed, by statistics, edges, points)."""
        return list(self.summary.get("variants") or [])

    @property
    def edges(self) -> Any:
        """One row per variant, seed and side (low, high): the bracket (`stable_lr`, `unstable_lr`: None where
        the edge is open, the range going on past the search), the `edge` (the bracket's midpoint; an open
        edge's stable end), the bracket's `resolution` in decades, the seed's `width` (the same on both of its
        rows), `open`, and `stable_past` (a tuple of the lrs stable again past an unstable one beyond this
        bracket: the edge is a chaotic band; empty for older summaries). A seed with nothing stable has one row,
        side None and width 0."""
        import pandas as pd

        from bnexp.analysis.edges import bracket_decades, estimate

        cols = ["variant", "seed", "side", "stable_lr", "unstable_lr", "edge", "resolution", "width", "open",
                "stable_past"]  # fmt: skip
        rows = []
        for v in self.variants_list:
            extra = {"job": v["job"]} if "job" in v else {}
            for seed, e in ((v.get("edges") or {}).get("per_seed") or {}).items():
                base = {**extra, "variant": v.get("label"), "seed": _seed(seed), "width": e.get("width")}
                if not e.get("low"):
                    rows.append({**base, "side": None, "open": False, "stable_past": ()})
                    continue
                for side in ("low", "high"):
                    b = e[side]
                    past = tuple((e.get("stable_past") or {}).get(side) or ())  # stable again past this bracket
                    rows.append({**base, "side": side, "stable_lr": b[0], "unstable_lr": b[1], "edge": estimate(b),
                                 "resolution": bracket_decades(b), "open": b[1] is None,
                                 "stable_past": past})  # fmt: skip
        df = pd.DataFrame(rows, columns=[*(["job"] if any("job" in r for r in rows) else []), *cols])
        return df.astype({"seed": "Int64", "open": bool, "width": float, "resolution": float, "edge": float,
                          "stable_lr": float, "unstable_lr": float})  # fmt: skip

    def __repr__(self) -> str:
        return (
            f"Results({self.kind} {self.summary.get('study', self.source)!r}: trials {self.trials.shape},"
            f" curves {self.curves.shape}, {len(self.variants_list)} variants)"
        )


def _seed(s: Any) -> Any:
    """A seed as edges' per_seed keys spell it (JSON keys are text) back to a number."""
    try:
        return int(s)
    except (TypeError, ValueError):
        return None


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


def _typed_trials(df: Any) -> Any:
    """A trials table with the dtypes its columns mean: `diverged` and `stable` bool (a trial that never ran
    to a verdict, a FAIL, is not diverged), `diverged_step` nullable Int64 (<NA>: did not diverge)."""
    from bnexp.record import DIVERGED, DIVERGED_STEP

    for col in (DIVERGED, "stable"):
        if col in df:
            df[col] = df[col].map(lambda x: bool(x) if isinstance(x, bool) else str(x).lower() == "true").astype(bool)
    if DIVERGED_STEP in df:
        df[DIVERGED_STEP] = df[DIVERGED_STEP].astype("Float64").astype("Int64")
    return df


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
    from bnexp.analysis.bn_gain import compare
    from bnexp.analysis.edges import add_widths
    from bnexp.analysis.stability import STATISTICS, analyse, is_stable, variant_key
    from bnexp.sweep.records import keys_of, recorded_spec, rule_of, trial_records
    from bnexp.sweep.storage import load_study

    study = load_study(url, study_name)
    spec = recorded_spec(study)
    rule = rule_of(spec["sweep"])
    keys = keys_of(spec["sweep"])
    records = trial_records(study)
    variants = analyse(records, rule, keys)
    add_widths(variants, records, rule, keys)  # the width every report and table gives
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
    return Results(_typed_trials(_frame(rows)), _curves_of(records, keys), summary, source or redact(url), "study")


def _from_report_dir(path: Path) -> Results:
    import pandas as pd

    from bnexp.analysis.report import load_trials_csv

    trials = load_trials_csv(path / "trials.csv")  # bnexp's typed reader: bias "true" stays text, "" is None
    for t in trials:
        t.pop("val_history", None)  # curves.csv is the long table itself
    curves = pd.read_csv(path / "curves.csv") if (path / "curves.csv").is_file() else _frame([], _CURVE_ID)
    summary = json.loads((path / "summary.json").read_text()) if (path / "summary.json").is_file() else {}
    summary.setdefault("study", path.name)
    return Results(_typed_trials(_frame(trials)), curves, summary, str(path), "study")


def _from_multirun(path: Path) -> Results:
    """A `-m` dir: of bnexp.run jobs (each a metrics.json) or of bnexp.sweep jobs (each a study)."""
    import pandas as pd

    jobs = sorted(p for p in path.iterdir() if p.is_dir() and not p.name.startswith("."))
    studies = [j for j in jobs if (j / "trials.csv").is_file() or sweep_file.exists(j)]
    if studies:
        parts = [(j.name, load(j)) for j in studies]
        trials = pd.concat([r.trials.assign(job=name) for name, r in parts], ignore_index=True)
        curves = pd.concat([r.curves.assign(job=name) for name, r in parts], ignore_index=True)
        variants = [{**v, "job": name} for name, r in parts for v in r.variants_list]
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
