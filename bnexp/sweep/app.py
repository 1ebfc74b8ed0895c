"""`python -m bnexp.sweep [sweep=SPEC] [overrides] [flags]`: the sweep command, a Hydra app over bnexp.run's config.

    python -m bnexp.sweep sweep=lr_stability                          # bn off/pre/post, 24 lrs in [1e-5, 1]
    python -m bnexp.sweep sweep=lr_stability model.depth=4 sweep.lr.points=12 logger=wandb
    python -m bnexp.sweep -m model.depth=4,8,12                       # one study per depth
    python -m bnexp.sweep --help | --cfg job | --dry-run | --create-only | --no-report | --report-only

Hydra composes `bnexp/conf/study.yaml` (bnexp.run's root config + the `sweep` group), so one override
grammar serves both commands and every override reaches every trial (a grid axis set on the command line
narrows the grid: bnexp.sweep.spec.resolve). The flags are bnexp's, translated into `sweep.action` /
`sweep.max_trials` overrides before Hydra parses the rest (they show in `--cfg job` and reach -m jobs).

One study, step by step: resolve the spec; check every variant's config; open (or create) the study; let a
Worker train waiting points until none is left; write the report under the study's recorded rule; log the
W&B sweep-summary run when `logger=wandb`.
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bnexp import names
from bnexp.cli import ConfigError, UsageError, fail, guard, one_line, redact
from bnexp.files import write_json_atomic
from bnexp.sweep.spec import StudyConfig, register_configs

log = logging.getLogger("bnexp.sweep")
register_configs()

FLAGS = {"--create-only": "create", "--report-only": "report", "--no-report": "work", "--dry-run": "plan"}
HYDRA_FLAGS = (  # Hydra's own command-line flags (and their short forms); any other -flag is a typo
    "-h", "--help", "--hydra-help", "--version", "-c", "--cfg", "--resolve", "-p", "--package", "-r", "--run",
    "-m", "--multirun", "-sc", "--shell-completion", "-cp", "--config-path", "-cn", "--config-name", "-cd",
    "--config-dir", "--experimental-rerun", "-i", "--info",
)  # fmt: skip
HYDRA_VALUE_FLAGS = ("-c", "--cfg", "-p", "--package", "-cp", "--config-path", "-cn", "--config-name", "-cd",
                     "--config-dir", "--experimental-rerun")  # fmt: skip
INFO_CHOICES = ("all", "config", "defaults", "defaults-tree", "plugins", "searchpath")


def translate_flags(argv: list[str]) -> list[str]:
    """bnexp's flags -> overrides (`--max-trials N` and `--max-trials=N` both work); Hydra's flags, with their
    values, moved before the overrides (its parser takes no flag after an override); any other flag refused."""
    flags, overrides, i = [], [], 0
    while i < len(argv):
        a = argv[i]
        name = a.split("=", 1)[0]
        if a in FLAGS:
            overrides.append(f"sweep.action={FLAGS[a]}")
        elif name == "--max-trials":
            if "=" in a:
                v = a.split("=", 1)[1]
            else:
                v = argv[i + 1] if i + 1 < len(argv) else ""
                i += 1
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"--max-trials={v}: give a positive whole number, e.g. --max-trials=10")
            overrides.append(f"sweep.max_trials={int(v)}")
        elif a.startswith("-"):
            if name not in HYDRA_FLAGS:
                raise ConfigError(
                    f"unknown flag {a!r}; bnexp's: {', '.join(FLAGS)}, --max-trials N; "
                    "Hydra's: --help, --cfg job, -m, ..."
                )
            flags.append(a)
            takes = name in HYDRA_VALUE_FLAGS or (
                name in ("-i", "--info") and i + 1 < len(argv) and argv[i + 1] in INFO_CHOICES
            )
            if takes and "=" not in a and i + 1 < len(argv):
                flags.append(argv[i + 1])
                i += 1
        else:
            overrides.append(a)
        i += 1
    return flags + overrides


def name_jobs_by_their_swept_keys(argv: list[str]) -> list[str]:
    """With -m, each job is its own study, named (and put in a subdir) by the keys that vary across jobs:
    `-m model.depth=4,8` gives studies `<name>-model.depth=4` and `<name>-model.depth=8`. Every key that does
    not vary is left out of Hydra's override_dirname (as exclude_keys), so the names stay short and stable."""
    if not any(a in ("-m", "--multirun") for a in argv):
        return argv
    from hydra.core.override_parser.overrides_parser import OverridesParser

    overrides = [a for a in argv if not a.startswith("-") and "=" in a and not a.startswith("hydra")]
    fixed = sorted(
        {o.key_or_group for o in OverridesParser.create().parse_overrides(overrides) if not o.is_sweep_override()}
    )
    return [*argv, f"hydra.job.config.override_dirname.exclude_keys=[{','.join(fixed)}]"] if fixed else argv


