"""A study's trials as records for bnexp.analysis, and the report built from them.

A finished trial keeps its bnexp.record.TrialRecord as Optuna user attrs (`trial_attrs`): its variant,
final metrics under their one names, divergence, learning curve and override list. `trial_records(study)`
reads them back as one row per trial. `build_report` judges by the rule the study was created with unless
the caller asks for another one (`bnexp.report --threshold ...`, a rerun with another `sweep.rule.*`); the
report then states both.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp.analysis.stability import StabilityRule
from bnexp.names import axis_name, variant_keys
from bnexp.record import TrialRecord
from bnexp.sweep import liveness
from bnexp.sweep.pruning import EARLY_ATTR, SILENT_ATTR, WINDOW_ATTR
from bnexp.sweep.spec import LR_PARAM, grid_axes


def trial_attrs(metrics: dict, cfg: DictConfig, overrides: list[str], grid_keys: list[str]) -> dict[str, Any]:
    """The user attrs a finished trial keeps: its TrialRecord (variant, final metrics, learning curve, how to
    rerun it) less what Optuna holds itself (number, state, params)."""
    axes = {k: str(OmegaConf.select(cfg, k)) for k in grid_keys if axis_name(k) == k}  # beyond bn/bias/depth
    rec = TrialRecord.from_metrics(metrics, axes=axes, overrides=" ".join(overrides))
    rec.bias, rec.depth = cfg.model.bias, int(cfg.model.depth)
    return rec.attrs()


def trial_records(study: Any) -> list[dict[str, Any]]:
    """One record (``TrialRecord.row()``) per finished or failed trial; skips bookkeeping-only trials
    (returned, duplicate)."""
    out = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        if "key" not in ua or ua.get("returned") or ua.get("duplicate") or t.state.name in ("WAITING", "RUNNING"):
            continue
        # the point's fixed params under whatever it had suggested: a worker killed between its suggest calls
        # leaves some params (the variant) without the others (seed, lr), which only the fixed params hold
        fp = {**(t.system_attrs.get("fixed_params") or {}), **t.params}
        # early_acc, silent_steps: the pruner's running record of each validation's better view (which
        # val_history holds in full) and of its first layer's silence (bnexp.sweep.pruning; metrics.json keeps it
        # where it pruned)
        row = {k: v for k, v in ua.items() if k not in ("attempt", "trial_dir", EARLY_ATTR, SILENT_ATTR, WINDOW_ATTR)}
        row.update(number=t.number, state=t.state.name, lr=fp.get(LR_PARAM, fp.get("lr")), seed=fp.get("seed"))
        out.append(TrialRecord.from_row(row).row())
    # a trial that died before it finished (kill -9, OOM, a stop) has no variant fields: take them from a
    # finished trial of its point, else from its point's key (its grid axes) and any finished trial (the rest)
    done = {r["key"]: r for r in out if r.get("state") == "COMPLETE" and r.get("bn") is not None}
    anyone = next(iter(done.values()), {})
    for r in out:
        if r.get("state") == "COMPLETE":
            continue
        source = {**anyone, **axes_of_key(r["key"]), **done.get(r["key"], {})}
        for k, v in source.items():
            if k in ("bn", "bias", "depth") or ("." in k and k != "overrides"):
                if r.get(k) is None:
                    r[k] = v
    return out


def axes_of_key(key: str) -> dict[str, Any]:
    """A point's grid axes from its key (`model.bn=pre model.bn_momentum=0.1 seed=0 lr=0.1`), under their
    record column names (bn, depth, model.bn_momentum) and as a finished trial records them (strings but depth)."""
    out: dict[str, Any] = {}
    for tok in key.split():
        k, _, v = tok.partition("=")
        if "." in k:
            name = axis_name(k)
            out[name] = int(v) if name == "depth" else v
    return out


def recorded_spec(study: Any) -> dict:
    """The spec a study was created with (its `spec` user attr): {'study', 'sweep', 'train'}."""
    rec = liveness.study_system_attrs(study).get("bnexp:spec") or study.user_attrs.get("spec") or {}
    if "sweep" not in rec:  # a study this version did not create: the defaults, under its own name
        rec = {"study": study.study_name, "sweep": {"name": study.study_name}, "train": {}}
    return rec


def rule_of(sweep: dict | DictConfig) -> StabilityRule:
    """The study's stability rule (its spec's `rule` node; a study recorded before a setting existed takes
    that setting's default)."""
    return StabilityRule.of(sweep.get("rule"), lambda k, v: f"sweep.rule.{k}={v}")


def keys_of(sweep: dict | DictConfig) -> tuple[str, ...]:
    grid = sweep.get("grid") or {"model": {"bn": []}}
    return variant_keys(list(grid_axes(grid)))


def build_report(study: Any, out_dir: Path, commands: list[str], rule: StabilityRule | None = None, **kw: Any) -> dict:
    """report.md, summary.json, trials.csv and the figures for `study`: judged by `rule` when given (a
    report-time choice, stated beside the rule the study was created with), else by its recorded rule."""
    from bnexp.analysis.report import write_report

    spec = recorded_spec(study)
    recorded = rule_of(spec["sweep"])
    return write_report(
        out_dir, study.study_name, trial_records(study), rule or recorded, commands, keys_of(spec["sweep"]),
        recorded_rule=recorded, **kw,
    )  # fmt: skip


def print_summary(summary: dict, out_dir: Path) -> None:
    """The lines a sweep and `bnexp.report` print: the rule judged by, then each variant's width (median
    [range] over seeds) and its stable lrs pooled over seeds."""
    from bnexp.analysis.edges import width_txt

    print(f"study {summary.get('study')}: {summary.get('n_trials')} trials; report in {out_dir}/report.md")
    if summary.get("rule_note"):
        print(f"  {summary['rule_note']}")
    for v in summary.get("variants", []):
        lo, hi = v.get("stable_lr_min"), v.get("stable_lr_max")
        rng = f"[{lo:.2g}, {hi:.2g}]" if lo else "none"
        n = v.get("n_holes") or 0
        holes = f" ({n} hole{'s' if n > 1 else ''} in the span: report.md names them)" if n else ""
        print(
            f"  {v['label']:<24} trials={v['n_trials']:>3} stable={v['n_stable']:>3} diverged={v['n_diverged']:>3} "
            f"width {width_txt(v)} decades, stable lr {rng}{holes}"
        )
