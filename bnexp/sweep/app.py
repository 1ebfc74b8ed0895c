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

import json
import logging
import os
import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig, OmegaConf

from bnexp import names, sweep_file
from bnexp.cli import (
    ConfigError,
    UsageError,
    disk_full,
    fail,
    guard,
    hide_storage_password,
    mask_url,
    one_line,
    redact,
    stopping,
)
from bnexp.core.alloc import keep_memory
from bnexp.sweep.spec import (
    StudyConfig,
    edge_trials_estimate,
    register_configs,
    scans_outward,
    variants,
    warm_seeds,
    worker_points,
)

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
    # devices > 1 with strategy auto: Lightning picks DDP all the same (on CPUs too)
    d = t.devices
    many = (isinstance(d, int) and (d > 1 or d == -1)) or (
        isinstance(d, str) and (d.strip() == "-1" or "," in d.strip(",") or (d.strip().isdigit() and int(d) > 1))
    )
    if many or (OmegaConf.is_list(d) and len(d) > 1) or int(t.num_nodes) > 1:
        raise ConfigError(
            f"sweep trials train on one device each; trainer.devices={d} num_nodes={t.num_nodes} would start DDP "
            "ranks that re-run this command; set trainer.devices=1 and sweep.jobs=N for N workers (a device each)"
        )


def _default_run_cfg() -> DictConfig:
    """bnexp.run's config with no overrides (each trial records the overrides that rebuild it from this),
    composed in this running Hydra app, whose search path holds bnexp/conf (bnexp.conf.compose is for callers
    outside one; importing it here would make conf and sweep import each other)."""
    from hydra import compose

    return compose(config_name="config")


class Progress:
    """Trials done / total and, per variant, trials done and the stable range so far under the study's rule."""

    def __init__(self, study: Any, sw: DictConfig, total: int, rule: Any) -> None:
        from tqdm import tqdm

        self.study, self.sw, self.rule = study, sw, rule
        self.bar = tqdm(total=total, desc=study.study_name, unit="trial", disable=not sw.progress, dynamic_ncols=True)
        self.update()

    def update(self) -> None:
        from bnexp.analysis.stability import analyse
        from bnexp.sweep.records import keys_of, trial_records

        recs = trial_records(self.study)
        self.bar.n = sum(r["state"] == "COMPLETE" for r in recs)
        parts = []
        for v in analyse(recs, self.rule, keys_of(self.sw)):
            rng = f"[{v['stable_lr_min']:.0e},{v['stable_lr_max']:.0e}]" if v["stable_lr_min"] else "[]"
            parts.append(f"{v['label']} {v['n_trials']} {rng}")
        self.bar.set_postfix_str(" | ".join(parts)[:200])
        self.bar.refresh()

    def close(self) -> None:
        self.bar.close()


def wandb_summary(study: Any, out_dir: Path, summary: dict, base: DictConfig) -> None:
    """The study's sweep-summary W&B run, in its group; a failure is a warning (the report on disk is the result)."""
    if base.logger.name != "wandb":
        return
    from bnexp.sweep import liveness
    from bnexp.sweep.records import recorded_spec, trial_records
    from bnexp.tracking.sweep_summary import log_sweep_summary

    group = names.study_group(study.study_name, liveness.study_user_attrs(study).get("spec_hash", ""))
    try:
        log_sweep_summary(
            study.study_name, out_dir, trial_records(study), summary, recorded_spec(study), base, group=group
        )
    except Exception as e:  # the report on disk is the result; W&B is a view of it
        log.warning("W&B sweep summary not written: %s", one_line(e))


def _study_name(sw: DictConfig, hc: Any) -> str:
    from hydra.types import RunMode

    name = sw.study or sw.name
    if hc.mode == RunMode.MULTIRUN and hc.job.override_dirname:  # -m: one study per job, sweep.study given or not
        name = f"{name}-{names.safe(hc.job.override_dirname)}"
    return name


