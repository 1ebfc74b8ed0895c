"""sweep.heartbeat=0 (no heartbeat): a worker killed with -9 mid-trial, then the same command on the same host
fails the dead worker's trial (its process is gone) and trains its point, instead of waiting forever."""

import collections
import signal
import subprocess

import pytest
from helpers.env import REPO, child_env
from helpers.sweeps import cli, completed_keys, wait_running


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
