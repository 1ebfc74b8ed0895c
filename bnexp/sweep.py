"""`python -m bnexp.sweep sweep=lr_stability [sweep.lr.points=24] [model.depth=8 ...]`: Optuna LR studies.

A spec (sweeps/NAME.yaml, typed by `SweepSpec`) names the variant grid, the learning-rate range, the
sampler, seeds, the stability rule, storage and study name. Arguments `sweep.X=...` override the spec;
any other `key=value` is a training override added to every trial (after the spec's `fixed`).

Work sharing and resume: the study is created once with every point of the design (variant x lr x seed)
enqueued as a WAITING trial; workers pop waiting trials (Optuna flips WAITING -> RUNNING atomically in
the storage), so each point is trained once however many workers share the storage, and a rerun only
pops what is left. A worker killed mid-trial leaves a RUNNING trial whose heartbeat stops: after the
grace period it is failed and its point enqueued again (at most `sweep.retries` times). SIGTERM/SIGINT
fail the current trial at its next batch (reason "interrupted") and stop the worker; the point is retried
later. A second signal stops at once (KeyboardInterrupt).
Any exception in a trial fails that trial only, with its reason; a GPU out-of-memory gets the reason
"CUDA out of memory: ..." and its memory is released before the next trial. Each trial records the
`worker` that ran it (host:pid, SLURM array task). Many workers (a SLURM array, containers) share one
storage (workers that start together agree on one creator; creating it first with --create-only is
still tidier), run the workers with --no-report, report once
(python -m bnexp.report); scripts/slurm_sweep_workers.sh does exactly that.

Trials call bnexp.run.train(cfg) — the same code path as `python -m bnexp.run`. The objective is the
*final* val/acc (population statistics): stability is about where training ends, not its best moment.
A diverged trial is COMPLETE with diverged=true (an infeasible result, counted and plotted).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import random
import re
import signal
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

import yaml
from omegaconf import DictConfig, OmegaConf

from bnexp.config import ConfigError, validate
from bnexp.run import CONF_DIR, one_line

log = logging.getLogger("bnexp.sweep")
REPO = Path(__file__).resolve().parent.parent
SWEEPS_DIR = REPO / "sweeps"
SAMPLERS = ("grid", "qmc", "tpe")
PRUNERS = ("none", "median", "hyperband")


@dataclass
class LRRange:
    low: float = 1e-5
    high: float = 1.0
    points: int = 24  # grid/qmc: points per variant and seed, log-spaced; tpe: trials per variant


@dataclass
class RuleSpec:
    threshold: float = 0.9  # stable: not diverged and final val/acc >= threshold
    mode: str = "threshold"  # threshold | relative (within epsilon of the variant's best)
    epsilon: float = 0.02
    seed_quorum: float = 0.5  # with several seeds: stable at an lr when this fraction of seeds is


@dataclass
class SweepSpec:
    name: str = "lr_stability"  # Optuna study name
    grid: dict = field(default_factory=lambda: {"model.bn": ["off", "pre", "post"]})
    lr: LRRange = field(default_factory=LRRange)
    sampler: str = "grid"  # grid (evenly log-spaced) | qmc (scrambled van der Corput) | tpe
    seeds: list = field(default_factory=lambda: [0])
    rule: RuleSpec = field(default_factory=RuleSpec)
    fixed: dict = field(default_factory=dict)  # training overrides for every trial
    storage: Optional[str] = None  # None: sqlite:///<out_dir>/study.db; any SQLAlchemy URL; journal:///path
    out_dir: Optional[str] = None  # None: outputs/sweeps/<name>
    pruner: str = "none"  # none | median | hyperband (off for stability studies: it biases the range)
    population: int = 1  # K > 1: train K lrs of one variant as one model (bnexp.population)
    heartbeat: int = 10  # seconds between heartbeats (RDB storage); 0 disables stale-trial detection
    grace: int = 40  # a RUNNING trial without heartbeat for this long is failed and retried
    retries: int = 2  # times a failed point is enqueued again
    progress: bool = True


# ---- spec --------------------------------------------------------------------------------------
def _norm_value(key: str, v: Any) -> Any:
    if key.endswith(".bn") and v is False:  # YAML reads `off` as false
        return "off"
    if isinstance(v, bool):
        return str(v).lower()
    return v


def load_spec(name: str, overrides: list[str]) -> DictConfig:
    """Load sweeps/NAME.yaml (or a path) into the typed schema and apply `sweep.X=...` overrides."""
    path = Path(name)
    if not path.suffix:
        path = SWEEPS_DIR / f"{name}.yaml"
    if not path.is_file():
        avail = ", ".join(sorted(p.stem for p in SWEEPS_DIR.glob("*.yaml")))
        raise ConfigError(f"sweep spec {str(path)!r} not found; choose one of: {avail} (or a path to a .yaml)")
    try:
        raw = OmegaConf.load(path)
        spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), raw)
        rest = []
        for o in overrides:  # grid keys contain dots (model.bn), so the dotlist parser can't place them
            k, _, v = o.partition("=")
            if k == "grid":
                spec.grid = yaml.safe_load(v or "{}") or {}
            elif k.startswith("grid."):
                grid = OmegaConf.to_container(spec.grid)
                grid[k[len("grid.") :]] = yaml.safe_load(v)
                spec.grid = grid
            elif k == "fixed" or k.startswith("fixed."):
                fixed = OmegaConf.to_container(spec.fixed)
                if k == "fixed":
                    fixed = yaml.safe_load(v or "{}") or {}
                else:
                    fixed[k[len("fixed.") :]] = yaml.safe_load(v)
                spec.fixed = fixed
            else:
                rest.append(o)
        if rest:
            spec = OmegaConf.merge(spec, OmegaConf.from_dotlist(rest))
    except Exception as e:  # YAML syntax, unknown key, wrong type
        keys = ", ".join(f.name for f in dataclasses.fields(SweepSpec))
        raise ConfigError(
            f"sweep spec {path}: {one_line(e)}; fix the file's YAML or the sweep.KEY=VALUE override (keys: {keys})"
        ) from e
    grid = OmegaConf.to_container(spec.grid)
    if isinstance(grid, dict):
        grid = {k: v if isinstance(v, list) else [v] for k, v in grid.items()}
    if not isinstance(grid, dict) or not grid or any(not v for v in grid.values()):
        raise ConfigError("sweep.grid must map override keys to non-empty lists, e.g. grid: {model.bn: ['off', pre]}")
    spec.grid = {k: [_norm_value(k, v) for v in vals] for k, vals in grid.items()}
    lr = spec.lr
    if not (lr.low > 0 and lr.high > 0 and math.isfinite(lr.low) and math.isfinite(lr.high)):
        raise ConfigError(f"sweep.lr low={lr.low} high={lr.high} must be positive (e.g. sweep.lr.low=1e-5)")
    if lr.low >= lr.high:
        raise ConfigError(
            f"sweep.lr.low={lr.low} must be < sweep.lr.high={lr.high}; e.g. sweep.lr.low=1e-5 sweep.lr.high=1.0"
        )
    if lr.points < 1:
        raise ConfigError(f"sweep.lr.points={lr.points} must be >= 1")
    if spec.sampler not in SAMPLERS:
        raise ConfigError(f"sweep.sampler={spec.sampler!r} is not allowed; choose one of: {', '.join(SAMPLERS)}")
    if spec.pruner not in PRUNERS:
        raise ConfigError(f"sweep.pruner={spec.pruner!r} is not allowed; choose one of: {', '.join(PRUNERS)}")
    if spec.rule.mode not in ("threshold", "relative"):
        raise ConfigError(f"sweep.rule.mode={spec.rule.mode!r}; choose threshold or relative")
    if not spec.seeds:
        raise ConfigError("sweep.seeds must list at least one seed, e.g. sweep.seeds=[0]")
    if spec.population < 1:
        raise ConfigError(f"sweep.population={spec.population} must be >= 1")
    if not re.fullmatch(r"[\w.\-]+", spec.name):
        raise ConfigError(f"sweep.name={spec.name!r}: use letters, digits, '.', '_' and '-'")
    return spec


def lr_points(spec: DictConfig) -> list[float]:
    lo, hi, n = math.log10(spec.lr.low), math.log10(spec.lr.high), spec.lr.points
    if spec.sampler == "qmc":  # base-2 van der Corput with a fixed shift: low discrepancy, reproducible
        u = [(_vdc(i + 1) + 0.5 / n) % 1.0 for i in range(n)]
        return sorted(float(f"{10 ** (lo + x * (hi - lo)):.6g}") for x in u)
    if n == 1:
        return [float(f"{10**lo:.6g}")]
    return [float(f"{10 ** (lo + i * (hi - lo) / (n - 1)):.6g}") for i in range(n)]


def _vdc(i: int) -> float:
    x, d = 0.0, 0.5
    while i:
        x += d * (i & 1)
        i >>= 1
        d /= 2
    return x


def variants(spec: DictConfig) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [{}]
    for k, vals in spec.grid.items():
        out = [{**v, k: x} for v in out for x in vals]
    return out


def design(spec: DictConfig) -> list[dict[str, Any]]:
    """Every point of the study: variant x seed x lr (tpe: lr left to the sampler)."""
    lrs = lr_points(spec) if spec.sampler != "tpe" else [None] * spec.lr.points
    pts = []
    for v in variants(spec):
        for s in spec.seeds:
            for i, lr in enumerate(lrs):
                pts.append({"variant": v, "seed": int(s), "lr": lr, "key": _key(v, s, lr if lr is not None else i)})
    return pts


def _key(v: dict, seed: int, lr: Any) -> str:
    return " ".join(f"{k}={x}" for k, x in v.items()) + f" seed={seed} lr={lr}"


def spec_hash(spec: DictConfig, train_overrides: list[str]) -> str:
    """What makes a study the same study: its design and the training settings, not storage or paths."""
    ident = {
        "grid": OmegaConf.to_container(spec.grid),
        "lr": OmegaConf.to_container(spec.lr),
        "sampler": spec.sampler,
        "seeds": list(spec.seeds),
        "fixed": OmegaConf.to_container(spec.fixed),
        "train_overrides": list(train_overrides),
    }
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def fixed_overrides(spec: DictConfig, train_overrides: list[str]) -> list[str]:
    return [f"{k}={_fmt(_norm_value(k, v))}" for k, v in spec.fixed.items()] + list(train_overrides)


def _fmt(v: Any) -> str:
    return str(v)


def trial_overrides(spec: DictConfig, train_overrides: list[str], point: dict, lr: float) -> list[str]:
    """The trial's override list, each key once (the last setting wins, as Hydra would apply them)."""
    ov = (
        fixed_overrides(spec, train_overrides)
        + [f"{k}={_fmt(x)}" for k, x in point["variant"].items()]
        + [f"optim.lr={lr:.6g}", f"seed={point['seed']}"]
    )
    last = {o.split("=", 1)[0]: i for i, o in enumerate(ov)}
    return [o for i, o in enumerate(ov) if last[o.split("=", 1)[0]] == i]


