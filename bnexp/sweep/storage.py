"""Where a study lives: the Optuna storage (SQLite by default, PostgreSQL for many machines, Optuna's journal
file) and the study in it, created once with its whole design enqueued.

The storage URL: `sweep.storage`, else `$BNEXP_STORAGE` (so a password need not be on any command line),
else `sqlite:///<out_dir>/study.db`. A URL's password is never printed or written: `bnexp.cli.redact`.

Workers that start together on a fresh storage race twice: to create Optuna's tables (retried here), and to
create the study (one wins; it enqueues every point, then records `spec_hash` last; the others wait for that).
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from bnexp.cli import ConfigError, disk_full, mask_url, one_line, redact, remember_secret, unmask_url
from bnexp.record import VAL_ACC
from bnexp.sweep import liveness
from bnexp.sweep.spec import LR_PARAM, design

log = logging.getLogger("bnexp.sweep")
STORAGE_ENV = "BNEXP_STORAGE"
CREATING = "creating_spec_hash"  # set right after the study is created, before any point: what it is made for
_RACE = ("already exists", "unique constraint", "duplicate key", "database is locked", "is locked")


def storage_url(sw: DictConfig, out_dir: Path) -> str:
    """sweep.storage, else $BNEXP_STORAGE, else the out dir's study.db. A `sweep.storage` whose password was
    masked on the command line (bnexp.cli.hide_storage_password) opens with the real one, kept in the env."""
    url = unmask_url(sw.storage) if sw.storage else None
    url = url or os.environ.get(STORAGE_ENV) or f"sqlite:///{(Path(out_dir) / 'study.db').resolve()}"
    remember_secret(url)
    return url


def check_study_name(name: Any, key: str) -> None:
    """A study name is also a directory name (outputs/sweeps/<sweep.name>, trials/<study>): one plain path
    component, so that it never puts a study's files outside its own dir."""
    from bnexp.names import safe

    if not isinstance(name, str) or name in ("", ".", "..") or safe(name) != name:
        raise ConfigError(
            f"{key}={name!r} is not a usable study name: use letters, digits and . _ - + = only, not '.' or '..' "
            f"(e.g. {key}={safe(str(name)).strip('.') or 'my_study'})"
        )


def _quiet_optuna() -> None:
    import warnings

    import optuna

    # heartbeats with ask/tell and fail_stale_trials are supported, just flagged experimental
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    warnings.filterwarnings("ignore", message=".*Heartbeat of storage is supposed to be used.*")
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def _schema_race(e: BaseException) -> bool:
    """True for the errors two processes get when they create Optuna's tables in one database at once
    (CREATE TABLE / alembic_version INSERT colliding): opening again finds the finished schema."""
    return any(s in str(e).lower() for s in _RACE)


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


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL (relative paths as SQLAlchemy opens them: from the current dir); else None."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return None
    if not u.drivername.startswith("sqlite") or u.database in (None, "", ":memory:"):
        return None
    return Path(u.database)


def is_sqlite_in_memory(url: str) -> bool:
    """`sqlite://`, `sqlite:///:memory:`: a database each process makes for itself and loses at exit."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        u = make_url(url)
    except (ArgumentError, ValueError):
        return False
    return u.drivername.startswith("sqlite") and (u.database in (None, "", ":memory:") or "mode=memory" in url)


def recorded_storage(url: str, out_dir: Path) -> str:
    """The storage as sweep.json records it: the password masked; a SQLite file inside the out dir relative to
    it (`sqlite:///study.db`), so that a copied or moved sweep dir reads its own study, not the original's."""
    path = sqlite_path(url)
    if path is not None and path.is_absolute() and path.resolve().is_relative_to(Path(out_dir).resolve()):
        return f"sqlite:///{path.resolve().relative_to(Path(out_dir).resolve())}"
    return mask_url(url)


def storage_from_record(recorded: str, sweep_dir: Path) -> str:
    """sweep.json's storage as a URL to open: a relative SQLite path is inside the sweep dir (recorded_storage)."""
    path = sqlite_path(recorded)
    if path is not None and not path.is_absolute():
        return f"sqlite:///{(Path(sweep_dir) / path).resolve()}"
    return recorded


