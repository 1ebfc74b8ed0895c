"""`python -m bnexp.status`: how far a study is, read from its storage while workers run; writes nothing.

    python -m bnexp.status outputs/sweeps/lr_stability                   # a sweep's output dir (its sweep.json)
    python -m bnexp.status --storage URL --study-name NAME               # any study ($BNEXP_STORAGE works too)

Per variant: points done / running / waiting / failed, and the stable learning-rate range so far under the
study's recorded rule (the one its report will use). Flags as `bnexp.report`'s (Optuna's names).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from bnexp.cli import ConfigError, UsageError, fail, one_line, redact


def status(study: Any) -> list[dict[str, Any]]:
    """One row per variant: counts by state and the stable range so far (bnexp.analysis under the study's rule)."""
    from bnexp.analysis.stability import _sort_key, analyse, variant_key
    from bnexp.names import variant_label
    from bnexp.sweep.records import keys_of, recorded_spec, rule_of, trial_records

    spec = recorded_spec(study)
    rule, quorum = rule_of(spec["sweep"])
    keys = keys_of(spec["sweep"])
    counts: dict[tuple, dict[str, int]] = {}
    latest: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):  # the latest attempt of each design point
        key = t.user_attrs.get("key")
        if key is not None and not t.user_attrs.get("returned") and not t.user_attrs.get("duplicate"):
            if key not in latest or t.number > latest[key].number:
                latest[key] = t
    recs = trial_records(study)
    by_key = {r["key"]: r for r in recs}
    for key, t in latest.items():
        rec = by_key.get(key) or _variant_of(t, spec.get("train", {}).get("model", {}))
        state = {"COMPLETE": "done", "RUNNING": "running", "WAITING": "waiting"}.get(t.state.name, "failed")
        c = counts.setdefault(variant_key(rec, keys), {"done": 0, "running": 0, "waiting": 0, "failed": 0})
        c[state] += 1
    ranges = {variant_key(v, keys): v for v in analyse(recs, rule, keys, n_boot=0, seed_quorum=quorum)}
    rows = []
    for vk, c in sorted(counts.items(), key=lambda kv: _sort_key(kv[0], keys)):
        v = ranges.get(vk, {})
        rows.append(
            {
                "variant": variant_label(vk, keys),
                **c,
                "stable_lr_min": v.get("stable_lr_min"),
                "stable_lr_max": v.get("stable_lr_max"),
                "stable_decades": v.get("stable_decades", 0.0),
            }
        )
    return rows


def _variant_of(t: Any, model: dict) -> dict[str, Any]:
    """A not-yet-run point's variant: the params its point fixed (`model.bn` -> bn, ...) over the study's
    training config (`model`: its recorded model node) for the axes the grid does not vary."""
    from bnexp.names import BASE_AXES, axis_name

    fixed = t.params or t.system_attrs.get("fixed_params") or {}
    return {k: model.get(k) for k in BASE_AXES} | {axis_name(k): v for k, v in fixed.items()}


def render(name: str, rows: list[dict[str, Any]]) -> str:
    total = {k: sum(r[k] for r in rows) for k in ("done", "running", "waiting", "failed")}
    lines = [f"study {name}: " + ", ".join(f"{v} {k}" for k, v in total.items())]
    for r in rows:
        lo, hi = r["stable_lr_min"], r["stable_lr_max"]
        rng = f"[{lo:.2g}, {hi:.2g}] = {r['stable_decades']:.2f} decades" if lo else "none yet"
        lines.append(
            f"  {r['variant']:<24} done={r['done']:>3} running={r['running']:>2} waiting={r['waiting']:>3} "
            f"failed={r['failed']:>2}  stable lr {rng}"
        )
    return "\n".join(lines)


def _read_only_storage(url: str) -> str:
    """Refuse a SQLite file that is not there (opening it would create an empty database: a write)."""
    if url.startswith("sqlite:///"):
        path = Path(url[len("sqlite:///") :])
        if not path.is_file():
            raise ConfigError(f"no study storage at {path}; give the sweep's dir or its --storage URL")
    return url


def main(argv: list[str] | None = None) -> None:
    from bnexp.report import parser as report_parser
    from bnexp.report import storage_and_study

    ap = argparse.ArgumentParser(prog="python -m bnexp.status", description=__doc__.splitlines()[0])
    for action in report_parser()._actions:  # the same positional and --storage/--study-name as bnexp.report
        if action.dest in ("sweep_dir", "storage", "study_name"):
            ap._add_action(action)
    a = ap.parse_args(argv)
    try:
        url, name = storage_and_study(a.sweep_dir, a.storage, a.study_name)
        from bnexp.sweep.storage import load_study

        print(render(name, status(load_study(_read_only_storage(url), name))))
    except UsageError as e:
        fail(one_line(e))
    except Exception as e:  # e.g. the database is locked for longer than the timeout
        fail(redact(f"cannot read the study: {one_line(e)}"), code=1)
    sys.exit(0)


if __name__ == "__main__":
    main()