def compose_trial_cfg(overrides: list[str]) -> DictConfig:
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from bnexp.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    return validate(cfg)


# ---- storage and study ---------------------------------------------------------------------------
def default_out_dir(spec: DictConfig) -> Path:
    return Path(spec.out_dir) if spec.out_dir else Path("outputs") / "sweeps" / spec.name


def _quiet_optuna() -> None:
    import warnings

    import optuna

    # heartbeats with ask/tell and fail_stale_trials are supported, just flagged experimental
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def make_storage(url: str, heartbeat: int = 0, grace: int = 0) -> Any:
    import optuna

    _quiet_optuna()

    given = url
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal://") :]
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            return optuna.storages.JournalStorage(JournalFileBackend(path))
        except OSError as e:
            raise ConfigError(f"cannot open storage {url!r}: {e}; use journal:///<writable path>") from None
    kw: dict[str, Any] = {}
    url = _with_installed_driver(url)
    if url.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # several workers on one file wait, not fail
    elif url.startswith("postgresql"):
        kw["engine_kwargs"] = {"connect_args": {"connect_timeout": 15}, "pool_pre_ping": True}  # fail, not hang
    if heartbeat > 0:
        kw.update(heartbeat_interval=heartbeat, grace_period=max(grace, 2 * heartbeat))
    err: BaseException | None = None
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(url, **kw)
        except Exception as e:
            if attempt < 9 and _schema_race(e):  # another process is creating the same schema right now
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
                continue
            err = e
            break
    why = re.sub(r"\s*\(Background on this error at: \S+\)", "", one_line(err))[:300]
    raise ConfigError(
        f"cannot open storage {_masked(given)!r}: {why}; check the URL (e.g. sqlite:///study.db or "
        f"postgresql://user:pw@host/db) and that the server is reachable"
    ) from err


