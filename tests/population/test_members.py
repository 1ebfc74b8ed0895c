"""A population is the net itself, packed: changes to DeepConvNet reach it with no second edit; its members are
runs of their own (live W&B runs), and trainer.compile works for it."""

from __future__ import annotations

import math

import pytest
import torch
from helpers.env import TINY, compose_cfg
from helpers.wandb_offline import offline_runs, read_offline_run

from bnexp.core import net as core_net
from bnexp.core.metrics import compute_loss
from bnexp.core.net import DeepConvNet
from bnexp.population.net import PopulationNet
from bnexp.population.train import train_population
from bnexp.run import default_verdict


def _members_match_solos(seeds, **arch) -> None:
    """Forward, per-member gradients and BN running statistics of a population vs its members as solo nets."""
    torch.set_default_dtype(torch.float64)
    try:
        pop = PopulationNet.from_seeds(seeds, **arch)
        solos = []
        for s in seeds:
            torch.manual_seed(s)
            solos.append(DeepConvNet(**arch))
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(8, 1, 28, 28, generator=g), torch.randint(0, 10, (8,), generator=g)
        losses = compute_loss(pop(x), y, "sigmoid")
        losses.sum().backward()
        for k, m in enumerate(solos):
            loss = compute_loss(m(x), y, "sigmoid")
            loss.backward()
            torch.testing.assert_close(losses[k], loss, atol=1e-12, rtol=1e-10)
            got = dict(pop.member(k).named_parameters())
            for name, p in pop.named_parameters():
                name = name.removeprefix("net.")
                want = dict(m.named_parameters())[name]
                torch.testing.assert_close(got[name], want, atol=0, rtol=0)  # the solo init, exactly
                torch.testing.assert_close(p.grad.view(len(seeds), -1)[k].view_as(want), want.grad)
            for (name, b), want in zip(pop.member(k).named_buffers(), m.buffers(), strict=True):
                torch.testing.assert_close(b, want, msg=name)
    finally:
        torch.set_default_dtype(torch.float32)


def test_a_new_bn_placement_and_init_in_the_net_reach_the_population(monkeypatch):
    # edit the net only (Block.forward: BN placement; trunc_normal_: conv init) and the population follows
    def forward(self, x):  # a new placement: conv -> BN -> ReLU -> BN (the same BN twice)
        if self.pad is not None:
            x = self.pad(x)
        z = self.layer(x)
        return self.bn(self.act(self.bn(z))) if self.bn is not None else self.act(z)

    def uniform_init(w, std):
        return torch.nn.init.uniform_(w, -std, std)

    monkeypatch.setattr(core_net.Block, "forward", forward)
    monkeypatch.setattr(core_net, "trunc_normal_", uniform_init)
    _members_match_solos([3, 4], depth=3, bn="pre", bn_impl="manual")
    _members_match_solos([5, 6], depth=4, bn="post", bias="true")


def test_a_layer_without_a_packed_form_fails_loudly():
    m = DeepConvNet(depth=2)
    m.head = torch.nn.Sequential(torch.nn.LayerNorm(100), m.head)  # a layer kind the population cannot pack
    with pytest.raises(ValueError, match="no packed form for LayerNorm"):
        PopulationNet.from_members([m, m])


@pytest.fixture
def wandb_home(tmp_path_factory, monkeypatch):
    base = tmp_path_factory.getbasetemp() / "wandb_home"
    for var, sub in (("WANDB_CONFIG_DIR", "config"), ("WANDB_CACHE_DIR", "cache"), ("WANDB_DATA_DIR", "data")):
        monkeypatch.setenv(var, str(base / sub))


def test_each_member_has_its_own_live_wandb_run(tmp_path, wandb_home):
    over = TINY + ["logger=wandb", "logger.mode=offline", "model.bn=pre", "trainer.max_steps=20"]
    lrs, dirs = [1e-3, 1e-2], [tmp_path / "m0", tmp_path / "m1"]
    cfgs = []
    for k, lr in enumerate(lrs):  # as a sweep's trials: their own run names, one study group
        c = compose_cfg(over + [f"optim.lr={lr}"])
        c.logger.group, c.logger.job_type, c.logger.run_name = "pop_study", "trial", f"member-{k}"
        cfgs.append(c)
    live = []

    def on_step():  # while training: every member's run is open under its own dir
        live.append([len(offline_runs(d)) for d in dirs])

    ms = train_population(cfgs[0], lrs, dirs, on_step=on_step, member_cfgs=cfgs, summarize=default_verdict)
    assert live and all(n == [1, 1] for n in live)
    for k, (m, d) in enumerate(zip(ms, dirs, strict=True)):
        r = read_offline_run(offline_runs(d)[0], wait_s=30)
        assert (r["name"], r["group"], r["job_type"], r["exit_code"]) == (f"member-{k}", "pop_study", "trial", 0)
        assert r["config"]["optim"]["lr"] == pytest.approx(lrs[k]) and r["config"]["provenance"]["device"] == "cpu"
        train_rows = [h for h in r["history"] if "train/loss" in h]
        assert [h["trainer/global_step"] for h in train_rows] == [4, 9, 14, 19]  # logged as training went
        assert {"train/acc", "train/grad_norm", "lr"} <= set(train_rows[0])
        val_rows = [h for h in r["history"] if "val/acc" in h]
        assert [h["val/acc"] for h in val_rows] == [pytest.approx(v["val/acc"]) for v in m["val_history"]]
        assert {"val/acc_batchstats", "val/loss_batchstats", "val/acc_best"} <= set(val_rows[0])
        assert "perf/steps_per_s" in r["history_keys"] and "test/acc_single" in r["history_keys"]
        assert r["summary"]["val/acc"] == pytest.approx(m["val/acc"]) and r["summary"]["population"] == 2
        assert "stable" in r["summary"] and "val_history" not in r["summary"]
    histories = [read_offline_run(offline_runs(d)[0])["history"] for d in dirs]
    assert [h["train/loss"] for h in histories[0] if "train/loss" in h] != [
        h["train/loss"] for h in histories[1] if "train/loss" in h
    ]  # each run holds its own member's values


