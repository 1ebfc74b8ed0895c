"""Weights & Biases: one run per `train(cfg)` (every `bnexp.run`, every sweep trial), one `sweep-summary` run per sweep.

Each run carries the full resolved config as flat keys (`model.bn`, `optim.lr`, ...) plus `variant`, a readable
name (`pre-auto-d19-lr2e-03-s0`, bnexp.names), `group` = the sweep's study (or `single`), `job_type` = run /
trial / sweep-summary and the variant as tags. Its summary holds the final metrics, `diverged`, `stable` (under
the sweep's rule for a trial, the default rule for a single run: bnexp.analysis.stability.judge) and
`steps_per_s`.

Mode (`logger.mode`):
  auto       WANDB_MODE when set; else online when W&B finds credentials without asking (WANDB_API_KEY,
             ~/.netrc from `wandb login`, an identity token file), else offline. Never a prompt, also on a tty.
  online     forced; without credentials it is a config error naming `wandb login` (not a prompt).
  offline    runs land in <run dir>/wandb/offline-run-*/; upload them later (wandb sync takes many paths):
                 wandb sync <run dir>/wandb/offline-run-*                      # one run
                 wandb sync outputs/runs/*/*/wandb/offline-run-*               # every bnexp.run
                 wandb sync $(find outputs/sweeps/<study> -name 'offline-run-*')  # a sweep: trials + summary
             (`wandb sync --dry-run PATHS` shows what would be uploaded)
  disabled   W&B calls become no-ops.
In auto mode an online start that fails (no network, server down) falls back to offline after
`logger.init_timeout` seconds, with a warning.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp import names
from bnexp.analysis.stability import StabilityRule, judge, record_of
from bnexp.cli import ConfigError, redact

log = logging.getLogger(__name__)

DEFAULT_PROJECT = "bnexp"
SUMMARY_JOB_TYPE = "sweep-summary"


# ---- names, config ------------------------------------------------------------------------------
def variant_name(cfg: DictConfig) -> str:
    """e.g. `pre-auto-d19` (bnexp.names: the label a report gives the same variant)."""
    return names.variant_label(names.cfg_values(cfg))


def run_name(cfg: DictConfig) -> str:
    """`logger.run_name`, else e.g. `pre-auto-d19-lr2e-03-s0`."""
    if cfg.logger.get("run_name"):
        return str(cfg.logger.run_name)
    return names.run_name(names.cfg_values(cfg), float(cfg.optim.lr), int(cfg.seed))


def run_tags(cfg: DictConfig) -> list[str]:
    m = cfg.model
    tags = [variant_name(cfg), f"bn={m.bn}", f"bias={m.bias}", f"depth={m.depth}", f"optim={cfg.optim.name}"]
    return tags + [str(t) for t in (cfg.logger.get("tags") or []) if str(t) not in tags]


# ---- mode -----------------------------------------------------------------------------------------
def _netrc_has_key() -> bool:
    import netrc
    from urllib.parse import urlparse

    host = urlparse(os.environ.get("WANDB_BASE_URL") or "https://api.wandb.ai").hostname
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc")
    try:
        return path.is_file() and netrc.netrc(str(path)).authenticators(host) is not None
    except (OSError, netrc.NetrcParseError):
        return False


def has_credentials() -> bool:
    """Whether W&B finds credentials without asking (env, settings files, ~/.netrc): `wandb.login(prompt=False,
    verify=False)`, W&B's public call that never prompts and makes no request. Older wandb without `prompt`:
    the documented places."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    import wandb

    try:
        return bool(wandb.login(prompt=False, verify=False))
    except TypeError:  # wandb < 0.22: no `prompt` argument
        return _netrc_has_key()
    except Exception as e:  # a malformed key: say so, log offline rather than fail
        log.warning("W&B credentials unusable (%s); logging offline", " ".join(str(e).split()))
        return False


_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}


