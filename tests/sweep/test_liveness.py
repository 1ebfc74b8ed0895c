"""Dead and stopped workers, and workers that race: real worker processes on a real SQLite / journal storage."""

import collections
import multiprocessing as mp
import signal
import subprocess
import threading
import time
from pathlib import Path

import optuna
import pytest
from helpers.env import REPO, child_env, compose_cfg, replace
from helpers.sweeps import cli, completed_keys, parts, sigterm_worker, storage, sweep_args, wait_running, worker

from bnexp.sweep import liveness
from bnexp.sweep.spec import design, resolve
from bnexp.sweep.worker import INTERRUPTED


def _open_at_barrier(argv, barrier, q):
    try:
        from helpers.env import compose_cfg

        from bnexp.sweep.records import rule_of  # noqa: F401  (the same imports a worker has)
        from bnexp.sweep.spec import resolve, spec_hash, training_cfg
        from bnexp.sweep.storage import open_study, spec_record, storage_url

        cfg = compose_cfg(argv, config_name="study")
        sw, _ = resolve(cfg, argv)
        base = training_cfg(cfg)
        barrier.wait(timeout=120)
        open_study(sw.name, sw, spec_record(sw.name, sw, base), spec_hash(sw, base), storage_url(sw, sw.out_dir))
        q.put("ok")
    except BaseException as e:
        q.put(repr(e)[:400])


@pytest.mark.slow  # a race regression (6 processes at a barrier, 2 rounds); local workers share a storage by default
def test_workers_started_together_on_a_fresh_storage_plan_each_point_once(tmp_path):
    """No --create-only first: six processes open a fresh SQLite storage at the same moment, racing to create
    the schema and the study (CI once saw a worker exit 2 on 'table studies already exists'). All must
    succeed, and exactly one plans the design."""
    ctx = mp.get_context("spawn")
    bad = []
    for r in range(2):
        out = tmp_path / f"sw{r}"
        out.mkdir()
        barrier, q = ctx.Barrier(6), ctx.Queue()
        procs = [ctx.Process(target=_open_at_barrier, args=(sweep_args(out, points=6), barrier, q)) for _ in range(6)]
        for p in procs:
            p.start()
        results = [q.get(timeout=300) for _ in procs]
        for p in procs:
            p.join(timeout=60)
        bad += [x for x in results if x != "ok"]
        study = optuna.load_study(study_name="t", storage=f"sqlite:///{out}/study.db")
        keys = collections.Counter(t.user_attrs["key"] for t in study.get_trials())
        assert len(keys) == 12 and set(keys.values()) == {1}, keys
        assert study.user_attrs["design_size"] == 12 and "spec_hash" in study.user_attrs
    assert not bad, bad


def test_a_study_without_recorded_spec_is_completed_by_the_next_worker(tmp_path):
    """A creator that died while enqueueing leaves a study with some points and no spec_hash: the next
    worker (after waiting for it) enqueues only the missing points."""
    out = tmp_path / "sw"
    out.mkdir()
    study = optuna.create_study(study_name="t", storage=f"sqlite:///{out}/study.db", direction="maximize")
    args = sweep_args(out, points=3)
    first = design(resolve(compose_cfg(args, config_name="study"), args)[0])[0]
    study.enqueue_trial({"lr": first["lr"]}, user_attrs={"key": first["key"], "attempt": 0})
    p = parts(sweep_args(out, points=3))
    keys = collections.Counter(t.user_attrs["key"] for t in p.study.get_trials())
    assert len(keys) == 6 and set(keys.values()) == {1} and p.study.user_attrs["design_size"] == 6