def _compiled_vs_eager(tmp_path, over: list[str]) -> tuple[list[dict], list[dict]]:
    lrs, seeds = [1e-3, 1e-2], [0, 1]
    eager = train_population(compose_cfg(over), lrs, [tmp_path / "e0", tmp_path / "e1"], seeds)
    comp = train_population(
        compose_cfg(over + ["trainer.compile=reduce-overhead"]), lrs, [tmp_path / "c0", tmp_path / "c1"], seeds
    )
    return eager, comp


@pytest.mark.slow
def test_compiled_population_matches_eager_inductor(tmp_path):
    # inductor on the CPU (reduce-overhead's CUDA graphs apply on a GPU only): float32, generated kernels round
    # differently, so as the solo test (tests/core/test_train.py) a loose tolerance. The fast check (dynamo +
    # AOT autograd, aot_eager, float64 to 1e-9) is bench/gpu_check.py --quick's `agreement` (tests/test_gpu_check.py)
    eager, comp = _compiled_vs_eager(tmp_path, TINY + ["model.depth=2", "trainer.max_steps=20"])
    for e, c in zip(eager, comp, strict=True):
        for key in ("val/loss", "val/loss_batchstats", "test/loss"):
            assert math.isfinite(c[key]) and c[key] == pytest.approx(e[key], rel=2e-2), key
        assert abs(c["test/acc_single"] - e["test/acc_single"]) <= 0.1


@pytest.mark.parametrize(("optim", "bn"), [("adam", "off"), ("sgd", "pre")])
def test_a_stopped_population_resumes_as_one_unit(tmp_path, optim, bn):
    # a stop checkpoints every member (weights, BN buffers, moments, records) in one file; the same call resumes
    # all of them at that step and ends as the uninterrupted population does: one member diverged before the
    # stop stays stopped, with its step and history
    from bnexp.core.train import StopRequested
    from bnexp.population.train import POP_CHECKPOINT

    over = [*TINY, "model.depth=2", f"model.bn={bn}", "trainer.max_steps=40", f"optim={optim}"]
    lrs, seeds = [1e-3, 1e12, 3e-3], [0, 1, 0]  # Adam at lr 1e12 without BN diverges at its first steps

    def dirs(tag):
        return [tmp_path / tag / str(k) for k in range(3)]

    whole = train_population(compose_cfg(over), lrs, dirs("whole"), seeds)
    calls = []

    def stop_midway():  # called before every batch: training, validation and test
        calls.append(1)
        if len(calls) == 24:
            raise StopRequested("preempted")

    with pytest.raises(StopRequested):
        train_population(compose_cfg(over), lrs, dirs("cut"), seeds, on_step=stop_midway)
    ckpt = dirs("cut")[0] / POP_CHECKPOINT
    assert ckpt.is_file() and not any((d / "metrics.json").exists() for d in dirs("cut"))
    resumed = train_population(compose_cfg(over), lrs, dirs("cut"), seeds)
    assert not ckpt.exists()
    at = resumed[0]["resumed_from_step"]
    assert 10 < at < 40
    assert [(r["step"], r["diverged_step"]) for r in resumed] == [(w["step"], w["diverged_step"]) for w in whole]
    if bn == "off":
        assert whole[1]["diverged"] and whole[1]["step"] < at
    for w, r in zip(whole, resumed, strict=True):
        assert r["resumed_from_step"] == at and w["resumed_from_step"] is None
        assert [h["step"] for h in r["val_history"]] == [h["step"] for h in w["val_history"]]
        for k in ("val/loss", "val/acc", "val/acc_batchstats", "test/loss", "test/acc"):
            if w[k] is None:
                assert r[k] is None, k
            else:
                assert r[k] == pytest.approx(w[k], rel=1e-5, abs=1e-7), k
