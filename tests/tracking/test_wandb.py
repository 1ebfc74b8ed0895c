"""W&B logging, offline only: runs are read back from their .wandb files (config keys, metric names, summary)."""

from __future__ import annotations

import csv
import math
import os
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.env import REPO, TINY, compose_cfg
from helpers.wandb_offline import offline_runs, read_offline_run
from lightning.pytorch.callbacks import Callback

from bnexp.cli import ConfigError
from bnexp.core.train import train
from bnexp.run import default_verdict
from bnexp.tracking import wandb_record
from bnexp.tracking.loggers import build_callbacks
from bnexp.tracking.wandb_mode import resolve_mode
from bnexp.tracking.wandb_runs import run_name

WANDB = [*TINY, "logger=wandb", "logger.mode=offline"]
CORE_METRICS = [
    "train/loss",
    "train/acc",
    "train/grad_norm",
    "lr",
    "val/acc",
    "val/acc_batchstats",
    "val/loss",
    "val/acc_best",
    "test/acc",
    "test/loss",
    "test/acc_single",
    "perf/steps_per_s",
]


@pytest.fixture(autouse=True)
def _wandb_dirs(tmp_path_factory, monkeypatch):
    # W&B's own config, cache and artifact staging go to a tmp dir, not the real home
    base = tmp_path_factory.getbasetemp() / "wandb_home"
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(base / sub))


def _only_run(root: Path) -> dict:
    runs = offline_runs(root)
    assert len(runs) == 1, runs
    assert runs[0].is_relative_to(root)  # offline runs land under the run directory
    return read_offline_run(runs[0], wait_s=30)


# ---- names and modes ------------------------------------------------------------------------------
def test_run_name_is_readable():
    assert run_name(compose_cfg(TINY + ["model.bn=pre"])) == "pre-auto-d3-lr2e-03-s0"
    assert run_name(compose_cfg(TINY + ["model.bn=off", "optim.lr=0.00235", "seed=4"])) == "off-auto-d3-lr2.35e-03-s4"
    assert run_name(compose_cfg(TINY + ["logger.run_name=mine"])) == "mine"


def test_mode_resolution_never_prompts(monkeypatch, tmp_path):
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_IDENTITY_TOKEN_FILE", "WANDB_DISABLED"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    cfg = compose_cfg([*TINY, "logger=wandb"])
    assert resolve_mode(cfg) == "offline"  # no key anywhere: offline, not a prompt
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode(cfg) == "disabled"  # the usual environment variable wins in auto mode
    monkeypatch.delenv("WANDB_MODE")
    cfg.logger.mode = "online"
    with pytest.raises(ConfigError, match="wandb login"):
        resolve_mode(cfg)
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode(cfg) == "online"
    cfg.logger.mode = "auto"
    assert resolve_mode(cfg) == "online"
    cfg.logger.mode = "offline"
    assert resolve_mode(cfg) == "offline"


def test_build_callbacks_checks_values():
    assert build_callbacks(compose_cfg(TINY)) == []  # logger=none: nothing to log to
    with pytest.raises(ConfigError, match="diagnostics_every"):
        build_callbacks(compose_cfg([*TINY, "logger=csv", "logger.diagnostics_every=-1"]))
    with pytest.raises(ConfigError, match="landscape_scales"):
        build_callbacks(compose_cfg([*TINY, "logger=csv", "logger.landscape_every=5", "logger.landscape_scales=[0]"]))


