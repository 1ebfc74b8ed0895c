"""Stop signals through the real commands: a Ctrl-C in the first second (while Python imports torch, Hydra
composes, the study opens) is one line and exit 130, not an import's traceback; signals repeated while a stop
is being saved change nothing (still 130, the checkpoint whole, no "Exception ignored ... KeyboardInterrupt")."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.env import REPO, TINY, child_env, replace, wait_until_caught
from helpers.sweeps import cli, wait_running

from bnexp.core.train import CHECKPOINT


def _clean_stop(p: subprocess.Popen, err: str) -> str:
    assert p.returncode == 130, (p.returncode, err[-3000:])  # not -2/-15 (killed), not 1 (a traceback)
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert last.startswith("bnexp: "), last
    return last


def _wait_until_bnexp_is_in(p: subprocess.Popen, timeout: float = 120) -> None:
    """Until `p` catches SIGTERM: Python does not, bnexp's stop policy does, from `import bnexp` on. Python's own
    SIGINT handler is in earlier, when a Ctrl-C still lands in `site`."""
    wait_until_caught(p, signal.SIGTERM, timeout)


def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


@pytest.mark.parametrize("delay", [0.3, 1.0])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_ctrl_c_in_the_first_second_is_one_line(tmp_path, command, delay):
    if command == "run":
        args = ["bnexp.run", *TINY, f"hydra.run.dir={tmp_path / 'r'}"]
    else:
        args = cli(tmp_path / "sw")[2:]  # [python, -m, bnexp.sweep, ...] -> from bnexp.sweep on
    p = _start(args, tmp_path)
    _wait_until_bnexp_is_in(p)  # a loaded machine may take longer than `delay` to start the interpreter at all
    time.sleep(delay)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
    line = _clean_stop(p, err)
    assert line.startswith("bnexp: stopped"), line


def _signal_until_it_exits(p: subprocess.Popen, sig: int = signal.SIGTERM) -> str:
    """The first signal, then the same again every 0.3 s until the process exits: one of them lands while the
    checkpoint is written, one while the stop is said, one while the interpreter shuts down."""
    deadline = time.time() + 120
    while p.poll() is None and time.time() < deadline:
        p.send_signal(sig)
        time.sleep(0.3)
    _, err = p.communicate(timeout=60)
    return err


def test_repeated_sigterm_to_bnexp_run_still_stops_with_its_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    args = [*replace(TINY, "trainer.max_steps=100000", "logger=csv"), f"hydra.run.dir={run_dir}"]
    p = _start(["bnexp.run", *args], tmp_path)
    csv_file, deadline = run_dir / "csv" / "metrics.csv", time.time() + 300
    while time.time() < deadline and not (csv_file.is_file() and csv_file.read_text().count("\n") > 3):
        time.sleep(0.2)  # training has logged a few times: well past step 0
    err = _signal_until_it_exits(p)
    assert "resume: python -m bnexp.run" in _clean_stop(p, err)
    assert (run_dir / CHECKPOINT).is_file()


def test_repeated_sigterm_to_a_sweep_still_stops_in_one_line(tmp_path):
    out = tmp_path / "sw"
    p = subprocess.Popen(cli(out, "trainer.max_steps=100000"), cwd=REPO, env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_running(out, p)
    err = _signal_until_it_exits(p)
    assert "sweep interrupted" in _clean_stop(p, err)
    assert err.count("already stopping") == 1, err[-2000:]  # said once, however many signals land