def check_sqlite(url: str) -> None:
    """A SQLite study file must pass `PRAGMA integrity_check` before Optuna reads it: a damaged file would give
    a traceback, or worse a report built from the rows that still read. Opened read-only; a new file passes."""
    import sqlite3
    from contextlib import closing

    if is_sqlite_in_memory(url):
        raise ConfigError(
            f"storage {url!r} is an in-memory database: each worker would get its own study, gone at exit; "
            "use a file (sqlite:///study.db), or leave sweep.storage unset for <sweep.out_dir>/study.db"
        )
    path = sqlite_path(url)
    if path is None or not path.is_file():
        return
    tables: list[str] = []
    try:
        with closing(sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True, timeout=120)) as db:
            found = [row[0] for row in db.execute("PRAGMA integrity_check(3)")]
            tables = sorted(r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'"))
    except sqlite3.OperationalError:  # locked, unreadable: not damage; opening it through Optuna says why
        return
    except sqlite3.DatabaseError as e:  # "file is not a database", "database disk image is malformed"
        found = [str(e)]
    if found == ["ok"] and tables and "studies" not in tables:  # another program's database: never add to it
        raise ConfigError(
            f"{path} is not an Optuna study file (a SQLite database with tables {', '.join(tables[:5])}); nothing "
            "was written to it. Give a new file or a study's own: sqlite:///<path>/study.db"
        )
    if found != ["ok"]:
        raise ConfigError(
            f"{path} is damaged (SQLite: {'; '.join(found)[:100]}); nothing was read from it. Restore it from a "
            f"backup, or save what SQLite still reads (sqlite3 {path} .recover | sqlite3 recovered.db) and pass "
            "--storage sqlite:///recovered.db; each finished trial's metrics.json is still in its trial dir"
        )


def _check_journal_lines(path: Path) -> None:
    """Every whole line of a journal file is one JSON operation (an object with an op_code): Optuna forgives a
    last line that is not, as a write cut off, and then fails on the next append. Only a cut-off last line
    (no newline) is left to Optuna."""
    if not path.is_file():
        return
    with open(path, "rb") as f:
        for n, line in enumerate(f, start=1):
            if not line.endswith(b"\n"):
                break
            try:
                op = json.loads(line)
            except ValueError as e:
                raise ValueError(f"line {n}: {one_line(e)}") from None
            if not isinstance(op, dict) or "op_code" not in op:
                raise ValueError(f"line {n} is not a journal operation")


def make_storage(url: str, heartbeat: int = 0, grace: int = 0, retries: int = 0) -> Any:
    """An Optuna storage for `url`; a URL that does not open, or a damaged study file, is a ConfigError (password
    masked). With `heartbeat` > 0 an RDB storage has Optuna's heartbeat, and Optuna's stale-trial retry callback
    retries a stale trial's point up to `retries` times (bnexp.sweep.liveness.stale_retry)."""
    import optuna

    remember_secret(url)
    _quiet_optuna()
    if url.startswith("journal://"):
        from optuna.storages.journal import JournalFileBackend

        path = url[len("journal://") :]
        try:
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            _check_journal_lines(Path(path))
            journal = optuna.storages.JournalStorage(JournalFileBackend(path))
            journal.get_all_studies()  # replay the file now: a damaged one is refused here, not mid-command
            return journal
        except OSError as e:
            raise ConfigError(f"cannot open storage {url!r}: {e}; use journal:///<writable path>") from None
        except (ValueError, TypeError, KeyError, AssertionError, AttributeError) as e:
            # a line that is not JSON (Optuna forgives only a cut-off last line), or JSON that is not an operation
            raise ConfigError(
                f"{path} is damaged ({one_line(e)[:120]}); nothing was read from it. Restore it from a backup, "
                "or cut the file before its first damaged line (every line is one JSON operation)"
            ) from None
    check_sqlite(url)
    path = sqlite_path(url)
    if path is not None and path.is_dir():  # SQLite says only "unable to open database file"
        raise ConfigError(f"{path} is a directory, not a study file; give sqlite:///{path}/study.db or another file")
    kw: dict[str, Any] = {}
    full = _with_installed_driver(url)
    if full.startswith("sqlite"):
        kw["engine_kwargs"] = {"connect_args": {"timeout": 120}}  # several workers on one file wait, not fail
    elif full.startswith("postgresql"):
        kw["engine_kwargs"] = {"connect_args": {"connect_timeout": 15}, "pool_pre_ping": True}  # fail, not hang
    if heartbeat > 0:
        kw.update(heartbeat_interval=heartbeat, grace_period=max(grace, 2 * heartbeat))
        callback_kw, callback = liveness.stale_retry(retries)
        kw[callback_kw] = callback
    err: BaseException | None = None
    for attempt in range(10):
        try:
            return optuna.storages.RDBStorage(full, **kw)
        except Exception as e:
            if attempt < 9 and _schema_race(e):  # another process is creating the same schema right now
                time.sleep(random.uniform(0.05, 0.2) * (attempt + 1))
                continue
            err = e
            break
    why = re.sub(r"\s*\(Background on this error at: \S+\)", "", one_line(err))[:300]
    full_disk = disk_full(err, f"storage '{mask_url(url)}'")
    if full_disk is not None:
        raise ConfigError(full_disk) from None
    if full.startswith("sqlite"):  # a local file: no server to reach
        raise ConfigError(
            f"cannot open storage '{mask_url(url)}': {why}; check that the path is a file you can write "
            "(e.g. sqlite:///study.db) and that its directory exists"
        ) from None
    raise ConfigError(
        redact(
            f"cannot open storage '{mask_url(url)}': {why}; check the URL (e.g. sqlite:///study.db or "
            f"postgresql://user:pw@host/db) and that the server is reachable"
        )
    ) from None


def _sampler() -> Any:
    """Every point is enqueued with fixed params, so the sampler draws nothing; Optuna's default (TPE) would
    still be built and warn. A stability study must see every point; the one pruner (bnexp.sweep.pruner, set by
    the worker) stops only trials that cannot end stable."""
    import optuna

    return optuna.samplers.RandomSampler(seed=0)


def load_study(url: str, name: str, sw: DictConfig | None = None) -> Any:
    """An existing study, or a ConfigError naming the studies that are there."""
    import optuna

    # reading never writes: opening a SQLite file or a journal that is not there would create it (and its dirs)
    path = sqlite_path(url) or (Path(url[len("journal://") :]) if url.startswith("journal://") else None)
    if path is not None and not path.is_file():
        raise ConfigError(f"no study storage at {path}; give the sweep's dir or its --storage URL")
    storage = make_storage(url, sw.heartbeat if sw else 0, sw.grace if sw else 0, sw.retries if sw else 0)
    try:
        return optuna.load_study(study_name=name, storage=storage, sampler=_sampler())
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(storage)) or "none"
        raise ConfigError(
            redact(f"no study {name!r} in {url}; studies there: {names} (run the sweep first, or fix the name)")
        ) from None