def _judged_by(study: Any, sw: DictConfig) -> Any:
    """The rule this command judges by: `sweep.rule` as given. A rule other than the one the study was created
    with is a report-time choice, said in one line (and in report.md, summary.json and W&B)."""
    from bnexp.analysis.stability import StabilityRule
    from bnexp.sweep.records import recorded_spec, rule_of

    rule = StabilityRule.of(sw.rule, lambda k, v: f"sweep.rule.{k}={v}")
    note = rule.differences(rule_of(recorded_spec(study)["sweep"]))
    if note:
        print(f"bnexp: {note} (python -m bnexp.report --threshold ... re-judges without a rerun)", file=sys.stderr)
    return rule


def _compile_mode(study: Any, sw: DictConfig, base: DictConfig, n: int, threads: int, gpus: Any) -> str:
    """`trainer.compile=auto` for this sweep's workers (bnexp.core.compiled.sweep_mode): compile where the steps
    one process is expected to train pay for the compile."""
    from optuna.trial import TrialState

    from bnexp.core.compiled import cluster_workers, sweep_mode

    waiting = len(study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))
    if sw.lr.search == "edges":  # an edge search enqueues as it goes: its estimate, less what is done
        done = len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))
        waiting = max(waiting, edge_trials_estimate(sw)["typical"] - done)
    t = threads if n > 1 else 0  # one worker: torch's own thread count (OMP_NUM_THREADS)
    return sweep_mode(
        base.trainer, waiting, n * cluster_workers(), gpus, sw.population, sw.max_trials, t, len(variants(sw))
    )


def _work(study: Any, name: str, sw: DictConfig, base: DictConfig, out_dir: Path, task: list, url: str,
          n_points: int, rule: Any) -> dict:  # fmt: skip
    """This worker (and `sweep.jobs` local ones) trains waiting points until none is left."""
    from bnexp.core.config import check_hardware
    from bnexp.sweep import local
    from bnexp.sweep.worker import Worker, install_signal_handlers  # torch and Lightning: to train only

    check_hardware(base)  # a GPU asked for on a CPU node: one line now, not a failed trial per point
    n, threads, gpus = local.plan(sw, base, worker_points(sw, n_points))
    if base.trainer.compile == "auto":  # decided once for all the workers: each compiles once, then reuses
        mode = _compile_mode(study, sw, base, n, threads, gpus)
        base.trainer.compile = mode
        task = [*(o for o in task if o.split("=", 1)[0] != "trainer.compile"), f"trainer.compile={mode}"]
    worker = Worker(study, name, sw, base, out_dir, _default_run_cfg(), rule)
    install_signal_handlers(worker)
    others = local.start(n, threads, gpus, task, out_dir, name, url) if n > 1 else []
    if n > 1:
        local.pin_this_worker(threads)
    # an edge search plans as it goes: its bar counts towards the estimate --dry-run gives
    bar = Progress(study, sw, edge_trials_estimate(sw)["typical"] if sw.lr.search == "edges" else n_points, rule)
    try:
        counts = worker.loop(progress=bar, max_trials=sw.max_trials)
    finally:
        local.stop(others, worker.interrupted)
        bar.update()
        bar.close()
    log.info("worker done: %s", counts)
    if worker.interrupted:
        stopping()  # the exit stays 130 whatever signal comes now
        print("bnexp: sweep interrupted; rerun the same command to resume", file=sys.stderr)
        sys.exit(130)
    return counts


_DRY_RUN_OUT = "BNEXP_DRY_RUN_OUT"  # --dry-run: the run dir the user asked for (Hydra's goes to a temp dir)