_RACE = ("already exists", "unique constraint", "duplicate key", "database is locked", "is locked")


def _schema_race(e: BaseException) -> bool:
    """True for the errors two processes get when they create Optuna's tables in one database at once
    (CREATE TABLE / alembic_version INSERT colliding): opening again finds the finished schema."""
    return any(s in str(e).lower() for s in _RACE)


def _masked(url: str) -> str:
    """The URL with its password as ***: error messages end up in logs."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


def _with_installed_driver(url: str) -> str:
    """postgresql://... -> postgresql+psycopg2://... when psycopg (3) is missing: SQLAlchemy 2.1 maps a bare
    postgresql:// to psycopg, bnexp's [cluster] extra installs psycopg2-binary."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return f"postgresql://{rest}"  # SQLAlchemy does not know Heroku's postgres://


def storage_url(spec: DictConfig, out_dir: Path) -> str:
    return spec.storage or f"sqlite:///{(out_dir / 'study.db').resolve()}"


def open_study(
    spec: DictConfig, train_overrides: list[str], out_dir: Path, create: bool = True, wait_s: float = 60.0
) -> Any:
    """Load or create the study; its creator enqueues every design point once, then records the spec.

    Workers started together on a fresh storage race to create the study: one wins (create_study is atomic),
    the others wait until the winner has recorded the spec, so no point is enqueued twice."""
    import optuna

    storage = make_storage(storage_url(spec, out_dir), spec.heartbeat, spec.grace)
    h = spec_hash(spec, train_overrides)
    sampler = optuna.samplers.TPESampler(seed=0) if spec.sampler == "tpe" else optuna.samplers.RandomSampler(seed=0)
    pruner = {
        "none": optuna.pruners.NopPruner(),
        "median": optuna.pruners.MedianPruner(n_warmup_steps=1),
        "hyperband": optuna.pruners.HyperbandPruner(),
    }[spec.pruner]
    created = False
    try:
        study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    except KeyError:
        if not create:
            raise ConfigError(f"no study {spec.name!r} in {storage_url(spec, out_dir)}") from None
        try:
            study = optuna.create_study(
                study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner, direction="maximize"
            )
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            study = optuna.load_study(study_name=spec.name, storage=storage, sampler=sampler, pruner=pruner)
    old = study.user_attrs.get("spec_hash")
    if old is None and not created:
        old = _wait_for_spec(study, wait_s)  # its creator is still enqueueing the design
    if old is None:  # we created it (or its creator died before finishing): plan the design
        design_pts = design(spec)
        have = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False)}
        for p in design_pts:
            if p["key"] in have:
                continue
            params = {k: x for k, x in p["variant"].items()} | {"seed": p["seed"]}
            if p["lr"] is not None:
                params["lr"] = p["lr"]
            study.enqueue_trial(params, user_attrs={"key": p["key"], "attempt": 0})
        study.set_user_attr("spec", json.loads(json.dumps(OmegaConf.to_container(spec, resolve=True))))
        study.set_user_attr("train_overrides", list(train_overrides))
        study.set_user_attr("design_size", len(design_pts))
        study.set_user_attr("spec_hash", h)  # last: a study with a spec_hash has its whole design enqueued
        log.info("created study %s with %d points", spec.name, len(design_pts))
    elif old != h:
        raise ConfigError(
            f"study {spec.name!r} already exists in this storage with a different spec "
            f"(grid/lr/sampler/seeds/fixed overrides differ); use sweep.name=<new name> or another sweep.out_dir"
        )
    return study


def _wait_for_spec(study: Any, wait_s: float) -> str | None:
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        old = study._storage.get_study_user_attrs(study._study_id).get("spec_hash")
        if old is not None:
            return old
        time.sleep(0.5)
    log.warning(
        "study %s has no recorded spec after %.0f s; planning its missing points here", study.study_name, wait_s
    )
    return None


