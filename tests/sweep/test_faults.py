"""Faults inside a sweep: a GPU out-of-memory fails that one trial with its reason and the sweep goes on (the
point is retried); a diverged trial is a result (COMPLETE, diverged=true), not a failure.

No GPU here, so the OOM is raised where a real one surfaces: out of train(), as torch.OutOfMemoryError,
with CUDA's own message. What is tested is the sweep's handling of it. (Kill -9 and SIGTERM: test_liveness.py
and test_postgres.py.)
"""

import collections
import csv

import optuna
import pytest
import torch
from helpers.env import TINY
from helpers.sweeps import run_sweep

import bnexp.core.train
from bnexp.sweep.faults import fail_reason

TRAIN = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every"))]
TRAIN += ["trainer.max_steps=12", "trainer.val_every=6"]
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity of 79.11 GiB of which "
    "1.25 GiB is free. Of the allocated memory 70.02 GiB is allocated by PyTorch"
)


def test_oom_fails_one_trial_and_the_sweep_goes_on_and_divergence_is_a_result(tmp_path, monkeypatch):
    real, calls = bnexp.core.train.train, []

    def train_oom_once(cfg, **kw):
        calls.append(float(cfg.optim.lr))
        if len(calls) == 1:  # the first trial runs out of GPU memory
            raise torch.OutOfMemoryError(CUDA_OOM)
        return real(cfg, **kw)

    monkeypatch.setattr(bnexp.core.train, "train", train_oom_once)
    out = tmp_path / "sw"
    args = [
        "sweep=lr_stability",
        "sweep.name=faults",
        f"sweep.out_dir={out}",
        "sweep.grid.model.bn=[off]",
        "sweep.lr.points=2",
        "sweep.seeds=[0]",
        "sweep.jobs=1",
        "sweep.lr.low=1e-3",
        "sweep.lr.high=1e6",  # Adam at lr 1e6 without BN: a non-finite loss within a few steps
        "sweep.progress=false",
        *TRAIN,
    ]
    summary = run_sweep(args)

    study = optuna.load_study(study_name="faults", storage=f"sqlite:///{out}/study.db")
    trials = study.get_trials()
    states = collections.Counter(t.state.name for t in trials)
    assert states == {"FAIL": 1, "COMPLETE": 2}  # the OOM trial failed; both points have a result
    oom = next(t for t in trials if t.state.name == "FAIL")
    assert oom.user_attrs["fail_reason"].startswith("CUDA out of memory: Tried to allocate 20.00 GiB")
    assert "data.batch_size" in oom.user_attrs["fail_reason"]  # says what to shrink
    retry = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["key"] == oom.user_attrs["key"]]
    assert len(retry) == 1 and retry[0].user_attrs["attempt"] == 1  # the point was retried, once

    diverged = [t for t in trials if t.state.name == "COMPLETE" and t.user_attrs["diverged"]]
    assert [t.params["optim.lr"] for t in diverged] == [1e6]  # a result: COMPLETE, flagged diverged
    assert summary["variants"][0]["n_diverged"] == 1
    with open(out / "trials.csv") as f:
        rows = list(csv.DictReader(f))
    assert any("CUDA out of memory" in (r.get("fail_reason") or "") for r in rows)  # the report keeps why


@pytest.mark.parametrize(
    "exc,prefix,fix",
    [
        (torch.OutOfMemoryError(CUDA_OOM), "CUDA out of memory: Tried to allocate", "data.batch_size"),
        (RuntimeError("CUDA error: out of memory"), "out of memory: CUDA error", "data.on_device=false"),
        (RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to allocate 9 GB"), "out of memory", ""),
        (ValueError("boom"), "ValueError: boom", ""),
    ],
)
def test_fail_reason(exc, prefix, fix):
    r = fail_reason(exc)
    assert r.startswith(prefix) and fix in r and "\n" not in r
