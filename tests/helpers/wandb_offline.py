"""Read offline W&B runs back from their .wandb transaction logs, without W&B's servers (tests only)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from bnexp.tracking.wandb_record import CutRecord, read_records


def _records(path: Path):
    # bnexp's own reader of the framing; a record still being written ends the list
    try:
        yield from read_records(path)
    except CutRecord:
        return


def _json(s: str) -> Any:
    try:
        return json.loads(s)
    except ValueError:
        return s


def read_offline_run(path: str | os.PathLike, wait_s: float = 0.0) -> dict[str, Any]:
    """Read an offline run (its `offline-run-*` dir or `.wandb` file): id, name, group, job_type, tags, config,
    summary, history keys, history rows, artifacts, captured console lines, system-metric records, exit code.

    W&B writes the file in the background and may still be writing just after `run.finish()` returns;
    `wait_s` > 0 polls until the run's exit record is there (or the time is up).
    """
    p = Path(path)
    f = p if p.suffix == ".wandb" else next(p.glob("*.wandb"))
    deadline = time.monotonic() + wait_s
    while True:
        run = _read_run(f)
        if "exit_code" in run or time.monotonic() >= deadline:
            return run
        time.sleep(0.1)


def _put(d: dict, u: Any) -> None:
    # an item's key is either `key` or a `nested_key` path (media, tables: {"_type": ..., "path": ...})
    path = [u.key] if u.key else list(u.nested_key)
    for k in path[:-1]:
        d = d.setdefault(k, {})
    d[path[-1]] = _json(u.value_json)


def _read_run(f: Path) -> dict[str, Any]:
    run: dict[str, Any] = {"config": {}, "summary": {}, "history": [], "history_keys": set(), "artifacts": []}
    run.update(console=[], n_stats=0)
    for r in _records(f):
        kind = r.WhichOneof("record_type")
        if kind == "run":
            run.update(name=r.run.display_name, group=r.run.run_group, job_type=r.run.job_type, project=r.run.project)
            run["id"] = r.run.run_id
            run["tags"] = list(r.run.tags)
            for u in r.run.config.update:
                _put(run["config"], u)
        elif kind == "config":
            for u in r.config.update:
                _put(run["config"], u)
        elif kind == "history":
            row: dict[str, Any] = {}
            for u in r.history.item:
                _put(row, u)
            run["history"].append(row)
            run["history_keys"].update(row)
        elif kind == "summary":
            for u in r.summary.update:
                _put(run["summary"], u)
        elif kind == "artifact":
            files = [e.path for e in r.artifact.manifest.contents]
            run["artifacts"].append({"name": r.artifact.name, "type": r.artifact.type, "files": files})
        elif kind in ("output_raw", "output"):  # captured console output
            run["console"].append(getattr(r, kind).line)
        elif kind == "stats":  # system metrics
            run["n_stats"] += 1
        elif kind == "exit":
            run["exit_code"] = r.exit.exit_code
    run["config"].pop("_wandb", None)
    return run


def offline_runs(root: str | os.PathLike) -> list[Path]:
    """The offline run dirs under root (recursively; not the `latest-run` links), by start time."""
    return sorted((p for p in Path(root).rglob("offline-run-*") if p.is_dir()), key=lambda p: p.name)
