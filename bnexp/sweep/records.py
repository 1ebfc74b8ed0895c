"""A study's trials as records for bnexp.analysis, and the report built from them.

A finished trial keeps what the report needs as Optuna user attrs (`trial_attrs`): its variant, lr, seed,
final metrics, divergence, override list and trial dir. `trial_records(study)` reads them back as one dict per
trial, and `build_report` writes the report under the study's *recorded* spec, so the sweep command, the
report command and the W&B summary judge "stable" by the one rule the study was created with.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp.analysis.stability import StabilityRule
from bnexp.names import axis_name, variant_keys
from bnexp.sweep.spec import grid_axes

METRIC_ATTRS = {  # trial record column <- metrics.json key
    "val_acc": "val/acc",
    "val_acc_best": "val/acc_best",
    "val_acc_batchstats": "val/acc_batchstats",
    "val_loss": "val/loss",
    "test_acc": "test/acc",
    "test_acc_single": "test/acc_single",
    "step": "step",
    "diverged_step": "diverged_step",  # first step with a non-finite loss; None when the run did not diverge
    "wall_s": "wall_s",
}


def trial_attrs(metrics: dict, cfg: DictConfig, overrides: list[str], grid_keys: list[str]) -> dict[str, Any]:
    """The user attrs a finished trial keeps: its variant, lr, seed, final metrics and how to rerun it."""
    rec: dict[str, Any] = {
        "bn": cfg.model.bn,
        "bias": cfg.model.bias,
        "depth": int(cfg.model.depth),
        "lr": float(cfg.optim.lr),
        "seed": int(cfg.seed),
        "diverged": bool(metrics.get("diverged")),
    }
    rec.update({col: metrics.get(key) for col, key in METRIC_ATTRS.items()})
    rec["overrides"] = " ".join(overrides)
    rec["val_history"] = metrics.get("val_history") or []  # the learning curve, both ways: the report plots it
    for k in grid_keys:
        if axis_name(k) == k:  # an axis beyond bn/bias/depth keeps its config path as column name
            rec[k] = str(OmegaConf.select(cfg, k))
    return rec


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One dict per finished or failed trial; skips bookkeeping-only trials (returned, duplicate)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        if "key" not in ua or ua.get("returned") or ua.get("duplicate") or t.state.name in ("WAITING", "RUNNING"):
            continue
        rec = {"number": t.number, "state": t.state.name, "key": ua["key"]}
        fp = t.params or t.system_attrs.get("fixed_params", {})
        rec.update({"lr": fp.get("lr"), "seed": fp.get("seed")})
        rec.update({k: v for k, v in ua.items() if k not in ("key", "attempt", "trial_dir")})
        out.append(rec)
    # a trial that died before it finished (kill -9, OOM) has no variant fields: take them from its point
    by_key = {r["key"]: r for r in out if r.get("bn") is not None}
    for r in out:
        if r.get("bn") is None and r["key"] in by_key:
            for k, v in by_key[r["key"]].items():
                if k in ("bn", "bias", "depth") or ("." in k and k != "overrides"):
                    if r.get(k) is None:
                        r[k] = v
    return out


def recorded_spec(study: Any) -> dict:
    """The spec a study was created with (its `spec` user attr): {'study', 'sweep', 'train'}."""
    rec = study.user_attrs.get("spec") or {}
    if "sweep" not in rec:  # a study this version did not create: the defaults, under its own name
        rec = {"study": study.study_name, "sweep": {"name": study.study_name}, "train": {}}
    return rec


def rule_of(sweep: dict | DictConfig) -> tuple[StabilityRule, float]:
    """The study's stability rule and seed quorum (the spec's `rule` node; a study recorded before `last_k`
    existed judges its final validation alone)."""
    r = dict(sweep.get("rule") or {})
    quorum = float(r.pop("seed_quorum", 0.5))
    return StabilityRule(**{k: v for k, v in r.items() if k in ("threshold", "mode", "epsilon", "last_k")}), quorum


def keys_of(sweep: dict | DictConfig) -> tuple[str, ...]:
    grid = sweep.get("grid") or {"model": {"bn": []}}
    return variant_keys(list(grid_axes(grid)))


def build_report(study: Any, out_dir: Path, commands: list[str]) -> dict:
    """report.md, summary.json, trials.csv and the plots for `study`, under its recorded spec."""
    from bnexp.analysis.report import write_report

    spec = recorded_spec(study)
    rule, quorum = rule_of(spec["sweep"])
    return write_report(
        out_dir, study.study_name, trial_records(study), rule, commands, keys_of(spec["sweep"]), seed_quorum=quorum
    )