# ---- one run ---------------------------------------------------------------------------------------
def test_offline_run_holds_config_metrics_and_summary(tmp_path):
    cfg = compose_cfg(
        WANDB + ["model.bn=post", "trainer.max_steps=20", "logger.diagnostics_every=10", "logger.landscape_every=15"]
    )
    m = train(cfg, output_dir=tmp_path, summarize=default_verdict)  # bnexp.run's verdict: the default rule
    r = _only_run(tmp_path)
    assert r["name"] == "post-auto-d3-lr2e-03-s0"
    assert (r["group"], r["job_type"], r["project"]) == ("single", "run", "bnexp")
    assert {"post-auto-d3", "bn=post", "depth=3"} <= set(r["tags"])
    c = r["config"]
    # nested as Hydra composes it (W&B's Hydra convention; the UI shows model.bn)
    assert c["model"]["bn"] == "post" and c["model"]["depth"] == 3 and c["optim"]["lr"] == pytest.approx(0.002)
    assert c["seed"] == 0 and c["trainer"]["max_steps"] == 20 and c["variant"] == "post-auto-d3"
    assert c["provenance"]["device"] == "cpu" and c["provenance"]["torch"].startswith("2.")
    assert c["data"]["batch_size"] == 64 and c["optim"]["name"] == "adam" and c["loss"] == "sigmoid"
    keys = r["history_keys"]
    for k in CORE_METRICS:
        assert k in keys, k
    for layer in ("L01", "L03", "fc"):  # per-layer statistics, before and after BN (post: BN input too)
        for stat in ("z_mean", "z_std", "bn_out_mean", "bn_out_std", "bn_in_std"):
            assert f"act/{stat}/{layer}" in keys
        assert f"grad/{layer}" in keys
        assert r["history"][0][f"hist/z/{layer}"]["_type"] == "histogram"
    for k in ("loss_range", "grad_change_max", "beta_smoothness", "grad_norm", "loss"):
        assert f"landscape/{k}" in keys
    steps = [h["trainer/global_step"] for h in r["history"] if "landscape/loss_range" in h]
    assert steps == [0, 15]
    # each validation at the step metrics.json gives it (Lightning's own logging would say 9, 19)
    val_steps = [h["trainer/global_step"] for h in r["history"] if "val/acc" in h]
    assert val_steps == [h["step"] for h in m["val_history"]] == [10, 20]
    assert [h["trainer/global_step"] for h in r["history"] if "test/acc" in h] == [20]
    s = r["summary"]
    assert s["val/acc"] == pytest.approx(m["val/acc"]) and s["test/acc"] == pytest.approx(m["test/acc"])
    assert s["diverged"] is False and s["diverged_count"] == 0 and s["step"] == 20
    assert s["stable"] == (m["val/acc"] >= 0.9) and s["rule"]["threshold"] == 0.9
    assert s["steps_per_s"] > 0 and s["perf/steps_per_s"] > 0
    assert "val_history" not in s
    assert r["exit_code"] == 0
    assert r["n_stats"] > 0  # system metrics: W&B's default, not turned off through a private setting
    # a run rerun into its dir (after an interruption: no metrics.json yet) resumes the same W&B run (same id)
    (tmp_path / "metrics.json").unlink()
    train(cfg, output_dir=tmp_path)
    ids = [read_offline_run(p, wait_s=30)["id"] for p in offline_runs(tmp_path)]
    assert len(ids) == 2 and ids[0] == ids[1] == r["id"]


