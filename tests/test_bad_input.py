"""Every bad input a user can give the three CLIs: one line `bnexp: error: ...` that names the fix, exit status 2,
no traceback, and nothing finished lost (an earlier run's files, a finished sweep's study and report)."""

import gzip
import hashlib
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import REPO, TINY
from helpers.sweeps import run_sweep

import bnexp.core.data
from bnexp import report, run
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


def three_of_four(tmp, mnist):
    return _data_dir(tmp, mnist, None)


def truncated_gz(tmp, mnist):
    return _data_dir(tmp, mnist, (mnist / LABELS).read_bytes()[:1000])


def wrong_checksum(tmp, mnist):
    raw = bytearray(gzip.decompress((mnist / LABELS).read_bytes()))
    raw[100] = (raw[100] + 1) % 10  # a valid label, a valid gzip, the right size: only the MD5 tells
    return _data_dir(tmp, mnist, gzip.compress(bytes(raw)))


def unreachable_mirror(tmp, mnist, monkeypatch):
    monkeypatch.setattr(bnexp.core.data, "MIRRORS", ["http://127.0.0.1:9/"])  # port 9: connection refused
    return three_of_four(tmp, mnist)


def bad_spec_file(tmp, mnist):
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "bad.yaml").write_text("grid: {model.bn: [off, pre]\nlr: [")
    return tmp


RUN_DIR = ["hydra.run.dir={tmp}/run"]  # an earlier, finished run lives there (seeded below)
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
        False,
        None,
        ["does not exist", "set data.dir=... or BNEXP_DATA_DIR"],
    ),
    "storage-malformed": ("sweep", ["sweep.storage=notaurl"], False, None, ["cannot open storage 'notaurl'", "URL"]),
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
    "unknown-sampler": ("sweep", ["sweep.sampler=random"], True, None, ["'random'", "choose one of: grid, tpe"]),
    "ddp-in-sweep": ("sweep", ["trainer=ddp", "trainer.devices=2"], True, None, ["sweep trials", "more sweep workers"]),
    "bad-flag": ("sweep", ["--max-trials=abc"], True, None, ["--max-trials=abc", "--max-trials=10"]),
    "report-no-sweep-dir": ("report", ["{tmp}/nowhere"], True, None, ["sweep.json not found", "--storage URL"]),
    "report-no-study": (
        "report",
        ["--storage", "SQLITE", "--study-name", "nope"],
        False,
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
}


def _digest(d: Path) -> dict[str, str]:
    return {str(p.relative_to(d)): hashlib.md5(p.read_bytes()).hexdigest() for p in sorted(d.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("case", list(CASES), ids=list(CASES))
def test_bad_input(case, tmp_path, finished_sweep, mnist_dir, monkeypatch, capsys):
    cli, args, inproc, setup, needles = CASES[case]
    data = tmp_path
    if setup is unreachable_mirror:
        data = setup(tmp_path, mnist_dir, monkeypatch)
    elif setup is not None:
        data = setup(tmp_path, mnist_dir)
    # what is finished before the bad command: an earlier run, and a whole sweep (study + report)
    sw = tmp_path / "sw"
    shutil.copytree(finished_sweep, sw)
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "metrics.json").write_text('{"val/acc": 0.97}')
    (run_dir / "config.yaml").write_text("model: {bn: pre}\n")
    before = {"sw": _digest(sw), "run": _digest(run_dir)}
    sqlite = f"sqlite:///{sw}/study.db"
    args = [a.format(tmp=tmp_path, data=data).replace("SQLITE", sqlite) for a in args]
    if cli == "run":
        args = [*TRAIN, *RUN_DIR, *args]
        args = [a.format(tmp=tmp_path) for a in args]
    elif cli == "sweep":
        args = sweep_args(sw, *args)

    if inproc:
        main = {"run": run.main, "sweep": sweep.main, "report": report.main}[cli]
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
    print(f"\n[{case}] exit {code}: {errors[0]}")  # pytest -s lists every message
    for n in needles:
        assert n in errors[0], (n, errors[0])
    # nothing finished lost: the earlier run's files and the finished sweep are byte for byte the same
    # (Hydra may add its own bookkeeping, .hydra/ and run.log, to the run dir it was pointed at)
    after = _digest(run_dir)
    assert {k: after.get(k) for k in before["run"]} == before["run"]
    assert all(k.startswith(".hydra/") or k == "run.log" for k in set(after) - set(before["run"])), after
    assert _digest(sw) == before["sw"]


def test_bad_value_leaves_no_empty_run_dir(tmp_path, capsys, monkeypatch):
    # a value error is found inside the Hydra job, after Hydra made the run dir: that dir goes again
    monkeypatch.setattr(sys, "argv", ["bnexp.run", *TRAIN, f"hydra.run.dir={tmp_path}/fresh", "model.depth=0"])
    with pytest.raises(SystemExit) as e:
        run.main()
    assert e.value.code == 2 and "model.depth=0" in capsys.readouterr().err
    assert not (tmp_path / "fresh").exists()
