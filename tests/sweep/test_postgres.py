"""Several sweep workers on one PostgreSQL storage (Optuna RDBStorage), as on a cluster: every design point
trained exactly once, and a worker killed with -9 mid-trial costs nothing (its trial is failed by the
heartbeat check and another worker retries the point).

The server: $BNEXP_PG_URL (`.ci/run` starts one with scripts/pg_start.sh); when unset, this module
starts its own with that script and stops it afterwards; it skips, saying why, only when neither works.
"""

import collections
import os
import signal
import subprocess
import sys
import time
import uuid

import optuna
import pytest
from helpers.env import REPO, TINY, bnexp, child_env

from bnexp.cli import ConfigError
from bnexp.sweep.storage import make_storage

pytestmark = pytest.mark.postgres


TRAIN = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every", "data.limit_train"))]
TRAIN += ["trainer.max_steps=10", "trainer.val_every=5", "data.limit_train=512"]


@pytest.fixture(scope="module")
def pg_url():
    url, started = os.environ.get("BNEXP_PG_URL"), None
    if not url:
        r = subprocess.run(
            ["bash", str(REPO / "scripts/pg_start.sh")],
            capture_output=True,
            text=True,
            timeout=180,
            env={**os.environ, "BNEXP_PG_NO_INSTALL": "1"},
        )
        if r.returncode != 0:
            why = (r.stderr.strip().splitlines() or ["no output"])[-1]
            pytest.skip(f"no PostgreSQL: BNEXP_PG_URL is unset and scripts/pg_start.sh failed ({why})")
        env = dict(line.removeprefix("export ").split("=", 1) for line in r.stdout.split("\n") if "=" in line)
        url, started = env["BNEXP_PG_URL"], env["BNEXP_PG_DIR"]
    try:
        make_storage(url)
    except ConfigError as e:
        if os.environ.get("CI") and not started:  # .ci/run started a server and exported its URL: a CI bug
            pytest.fail(f"BNEXP_PG_URL is set but unreachable: {e}")
        pytest.skip(f"no PostgreSQL: {e}")
    yield url
    if started:
        subprocess.run(["bash", str(REPO / "scripts/pg_stop.sh"), started], capture_output=True, timeout=120)


@pytest.fixture
def study_name(pg_url):
    name = f"t-{uuid.uuid4().hex[:10]}"  # one study per test: the server may be shared
    yield name
    try:
        optuna.delete_study(study_name=name, storage=make_storage(pg_url))
    except KeyError:
        pass


def worker_cmd(url, name, out, *extra):
    return [
        sys.executable,
        "-m",
        "bnexp.sweep",
        "sweep=lr_stability",
        f"sweep.name={name}",
        f"sweep.out_dir={out}",
        f"sweep.storage={url}",
        "sweep.grid.model.bn=[off,pre]",
        "sweep.lr.points=6",  # 2 variants x 6 lrs = 12 points
        "sweep.seeds=[0]",
        "sweep.jobs=1",
        "sweep.lr.low=1e-4",
        "sweep.lr.high=1e-1",
        "sweep.progress=false",
        "sweep.prune=false",  # a killed worker's trials are counted COMPLETE: tests/sweep/test_savings.py prunes
        "sweep.rule.threshold=0.3",
        *TRAIN,
        *extra,
    ]