def _one_process_per_trial(cfg: DictConfig) -> None:
    # Lightning's DDP launcher would start each extra rank by re-running *this* command: a second sweep
    # worker popping trials, not a rank. Parallelism in a sweep is more workers, not bigger trials.
    t = cfg.trainer
    if str(t.strategy).startswith("ddp") and (str(t.devices) not in ("1", "[0]") or int(t.num_nodes) > 1):
        raise ConfigError(
            f"sweep trials train in one process; trainer.strategy={t.strategy} with devices={t.devices} "
            f"num_nodes={t.num_nodes} is for python -m bnexp.run. Start more sweep workers instead "
            "(scripts/slurm_sweep_workers.sh), with trainer.devices=1"
        )


def _default_run_cfg() -> DictConfig:
    """bnexp.run's config with no overrides (each trial records the overrides that rebuild it from this)."""
    from bnexp.conf import compose

    return compose()


class Progress:
    """Trials done / total and, per variant, trials done and the stable range so far under the study's rule."""

    def __init__(self, study: Any, sw: DictConfig, total: int) -> None:
        from tqdm import tqdm

        self.study, self.sw = study, sw
        self.bar = tqdm(total=total, desc=study.study_name, unit="trial", disable=not sw.progress, dynamic_ncols=True)
        self.update()

    def update(self) -> None:
        from bnexp.analysis.stability import analyse
        from bnexp.sweep.records import keys_of, rule_of, trial_records

        recs = trial_records(self.study)
        rule, quorum = rule_of(self.sw)
        self.bar.n = sum(r["state"] == "COMPLETE" for r in recs)
        parts = []
        for v in analyse(recs, rule, keys_of(self.sw), n_boot=0, seed_quorum=quorum):
            rng = f"[{v['stable_lr_min']:.0e},{v['stable_lr_max']:.0e}]" if v["stable_lr_min"] else "[]"
            parts.append(f"{v['label']} {v['n_trials']} {rng}")
        self.bar.set_postfix_str(" | ".join(parts)[:200])
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def _print_summary(summary: dict, out_dir: Path) -> None:
    print(f"study {summary.get('study')}: {summary.get('n_trials')} trials; report in {out_dir}/report.md")
    for v in summary.get("variants", []):
        lo, hi = v.get("stable_lr_min"), v.get("stable_lr_max")
        rng = f"[{lo:.2g}, {hi:.2g}]" if lo else "none"
        print(
            f"  {v['label']:<24} trials={v['n_trials']:>3} stable={v['n_stable']:>3} diverged={v['n_diverged']:>3} "
            f"stable lr {rng} = {v['stable_decades']:.2f} decades"
        )


def _wandb_summary(study: Any, out_dir: Path, summary: dict, base: DictConfig) -> None:
    if base.logger.name != "wandb":
        return
    from bnexp.sweep.records import recorded_spec, trial_records
    from bnexp.tracking.wandb_runs import log_sweep_summary

    try:
        log_sweep_summary(study.study_name, out_dir, trial_records(study), summary, recorded_spec(study), base)
    except Exception as e:  # the report on disk is the result; W&B is a view of it
        log.warning("W&B sweep summary not written: %s", one_line(e))