def _plan_header(sw: DictConfig, base: DictConfig, name: str, pts: list, url: str, out_dir: Path) -> None:
    """--dry-run's header (stderr; stdout keeps the design, one point a line): the study's size, where it
    would live, and its cost where the storage already holds a finished trial's wall time. Reads, never writes:
    a storage that does not exist yet is not opened (SQLite and journal files would be created)."""
    from bnexp.cli import check_writable_dir
    from bnexp.sweep import local

    check_writable_dir(out_dir, "sweep.out_dir")  # as the real command would refuse it, before it says anything
    n_var = len({json.dumps(p["variant"], sort_keys=True) for p in pts})
    seeds = list(sw.seeds)
    workers, _, _ = local.plan(sw, base, worker_points(sw, len(pts)))
    n_trials = len(pts)
    lines = [
        f"study {name}: {n_var} variant(s) x {len(seeds)} seed(s) {seeds} x {sw.lr.points} lr(s) "
        f"[{sw.lr.low:g}, {sw.lr.high:g}] = {len(pts)} trials of {base.trainer.max_steps} steps",
        f"storage: {redact(url)}",
        f"out dir: {out_dir}",
        f"workers here: {workers} (sweep.jobs={sw.jobs})",
    ]
    if sw.lr.search == "edges":
        e = edge_trials_estimate(sw)
        n_trials = e["typical"]
        planned = "the first seed's coarse grid" if warm_seeds(sw) else "every seed's coarse grid"
        if scans_outward(sw):
            planned = f"the middle of {planned}; the rest of it is trained outward from there, sweep.lr.coarse=outward"
        lines[0] = lines[0].replace(f"= {len(pts)} trials", f"= {n_var * len(seeds) * sw.lr.points} coarse points")
        lines.insert(1, f"edge search: the design holds {len(pts)} points ({planned}); with the bisections and "
                        f"the later seeds' searches, an estimate of {e['typical']} trials in all ({e['low']} where "
                        f"nothing is stable, up to {e['high']} where every seed brackets two edges): what it finds "
                        "decides")  # fmt: skip
    done, walls = _prior_walls(url, name)
    if walls:
        mean = sum(walls) / len(walls)
        left = max(n_trials - done, 0)
        lines.append(
            f"estimated cost: {left} trials left x {mean:.0f} s (mean wall time of {len(walls)} finished) = "
            f"{left * mean / 3600:.2f} trial-hours, about {left * mean / workers / 3600:.2f} h with {workers} worker(s)"
        )
    else:
        lines.append("estimated cost: unknown (no finished trial in this storage yet)")
    print("\n".join(lines), file=sys.stderr, flush=True)


def _prior_walls(url: str, name: str) -> tuple[int, list[float]]:
    """(finished trials, their wall times) of the study in `url`, if the storage and study already exist. A
    storage that exists but does not open (a refused password, an unreachable server, a damaged file) is the
    error the real command would stop on: one line, exit 2, not "cost unknown"."""
    import optuna

    from bnexp.sweep.records import trial_records
    from bnexp.sweep.storage import make_storage

    for scheme in ("sqlite:///", "journal:///"):
        if url.startswith(scheme) and not Path(url[len(scheme) :]).exists():  # a dir in the way: refused below
            return 0, []
    storage = make_storage(url)
    try:
        study = optuna.load_study(study_name=name, storage=storage)
    except KeyError:  # no such study yet: the header says the cost is unknown
        return 0, []
    recs = [r for r in trial_records(study) if r["state"] == "COMPLETE"]
    return len(recs), [float(r["wall_s"]) for r in recs if isinstance(r.get("wall_s"), (int, float))]


