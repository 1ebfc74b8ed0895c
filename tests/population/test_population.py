"""Population training: K members in one model must train exactly as K solo models.

Exactness is checked two ways. The system itself (packing, grouped convs, per-member BN statistics,
batched dense layers, per-member lr, loss sum, divergence masking) against K separate DeepConvNets
with torch.optim, step by step. And end to end against `bnexp.run.train` (Lightning).

Tolerances. Without BN, float32 trajectories agree to ~1e-7 over 30 steps. With BN, float32 is
chaotic: BN's backward leaves many gradients as sums that cancel to ~1e-8, whose float32 rounding
(grouped vs. plain conv kernels) decides their sign, and Adam's first steps turn that sign into a
full +-lr update. Two *solo* runs that differ only in memory format (channels_last) drift apart by as
much (val loss ~1e-3 after 30 steps). So with BN we compare the trajectories in float64, where the
same 30 steps agree to ~1e-10, and in float32 compare one step's gradients and the first few losses.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from helpers.env import TINY, compose_cfg
from omegaconf import OmegaConf

from bnexp.core.metrics import Divergence, compute_loss
from bnexp.core.net import DeepConvNet
from bnexp.population.module import forward_backward
from bnexp.population.net import PopulationNet
from bnexp.population.optim import PopulationAdam, PopulationSGD
from bnexp.population.train import train_population

K = 3
DEPTH = 3
N = 16


def _batches(mnist_dir, n: int) -> list:
    from bnexp.core.data import BatchStream, load_mnist, make_splits

    s = make_splits(load_mnist(str(mnist_dir), download=False), limit_train=1024, limit_val=8, limit_test=8)
    it = iter(BatchStream(s.train_x, s.train_y, n, 0))
    return [next(it) for _ in range(30)]


@pytest.fixture(scope="module")
def batches(mnist_dir):
    return _batches(mnist_dir, N)


def solo_models(seeds, dtype=torch.float32, **arch):
    models = []
    for s in seeds:
        torch.manual_seed(s)
        models.append(DeepConvNet(depth=DEPTH, **arch).to(dtype))
    return models


def train_step(pop, opt, x, y, loss_kind, div: Divergence, step: int) -> torch.Tensor:
    """One population step as PopulationModule.training_step takes it, without a Trainer."""
    _, losses = forward_backward(pop, x, y, loss_kind, div, step)
    opt.alive = div.alive
    opt.step()
    opt.zero_grad()
    return losses.detach()


def assert_member_equal(pop: PopulationNet, k: int, model: DeepConvNet, atol: float, rtol: float) -> None:
    got = pop.member(k).state_dict()
    for name, want in model.state_dict().items():
        torch.testing.assert_close(
            got[name], want, atol=atol, rtol=rtol, msg=lambda m, name=name: f"member {k} {name}: {m}"
        )


# ---- packing ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("bn,impl", [("off", "torch"), ("pre", "torch"), ("post", "manual")])
def test_from_seeds_is_the_solo_init_and_members_round_trip(bn, impl):
    seeds = [3, 4, 5]
    pop = PopulationNet.from_seeds(seeds, depth=DEPTH, bn=bn, bn_impl=impl)
    solos = solo_models(seeds, bn=bn, bn_impl=impl)
    for k in range(K):
        assert_member_equal(pop, k, solos[k], atol=0, rtol=0)
    again = PopulationNet.from_members([pop.member(k) for k in range(K)])
    for a, b in zip(again.state_dict().values(), pop.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    state = torch.get_rng_state()
    pop.member(0)  # builds a DeepConvNet to copy into; must not move the global RNG
    assert torch.equal(state, torch.get_rng_state())
    assert pop(torch.rand(2, 1, 28, 28)).shape == (K, 2, 10)


@pytest.mark.parametrize("bn,impl", [("off", "torch"), ("pre", "torch"), ("post", "torch"), ("pre", "manual")])
def test_forward_and_gradients_match_members(bn, impl, batches):
    solos = solo_models([0, 1, 2], bn=bn, bn_impl=impl)
    pop = PopulationNet.from_members(solos)
    x, y = batches[0]
    losses = compute_loss(pop(x), y, "sigmoid")
    losses.sum().backward()
    grads = {name.removeprefix("net."): p for name, p in pop.named_parameters()}
    for k, m in enumerate(solos):
        loss = compute_loss(m(x), y, "sigmoid")
        loss.backward()
        torch.testing.assert_close(losses[k], loss, atol=1e-6, rtol=1e-5)
        for name, p in m.named_parameters():
            g = grads[name].grad.reshape(K, -1)[k].view_as(p)
            # BN's backward sums ~N*H*W terms that cancel: float32 noise up to ~1e-5 of the largest entry
            scale = p.grad.abs().max().item()
            torch.testing.assert_close(g, p.grad, atol=1e-4 * scale, rtol=1e-4, msg=lambda s, name=name: f"{name}: {s}")
        assert_member_equal(pop, k, m, atol=1e-6, rtol=1e-5)  # BN running statistics, per member
    # eval mode (population statistics) and members with their own images, (N, K, 28, 28)
    pop.eval()
    xs = torch.cat([batches[k][0] for k in range(K)], 1)
    with torch.no_grad():
        shared, own = pop(x), pop(xs)
    for k, m in enumerate(solos):
        m.eval()
        with torch.no_grad():
            torch.testing.assert_close(shared[k], m(x), atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(own[k], m(batches[k][0]), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("optim", ["adam", "adam_wd", "sgd"])
def test_optimizer_matches_torch_optim(optim):
    lrs = [1e-3, 3e-3, 1e-2]
    solos = solo_models([0, 1, 2], bn="pre")
    pop = PopulationNet.from_members(solos)
    if optim == "sgd":
        ref = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(solos, lrs, strict=True)]
        opt = PopulationSGD(pop.parameters(), lrs, momentum=0.9)
    else:
        wd = 1e-2 if optim == "adam_wd" else 0.0
        ref = [torch.optim.Adam(m.parameters(), lr=lr, weight_decay=wd) for m, lr in zip(solos, lrs, strict=True)]
        opt = PopulationAdam(pop.parameters(), lrs, weight_decay=wd)
    g = torch.Generator().manual_seed(0)
    for _ in range(4):
        for m in solos:  # gradients over many magnitudes, as Adam's normalisation sees them
            for p in m.parameters():
                p.grad = torch.randn(p.shape, generator=g) * 10.0 ** torch.randint(-9, 1, p.shape, generator=g)
        for name, p in pop.named_parameters():
            name = name.removeprefix("net.")
            p.grad = torch.stack([dict(m.named_parameters())[name].grad.reshape(-1) for m in solos]).view_as(p)
        for o in ref:
            o.step()
        opt.alive = torch.ones(K, dtype=torch.bool)
        opt.step()
    # Adam: the same operations in the same order, so equal to the bit. SGD: torch's p.add_(buf, alpha=-lr)
    # is one fused multiply-add on the CPU, ours a multiply then an add (the lr is a vector): one rounding apart
    tol = dict(atol=1e-7, rtol=1e-6) if optim == "sgd" else dict(atol=0, rtol=0)
    for k in range(K):
        assert_member_equal(pop, k, solos[k], **tol)


# ---- trajectories ----------------------------------------------------------------------------------
def run_both(batches, bn, dtype, optim, lrs, impl="torch", steps=30):
    """K solo models with torch.optim and the population with train_step on the same batches."""
    solos = solo_models(range(K), dtype=dtype, bn=bn, bn_impl=impl)
    pop = PopulationNet.from_members(solos)
    if optim == "sgd":
        ref = [torch.optim.SGD(m.parameters(), lr=lr, momentum=0.9) for m, lr in zip(solos, lrs, strict=True)]
        opt = PopulationSGD(pop.parameters(), lrs, momentum=0.9)
    else:
        ref = [torch.optim.Adam(m.parameters(), lr=lr) for m, lr in zip(solos, lrs, strict=True)]
        opt = PopulationAdam(pop.parameters(), lrs)
    div = Divergence(K, "cpu")
    alive, diverged_at = div.alive, div.at
    pop_losses, solo_losses, frozen = [], [], {}
    for step, (x, y) in enumerate(batches[:steps]):
        x = x.to(dtype)
        pop_losses.append(train_step(pop, opt, x, y, "sigmoid", div, step))
        row = []
        for m, o in zip(solos, ref, strict=True):
            loss = compute_loss(m(x), y, "sigmoid")
            o.zero_grad()
            loss.backward()
            o.step()
            row.append(loss.detach())
        solo_losses.append(torch.stack(row))
        for k in range(K):  # a member's weights right after it was marked: must never change again
            if not alive[k] and k not in frozen:
                frozen[k] = {n: t.clone() for n, t in pop.member(k).state_dict().items() if "running" not in n}
    return pop, solos, torch.stack(pop_losses), torch.stack(solo_losses), alive, diverged_at, frozen


@pytest.mark.parametrize(
    "bn,dtype,optim,impl,atol,rtol",
    [
        ("off", torch.float32, "adam", "torch", 1e-5, 1e-4),
        ("off", torch.float32, "sgd", "torch", 1e-5, 1e-4),
        ("pre", torch.float64, "adam", "torch", 1e-9, 1e-7),
        ("post", torch.float64, "adam", "torch", 1e-9, 1e-7),
        ("pre", torch.float64, "sgd", "manual", 1e-9, 1e-7),
    ],
)
def test_population_trains_exactly_as_solo_models(batches, bn, dtype, optim, impl, atol, rtol):
    lrs = [1e-3, 3e-3, 1e-2] if optim == "adam" else [1e-2, 3e-2, 1e-1]
    pop, solos, pl, sl, alive, _, _ = run_both(batches, bn, dtype, optim, lrs, impl)
    assert bool(alive.all())
    torch.testing.assert_close(pl, sl, atol=atol, rtol=rtol)  # (30, K) losses, step by step
    for k in range(K):
        assert_member_equal(pop, k, solos[k], atol=atol * 100, rtol=rtol * 10)  # weights and BN buffers


@pytest.mark.parametrize("bn", ["pre", "post"])
def test_float32_with_bn_agrees_until_chaos(batches, bn):
    # float32 + BN: the first steps agree to float tolerance, then rounding noise grows (see the module docstring)
    _, _, pl, sl, _, _, _ = run_both(batches, bn, torch.float32, "adam", [1e-3, 3e-3, 1e-2], steps=3)
    torch.testing.assert_close(pl, sl, atol=1e-4, rtol=1e-4)


def test_a_diverging_member_is_masked_and_frozen(mnist_dir):
    # batch 64: lr 1e6 overflows to inf at step 1 (at batch 16 its loss stays a finite ~1e35)
    batches = _batches(mnist_dir, 64)
    pop, solos, pl, sl, alive, diverged_at, frozen = run_both(batches, "off", torch.float32, "adam", [1e-3, 1e6, 1e-3])
    assert alive.tolist() == [True, False, True]
    t = int(diverged_at[1])
    assert 0 < t < 30 and not math.isfinite(float(pl[t, 1]))
    assert diverged_at[0] == diverged_at[2] == -1
    for k in (0, 2):  # the others are untouched: exactly their solo runs
        torch.testing.assert_close(pl[:, k], sl[:, k], atol=1e-5, rtol=1e-4)
        assert_member_equal(pop, k, solos[k], atol=1e-5, rtol=1e-4)
    now = pop.member(1).state_dict()
    for name, want in frozen[1].items():  # frozen from the step it was marked on
        assert torch.equal(now[name], want), name


@pytest.mark.parametrize("bn", ["off", "pre"])
def test_nan_in_one_member_stays_in_that_member(batches, bn):
    # member 1 sees NaN images: its loss, activations, BN statistics and gradients are NaN inside the
    # shared grouped conv / BN / bmm kernels; the others must come out exactly as without it
    clean, poisoned = (PopulationNet.from_members(solo_models(range(K), bn=bn)) for _ in range(2))
    opts = [PopulationAdam(p.parameters(), [1e-3, 1e-3, 1e-3]) for p in (clean, poisoned)]
    divs = [Divergence(K, "cpu") for _ in range(2)]
    before = {n: t.clone() for n, t in poisoned.member(1).named_parameters()}
    for step, (x, y) in enumerate(batches[:3]):
        xs = x.repeat(1, K, 1, 1)  # (N, K, 28, 28): every member its own (here equal) images
        bad = xs.clone()
        if step == 0:
            bad[:, 1] = float("nan")
        for net, opt, inp, div in zip((clean, poisoned), opts, (xs, bad), divs, strict=True):
            train_step(net, opt, inp, y, "sigmoid", div, step)
    assert divs[1].alive.tolist() == [True, False, True] and divs[1].at.tolist() == [-1, 0, -1]
    for k in (0, 2):
        for a, b in zip(clean.member(k).state_dict().values(), poisoned.member(k).state_dict().values(), strict=True):
            assert torch.equal(a, b)
    for n, t in poisoned.member(1).named_parameters():  # frozen, not NaN-ed by a 0 * NaN update
        assert torch.equal(t, before[n]), n


# ---- train_population: the run.train contract --------------------------------------------------------
KEYS = {
    "val/acc",
    "val/loss",
    "val/loss_batchstats",
    "val/acc_batchstats",
    "val/acc_best",
    "test/loss",
    "test/acc",
    "test/acc_single",
    "diverged",
    "diverged_step",
    "step",
    "wall_s",
    "train_s",
    "steps_per_s",
    "bn",
    "bias",
    "depth",
    "lr",
    "seed",
    "val_history",
    "provenance",
    "population",
}
# a member's CSV has a solo run's columns (tests/core/test_train.py: the same keys from BNExpModule)
CSV_COLUMNS = {"step", "epoch", "lr", "perf/steps_per_s", "train/loss", "train/acc", "train/grad_norm"}
CSV_COLUMNS |= {"val/loss", "val/acc", "val/loss_batchstats", "val/acc_batchstats", "val/acc_best"}
CSV_COLUMNS |= {"test/loss", "test/acc", "test/acc_single"}


def test_train_population_equals_run_train(tmp_path):
    """End to end against Lightning: member k == run.train(lr_k, seed_k); BN on, so in float64 (see top)."""
    from bnexp.core.train import train

    over = TINY + ["model.bn=pre", "trainer.precision=64-true"]
    lrs, seeds = [1e-3, 3e-3], [0, 1]
    pop = train_population(compose_cfg(over), lrs, [tmp_path / "p0", tmp_path / "p1"], seeds=seeds)
    for k, (lr, seed) in enumerate(zip(lrs, seeds, strict=True)):
        solo = train(compose_cfg(over + [f"optim.lr={lr}", f"seed={seed}"]), output_dir=tmp_path / f"s{k}")
        assert set(solo) <= set(pop[k])
        for key in ("val/loss", "val/loss_batchstats", "test/loss"):
            assert pop[k][key] == pytest.approx(solo[key], abs=1e-9), key
        for key in ("val/acc", "val/acc_batchstats", "val/acc_best", "test/acc", "test/acc_single", "step"):
            assert pop[k][key] == solo[key], key
        assert [h["step"] for h in pop[k]["val_history"]] == [h["step"] for h in solo["val_history"]]
        for h, hs in zip(pop[k]["val_history"], solo["val_history"], strict=True):
            assert h["val/loss"] == pytest.approx(hs["val/loss"], abs=1e-9)
        assert (pop[k]["lr"], pop[k]["seed"], pop[k]["diverged"]) == (lr, seed, False)


def _csv_rows(path) -> list[dict]:
    import csv

    with open(path) as f:
        return list(csv.DictReader(f))


def test_train_population_contract_files_csv_and_divergence(tmp_path):
    cfg = compose_cfg(TINY + ["model.bn=off", "logger=csv"])
    lrs = [1e-3, 1e6, 3e-3]
    dirs = [tmp_path / f"m{k}" for k in range(K)]
    ms = train_population(cfg, lrs, dirs)
    for k, (m, lr, d) in enumerate(zip(ms, lrs, dirs, strict=True)):
        assert KEYS <= set(m), KEYS - set(m)
        assert m["lr"] == lr and m["seed"] == cfg.seed and m["bn"] == "off" and m["depth"] == 3
        assert m["population"] == K and m["provenance"]["device"] == "cpu"
        assert json.loads((d / "metrics.json").read_text()) == json.loads(json.dumps(m))
        saved = OmegaConf.load(d / "config.yaml")
        assert saved.optim.lr == lr and saved.model.bn == "off" and saved.seed == cfg.seed
        assert m["val/acc_best"] == max(h["val/acc"] for h in m["val_history"])
        assert m["val_history"][-1]["step"] == m["step"]
        rows = _csv_rows(d / "csv" / "metrics.csv")  # the member's own curves, as a solo run's CSV
        want = CSV_COLUMNS if k != 1 else {c for c in CSV_COLUMNS if c.startswith(("val/", "test/"))}
        assert want <= set(rows[0]), want - set(rows[0])  # (member 1 diverges before its first logging step)
        train_rows = [r for r in rows if r.get("train/loss")]
        assert all(float(r["lr"]) == pytest.approx(lr) for r in train_rows)
        val = [float(r["val/acc"]) for r in rows if r["val/acc"]]
        assert val == [pytest.approx(h["val/acc"]) for h in m["val_history"]]
        if k == 1:
            assert m["diverged"] is True and isinstance(m["diverged_step"], int)
            assert m["step"] == m["diverged_step"] + 1 < 30  # solo: the diverging step runs, then it stops
            assert all(int(r["step"]) <= m["step"] for r in train_rows)  # nothing logged once frozen
        else:
            assert m["diverged"] is False and m["diverged_step"] is None and m["step"] == 30
            assert [h["step"] for h in m["val_history"]] == [10, 20, 30]
            assert [int(r["step"]) for r in train_rows] == [4, 9, 14, 19, 24, 29]  # every log_every=5, as a solo run
            assert 0.0 <= m["test/acc"] <= 1.0 and 0.0 <= m["test/acc_single"] <= 1.0
            assert all(math.isfinite(m[key]) for key in ("val/loss", "test/loss"))
    first = [float(r["train/loss"]) for r in _csv_rows(dirs[0] / "csv" / "metrics.csv") if r["train/loss"]]
    third = [float(r["train/loss"]) for r in _csv_rows(dirs[2] / "csv" / "metrics.csv") if r["train/loss"]]
    assert first != third  # each file holds its own member's values


def test_all_diverged_stops_early_and_bad_input_is_refused(tmp_path):
    from bnexp.cli import ConfigError

    cfg = compose_cfg(TINY + ["model.bn=off", "trainer.max_steps=200"])
    ms = train_population(cfg, [1e6, 1e7], [tmp_path / "a", tmp_path / "b"])
    assert all(m["diverged"] for m in ms) and all(m["step"] < 200 for m in ms)
    with pytest.raises(ValueError, match="one output dir and seed per lr"):
        train_population(cfg, [1e-3, 1e-2], [tmp_path / "a"])
    with pytest.raises(ConfigError, match="precision"):
        train_population(compose_cfg(TINY + ["trainer.precision=16-mixed"]), [1e-3], [tmp_path / "c"])
