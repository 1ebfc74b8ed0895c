"""A stopped run resumes from the checkpoint taken at the stop: in-process against an uninterrupted run, and
through the real command with a real SIGTERM; a run dir that holds results is never silently mixed."""

import json
import signal
import subprocess
import sys
import time

import pytest
from helpers.env import TINY, child_env, compose_cfg, replace
from lightning.pytorch.callbacks import Callback

from bnexp.cli import ConfigError
from bnexp.core.train import CHECKPOINT, StopRequested, train

RUN = replace(TINY, "trainer.max_steps=40", "model.depth=2")


class StopAt(Callback):
    def __init__(self, step):
        self.step = step

    def on_train_batch_start(self, trainer, *a):
        if trainer.global_step == self.step:
            raise StopRequested("preempted")


def test_a_stopped_run_resumes_where_it_stopped_and_ends_as_if_never_stopped(tmp_path):
    whole = train(compose_cfg(RUN), output_dir=tmp_path / "whole")
    with pytest.raises(StopRequested):
        train(compose_cfg(RUN), output_dir=tmp_path / "cut", callbacks=[StopAt(23)])
    assert (tmp_path / "cut" / CHECKPOINT).is_file() and not (tmp_path / "cut" / "metrics.json").exists()
    resumed = train(compose_cfg(RUN), output_dir=tmp_path / "cut")
    assert resumed["resumed_from_step"] == 23 and resumed["step"] == 40
    assert [h["step"] for h in resumed["val_history"]] == [10, 20, 30, 40]  # the history before the stop kept
    for k in ("val/loss", "val/acc", "val/acc_batchstats", "test/loss", "test/acc"):  # the same batches, state
        assert resumed[k] == pytest.approx(whole[k], rel=1e-5, abs=1e-7), k
    assert not (tmp_path / "cut" / CHECKPOINT).exists()  # finished: metrics.json is the result


def test_a_run_dir_that_holds_results_is_refused(tmp_path):
    train(compose_cfg(RUN), output_dir=tmp_path / "done")
    before = (tmp_path / "done" / "config.yaml").read_text()
    with pytest.raises(ConfigError, match="already holds a finished run"):
        train(compose_cfg(replace(RUN, "model.bn=post")), output_dir=tmp_path / "done")
    assert (tmp_path / "done" / "config.yaml").read_text() == before  # config.yaml still matches metrics.json
    with pytest.raises(StopRequested):
        train(compose_cfg(RUN), output_dir=tmp_path / "cut", callbacks=[StopAt(5)])
    with pytest.raises(ConfigError, match=r"holds a checkpoint of another configuration \(model.bn differ"):
        train(compose_cfg(replace(RUN, "model.bn=post")), output_dir=tmp_path / "cut")


@pytest.mark.slow  # by default: resume in-process here, a real SIGTERM to a sweep in tests/sweep/test_liveness.py
def test_sigterm_to_bnexp_run_then_the_same_command_resumes(tmp_path):
    run_dir = tmp_path / "run"
    args = [*replace(RUN, "trainer.max_steps=400", "trainer.val_every=100", "logger=csv"), f"hydra.run.dir={run_dir}"]
    cmd = [sys.executable, "-m", "bnexp.run", *args]
    p = subprocess.Popen(cmd, cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    csv_file, deadline = run_dir / "csv" / "metrics.csv", time.time() + 300
    while time.time() < deadline and not (csv_file.is_file() and csv_file.read_text().count("\n") > 3):
        time.sleep(0.2)  # training has logged a few times: well past step 0
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 130, err[-3000:]
    assert "checkpoint" in err and f"hydra.run.dir={run_dir}" in err and (run_dir / CHECKPOINT).is_file()
    r = subprocess.run(cmd, cwd=tmp_path, env=child_env(), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((run_dir / "metrics.json").read_text())
    print(f"\nbnexp.run stopped by SIGTERM, resumed at step {m['resumed_from_step']}, finished at {m['step']}")
    assert 0 < m["resumed_from_step"] < 400 and m["step"] == 400
