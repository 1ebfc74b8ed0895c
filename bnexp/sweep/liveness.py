"""Which trials are alive: claims, heartbeats, dead-worker detection, retries. Every use of Optuna's private
parts in bnexp is in this module, so an Optuna upgrade that changes them breaks one file. They are four:
`study._storage` (a study's storage has no public accessor), `trial._trial_id`, `study._pop_waiting_trial_id`
(claiming) and `storage._get_stale_trial_ids` (naming why a stale trial failed). Everything else is Optuna's
public API: `RDBStorage(heartbeat_interval=, grace_period=, heartbeat_stale_trial_callback=)` (make_storage),
`optuna.storages.fail_stale_trials` and `RetryHeartbeatStaleTrialCallback`.

Claiming. Workers pop WAITING trials (Optuna flips WAITING -> RUNNING atomically in the storage) and never
sample new ones: `study.ask()` would create an extra, unplanned trial when another worker took the last point.

Heartbeats. A thread beats for each trial in flight: Optuna's own heartbeat on RDB storages, a trial system
attr (`bnexp:heartbeat`) on Optuna's journal file, which has none. The first beat is recorded at claim time;
on RDB storages it also marks the trial (`bnexp:optuna_heartbeat`: Optuna's stale check sees it from now on).

Dead workers. `reconcile()` fails RUNNING trials whose worker stopped beating: Optuna's `fail_stale_trials`
where the storage has Optuna's heartbeat, and bnexp's own check for what Optuna cannot see (journal storages;
trials that never beat at all because their worker died between claim and first beat, their start time
standing in for the last beat; trials of a dead worker on this host, at once). Hosts' clocks must agree to
well within the grace period (NTP). A trial claimed by a bnexp from before the mark, still running on an RDB
storage, is judged by its start time: it may be failed and retried while it trains, and then keeps its result
(the worker records a finished trial's result even when it was failed meanwhile).

Retries. A point is retried at most `retries` times, counting every failed attempt except those its
environment caused (bnexp.sweep.faults: a full disk, a missing file; a retry would fail the same way) and
claims given back. Optuna's `RetryHeartbeatStaleTrialCallback` retries the points of the trials Optuna fails
as stale (RDB storages); `StaleRetry` hands it the trial as bnexp enqueues a point (its fixed params, `key` and
`attempt`, none of the dead attempt's attrs: the retry must not inherit its fail_reason, worker or heartbeat)
and the point's earlier failed attempts as its retry history, so that its `max_retry` spends the same budget
as bnexp's own retries. `reconcile()` re-enqueues the rest: a trial's own error (an exception, CUDA out of
memory), a dead local worker, a stale journal trial, a trial that never beat.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

from bnexp.cli import one_line
from bnexp.sweep import faults

log = logging.getLogger("bnexp.sweep")

HEARTBEAT_ATTR = "bnexp:heartbeat"  # unix time of the last beat, for storages without Optuna heartbeats
NATIVE_BEAT_ATTR = "bnexp:optuna_heartbeat"  # set at a trial's first Optuna heartbeat: Optuna's stale check sees it


# ---- thin accessors for Optuna's private attributes -------------------------------------------------
def trial_id(trial: Any) -> int:
    return trial._trial_id


def study_user_attrs(study: Any) -> dict:
    """The study's user attrs read from the storage now (no cache)."""
    return study.user_attrs


def study_id(study: Any) -> int:
    """The study's id in its storage, by its name (the storage API; Study keeps its own id private)."""
    return study._storage.get_study_id_from_name(study.study_name)


def trial_state(study: Any, tid: int) -> Any:
    return study._storage.get_trial(tid).state


def fixed_params(study: Any, trial: Any) -> dict | None:
    """The params an enqueued point fixed (None: Optuna sampled the trial itself)."""
    return study._storage.get_trial_system_attrs(trial._trial_id).get("fixed_params")


def claim(study: Any, heartbeat: int) -> Any:
    """Claim one WAITING point for this worker (atomic in the storage), or None when none is left."""
    from optuna.trial import Trial

    tid = study._pop_waiting_trial_id()
    if tid is None:
        return None
    if heartbeat > 0:  # beat at once: a worker dying before its first beat is caught sooner
        Heartbeat(study, tid, heartbeat).record()
    return Trial(study, tid)


def set_user_attr(study: Any, tid: int, key: str, value: Any) -> None:
    """A user attr on a trial this process did not claim (by id)."""
    study._storage.set_trial_user_attr(tid, key, value)