def reconcile(study: Any, spec: DictConfig) -> int:
    """Fail stale trials (dead workers) and enqueue again each point that has no live or finished trial."""
    import optuna
    from optuna.trial import TrialState

    optuna.storages.fail_stale_trials(study)
    if spec.heartbeat > 0:
        _fail_stale_by_attr(study, max(spec.grace, 2 * spec.heartbeat))
    trials = study.get_trials(deepcopy=False)
    by_key: dict[str, list] = {}
    for t in trials:
        if "key" in t.user_attrs:
            by_key.setdefault(t.user_attrs["key"], []).append(t)
    added = 0
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    for key, ts in by_key.items():
        if any(t.state in live for t in ts):
            continue
        failed = [t for t in ts if t.state == TrialState.FAIL]
        if len(failed) > spec.retries:
            continue
        last = max(failed, key=lambda t: t.number)
        params = {k: v for k, v in last.params.items()} or dict(last.system_attrs.get("fixed_params", {}))
        study.enqueue_trial(params, user_attrs={"key": key, "attempt": len(failed)})
        added += 1
    if added:
        log.info("re-enqueued %d failed point(s)", added)
    return added


HEARTBEAT_ATTR = "bnexp:heartbeat"  # unix time of the last beat, for storages without Optuna heartbeats


def _native_heartbeat(storage: Any) -> bool:
    from optuna.storages._heartbeat import BaseHeartbeat, is_heartbeat_enabled

    return isinstance(storage, BaseHeartbeat) and is_heartbeat_enabled(storage)


def _trials_with_native_beat(study: Any) -> set[int]:
    """Ids of the study's RUNNING trials that have an Optuna heartbeat row (one query)."""
    from optuna.storages._rdb import models
    from optuna.storages._rdb.storage import _create_scoped_session
    from optuna.trial import TrialState

    hb, tr = models.TrialHeartbeatModel, models.TrialModel
    rdb = getattr(study._storage, "_backend", study._storage)  # load_study wraps RDBStorage in a cache
    with _create_scoped_session(rdb.scoped_session) as session:
        rows = (
            session.query(hb.trial_id)
            .join(tr, hb.trial_id == tr.trial_id)
            .filter(tr.study_id == study._study_id, tr.state == TrialState.RUNNING)
            .all()
        )
    return {r[0] for r in rows}


def _fail_stale_by_attr(study: Any, grace: float) -> int:
    """Fail RUNNING trials whose worker stopped beating, where Optuna's own check cannot see it:
    JournalStorage has no Optuna heartbeat (bnexp beats in a trial system attr there), and Optuna skips
    trials that never recorded a first beat (a worker killed between claiming a trial and its first
    beat). For those, the start time stands in for the last beat. Clocks of the workers' hosts are
    compared, so they must agree to well within the grace period (NTP)."""
    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    native = _native_heartbeat(study._storage)
    try:
        beating = _trials_with_native_beat(study) if native else set()
    except Exception as e:  # Optuna's private RDB models changed: skip this extra check, keep the worker going
        log.warning("cannot read Optuna heartbeats (%s); beat-less RUNNING trials are not checked", one_line(e))
        return 0
    now, failed = time.time(), 0
    for t in running:
        if native:
            if t._trial_id in beating:
                continue  # Optuna's fail_stale_trials judges it
            last = None
        else:
            last = t.system_attrs.get(HEARTBEAT_ATTR)
        if last is None and t.datetime_start is not None:
            last = t.datetime_start.timestamp()
        if last is None or now - float(last) <= grace:
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "fail_reason", f"no heartbeat for {now - last:.0f} s")
            if study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                failed += 1
        except (UpdateFinishedTrialError, RuntimeError):  # finished, or another worker failed it first
            continue
    if failed:
        log.warning("failed %d trial(s) whose worker stopped beating", failed)
    return failed


# ---- trials -------------------------------------------------------------------------------------
class Heartbeat:
    """Record the trial's heartbeat from a thread so a dead worker's trial can be detected: Optuna's own
    heartbeat where the storage has one (RDB), else a trial system attr (JournalStorage)."""

    def __init__(self, study: Any, trial_id: int | list[int], interval: int) -> None:
        self.storage, self.interval = study._storage, interval
        self.trial_ids = trial_id if isinstance(trial_id, list) else [trial_id]  # population: every member
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.native = _native_heartbeat(self.storage)

    def __enter__(self) -> Heartbeat:
        if self.native or self.interval > 0:
            self._record()
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def _record(self) -> None:
        for tid in self.trial_ids:
            if self.native:
                self.storage.record_heartbeat(tid)
            else:
                self.storage.set_trial_system_attr(tid, HEARTBEAT_ATTR, time.time())

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self._record()
            except Exception as e:  # a missed beat is not fatal; the grace period covers it
                log.warning("heartbeat failed: %s", one_line(e))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


class Interrupted(Exception):
    pass


def _is_stop(e: BaseException) -> bool:
    """Our Interrupted, or Lightning's SIGTERMException (a SystemExit its loops raise at the next batch
    after its own SIGTERM hook ran): for a sweep worker the same interruption. Matched by name so that
    the except clause imports nothing."""
    return isinstance(e, Interrupted) or (isinstance(e, SystemExit) and type(e).__name__ == "SIGTERMException")


INTERRUPTED = "interrupted (SIGTERM/SIGINT); the point will be retried"


def _record(metrics: dict, point_cfg: DictConfig, overrides: list[str], grid: dict) -> dict[str, Any]:
    rec = {
        "bn": point_cfg.model.bn,
        "bias": point_cfg.model.bias,
        "depth": int(point_cfg.model.depth),
        "lr": float(point_cfg.optim.lr),
        "seed": int(point_cfg.seed),
        "diverged": bool(metrics.get("diverged")),
        "val_acc": metrics.get("val/acc"),
        "val_acc_best": metrics.get("val/acc_best"),
        "val_acc_batchstats": metrics.get("val/acc_batchstats"),
        "val_loss": metrics.get("val/loss"),
        "test_acc": metrics.get("test/acc"),
        "test_acc_single": metrics.get("test/acc_single"),
        "step": metrics.get("step"),
        "wall_s": metrics.get("wall_s"),
        "overrides": " ".join(overrides),
    }
    for k in grid:
        rec[k] = str(OmegaConf.select(point_cfg, k))
    return rec


