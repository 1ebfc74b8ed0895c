"""One spec per study, however its creation ends: a `--create-only` killed at random moments while it enqueues
a 300-point design, then rerun with an edited spec (refused, one line) and with the same one (finished). And the
storages that would poison a study or someone else's data: in memory, a foreign SQLite file. A copied sweep dir
reads its own study; -m gives each job its own study, also with an explicit sweep.name."""

import json
import random
import shutil
import signal
import sqlite3
import subprocess
import sys
import time

import optuna
import pytest
from helpers.env import REPO, bnexp, child_env
from helpers.sweeps import sweep_args


def _create(out, points, *extra):
    return [*sweep_args(out, points=points), *extra, "--create-only"]


def _one_spec_per_study(db) -> tuple[int, int]:
    """(trials, design size) of the study in `db`; asserts the study holds exactly one spec's design."""
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{db}")
    attrs, trials = study.user_attrs, study.get_trials()
    keys = [t.user_attrs["key"] for t in trials]
    assert "spec_hash" in attrs and len(keys) == len(set(keys)) == attrs["design_size"], (len(keys), attrs)
    return len(trials), attrs["design_size"]


@pytest.mark.slow
def test_creation_cut_off_at_random_moments_never_mixes_two_specs(tmp_path):
    rng = random.Random(18)
    # the first kill waits until the design is half enqueued (found in the storage); the others land at random
    for i, when in enumerate(["mid-design", rng.uniform(0.5, 4.0)]):
        out = tmp_path / f"sw{i}"
        p = subprocess.Popen(
            [sys.executable, "-m", "bnexp.sweep", *_create(out, 150)],  # off+pre x 150 lrs = 300 points
            cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )  # fmt: skip
        if when == "mid-design":
            deadline = time.time() + 120
            while time.time() < deadline and p.poll() is None:
                try:
                    with sqlite3.connect(out / "study.db", timeout=1) as c:
                        if c.execute("SELECT COUNT(*) FROM trials").fetchone()[0] > 10:
                            break
                except sqlite3.Error:
                    pass
                time.sleep(0.02)
        else:
            time.sleep(when)
        p.send_signal(signal.SIGKILL)
        p.wait()
        edited = bnexp("sweep", *_create(out, 1), timeout=120)  # spec B: 2 points
        if edited.returncode == 2:
            assert "half-made" in edited.stderr or "different spec" in edited.stderr, edited.stderr[-2000:]
            assert "Traceback" not in edited.stderr
            same = bnexp("sweep", *_create(out, 150), timeout=300)  # spec A again: finishes what it began
            assert same.returncode == 0, same.stderr[-2000:]
            assert _one_spec_per_study(out / "study.db") == (300, 300)
        else:  # killed before the study existed: spec B made it, whole
            assert edited.returncode == 0, edited.stderr[-2000:]
            assert _one_spec_per_study(out / "study.db") == (2, 2)
        print(f"\nkill at {when}: edited spec {'refused' if edited.returncode == 2 else 'created the study'}")


@pytest.mark.slow  # the same refusals run in-process by default (test_bad_input: storage-in-memory, ...-foreign-sqlite)
def test_in_memory_and_foreign_sqlite_storages_are_refused_untouched(tmp_path):
    foreign = tmp_path / "app.db"
    with sqlite3.connect(foreign) as c:
        c.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT)")
        c.execute("INSERT INTO customers (name) VALUES ('x')")
    before = foreign.read_bytes()
    for storage, says in [
        ("sqlite://", "in-memory database"),
        ("sqlite:///:memory:", "in-memory database"),
        (f"sqlite:///{foreign}", "is not an Optuna study file"),
    ]:
        r = bnexp("sweep", *sweep_args(tmp_path / "sw"), f"sweep.storage={storage}", timeout=120)
        assert r.returncode == 2 and says in r.stderr.splitlines()[-1] and "Traceback" not in r.stderr, r.stderr
    assert foreign.read_bytes() == before
    r = bnexp("report", "--storage", f"sqlite:///{foreign}", "--study-name", "t", timeout=120)
    assert r.returncode == 2 and "is not an Optuna study file" in r.stderr and foreign.read_bytes() == before


def test_a_copied_sweep_dir_reads_its_own_study(tmp_path):
    out = tmp_path / "orig"
    assert bnexp("sweep", *_create(out, 1), timeout=120).returncode == 0
    assert json.loads((out / "sweep.json").read_text())["storage"] == "sqlite:///study.db"  # relative to the dir
    copy = tmp_path / "copy"
    shutil.copytree(out, copy)
    shutil.rmtree(out)  # the original is gone: a copy that still read it would fail or recreate it
    r = bnexp("status", str(copy), cwd=tmp_path, timeout=120)
    assert r.returncode == 0 and "study t: 0 done, 0 running, 2 waiting" in r.stdout, r.stderr
    assert not out.exists()


def test_multirun_with_an_explicit_name_gives_each_job_its_own_study(tmp_path):
    out = tmp_path / "multi"
    args = [a for a in _create(out, 1) if not a.startswith(("model.depth", "sweep.name"))]
    r = bnexp("sweep", "-m", "sweep.name=multi", "model.depth=2,3", *args, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    for depth in (2, 3):
        meta = json.loads((out / f"model.depth={depth}" / "sweep.json").read_text())
        assert meta["study"] == f"multi-model.depth={depth}"