def set_state(study: Any, tid: int, state: Any, value: float | None = None) -> bool:
    """Finish a trial by id (also one this process did not claim); False when it was already finished."""
    from optuna.exceptions import UpdateFinishedTrialError

    try:
        return bool(study._storage.set_trial_state_values(tid, state=state, values=None if value is None else [value]))
    except (UpdateFinishedTrialError, RuntimeError):
        return False


# ---- heartbeats --------------------------------------------------------------------------------------
def _native_heartbeat(storage: Any) -> bool:
    """Optuna's own heartbeat is on: an RDB storage opened with a heartbeat_interval (bnexp.sweep.storage)."""
    interval = getattr(storage, "get_heartbeat_interval", None)
    return callable(interval) and interval() is not None


class Heartbeat:
    """Beat for the trials in flight from a thread (a population: every member), so a dead worker's trials
    are detected: Optuna's own heartbeat where the storage has one (RDB), else a trial system attr."""

    def __init__(self, study: Any, tid: int | list[int], interval: int) -> None:
        self.storage, self.interval = study._storage, interval
        self.trial_ids = tid if isinstance(tid, list) else [tid]
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._marked: set[int] = set()
        self.native = _native_heartbeat(self.storage)

    def __enter__(self) -> Heartbeat:
        if self.native or self.interval > 0:
            self.record()
            self._thread = threading.Thread(target=self._beat, daemon=True)
            self._thread.start()
        return self

    def record(self) -> None:
        for tid in self.trial_ids:
            if self.native:
                self.storage.record_heartbeat(tid)
                if tid not in self._marked:  # after the beat: a marked trial has a heartbeat Optuna judges
                    self.storage.set_trial_system_attr(tid, NATIVE_BEAT_ATTR, True)
                    self._marked.add(tid)
            else:
                self.storage.set_trial_system_attr(tid, HEARTBEAT_ATTR, time.time())

    def _beat(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.record()
            except Exception as e:  # a missed beat is not fatal; the grace period covers it
                log.warning("heartbeat failed: %s", one_line(e))

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)


# ---- dead workers and retries ------------------------------------------------------------------------
def _fail_stale_by_attr(study: Any, grace: float) -> int:
    """Fail RUNNING trials whose worker stopped beating where Optuna's own check cannot see it (see the
    module docstring)."""
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    if not running:
        return 0
    native = _native_heartbeat(study._storage)
    now, failed = time.time(), 0
    for t in running:
        if native:
            if t.system_attrs.get(NATIVE_BEAT_ATTR):
                continue  # it beat: Optuna's fail_stale_trials judges it
            last = None
        else:
            last = t.system_attrs.get(HEARTBEAT_ATTR)
        if last is None and t.datetime_start is not None:
            last = t.datetime_start.timestamp()
        if last is None or now - float(last) <= grace:
            continue
        try:
            study._storage.set_trial_user_attr(trial_id(t), "fail_reason", f"no heartbeat for {now - last:.0f} s")
        except Exception:  # finished meanwhile
            continue
        if set_state(study, trial_id(t), TrialState.FAIL):
            failed += 1
    if failed:
        log.warning("failed %d trial(s) whose worker stopped beating", failed)
    return failed


def _fail_trials_of_dead_local_workers(study: Any) -> int:
    """Fail RUNNING trials whose worker ran on this host and whose process is gone (kill -9): known at once,
    heartbeat or not. With sweep.heartbeat=0 this is the only check, so a rerun on the same host never waits
    forever on a dead worker's trial."""
    import os
    import socket

    from optuna.trial import TrialState

    host, failed = socket.gethostname(), 0
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = str(t.user_attrs.get("worker", ""))
        h, _, rest = worker.partition(":")
        pid = rest.split(" ", 1)[0]
        if h != host or not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except OSError:
            continue
        try:
            study._storage.set_trial_user_attr(trial_id(t), "fail_reason", f"its worker {worker} is gone (killed)")
        except Exception:  # finished meanwhile
            continue
        failed += set_state(study, trial_id(t), TrialState.FAIL)
    if failed:
        log.warning("failed %d trial(s) whose worker on this host is gone", failed)
    return failed


def _give_stale_trials_a_reason(study: Any) -> None:
    """Optuna's own stale check (SQLite, PostgreSQL) fails a trial without saying why: name it first."""
    storage = study._storage
    try:
        if not _native_heartbeat(storage):
            return
        stale = storage._get_stale_trial_ids(study_id(study))  # Optuna fails them next, saying nothing
    except Exception as e:  # Optuna's private heartbeat API changed: the trials still fail, without a reason
        log.debug("cannot list stale trials: %s", one_line(e))
        return
    why = "no heartbeat within sweep.grace: its worker was killed, preempted or lost; the point is retried"
    for tid in stale:
        try:
            storage.set_trial_user_attr(tid, "fail_reason", why)
        except Exception:  # finished meanwhile
            pass


