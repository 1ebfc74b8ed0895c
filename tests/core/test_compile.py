"""Compile once, train many (bnexp.core.compiled): the `auto` rule, one compile per variant per process (the
training step and every evaluation pass), compiled trials equal to eager ones, a diverging compiled trial, a
sweep mixing variants, and `sweep.jobs=auto` workers through the real command.

The default suite compiles with the aot_eager backend ($BNEXP_COMPILE_BACKEND: dynamo's capture and AOT autograd,
the graphs and guards inductor gets, without its code generation); the `slow` test runs inductor itself. The
compile counts are dynamo's own (torch._dynamo.utils.counters["stats"]["unique_graphs"]) as train() records them
in metrics.json (`compile_new_graphs`) and logs them (`compile=...: N new graph(s) ... (pid P)`)."""

from __future__ import annotations

import json
import re
import subprocess

import pytest
from helpers.env import REPO, TINY, child_env, compose_cfg, replace
from helpers.sweeps import cli, run_sweep, sweep_args

from bnexp.core.compiled import choose, device_type, match_state_keys, runs_per_worker
from bnexp.core.train import compile_mode, train

SHORT = replace(TINY, "trainer.max_steps=12", "trainer.val_every=6")


@pytest.fixture
def aot_eager(monkeypatch):
    monkeypatch.setenv("BNEXP_COMPILE_BACKEND", "aot_eager")


# ---- the auto rule (pure) -----------------------------------------------------------------------------------
def test_auto_compiles_where_a_worker_trains_enough_steps():
    assert choose("auto", "cpu", runs=1, steps=800) == "none"  # a single bnexp.run: eager
    assert choose("auto", "cpu", runs=4, steps=300) == "none"  # below the CPU break-even (3000 steps)
    assert choose("auto", "cpu", runs=1000, steps=800) == "none"  # a CPU: measured, compiling does not pay
    # sweep.jobs=auto's single-threaded CPU workers: compiled 0.97x eager channels_last per trial, a
    # 53.8 s compile: 43000 steps of one variant per worker (bnexp.core.compiled, measured)
    assert choose("auto", "cpu", runs=10, steps=800, threads=1) == "none"
    assert choose("auto", "cpu", runs=53, steps=800, threads=1) == "none"  # 42400 steps
    assert choose("auto", "cpu", runs=54, steps=800, threads=1) == "default"  # 43200 steps
    assert choose("auto", "cpu", runs=1000, steps=800, threads=2) == "none"
    assert choose("auto", "cpu", runs=1, steps=800, break_even_steps=100, threads=1) == "default"
    assert choose("auto", "cuda", runs=100, steps=800, threads=1) == "reduce-overhead"
    assert choose("auto", "cuda", runs=1, steps=800) == "none"
    assert choose("auto", "cuda", runs=24, steps=800) == "reduce-overhead"  # a GPU: CUDA graphs
    assert choose("auto", "cuda", runs=2, steps=800, break_even_steps=1000) == "reduce-overhead"
    for mode in ("none", "default", "reduce-overhead", "max-autotune"):  # explicit choices stay what they say
        assert choose(mode, "cuda", runs=100, steps=800) == choose(mode, "cpu", runs=0, steps=1) == mode
    assert device_type("gpu", False) == device_type("auto", True) == "cuda"
    assert device_type("auto", False) == device_type("cpu", True) == "cpu"


def test_auto_counts_one_variants_share_of_the_points():
    """A process compiles every variant it trains: the break-even is met by one variant's share, not the study's."""
    from omegaconf import OmegaConf

    from bnexp.core.compiled import sweep_mode

    t = OmegaConf.create({"compile": "auto", "max_steps": 800, "compile_break_even_steps": 8000})
    assert sweep_mode(t, 20, 1, 0, 1, None, 1) == "default"  # 20 trainings of 800 steps: 16000 >= 8000
    assert sweep_mode(t, 20, 1, 0, 1, None, 1, variants=3) == "none"  # 7 of one variant: 5600 < 8000
    assert sweep_mode(t, 30, 1, 0, 1, None, 1, variants=3) == "default"  # 10 of one variant: 8000


def test_runs_per_worker_shares_the_waiting_points():
    assert runs_per_worker(24, 2) == 12 and runs_per_worker(25, 2) == 13
    assert runs_per_worker(24, 2, population=4) == 3  # a population trains 4 points as one training
    assert runs_per_worker(24, 1, max_trials=5) == 5
    assert runs_per_worker(0, 2) == 0


def test_auto_is_the_default_and_a_single_run_stays_eager():
    cfg = compose_cfg([])
    assert cfg.trainer.compile == "auto" and compile_mode(cfg) == "none"  # bnexp.run's defaults: 800 steps
    long = compose_cfg(["trainer.accelerator=cpu", "trainer.max_steps=5000"])
    assert compile_mode(long) == "none"  # a CPU: measured, compiling does not pay (bnexp.core.compiled)
    assert compile_mode(compose_cfg(["trainer.compile_break_even_steps=800", "trainer.accelerator=cpu"])) == "default"


