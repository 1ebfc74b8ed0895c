"""Small real sweeps for the tests: arguments, the command in-process or as a subprocess, the study's parts."""

from __future__ import annotations

import collections
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import optuna

from helpers.env import REPO, TINY, child_env, compose_cfg, replace

TRAIN = replace(TINY, "trainer.max_steps=12", "trainer.val_every=6")


def sweep_args(out: Path, name: str = "t", points: int = 2, extra: tuple | list = ()) -> list[str]:
    return [
        "sweep=lr_stability",
        f"sweep.name={name}",
        f"sweep.out_dir={out}",
        "sweep.grid.model.bn=[off,pre]",
        f"sweep.lr.points={points}",
        "sweep.seeds=[0]",
        "sweep.jobs=1",  # one worker: these tests watch (and stop, and patch) the worker in this process
        "sweep.lr.low=1e-4",
        "sweep.lr.high=1e-1",
        "sweep.progress=false",
        "sweep.rule.threshold=0.3",
        "sweep.prune=false",  # these sweeps test liveness, storage and reports; tests/sweep/test_savings.py prunes
        *TRAIN,
        *extra,
    ]


def run_sweep(args: list[str]) -> dict | None:
    """`python -m bnexp.sweep ARGS` in this process; the study's summary.json (None if no report was written)."""
    from bnexp.sweep.app import main

    main(list(args))
    out = Path(next(a.split("=", 1)[1] for a in args if a.startswith("sweep.out_dir=")))
    return json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else None


def cli(out: Path, *extra: str, name: str = "t", points: int = 2) -> list[str]:
    """The sweep command line a user types, for subprocess.Popen/run (cwd=REPO, env=child_env())."""
    return [sys.executable, "-m", "bnexp.sweep", *sweep_args(out, name=name, points=points), *extra]


def parts(args: list[str]) -> SimpleNamespace:
    """What the sweep command builds before its worker runs: the composed config, the resolved sweep node,
    the trials' training config, and the opened (or created) study."""
    from bnexp.sweep.records import rule_of
    from bnexp.sweep.spec import resolve, spec_hash, training_cfg
    from bnexp.sweep.storage import open_study, spec_record, storage_url

    cfg = compose_cfg(args, config_name="study")
    sw, _ = resolve(cfg, args)
    base = training_cfg(cfg)
    out = Path(sw.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    url = storage_url(sw, out)
    study, _ = open_study(sw.name, sw, spec_record(sw.name, sw, base), spec_hash(sw, base), url, wait_s=1.0)
    return SimpleNamespace(cfg=cfg, sw=sw, base=base, out=out, url=url, study=study, rule=rule_of(sw))


def worker(p: SimpleNamespace):
    from bnexp.sweep.worker import Worker

    return Worker(p.study, p.sw.name, p.sw, p.base, p.out, compose_cfg([]), p.rule)


def storage(out: Path, journal: bool = False):
    """The sweep's storage as the workers see it: SQLite by default, or an Optuna journal file."""
    if journal:
        from optuna.storages.journal import JournalFileBackend

        return optuna.storages.JournalStorage(JournalFileBackend(str(out / "study.log")))
    return f"sqlite:///{out}/study.db"


def completed_keys(out: Path, name: str = "t", journal: bool = False):
    study = optuna.load_study(study_name=name, storage=storage(out, journal))
    done = [t.user_attrs["key"] for t in study.get_trials() if t.state.name == "COMPLETE"]
    return study, collections.Counter(done)


def wait_running(out: Path, p: subprocess.Popen, timeout: float = 300, journal: bool = False) -> None:
    """Block until the worker has a trial RUNNING in storage (it is training), then a little longer."""
    deadline = time.time() + timeout
    while time.time() < deadline and p.poll() is None:
        if (out / ("study.log" if journal else "study.db")).exists():
            try:
                study = optuna.load_study(study_name="t", storage=storage(out, journal))
                if any(t.state.name == "RUNNING" and "trial_dir" in t.user_attrs for t in study.get_trials()):
                    time.sleep(0.5)
                    return
            except Exception:
                pass
        time.sleep(0.2)
    raise AssertionError("worker never started a trial")


def sigterm_worker(out: Path, delay: float = 0.0) -> tuple[int, str]:
    """Start a worker on a trial long enough (100000 steps) that the signal surely lands inside it, SIGTERM
    it `delay` s after its trial is RUNNING; (exit code, stderr). A worker outliving the signal is killed."""
    p = subprocess.Popen(
        cli(out, "trainer.max_steps=100000"),
        cwd=REPO,
        env=child_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    wait_running(out, p)
    time.sleep(delay)
    p.send_signal(signal.SIGTERM)
    try:
        _, err = p.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        p.kill()
        err = "still running 120 s after SIGTERM\n" + p.communicate()[1]
    return p.returncode, err