def resolve_mode(cfg: DictConfig) -> str:
    """online | offline | disabled for this run; never prompts.

    Precedence: `logger.mode` when not auto, then WANDB_MODE (WANDB_DISABLED), then whether W&B finds
    credentials. A forced online mode without credentials is a ConfigError naming `wandb login`.
    """
    mode = str(cfg.logger.mode)
    if mode == "auto":
        env = os.environ.get("WANDB_MODE", "").strip().lower()
        if os.environ.get("WANDB_DISABLED", "").strip().lower() in ("true", "1"):
            env = "disabled"
        if env:
            if env not in _ENV_MODES:
                raise ConfigError(f"WANDB_MODE={env!r} is not a W&B mode; use online, offline or disabled")
            mode = _ENV_MODES[env]
        else:
            return "online" if has_credentials() else "offline"
    if mode == "online" and not has_credentials():
        raise ConfigError(
            "W&B online mode needs a login: run `wandb login` (or set WANDB_API_KEY), "
            "or use logger.mode=offline (sync later with `wandb sync`)"
        )
    return mode


# ---- run start / finish ---------------------------------------------------------------------------
def _settings(cfg: DictConfig, mode: str) -> Any:
    import wandb

    # console output is captured (W&B's default); system metrics follow the user's own W&B settings
    return wandb.Settings(
        init_timeout=float(cfg.logger.get("init_timeout", 60.0)),
        quiet=True,  # no history sparklines at exit; we print where the run is
        save_code=False,
    )


def start_run(
    cfg: DictConfig,
    out_dir: Path,
    *,
    name: str,
    job_type: str,
    group: str,
    config: dict,
    tags: list[str],
    run_id: str | None = None,
    reinit: str = "finish_previous",
) -> Any:
    """wandb.init in the resolved mode under out_dir; in auto mode a failed online start falls back offline.
    W&B records the command line: it sees it with any URL password masked (bnexp.cli.redact).

    `run_id` (bnexp.names.run_id): a deterministic id, so a retried trial or a rerun into the same run dir
    resumes its run (`resume="allow"`; offline, both run dirs carry the id and `wandb sync` joins them).
    `reinit="create_new"` leaves the process's other runs open (a population's members log side by side)."""
    import wandb

    mode = resolve_mode(cfg)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    kwargs = dict(
        project=cfg.logger.get("project") or os.environ.get("WANDB_PROJECT") or DEFAULT_PROJECT,
        entity=cfg.logger.get("entity") or None,  # None: WANDB_ENTITY, else the user's default
        name=name,
        group=group,
        job_type=job_type,
        tags=tags,
        config=config,
        dir=str(out_dir),
        reinit=reinit,
        id=run_id,
        resume="allow" if run_id else None,
    )
    try:
        with _argv_redacted():
            run = wandb.init(mode=mode, settings=_settings(cfg, mode), **kwargs)
    except Exception as e:
        if mode != "online" or str(cfg.logger.mode) != "auto":
            raise
        log.warning("W&B online start failed (%s); logging offline instead", " ".join(str(e).split())[:300])
        with _argv_redacted():
            run = wandb.init(mode="offline", settings=_settings(cfg, "offline"), **kwargs)
    log.info("W&B %s run %s (%s/%s): %s", run.settings.mode, name, group, job_type, _where(run) or "-")
    return run


@contextlib.contextmanager
def _argv_redacted() -> Iterator[None]:
    saved = sys.argv
    sys.argv = [redact(a) for a in saved]
    try:
        yield
    finally:
        sys.argv = saved


def _where(run: Any) -> str | None:
    """The run's URL online; its offline-run-* directory offline."""
    try:
        if run.settings.mode == "offline":
            return str(Path(run.dir).parent)
        return getattr(run, "url", None)
    except Exception:
        return None


def _close(run: Any, exit_code: int) -> None:
    where, offline = _where(run), run.settings.mode == "offline"
    run.finish(exit_code=exit_code)
    if offline and where:
        log.info("W&B offline run saved in %s; upload it with: wandb sync %s", where, where)


def _define_axes(run: Any) -> None:
    # as Lightning's WandbLogger does for the runs it creates: every metric against trainer/global_step
    if getattr(run, "define_metric", None) is not None:
        run.define_metric("trainer/global_step")
        run.define_metric("*", step_metric="trainer/global_step", step_sync=True)


