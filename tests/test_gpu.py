"""What needs a CUDA device: `pytest -m gpu` (skipped without one; bench/gpu_check.py runs them first).

The CPU side of each check runs in the default suite: tests/core/test_train.py (solo), tests/population (population,
compiled population), and bench/gpu_check.py --device cpu --quick (tests/test_gpu_check.py) runs the same sections
on the CPU. DDP with SyncBatchNorm on 2 GPUs: tests/core/test_ddp.py::test_ddp_sync_bn_on_two_gpus.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import pytest
import torch
from helpers.env import TINY, compose_cfg, replace

from bnexp.core.train import train
from bnexp.population.train import train_population

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

GPU = replace(TINY, "trainer.accelerator=gpu", "model.bn=pre")
F64 = "trainer.precision=64-true"  # BN makes float32 trajectories chaotic (tests/population): compare in float64
LOSSES = ("val/loss", "val/loss_batchstats", "test/loss")


def _close(a: dict, b: dict, rel: float) -> None:
    for key in LOSSES:
        assert a[key] == pytest.approx(b[key], rel=rel), key
    assert a["step"] == b["step"] and [h["step"] for h in a["val_history"]] == [h["step"] for h in b["val_history"]]


def test_a_cuda_run_matches_the_cpu_run(tmp_path):
    cpu = train(compose_cfg(replace(GPU, "trainer.accelerator=cpu", F64)), output_dir=tmp_path / "cpu")
    gpu = train(compose_cfg([*GPU, F64]), output_dir=tmp_path / "gpu")
    assert gpu["provenance"]["device"].startswith("cuda") and cpu["provenance"]["device"] == "cpu"
    _close(gpu, cpu, rel=1e-6)  # cuDNN and the CPU kernels sum in other orders: float64 rounding, 30 steps
    for key in ("val/acc", "val/acc_batchstats", "test/acc"):
        assert abs(gpu[key] - cpu[key]) <= 1 / 256, key  # at most one image of 256 flips


def test_population_on_cuda_matches_solo_runs_on_cuda(tmp_path):
    lrs, seeds = [1e-3, 1e-2], [0, 1]
    pop = train_population(compose_cfg([*GPU, F64]), lrs, [tmp_path / "p0", tmp_path / "p1"], seeds)
    for k, (lr, seed) in enumerate(zip(lrs, seeds, strict=True)):
        solo = train(compose_cfg([*GPU, F64, f"optim.lr={lr}", f"seed={seed}"]), output_dir=tmp_path / f"s{k}")
        _close(pop[k], solo, rel=1e-7)
        assert pop[k]["provenance"]["device"].startswith("cuda")


def _solo(tmp_path: Path, tag: str, over: list[str]) -> list[dict]:
    return [train(compose_cfg(over), output_dir=tmp_path / tag)]


def _population(tmp_path: Path, tag: str, over: list[str]) -> list[dict]:
    return train_population(compose_cfg(over), [1e-3, 1e-2], [tmp_path / tag / str(k) for k in (0, 1)])


@pytest.mark.parametrize("run", [_solo, _population], ids=["solo", "population"])
def test_reduce_overhead_on_cuda_matches_eager(tmp_path, run):
    # the forward and backward as CUDA graphs; float32 (as users run it), a short horizon
    over = [*GPU, "model.depth=2", "trainer.max_steps=20"]
    eager, comp = run(tmp_path, "eager", over), run(tmp_path, "compiled", [*over, "trainer.compile=reduce-overhead"])
    for e, c in zip(eager, comp, strict=True):
        for key in LOSSES:
            assert c[key] is not None and c[key] == pytest.approx(e[key], rel=2e-2), key
        assert c["step"] == e["step"] and abs(c["test/acc_single"] - e["test/acc_single"]) <= 0.1


def test_out_of_memory_fails_its_trial_cleanly_and_the_next_ones_run(tmp_path):
    # a real CUDA OOM: this process may use 256 MiB; batch 8192 needs far more, batch 64 fits
    import optuna
    from helpers.sweeps import run_sweep, storage, sweep_args

    cap = 256 * 2**20 / torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction(cap)
    try:
        out = tmp_path / "sw"
        args = replace(
            sweep_args(out, points=2, extra=["+sweep.grid.data.batch_size=[8192,64]", "sweep.retries=0"]),
            "sweep.grid.model.bn=[pre]",  # design order: both batch-8192 points first, then both batch-64 ones
            "data.limit_train=8192",
            "trainer.accelerator=gpu",
        )
        run_sweep(args)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    study = optuna.load_study(study_name="t", storage=storage(out))
    trials = sorted(study.get_trials(), key=lambda t: t.number)
    oom = [t for t in trials if t.state.name == "FAIL"]
    done = [t for t in trials if t.state.name == "COMPLETE"]
    assert len(oom) == 2 and all(t.user_attrs["fail_reason"].startswith("CUDA out of memory") for t in oom)
    assert len(done) == 2 and min(t.number for t in done) > max(t.number for t in oom)  # they ran after the OOMs
    for t in done:
        assert json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())["step"] == 12
    gc.collect()
    assert torch.cuda.memory_allocated() < 64 * 2**20  # the failed trials' tensors were released
