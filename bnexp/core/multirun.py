"""A Hydra callback: at the end of a `-m` multirun, one table of every job's result in the multirun dir.

    python -m bnexp.run -m model.bn=off,pre,post        -> outputs/multirun/<date>/<time>/summary.{csv,md}
    python -m bnexp.sweep -m model.depth=4,8,12         -> <sweep.out_dir>/summary.{csv,md}: widths per study

It reads what the jobs wrote (metrics.json of a run, summary.json of a study) rather than their return values,
so it works whatever launcher ran the jobs (local processes, submitit on SLURM). Registered in
bnexp/conf/config.yaml under `hydra.callbacks`.
"""

from __future__ import annotations

import csv
import io
import json
import logging
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from bnexp.record import DIVERGED, STEP, TEST_ACC, TEST_ACC_SINGLE, VAL_ACC, VAL_ACC_BATCH, WALL_S

log = logging.getLogger("bnexp")

RUN_COLUMNS = ["job", "overrides", "bn", "bias", "depth", "lr", "seed", DIVERGED, STEP, VAL_ACC, VAL_ACC_BATCH,
               TEST_ACC, TEST_ACC_SINGLE, WALL_S]  # fmt: skip
STUDY_COLUMNS = ["job", "overrides", "study", "variant", "n_trials", "n_stable", "n_diverged", "stable_lr_min",
                 "stable_lr_max", "width", "stable_span"]  # fmt: skip


def _overrides(job_dir: Path) -> str:
    f = job_dir / ".hydra" / "overrides.yaml"
    if f.is_file():
        from omegaconf import OmegaConf

        return " ".join(OmegaConf.load(f))
    return job_dir.name


def collect(sweep_dir: Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(columns, rows): one row per run job (metrics.json), or per variant of each study job (summary.json)."""
    rows: list[dict[str, Any]] = []
    studies = False
    for job in sorted((p for p in sweep_dir.iterdir() if p.is_dir() and not p.name.startswith(".")), key=_order):
        if (job / "metrics.json").is_file():
            m = json.loads((job / "metrics.json").read_text())
            rows.append({"job": job.name, "overrides": _overrides(job), **{k: m.get(k) for k in RUN_COLUMNS[2:]}})
        elif (job / "summary.json").is_file():
            studies = True
            s = json.loads((job / "summary.json").read_text())
            for v in s.get("variants", []):
                row = {"job": job.name, "overrides": job.name, "study": s.get("study"), "variant": v.get("label")}
                rows.append(row | {k: v.get(k) for k in STUDY_COLUMNS[4:]})
    return (STUDY_COLUMNS if studies else RUN_COLUMNS), rows


def _order(p: Path) -> tuple:
    head = p.name.split("_", 1)[0]
    return (0, int(head), p.name) if head.isdigit() else (1, 0, p.name)


def _cell(v: Any) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def write_summary(sweep_dir: Path) -> list[dict[str, Any]]:
    from bnexp.files import write_text_atomic

    columns, rows = collect(sweep_dir)
    if not rows:
        return rows
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
    w.writeheader()
    w.writerows(rows)
    write_text_atomic(sweep_dir / "summary.csv", buf.getvalue())
    md = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    md += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    write_text_atomic(sweep_dir / "summary.md", f"# Multirun {sweep_dir}\n\n" + "\n".join(md) + "\n")
    return rows


class MultirunSummary(Callback):
    """Hydra callback: `summary.csv` and `summary.md` in the multirun dir when the multirun ends."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        try:
            rows = write_summary(sweep_dir)
        except Exception as e:  # the jobs' own files are the results; the table is a view of them
            log.warning("multirun summary not written: %s", " ".join(str(e).split()))
            return
        if rows:
            print(f"multirun summary ({len(rows)} rows): {sweep_dir / 'summary.md'}", flush=True)
