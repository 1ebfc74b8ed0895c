"""sweep.heartbeat=0 (no heartbeat): a worker killed with -9 mid-trial, then the same command on the same host
fails the dead worker's trial (its process is gone) and trains its point, instead of waiting forever."""

import collections
import signal
import subprocess
import threading

import optuna
import pytest
from helpers.env import REPO, child_env
from helpers.sweeps import cli, completed_keys, wait_running

from bnexp.sweep import liveness


@pytest.mark.slow  # two sweeps of 150-step trials; the heartbeat path is killed and rerun by default (test_liveness)
def test_kill_9_with_no_heartbeat_then_rerun_completes(tmp_path):
    out = tmp_path / "sw"
    off = ["sweep.heartbeat=0", "trainer.max_steps=150"]
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    p = subprocess.Popen(cli(out, *off, points=1), cwd=REPO, env=child_env(), **quiet)
    wait_running(out, p)
    p.send_signal(signal.SIGKILL)
    p.wait()
    # a hang (the old behaviour) fails at the timeout
    r = subprocess.run(cli(out, *off, points=1), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=150)
    assert r.returncode == 0, r.stderr[-2000:]
    study, done = completed_keys(out)
    assert len(done) == 2 and set(done.values()) == {1}
    killed = [t for t in study.get_trials() if t.state.name == "FAIL"]
    assert len(killed) == 1 and "is gone" in killed[0].user_attrs["fail_reason"]
    assert collections.Counter(t.state.name for t in study.get_trials()) == {"COMPLETE": 2, "FAIL": 1}


@pytest.mark.slow
def test_no_heartbeat_and_a_trial_held_elsewhere_says_what_it_waits_for(tmp_path):
    """sweep.heartbeat=0 and a RUNNING trial of a worker on another host: this host cannot tell a dead worker
    from a live one, so the rerun used to wait forever, silently. It says so once, naming the trial, its worker
    and the way out; the way out (a rerun with a heartbeat) fails the beat-less trial and trains its point."""
    out = tmp_path / "sw"
    args = cli(out, "sweep.heartbeat=0", points=1)  # two points: off and pre
    r = subprocess.run([*args, "--create-only"], cwd=REPO, env=child_env(), capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out}/study.db")
    held = liveness.claim(study, heartbeat=0)  # a worker on another host took it, and maybe died
    held.set_user_attr("worker", "elsewhere:4242")
    p = subprocess.Popen(args, cwd=REPO, env=child_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    timer = threading.Timer(240, p.kill)  # silence (the old behaviour) ends the read at EOF, with no line
    timer.start()
    try:
        line = next((ln for ln in p.stderr if ln.startswith("bnexp: waiting for")), "")  # after the other point
    finally:
        timer.cancel()
        p.kill()
        p.wait()
    assert f"trial {held.number} on elsewhere:4242" in line and "sweep.heartbeat=10" in line, line
    r = subprocess.run([*cli(out, "sweep.grace=1", points=1)], cwd=REPO, env=child_env(), capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    _, done = completed_keys(out)
    assert len(done) == 2 and set(done.values()) == {1}