def _logger_class() -> type:
    from lightning.pytorch.loggers import WandbLogger

    class BNExpWandbLogger(WandbLogger):
        """WandbLogger on a run we started; the module's hparams are already in the config under their paths."""

        def log_hyperparams(self, params: Any) -> None:
            pass

    return BNExpWandbLogger


def run_config(cfg: DictConfig) -> dict[str, Any]:
    """The run's W&B config: the resolved config nested as Hydra composes it (W&B's Hydra convention; the UI
    shows `model.bn`), plus the variant and run name."""
    return {**OmegaConf.to_container(cfg, resolve=True), "variant": variant_name(cfg), "run_name": run_name(cfg)}


def run_group(cfg: DictConfig) -> str:
    """`logger.group` (a sweep sets its study), else one group per `bnexp.run -m` multirun, else `single`."""
    if cfg.logger.get("group"):
        return str(cfg.logger.group)
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode

        if HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN:
            return names.safe("multirun-" + "_".join(Path(HydraConfig.get().sweep.dir).parts[-2:]))
    except (ImportError, ValueError, AttributeError):
        pass
    return "single"


def start_training_run(cfg: DictConfig, out_dir: Path, reinit: str = "finish_previous") -> Any:
    """The W&B run of one training (`bnexp.run`, a sweep trial, a population member): name, group, job type,
    tags, nested config; its id is `logger.run_id` (a sweep's per-point id) or derived from the run dir, so a
    rerun into the same dir resumes it. `reinit`: as start_run's."""
    rid = cfg.logger.get("run_id") or names.run_id(Path(out_dir).name, str(Path(out_dir).resolve()))
    run = start_run(
        cfg,
        out_dir,
        name=run_name(cfg),
        job_type=str(cfg.logger.get("job_type") or "run"),
        group=run_group(cfg),
        config=run_config(cfg),
        tags=run_tags(cfg),
        run_id=rid,
        reinit=reinit,
    )
    _define_axes(run)
    return run


def build_wandb_logger(cfg: DictConfig, out_dir: Path, reinit: str = "finish_previous") -> Any:
    """A Lightning WandbLogger on the run of this training; the run starts now (rank 0 only). `reinit`: as
    start_run's."""
    from lightning.pytorch.utilities.rank_zero import rank_zero_only

    cls = _logger_class()
    if getattr(rank_zero_only, "rank", 0) != 0:  # DDP workers: Lightning hands them a dummy experiment
        return cls(name=run_name(cfg), save_dir=str(out_dir), project=cfg.logger.get("project") or DEFAULT_PROJECT)
    run = start_training_run(cfg, out_dir, reinit)
    return cls(experiment=run, name=run.name, save_dir=str(out_dir), project=getattr(run, "project", None))


def _scalar(v: Any) -> bool:
    return v is None or isinstance(v, (bool, int, float, str))


def final_summary(metrics: dict[str, Any], rule: StabilityRule | None = None) -> dict[str, Any]:
    """The run summary for train()'s metrics: final metrics, `diverged`, `stable` under `rule` (a sweep's rule;
    bnexp.run's default rule for a single run) and that rule in words. In relative mode a single trial
    cannot be judged alone: `stable` is left out and the sweep-summary run has the verdict."""
    rule = rule or StabilityRule()
    summary = {k: v for k, v in metrics.items() if _scalar(v)}  # val_history stays in metrics.json
    verdict = judge(record_of(metrics), rule)
    if verdict is not None:
        summary["stable"] = bool(verdict)
    summary["stable_rule"] = rule.describe()
    summary["diverged_count"] = int(bool(metrics.get("diverged")))  # 0/1: sums to a count per variant
    return summary


def finish_wandb(logger: Any, metrics: dict[str, Any], rule: StabilityRule | None = None) -> None:
    """Final metrics, `diverged`, `stable`, `steps_per_s` into the run summary; close the run."""
    run = getattr(logger, "_experiment", None)
    if run is None:
        return
    _finish(run, metrics, rule)