def open_study(
    study_name: str, sw: DictConfig, spec_record: dict, h: str, url: str, wait_s: float = 60.0
) -> tuple[Any, bool]:
    """(study, created): load or create the study; its creator enqueues every design point once, then records
    the spec.

    `spec_record` (the resolved spec, no secrets) and `h` (spec_hash) are stored as study user attrs; a study
    of the same name with another spec_hash is refused, naming the fix."""
    import optuna

    storage = make_storage(url, sw.heartbeat, sw.grace, sw.retries)
    created = False
    try:
        study = optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler())
    except KeyError:
        try:
            study = optuna.create_study(
                study_name=study_name, storage=storage, sampler=_sampler(), direction="maximize"
            )
            # first: a half-made study names the spec it was being made for, and by whom (host:pid)
            study.set_user_attr(CREATING, {"spec_hash": h, "by": _this_process()})
            created = True
        except optuna.exceptions.DuplicatedStudyError:  # another worker created it first
            study = optuna.load_study(study_name=study_name, storage=storage, sampler=_sampler())
    old = study.user_attrs.get("spec_hash")
    if old is None and not created:
        _refuse_half_made(study, sw, h)
        old = _wait_for_spec(study, wait_s)  # its creator is still enqueueing the design
    if old is None:  # we created it (or its creator died before finishing): plan the design
        pts = design(sw)
        have = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False)}
        for p in pts:
            if p["key"] in have:
                continue
            params = {**p["variant"], "seed": p["seed"], LR_PARAM: p["lr"]}
            study.enqueue_trial(params, user_attrs={"key": p["key"], "attempt": 0})
        study.set_metric_names([VAL_ACC])  # optuna-dashboard and `optuna trials` name the objective
        # the whole spec (~2 KB) is a system attr, so that `optuna studies` stays readable; the user attrs keep
        # what a person looks for there: the rule, the design's size and the spec's hash
        liveness.set_study_system_attr(study, "bnexp:spec", json.loads(json.dumps(spec_record, default=str)))
        study.set_user_attr("rule", dict(spec_record["sweep"].get("rule") or {}))
        study.set_user_attr("design_size", len(pts))
        study.set_user_attr("spec_hash", h)  # last: a study with a spec_hash has its whole design enqueued
        log.info("created study %s with %d points", study_name, len(pts))
    elif old != h:
        raise ConfigError(
            f"study {study_name!r} already exists in this storage with a different spec (its grid, lr range, "
            f"seeds or training settings differ); use sweep.name=<new name> to start another study"
        )
    return study, created