def _spent_a_retry(t: Any) -> bool:
    """A failed attempt that counts against its point's retries: not a claim given back (population grouping),
    not a failure its environment caused (a retry would fail the same way; bnexp.sweep.faults)."""
    from optuna.trial import TrialState

    return (
        t.state == TrialState.FAIL
        and not t.user_attrs.get("returned")
        and not faults.spent_on_environment(t.user_attrs.get("fail_reason"))
    )


def stale_retry(retries: int) -> tuple[str, Any]:
    """(the RDBStorage keyword, the callback) that retries the points of trials Optuna fails as stale: Optuna's
    RetryHeartbeatStaleTrialCallback (RetryFailedTrialCallback before Optuna 4.9), given the trial as bnexp
    enqueues a point (module docstring)."""
    import copy
    import inspect

    import optuna
    from optuna.trial import TrialState

    base = (
        getattr(optuna.storages, "RetryHeartbeatStaleTrialCallback", None) or optuna.storages.RetryFailedTrialCallback
    )
    kw = "heartbeat_stale_trial_callback"
    if kw not in inspect.signature(optuna.storages.RDBStorage).parameters:
        kw = "failed_trial_callback"

    class StaleRetry(base):  # type: ignore[misc,valid-type]
        def __call__(self, study: Any, trial: Any) -> None:
            key = trial.user_attrs.get("key")
            same = [t for t in study.get_trials(deepcopy=False) if key is not None and t.user_attrs.get("key") == key]
            live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
            if key is None or any(t.state in live for t in same):
                return  # not a point of the design, or another attempt of it is done or under way
            earlier = sorted(t.number for t in same if t.number != trial.number and _spent_a_retry(t))
            point = copy.deepcopy(trial)
            fixed = trial.system_attrs.get("fixed_params") or dict(trial.params)
            point.params, point.distributions = {}, {}  # the point's params are fixed, as enqueue_trial fixes them
            point.user_attrs = {"key": key, "attempt": len(earlier) + 1}
            point.system_attrs = {"fixed_params": fixed, "retry_history": earlier}  # Optuna appends this trial
            if "failed_trial" in trial.system_attrs:
                point.system_attrs = {**point.system_attrs, "failed_trial": trial.system_attrs["failed_trial"]}
            super().__call__(study, point)

    return kw, StaleRetry(max_retry=retries)


def reconcile(study: Any, heartbeat: int, grace: int, retries: int) -> int:
    """Fail stale trials (dead workers) and enqueue again each point that has no live or finished trial."""
    import optuna
    from optuna.trial import TrialState

    _give_stale_trials_a_reason(study)
    optuna.storages.fail_stale_trials(study)  # and the storage's StaleRetry enqueues their points again
    if heartbeat > 0:
        _fail_stale_by_attr(study, max(grace, 2 * heartbeat))
    _fail_trials_of_dead_local_workers(study)  # the rest: gone before the grace ran out, or no heartbeat at all
    by_key: dict[str, list] = {}
    for t in study.get_trials(deepcopy=False):
        if "key" in t.user_attrs:
            by_key.setdefault(t.user_attrs["key"], []).append(t)
    added = 0
    live = (TrialState.COMPLETE, TrialState.RUNNING, TrialState.WAITING, TrialState.PRUNED)
    for key, ts in by_key.items():
        if any(t.state in live for t in ts):
            continue
        failed = [t for t in ts if _spent_a_retry(t)]
        if len(failed) > retries:
            continue
        last = max(ts, key=lambda t: t.number)
        params = dict(last.params) or dict(last.system_attrs.get("fixed_params", {}))
        study.enqueue_trial(params, user_attrs={"key": key, "attempt": len(failed)})
        added += 1
    if added:
        log.info("re-enqueued %d failed point(s)", added)
    return added


def set_study_system_attr(study: Any, key: str, value: Any) -> None:
    """A study attr that `optuna studies` does not print (Study.set_system_attr is deprecated; the storage's is
    the storage API every backend implements)."""
    study._storage.set_study_system_attr(study_id(study), key, value)


def study_system_attrs(study: Any) -> dict:
    return study._storage.get_study_system_attrs(study_id(study))
