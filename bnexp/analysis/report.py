"""A study's report files: summary.json, trials.csv, the figures and report.md (what bnexp.analysis.stability
finds, written out). `write_report` is the one writer; `load_trials_csv` reads a saved table back, typed.
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from bnexp.analysis.plots import plot_heatmap, plot_stability
from bnexp.analysis.stability import (
    DEFAULT_VARIANT_KEYS,
    StabilityRule,
    _as_bool,
    _state,
    analyse,
    compare,
    is_stable,
    variant_key,
)
from bnexp.files import write_json_atomic, write_text_atomic

# Known columns get a fixed type on reading back, so e.g. bias "true" stays a string.
_COLUMN_TYPES: dict[str, type] = {
    "number": int,
    "state": str,
    "bn": str,
    "bias": str,
    "depth": int,
    "lr": float,
    "seed": int,
    "diverged": bool,
    "val_acc": float,
    "val_acc_best": float,
    "val_acc_batchstats": float,
    "test_acc": float,
    "step": int,
    "wall_s": float,
    "overrides": str,
    "stable": bool,
}
_INT_RE = re.compile(r"^[+-]?\d+$")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)  # exact round trip; nan/inf become "nan"/"inf"
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v)
    return str(v)


def _parse_cell(text: str, typ: type | None) -> Any:
    if typ is str:
        return text  # an empty string stays a string for known text columns
    if text == "":
        return None
    if typ is bool or (typ is None and text in ("True", "False")):
        return _as_bool(text)
    if typ is int:
        if _INT_RE.match(text):
            return int(text)
        f = float(text)  # "3.0" from a float-typed writer; nan stays a float
        return int(f) if f.is_integer() else f
    if typ is float:
        return float(text)
    # unknown column: int, then float, else the text
    if _INT_RE.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def write_trials_csv(path: str | Path, trials: Sequence[dict]) -> list[str]:
    """One row per trial; columns = the union of keys in first-seen order. Returns columns."""
    columns: list[str] = []
    for rec in trials:
        for k in rec:
            if k not in columns:
                columns.append(k)
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(columns)
    for rec in trials:
        w.writerow([_cell(rec.get(k)) for k in columns])
    write_text_atomic(path, f.getvalue())
    return columns


def load_trials_csv(path: str | Path) -> list[dict]:
    """Parse a ``trials.csv`` back with types. Empty cells become None (also for keys a trial
    never had), except in known text columns, where they stay ``""``."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    return [{k: _parse_cell(v, _COLUMN_TYPES.get(k)) for k, v in row.items()} for row in rows]


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null (json.dump would emit invalid 'NaN')."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _markdown(summary: dict, rule: StabilityRule, commands: Sequence[str], files: list[str]) -> str:
    lines = [
        f"# Stability report: {summary['study']}",
        "",
        f"**Rule.** A trial is stable when it is {rule.describe()}. An lr is stable when at"
        f" least {summary['seed_quorum']:g} of its seeds are. Widths are log10(max/min) of the"
        " stable lrs (they span gaps); *longest run* is the longest gap-free run of stable"
        " grid points. Diverged trials are COMPLETE results that are never stable; FAIL trials"
        " are counted apart.",
        "",
        f"Trials: {summary['n_trials']} complete, {summary['n_failed']} failed ({summary['n_records']} records).",
        "",
        "## Variants",
        "",
        "| variant | trials | stable | diverged | failed | stable lr range | decades"
        " | 95% CI | longest run (points / decades) | best lr | best acc |",
        "|---|---:|---:|---:|---:|---|---:|---|---|---:|---:|",
    ]
    for v in summary["variants"]:
        rng = f"{v['stable_lr_min']:.3g} – {v['stable_lr_max']:.3g}" if v["stable_lr_min"] is not None else "none"
        ci = v["stable_decades_ci"]
        ci_txt = f"[{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "–"
        lines.append(
            f"| {v['label']} | {v['n_trials']} | {v['n_stable']} | {v['n_diverged']}"
            f" | {v['n_failed']} | {rng} | {v['stable_decades']:.2f} | {ci_txt}"
            f" | {v['longest_run']} / {v['longest_run_decades']:.2f}"
            f" | {_fmt(v['best_lr'], '.3g')} | {_fmt(v['best_val_acc'], '.4f')} |"
        )
    lines += ["", "## BN vs no BN", ""]
    if summary["comparison"]:
        lines += [
            "| depth | bias | bn | decades | off decades | Δ decades | Δ longest run |",
            "|---:|---|---|---:|---:|---:|---:|",
        ]
        for c in summary["comparison"]:
            lines.append(
                f"| {c.get('depth', '–')} | {c.get('bias', '–')} | {c['bn']}"
                f" | {c['stable_decades']:.2f} | {_fmt(c['off_decades'])}"
                f" | {_fmt(c['delta_decades'], '+.2f')}"
                f" | {_fmt(c['delta_longest_run_decades'], '+.2f')} |"
            )
    else:
        lines.append("No BN / no-BN pairs in this table.")
    lines += ["", "![stability](stability.png)", ""]
    if "heatmap.png" in files:
        lines += ["![heatmap](heatmap.png)", ""]
    lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    study: str,
    trials: list[dict],
    rule: StabilityRule,
    commands: list[str],
    variant_keys: Sequence[str] = DEFAULT_VARIANT_KEYS,
    *,
    seed_quorum: float = 0.5,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict:
    """Write summary.json, trials.csv, stability.png, heatmap.png (several depths), report.md.

    Returns the summary dict (as written to summary.json).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant_keys = tuple(variant_keys)
    variants = analyse(trials, rule, variant_keys, n_boot=n_boot, seed=seed, seed_quorum=seed_quorum)
    comparison = compare(variants, variant_keys)

    # Per-trial stable column; relative mode needs each trial's variant best.
    bests = {variant_key(v, variant_keys): v["variant_best"] for v in variants}
    rows = [{**r, "stable": is_stable(r, rule, bests.get(variant_key(r, variant_keys)))} for r in trials]
    write_trials_csv(out / "trials.csv", rows)

    files = ["summary.json", "trials.csv", "stability.png", "report.md"]
    plot_stability(out / "stability.png", study, variants, trials, rule, variant_keys)
    if len({v.get("depth") for v in variants}) > 1:
        plot_heatmap(out / "heatmap.png", study, variants, rule)
        files.insert(3, "heatmap.png")

    summary = _json_safe(
        {
            "study": study,
            "threshold": rule.threshold,
            "rule": asdict(rule),
            "seed_quorum": seed_quorum,
            "variant_keys": list(variant_keys),
            "n_boot": n_boot,
            "n_records": len(trials),
            "n_trials": sum(_state(r) == "COMPLETE" for r in trials),
            "n_failed": sum(_state(r) == "FAIL" for r in trials),
            "variants": variants,
            "comparison": comparison,
            "files": files,
        }
    )
    write_json_atomic(out / "summary.json", summary)
    write_text_atomic(out / "report.md", _markdown(summary, rule, commands, files))
    return summary