@pytest.mark.slow
@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_kill_9_mid_trial_then_rerun_completes(tmp_path, journal):
    """SQLite uses Optuna's heartbeat; the journal file has none, so bnexp beats in a trial system attr.
    Either way the rerun fails the dead worker's trial and retries its point instead of waiting forever."""
    out = tmp_path / "sw"
    hb = ["sweep.heartbeat=1", "sweep.grace=3", "trainer.max_steps=300"]
    if journal:
        hb.append(f"sweep.storage=journal://{out}/study.log")
    p = subprocess.Popen(cli(out, *hb), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    wait_running(out, p, journal=journal)
    p.send_signal(signal.SIGKILL)
    p.wait()
    study, done = completed_keys(out, journal=journal)
    running = [t for t in study.get_trials() if t.state.name == "RUNNING"]
    assert len(running) == 1 and sum(done.values()) < 4  # killed mid-trial: one trial left RUNNING
    r = subprocess.run(cli(out, *hb), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    study, done = completed_keys(out, journal=journal)
    assert len(done) == 4 and set(done.values()) == {1}
    states = collections.Counter(t.state.name for t in study.get_trials())
    assert states == {"COMPLETE": 4, "FAIL": 1}  # the killed trial is failed, its point retried once
    killed = next(t for t in study.get_trials() if t.state.name == "FAIL")
    assert "no heartbeat" in killed.user_attrs["fail_reason"]  # SQLite (Optuna's own check) says why too


@pytest.mark.parametrize("journal", [False, True], ids=["sqlite", "journal"])
def test_worker_dead_before_its_first_heartbeat_is_failed_and_retried(tmp_path, journal):
    """A worker killed between claiming a trial and its first beat leaves a RUNNING trial with no beat at
    all; Optuna's stale check skips such trials (the PostgreSQL kill -9 test once hung on one). bnexp
    judges it by its start time instead."""
    out = tmp_path / "sw"
    extra = ["sweep.heartbeat=1", "sweep.grace=1"] + ([f"sweep.storage=journal://{out}/study.log"] if journal else [])
    p = parts(sweep_args(out, points=1, extra=extra))
    claimed = liveness.claim(p.study, heartbeat=0)  # the claim a worker makes, and then it dies: no beat
    assert claimed is not None
    assert liveness.reconcile(p.study, 1, 1, 2) == 0  # a fresh claim is not stale
    time.sleep(2.5)  # > grace = max(sweep.grace, 2 * sweep.heartbeat) = 2 s
    assert liveness.reconcile(p.study, 1, 1, 2) == 1  # failed and its point enqueued again
    trials = {liveness.trial_id(t): t for t in p.study.get_trials()}
    tid = liveness.trial_id(claimed)
    assert trials[tid].state.name == "FAIL" and "no heartbeat" in trials[tid].user_attrs["fail_reason"]
    key = trials[tid].user_attrs["key"]
    assert [t.state.name for t in trials.values() if t.user_attrs["key"] == key] == ["FAIL", "WAITING"]


def test_a_stale_trials_point_is_retried_by_optunas_callback_within_its_budget(tmp_path):
    """SQLite with Optuna's heartbeat: a trial that beat and then went quiet is failed by Optuna's
    fail_stale_trials (not while it beats, however long it has run), and Optuna's own retry callback enqueues
    its point as bnexp would (its fixed params, key and attempt; nothing of the dead attempt). The budget is the
    point's, whatever failed before: with sweep.retries=2, a stale third attempt after a stale first and a
    crashed second is not retried."""
    from optuna.trial import TrialState

    out = tmp_path / "sw"
    extra = ["sweep.heartbeat=1", "sweep.grace=1", "sweep.retries=2"]
    p = parts(replace(sweep_args(out, points=1, extra=extra), "sweep.grid.model.bn=[pre]"))
    (point,) = p.study.get_trials()

    def dies_after_one_beat() -> int:
        t = liveness.claim(p.study, heartbeat=1)  # the claim's beat; then its worker is gone (another host)
        time.sleep(3.5)  # > grace = max(sweep.grace, 2 * sweep.heartbeat) = 2 s, in SQLite's whole seconds
        return t.number

    live = liveness.claim(p.study, heartbeat=1)
    with liveness.Heartbeat(p.study, liveness.trial_id(live), 1):  # a live worker, beating past the grace
        time.sleep(3.5)
        assert liveness.reconcile(p.study, 1, 1, 2) == 0 and p.study.get_trials()[live.number].state.name == "RUNNING"
    time.sleep(3.5)  # its worker is gone
    first = live.number
    assert liveness.reconcile(p.study, 1, 1, 2) == 0  # bnexp enqueued nothing itself: Optuna's callback did
    dead, retry = p.study.get_trials()[first], p.study.get_trials()[-1]
    assert dead.state == TrialState.FAIL and "no heartbeat within sweep.grace" in dead.user_attrs["fail_reason"]
    assert retry.state == TrialState.WAITING and retry.user_attrs == {"key": point.user_attrs["key"], "attempt": 1}
    assert retry.system_attrs["fixed_params"] == point.system_attrs["fixed_params"] and not retry.params
    retry_cb = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    assert retry_cb.retry_history(retry) == [first]  # Optuna's own record

    second = liveness.claim(p.study, heartbeat=1)  # the retry crashes by its own error: bnexp retries that
    liveness.set_user_attr(p.study, liveness.trial_id(second), "fail_reason", "RuntimeError: a bug in training")
    liveness.set_state(p.study, liveness.trial_id(second), TrialState.FAIL)
    assert liveness.reconcile(p.study, 1, 1, 2) == 1 and p.study.get_trials()[-1].user_attrs["attempt"] == 2

    dies_after_one_beat()  # the third attempt goes stale: 3 failed attempts > sweep.retries=2
    assert liveness.reconcile(p.study, 1, 1, 2) == 0
    states = collections.Counter(t.state.name for t in p.study.get_trials())
    assert states == {"FAIL": 3}, states  # given up: neither Optuna's callback nor bnexp enqueued a fourth


def test_sigterm_ends_trial_cleanly(tmp_path):
    out = tmp_path / "sw"
    rc, err = sigterm_worker(out)
    assert rc == 130 and "rerun the same command to resume" in err, err[-3000:]
    study = optuna.load_study(study_name="t", storage=storage(out))
    failed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) == 1 and "interrupted" in failed[0].user_attrs["fail_reason"]
    assert not [t for t in study.get_trials() if t.state.name == "RUNNING"]


@pytest.mark.parametrize("population", [1, 2])
def test_stop_flag_alone_ends_the_trial_in_flight(tmp_path, population):
    """An exception raised from a signal handler can be swallowed (a __del__ finaliser, logging's emit
    are where the interpreter may be): once in a full CI-like run the SIGTERM test's worker kept
    training. The flag the handler sets must end the trial by itself: set it from a thread, no signal."""
    out = tmp_path / "sw"
    w = worker(parts(sweep_args(out, points=2, extra=["trainer.max_steps=100000", f"sweep.population={population}"])))

    def stop_mid_trial():
        deadline = time.time() + 120
        while not w.current and time.time() < deadline:
            time.sleep(0.05)
        time.sleep(3.0)  # well into training
        w.interrupted = True

    threading.Thread(target=stop_mid_trial, daemon=True).start()
    t0 = time.time()
    counts = w.loop()
    assert time.time() - t0 < 100  # 100000 steps would take an hour
    assert counts == {"interrupted": population}
    failed = [t for t in w.study.get_trials() if t.state.name == "FAIL"]
    assert len(failed) == population and all(t.user_attrs["fail_reason"] == INTERRUPTED for t in failed)
    assert not [t for t in w.study.get_trials() if t.state.name == "RUNNING"]


def test_a_trial_failed_as_stale_while_it_trained_keeps_its_result(tmp_path, monkeypatch):
    """A worker paused longer than sweep.grace (SIGSTOP, a laptop lid, a database hiccup) finds at the end that
    another worker failed its trial as stale and re-enqueued the point. It must not crash and must not throw
    the finished result away: the result is recorded on the waiting retry of its point."""
    from optuna.trial import TrialState

    import bnexp.core.train

    real = bnexp.core.train.train
    w = worker(parts(sweep_args(tmp_path / "sw", points=1, extra=["sweep.grid.model.bn=[pre]"])))

    def train_through_a_long_pause(cfg, **kw):
        (running,) = w.study.get_trials(states=(TrialState.RUNNING,))
        liveness.set_state(w.study, liveness.trial_id(running), TrialState.FAIL)  # what reconcile does elsewhere
        liveness.reconcile(w.study, 0, 0, 2)  # ... and it re-enqueues the point
        return real(cfg, **kw)

    monkeypatch.setattr(bnexp.core.train, "train", train_through_a_long_pause)
    counts = w.loop()
    assert counts == {"complete": 1}
    states = collections.Counter(t.state.name for t in w.study.get_trials())
    assert states == {"FAIL": 1, "COMPLETE": 1}  # nothing left waiting: the retry got the finished result
    (done,) = w.study.get_trials(states=(TrialState.COMPLETE,))
    failed = next(t for t in w.study.get_trials() if t.state.name == "FAIL")
    assert done.user_attrs["kept_from"] == failed.number and done.value == done.user_attrs["val/acc"]
    assert done.user_attrs["step"] == 12 and (tmp_path / "sw" / "trials" / "t").is_dir()


def preempt_then_rerun(out: Path, args: list[str]) -> None:
    """The sweep, SIGTERM once its trials have logged a few times (well past step 0; exit 130), then the same
    command again to the end (exit 0)."""
    p = subprocess.Popen(cli(out, *args), cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    wait_running(out, p)
    deadline = time.time() + 300
    while time.time() < deadline and not any(
        f.read_text().count("\n") > 3 for f in (out / "trials").rglob("metrics.csv")
    ):
        time.sleep(0.2)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-2000:]
    r = subprocess.run(cli(out, *args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]


def test_a_preempted_trial_resumes_from_its_checkpoint_when_its_point_is_retried(tmp_path):
    """SLURM preemption is a SIGTERM: the trial in flight is checkpointed at its next batch and failed as
    interrupted; the rerun retries the point in the same dir and goes on from the step it stopped at."""
    import json

    out = tmp_path / "sw"
    one = ["sweep.lr.points=1", "sweep.grid.model.bn=[pre]", "trainer.max_steps=300", "trainer.val_every=100"]
    one += ["logger=csv"]
    preempt_then_rerun(out, one)
    study, done = completed_keys(out)
    (stopped,) = [t for t in study.get_trials() if t.state.name == "FAIL"]
    (finished,) = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert stopped.user_attrs["checkpoint"].endswith("last.ckpt")
    assert finished.user_attrs["trial_dir"] == stopped.user_attrs["trial_dir"]  # the same dir, resumed
    m = json.loads((Path(finished.user_attrs["trial_dir"]) / "metrics.json").read_text())
    print(f"\npreempted trial resumed at step {m['resumed_from_step']}, finished at {m['step']}")
    assert 0 < m["resumed_from_step"] < 300 and m["step"] == 300
    assert [h["step"] for h in m["val_history"]] == [100, 200, 300]


@pytest.mark.slow  # the default suite resumes a stopped population in-process (tests/population/test_members.py)
def test_a_preempted_population_resumes_as_one_unit(tmp_path):
    """sweep.population=2: the SIGTERM checkpoints the whole population at its next batch; the rerun regroups
    the same two points, in their dirs, and every member goes on from that step."""
    import json

    out = tmp_path / "sw"
    two = ["sweep.lr.points=2", "sweep.grid.model.bn=[pre]", "sweep.population=2", "trainer.max_steps=300"]
    two += ["trainer.val_every=100", "logger=csv"]
    preempt_then_rerun(out, two)
    study, _ = completed_keys(out)
    stopped = [t for t in study.get_trials() if t.state.name == "FAIL"]
    finished = [t for t in study.get_trials() if t.state.name == "COMPLETE"]
    assert len(stopped) == len(finished) == 2
    (ckpt,) = {t.user_attrs["population_checkpoint"] for t in stopped}  # one file for the whole population
    assert ckpt.endswith("population.ckpt")
    assert {t.user_attrs["trial_dir"] for t in finished} == {t.user_attrs["trial_dir"] for t in stopped}
    ms = [json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text()) for t in finished]
    at = {m["resumed_from_step"] for m in ms}
    print(f"\npreempted population resumed at step {at}")
    assert len(at) == 1 and 0 < at.pop() < 300 and all(m["step"] == 300 and m["population"] == 2 for m in ms)
    assert all([h["step"] for h in m["val_history"]] == [100, 200, 300] for m in ms)
    assert not list((out / "trials").rglob("population.ckpt"))