def _finish(run: Any, metrics: dict[str, Any], rule: StabilityRule | None) -> None:
    if metrics.get("provenance"):  # where and with what it ran: known once the device is
        run.config.update({"provenance": metrics["provenance"]}, allow_val_change=True)
    run.summary.update(final_summary(metrics, rule))
    _close(run, 0)


def fail_wandb(logger: Any) -> None:
    """Close the run of a training that raised, marked failed (exit code 1)."""
    run = getattr(logger, "_experiment", None)
    if run is not None and hasattr(run, "finish"):
        _close(run, 1)


# ---- sweep summary --------------------------------------------------------------------------------
def _artifact_name(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", s).strip("-") or "study"


def log_sweep_summary(
    study: str, out_dir: str | os.PathLike, trials: list[dict], summary: dict, spec: dict, cfg: DictConfig
) -> None:
    """One `sweep-summary` run beside the trials (group = study): tables, charts, report files as an artifact.

    `trials` are the sweep's trial records, `summary` what bnexp.analysis.report.write_report returned (its
    files and figures in out_dir), `spec` the study spec, `cfg` the trials' base config (logger
    project/entity/mode). The run shows what report.md shows: widths by population and by batch statistics,
    per-seed widths, learning curves, divergence steps, and each figure with its report.md caption.
    Does nothing unless `cfg.logger.name == "wandb"`.
    """
    if cfg.logger.name != "wandb":
        return
    out = Path(out_dir)
    keys = tuple(summary.get("variant_keys") or ("bn", "bias", "depth"))
    rule = StabilityRule(**summary["rule"]) if summary.get("rule") else StabilityRule()

    config: dict[str, Any] = {"study": study, "n_records": len(trials), "variant_keys": list(keys), "spec": spec}
    config["rule"] = {**(summary.get("rule") or {}), "seed_quorum": summary.get("seed_quorum")}
    config["rule"]["describe"] = rule.describe()
    run = start_run(
        cfg,
        out,
        name=f"{study}-summary",
        job_type=SUMMARY_JOB_TYPE,
        group=study,
        config=config,
        tags=["sweep-summary", study],
        # one summary run per study, whoever writes it (every worker that finishes, each report rebuild)
        run_id=names.run_id(study, "sweep-summary", json.dumps(spec, sort_keys=True, default=str)),
    )
    try:
        _log_summary_contents(run, out, study, trials, summary, rule, keys)
    except BaseException:
        _close(run, 1)
        raise
    _close(run, 0)


def _num(v: Any) -> float | None:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _log_summary_contents(
    run: Any, out: Path, study: str, trials: list[dict], summary: dict, rule: Any, keys: tuple[str, ...]
) -> None:
    """The sweep-summary run's tables, native charts and the report's figures (the same PNGs as report.md,
    with the same captions): trials, lr points, variants with widths judged both ways, per-seed widths,
    learning curves."""
    import wandb

    from bnexp.analysis.stability import STATISTICS, history, is_stable, variant_key, variant_label

    # relative-mode stability needs each variant's best; summary["variants"] has it
    bests = {variant_key(v, keys): v.get("variant_best") for v in summary.get("variants", [])}
    rows, curve_rows = [], []
    for r in trials:
        vk = variant_key(r, keys)
        label = variant_label(vk, keys)
        lr = _num(r.get("lr"))
        log_lr = math.log10(lr) if lr and lr > 0 else None
        diverged = str(r.get("diverged")).lower() in ("true", "1")
        rows.append(
            [
                r.get("number"),
                label,
                str(r.get("bn")),
                str(r.get("bias")),
                r.get("depth"),
                lr,
                log_lr,
                r.get("seed"),
                _num(r.get(rule.metric)),
                diverged,
                bool(is_stable(r, rule, bests.get(vk))),
                _num(r.get(STATISTICS["population"])),
                _num(r.get(STATISTICS["batch"])),
                _num(r.get("diverged_step")),
                str(r.get("state", "COMPLETE")),
            ]
        )
        pop, bat = history(r, STATISTICS["population"]), dict(history(r, STATISTICS["batch"]))
        for step, acc in pop:
            curve_rows.append([r.get("number"), label, lr, log_lr, r.get("seed"), step, acc, bat.get(step), diverged])
    rows.sort(key=lambda row: (row[1], row[5] or 0.0, row[7] or 0))
    cols = ["number", "variant", "bn", "bias", "depth", "lr", "log10_lr", "seed", "val_acc", "diverged", "stable"]
    cols += ["val_acc_population", "val_acc_batchstats", "diverged_step", "state"]
    trials_tab = wandb.Table(columns=cols, data=rows, allow_mixed_types=True)
    ccols = ["number", "variant", "lr", "log10_lr", "seed", "step", "val_acc", "val_acc_batchstats", "diverged"]
    curves_tab = wandb.Table(columns=ccols, data=curve_rows, allow_mixed_types=True)
    div_tab = wandb.Table(
        columns=cols, data=[row for row in rows if row[9] and row[13] is not None], allow_mixed_types=True
    )
    lag_tab = wandb.Table(
        columns=cols, data=[row for row in rows if None not in (row[11], row[12])], allow_mixed_types=True
    )

    points, vrows, seed_rows = [], [], []
    for v in summary.get("variants", []):
        label = v.get("label") or variant_label(variant_key(v, keys), keys)
        for p in v.get("points", []):
            lr = _num(p.get("lr"))
            if lr is None or lr <= 0:
                continue
            mean = _num(p.get("mean_val_acc"))
            points.append([label, lr, math.log10(lr), mean, p.get("n_seeds"), p.get("n_diverged"), p.get("stable")])
        views = v.get("by_statistics") or {}
        both = []
        for stats in ("population", "batch"):
            view = views.get(stats) or {}
            recorded = bool(view.get("n_finite"))
            both += [
                float(view.get("stable_decades") or 0.0) if recorded else None,
                _num(view.get("stable_lr_min")),
                _num(view.get("stable_lr_max")),
            ]
            for sd in view.get("per_seed") or []:
                if recorded:
                    seed_rows.append(
                        [label, stats, sd.get("seed"), float(sd.get("stable_decades") or 0.0),
                         _num(sd.get("stable_lr_min")), _num(sd.get("stable_lr_max"))]
                    )  # fmt: skip
        ci = v.get("stable_decades_ci") or [None, None]
        vrows.append(
            [
                label,
                float(v.get("stable_decades") or 0.0),
                float(v.get("longest_run_decades") or 0.0),
                v.get("n_trials"),
                v.get("n_stable"),
                v.get("n_diverged"),
                _num(v.get("stable_lr_min")),
                _num(v.get("stable_lr_max")),
                _num(v.get("best_lr")),
                _num(v.get("best_val_acc")),
                _num(ci[0]),
                _num(ci[1]),
                *both,
                bool(v.get("statistics_differ")),
            ]
        )
    points.sort(key=lambda row: (row[0], row[1]))
    points_tab = wandb.Table(
        columns=["variant", "lr", "log10_lr", "mean_val_acc", "n_seeds", "n_diverged", "stable"],
        data=points,
        allow_mixed_types=True,
    )
    vcols = ["variant", "stable_decades", "longest_run_decades", "n_trials", "n_stable", "n_diverged"]
    vcols += [
        "stable_lr_min",
        "stable_lr_max",
        "best_lr",
        "best_val_acc",
        "stable_decades_ci_lo",
        "stable_decades_ci_hi",
    ]
    vcols += ["stable_decades_population", "stable_lr_min_population", "stable_lr_max_population"]
    vcols += ["stable_decades_batchstats", "stable_lr_min_batchstats", "stable_lr_max_batchstats", "statistics_differ"]
    variants_tab = wandb.Table(columns=vcols, data=vrows, allow_mixed_types=True)
    seeds_tab = wandb.Table(
        columns=["variant", "statistics", "seed", "stable_decades", "stable_lr_min", "stable_lr_max"],
        data=seed_rows,
        allow_mixed_types=True,
    )
    batch_tab = wandb.Table(
        columns=["variant", "stable_decades_batchstats"],
        data=[[row[0], row[15]] for row in vrows if row[15] is not None],
        allow_mixed_types=True,
    )

    payload: dict[str, Any] = {
        "trials": trials_tab,
        "points": points_tab,
        "variants": variants_tab,
        "per_seed": seeds_tab,
        "curves": curves_tab,
        "charts/val_acc_vs_log_lr": wandb.plot.line(
            points_tab, "log10_lr", "mean_val_acc", stroke="variant", title=f"{study}: final val/acc vs log10 lr"
        ),
    }
    # fmt: off
    charts = {  # key: (kind, table, x or label column, y or value column, title)
        "stable_width": ("bar", variants_tab, "variant", "stable_decades", "stable lr width (decades), rule's metric"),
        "stable_width_batchstats": ("bar", batch_tab, "variant", "stable_decades_batchstats",
                                    "stable lr width (decades) by batch statistics"),
        "diverged": ("bar", variants_tab, "variant", "n_diverged", "diverged trials"),
        "stable_width_per_seed": ("scatter", seeds_tab, "seed", "stable_decades", "stable lr width of each seed alone"),
        "divergence_step_vs_log_lr": ("scatter", div_tab, "log10_lr", "diverged_step",
                                      "step of the first non-finite loss vs log10 lr"),
        "stats_lag": ("scatter", lag_tab, "val_acc_batchstats", "val_acc_population",
                      "final val/acc, population (y) vs batch statistics (x)"),
    }
    # fmt: on
    for key, (kind, tab, x, y, title) in charts.items():
        payload[f"charts/{key}"] = getattr(wandb.plot, kind)(tab, x, y, title=f"{study}: {title}")
    for v in summary.get("variants", []):
        label = v.get("label")
        mine = [row for row in curve_rows if row[1] == label]
        for stats, col in (("population", 6), ("batch", 7)):
            lines: dict[str, tuple[list, list]] = {}
            for row in mine:
                if row[5] is not None and row[col] is not None:
                    xs, ys = lines.setdefault(f"lr{row[2]:.2e}-s{row[4]}", ([], []))
                    xs.append(row[5])
                    ys.append(row[col])
            if lines:
                payload[f"charts/curves/{label}/{stats}"] = wandb.plot.line_series(
                    [xs for xs, _ in lines.values()],
                    [ys for _, ys in lines.values()],
                    keys=list(lines),
                    title=f"{label}: val acc by {stats} statistics, one line per lr and seed",
                    xname="step",
                )
    for fig in summary.get("figures") or []:
        f = fig["file"]
        if (out / f).is_file():  # stability.png stays `stability` (the dashboard's media key)
            key = f"curves/{f[len('curves-') : -4]}" if f.startswith("curves-") else f.removesuffix(".png")
            payload[key] = wandb.Image(str(out / f), caption=fig.get("caption"))
    if "stability" not in payload and (out / "stability.png").is_file():
        payload["stability"] = wandb.Image(str(out / "stability.png"))
    run.log(payload)

    s: dict[str, Any] = {k: summary.get(k) for k in ("n_trials", "n_failed", "n_records") if k in summary}
    s["n_diverged"] = sum(1 for row in rows if row[9])
    s["n_stable"] = sum(1 for row in rows if row[10])
    for row in vrows:
        s[f"stable_decades/{row[0]}"] = row[1]
        s[f"stable_decades_population/{row[0]}"] = row[12]
        s[f"stable_decades_batchstats/{row[0]}"] = row[15]
        s[f"n_diverged/{row[0]}"] = row[5]
        s[f"best_val_acc/{row[0]}"] = row[9]
    for label, stats, seed, decades, *_ in seed_rows:
        s[f"stable_decades_seed{seed}_{stats}/{label}"] = decades
    run.summary.update(s)

    art = wandb.Artifact(_artifact_name(f"{study}-report"), type="sweep-report", metadata={"study": study})
    for f in summary.get("files") or ["stability.png", "report.md", "summary.json", "trials.csv"]:
        if (out / f).is_file():
            art.add_file(str(out / f), name=f)
    run.log_artifact(art)
