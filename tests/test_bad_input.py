"""Every bad input a user can give the three CLIs: one line `bnexp: error: ...` that names the fix, exit status 2,
no traceback, and nothing finished lost (an earlier run's files, a finished sweep's study and report)."""

import csv
import gzip
import hashlib
import json
import logging
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import REPO, TINY
from helpers.sweeps import run_sweep

import bnexp.core.data
from bnexp import report, run, status
from bnexp.sweep import app as sweep

TRAIN = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every"))]
TRAIN += ["trainer.max_steps=6", "trainer.val_every=3"]
LABELS = "t10k-labels-idx1-ubyte.gz"


def sweep_args(out: Path, *extra: str) -> list[str]:
    return [
        f"sweep.out_dir={out}",
        "sweep.name=t",
        "sweep.grid.model.bn=[pre]",
        "sweep.lr.points=2",
        "sweep.seeds=[0]",
        "sweep.jobs=1",  # one worker: these tests watch (and stop, and patch) the worker in this process
        "sweep.lr.low=1e-3",
        "sweep.lr.high=1e-2",
        "sweep.progress=false",
        *TRAIN,
        *extra,
    ]


@pytest.fixture(autouse=True)
def _restore_logging(monkeypatch):
    # sweep.main() calls logging.basicConfig, which would bind a handler to pytest's per-test captured
    # stderr and leave it on the root logger, closed, for the tests after these
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))


@pytest.fixture(scope="module")
def finished_sweep(tmp_path_factory) -> Path:
    """A real, finished 2-trial sweep (SQLite study + report); each case works on a copy."""
    out = tmp_path_factory.mktemp("finished") / "sw"
    run_sweep(sweep_args(out))
    assert (out / "summary.json").is_file()
    return out


# ---- data dirs ----------------------------------------------------------------------------------
def _data_dir(tmp: Path, mnist: Path, labels: bytes | None) -> Path:
    """The real files (symlinked), with the test-labels file replaced by `labels` (None: missing)."""
    d = tmp / "data"
    d.mkdir()
    for f in bnexp.core.data.FILES.values():
        if f[0] != LABELS:
            (d / f[0]).symlink_to(mnist / f[0])
    if labels is not None:
        (d / LABELS).write_bytes(labels)
    return d


def three_of_four(tmp, mnist, **_):
    return _data_dir(tmp, mnist, None)


def truncated_gz(tmp, mnist, **_):
    return _data_dir(tmp, mnist, (mnist / LABELS).read_bytes()[:1000])