def run_study(cfg: DictConfig) -> dict[str, Any]:
    """One study from a composed study config (inside the Hydra job)."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from bnexp.sweep import liveness
    from bnexp.sweep.records import build_report, print_summary
    from bnexp.sweep.spec import design, resolve, spec_hash, training_cfg, trial_cfg
    from bnexp.sweep.storage import (
        check_study_name,
        load_study,
        open_study,
        recorded_storage,
        spec_record,
        storage_url,
    )

    hc = HydraConfig.get()
    out_dir, task = Path(hc.runtime.output_dir), list(hc.overrides.task)
    sw, notes = resolve(cfg, task)
    check_study_name(sw.study or sw.name, "sweep.study" if sw.study else "sweep.name")  # before any dir is used
    name = _study_name(sw, hc)
    for n in notes:
        log.info(n)
    base = training_cfg(cfg)
    _one_process_per_trial(base)
    for v in variants(sw):  # every variant composes before anything starts: a bad one fails now, not in trial 40
        trial_cfg(base, v, sw.lr.low, sw.seeds[0])
    pts = design(sw)
    if sw.action == "plan":
        shown = os.environ.get(_DRY_RUN_OUT) or sw.out_dir
        if hc.mode == RunMode.MULTIRUN and hc.job.override_dirname:
            shown = f"{shown}/{hc.job.override_dirname}"
        _plan_header(sw, base, name, pts, storage_url(sw, Path(shown)), Path(shown))
        for p in pts:
            print(p["key"])
        return {"design_size": len(pts)}

    from bnexp.sweep.local import check_jobs

    check_jobs(sw)  # a bad sweep.jobs is refused before the study is created, not after
    url = storage_url(sw, out_dir)
    if sw.action == "report":
        study, created = load_study(url, name, sw), False  # a report never creates a study
    else:
        study, created = open_study(name, sw, spec_record(name, sw, base), spec_hash(sw, base), url)
    command = redact(" ".join(["python -m bnexp.sweep", *[o for o in task if not o.startswith("sweep.action=")]]))
    if created or not sweep_file.exists(out_dir):  # one writer; the same content whoever writes it
        group = names.study_group(name, liveness.study_user_attrs(study).get("spec_hash", ""))
        # the command: what `bnexp.report DIR` gives as the way to reproduce the study (a password redacted)
        sweep_file.SweepFile(name, recorded_storage(url, out_dir), len(pts), group, command).write(out_dir)
    if sw.action == "create":
        print(f"study {name!r} ready in {mask_url(url)}: {len(pts)} points")
        return {"design_size": len(pts)}

    rule = _judged_by(study, sw)
    if sw.action in ("all", "work"):
        counts = _work(study, name, sw, base, out_dir, task, url, len(pts), rule)
        if sw.action == "work":
            print(f"worker done: {counts}; report: python -m bnexp.report {out_dir}")
            return {"counts": counts}
    commands = [command, f"python -m bnexp.report {out_dir}"]
    summary = build_report(study, out_dir, commands, rule)
    wandb_summary(study, out_dir, summary, base)
    print_summary(summary, out_dir)
    return summary


@hydra.main(version_base="1.3", config_path="../conf", config_name="study")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    try:
        return run_study(cfg)
    except UsageError as e:  # here, not in Hydra's job runner: its "Error executing job" line stays unsaid
        fail(one_line(e))
    except Exception as e:  # a storage write the disk refused (Optuna's StorageInternalError): one line too
        full = disk_full(e, f"the study's storage or {cfg.sweep.out_dir}")
        if full is None:
            raise
        fail(full)


def main(argv: list[str] | None = None) -> None:
    keep_memory()  # glibc keeps PyTorch's freed blocks (bnexp.core.alloc); local workers are this command too
    logging.basicConfig(level=os.environ.get("BNEXP_LOG", "INFO"), format="[%(asctime)s][%(name)s] %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)

    def go() -> Any:
        args = hide_storage_password(translate_flags(list(sys.argv[1:] if argv is None else argv)))
        if "sweep.action=plan" not in args:
            sys.argv = [sys.argv[0], *name_jobs_by_their_swept_keys(args)]
            return _hydra_main()
        # --dry-run writes nothing: Hydra makes its run dir and log file before any job, so they go to a
        # temp dir, removed after; the header names the dir the study would use.
        import shutil
        import tempfile

        asked = [a.split("=", 1)[1] for a in args if a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
        tmp = tempfile.mkdtemp(prefix="bnexp-dry-run-")
        args = [a for a in args if not a.startswith(("hydra.run.dir=", "hydra.sweep.dir="))]
        args += [f"hydra.run.dir={tmp}", f"hydra.sweep.dir={tmp}"]
        sys.argv = [sys.argv[0], *name_jobs_by_their_swept_keys(args)]
        os.environ[_DRY_RUN_OUT] = asked[-1] if asked else ""
        try:
            return _hydra_main()
        finally:
            os.environ.pop(_DRY_RUN_OUT, None)
            shutil.rmtree(tmp, ignore_errors=True)

    guard(go, schema=StudyConfig, prog="python -m bnexp.sweep")