def _objective_value(metrics: dict) -> float:
    v = metrics.get("val/acc")
    return float(v) if v is not None and math.isfinite(v) else 0.0


class PruneCallback:
    """Report val/acc to Optuna after each validation; stop the run when the pruner says so."""

    def __new__(cls, trial: Any):
        import lightning as L

        class _CB(L.Callback):
            pruned = False

            def on_validation_end(self, trainer: Any, pl_module: Any) -> None:
                if trainer.sanity_checking or "val/acc" not in pl_module.final:
                    return
                trial.report(pl_module.final["val/acc"], trainer.global_step)
                if trial.should_prune():
                    self.pruned = True
                    trainer.should_stop = True

        return _CB()


class StopCallback:
    """Raise Interrupted from ordinary code at the next batch once a signal asked the worker to stop.

    The signal handler only sets the flag: an exception raised from a handler lands wherever the
    interpreter happens to be (an import half done, a __del__ finaliser that swallows it)."""

    def __new__(cls, worker: Worker):
        import lightning as L

        class _CB(L.Callback):
            def _check(self, *_: Any) -> None:
                worker.check_interrupted()

            on_train_batch_start = on_validation_batch_start = on_test_batch_start = _check

        return _CB()


class Worker:
    def __init__(self, spec: DictConfig, train_overrides: list[str], out_dir: Path, study: Any) -> None:
        self.spec, self.train_overrides, self.out_dir, self.study = spec, train_overrides, out_dir, study
        self.interrupted = False
        self.current: list[Any] = []

    def _trial_dir(self, trial: Any, cfg: DictConfig) -> Path:
        lab = f"{cfg.model.bn}-{cfg.model.bias}-d{cfg.model.depth}-lr{cfg.optim.lr:.1e}-s{cfg.seed}"
        return self.out_dir / "trials" / f"{trial.number:04d}_{lab}"

    def _point_cfg(self, trial: Any) -> tuple[DictConfig, list[str]]:
        spec = self.spec
        variant = {k: trial.suggest_categorical(k, list(vals)) for k, vals in spec.grid.items()}
        seed = trial.suggest_categorical("seed", [int(s) for s in spec.seeds])
        lr = trial.suggest_float("lr", spec.lr.low, spec.lr.high, log=True)
        point = {"variant": variant, "seed": seed}
        ov = trial_overrides(spec, self.train_overrides, point, lr)
        cfg = compose_trial_cfg(ov)
        cfg.logger.group = spec.name
        cfg.logger.job_type = "trial"
        cfg.trainer.progress_bar = False
        return cfg, ov

    def _is_duplicate(self, trial: Any) -> bool:
        from optuna.trial import TrialState

        key = trial.user_attrs.get("key")
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.RUNNING)):
            if t.user_attrs.get("key") == key and t.number != trial.number:
                if t.state == TrialState.COMPLETE or t.number < trial.number:
                    return True
        return False

    def run_one(self, trial: Any) -> str:
        from optuna.trial import TrialState

        from bnexp.run import train

        if self._is_duplicate(trial):  # two workers re-enqueued the same failed point
            trial.set_user_attr("duplicate", True)
            self.study.tell(trial, state=TrialState.PRUNED)
            return "duplicate"
        try:
            cfg, ov = self._point_cfg(trial)
        except ConfigError as e:
            trial.set_user_attr("fail_reason", one_line(e))
            self.study.tell(trial, state=TrialState.FAIL)
            raise
        out = self._trial_dir(trial, cfg)
        for k, v in (("bn", cfg.model.bn), ("bias", cfg.model.bias), ("depth", int(cfg.model.depth))):
            trial.set_user_attr(k, v)  # so that a trial that dies mid-way still names its variant
        trial.set_user_attr("overrides", " ".join(ov))
        trial.set_user_attr("trial_dir", str(out))
        trial.set_user_attr("worker", worker_id())
        cb = PruneCallback(trial) if self.spec.pruner != "none" else None
        self.check_interrupted()  # a signal that came while the trial was being set up
        reason = None
        try:
            with Heartbeat(self.study, trial._trial_id, self.spec.heartbeat):
                metrics = train(cfg, output_dir=out, callbacks=[StopCallback(self), *([cb] if cb else [])])
        except BaseException as e:
            if _is_stop(e):
                trial.set_user_attr("fail_reason", INTERRUPTED)
                self.study.tell(trial, state=TrialState.FAIL)
                return "interrupted"
            if not isinstance(e, Exception):  # KeyboardInterrupt (a second Ctrl-C), a real SystemExit
                raise
            reason = fail_reason(e)  # one broken trial (OOM, bug, bad data) never stops the sweep
        if reason is not None:  # out of the except block: its traceback no longer pins the trial's tensors
            _free_accelerator_memory()
            log.error("trial %d failed: %s", trial.number, reason)
            trial.set_user_attr("fail_reason", reason)
            self.study.tell(trial, state=TrialState.FAIL)
            return _state_of(reason)
        for k, v in _record(metrics, cfg, ov, self.spec.grid).items():
            trial.set_user_attr(k, v)
        if cb is not None and cb.pruned:
            self.study.tell(trial, state=TrialState.PRUNED)
            return "pruned"
        self.study.tell(trial, _objective_value(metrics))
        return "diverged" if metrics["diverged"] else "complete"

    def run_population(self, trials: list[Any]) -> list[str]:
        from optuna.trial import TrialState

        from bnexp.population import train_population

        trials = [t for t in trials if not self._is_duplicate(t) or self.study.tell(t, state=TrialState.PRUNED)]
        if not trials:
            return []
        cfgs, ovs, outs = [], [], []
        for t in trials:
            cfg, ov = self._point_cfg(t)
            cfgs.append(cfg), ovs.append(ov), outs.append(self._trial_dir(t, cfg))
            t.set_user_attr("overrides", " ".join(ov))
            t.set_user_attr("trial_dir", str(outs[-1]))
            t.set_user_attr("worker", worker_id())
        reason = None
        try:
            with Heartbeat(self.study, [t._trial_id for t in trials], self.spec.heartbeat):
                results = train_population(
                    cfgs[0], [c.optim.lr for c in cfgs], outs, [c.seed for c in cfgs], on_step=self.check_interrupted
                )
        except Interrupted:
            reason = INTERRUPTED
        except Exception as e:
            reason = fail_reason(e)
        if reason is not None:
            _free_accelerator_memory()
            for t in trials:
                t.set_user_attr("fail_reason", reason)
                self.study.tell(t, state=TrialState.FAIL)
            return [_state_of(reason)] * len(trials)
        states = []
        for t, m, cfg, ov, out in zip(trials, results, cfgs, ovs, outs, strict=True):
            for k, v in _record(m, cfg, ov, self.spec.grid).items():
                t.set_user_attr(k, v)
            t.set_user_attr("population", len(trials))
            self.study.tell(t, _objective_value(m))
            _log_member(cfg, m, out)
            states.append("diverged" if m["diverged"] else "complete")
        return states

    def ask_group(self) -> list[Any]:
        """Pop waiting trials: 1, or up to K of the same variant and seed for population training."""
        first = self._pop()
        if first is None:  # another worker took the last waiting point
            return []
        group = [first]
        if self.spec.population > 1:
            fp = self._fixed(first)
            same = {k: v for k, v in fp.items() if k != "lr"}
            while len(group) < self.spec.population and self._has_waiting():
                t = self._pop()
                if t is None:
                    break
                fpt = self._fixed(t) or {}
                if {k: v for k, v in fpt.items() if k != "lr"} == same and "lr" in fpt:
                    group.append(t)
                else:  # another variant: put it back by failing it; reconcile re-enqueues its point
                    self._return(t)
                    break
        return group

    def check_interrupted(self) -> None:
        if self.interrupted:
            raise Interrupted("stop requested")

    def _fail_unfinished(self, group: list[Any], reason: str) -> list[str]:
        from optuna.trial import TrialState

        states = []
        for t in group:
            if self.study._storage.get_trial(t._trial_id).state == TrialState.RUNNING:
                t.set_user_attr("fail_reason", reason)
                self.study.tell(t, state=TrialState.FAIL)
                states.append("interrupted")
        return states

    def _return(self, t: Any) -> None:
        from optuna.trial import TrialState

        t.set_user_attr("fail_reason", "returned to the queue (population grouping)")
        t.set_user_attr("returned", True)
        self.study.tell(t, state=TrialState.FAIL)
        self.study.enqueue_trial(self._fixed(t), user_attrs={"key": t.user_attrs.get("key"), "attempt": 0})

    def _pop(self) -> Any:
        """Claim one WAITING point (atomic in the storage) without ever sampling a new trial: study.ask()
        would create an extra, unplanned trial when another worker took the last point first."""
        from optuna.trial import Trial

        trial_id = self.study._pop_waiting_trial_id()
        if trial_id is None:
            return None
        if self.spec.heartbeat > 0:  # beat at once: a worker dying before its first beat is caught sooner
            Heartbeat(self.study, trial_id, self.spec.heartbeat)._record()
        return Trial(self.study, trial_id)

    def _fixed(self, trial: Any) -> dict | None:
        """The params an enqueued point fixed (None: Optuna sampled the trial itself)."""
        return self.study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")

    def _has_waiting(self) -> bool:
        from optuna.trial import TrialState

        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)))

    def _has_running(self) -> bool:
        from optuna.trial import TrialState

        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def loop(self, progress: Any = None, max_trials: int | None = None) -> dict[str, int]:
        counts: dict[str, int] = {}
        done = 0
        while not self.interrupted and (max_trials is None or done < max_trials):
            if not self._has_waiting():
                reconcile(self.study, self.spec)
                if not self._has_waiting():
                    if not self._has_running():
                        break
                    time.sleep(min(5.0, max(1.0, self.spec.heartbeat / 2)))  # others still running
                    continue
            group = self.ask_group()
            if not group:
                continue
            self.current = group
            try:
                states = self.run_population(group) if len(group) > 1 else [self.run_one(group[0])]
            except Interrupted:  # the signal came outside train(): before it started or after it ended
                states = self._fail_unfinished(group, INTERRUPTED)
            finally:
                self.current = []
            for s in states:
                counts[s] = counts.get(s, 0) + 1
            done += len(states)
            if progress is not None:
                progress.update()
        return counts


