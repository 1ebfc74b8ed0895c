"""The `sweep-summary` W&B run: one per study, beside its trials (its group), showing what report.md shows.

Tables (trials, lr points, variants with widths judged both ways, per-seed widths, learning curves), native
charts over them, each report figure with its report.md caption, and the report files as an artifact. Every
row is a dict keyed by the column's name (bnexp.record's metric names), so no column is found by position.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnexp import names
from bnexp.analysis.stability import StabilityRule, history, is_stable, variant_key, variant_label
from bnexp.record import DIVERGED_STEP, STATISTICS, VAL_ACC, VAL_ACC_BATCH
from bnexp.tracking.wandb_runs import close_run, start_run

SUMMARY_JOB_TYPE = "sweep-summary"


def _artifact_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "study"


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def log_sweep_summary(
    study: str, out_dir: str | os.PathLike, trials: list[dict], summary: dict, spec: dict, cfg: DictConfig,
    group: str | None = None,
) -> None:  # fmt: skip
    """One `sweep-summary` run in the study's W&B `group` (bnexp.names.study_group): tables, charts, figures.

    `trials` are the study's records, `summary` what bnexp.analysis.report.write_report returned (its files and
    figures in out_dir, the rule it judged by), `spec` the study spec, `cfg` the trials' base config (logger
    project/entity/mode). Does nothing unless `cfg.logger.name == "wandb"`.
    """
    if cfg.logger.name != "wandb":
        return
    out = Path(out_dir)
    keys = tuple(summary.get("variant_keys") or names.BASE_AXES)
    rule = StabilityRule.of(summary.get("rule"))
    config = {"study": study, "n_records": len(trials), "variant_keys": list(keys), "spec": spec}
    config["rule"] = {**rule.settings(), "describe": rule.describe()}
    if summary.get("recorded_rule"):
        config["recorded_rule"] = summary["recorded_rule"]
    run = start_run(
        cfg,
        out,
        name=f"{study}-summary",
        job_type=SUMMARY_JOB_TYPE,
        group=group or study,
        config=config,
        tags=["sweep-summary", study],
        # one summary run per study, whoever writes it (every worker that finishes, each report rebuild)
        run_id=names.run_id(study, "sweep-summary", json.dumps(spec, sort_keys=True, default=str)),
    )
    try:
        _log_contents(run, out, study, trials, summary, rule, keys)
    except BaseException:
        close_run(run, 1)
        raise
    close_run(run, 0)


def _trial_rows(trials: list[dict], summary: dict, rule: StabilityRule, keys: tuple[str, ...]) -> tuple[list, list]:
    """(one row per trial, one row per trial and validation), each a dict keyed by its column."""
    bests = {variant_key(v, keys): v.get("variant_best") for v in summary.get("variants", [])}
    rows, curves = [], []
    for r in trials:
        vk = variant_key(r, keys)
        label, lr = variant_label(vk, keys), _num(r.get("lr"))
        log_lr = math.log10(lr) if lr and lr > 0 else None
        diverged = str(r.get("diverged")).lower() in ("true", "1")
        rows.append(
            {"number": r.get("number"), "variant": label, "bn": str(r.get("bn")), "bias": str(r.get("bias")),
             "depth": r.get("depth"), "lr": lr, "log10_lr": log_lr, "seed": r.get("seed"),
             "judged": _num(r.get(rule.metric)), "diverged": diverged,
             "stable": bool(is_stable(r, rule, bests.get(vk))), VAL_ACC: _num(r.get(VAL_ACC)),
             VAL_ACC_BATCH: _num(r.get(VAL_ACC_BATCH)), DIVERGED_STEP: _num(r.get(DIVERGED_STEP)),
             "state": str(r.get("state", "COMPLETE"))}
        )  # fmt: skip
        batch = dict(history(r, VAL_ACC_BATCH))
        for step, acc in history(r, VAL_ACC):
            curves.append(
                {"number": r.get("number"), "variant": label, "lr": lr, "log10_lr": log_lr, "seed": r.get("seed"),
                 "step": step, VAL_ACC: acc, VAL_ACC_BATCH: batch.get(step), "diverged": diverged}
            )  # fmt: skip
    rows.sort(key=lambda row: (row["variant"], row["lr"] or 0.0, row["seed"] or 0))
    return rows, curves


def _variant_rows(summary: dict, keys: tuple[str, ...]) -> tuple[list, list, list]:
    """(lr points, variants with widths judged both ways, per-seed widths), dicts keyed by column."""
    points, variants, seeds = [], [], []
    for v in summary.get("variants", []):
        label = v.get("label") or variant_label(variant_key(v, keys), keys)
        for p in v.get("points", []):
            lr = _num(p.get("lr"))
            if lr is not None and lr > 0:
                points.append({"variant": label, "lr": lr, "log10_lr": math.log10(lr), "mean": _num(p.get("mean")),
                               "frac_stable": p.get("frac_stable"), "n_seeds": p.get("n_seeds"),
                               "n_diverged": p.get("n_diverged"), "stable": p.get("stable")})  # fmt: skip
        rng = v.get("width_range") or [None, None]  # the seeds' lowest and highest width
        row = {"variant": label, "width": _num(v.get("width")), "width_lo": _num(rng[0]), "width_hi": _num(rng[1]),
               "stable_span": float(v.get("stable_span") or 0.0),
               "n_holes": v.get("n_holes"), "span_with_holes": _num(v.get("span_with_holes")),
               "n_trials": v.get("n_trials"), "n_stable": v.get("n_stable"), "n_diverged": v.get("n_diverged"),
               "stable_lr_min": _num(v.get("stable_lr_min")), "stable_lr_max": _num(v.get("stable_lr_max")),
               "best_lr": _num(v.get("best_lr")), "best_value": _num(v.get("best_value")),
               "statistics_differ": bool(v.get("statistics_differ"))}  # fmt: skip
        for stats, view in (v.get("by_statistics") or {}).items():
            recorded = bool(view.get("n_finite"))
            row[f"width_{stats}"] = _num(view.get("width")) if recorded else None
            row[f"stable_span_{stats}"] = float(view.get("stable_span") or 0.0) if recorded else None
            row[f"stable_lr_min_{stats}"] = _num(view.get("stable_lr_min"))
            row[f"stable_lr_max_{stats}"] = _num(view.get("stable_lr_max"))
            seeds += [
                {"variant": label, "statistics": stats, "seed": sd.get("seed"),
                 "width": _num(sd.get("width")), "stable_span": float(sd.get("stable_span") or 0.0),
                 "stable_lr_min": _num(sd.get("stable_lr_min")), "stable_lr_max": _num(sd.get("stable_lr_max"))}
                for sd in (view.get("per_seed") or []) if recorded
            ]  # fmt: skip
        variants.append(row)
    points.sort(key=lambda row: (row["variant"], row["lr"]))
    return points, variants, seeds


def _table(rows: list[dict], columns: list[str] | None = None) -> Any:
    import wandb

    cols = columns or (list(rows[0]) if rows else ["variant"])
    return wandb.Table(columns=cols, data=[[r.get(c) for c in cols] for r in rows], allow_mixed_types=True)


def _charts(study: str, tabs: dict[str, Any]) -> dict[str, Any]:
    import wandb

    pop, bat = STATISTICS["population"], STATISTICS["batch"]
    # fmt: off
    charts = {  # key: (kind, table, x or label column, y or value column, title)
        "val_acc_vs_log_lr": ("line", "points", "log10_lr", "mean", "the judged value (mean over seeds) vs log10 lr"),
        "width_by_variant": ("bar", "variants", "variant", "width",
                             "width (decades, median over seeds): log10 of high / low edge"),
        "width_batchstats_by_variant": ("bar", "variants", "variant", "width_batch",
                                        "width (decades, median over seeds) by batch statistics"),
        "diverged": ("bar", "variants", "variant", "n_diverged", "diverged trials"),
        "width_per_seed": ("scatter", "per_seed", "seed", "width", "width of each seed (decades)"),
        "divergence_step_vs_log_lr": ("scatter", "diverged", "log10_lr", DIVERGED_STEP,
                                      "step of the first non-finite loss vs log10 lr"),
        "stats_lag": ("scatter", "lag", bat, pop, f"final {pop} (y) vs {bat} (x)"),
    }
    # fmt: on
    out = {}
    for key, (kind, tab, x, y, title) in charts.items():
        if kind == "line":
            out[f"charts/{key}"] = wandb.plot.line(tabs[tab], x, y, stroke="variant", title=f"{study}: {title}")
        else:
            out[f"charts/{key}"] = getattr(wandb.plot, kind)(tabs[tab], x, y, title=f"{study}: {title}")
    return out


def _curve_charts(variants: list[dict], curves: list[dict]) -> dict[str, Any]:
    """One line per lr and seed, per variant and statistics."""
    import wandb

    out = {}
    for v in variants:
        label = v["variant"]
        for stats, col in (("population", VAL_ACC), ("batch", VAL_ACC_BATCH)):  # recal: a final value, no curve
            lines: dict[str, tuple[list, list]] = {}
            for row in curves:
                if row["variant"] == label and row["step"] is not None and row[col] is not None:
                    xs, ys = lines.setdefault(f"lr{row['lr']:.2e}-s{row['seed']}", ([], []))
                    xs.append(row["step"])
                    ys.append(row[col])
            if lines:
                out[f"charts/curves/{label}/{stats}"] = wandb.plot.line_series(
                    [xs for xs, _ in lines.values()], [ys for _, ys in lines.values()], keys=list(lines),
                    title=f"{label}: {col} by {stats} statistics, one line per lr and seed", xname="step",
                )  # fmt: skip
    return out


def _figures(out: Path, summary: dict) -> dict[str, Any]:
    import wandb

    payload = {}
    for fig in summary.get("figures") or []:
        f = fig["file"]
        if (out / f).is_file():  # stability.png stays `stability` (the dashboard's media key)
            stem = f.rsplit(".", 1)[0]
            key = f"curves/{stem[len('curves-') :]}" if stem.startswith("curves-") else stem
            if f.endswith(".png"):
                payload[key] = wandb.Image(str(out / f), caption=fig.get("caption"))
    return payload


def _log_contents(
    run: Any, out: Path, study: str, trials: list[dict], summary: dict, rule: StabilityRule, keys: tuple[str, ...]
) -> None:
    import wandb

    rows, curves = _trial_rows(trials, summary, rule, keys)
    points, variants, seeds = _variant_rows(summary, keys)
    tabs = {
        "trials": _table(rows),
        "points": _table(points),
        "variants": _table(variants),
        "per_seed": _table(seeds),
        "curves": _table(curves),
        "diverged": _table(
            [r for r in rows if r["diverged"] and r[DIVERGED_STEP] is not None], list(rows[0]) if rows else None
        ),
        "lag": _table([r for r in rows if None not in (r[VAL_ACC], r[VAL_ACC_BATCH])], list(rows[0]) if rows else None),
    }
    payload = {k: tabs[k] for k in ("trials", "points", "variants", "per_seed", "curves")}
    payload.update(_charts(study, tabs))
    payload.update(_curve_charts(variants, curves))
    payload.update(_figures(out, summary))
    run.log(payload)

    s: dict[str, Any] = {k: summary.get(k) for k in ("n_trials", "n_failed", "n_records") if k in summary}
    s["n_diverged"] = sum(r["diverged"] for r in rows)
    s["n_stable"] = sum(r["stable"] for r in rows)
    s["rule"] = rule.settings()
    for v in variants:
        label = v["variant"]
        s[f"width/{label}"] = v["width"]
        s[f"stable_span/{label}"] = v["stable_span"]
        s[f"n_holes/{label}"] = v["n_holes"]
        for stats in STATISTICS:
            s[f"width_{stats}/{label}"] = v.get(f"width_{stats}")
        s[f"n_diverged/{label}"] = v["n_diverged"]
        s[f"best_value/{label}"] = v["best_value"]
    for sd in seeds:
        s[f"width_seed{sd['seed']}_{sd['statistics']}/{sd['variant']}"] = sd["width"]
    run.summary.update(s)

    art = wandb.Artifact(_artifact_name(f"{study}-report"), type="sweep-report", metadata={"study": study})
    for f in summary.get("files") or ["report.md", "summary.json", "trials.csv"]:
        if (out / f).is_file():
            art.add_file(str(out / f), name=f)
    run.log_artifact(art)