def test_a_checkpoint_loads_across_compiled_and_eager():
    own = {"model.features.0.weight": 0, "model.fc.bias": 0}
    wrapped = {"model._orig_mod.features.0.weight": 1, "model._orig_mod.fc.bias": 2}
    assert match_state_keys(wrapped, own) == {"model.features.0.weight": 1, "model.fc.bias": 2}
    assert match_state_keys({"model.features.0.weight": 1, "model.fc.bias": 2}, wrapped) == {
        "model._orig_mod.features.0.weight": 1,
        "model._orig_mod.fc.bias": 2,
    }


# ---- one compile per variant per process --------------------------------------------------------------------
def test_trials_of_one_variant_compile_once_and_match_eager(tmp_path, aot_eager):
    """The first compiled trial compiles the training step and the evaluation passes (population statistics,
    batch statistics, the batch-of-1 test); trials at other lrs and seeds compile nothing, and give eager's
    numbers (aot_eager runs eager's ops: equal to float rounding)."""
    from bnexp.core.compiled import graphs

    cfg = lambda lr, seed, mode: compose_cfg([*SHORT, f"optim.lr={lr}", f"seed={seed}", f"trainer.compile={mode}"])  # noqa: E731
    points = [(1e-3, 0), (3e-2, 1)]
    before = graphs()
    comp = [train(cfg(lr, s, "default"), output_dir=tmp_path / f"c{i}") for i, (lr, s) in enumerate(points)]
    news = [m["compile_new_graphs"] for m in comp]
    # train (64), eval (256, population statistics), eval on batch statistics (256), the test's batch of 1; the
    # test set in batches of 256 shares the eval graph; another test may have compiled this variant already
    assert news[1:] == [0], news
    assert graphs() - before == news[0] <= 4
    eager = [train(cfg(lr, s, "none"), output_dir=tmp_path / f"e{i}") for i, (lr, s) in enumerate(points)]
    for c, e in zip(comp, eager, strict=True):
        assert c["compile"] == "default" and e["compile"] == "none" and e["compile_new_graphs"] is None
        assert c["step"] == e["step"] == 12
        for k in ("val/loss", "val/loss_batchstats", "test/loss", "val/acc", "test/acc_single"):
            assert c[k] == pytest.approx(e[k], rel=1e-5, abs=1e-6), k


@pytest.mark.slow
def test_the_first_compiled_trial_compiles_its_evaluation_passes(tmp_path, aot_eager):
    """A variant no other test compiles (depth 2, bn=post): its first trial's new graphs are exactly the four
    passes, the second trial's none."""
    ov = replace(SHORT, "model.depth=2", "model.bn=post", "trainer.compile=default")
    a = train(compose_cfg(ov), output_dir=tmp_path / "a")
    b = train(compose_cfg([*ov, "optim.lr=0.01", "seed=3"]), output_dir=tmp_path / "b")
    assert (a["compile_new_graphs"], b["compile_new_graphs"]) == (4, 0)


def test_a_diverging_compiled_trial_stops_cleanly_and_the_next_starts_fresh(tmp_path, aot_eager):
    ov = replace(SHORT, "model.bn=off", "trainer.max_steps=60", "trainer.compile=default")
    bad = train(compose_cfg([*ov, "optim.lr=1e6"]), output_dir=tmp_path / "bad")
    assert bad["diverged"] is True and bad["step"] < 60
    assert json.loads((tmp_path / "bad" / "metrics.json").read_text())["diverged"] is True
    # the kept net held the diverged trial's non-finite weights: the next trial loads its own initial state
    good = train(compose_cfg([*ov, "optim.lr=1e-3"]), output_dir=tmp_path / "good")
    eager = train(compose_cfg([*ov, "optim.lr=1e-3", "trainer.compile=none"]), output_dir=tmp_path / "eager")
    assert good["compile_new_graphs"] == 0 and good["diverged"] is False
    assert good["val/loss"] == pytest.approx(eager["val/loss"], rel=1e-5)


def test_a_run_stopped_compiled_resumes_eager(tmp_path, aot_eager):
    """`auto` may decide otherwise when a stopped sweep is rerun with fewer points left: a checkpoint taken
    compiled (keys under torch.compile's `_orig_mod.`) resumes eagerly and ends as the uninterrupted run."""
    from lightning.pytorch.callbacks import Callback

    from bnexp.core.train import StopRequested

    class StopAt(Callback):
        def on_train_batch_start(self, trainer, *a):
            if trainer.global_step == 7:
                raise StopRequested("preempted")

    whole = train(compose_cfg([*SHORT, "trainer.compile=none"]), output_dir=tmp_path / "whole")
    with pytest.raises(StopRequested):
        train(compose_cfg([*SHORT, "trainer.compile=default"]), output_dir=tmp_path / "cut", callbacks=[StopAt()])
    resumed = train(compose_cfg([*SHORT, "trainer.compile=none"]), output_dir=tmp_path / "cut")
    assert resumed["resumed_from_step"] == 7 and resumed["step"] == 12
    assert resumed["val/loss"] == pytest.approx(whole["val/loss"], rel=1e-5)