def run_study(cfg: DictConfig) -> dict[str, Any]:
    """One study from a composed study config (inside the Hydra job)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bnexp.sweep.records import build_report, rule_of
    from bnexp.sweep.spec import design, resolve, spec_hash, training_cfg, trial_cfg, variants
    from bnexp.sweep.storage import load_study, open_study, spec_record, storage_url

    hc = HydraConfig.get()
    out_dir = Path(hc.runtime.output_dir)
    task = list(hc.overrides.task)
    sw, notes = resolve(cfg, task)
    name = sw.study or sw.name
    if not sw.study and hc.mode == RunMode.MULTIRUN and hc.job.override_dirname:  # -m: one study per job
        name = f"{sw.name}-{names.safe(hc.job.override_dirname)}"
    for n in notes:
        log.info(n)
    base = training_cfg(cfg)
    _one_process_per_trial(base)
    for v in variants(sw):  # every variant composes before anything starts: a bad one fails now, not in trial 40
        trial_cfg(base, v, sw.lr.low, sw.seeds[0])
    pts = design(sw)
    if sw.action == "plan":
        for p in pts:
            print(p["key"])
        return {"design_size": len(pts)}

    url = storage_url(sw, out_dir)
    if sw.action == "report":
        study, created = load_study(url, name, sw), False  # a report never creates a study
    else:
        study, created = open_study(name, sw, spec_record(name, sw, base), spec_hash(sw, base), url)
    commands = [
        redact(" ".join(["python -m bnexp.sweep", *[o for o in task if not o.startswith("sweep.action=")]])),
        f"python -m bnexp.report {out_dir}",
    ]
    meta = out_dir / "sweep.json"
    if created or not meta.exists():  # one writer; the same content whoever writes it
        write_json_atomic(meta, {"study": name, "storage": redact(url), "design_size": len(pts)})
    if sw.action == "create":
        print(f"study {name!r} ready in {redact(url)}: {len(pts)} points")
        return {"design_size": len(pts)}

    rule, _ = rule_of(sw)
    if sw.action in ("all", "work"):
        from bnexp.core.config import check_hardware
        from bnexp.sweep import local
        from bnexp.sweep.worker import Worker, install_signal_handlers  # torch and Lightning: to train only

        check_hardware(base)  # a GPU asked for on a CPU node: one line now, not a failed trial per point
        n, threads, gpus = local.plan(sw, base, len(pts))
        if base.trainer.compile == "auto":  # decided once for all the workers: each compiles once, then reuses
            from optuna.trial import TrialState

            from bnexp.core.compiled import cluster_workers, sweep_mode

            waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
            workers = n * cluster_workers()
            t = threads if n > 1 else 0  # one worker: torch's own thread count (OMP_NUM_THREADS)
            mode = sweep_mode(base.trainer, waiting, workers, gpus, sw.population, sw.max_trials, t)
            base.trainer.compile = mode
            task = [*(o for o in task if o.split("=", 1)[0] != "trainer.compile"), f"trainer.compile={mode}"]
        worker = Worker(study, name, sw, base, out_dir, _default_run_cfg(), rule)
        install_signal_handlers(worker)
        others = local.start(n, threads, gpus, task, out_dir, name, url) if n > 1 else []
        if n > 1:
            local.pin_this_worker(threads)
        bar = Progress(study, sw, len(pts))
        try:
            counts = worker.loop(progress=bar, max_trials=sw.max_trials)
        finally:
            local.stop(others, worker.interrupted)
            bar.update()
            bar.close()
        log.info("worker done: %s", counts)
        if worker.interrupted:
            print("bnexp: sweep interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
        if sw.action == "work":
            print(f"worker done: {counts}; report: python -m bnexp.report {out_dir}")
            return {"counts": counts}
    summary = build_report(study, out_dir, commands)
    _wandb_summary(study, out_dir, summary, base)
    _print_summary(summary, out_dir)
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="study")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run_study(cfg)
    except UsageError as e:  # here, not in Hydra's job runner: its "Error executing job" line stays unsaid
        fail(one_line(e))


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("BNEXP_LOG", "INFO"), format="[%(asctime)s][%(name)s] %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)

    def go() -> Any:
        args = translate_flags(list(sys.argv[1:] if argv is None else argv))
        sys.argv = [sys.argv[0], *name_jobs_by_their_swept_keys(args)]
        return _hydra_main()

    guard(go, schema=StudyConfig, prog="python -m bnexp.sweep")
