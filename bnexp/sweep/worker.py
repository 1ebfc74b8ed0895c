"""A sweep worker: claim a waiting point, train it through `train(cfg)` (the code path of bnexp.run), record it.

Trials call bnexp.core.train.train(cfg). The objective recorded in Optuna is the *final* val/acc (population
statistics): stability is about where training ends, not its best moment. A diverged trial is COMPLETE with
diverged=true (an infeasible result, counted and plotted). Any exception in a trial fails that trial only,
with its reason; an out-of-memory error gets the reason "CUDA out of memory: ..." and its memory is
released before the next trial. Each trial records the `worker` that ran it (host:pid, SLURM array task).

Stopping. SIGTERM/SIGINT only set `Worker.interrupted`: the trial in flight checks it at every batch
(`StopCallback`; every step in population mode) and ends itself, failed as "interrupted", so its point is
retried later. An exception raised from a signal handler would land wherever the interpreter happens to be
(an import half done, a __del__ finaliser that swallows it). A second signal stops at once.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from bnexp import names
from bnexp.analysis.stability import StabilityRule, verdict_summary
from bnexp.cli import ConfigError, one_line, stopping
from bnexp.core.train import CHECKPOINT, StopRequested, is_stop
from bnexp.population.train import POP_CHECKPOINT
from bnexp.record import VAL_ACC
from bnexp.sweep import edge_plan, faults, liveness
from bnexp.sweep.pruning import EARLY_ATTR
from bnexp.sweep.pruning import plan as plan_pruning
from bnexp.sweep.records import trial_attrs
from bnexp.sweep.spec import LR_PARAM, grid_axes, rerun_overrides, trial_cfg

log = logging.getLogger("bnexp.sweep")
INTERRUPTED = "interrupted (SIGTERM/SIGINT); the point will be retried"


class Interrupted(StopRequested):
    """The worker was asked to stop (SIGTERM/SIGINT): the trial in flight ends at its next batch, checkpointed."""


def _is_stop(e: BaseException) -> bool:
    """A stop, not a failure (bnexp.core.train.is_stop), except a second Ctrl-C: that one ends the worker."""
    return is_stop(e) and not isinstance(e, KeyboardInterrupt)


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


def _objective_value(metrics: dict) -> float:
    v = metrics.get(VAL_ACC)
    return float(v) if v is not None and math.isfinite(v) else 0.0


class StopCallback:
    """Raise Interrupted from ordinary code at the next batch once a signal asked the worker to stop."""

    def __new__(cls, worker: Worker):
        import lightning as L

        class _CB(L.Callback):
            def _check(self, *_: Any) -> None:
                worker.check_interrupted()

            on_train_batch_start = on_validation_batch_start = on_test_batch_start = _check

        return _CB()


class Worker:
    """Trains the points of one study until none is left (or `max_trials`, or a stop signal).

    `base` is the study's training config (bnexp.run's schema, validated), `default` bnexp.run's default
    config (each trial records the overrides that rebuild it from there), `rule` the study's stability rule.
    """

    def __init__(
        self,
        study: Any,
        study_name: str,
        sw: DictConfig,
        base: DictConfig,
        out_dir: Path,
        default: DictConfig,
        rule: StabilityRule | None = None,
    ) -> None:
        self.study, self.study_name, self.sw, self.base = study, study_name, sw, base
        self.out_dir, self.default = Path(out_dir), default
        self.rule = rule or StabilityRule()
        self.grid_keys = list(grid_axes(sw.grid))
        self.spec_hash = liveness.study_user_attrs(study).get("spec_hash", "")
        self.keys = names.variant_keys(self.grid_keys)
        self.interrupted = False
        self._said_waiting = False
        self.current: list[Any] = []
        self.pruning = plan_pruning(sw, base, self.rule)  # the silent window; None: no pruning (bnexp.sweep.pruning)
        if self.pruning is not None:
            from bnexp.sweep.pruner import SilentPruner

            study.pruner = SilentPruner(self.pruning)  # what trial.should_prune() asks
            log.info(
                "pruning (sweep.prune): a trial at chance with no gradient at its first layer for %d steps in a row",
                self.pruning,
            )

    # ---- one point ---------------------------------------------------------------------------------
    def _point(self, trial: Any) -> tuple[DictConfig, list[str], Path]:
        """The trial's training config, its rerun overrides and its dir (Optuna params fix the point)."""
        sw = self.sw
        axes = grid_axes(sw.grid)
        variant = {k: trial.suggest_categorical(k, list(vals)) for k, vals in axes.items()}
        seed = trial.suggest_categorical("seed", [int(s) for s in sw.seeds])
        lr = trial.suggest_float(LR_PARAM, sw.lr.low, sw.lr.high, log=True)  # the enqueued point's lr
        cfg = trial_cfg(self.base, variant, float(f"{lr:.6g}"), seed)
        ov = rerun_overrides(cfg, self.default)
        cfg.logger.group, cfg.logger.job_type = names.study_group(self.study_name, self.spec_hash), "trial"
        cfg.trainer.progress_bar = False
        values = names.cfg_values(cfg, self.grid_keys)
        name = names.trial_dir_name(trial.number, values, cfg.optim.lr, cfg.seed, self.keys)
        cfg.logger.run_name = names.run_name(values, cfg.optim.lr, cfg.seed, self.keys)
        # one name for the trial dir, the W&B run's name and its id; the same point retried (after a kill, a
        # preemption) resumes its W&B run
        key = trial.user_attrs.get("key", trial.number)
        cfg.logger.run_id = names.run_id(cfg.logger.run_name, self.study_name, self.spec_hash, key)
        cfg.logger.dir = str(self.out_dir)  # every trial's W&B run under <out_dir>/wandb: one `wandb sync` syncs it
        return cfg, ov, self._resumable_dir(trial) or self._trial_dir(name)

    def _trial_dir(self, name: str | None = None, earlier: Any = None) -> Path:
        """A trial's dir, derived here only: a new attempt's is <out_dir>/trials/<study>/<name>; `earlier` (a
        stopped attempt of the same point, resumed) ran in the dir its trial_dir attr names (set by _start)."""
        if earlier is not None:
            return Path(earlier.user_attrs["trial_dir"])
        return self.out_dir / "trials" / names.safe(self.study_name) / str(name)

    def _resumable_dir(self, trial: Any) -> Path | None:
        """A retried point whose earlier attempt was stopped (SIGTERM, preemption) with a checkpoint: its dir, so
        that train() resumes there at the step it stopped instead of starting over."""
        from optuna.trial import TrialState

        key = trial.user_attrs.get("key")
        stopped = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,))
            if t.user_attrs.get("key") == key and t.user_attrs.get("checkpoint")
        ]
        for t in sorted(stopped, key=lambda t: -t.number):
            if Path(t.user_attrs["checkpoint"]).is_file():
                return self._trial_dir(earlier=t)  # the checkpoint's own dir (out / CHECKPOINT)
        return None

    def _resumable_population(self, trials: list[Any]) -> list[tuple[Any, Path]] | None:
        """These trials' points are exactly the members of a stopped population whose checkpoint is on disk:
        [(trial, that member's dir)] in the stopped population's member order; else None (start afresh)."""
        from optuna.trial import TrialState

        keys = {t.user_attrs.get("key") for t in trials}
        stopped: dict[str, dict[Any, Any]] = {}
        for t in self.study.get_trials(deepcopy=False, states=(TrialState.FAIL,)):
            if t.user_attrs.get("population_checkpoint"):
                stopped.setdefault(t.user_attrs["population_checkpoint"], {})[t.user_attrs.get("key")] = t
        for ckpt, members in stopped.items():
            if set(members) == keys and len(members) == len(trials) and Path(ckpt).is_file():
                order = sorted(trials, key=lambda t: members[t.user_attrs.get("key")].user_attrs["population_member"])
                return [(t, self._trial_dir(earlier=members[t.user_attrs.get("key")])) for t in order]
        return None

    def _is_duplicate(self, trial: Any) -> bool:
        from optuna.trial import TrialState

        key = trial.user_attrs.get("key")
        done = (TrialState.COMPLETE, TrialState.PRUNED)  # a pruned trial is a result too (not a dropped duplicate)
        for t in self.study.get_trials(deepcopy=False, states=(*done, TrialState.RUNNING)):
            if t.user_attrs.get("key") == key and t.number != trial.number and not t.user_attrs.get("duplicate"):
                if t.state in done or t.number < trial.number:
                    return True
        return False

    def _drop_duplicate(self, trial: Any) -> bool:
        """Two workers re-enqueued the same failed point: the later claim is dropped (PRUNED, marked)."""
        from optuna.trial import TrialState

        if not self._is_duplicate(trial):
            return False
        trial.set_user_attr("duplicate", True)
        self.study.tell(trial, state=TrialState.PRUNED)
        return True

    def _start(self, trial: Any, cfg: DictConfig, ov: list[str], out: Path) -> None:
        for k, v in (("bn", cfg.model.bn), ("bias", cfg.model.bias), ("depth", int(cfg.model.depth))):
            trial.set_user_attr(k, v)  # so that a trial that dies mid-way still names its variant
        trial.set_user_attr("overrides", " ".join(ov))
        trial.set_user_attr("trial_dir", str(out))
        trial.set_user_attr("worker", worker_id())

    def _finish(self, trial: Any, metrics: dict, cfg: DictConfig, ov: list[str]) -> str:
        """Record a trained point: its TrialRecord as user attrs, its learning curve as intermediate values
        (optuna-dashboard draws them), then tell Optuna its final val/acc."""
        from optuna.trial import TrialState

        attrs = trial_attrs(metrics, cfg, ov, self.grid_keys)
        pruned = metrics.get("pruned_step") is not None
        try:
            for k, v in attrs.items():
                trial.set_user_attr(k, v)
            reported = {int(s) for s in trial.user_attrs.get(EARLY_ATTR) or {}}  # the pruner's callback reported
            for h in metrics.get("val_history") or []:
                v = h.get(VAL_ACC)
                if v is not None and math.isfinite(v) and h.get("step") is not None and int(h["step"]) not in reported:
                    trial.report(float(v), int(h["step"]))
            if pruned:  # stopped at chance (bnexp.sweep.pruning): a result, recorded as Optuna's PRUNED
                self.study.tell(trial, state=TrialState.PRUNED)
            else:
                self.study.tell(trial, _objective_value(metrics))
        except Exception as e:
            if liveness.trial_state(self.study, liveness.trial_id(trial)) == TrialState.RUNNING:
                raise  # not the case below: a real storage error
            return self._keep_stale_result(trial, metrics, attrs, e)
        return "pruned" if pruned else "diverged" if metrics["diverged"] else "complete"

    def _keep_stale_result(self, trial: Any, metrics: dict, attrs: dict, why: BaseException) -> str:
        """Another worker failed this trial as stale while it trained (a long pause, a stopped process, a
        database hiccup longer than sweep.grace) and re-enqueued its point. The finished result is not thrown
        away: it is recorded on that waiting point, or, if another worker already took it, kept on disk."""
        from optuna.trial import TrialState

        key = trial.user_attrs.get("key")
        waiting = [
            t
            for t in self.study.get_trials(deepcopy=False, states=(TrialState.WAITING,))
            if t.user_attrs.get("key") == key
        ]
        rec = {
            **attrs,
            "trial_dir": trial.user_attrs.get("trial_dir"),
            "worker": worker_id(),
            "kept_from": trial.number,
        }
        for t in waiting:
            tid = liveness.trial_id(t)
            for k, v in rec.items():
                liveness.set_user_attr(self.study, tid, k, v)
            if liveness.set_state(self.study, tid, TrialState.COMPLETE, _objective_value(metrics)):
                log.warning(
                    "trial %d was failed as stale while it trained (%s); its result is recorded on the retry of its "
                    "point, trial %d", trial.number, one_line(why)[:120], t.number
                )  # fmt: skip
                return "diverged" if metrics["diverged"] else "complete"
        log.warning(
            "trial %d was failed as stale while it trained and its point is being retried elsewhere; its result "
            "is kept in %s", trial.number, trial.user_attrs.get("trial_dir")
        )  # fmt: skip
        return "kept"

    def _fail(self, trials: list[Any], reason: str) -> list[str]:
        from optuna.trial import TrialState

        faults.free_accelerator_memory()
        for t in trials:
            t.set_user_attr("fail_reason", reason)
            self.study.tell(t, state=TrialState.FAIL)
        return [_state_of(reason)] * len(trials)

    # ---- ask -> run -> tell: one path for a single point and for a population ---------------------------
    def _run(
        self, trials: list[Any], points: list[tuple[DictConfig, list[str], Path]], fit: Any, on_stop: Any
    ) -> list[str]:
        """Train `trials` (their `points`) with `fit()` -> one metrics dict per trial, under one heartbeat;
        record each result, or fail them all with one reason. A stop (SIGTERM/SIGINT) fails them as
        interrupted after `on_stop()` has kept the checkpoint their retry resumes from."""
        for t, (cfg, ov, out) in zip(trials, points, strict=True):
            self._start(t, cfg, ov, out)
        self.check_interrupted()  # a signal that came while the trials were being set up
        reason = None
        try:
            with liveness.Heartbeat(self.study, [liveness.trial_id(t) for t in trials], self.sw.heartbeat):
                results = fit()
        except BaseException as e:
            if _is_stop(e):
                on_stop()
                return self._fail(trials, INTERRUPTED)
            if not isinstance(e, Exception):  # KeyboardInterrupt (a second Ctrl-C), a real SystemExit
                raise
            faults.stop_if_environment(self, trials, e)  # data, logger, permissions...: exit 2, points waiting
            reason = faults.fail_reason(e)  # one broken trial (OOM, a bug in training) never stops the sweep
        if reason is not None:  # out of the except block: its traceback no longer pins the trials' tensors
            log.error("trial %s failed: %s", ",".join(str(t.number) for t in trials), reason)
            return self._fail(trials, reason)
        states = [self._finish(t, m, cfg, ov) for t, m, (cfg, ov, _) in zip(trials, results, points, strict=True)]
        self.plan_edges()  # each new point goes to the study as soon as the result that asks for it is recorded
        return states

    # ---- the edge search (sweep.lr.search=edges): bnexp.sweep.edge_plan ---------------------------------
    def plan_edges(self) -> int:
        """Enqueue the points the edge search's recorded results ask for (bnexp.sweep.edge_plan.plan)."""
        return edge_plan.plan(self.study, self.sw, self.rule)

    def _summarize(self, metrics: dict) -> dict:
        """The trial's verdict for its W&B run summary, under the study's rule (core training knows no rule)."""
        return verdict_summary(metrics, self.rule)

    def run_one(self, trial: Any) -> str:
        from bnexp.core.train import train

        if self._drop_duplicate(trial):
            return "duplicate"
        try:
            cfg, ov, out = self._point(trial)
        except ConfigError as e:
            self._fail([trial], one_line(e))
            raise

        callbacks = [StopCallback(self)]
        # the trial's own window: a grid may vary what it rests on (the optimizer, the batch, the precision);
        # a variant where silence cannot be judged is not pruned (sweep.prune=true refused it at the spec)
        window = plan_pruning(self.sw, cfg, self.rule) if self.pruning is not None else None
        if window is not None:
            from bnexp.sweep.pruner import callback

            callbacks.append(callback(trial, window))

        def fit() -> list[dict]:
            return [train(cfg, output_dir=out, callbacks=callbacks, summarize=self._summarize)]

        def on_stop() -> None:
            if (out / CHECKPOINT).is_file():  # taken at the stop: the retry of this point resumes from it
                trial.set_user_attr("checkpoint", str(out / CHECKPOINT))

        return self._run([trial], [(cfg, ov, out)], fit, on_stop)[0]

    def run_population(self, trials: list[Any]) -> list[str]:
        """K lrs of one variant and seed as one model (bnexp.population)."""
        from bnexp.population.train import train_population

        trials = [t for t in trials if not self._drop_duplicate(t)]
        if not trials:
            return []
        resumed = self._resumable_population(trials)
        if resumed is not None:  # the same points as a stopped population: its dirs, its members' order
            trials = [t for t, _ in resumed]
        points = [self._point(t) for t in trials]
        if resumed is not None:
            points = [(c, ov, d) for (c, ov, _), (_, d) in zip(points, resumed, strict=True)]
        cfgs = [p[0] for p in points]
        for t in trials:
            t.set_user_attr("population", len(trials))

        def fit() -> list[dict]:
            return train_population(
                cfgs[0],
                [c.optim.lr for c in cfgs],
                [p[2] for p in points],
                [c.seed for c in cfgs],
                on_step=self.check_interrupted,
                member_cfgs=cfgs,  # each member's own run name, logged live to its own logger
                summarize=self._summarize,
            )

        def on_stop() -> None:
            ckpt = points[0][2] / POP_CHECKPOINT
            if ckpt.is_file():  # taken at the stop: a retry of the same points resumes the population from it
                for k, t in enumerate(trials):
                    t.set_user_attr("population_checkpoint", str(ckpt))
                    t.set_user_attr("population_member", k)

        return self._run(trials, points, fit, on_stop)

    def ask_group(self) -> list[Any]:
        """Claim waiting points: 1, or up to K of the same variant and seed for population training."""
        first = liveness.claim(self.study, self.sw.heartbeat)
        if first is None:  # another worker took the last waiting point
            return []
        group = [first]
        if self.sw.population > 1:
            same = {k: v for k, v in (liveness.fixed_params(self.study, first) or {}).items() if k != LR_PARAM}
            while len(group) < self.sw.population and self._has(("WAITING",)):
                t = liveness.claim(self.study, self.sw.heartbeat)
                if t is None:
                    break
                fpt = liveness.fixed_params(self.study, t) or {}
                if {k: v for k, v in fpt.items() if k != LR_PARAM} == same and LR_PARAM in fpt:
                    group.append(t)
                else:  # another variant: put it back
                    self._return(t)
                    break
        return group

    def _return(self, t: Any) -> None:
        """Give a claimed point back: fail the claim (marked `returned`, not counted) and enqueue the point."""
        from optuna.trial import TrialState

        t.set_user_attr("fail_reason", "returned to the queue (population grouping)")
        t.set_user_attr("returned", True)
        self.study.tell(t, state=TrialState.FAIL)
        fixed = liveness.fixed_params(self.study, t)
        self.study.enqueue_trial(fixed, user_attrs={"key": t.user_attrs.get("key"), "attempt": 0})

    def check_interrupted(self) -> None:
        if self.interrupted:
            raise Interrupted("stop requested")

    def _fail_unfinished(self, group: list[Any], reason: str) -> list[str]:
        from optuna.trial import TrialState

        running = [t for t in group if liveness.trial_state(self.study, liveness.trial_id(t)) == TrialState.RUNNING]
        return self._fail(running, reason) if running else []

    def _has(self, states: tuple[str, ...]) -> bool:
        from optuna.trial import TrialState

        return bool(self.study.get_trials(deepcopy=False, states=tuple(TrialState[s] for s in states)))

    def _say_what_it_waits_for(self) -> None:
        """With sweep.heartbeat=0 a worker on another host that died cannot be told from one still training, so
        this worker would wait for its trial forever, silently: say so, once, with the way out."""
        from optuna.trial import TrialState

        if self.sw.heartbeat > 0 or self._said_waiting:
            return
        running = self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
        if not running:
            return
        self._said_waiting = True
        t = min(running, key=lambda t: t.number)
        since = t.datetime_start.strftime("%Y-%m-%d %H:%M") if t.datetime_start else "?"
        print(
            f"bnexp: waiting for {len(running)} trial(s) that other workers are training (trial {t.number} on "
            f"{t.user_attrs.get('worker', 'an unknown worker')}, since {since}); with sweep.heartbeat=0 a worker "
            "on another host that died cannot be told from one still training: if it is gone, stop this and "
            "rerun with sweep.heartbeat=10, which fails a trial that has not beaten for sweep.grace seconds "
            "and retries its point",
            file=sys.stderr,
            flush=True,
        )

    def loop(self, progress: Any = None, max_trials: int | None = None) -> dict[str, int]:
        gc.freeze()  # what the process holds by now (modules, the data) lives as long as it: collections skip it
        counts: dict[str, int] = {}
        done = 0
        sw = self.sw
        while not self.interrupted and (max_trials is None or done < max_trials):
            if not self._has(("WAITING",)):
                self.plan_edges()  # a rerun (or a worker that finds the queue empty) goes on with the search
                liveness.reconcile(self.study, sw.heartbeat, sw.grace, sw.retries)
                if not self._has(("WAITING",)):
                    if not self._has(("RUNNING",)):
                        break
                    self._say_what_it_waits_for()
                    time.sleep(min(5.0, max(1.0, sw.heartbeat / 2)))  # others still running
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
                # a trial's Trainer, module and data copies hold each other in reference cycles, which only
                # Python's cyclic collector frees: left to its own pace it let a depth-19 worker grow by about
                # 200 MB a trial (313 -> 2018 MB over 5 trials); collected here it stays flat at 950 MB, for
                # 0.15 s a trial (tests/sweep/test_worker_memory.py)
                gc.collect()
            for s in states:
                counts[s] = counts.get(s, 0) + 1
            done += len(states)
            if progress is not None:
                progress.update()
        return counts


def install_signal_handlers(worker: Worker) -> None:
    def handler(signum: int, frame: Any) -> None:
        """Only set the flag (see the module docstring). A second signal is said once and ignored: raising
        from a signal handler lands anywhere (a __del__, a callback: "Exception ignored ... KeyboardInterrupt")
        and would skip the checkpoint; kill -9 stops at once, and a rerun retries the point."""
        if worker.interrupted:
            stopping(say=True)
            return
        worker.interrupted = True

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, handler)
        signal.signal(signal.SIGINT, handler)