def _oom_kind(e: BaseException) -> str | None:
    """The kind of out-of-memory error: CUDA (torch.OutOfMemoryError), other (cuDNN/cuBLAS/CPU allocator), None."""
    import torch

    if isinstance(e, torch.OutOfMemoryError):  # = torch.cuda.OutOfMemoryError
        return "CUDA out of memory"
    msg = str(e).lower()
    if isinstance(e, RuntimeError) and ("out of memory" in msg or "can't allocate memory" in msg):
        return "out of memory"
    return None


def fail_reason(e: BaseException) -> str:
    """The one line a FAIL trial keeps (user attr fail_reason). Out of memory gets a fixed prefix, so a
    report can count OOMs apart from bugs, and says what to shrink."""
    msg = one_line(e)[:500]
    kind = _oom_kind(e)
    if kind is None:
        return f"{type(e).__name__}: {msg}"
    detail = msg.removeprefix("CUDA out of memory").lstrip(". ") or type(e).__name__
    return f"{kind}: {detail} (try a smaller data.batch_size or data.eval_batch_size, or data.on_device=false)"


def _state_of(reason: str) -> str:
    if reason == INTERRUPTED:
        return "interrupted"
    return "oom" if reason.split(":")[0].endswith("out of memory") else "failed"


def worker_id() -> str:
    """host:pid, plus the SLURM job/array task when there is one: which worker ran (or died in) a trial."""
    import socket

    wid = f"{socket.gethostname()}:{os.getpid()}"
    job = os.environ.get("SLURM_ARRAY_JOB_ID") or os.environ.get("SLURM_JOB_ID")
    if job:
        task = os.environ.get("SLURM_ARRAY_TASK_ID")
        wid += f" slurm:{job}" + (f"_{task}" if task else "")
    return wid


