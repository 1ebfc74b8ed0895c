"""`python -m bnexp.dashboard --entity E --project P [--study-name S]`: a W&B Report comparing variants.

Built with wandb-workspaces from the runs bnexp logs (see bnexp/tracking/wandb_runs.py for names and keys):

  1. Stability across learning rates (the sweep-summary runs of the study): final val/acc against log10 lr
     per variant, stable-width bars (decades), diverged trials per variant, the stability.png plot.
  2. Trials (job_type=trial): final val/acc against lr, diverged and stable counts per variant,
     training-loss curves grouped by variant, steps per second.
  3. Inside the network (runs with `logger.diagnostics_every` / `logger.landscape_every` on): per-layer
     pre-activation std and mean before and after BN, per-layer gradient norms, and the loss-landscape probe.

`--dry-run` prints the report's sections and panels without saving (no login needed). Saving needs a
W&B login; without one the command exits with status 2 and a line naming `wandb login`.
"""

from __future__ import annotations

import argparse
import os
from typing import Any

from bnexp.cli import fail
from bnexp.record import (
    GLOBAL_STEP,
    LANDSCAPE_BETA_SMOOTHNESS,
    LANDSCAPE_GRAD_CHANGE_MAX,
    LANDSCAPE_LOSS_RANGE,
    STEPS_PER_S,
    TRAIN_LOSS,
    VAL_ACC,
)

SUMMARY_TABLE_CHARTS = (
    # (title, vega preset, table logged by the sweep-summary run, field mapping)
    (
        "final val/acc vs log10 lr, per variant",
        "wandb/line/v0",
        "points",
        {"x": "log10_lr", "y": "mean", "stroke": "variant"},
    ),
    (
        "width per variant (decades: median over seeds of log10 high / low edge)",
        "wandb/bar/v0",
        "variants",
        {"label": "variant", "value": "width"},
    ),
    ("diverged trials per variant", "wandb/bar/v0", "variants", {"label": "variant", "value": "n_diverged"}),
)


DRY_RUN_ENTITY = "<your-entity>"  # what --dry-run shows without --entity / $WANDB_ENTITY


def _filters(job_types: list[str], study: str | None) -> list:
    from wandb_workspaces import expr

    f = [expr.Metric("JobType") == job_types[0]] if len(job_types) == 1 else [expr.Metric("JobType").isin(job_types)]
    if study:
        f.append(expr.Metric("Group") == study)
    return f


def _summary_panels() -> list:
    import wandb_workspaces.reports.v2 as wr

    panels = [
        wr.CustomChart(
            query={"summaryTable": {"tableKey": table}},
            chart_name=preset,
            chart_fields=fields,
            chart_strings={"title": title},
        )
        for title, preset, table, fields in SUMMARY_TABLE_CHARTS
    ]
    return [*panels, wr.MediaBrowser(title="stability.png", media_keys=["stability"])]


def _trial_panels(variant: Any) -> list:
    import wandb_workspaces.reports.v2 as wr

    return [
        wr.ScatterPlot(
            title="final val/acc vs learning rate (every trial)",
            x=wr.Config("optim.lr"),
            y=wr.SummaryMetric(VAL_ACC),
            log_x=True,
        ),
        wr.BarPlot(
            title="diverged count per variant (trial runs)",
            metrics=[wr.SummaryMetric("diverged_count")],
            groupby=variant,
            groupby_aggfunc="sum",
        ),
        wr.BarPlot(
            title="best final val/acc per variant",
            metrics=[wr.SummaryMetric(VAL_ACC)],
            groupby=variant,
            groupby_aggfunc="max",
        ),
        wr.LinePlot(
            title="training loss by variant (mean, min-max over trials)",
            x=GLOBAL_STEP,
            y=[TRAIN_LOSS],
            groupby=variant,
            groupby_aggfunc="mean",
            groupby_rangefunc="minmax",
            log_y=True,
        ),
        wr.LinePlot(title=f"{VAL_ACC} by variant", x=GLOBAL_STEP, y=[VAL_ACC], groupby=variant, groupby_aggfunc="mean"),
        wr.LinePlot(title="steps per second", x=GLOBAL_STEP, y=[STEPS_PER_S], groupby=variant),
    ]


def _diag_panels(variant: Any) -> list:
    import wandb_workspaces.reports.v2 as wr

    def layers(title: str, regex: str) -> Any:
        return wr.LinePlot(title=title, x=GLOBAL_STEP, metric_regex=regex, groupby=variant, groupby_aggfunc="mean")

    return [
        layers("pre-activation std per layer (z = conv(x))", r"act/z_std/.*"),
        layers("pre-activation mean per layer", r"act/z_mean/.*"),
        layers("BN output std per layer", r"act/bn_out_std/.*"),
        layers("BN output mean per layer", r"act/bn_out_mean/.*"),
        layers("gradient norm per layer", r"grad/.*"),
        layers("loss variation along the gradient (Santurkar et al.)", LANDSCAPE_LOSS_RANGE),
        layers("gradient predictiveness: max ||g(w - eta g) - g||", LANDSCAPE_GRAD_CHANGE_MAX),
        layers("effective beta-smoothness", LANDSCAPE_BETA_SMOOTHNESS),
    ]


