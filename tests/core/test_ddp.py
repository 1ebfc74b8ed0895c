"""trainer=ddp with 2 CPU processes (gloo): Lightning's subprocess launcher re-runs `python -m bnexp.run` for
rank 1; every rank must land in rank 0's run dir, and only rank 0 writes config.yaml and metrics.json."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import TINY, child_env

SMALL = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every", "data.limit_train"))]
DDP = ["trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", *SMALL]
DDP += ["trainer.max_steps=10", "trainer.val_every=5", "data.limit_train=512"]


def run_cli(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    # cwd=tmp_path: Hydra's default, timestamped run dirs land there, so stray per-rank dirs would show
    return subprocess.run(
        [sys.executable, "-m", "bnexp.run", *args],
        cwd=cwd,
        env=child_env(BNEXP_LOG="INFO"),  # rank 1 logs where it trained
        capture_output=True,
        text=True,
        timeout=240,
    )


def test_ddp_two_ranks_share_one_run_dir(tmp_path):
    r = run_cli([*DDP, "model.bn=pre", "logger=csv"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    runs = list((tmp_path / "outputs" / "runs").glob("*/*"))  # outputs/runs/<date>/<time>_<label>
    assert len(runs) == 1, runs  # one run dir for both ranks
    run = runs[0]
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("metrics.json")) == [
        (run / "metrics.json").relative_to(tmp_path)
    ]
    m = json.loads((run / "metrics.json").read_text())
    assert m["step"] == 10 and m["bn"] == "pre" and m["diverged"] is False
    assert "strategy: ddp" in (run / "config.yaml").read_text() and "devices: 2" in (run / "config.yaml").read_text()
    assert (run / "rank.log").is_file()  # rank 1 ran there (its log), without a .hydra/ of its own
    assert "training bn=pre" in (run / "rank.log").read_text()
    assert r.stdout.count("test/acc_single=") == 1  # one summary line: rank 0's


@pytest.mark.slow  # DDP ranks sharing a run dir stay in the default suite (test_ddp_two_ranks_share_one_run_dir)
def test_ddp_multirun_keeps_one_sweep_dir(tmp_path):
    # without the fix, rank 1 re-runs the whole `-m` sweep into a second sweep dir of its own
    r = run_cli(["-m", "model.bn=off,pre", *DDP, "logger=none"], tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir())
    assert jobs == ["0_off-auto-d3-lr2e-03-s0", "1_pre-auto-d3-lr2e-03-s0"]  # one name: dir, W&B name, id
    for j in jobs:
        assert json.loads((sweeps[0] / j / "metrics.json").read_text())["step"] == 10
        assert (sweeps[0] / j / "rank.log").is_file()
    assert len(list(tmp_path.rglob("metrics.json"))) == 2


def test_sync_bn_on_cpu_is_a_clear_error(tmp_path):
    # torch's DDP refuses SyncBatchNorm on CPU modules; the CLI says so before starting any rank
    r = run_cli([*DDP, "model.sync_bn=true", "logger=none"], tmp_path)
    assert r.returncode == 2, r.stderr[-3000:]
    assert r.stderr.strip().splitlines()[-1].startswith("bnexp: error: model.sync_bn=true needs CUDA devices")
    assert "Traceback" not in r.stderr
    assert not list(tmp_path.rglob("metrics.json"))


@pytest.mark.gpu
def test_ddp_sync_bn_on_two_gpus(tmp_path):
    import torch

    if torch.cuda.device_count() < 2:
        pytest.skip(f"needs 2 CUDA devices, found {torch.cuda.device_count()}")
    args = ["trainer=ddp", "trainer.accelerator=gpu", "trainer.devices=2", *SMALL, "trainer.accelerator=gpu"]
    for sync in ("true", "false"):
        r = run_cli([*args, f"model.sync_bn={sync}", f"hydra.run.dir=run_{sync}"], tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
        assert json.loads((tmp_path / f"run_{sync}" / "metrics.json").read_text())["step"] == 30