def _log_member(cfg: DictConfig, metrics: dict, out: Path) -> None:
    """Population members train outside Lightning: give each the W&B run train() would have given it."""
    if cfg.logger.name != "wandb":
        return
    try:
        from bnexp.wandb_logging import log_finished_run

        log_finished_run(cfg, out, metrics)
    except Exception as e:  # metrics.json on disk is the result; W&B is a view of it
        log.warning("W&B run for a population member not written: %s", one_line(e))


def _free_accelerator_memory() -> None:
    import gc

    gc.collect()  # the failed trial's Trainer/module cycles hold its CUDA tensors
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:
        pass


# ---- records and report -------------------------------------------------------------------------
def trial_records(study: Any) -> list[dict[str, Any]]:
    """One dict per trial (finished or failed) for bnexp.stability; skips bookkeeping-only trials."""
    out = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        if "key" not in ua or ua.get("returned") or ua.get("duplicate") or t.state.name in ("WAITING", "RUNNING"):
            continue
        rec = {"number": t.number, "state": t.state.name, "key": ua["key"]}
        fp = t.params or t.system_attrs.get("fixed_params", {})
        rec.update({"lr": fp.get("lr"), "seed": fp.get("seed")})
        rec.update({k: v for k, v in ua.items() if k not in ("key", "attempt", "trial_dir")})
        if "fail_reason" in ua:
            rec["fail_reason"] = ua["fail_reason"]
        out.append(rec)
    # a trial that died before it finished (kill -9, OOM) has no variant fields: take them from its point
    by_key = {r["key"]: r for r in out if r.get("bn") is not None}
    for r in out:
        if r.get("bn") is None and r["key"] in by_key:
            for k in ("bn", "bias", "depth", *[k for k in by_key[r["key"]] if "." in k and k != "overrides"]):
                r.setdefault(k, by_key[r["key"]].get(k))
                if r[k] is None:
                    r[k] = by_key[r["key"]].get(k)
    return out


def variant_keys(grid: dict) -> tuple[str, ...]:
    extra = tuple(k for k in grid if k not in ("model.bn", "model.bias", "model.depth"))
    return ("bn", "bias", "depth") + extra


def write_study_report(study: Any, spec: DictConfig, out_dir: Path, commands: list[str]) -> dict:
    from bnexp.stability import StabilityRule, write_report

    r = spec.rule
    rule = StabilityRule(threshold=r.threshold, mode=r.mode, epsilon=r.epsilon)
    trials = trial_records(study)
    kwargs: dict[str, Any] = {"variant_keys": variant_keys(spec.grid)}
    try:
        summary = write_report(out_dir, spec.name, trials, rule, commands, seed_quorum=r.seed_quorum, **kwargs)
    except TypeError:  # stability.write_report without seed_quorum
        summary = write_report(out_dir, spec.name, trials, rule, commands, **kwargs)
    return summary


# ---- CLI ----------------------------------------------------------------------------------------
def parse_args(argv: list[str]) -> tuple[str, list[str], list[str], dict[str, Any]]:
    name, spec_ov, train_ov = "lr_stability", [], []
    flags: dict[str, Any] = {
        "create_only": False,
        "report_only": False,
        "no_report": False,
        "max_trials": None,
        "dry_run": False,
    }
    for a in argv:
        if a in ("-h", "--help"):
            print(__doc__)
            print("flags: --create-only  --dry-run  --report-only  --no-report  --max-trials=N")
            sys.exit(0)
        elif a == "--create-only":
            flags["create_only"] = True
        elif a == "--report-only":
            flags["report_only"] = True
        elif a == "--no-report":  # many workers on one storage: train only, report once at the end
            flags["no_report"] = True
        elif a == "--dry-run":
            flags["dry_run"] = True
        elif a.startswith("--max-trials="):
            v = a.split("=", 1)[1]
            if not v.isdigit() or int(v) < 1:
                raise ConfigError(f"--max-trials={v}: give a positive whole number, e.g. --max-trials=10")
            flags["max_trials"] = int(v)
        elif a.startswith("sweep="):
            name = a.split("=", 1)[1]
        elif a.startswith("sweep."):
            spec_ov.append(a[len("sweep.") :])
        elif "=" in a and not a.startswith("-"):
            train_ov.append(a)
        else:
            raise ConfigError(f"unexpected argument {a!r}; use sweep=NAME, sweep.KEY=VALUE, KEY=VALUE or --help")
    return name, spec_ov, train_ov, flags