def _refuse_half_made(study: Any, sw: DictConfig, h: str) -> None:
    """A study whose creation was cut off (Ctrl-C, kill) holds part of one spec's design: it is finished only
    under that same spec, never adopted by another (one spec per study)."""
    making = (liveness.study_user_attrs(study).get(CREATING) or {}).get("spec_hash")
    have = {t.user_attrs.get("key") for t in study.get_trials(deepcopy=False)}
    n = len(have)
    # no mark (an older bnexp made it): adopted only if every point it holds is one of this spec's
    whole = sw.copy()
    whole.lr.coarse = "all"  # an older bnexp enqueued the whole coarse grid: its points are this spec's too
    if (making is not None and making != h) or (making is None and not have <= {p["key"] for p in design(whole)}):
        raise ConfigError(
            f"study {study.study_name!r} was left half-made ({n} points enqueued, no recorded spec) by a "
            "command with a different spec; rerun that command to finish it, or use sweep.name=<new name> "
            "(or delete it: optuna delete-study --study-name NAME --storage URL)"
        )


def _this_process() -> str:
    import socket

    return f"{socket.gethostname()}:{os.getpid()}"


def _creator_is_gone(study: Any) -> bool:
    """The study's creator ran on this host and its process is gone: nothing will finish the design but us."""
    import socket

    by = str((liveness.study_user_attrs(study).get(CREATING) or {}).get("by", ""))
    host, _, pid = by.rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's process, or an older bnexp: wait for it
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False
    return False


def _wait_for_spec(study: Any, wait_s: float) -> str | None:
    if _creator_is_gone(study):
        log.warning("study %s was left half-made by a stopped command; planning its missing points", study.study_name)
        return None
    log.warning(
        "study %s is being created by another worker (or its creation was cut off); waiting up to %.0f s for "
        "its design, then planning the missing points here", study.study_name, wait_s
    )  # fmt: skip
    deadline = time.monotonic() + wait_s
    while time.monotonic() < deadline:
        old = liveness.study_user_attrs(study).get("spec_hash")
        if old is not None:
            return old
        if _creator_is_gone(study):  # it stopped while we waited
            return None
        time.sleep(0.5)
    log.warning(
        "study %s has no recorded spec after %.0f s; planning its missing points here", study.study_name, wait_s
    )
    return None


def spec_record(study_name: str, sw: DictConfig, base: DictConfig) -> dict:
    """What a study records about itself: the resolved sweep node (storage left out: it may hold a password,
    and it is where the record lives) and the trials' training config."""
    s = OmegaConf.to_container(sw, resolve=True)
    for k in ("storage", "action", "max_trials", "progress"):
        s.pop(k, None)
    return {"study": study_name, "sweep": s, "train": OmegaConf.to_container(base, resolve=True)}