def start_workers(cmd, n):
    subprocess.run([*cmd, "--create-only"], check=True, cwd=REPO, env=child_env(), capture_output=True, timeout=120)
    return [
        subprocess.Popen(
            [*cmd, "--no-report"], cwd=REPO, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        for _ in range(n)
    ]


def counts(url, name):
    study = optuna.load_study(study_name=name, storage=make_storage(url))
    trials = study.get_trials()
    done = collections.Counter(t.user_attrs["key"] for t in trials if t.state.name == "COMPLETE")
    return trials, done, collections.Counter(t.state.name for t in trials)


@pytest.mark.slow  # PostgreSQL stays in the default suite through the secrets test; several workers via sweep.jobs
def test_three_workers_do_each_point_once(pg_url, study_name, tmp_path):
    procs = start_workers(worker_cmd(pg_url, study_name, tmp_path / "sw"), 3)
    logs = [p.communicate(timeout=300)[0].decode() for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    trials, done, states = counts(pg_url, study_name)
    print(f"\n3 workers, 12-point grid on PostgreSQL: states {dict(states)}")
    assert len(done) == 12 and set(done.values()) == {1}  # every point, exactly once
    assert states == {"COMPLETE": 12}  # no trial beyond the grid
    assert len({t.user_attrs["worker"] for t in trials}) >= 2  # the work was shared
    # the report rebuilds from the PostgreSQL storage alone
    r = bnexp("report", "--storage", pg_url, "--study-name", study_name, "--out", str(tmp_path / "rep"), timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert (tmp_path / "rep" / "summary.json").is_file()
    # the status view reads a PostgreSQL storage too
    r = bnexp("status", "--storage", pg_url, "--study-name", study_name, timeout=120)
    assert r.returncode == 0 and f"study {study_name}: 12 done, 0 running, 0 waiting, 0 failed" in r.stdout, r.stderr


@pytest.mark.slow  # kill -9 and a rerun are also tested on SQLite and the journal by default (test_liveness)
def test_kill_9_mid_trial_loses_and_duplicates_nothing(pg_url, study_name, tmp_path):
    # trials of 150 steps: a few seconds each, so the kill lands inside one rather than just after it ends
    cmd = worker_cmd(pg_url, study_name, tmp_path / "sw", "sweep.heartbeat=1", "sweep.grace=3", "trainer.max_steps=150")
    procs = start_workers(cmd, 3)
    victim = procs[0]
    study = optuna.load_study(study_name=study_name, storage=make_storage(pg_url))
    killed_trial, deadline = None, time.time() + 180
    while killed_trial is None and time.time() < deadline:  # wait until the victim is inside a trial
        for t in study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
            if t.user_attrs.get("worker", "").endswith(f":{victim.pid}"):
                killed_trial = t.number
                victim.send_signal(signal.SIGKILL)
                break
        time.sleep(0.05)
    assert killed_trial is not None, "the victim never started a trial"
    victim.wait()
    logs = [p.communicate(timeout=300)[0].decode() for p in procs[1:]]
    assert all(p.returncode == 0 for p in procs[1:]), logs
    trials, done, states = counts(pg_url, study_name)
    lost = 12 - len(done)
    duplicated = sum(n - 1 for n in done.values())
    print(f"\nkill -9 of 1 of 3 workers (trial {killed_trial}): states {dict(states)}, lost {lost}, dup {duplicated}")
    assert lost == 0 and duplicated == 0
    killed = next(t for t in trials if t.number == killed_trial)
    assert killed.state.name == "FAIL"  # marked failed by the stale-heartbeat check ...
    retried = [t for t in trials if t.user_attrs["key"] == killed.user_attrs["key"] and t.state.name == "COMPLETE"]
    assert len(retried) == 1 and retried[0].user_attrs["worker"] != killed.user_attrs["worker"]  # ... and redone
    assert states["COMPLETE"] == 12 and states["FAIL"] == 1 and not states.get("RUNNING")


def test_worker_dead_before_its_first_heartbeat_is_failed(pg_url, study_name, tmp_path):
    """The claim made, then death before the first beat: no heartbeat row, which Optuna's stale check
    skips (this test module once hung 300 s on such a trial). bnexp judges it by its start time."""
    from helpers.sweeps import parts

    from bnexp.sweep import liveness

    argv = worker_cmd(pg_url, study_name, tmp_path / "sw", "sweep.heartbeat=1", "sweep.grace=1")[3:]
    study = parts(argv).study
    claimed = liveness.trial_id(liveness.claim(study, heartbeat=0))
    assert liveness.reconcile(study, 1, 1, 2) == 0  # fresh: not stale yet
    time.sleep(2.5)  # > grace = max(sweep.grace, 2 * sweep.heartbeat) = 2 s
    assert liveness.reconcile(study, 1, 1, 2) == 1
    t = next(t for t in study.get_trials() if liveness.trial_id(t) == claimed)
    assert t.state.name == "FAIL" and "no heartbeat" in t.user_attrs["fail_reason"]
    waiting = [
        x for x in study.get_trials() if x.state.name == "WAITING" and x.user_attrs["key"] == t.user_attrs["key"]
    ]
    assert len(waiting) == 1  # its point is queued again


def test_the_sweep_command_sweep_json_records_holds_no_password(pg_url, study_name, tmp_path):
    """sweep.json records the command that made the study (bnexp.report lists it to reproduce a report): a
    password typed in `sweep.storage=` is masked there, as everywhere (the slow test below greps every file of
    every command; this is its default-suite guard for sweep.json's command)."""
    import json
    from urllib.parse import quote

    secret = "Pw/9@x:%q#r s-" + uuid.uuid4().hex[:8]
    typed = quote(secret, safe="/: ")
    scheme, rest = pg_url.split("://", 1)
    user, host = rest.split("@", 1)
    url = f"{scheme}://{user.split(':')[0]}:{typed}@{host}"
    out = tmp_path / "sw"
    args = [a for a in worker_cmd(url, study_name, out)[3:] if not a.startswith(("sweep.lr.points", "logger="))]
    r = bnexp("sweep", *args, "sweep.lr.points=2", "logger=none", "--create-only", cwd=tmp_path, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    command = json.loads((out / "sweep.json").read_text())["command"]
    assert command.startswith("python -m bnexp.sweep ") and f"{user.split(':')[0]}:***@" in command
    text = (out / "sweep.json").read_text() + r.stdout + r.stderr
    assert not [f for f in {secret, typed, quote(secret, safe="")} if f in text]


@pytest.mark.slow
def test_a_password_in_the_storage_url_is_written_and_printed_nowhere(pg_url, study_name, tmp_path):
    """A PostgreSQL URL whose password holds `/ @ : % #` and a space (percent-encoded where a URL needs it), on the
    command line, with -m, and in $BNEXP_STORAGE, through every command that touches the study (create, two local
    workers logging to W&B, a -m multirun with its W&B sweep-summary runs, report, status, errors): the password
    is in no file of the output tree (Hydra's multirun.yaml, W&B's offline run files, staging area and logs
    included), no study attr, no printed line, in any form it may be written in."""
    import json
    from urllib.parse import quote

    secret = "S3/cr@t:%x#y z-" + uuid.uuid4().hex[:8]
    typed = quote(secret, safe="/: ")  # as a URL carries it: `@`, `%`, `#` encoded, `/`, `:`, space as they are
    forms = {secret, typed, quote(secret, safe=""), "".join("\\" + c if c in ":= " else c for c in typed)}
    scheme, rest = pg_url.split("://", 1)
    user, host = rest.split("@", 1)
    url = f"{scheme}://{user.split(':')[0]}:{typed}@{host}"  # the test server trusts loopback: any password works
    out = tmp_path / "sw"
    args = worker_cmd(url, study_name, out)[3:]
    args = [a for a in args if not a.startswith(("sweep.lr.points", "sweep.grid", "logger=", "sweep.jobs"))]
    args += ["sweep.lr.points=2", "sweep.grid.model.bn=[pre]"]
    no_storage = [a for a in args if not a.startswith("sweep.storage")]
    env = child_env(WANDB_MODE="offline", WANDB_DIR=str(tmp_path / "wandb-staging"), BNEXP_LOG="INFO")
    said = []

    def run(*cmd, **kw):
        r = bnexp(*cmd, cwd=tmp_path, timeout=300, **kw)
        said.append(r.stdout + r.stderr)
        return r

    r = run("sweep", *args, "logger=none", "--create-only", env=env)
    assert r.returncode == 0 and f"postgresql://{user.split(':')[0]}:***@" in r.stdout, r.stderr[-2000:]
    r = run("sweep", *args, "logger=wandb", "sweep.jobs=2", env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # $BNEXP_STORAGE as the source: the report rebuilt by the sweep command itself
    r = run("sweep", *no_storage, "logger=wandb", "--report-only", env={**env, "BNEXP_STORAGE": url})
    assert r.returncode == 0, r.stderr[-3000:]
    # -m on the command line: Hydra's sweeper writes multirun.yaml and prints a `#0 : ...` line per job
    multi = [a.replace(f"sweep.out_dir={out}", f"sweep.out_dir={tmp_path}/multi") for a in args]
    multi = [a for a in multi if not a.startswith("model.depth")] + ["sweep.lr.points=1", "logger=wandb"]
    r = run("sweep", "-m", "model.depth=2,3", *multi, env=env)
    assert r.returncode == 0 and "#0 : " in r.stdout + r.stderr, r.stderr[-3000:]
    assert (tmp_path / "multi" / "multirun.yaml").is_file()
    assert (
        run("report", "--storage", url, "--study-name", study_name, "--out", str(tmp_path / "rep"), env=env).returncode
        == 0
    )
    assert run("report", str(out), env={**env, "BNEXP_STORAGE": url}).returncode == 0  # sweep.json holds no password
    assert run("status", "--storage", url, "--study-name", study_name, env=env).returncode == 0
    assert run("report", "--storage", url, "--study-name", "nope", env=env).returncode == 2
    bad = url.replace(host.split("/")[0], "127.0.0.1:1")
    assert run("sweep", *no_storage, f"sweep.storage={bad}", env=env).returncode == 2
    assert run("sweep", *no_storage, env={**env, "BNEXP_STORAGE": bad}).returncode == 2
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    leaks = [(str(p), f) for p in files for f in forms if f.encode() in p.read_bytes()]
    storage = make_storage(pg_url)
    studies = [s.study_name for s in optuna.get_all_study_summaries(storage) if s.study_name.startswith(study_name)]
    attrs = json.dumps(
        [[study.user_attrs, [(t.user_attrs, t.system_attrs) for t in study.get_trials()]]
         for study in (optuna.load_study(study_name=n, storage=storage) for n in studies)]
    )  # fmt: skip
    for n in studies:
        if n != study_name:  # the -m jobs' studies; the fixture deletes the first
            optuna.delete_study(study_name=n, storage=storage)
    n_runs = len(list(tmp_path.rglob("*.wandb")))
    print(f"\ngrepped {len(files)} files (W&B runs: {n_runs}), {len(said)} commands' stdout+stderr, {len(studies)} "
          f"studies' attrs, for {len(forms)} forms of the password: {len(leaks)} leaks")  # fmt: skip
    assert len(studies) == 3  # the study and the two -m jobs' own studies
    assert len(list(out.rglob("*.wandb"))) >= 3  # 2 trials + the summary run: W&B's records were checked too
    assert len(list((tmp_path / "multi").rglob("*.wandb"))) >= 4  # -m: a trial and a summary run per job
    leaks += [("printed", f) for s in said for f in forms if f in s]
    leaks += [("study attrs", f) for f in forms if f in attrs]
    assert not leaks, leaks