def _progress(study: Any, spec: DictConfig, total: int) -> Any:
    from tqdm import tqdm

    class Bar:
        """Trials done / total, per variant: done and current stable range; ETA from tqdm."""

        def __init__(self) -> None:
            done = len([t for t in trial_records(study) if t["state"] == "COMPLETE"])
            self.bar = tqdm(
                total=total, initial=done, desc=spec.name, unit="trial", disable=not spec.progress, dynamic_ncols=True
            )
            self.update(0)

        def update(self, n: int = 1) -> None:
            from bnexp.stability import StabilityRule, analyse

            recs = [t for t in trial_records(study)]
            done = len([t for t in recs if t["state"] == "COMPLETE"])
            self.bar.n = done
            parts = []
            try:
                for v in analyse(recs, StabilityRule(threshold=spec.rule.threshold), variant_keys(spec.grid)):
                    rng = f"[{v['stable_lr_min']:.0e},{v['stable_lr_max']:.0e}]" if v["stable_lr_min"] else "[]"
                    parts.append(f"{v['label']} {v['n_trials']} {rng}")
            except Exception:
                pass
            self.bar.set_postfix_str(" | ".join(parts)[:200])
            self.bar.refresh()

        def close(self) -> None:
            self.bar.close()

    return Bar()


def run_sweep(argv: list[str]) -> dict[str, Any]:
    name, spec_ov, train_ov, flags = parse_args(argv)
    spec = load_spec(name, spec_ov)
    out_dir = default_out_dir(spec)
    # compose every variant once before anything starts: a bad override fails now, not in trial 40
    for v in variants(spec):
        cfg = compose_trial_cfg(trial_overrides(spec, train_ov, {"variant": v, "seed": spec.seeds[0]}, spec.lr.low))
        _one_process_per_trial(cfg)
    pts = design(spec)
    if flags["dry_run"]:
        for p in pts:
            print(p["key"])
        return {"design_size": len(pts)}
    out_dir.mkdir(parents=True, exist_ok=True)
    study = open_study(spec, train_ov, out_dir)
    (out_dir / "sweep.json").write_text(
        json.dumps(
            {
                "study": spec.name,
                "storage": storage_url(spec, out_dir),
                "spec": OmegaConf.to_container(spec),
                "train_overrides": train_ov,
            },
            indent=2,
        )
    )
    cmd = "python -m bnexp.sweep " + " ".join(argv)
    commands = [cmd, f"python -m bnexp.report {out_dir}"]
    if flags["create_only"]:
        print(f"study {spec.name!r} ready in {storage_url(spec, out_dir)}: {len(pts)} points")
        return {"design_size": len(pts)}
    if not flags["report_only"]:
        worker = Worker(spec, train_ov, out_dir, study)
        _install_signal_handlers(worker)
        bar = _progress(study, spec, len(pts))
        try:
            counts = worker.loop(progress=bar, max_trials=flags["max_trials"])
        finally:
            bar.close()
        log.info("worker done: %s", counts)
        if worker.interrupted:
            print("bnexp: sweep interrupted; rerun the same command to resume", file=sys.stderr)
            sys.exit(130)
        if flags["no_report"]:
            print(f"worker done: {counts}; report: python -m bnexp.report {out_dir}")
            return {"counts": counts}
    summary = write_study_report(study, spec, out_dir, commands)
    _maybe_wandb_summary(spec, train_ov, out_dir, study, summary)
    _print_summary(summary, out_dir)
    return summary


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


def _maybe_wandb_summary(spec: DictConfig, train_ov: list[str], out_dir: Path, study: Any, summary: dict) -> None:
    cfg = compose_trial_cfg(fixed_overrides(spec, train_ov))
    if cfg.logger.name != "wandb":
        return
    try:
        from bnexp.wandb_logging import log_sweep_summary

        log_sweep_summary(
            spec.name, out_dir, trial_records(study), summary, OmegaConf.to_container(spec, resolve=True), cfg
        )
    except Exception as e:  # the report on disk is the result; W&B is a view of it
        log.warning("W&B sweep summary not written: %s", one_line(e))


def _print_summary(summary: dict, out_dir: Path) -> None:
    print(f"study {summary.get('study')}: {summary.get('n_trials')} trials; report in {out_dir}/report.md")
    for v in summary.get("variants", []):
        lo, hi = v.get("stable_lr_min"), v.get("stable_lr_max")
        rng = f"[{lo:.2g}, {hi:.2g}]" if lo else "none"
        print(
            f"  {v['label']:<24} trials={v['n_trials']:>3} stable={v['n_stable']:>3} diverged={v['n_diverged']:>3} "
            f"stable lr {rng} = {v['stable_decades']:.2f} decades"
        )


def _install_signal_handlers(worker: Worker) -> None:
    def handler(signum: int, frame: Any) -> None:
        """Only set the flag: the trial in flight checks it at every batch and ends itself, failed as
        "interrupted". Raising here instead would land in whatever the interpreter is doing (an import
        half done, a __del__ that swallows it); a second signal does raise, for a user who insists."""
        if worker.interrupted:
            raise KeyboardInterrupt
        worker.interrupted = True

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)


def main(argv: list[str] | None = None) -> None:
    logging.basicConfig(level=os.environ.get("BNEXP_LOG", "INFO"), format="[%(asctime)s][%(name)s] %(message)s")
    logging.getLogger("optuna").setLevel(logging.WARNING)
    from bnexp.run import cli_guard

    cli_guard(lambda: run_sweep(list(sys.argv[1:] if argv is None else argv)))


if __name__ == "__main__":
    main()
