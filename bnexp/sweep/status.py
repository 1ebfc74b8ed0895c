"""`python -m bnexp.status`: how far a study is, read from its storage while workers run; writes nothing.

    python -m bnexp.status outputs/sweeps/lr_stability                   # a sweep's output dir (its sweep.json)
    python -m bnexp.status --storage URL --study-name NAME               # any study ($BNEXP_STORAGE works too)
    python -m bnexp.status docs/results/edges_d19                        # a saved report: its finished state

Per variant: points done / running / waiting / failed, the stable learning rates so far (pooled over seeds)
and the width (median [range] over seeds) under the study's recorded rule (the one its report will use);
then an ETA from the finished trials' wall times. A trial that shows RUNNING but whose worker is gone (killed
with -9 on this host, or silent past `sweep.grace` where heartbeats are recorded) is said as such: it stays
RUNNING in the storage until the next sweep command on it fails and retries it. A saved report's dir
(summary.json and trials.csv, no sweep.json) is read as what it is: a finished study, judged as its report
was. Flags as `bnexp.report`'s (Optuna's names).
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path
from typing import Any

from bnexp.cli import ConfigError, UsageError, fail, one_line, redact
from bnexp.sweep.locate import add_study_args, storage_and_study

STATES = ("done", "running", "waiting", "failed")


def _latest(study: Any) -> dict[str, Any]:
    """The latest attempt of each design point."""
    latest: dict[str, Any] = {}
    for t in study.get_trials(deepcopy=False):
        key = t.user_attrs.get("key")
        if key is not None and not t.user_attrs.get("returned") and not t.user_attrs.get("duplicate"):
            if key not in latest or t.number > latest[key].number:
                latest[key] = t
    return latest


def status(study: Any) -> list[dict[str, Any]]:
    """One row per variant: counts by state and the stable range so far (bnexp.analysis under the study's rule)."""
    from bnexp.analysis.edges import add_widths
    from bnexp.analysis.stability import analyse, variant_key, variant_sort_key
    from bnexp.names import variant_label
    from bnexp.sweep.records import keys_of, recorded_spec, rule_of, trial_records

    spec = recorded_spec(study)
    rule, keys = rule_of(spec["sweep"]), keys_of(spec["sweep"])
    recs = trial_records(study)
    by_key = {r["key"]: r for r in recs}
    counts: dict[tuple, dict[str, Any]] = {}
    for key, t in _latest(study).items():
        rec = by_key.get(key) or _variant_of(t, spec.get("train", {}).get("model", {}))
        state = {"COMPLETE": "done", "RUNNING": "running", "WAITING": "waiting"}.get(t.state.name, "failed")
        c = counts.setdefault(variant_key(rec, keys), {s: 0 for s in STATES} | {"walls": []})
        c[state] += 1
        if state == "done" and isinstance(by_key.get(key, {}).get("wall_s"), (int, float)):
            c["walls"].append(float(by_key[key]["wall_s"]))
    variants = analyse(recs, rule, keys)
    add_widths(variants, recs, rule, keys)
    ranges = {variant_key(v, keys): v for v in variants}
    rows = []
    for vk, c in sorted(counts.items(), key=lambda kv: variant_sort_key(kv[0], keys)):
        v = ranges.get(vk, {})
        rows.append(
            {"variant": variant_label(vk, keys), **c, "stable_lr_min": v.get("stable_lr_min"),
             "stable_lr_max": v.get("stable_lr_max"), "width": v.get("width"), "width_range": v.get("width_range")}
        )  # fmt: skip
    return rows


def _variant_of(t: Any, model: dict) -> dict[str, Any]:
    """A not-yet-run point's variant: its grid axes read from its key as a finished trial records them
    (`records.axes_of_key`: "0.2" as a string, depth an int; the fixed params' float 0.2 would make a second
    row), over the study's training config (`model`: its recorded model node) for the axes the grid does not
    vary."""
    from bnexp.names import BASE_AXES
    from bnexp.sweep.records import axes_of_key

    return {k: model.get(k) for k in BASE_AXES} | axes_of_key(t.user_attrs["key"])


def eta_s(rows: list[dict[str, Any]]) -> float | None:
    """Seconds left: the median finished trial's wall time x the points left, over the workers running now
    (at least one). None until a trial has finished."""
    walls = [w for r in rows for w in r["walls"]]
    if not walls:
        return None
    left = sum(r["waiting"] + r["running"] for r in rows)
    workers = max(1, sum(r["running"] for r in rows))
    return statistics.median(walls) * left / workers


def doubtful(study: Any) -> list[str]:
    """One line per RUNNING trial that is probably dead: its worker ran on this host and its process is gone
    (kill -9), or it has not beaten for longer than the study's grace (storages whose heartbeat bnexp records
    as a trial attr; an RDB storage's own heartbeat is Optuna's to judge). Reads only."""
    import socket
    import time

    from optuna.trial import TrialState

    from bnexp.sweep.liveness import HEARTBEAT_ATTR
    from bnexp.sweep.records import recorded_spec

    sw = recorded_spec(study).get("sweep", {})
    grace = max(float(sw.get("grace") or 0), 2 * float(sw.get("heartbeat") or 0))
    host, now, out = socket.gethostname(), time.time(), []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        h, _, rest = worker.partition(":")
        pid = rest.split(" ", 1)[0]
        why = None
        if h == host and pid.isdigit() and not _alive(int(pid)):
            why = f"its worker (pid {pid} on this host) is gone"
        else:
            beat = t.system_attrs.get(HEARTBEAT_ATTR)
            if isinstance(beat, (int, float)) and grace > 0 and now - beat > grace:
                why = f"no heartbeat for {now - beat:.0f} s (sweep.grace={grace:g} s)"
        if why:
            out.append(f"trial {t.number} ({t.user_attrs.get('key', '?')}): running, but {why}: maybe dead; "
                       "the next sweep command on this study fails it and retries the point")  # fmt: skip
    return out


def _alive(pid: int) -> bool:
    import os

    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process: alive
        return True
    return True


def _duration(s: float) -> str:
    return f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min" if s >= 60 else f"{s:.0f} s"


def report_rows(report_dir: Path) -> tuple[str, list[dict[str, Any]]]:
    """(study name, rows as `status` gives them) of a saved report's dir: its trials.csv counted by state,
    its summary.json's stable lrs and widths (judged as the report was). A finished study: nothing runs."""
    import json

    from bnexp.analysis.report import load_trials_csv

    summary = json.loads((report_dir / "summary.json").read_text())
    trials = load_trials_csv(report_dir / "trials.csv")
    by_state = {"COMPLETE": "done", "PRUNED": "done", "FAIL": "failed", "RUNNING": "running", "WAITING": "waiting"}
    rows = []
    for v in summary.get("variants") or []:
        keys = summary.get("variant_keys") or ["bn", "bias", "depth"]
        mine = [t for t in trials if all(str(t.get(k)) == str(v.get(k)) for k in keys)]
        c: dict[str, Any] = {k: 0 for k in STATES} | {"walls": []}
        for t in mine:
            c[by_state.get(str(t.get("state") or "COMPLETE"), "failed")] += 1
            if isinstance(t.get("wall_s"), (int, float)) and t.get("state", "COMPLETE") == "COMPLETE":
                c["walls"].append(float(t["wall_s"]))
        rows.append({"variant": v["label"], **c, "stable_lr_min": v.get("stable_lr_min"),
                     "stable_lr_max": v.get("stable_lr_max"), "width": v.get("width"),
                     "width_range": v.get("width_range")})  # fmt: skip
    return str(summary.get("study") or report_dir.name), rows


def _is_report_dir(path: str | None) -> bool:
    from bnexp import sweep_file

    p = Path(path) if path else None
    return bool(p and p.is_dir() and not sweep_file.exists(p) and (p / "summary.json").is_file()
                and (p / "trials.csv").is_file())  # fmt: skip


def render(name: str, rows: list[dict[str, Any]]) -> str:
    from bnexp.analysis.edges import width_txt

    total = {k: sum(r[k] for r in rows) for k in STATES}
    eta = eta_s(rows)
    head = f"study {name}: " + ", ".join(f"{v} {k}" for k, v in total.items())
    if eta:  # None: no trial finished yet; 0: nothing left to run
        walls = [w for r in rows for w in r["walls"]]
        head += f"; ETA {_duration(eta)} (median trial {statistics.median(walls):.0f} s)"
    lines = [head]
    for r in rows:
        lo, hi = r["stable_lr_min"], r["stable_lr_max"]
        left = r["waiting"] + r["running"]
        rng = f"[{lo:.2g}, {hi:.2g}], width {width_txt(r)} decades" if lo else ("none yet" if left else "none")
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
    ap = argparse.ArgumentParser(prog="python -m bnexp.status", description=__doc__.splitlines()[0])
    add_study_args(ap)
    a = ap.parse_args(argv)
    try:
        if _is_report_dir(a.sweep_dir) and not a.storage:
            name, rows = report_rows(Path(a.sweep_dir))
            print(render(name, rows) + f"\n  (a saved report: {a.sweep_dir}/report.md; the study is finished)")
            sys.exit(0)
        url, name = storage_and_study(a.sweep_dir, a.storage, a.study_name)
        from bnexp.sweep.storage import load_study

        study = load_study(_read_only_storage(url), name)
        print(render(name, status(study)))
        for line in doubtful(study):
            print(f"  {line}")
    except UsageError as e:
        fail(one_line(e))
    except Exception as e:  # e.g. the database is locked for longer than the timeout
        fail(redact(f"cannot read the study: {one_line(e)}"), code=1)
    sys.exit(0)


if __name__ == "__main__":
    main()