@pytest.mark.slow
def test_a_sweep_mixing_variants_compiles_once_per_variant_and_judges_as_eager(tmp_path, aot_eager):
    """Two variants x 3 lrs in one worker: each variant's first trial compiles, its others reuse; the stability
    verdicts equal the eager sweep's."""
    res = {}
    for mode in ("default", "none"):
        out = tmp_path / mode
        # depth 4: variants no other test here compiles, so each one's first trial compiles in this process
        summary = run_sweep(sweep_args(out, points=3, extra=["model.depth=4", f"trainer.compile={mode}"]))
        trials = sorted((out / "trials").glob("*/*/metrics.json"), key=lambda p: p.parent.name)
        ms = [json.loads(p.read_text()) for p in trials]
        res[mode] = (summary, ms)
    summary, ms = res["default"]
    firsts = {}
    for m in ms:
        firsts.setdefault(m["bn"], []).append(m["compile_new_graphs"])
    assert set(firsts) == {"off", "pre"}
    # the first trial of each variant compiles its training step and evaluation passes (no batch-statistics
    # pass without BN; no batch-of-1 test: a sweep's trials skip the test pass); the others compile nothing
    assert firsts == {"off": [2, 0, 0], "pre": [3, 0, 0]}, firsts
    eager_summary, eager_ms = res["none"]
    verdict = lambda s: [(v["label"], v["n_stable"], v["stable_lr_min"], v["stable_lr_max"]) for v in s["variants"]]  # noqa: E731
    assert verdict(summary) == verdict(eager_summary)
    for c, e in zip(ms, eager_ms, strict=True):
        assert (c["bn"], c["lr"]) == (e["bn"], e["lr"])
        assert c["val/acc"] == pytest.approx(e["val/acc"], abs=1e-6)


@pytest.mark.slow  # the default suite keeps one compile per variant in-process and across a mixed-variant sweep
def test_sweep_jobs_auto_with_compile_auto_compiles_once_per_worker(tmp_path):
    """The real command, local workers (sweep.jobs=auto: one per core), trainer.compile=auto with a break-even
    the design reaches: the sweep decides once for all workers; each compiles in its first trial, never again."""
    out = tmp_path / "s"
    cmd = replace(
        cli(out, "trainer.compile=auto", "trainer.compile_break_even_steps=1", points=8),
        "sweep.jobs=auto",
        "sweep.grid.model.bn=[pre]",
    )
    env = child_env(BNEXP_LOG="INFO", BNEXP_COMPILE_BACKEND="aot_eager")
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-4000:]
    decided = re.search(
        r"trainer.compile=auto -> default: 8 point\(s\) to train, 1 variant\(s\), (\d+) worker\(s\)", r.stderr
    )
    assert decided, r.stderr[-4000:]
    per_pid: dict[str, list[int]] = {}
    for n, pid in re.findall(
        r"compile=default: (\d+) new graph\(s\) in this run, \d+ in this process \(pid (\d+)\)", r.stderr
    ):
        per_pid.setdefault(pid, []).append(int(n))
    assert len(per_pid) == int(decided.group(1)) > 1, r.stderr[-4000:]  # every worker trained, compiled
    assert sum(len(v) for v in per_pid.values()) == 8
    for pid, news in per_pid.items():
        assert news[0] == 3 and all(n == 0 for n in news[1:]), (pid, news)  # no test pass in a sweep trial
    modes = {json.loads(p.read_text())["compile"] for p in (out / "trials").glob("*/*/metrics.json")}
    assert modes == {"default"}


@pytest.mark.slow
def test_inductor_compiles_once_for_trials_of_one_variant(tmp_path):
    """The same with inductor itself (minutes of code generation on a CPU): one compile, then reuse."""
    ov = replace(SHORT, "model.depth=2", "trainer.compile=default")
    a = train(compose_cfg(ov), output_dir=tmp_path / "a")
    b = train(compose_cfg([*ov, "optim.lr=0.01", "seed=1"]), output_dir=tmp_path / "b")
    e = train(compose_cfg([*ov, "optim.lr=0.01", "seed=1", "trainer.compile=none"]), output_dir=tmp_path / "e")
    assert a["compile_new_graphs"] > 0 and b["compile_new_graphs"] == 0
    for k in ("val/loss", "val/loss_batchstats", "test/loss"):
        assert b[k] == pytest.approx(e[k], rel=2e-2), k