def build_report(entity: str, project: str, study: str | None = None) -> Any:
    """The report (not saved): three panel grids over the study's summary runs, trials and diagnostics.
    `study` is the study's W&B group (bnexp.names.study_group: its name and spec hash), so one study is shown."""
    import wandb_workspaces.reports.v2 as wr

    what = f"study `{study}`" if study else "all studies"
    variant = wr.Config("variant")

    def runset(name: str, job_types: list[str]) -> Any:
        return wr.Runset(entity=entity, project=project, name=name, filters=_filters(job_types, study))

    blocks = [
        wr.H1(f"Batch norm and the stable learning-rate range: {what}"),
        wr.P(
            "Each trial trains the deep MNIST conv net at one learning rate; a trial is stable when it did not"
            " diverge and its final val/acc clears the study's threshold. The stable width is log10(max/min) of"
            " the unbroken run of stable learning rates around the best one, per variant (bn-bias-depth)."
        ),
        wr.H2("Stability across learning rates"),
        wr.PanelGrid(runsets=[runset("sweep summaries", ["sweep-summary"])], panels=_summary_panels()),
        wr.H2("Trials"),
        wr.PanelGrid(runsets=[runset("trials", ["trial"])], panels=_trial_panels(variant)),
        wr.H2("Inside the network"),
        wr.P(
            "Per-layer statistics (logger.diagnostics_every) show Ioffe & Szegedy's internal covariate shift:"
            " without BN the pre-activation distribution of deep layers drifts and grows as training goes;"
            " the landscape probe (logger.landscape_every) measures how smooth the loss is along the gradient."
        ),
        wr.PanelGrid(runsets=[runset("runs and trials", ["run", "trial"])], panels=_diag_panels(variant)),
    ]
    return wr.Report(
        entity=entity,
        project=project,
        title=f"BN stability: {study or 'all studies'}",
        description="Stable learning-rate range with batch norm off / pre / post (bnexp).",
        blocks=blocks,
    )


def describe(report: Any) -> list[dict[str, Any]]:
    """One entry per panel: section, panel type, title, and what it plots (for --dry-run and tests)."""
    import wandb_workspaces.reports.v2 as wr

    out, section = [], ""
    for b in report.blocks:
        if isinstance(b, (wr.H1, wr.H2, wr.H3)):
            section = b.text if isinstance(b.text, str) else str(b.text)
        if isinstance(b, wr.PanelGrid):
            for p in b.panels:
                title = getattr(p, "title", None) or (getattr(p, "chart_strings", None) or {}).get("title")
                out.append(
                    {
                        "section": section,
                        "type": type(p).__name__,
                        "title": title,
                        "runsets": [r.name for r in b.runsets],
                        "plots": _plots(p),
                    }
                )
    return out


def _plots(p: Any) -> list[str]:
    def name(m: Any) -> str:
        return getattr(m, "name", m) if not isinstance(m, str) else m

    got: list[str] = []
    for attr in ("x", "y", "metrics", "metric_regex", "media_keys"):
        v = getattr(p, attr, None)
        if v:
            got += [name(m) for m in (v if isinstance(v, list) else [v])]
    if getattr(p, "query", None):
        got += [f"table:{p.query['summaryTable']['tableKey']}", *map(str, (p.chart_fields or {}).values())]
    return [str(g) for g in got]


def _group(study: str | None) -> str | None:
    """A study's W&B group: from its sweep dir's sweep.json, or given as is. Two studies of one name (other
    out dirs or specs) have two groups, so one study is shown, never a mix."""
    from bnexp import sweep_file
    from bnexp.cli import ConfigError

    if study and sweep_file.exists(study):
        try:
            group = sweep_file.read(study).wandb_group
        except ConfigError:
            group = None
        if group is None:
            fail(f"{sweep_file.path(study)} does not name the study's W&B group; give --study-name NAME-SPECHASH")
        return group
    return study


def main(argv: list[str] | None = None) -> None:
    """CLI: build the report; save it (needs `wandb login`) or, with --dry-run, print its panels."""
    p = argparse.ArgumentParser(prog="python -m bnexp.dashboard", description=__doc__.splitlines()[0])
    p.add_argument(
        "--entity",
        default=os.environ.get("WANDB_ENTITY"),
        help="W&B entity (default: $WANDB_ENTITY); needed to save, not for --dry-run",
    )
    p.add_argument("--project", default=os.environ.get("WANDB_PROJECT") or "bnexp", help="W&B project")
    p.add_argument(
        "--study-name",
        default=None,
        help="only one study's runs: its sweep dir, or its W&B group (name-spechash, as sweep.json's wandb_group "
        "says); default: all",
    )
    p.add_argument("--dry-run", action="store_true", help="print the report's panels; do not save")
    a = p.parse_args(argv)
    if not a.entity and not a.dry_run:
        fail("--entity is required to save the report (or set WANDB_ENTITY); --dry-run needs none")
    entity = a.entity or DRY_RUN_ENTITY  # --dry-run only prints the panels: no entity is looked up
    try:
        report = build_report(entity, a.project, _group(a.study_name))
    except ImportError as e:
        fail(f"the dashboard needs wandb-workspaces: pip install 'bnexp[dashboard]' ({e})")
    if a.dry_run:
        print(f"report {report.title!r} for {entity}/{a.project}")
        for d in describe(report):
            print(f"  [{d['section']}] {d['type']}: {d['title']} <- {', '.join(d['plots'])}")
        return
    from bnexp.tracking.wandb_mode import has_credentials

    if not has_credentials():
        fail("saving a W&B report needs a login: run `wandb login` (or set WANDB_API_KEY); --dry-run needs none")
    try:
        report.save()
    except Exception as e:  # network, permissions: one line, not a traceback
        fail(f"could not save the report to {a.entity}/{a.project}: {' '.join(str(e).split())[:300]}", code=1)
    print(report.url)
