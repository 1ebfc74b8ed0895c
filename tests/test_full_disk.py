"""A report rebuilt when the disk fills up (`ulimit -f`: real EFBIG, SIGXFSZ ignored) or killed -9 in the middle
of writing: every result file written before stays whole. Full disk: exit 2, one line, every file byte for byte
as before. kill -9: every file parses and is either the one before or the complete new one, never a cut-off mix.

The sweep: one variant at depths 2, 3, 4 (several depths, so heatmap.png is written too). Its files on disk are
report A (after its first two trials); its storage holds all three trials, so a rebuild writes report B."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import REPO, bnexp, child_env
from helpers.sweeps import TRAIN, completed_keys, run_sweep
from PIL import Image

FILES = ("summary.json", "trials.csv", "stability.png", "heatmap.png", "report.md", "sweep.json")


def _args(out: Path) -> list[str]:
    return [
        "sweep=depth_ablation",
        "sweep.name=t",
        f"sweep.out_dir={out}",
        "sweep.grid.model.bn=[pre]",
        "sweep.grid.model.depth=[2,3,4]",
        "sweep.lr.low=1e-3",
        "sweep.lr.high=1e-3",
        "sweep.lr.points=1",
        "sweep.progress=false",
        "sweep.rule.threshold=0.3",
        *[o for o in TRAIN if not o.startswith("model.depth=")],
    ]


def _files(d: Path) -> dict[str, bytes]:
    return {f: (d / f).read_bytes() for f in FILES}


def _restore(d: Path, files: dict[str, bytes]) -> None:
    for f, b in files.items():
        (d / f).write_bytes(b)
    for tmp in d.glob(".*.tmp"):  # a temp file a killed writer left behind
        tmp.unlink()


# bnexp.report as an embedding would start it: with SIGXFSZ back at its default action (kill the process),
# which CPython itself sets to "ignore" at startup
DEFAULT_SIGXFSZ = (
    "import signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_DFL); from bnexp.sweep.report import main; main()"
)


def _report(d: Path, ulimit_kb: int | None = None, sigxfsz_default: bool = False, **kw) -> subprocess.Popen:
    """`python -m bnexp.report D`, under `ulimit -f` when given (bash's unit: 1024 bytes)."""
    cmd = f"exec {sys.executable} -m bnexp.report {d}"
    if sigxfsz_default:
        cmd = f"exec {sys.executable} -c '{DEFAULT_SIGXFSZ}' {d}"
    if ulimit_kb is not None:
        cmd = f"ulimit -f {ulimit_kb}; {cmd}"
    env = child_env(PYTHONDONTWRITEBYTECODE="1")  # no .pyc writes under the limit before bnexp ignores SIGXFSZ
    return subprocess.Popen(["bash", "-c", cmd], cwd=REPO, env=env, text=True, **kw)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory) -> tuple[Path, dict[str, bytes], dict[str, bytes]]:
    """(sweep dir holding report A, A's files, B's files): a real 3-trial sweep, reported after 2 trials."""
    out = tmp_path_factory.mktemp("disk") / "sw"
    run_sweep([*_args(out), "--max-trials=2"])  # report A: depths 2 and 3
    run_sweep([*_args(out), "--no-report"])  # the third trial, in storage only
    a = _files(out)
    p = _report(out, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    b = _files(out)
    assert all(a[f] != b[f] for f in FILES if f != "sweep.json"), "report B must differ from A in every file"
    _restore(out, a)
    return out, a, b


def _parse(d: Path) -> None:
    """Every result file reads as what it claims to be."""
    json.loads((d / "summary.json").read_text())
    json.loads((d / "sweep.json").read_text())
    rows = list(csv.reader(io.StringIO((d / "trials.csv").read_text())))
    assert len(rows) >= 3 and all(len(r) == len(rows[0]) for r in rows), rows
    for png in ("stability.png", "heatmap.png"):
        with Image.open(d / png) as im:
            im.load()  # decodes every pixel: a cut-off PNG raises
    assert (d / "report.md").read_text().startswith("# Stability report")


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    errors = [ln for ln in lines if ln.startswith("bnexp: error: ")]
    assert len(errors) == 1 and lines[-1] == errors[0] and "Traceback" not in err, err
    return errors[0]


@pytest.mark.parametrize(
    "at,sigxfsz_default",
    [("first file", False), ("a figure", False), ("a figure", True)],
    ids=["first", "figure", "figure-sigxfsz-default"],
)
def test_full_disk_leaves_every_file_as_it_was(sweep, at, sigxfsz_default):
    """With SIGXFSZ at its default, only bnexp's own `ignore` keeps the write an error rather than a kill."""
    out, a, _ = sweep
    # a file-size limit under the first file written (trials.csv), or over it and under the figures
    size_kb = {f: len(a[f]) / 1024 for f in FILES}
    limit = int(size_kb["trials.csv"]) // 2 if at == "first file" else int(size_kb["trials.csv"]) + 1
    assert at == "first file" or limit < min(size_kb["stability.png"], size_kb["heatmap.png"])
    _restore(out, a)
    p = _report(out, max(limit, 1), sigxfsz_default, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 2, (p.returncode, err)  # not -25 (killed by SIGXFSZ), not 1 (a traceback)
    line = _one_line(err)
    assert "cannot write" in line and "File too large" in line and str(out) in line, line
    assert _files(out) == a  # byte for byte: nothing earlier lost or cut off
    _parse(out)


def _writing(pid: int, out: Path) -> list[str]:
    """Result files (or their temp files) in `out` that process `pid` has open now (study.db is only read)."""
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return []
    found = []
    for fd in fds:
        try:
            target = Path(os.readlink(f"/proc/{pid}/fd/{fd}"))
        except OSError:  # closed meanwhile
            continue
        if target.parent == out and target.name != "study.db":
            found.append(target.name)
    return found


@pytest.mark.parametrize("target", ["", "png"], ids=["first file", "a figure"])
def test_kill_9_while_writing_leaves_whole_files(sweep, target):
    """SIGKILL the rebuild while it has a result file open (the first one it writes, or a figure): the kill
    lands inside a write, between open and close. Each file is then the one before or the complete new one."""
    out, a, b = sweep
    for _attempt in range(3):  # a write is open for milliseconds: the poll below may miss one; try again
        _restore(out, a)
        p = _report(out, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        caught = []
        while p.poll() is None and not caught:  # busy: no sleep, a write lasts milliseconds
            caught = [f for f in _writing(p.pid, out) if target in f]
        p.kill()
        p.wait(timeout=60)
        if caught:
            break
    assert caught, "the rebuild ended three times before a result file was caught open"
    mixed = {
        f: "A" if (out / f).read_bytes() == a[f] else "B" if (out / f).read_bytes() == b[f] else "?" for f in FILES
    }
    print(f"\nkill -9 while writing {caught}: {mixed}")
    assert "?" not in mixed.values(), mixed  # each file the old one or the complete new one
    _parse(out)


# ---- a full disk under training: bnexp.run, a sweep's SQLite storage, W&B's offline record -------------------
def _limited(limit_kb: int, command: str, *args: str, cwd: Path = REPO) -> subprocess.CompletedProcess:
    """`python -m bnexp.COMMAND ARGS` under `ulimit -f LIMIT_KB` (a real EFBIG on every write past it)."""
    quoted = " ".join(f"'{a}'" for a in args)
    line = f"ulimit -f {limit_kb}; exec {sys.executable} -m bnexp.{command} {quoted}"
    # no W&B settings from earlier in-process runs of this pytest (WANDB_SERVICE: their unlimited service)
    env = {k: v for k, v in child_env(PYTHONDONTWRITEBYTECODE="1").items() if "WANDB" not in k.upper()}
    env["WANDB_MODE"] = "offline"
    return subprocess.run(["bash", "-c", line], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)


SMALL_SWEEP = (
    "sweep=lr_stability", "sweep.name=t", "sweep.grid.model.bn=[pre]", "sweep.seeds=[0]", "sweep.jobs=1",
    "sweep.lr.low=1e-4", "sweep.lr.high=1e-1", "sweep.progress=false", *TRAIN,
)  # fmt: skip


def test_bnexp_run_on_a_full_disk_says_so_in_one_line(tmp_path):
    """The run dir's first files (Hydra's config copies, metrics.json) refused by the disk: exit 2, one line
    naming the full disk and the fix, not a traceback."""
    r = _limited(2, "run", "experiment=smoke", "logger=none", f"hydra.run.dir={tmp_path / 'r'}")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line(r.stderr)
    assert "disk refused a write" in line and "ulimit -f" in line and "File too large" in line, line


def test_a_cut_wandb_offline_record_is_an_error_not_saved(tmp_path):
    """W&B's service writes the .wandb record in its own process: a full disk there never raised in ours, and
    the command said "saved; sync it" over a cut-off record. Now: exit 2, one line; metrics.json is whole."""
    out = tmp_path / "r"
    r = _limited(8, "run", "experiment=smoke", "logger=wandb", f"hydra.run.dir={out}")  # the record: 12-30 KB
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line(r.stderr)
    assert "W&B could not write its offline record" in line and "file too large" in line, line
    assert "upload it with: wandb sync" not in r.stderr
    assert json.loads((out / "metrics.json").read_text())["step"] == 30  # the run's result is kept


def test_a_sweep_whose_storage_fills_up_stops_in_one_line_and_the_rerun_finishes(tmp_path):
    """study.db may not grow past its size after the first trial: a later trial's write fails inside Optuna
    (StorageInternalError around SQLite's "disk I/O error"). One line, exit 2; the rerun trains every point."""
    out = tmp_path / "sw"
    args = [*SMALL_SWEEP, f"sweep.out_dir={out}", "sweep.lr.points=5", "logger=none"]
    first = bnexp("sweep", *args, "--max-trials=1", "--no-report")
    assert first.returncode == 0, first.stderr[-3000:]
    r = _limited((out / "study.db").stat().st_size // 1024, "sweep", *args)
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line(r.stderr)
    assert "disk refused a write" in line and "rerun the same command" in line, line
    again = bnexp("sweep", *args)
    assert again.returncode == 0, again.stderr[-3000:]
    _, done = completed_keys(out)
    assert len(done) == 5 and set(done.values()) == {1}  # every point once


def test_a_sweep_trial_whose_wandb_record_is_cut_gives_its_point_back(tmp_path):
    """A trial's W&B record cut by the disk is the environment's fault, not the trial's result: the worker
    stops in one line (exit 2), the point waits again with no retry spent, and the rerun trains it. (A journal
    storage: it stays far smaller than the 20 KB limit, while the record needs ~30 KB.)"""
    out = tmp_path / "sw"
    args = [*SMALL_SWEEP, f"sweep.out_dir={out}", "sweep.lr.points=1", f"sweep.storage=journal:///{out}/j.log"]
    out.mkdir()
    r = _limited(20, "sweep", *args, "logger=wandb")
    assert r.returncode == 2, r.stderr[-3000:]
    line = _one_line(r.stderr)
    assert "W&B could not write its offline record" in line and "no retry was spent" in line, line
    again = bnexp("sweep", *args, "logger=none")
    assert again.returncode == 0, again.stderr[-3000:]