def wrong_checksum(tmp, mnist, **_):
    raw = bytearray(gzip.decompress((mnist / LABELS).read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # a valid label, a valid gzip, the right size: only the MD5 tells
    return _data_dir(tmp, mnist, gzip.compress(bytes(raw)))


def unreachable_mirror(tmp, mnist, monkeypatch, **_):
    monkeypatch.setattr(bnexp.core.data, "MIRRORS", ["http://127.0.0.1:9/"])  # port 9: connection refused
    return three_of_four(tmp, mnist)


def bad_spec_file(tmp, mnist, **_):
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "bad.yaml").write_text("grid: {model.bn: [off, pre]\nlr: [")
    return tmp


def regular_file(tmp, mnist, **_):
    """`{tmp}/afile`: a regular file where a command is told to make a directory under it."""
    (tmp / "afile").write_text("not a directory\n")
    return tmp


# ---- damaged sweep dirs: a copy of the finished sweep at {tmp}/damaged, one file spoiled --------------
def _damaged(tmp, finished, name: str, spoil) -> Path:
    d = tmp / "damaged"
    shutil.copytree(finished, d)
    meta = json.loads((d / "sweep.json").read_text())  # its own study.db, as a sweep run in that dir records
    (d / "sweep.json").write_text(json.dumps({**meta, "storage": f"sqlite:///{d / 'study.db'}"}))
    spoil(d / name)
    return d


def _integrity(db: Path) -> str:
    try:
        with sqlite3.connect(db) as c:
            return c.execute("PRAGMA integrity_check").fetchone()[0]
    except sqlite3.DatabaseError as e:
        return str(e)


def garbled_db(tmp, mnist, finished, **_):
    """Real pages in the middle of a real study.db overwritten: SQLite's integrity_check fails."""

    def spoil(db: Path) -> None:
        b = bytearray(db.read_bytes())
        mid = len(b) // 2 // 4096 * 4096
        b[mid : mid + 4 * 4096] = bytes([0xA5]) * 4 * 4096
        db.write_bytes(bytes(b))
        assert _integrity(db) != "ok"  # the damage is real, whatever pages it hit

    return _damaged(tmp, finished, "study.db", spoil)


def truncated_db(tmp, mnist, finished, **_):
    return _damaged(tmp, finished, "study.db", lambda db: db.write_bytes(db.read_bytes()[: db.stat().st_size // 2]))


def not_a_db(tmp, mnist, finished, **_):
    return _damaged(tmp, finished, "study.db", lambda db: db.write_bytes(b"not a database, just text\n" * 400))


def garbled_journal(tmp, mnist, finished, **_):
    """The finished study copied into an Optuna journal file (the real one), then a line in its middle garbled."""
    import optuna
    from optuna.storages.journal import JournalFileBackend

    d = tmp / "damaged"
    d.mkdir()
    journal = optuna.storages.JournalStorage(JournalFileBackend(str(d / "study.log")))
    optuna.copy_study(from_study_name="t", from_storage=f"sqlite:///{finished}/study.db", to_storage=journal)
    lines = (d / "study.log").read_bytes().splitlines(keepends=True)
    lines[len(lines) // 2] = b'{"op_code": 5, "worker_id": "w", garbled\n'
    (d / "study.log").write_bytes(b"".join(lines))
    return d


def truncated_sweep_json(tmp, mnist, finished, **_):
    return _damaged(tmp, finished, "sweep.json", lambda f: f.write_bytes(f.read_bytes()[:20]))


def garbled_sweep_json(tmp, mnist, finished, **_):
    return _damaged(tmp, finished, "sweep.json", lambda f: f.write_bytes(b"\x00\xff\xfe" * 30))


SECRET = "Zq1%40s:l#a sh9"  # a storage password (`@` percent-encoded): it must never be printed


def secret_env(tmp, mnist, monkeypatch, **_):
    monkeypatch.setenv("BNEXP_STORAGE", f"postgresql://u:{SECRET}/x@127.0.0.1:1/x")
    return tmp


def foreign_db(tmp, mnist, **_):
    """{tmp}/damaged/app.db: another program's SQLite database (checked byte for byte afterwards)."""
    d = tmp / "damaged"
    d.mkdir()
    with sqlite3.connect(d / "app.db") as c:
        c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        c.execute("INSERT INTO customers (name) VALUES ('ada')")
    return d


def _file_in_damaged(name: str, data: bytes):
    def setup(tmp, mnist, **_):
        d = tmp / "damaged"
        d.mkdir(exist_ok=True)
        (d / name).write_bytes(data)
        return d

    return setup


def dir_at_study_db(tmp, mnist, **_):
    (tmp / "damaged" / "dbdir" / "study.db").mkdir(parents=True)
    return tmp / "damaged"


def no_study_db(tmp, mnist, finished, **_):
    """A finished sweep dir whose study.db is gone (a read-only command must not create an empty one)."""
    d = _damaged(tmp, finished, "study.db", lambda db: db.unlink())
    return d


def empty_damaged(tmp, mnist, **_):
    (tmp / "damaged").mkdir()
    return tmp / "damaged"


RUN_DIR = ["hydra.run.dir={tmp}/run"]  # an earlier, finished run lives there (seeded below)
FRESH = ["hydra.run.dir={tmp}/fresh"]  # a new run dir: the check under test is met before any earlier run's
WANDB = ["logger=wandb", "logger.mode=offline"]
DATA = ["data.dir={data}", "data.download=false"]

# id: (cli, args, in-process?, setup, [what the line must say: the problem, then the fix])
CASES = {
    "unknown-key": ("run", ["model.bm=pre"], False, None, ["unknown config key 'model.bm'", "valid keys under model"]),
    "unknown-key-sweep": ("sweep", ["model.bm=pre"], True, None, ["'model.bm'", "valid keys under model: depth"]),
    "bad-variant": ("run", ["model.bn=foo"], True, None, ["model.bn='foo' is not allowed", "choose one of: off, pre"]),
    "bad-variant-sweep": ("sweep", ["sweep.grid.model.bn=[off,foo]"], True, None, ["'foo'", "choose one of"]),
    "bad-type": ("run", ["model.depth=abc"], True, None, ["model.depth=abc", "could not be converted to Integer"]),
    "bad-group": ("run", ["optim=adamw"], True, None, ["optim/adamw", "Available options in 'optim': adam sgd"]),
    "depth-0": ("run", ["model.depth=0"], True, None, ["model.depth=0 must be >= 1", "model.depth=19"]),
    "lr-negative": ("run", ["optim.lr=-1"], True, None, ["optim.lr=-1.0 must be a positive number", "optim.lr=0.002"]),
    "lr-zero": ("run", ["optim.lr=0"], True, None, ["optim.lr=0.0 must be a positive number", "optim.lr=0.002"]),
    "lr-range": ("sweep", ["sweep.lr.low=1", "sweep.lr.high=0.1"], True, None, ["sweep.lr.low=1.0 must be <", "high"]),
    "lr-range-equal": ("sweep", ["sweep.lr.low=0.1", "sweep.lr.high=0.1"], True, None, ["must be < sweep.lr.high"]),
    "lr-range-negative": ("sweep", ["sweep.lr.low=-1"], True, None, ["must be positive", "sweep.lr.low=1e-5"]),
    "batch-size-0": ("run", ["data.batch_size=0"], True, None, ["data.batch_size=0 must be >= 1", "batch_size=64"]),
    "run-dir-holds-a-finished-run": (
        "run",
        [],
        True,
        None,
        ["already holds a finished run (metrics.json)", "choose another run dir (hydra.run.dir=...)"],
    ),
    "mnist-file-missing": ("run", DATA, True, three_of_four, [f"{LABELS} is missing", "data.download=true"]),
    "mnist-missing-offline": (
        "run",
        ["data.dir={data}", "data.download=true"],
        True,
        unreachable_mirror,
        [f"could not download MNIST file {LABELS}", "put the four files in"],
    ),
    "mnist-truncated": ("run", DATA, True, truncated_gz, ["is truncated or not valid gzip", "to re-download it"]),
    "mnist-checksum": ("run", DATA, True, wrong_checksum, ["md5 of decompressed content", "to re-download it"]),
    "data-dir-missing": (
        "run",
        ["data.dir={tmp}/no/such/dir", "data.download=false"],
        True,
        None,
        ["does not exist", "set data.dir=... or BNEXP_DATA_DIR"],
    ),
    "storage-malformed": ("sweep", ["sweep.storage=notaurl"], True, None, ["cannot open storage 'notaurl'", "URL"]),
    "storage-unreachable": (
        "sweep",
        ["sweep.storage=postgresql://u:p@127.0.0.1:1/x"],
        True,
        None,
        ["cannot open storage", "server is reachable"],
    ),
    "study-different-spec": ("sweep", ["sweep.lr.points=3"], True, None, ["different spec", "sweep.name=<new name>"]),
    "spec-does-not-parse": (
        "sweep",
        ["--config-dir", "{data}", "sweep=bad"],
        True,
        bad_spec_file,
        ["bad.yaml, line 2 is not valid YAML", "fix the file"],
    ),
    "spec-not-found": ("sweep", ["sweep=nonexistent"], True, None, ["'sweep/nonexistent'", "lr_stability"]),
    "sampler-removed": ("sweep", ["sweep.sampler=tpe"], True, None, ["unknown config key 'sweep.sampler'", "rule"]),
    "unknown-rule-statistics": (
        "sweep",
        ["sweep.rule.statistics=both"],
        True,
        None,
        ["sweep.rule.statistics='both'", "population, batch"],
    ),
    "report-bad-threshold": (
        "report",
        ["{tmp}/sw", "--threshold", "2", "--out", "{tmp}/rj"],
        True,
        None,
        ["--threshold 2"],
    ),
    "ddp-in-sweep": ("sweep", ["trainer=ddp", "trainer.devices=2"], True, None, ["sweep trials", "more sweep workers"]),
    "bad-flag": ("sweep", ["--max-trials=abc"], True, None, ["--max-trials=abc", "--max-trials=10"]),
    "report-no-sweep-dir": ("report", ["{tmp}/nowhere"], True, None, ["sweep.json not found", "--storage URL"]),
    "report-no-study": (
        "report",
        ["--storage", "SQLITE", "--study-name", "nope"],
        True,
        None,
        ["no study 'nope'", "studies there: t"],
    ),
    "report-bad-storage": (
        "report",
        ["--storage", "notaurl", "--study-name", "t"],
        True,
        None,
        ["cannot open storage"],
    ),
    # ---- values Lightning, torch, numpy or the OS would reject later: a bnexp line first -------------------
    "seed-negative": ("run", ["seed=-1"], True, None, ["seed=-1 must be a whole number in [0, 4294967295]", "seed=0"]),
    "weight-decay-negative": ("run", ["optim.weight_decay=-1"], True, None, ["optim.weight_decay=-1.0", ">= 0"]),
    "sgd-momentum-negative": ("run", ["optim=sgd", "optim.momentum=-1"], True, None, ["optim.momentum=-1.0", "[0, 1)"]),
    "devices-0": ("run", ["trainer.devices=0"], True, None, ["trainer.devices=0", "trainer.devices=1"]),
    "precision-bogus": ("run", ["trainer.precision=bogus"], True, None, ["'bogus' is not allowed", "32-true"]),
    "accelerator-bogus": ("run", ["trainer.accelerator=bogus"], True, None, ["'bogus' is not allowed", "cpu, gpu"]),
    "strategy-bogus": ("run", ["trainer.strategy=bogus"], True, None, ["'bogus' is not allowed", "auto, ddp"]),
    "num-nodes-0": ("run", ["trainer.num_nodes=0"], True, None, ["trainer.num_nodes=0 must be >= 1"]),
    "init-std-negative": ("run", ["model.init_std=-1"], True, None, ["model.init_std=-1.0", "model.init_std=0.05"]),
    "single-n-over-limit-test": (
        "run",
        ["data.single_n=100", "data.limit_test=10"],
        True,
        None,
        ["data.single_n=100", "data.limit_test=10", "lower data.single_n"],
    ),
    "depth-1000": (
        "run",
        ["model.depth=1000"],
        True,
        None,
        ["model.depth=1000 needs about", "GB", "raise trainer.max_memory_gb=", "or lower model.depth"],
    ),
    "run-dir-under-file": (
        "run",
        ["hydra.run.dir={tmp}/afile/run"],
        True,
        regular_file,
        ["{tmp}/afile is a regular file", "hydra.run.dir"],
    ),
    "out-dir-under-file": (
        "sweep",
        ["sweep.out_dir={tmp}/afile/sw"],
        True,
        regular_file,
        ["{tmp}/afile is a regular file", "sweep.out_dir"],
    ),
    "report-out-under-file": (
        "report",
        ["--storage", "SQLITE", "--study-name", "t", "--out", "{tmp}/afile/report"],
        True,
        regular_file,
        ["{tmp}/afile is a regular file", "--out"],
    ),
    "seeds-not-numbers": ("sweep", ["sweep.seeds=[0,abc]"], True, None, ["sweep.seeds=[0, 'abc']", "=[0,1,2]"]),
    "retries-negative": ("sweep", ["sweep.retries=-1"], True, None, ["sweep.retries=-1 must be >= 0", "=2"]),
    "heartbeat-negative": ("sweep", ["sweep.heartbeat=-5"], True, None, ["sweep.heartbeat=-5 must be >= 0", "=10"]),
    "grace-negative": ("sweep", ["sweep.grace=-1"], True, None, ["sweep.grace=-1 must be >= 0", "sweep.grace=40"]),
    "rule-threshold-3": ("sweep", ["sweep.rule.threshold=3"], True, None, ["sweep.rule.threshold=3", "in [0, 1]"]),
    "rule-quorum-7": ("sweep", ["sweep.rule.seed_quorum=7"], True, None, ["sweep.rule.seed_quorum=7", "in (0, 1]"]),
    "rule-epsilon-negative": ("sweep", ["sweep.rule.epsilon=-1"], True, None, ["sweep.rule.epsilon=-1", ">= 0"]),
    "lr-high-inf": ("sweep", ["sweep.lr.high=inf"], True, None, ["sweep.lr.high=inf is not a finite number"]),
    "depth-1000-sweep": ("sweep", ["model.depth=1000"], True, None, ["needs about", "trainer.max_memory_gb="]),
    "report-threshold-3": (
        "report",
        ["--trials", "{tmp}/sw/trials.csv", "--out", "{tmp}/rejudged", "--threshold", "3"],
        True,
        None,
        ["--threshold 3", "in [0, 1]"],
    ),
    # ---- damaged storage and records: refused, naming the file; never a report from part of the data ------
    "report-garbled-db": ("report", ["{data}"], True, garbled_db, ["{data}/study.db is damaged", ".recover"]),
    "report-truncated-db": ("report", ["{data}"], True, truncated_db, ["{data}/study.db is damaged", ".recover"]),
    "report-not-a-db": ("report", ["{data}"], True, not_a_db, ["{data}/study.db is damaged", "not a database"]),
    "report-garbled-journal": (
        "report",
        ["--storage", "journal://{data}/study.log", "--study-name", "t", "--out", "{data}"],
        True,
        garbled_journal,
        ["{data}/study.log is damaged", "cut the file before its first damaged line"],
    ),
    "sweep-garbled-db": ("sweep", ["sweep.out_dir={data}"], True, garbled_db, ["{data}/study.db is damaged"]),
    "report-truncated-sweep-json": (
        "report",
        ["{data}"],
        True,
        truncated_sweep_json,
        ["{data}/sweep.json is damaged", "--storage sqlite:///{data}/study.db"],
    ),
    "report-garbled-sweep-json": ("report", ["{data}"], True, garbled_sweep_json, ["{data}/sweep.json is damaged"]),
    # ---- second round (#18): settings Lightning or W&B refuse here, one line from the error layer -------------
    "strategy-deepspeed": ("run", [*FRESH, "trainer.strategy=deepspeed"], True, None, ["refuses", "deepspeed"]),
    "strategy-fsdp-on-cpu": ("run", [*FRESH, "trainer.strategy=fsdp"], True, None, ["refuses", "requires a GPU"]),
    "accelerator-tpu": ("run", [*FRESH, "trainer.accelerator=tpu"], True, None, ["refuses this config", "torch_xla"]),
    "wandb-project-slash": ("run", [*FRESH, *WANDB, "logger.project=a/b"], True, None, ["wandb refuses", "'a/b'"]),
    "wandb-project-colon": ("run", [*FRESH, *WANDB, "logger.project=a:b"], True, None, ["wandb refuses", "project"]),
    "wandb-run-id-slash": ("run", [*FRESH, *WANDB, "logger.run_id=a/b"], True, None, ["wandb refuses", "Run ID"]),
    "data-dir-empty": ("run", ["data.dir="], True, None, ["data.dir='' names no directory", "data.dir=null"]),
    "landscape-scales-empty": (
        "run",
        [*FRESH, "logger=csv", "logger.landscape_every=1", "logger.landscape_scales=[]"],
        True,
        None,
        ["logger.landscape_scales=[] gives the landscape probe nothing", "logger.landscape_every=0"],
    ),
    "run-dir-under-proc": ("run", ["hydra.run.dir=/proc/bnexp/run"], True, None, ["/proc is on a proc file system"]),
    "out-dir-under-proc": ("sweep", ["sweep.out_dir=/proc/bnexp/sw"], True, None, ["/proc is on a proc", "out_dir"]),
    # ---- storages that would poison a study or another program's data ----------------------------------------
    "storage-in-memory": ("sweep", ["sweep.storage=sqlite://"], True, None, ["in-memory database", "sqlite:///"]),
    "storage-memory-file": ("sweep", ["sweep.storage=sqlite:///:memory:"], True, None, ["in-memory database"]),
    "storage-foreign-sqlite": (
        "sweep",
        ["sweep.storage=sqlite:///{data}/app.db"],
        True,
        foreign_db,
        ["{data}/app.db is not an Optuna study file", "nothing was written to it"],
    ),
    "report-foreign-sqlite": (
        "report",
        ["--storage", "sqlite:///{data}/app.db", "--study-name", "t", "--out", "{tmp}/rep"],
        True,
        foreign_db,
        ["{data}/app.db is not an Optuna study file"],
    ),
    "storage-dir-at-study-db": (
        "sweep",
        ["sweep.storage=sqlite:///{data}/dbdir/study.db"],
        True,
        dir_at_study_db,
        ["{data}/dbdir/study.db is a directory", "sqlite:///{data}/dbdir/study.db/study.db"],
    ),
    "report-journal-op-999": (
        "report",
        ["--storage", "journal://{data}/j.log", "--study-name", "t", "--out", "{tmp}/rep"],
        True,
        _file_in_damaged("j.log", b'{"op_code": 999}\n'),
        ["{data}/j.log is damaged", "cut the file"],
    ),
    "report-journal-a-list": (
        "report",
        ["--storage", "journal://{data}/j.log", "--study-name", "t", "--out", "{tmp}/rep"],
        True,
        _file_in_damaged("j.log", b"[1,2,3]\n"),
        ["{data}/j.log is damaged"],
    ),
    # ---- names that would escape outputs/sweeps/, a grid axis without + ---------------------------------
    "name-dotdot": ("sweep", ["sweep.name=.."], True, None, ["sweep.name='..' is not a usable study name"]),
    "name-with-slash": ("sweep", ["sweep.name=a/b"], True, None, ["sweep.name='a/b'", "use letters, digits"]),
    "study-escapes": ("sweep", ["sweep.study=../x"], True, None, ["sweep.study='../x' is not a usable study name"]),
    "grid-axis-without-plus": (
        "sweep",
        ["sweep.grid.data.batch_size=[32,64]"],
        True,
        None,
        ["sweep.grid.data.batch_size is not an axis", "+sweep.grid.data.batch_size=[...]"],
    ),
    # ---- report --trials input that is not a sweep's trials.csv ------------------------------------------
    "report-trials-not-utf8": (
        "report",
        ["--trials", "{data}/t.csv", "--out", "{tmp}/rep"],
        True,
        _file_in_damaged("t.csv", b"lr,state\n\xff\xfe,1\n"),
        ["{data}/t.csv is not a trials.csv", "utf-8"],
    ),
    "report-trials-foreign-csv": (
        "report",
        ["--trials", "{data}/t.csv", "--out", "{tmp}/rep"],
        True,
        _file_in_damaged("t.csv", b"x,y\n1,2\n"),
        ["{data}/t.csv has no column lr, state, val/acc", "--variant-keys"],
    ),
    "report-trials-empty-csv": (
        "report",
        ["--trials", "{data}/t.csv", "--out", "{tmp}/rep"],
        True,
        _file_in_damaged("t.csv", b""),
        ["has no column lr", "no rows"],
    ),
    "report-unknown-variant-keys": (
        "report",
        ["--trials", "{tmp}/sw/trials.csv", "--out", "{tmp}/rep", "--variant-keys", "bn,width"],
        True,
        None,
        ["trials.csv has no column width", "--variant-keys from its columns"],
    ),
    # ---- read-only commands on a dir without its storage: refused, nothing created ------------------------
    "report-study-db-missing": ("report", ["{data}"], True, no_study_db, ["no study storage at {data}/study.db"]),
    "status-study-db-missing": ("status", ["{data}"], True, no_study_db, ["no study storage at {data}/study.db"]),
    "status-journal-missing": (
        "status",
        ["--storage", "journal://{data}/new/study.log", "--study-name", "t"],
        True,
        empty_damaged,
        ["no study storage at {data}/new/study.log"],
    ),
    "report-journal-missing": (
        "report",
        ["--storage", "journal://{data}/new/study.log", "--study-name", "t", "--out", "{tmp}/rep"],
        True,
        empty_damaged,
        ["no study storage at {data}/new/study.log"],
    ),
    "report-only-study-db-missing": (
        "sweep",
        ["sweep.out_dir={data}", "--report-only"],
        True,
        no_study_db,
        ["no study storage at {data}/study.db"],
    ),
    "sweep-journal-not-a-journal": (
        "sweep",
        ["sweep.storage=journal://{data}/j.log"],
        True,
        _file_in_damaged("j.log", b"hello, not a journal\n"),
        ["{data}/j.log is damaged", "every line is one JSON operation"],
    ),
    "report-in-memory": ("report", ["--storage", "sqlite://", "--study-name", "t"], True, None, ["in-memory"]),
    "status-in-memory": ("status", ["--storage", "sqlite://", "--study-name", "t"], True, None, ["in-memory"]),
    "storage-dir-missing": (
        "sweep",
        ["sweep.storage=sqlite:///{tmp}/no/such/study.db"],
        True,
        None,
        ["unable to open database file", "that its directory exists"],
    ),
    "jobs-0-before-the-study": ("sweep", ["sweep.out_dir={tmp}/fresh", "sweep.jobs=0"], True, None, ["sweep.jobs=2"]),
    "report-out-under-proc": (
        "report",
        ["--trials", "{tmp}/sw/trials.csv", "--out", "/proc/bnexp/rep"],
        True,
        None,
        ["/proc is on a proc file system", "set --out"],
    ),
    "report-trials-a-directory": ("report", ["--trials", "{tmp}", "--out", "{tmp}/rep"], True, None, ["not found"]),
    # ---- a storage password is never printed, whatever it holds and wherever it comes from --------------
    "password-with-slash-unreachable": (
        "sweep",
        [f"sweep.storage='postgresql://u:{SECRET}/x@127.0.0.1:1/x'"],
        True,
        None,
        ["cannot open storage 'postgresql://u:***@127.0.0.1:1/x'", "server is reachable"],
    ),
    "password-in-env-unreachable": ("sweep", [], True, secret_env, ["'postgresql://u:***@127.0.0.1:1/x'"]),
    "password-driver-missing": (
        "sweep",
        [f"sweep.storage='mysql://u:{SECRET}/p@127.0.0.1:1/db'"],
        True,
        None,
        ["cannot open storage 'mysql://u:***@127.0.0.1:1/db'", "install"],
    ),
    "wandb-project-question-mark": ("run", [*FRESH, *WANDB, "logger.project=a?b"], True, None, ["wandb refuses"]),
    "wandb-run-id-colon": ("run", [*FRESH, *WANDB, "logger.run_id=a:b"], True, None, ["wandb refuses", "Run ID"]),
    "status-no-study": ("status", ["--storage", "SQLITE", "--study-name", "nope"], True, None, ["no study 'nope'"]),
}


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(case, tmp_path, finished_sweep, mnist_dir, monkeypatch, capsys):
    cli, args, inproc, setup, needles = CASES[case]
    data = tmp_path
    if setup is not None:
        data = setup(tmp_path, mnist_dir, monkeypatch=monkeypatch, finished=finished_sweep)
    # what is finished before the bad command: an earlier run, and a whole sweep (study + report)
    sw = tmp_path / "sw"
    shutil.copytree(finished_sweep, sw)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"val/acc": 0.97}')
    (run_dir / "config.yaml").write_text("model: {bn: pre}\n")
    damaged = tmp_path / "damaged"  # a damaged sweep is refused, not rebuilt from what is left of it
    before = {"sw": _digest(sw), "run": _digest(run_dir), "damaged": _digest(damaged)}
    paths = sorted(str(p) for p in damaged.rglob("*"))  # a read-only command makes no file and no directory
    sqlite = f"sqlite:///{sw}/study.db"
    args = [a.format(tmp=tmp_path, data=data).replace("SQLITE", sqlite) for a in args]
    needles = [n.format(tmp=tmp_path, data=data) for n in needles]
    if cli == "run":
        run_dir_arg = [] if any(a.startswith("hydra.run.dir=") for a in args) else RUN_DIR
        args = [*TRAIN, *run_dir_arg, *args]
        args = [a.format(tmp=tmp_path) for a in args]
    elif cli == "sweep":
        args = sweep_args(sw, *args)

    if inproc:
        main = {"run": run.main, "sweep": sweep.main, "report": report.main, "status": status.main}[cli]
        monkeypatch.setattr(sys, "argv", [f"bnexp.{cli}", *args])
        with pytest.raises(SystemExit) as e:
            main() if cli == "run" else main(args)
        code, err = e.value.code, capsys.readouterr().err
    else:
        r = subprocess.run(
            [sys.executable, "-m", f"bnexp.{cli}", *args], cwd=REPO, capture_output=True, text=True, timeout=120
        )
        code, err = r.returncode, r.stderr

    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    errors = [ln for ln in lines if ln.startswith("bnexp: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0], err  # one line, the last thing said
    assert not any("Error executing job" in ln for ln in lines), err  # Hydra's own line stays unsaid
    print(f"\n[{case}] exit {code}: {errors[0]}")  # pytest -s lists every message
    for n in needles:
        assert n in errors[0], (n, errors[0])
    assert "Zq1" not in err and "s:l#a" not in err  # no storage password, in any form
    assert not (tmp_path / "fresh" / "study.db").exists()  # a refused sweep created no study
    # nothing finished lost: the earlier run's files and the finished sweep are byte for byte the same
    # (Hydra may add its own bookkeeping, .hydra/ and run.log, to the run dir it was pointed at)
    after = _digest(run_dir)
    assert {k: after.get(k) for k in before["run"]} == before["run"]
    assert all(k.startswith(".hydra/") or k == "run.log" for k in set(after) - set(before["run"])), after
    assert _digest(sw) == before["sw"]
    assert _digest(damaged) == before["damaged"]
    if cli in ("report", "status") or "--report-only" in args:
        assert sorted(str(p) for p in damaged.rglob("*")) == paths


def test_bad_value_leaves_no_empty_run_dir(tmp_path, capsys, monkeypatch):
    # a value error is found inside the Hydra job, after Hydra made the run dir: that dir goes again
    monkeypatch.setattr(sys, "argv", ["bnexp.run", *TRAIN, f"hydra.run.dir={tmp_path}/fresh", "model.depth=0"])
    with pytest.raises(SystemExit) as e:
        run.main()
    assert e.value.code == 2 and "model.depth=0" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()


def test_a_path_error_names_what_blocks_it(tmp_path):
    """The OS's own errors, as Hydra meets them making a run dir and opening its log file there."""
    import logging.config
    import os

    from bnexp.cli import dir_problem, explain_os_error

    (tmp_path / "afile").write_text("x")
    assert dir_problem(tmp_path / "new" / "deep") is None and dir_problem(tmp_path) is None
    assert dir_problem(tmp_path / "afile" / "run") == f"{tmp_path}/afile is a regular file"
    with pytest.raises(OSError) as mkdir:  # Hydra: Path(run_dir).mkdir(parents=True, exist_ok=True)
        Path(tmp_path / "afile" / "run").mkdir(parents=True, exist_ok=True)
    with pytest.raises(ValueError) as handler:  # Hydra: its file handler at <run dir>/<job>.log
        logging.config.dictConfig(
            {
                "version": 1,
                "handlers": {"file": {"class": "logging.FileHandler", "filename": f"{tmp_path}/afile/x.log"}},
            }
        )
    for e in (mkdir.value, handler.value):
        assert explain_os_error(e, "hydra.run.dir") == (
            f"cannot write {tmp_path}/afile/{'run' if e is mkdir.value else 'x.log'}: {tmp_path}/afile is a regular "
            "file; set hydra.run.dir to a directory you can write"
        )
    assert explain_os_error(ValueError("a bug"), "k") is None  # not a path: a crash keeps its traceback
    assert explain_os_error(FileNotFoundError(2, os.strerror(2), "/x"), "k") is None


@pytest.mark.parametrize(
    "args", [["bnexp.run", "seed=-1"], ["bnexp.sweep", "sweep=lr_stability", "sweep.lr.high=inf"]], ids=["run", "sweep"]
)
def test_a_bad_value_is_refused_before_torch_is_imported(args):
    # a typo answers in under a second: checking a config needs no torch, Lightning or W&B
    from helpers.env import child_env

    r = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", *args], cwd=REPO, env=child_env(), capture_output=True, text=True
    )
    assert r.returncode == 2, r.stderr[-2000:]
    imported = {line.rsplit("|", 1)[-1].strip() for line in r.stderr.splitlines() if line.startswith("import time:")}
    assert "omegaconf" in imported  # the import log was read
    assert not imported & {"torch", "lightning", "wandb"}, sorted(imported & {"torch", "lightning", "wandb"})


@pytest.mark.slow
def test_a_refused_multirun_rerun_names_the_sweep_dir_and_tables_every_job(tmp_path):
    """A -m rerun into a multirun dir trains its new job, then meets a job dir that holds a finished run: exit 2,
    one line naming hydra.sweep.dir (not hydra.run.dir); the finished run is untouched; and summary.csv lists
    every job dir there, the one just trained included (it kept the old command's table before)."""
    multi = tmp_path / "multi"

    def run(depths: str) -> subprocess.CompletedProcess:
        args = ["-m", *TRAIN, f"model.depth={depths}", f"hydra.sweep.dir={multi}"]
        return subprocess.run([sys.executable, "-m", "bnexp.run", *args], cwd=REPO, capture_output=True, text=True)

    first = run("3,2")  # jobs 0 (depth 3) and 1 (depth 2)
    assert first.returncode == 0, first.stderr[-2000:]
    done = {p: p.read_bytes() for p in multi.rglob("metrics.json")}
    again = run("4,2")  # job 0 (depth 4) is new and trains; job 1 (depth 2) is the finished run
    line = again.stderr.strip().splitlines()[-1]
    assert again.returncode == 2 and "Traceback" not in again.stderr, again.stderr[-2000:]
    assert "already holds a finished run" in line and "hydra.sweep.dir=" in line and "hydra.run.dir" not in line
    assert done and all(p.read_bytes() == b for p, b in done.items())
    with open(multi / "summary.csv") as f:
        jobs = {(r["job"].split("_")[0], int(r["depth"])) for r in csv.DictReader(f)}
    assert jobs == {("0", 3), ("1", 2), ("0", 4)}, jobs
