import json
import math
import subprocess
import sys

import pytest
from helpers.env import REPO, TINY, compose_cfg

from bnexp.core.train import train

REQUIRED = [
    "val/acc",
    "val/loss",
    "val/acc_best",
    "val/acc_batchstats",
    "test/acc",
    "test/acc_single",
    "diverged",
    "step",
    "wall_s",
]


def test_cli_end_to_end_writes_metrics(tmp_path):
    out = tmp_path / "run"
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "bnexp.run",
            *TINY,
            "logger=csv",
            "model.bn=pre",
            f"hydra.run.dir={out}",
        ],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((out / "metrics.json").read_text())
    for k in REQUIRED:
        assert k in m, k
    assert m["step"] == 30 and m["diverged"] is False
    assert 0.0 <= m["test/acc"] <= 1.0 and 0.0 <= m["test/acc_single"] <= 1.0
    assert m["val/acc_batchstats"] > 0.5  # 30 steps with BN already learn on batch statistics
    assert [h["step"] for h in m["val_history"]] == [10, 20, 30]
    assert m["val/acc_best"] == max(h["val/acc"] for h in m["val_history"])
    assert "bn: pre" in (out / "config.yaml").read_text()
    csv = (out / "csv" / "metrics.csv").read_text()
    assert "train/loss" in csv and "train/grad_norm" in csv and "val/acc_batchstats" in csv
    assert "test/acc_single=" in r.stdout  # the printed summary
    prov = m["provenance"]  # where and with what it ran, so steps_per_s compares across machines
    assert prov["device"] == "cpu" and prov["torch"].startswith("2.") and prov["torch_threads"] >= 1
    assert prov["bnexp"] and prov["host"] and prov["started"].endswith("Z")
    assert prov["git_commit"] == "unknown" or len(prov["git_commit"].split("+")[0]) == 40


def test_forced_divergence_is_a_result(tmp_path):
    cfg = compose_cfg(TINY + ["model.bn=off", "optim.lr=1e6", "trainer.max_steps=60"])
    m = train(cfg, output_dir=tmp_path)
    assert m["diverged"] is True
    assert m["step"] < 60  # stopped early, cleanly
    assert json.loads((tmp_path / "metrics.json").read_text())["diverged"] is True
    assert m["test/acc"] is not None and m["test/acc"] < 0.3


def test_same_seed_same_result(tmp_path):
    cfg = compose_cfg(TINY + ["model.bn=post", "trainer.max_steps=12"])
    a = train(cfg, output_dir=tmp_path / "a")
    b = train(cfg, output_dir=tmp_path / "b")
    assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-6)
    c = train(
        compose_cfg(TINY + ["model.bn=post", "trainer.max_steps=12", "seed=1"]),
        output_dir=tmp_path / "c",
    )
    assert not math.isclose(a["val/loss"], c["val/loss"], rel_tol=1e-6)


def test_acc_single_uses_population_statistics(tmp_path):
    # scored one at a time, eval mode must give the same accuracy as the batched eval on those images
    cfg = compose_cfg(TINY + ["model.bn=pre", "data.limit_test=20", "data.single_n=20", "model.bn_momentum=0.5"])
    m = train(cfg, output_dir=tmp_path)
    assert m["test/acc_single"] == pytest.approx(m["test/acc"])


def test_manual_bn_runs_like_torch_bn(tmp_path):
    a = train(
        compose_cfg(TINY + ["model.bn_impl=torch", "trainer.max_steps=10"]),
        output_dir=tmp_path / "a",
    )
    b = train(
        compose_cfg(TINY + ["model.bn_impl=manual", "trainer.max_steps=10"]),
        output_dir=tmp_path / "b",
    )
    assert a["val/loss"] == pytest.approx(b["val/loss"], rel=1e-3)


@pytest.mark.slow
def test_compiled_step_matches_eager(tmp_path):
    # trainer.compile: validation (population and batch statistics) and the batch-of-1 test stay correct
    # under torch.compile; ~40 s of compilation on CPU, so slow. On a GPU, reduce-overhead adds CUDA graphs.
    ov = TINY + ["trainer.max_steps=20"]
    eager = train(compose_cfg(ov), output_dir=tmp_path / "eager")
    comp = train(compose_cfg(ov + ["trainer.compile=default"]), output_dir=tmp_path / "compiled")
    for k in ("val/loss", "val/loss_batchstats", "test/loss"):
        assert comp[k] == pytest.approx(eager[k], rel=2e-2), k
    assert abs(comp["test/acc_single"] - eager["test/acc_single"]) <= 0.1


def test_the_progress_bar_shows_steps_loss_and_the_last_val_acc(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "bnexp.run", *TINY, "trainer.progress_bar=true", f"hydra.run.dir={tmp_path}"],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    bar = [line for line in r.stdout.replace("\r", "\n").splitlines() if line.startswith("step:")]
    assert bar and "30/30" in bar[-1] and "loss=" in bar[-1] and "val/acc=" in bar[-1], r.stdout[-2000:]
    assert "Epoch" not in r.stdout and "v_num" not in r.stdout and "Testing" not in r.stdout
