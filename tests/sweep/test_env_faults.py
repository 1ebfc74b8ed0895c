"""A failure that is not the trial's own result (damaged data, a logger setting W&B refuses) stops the worker with
one line and exit 2, and spends no retry: the point waits. After the environment is fixed, the same command
trains every point. A study whose retries an older bnexp spent on such failures is runnable again too."""

import collections

import optuna
import pytest
from helpers.env import REPO, bnexp
from helpers.sweeps import sweep_args

from bnexp.core.data import FILES

LABELS = "t10k-labels-idx1-ubyte.gz"


def _states(out):
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out}/study.db")
    return study, collections.Counter(t.state.name for t in study.get_trials())


def _one_line_exit_2(r) -> str:
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert lines[-1].startswith("bnexp: error: ") and sum(ln.startswith("bnexp: error:") for ln in lines) == 1
    return lines[-1]


def _data_dir(tmp_path, mnist_dir, labels: bytes):
    d = tmp_path / "data"
    d.mkdir()
    for f, *_ in FILES.values():
        if f != LABELS:
            (d / f).symlink_to(mnist_dir / f)
    (d / LABELS).write_bytes(labels)
    return d


def test_damaged_data_stops_the_worker_and_the_fixed_rerun_trains_every_point(tmp_path, mnist_dir):
    data = _data_dir(tmp_path, mnist_dir, (mnist_dir / LABELS).read_bytes()[:1000])  # truncated gzip
    out = tmp_path / "sw"
    cmd = [*sweep_args(out, points=1), f"data.dir={data}", "data.download=false", "sweep.retries=1"]
    line = _one_line_exit_2(bnexp("sweep", *cmd, cwd=REPO, timeout=300))
    assert "truncated or not valid gzip" in line and "no retry was spent" in line and "rerun the same command" in line
    study, states = _states(out)
    assert states["WAITING"] == 2 and not states["COMPLETE"]  # every point still waiting
    assert all(t.user_attrs.get("returned") for t in study.get_trials() if t.state.name == "FAIL")
    (data / LABELS).write_bytes((mnist_dir / LABELS).read_bytes())  # the user fixes the data
    r = bnexp("sweep", *cmd, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    study, states = _states(out)
    assert states["COMPLETE"] == 2 and not states["WAITING"] and not states["RUNNING"]


def test_a_logger_setting_wandb_refuses_stops_the_worker_and_leaves_the_points_waiting(tmp_path):
    out = tmp_path / "sw"
    r = bnexp("sweep", *sweep_args(out, points=1), "logger=wandb", "logger.project=a/b", cwd=REPO, timeout=300)
    line = _one_line_exit_2(r)
    assert "no retry was spent" in line, line
    assert _states(out)[1]["WAITING"] == 2


@pytest.mark.slow  # a study left by an older bnexp; the default suite checks the rule on today's studies
def test_retries_an_older_bnexp_spent_on_the_environment_are_given_back(tmp_path, mnist_dir):
    """An older bnexp recorded a damaged-data failure as the trial's own, `sweep.retries` + 1 times per point,
    and the study then trained nothing, ever. Those failures are recognised by their reason and spend nothing."""
    from bnexp.sweep import liveness

    out = tmp_path / "sw"
    args = [*sweep_args(out, points=1), "sweep.retries=0"]
    assert bnexp("sweep", *args, "--create-only", cwd=REPO, timeout=300).returncode == 0
    study, _ = _states(out)
    while (t := liveness.claim(study, 0)) is not None:  # each point failed once, as the old worker did
        t.set_user_attr("fail_reason", f"DataError: {tmp_path}/{LABELS} is truncated or not valid gzip (...)")
        study.tell(t, state=optuna.trial.TrialState.FAIL)
    r = bnexp("sweep", *args, cwd=REPO, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    assert _states(out)[1]["COMPLETE"] == 2