def test_failed_training_closes_its_run_as_failed(tmp_path):
    class Boom(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            if trainer.global_step == 3:
                raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        train(compose_cfg(WANDB), output_dir=tmp_path, callbacks=[Boom()])
    assert _only_run(tmp_path)["exit_code"] == 1


# ---- no API key, a terminal, no prompt ---------------------------------------------------------------
def _run_in_pty(cmd: list[str], env: dict, timeout: float, stop_on: bytes | None = None) -> tuple[int | None, str]:
    """Run cmd with a pseudo-terminal as stdin/stdout/stderr; (exit code or None on timeout, output)."""
    import pty

    master, slave = pty.openpty()
    p = subprocess.Popen(cmd, stdin=slave, stdout=slave, stderr=slave, env=env, cwd=REPO, close_fds=True)
    os.close(slave)
    out, t0 = b"", time.monotonic()
    try:
        while True:
            if time.monotonic() - t0 > timeout or (stop_on and stop_on in out):
                p.kill()
                p.wait()
                return None, out.decode(errors="replace")
            ready, _, _ = select.select([master], [], [], 0.2)
            if ready:
                try:
                    chunk = os.read(master, 65536)
                except OSError:  # the child closed the terminal
                    chunk = b""
                out += chunk
                if chunk:
                    continue
            if p.poll() is not None:
                return p.returncode, out.decode(errors="replace")
    finally:
        os.close(master)


def _no_key_env(home: Path) -> dict:
    home.mkdir(parents=True, exist_ok=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env.update(HOME=str(home), PYTHONUNBUFFERED="1")
    return env


def test_no_api_key_on_a_terminal_neither_prompts_nor_hangs(tmp_path):
    env = _no_key_env(tmp_path / "home")  # empty HOME, WANDB_API_KEY and WANDB_MODE unset
    out_dir = tmp_path / "run"
    cmd = [sys.executable, "-m", "bnexp.run", *TINY, "logger=wandb", "trainer.max_steps=5", f"hydra.run.dir={out_dir}"]
    rc, out = _run_in_pty(cmd, env, timeout=150, stop_on=b"Enter your choice")
    assert "Enter your choice" not in out and "API key" not in out, out[-2000:]
    assert rc == 0, out[-3000:]
    r = _only_run(out_dir)
    assert r["summary"]["step"] == 5 and r["config"]["logger"]["mode"] == "auto"
    assert "wandb sync" in out  # tells the user how to upload later


def test_harness_sees_the_prompt_wandb_would_show(tmp_path):
    # the control for the test above: plain wandb.init() in the same pseudo-terminal does prompt
    env = _no_key_env(tmp_path / "home")
    code = f"import wandb; wandb.init(project='x', dir={str(tmp_path)!r})"
    rc, out = _run_in_pty([sys.executable, "-c", code], env, timeout=60, stop_on=b"Enter your choice")
    assert rc is None and "Enter your choice" in out, out[-2000:]


# ---- the other loggers -------------------------------------------------------------------------------
def test_csv_logger_gets_the_diagnostics_too(tmp_path):
    cfg = compose_cfg(
        [*TINY, "logger=csv", "trainer.max_steps=10", "logger.diagnostics_every=5", "logger.landscape_every=5"]
    )
    m = train(cfg, output_dir=tmp_path)
    assert m["step"] == 10
    with open(tmp_path / "csv" / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    cols = set(rows[0])
    assert {"train/loss", "val/acc", "perf/steps_per_s", "act/z_std/L01", "grad/fc", "landscape/loss_range"} <= cols
    assert not any(c.startswith("hist/") for c in cols)  # histograms go to W&B only
    ranges = [float(r["landscape/loss_range"]) for r in rows if r["landscape/loss_range"]]
    assert len(ranges) == 2 and all(math.isfinite(x) and x >= 0 for x in ranges)


def test_logger_none_still_trains_and_writes_no_log(tmp_path):
    m = train(compose_cfg([*TINY, "trainer.max_steps=10", "logger.diagnostics_every=5"]), output_dir=tmp_path)
    assert m["step"] == 10 and not m["diverged"]
    assert not (tmp_path / "csv").exists() and not (tmp_path / "wandb").exists()


def test_a_runs_dir_its_wandb_name_and_id_share_one_name(tmp_path):
    """`python -m bnexp.run` as typed, in its default run dir: `<time>_<run name>`, the W&B run's name is the
    run name, and its id starts with the dir's name."""
    from helpers.env import bnexp, child_env

    r = bnexp("run", "experiment=smoke", "logger=wandb", "logger.mode=offline", cwd=tmp_path, env=child_env())
    assert r.returncode == 0, r.stderr[-2000:]
    (run_dir,) = [p.parent for p in (tmp_path / "outputs" / "runs").rglob("metrics.json")]
    assert run_dir.name.endswith("_pre-auto-d2-lr2e-03-s0"), run_dir.name
    (run,) = [read_offline_run(p, wait_s=30) for p in offline_runs(run_dir)]
    assert run["name"] == "pre-auto-d2-lr2e-03-s0" and run["id"].startswith(run_dir.name)


def test_a_record_cut_anywhere_or_damaged_is_not_whole(tmp_path):
    """The offline record is judged by its own framing, not only by the service's log (which came too late one
    time in four): whole as written; cut at any byte, or with one byte changed, it is not."""
    train(compose_cfg([*WANDB, "trainer.max_steps=5"]), output_dir=tmp_path / "r")
    [run] = offline_runs(tmp_path / "r")
    [f] = run.glob("*.wandb")
    assert wandb_record.record_state(f) is None and wandb_record.record_errors(run, wait_s=0) == []
    data = f.read_bytes()
    cut = tmp_path / "cut" / f.name
    cut.parent.mkdir()
    for n in [*range(0, len(data), 97), len(data) - 1]:  # every 97th byte, and one short of whole
        cut.write_bytes(data[:n])
        assert wandb_record.record_state(cut) is not None, n
    assert "cut off" in wandb_record.record_errors(cut.parent, wait_s=0)[0]
    middle = len(data) // 2
    cut.write_bytes(data[:middle] + bytes([data[middle] ^ 1]) + data[middle + 1 :])
    assert "checksum" in wandb_record.record_state(cut)
