"""`trainer.memory_format`: the conv layout, decided from the device alone (bnexp.core.layout).

A sweep's default, `auto`, trains channels_last on a CPU (0.83x a depth-19 step at one thread); bnexp.run keeps
the seed's contiguous arithmetic. The choice never depends on a timing, so a sweep trial and `python -m
bnexp.run` with the same overrides, layout and thread count compute the same numbers. Population training
keeps its packed weights contiguous and refuses channels_last with one line, exit 2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers.env import TINY, bnexp, compose_cfg

from bnexp.core import layout
from bnexp.core.train import build_module


def conv_weights(module) -> list[torch.Tensor]:
    return [m.weight for m in module.model.modules() if isinstance(m, torch.nn.Conv2d)]


def test_a_sweep_defaults_to_auto_and_bnexp_run_to_the_seeds_contiguous_arithmetic():
    assert compose_cfg([]).trainer.memory_format == "contiguous"
    assert compose_cfg([], "study").trainer.memory_format == "auto"


def test_auto_is_channels_last_on_a_cpu_and_contiguous_on_a_gpu():
    assert layout.choose("auto", "cpu") == "channels_last"
    assert layout.choose("auto", "cuda") == "contiguous"
    for fmt in ("channels_last", "contiguous"):  # an explicit choice stays what it says, on either device
        assert layout.choose(fmt, "cpu") == layout.choose(fmt, "cuda") == fmt


@pytest.mark.parametrize(
    "setting, channels_last", [("auto", True), ("channels_last", True), ("contiguous", False), (None, False)]
)  # fmt: skip
def test_the_net_is_built_in_the_chosen_layout(setting, channels_last):
    cfg = compose_cfg([*TINY, *([f"trainer.memory_format={setting}"] if setting else [])])  # None: bnexp.run's
    module = build_module(cfg)
    ws = conv_weights(module)[1:]  # the first conv's single input channel is contiguous in both layouts
    assert ws and all(w.is_contiguous(memory_format=torch.channels_last) == channels_last for w in ws)
    assert all(w.is_contiguous() == (not channels_last) for w in ws)
    assert module.memory_format == ("channels_last" if channels_last else "contiguous")


def test_a_sweep_trial_and_bnexp_run_agree_to_the_bit_in_the_layout_they_record(tmp_path):
    """A sweep trains channels_last on a CPU (study.yaml: auto) and bnexp.run contiguous (the seed's arithmetic).
    The same point through the sweep and through bnexp.run with trainer.memory_format=channels_last, each in
    its own process at one thread (as a sweep.jobs=auto worker trains; the thread count changes oneDNN's
    float32 rounding in either layout): the same layout recorded, the same numbers to the last bit."""
    point = [*TINY, "model.bn=pre", "optim.lr=0.01", "seed=0"]
    r = bnexp("run", *point, "trainer.memory_format=channels_last", f"hydra.run.dir={tmp_path / 'run'}")
    assert r.returncode == 0, r.stderr[-2000:]
    run = json.loads((tmp_path / "run" / "metrics.json").read_text())
    args = ["sweep=lr_stability", f"sweep.out_dir={tmp_path / 'sw'}", "sweep.grid.model.bn=[pre]", "sweep.lr.low=0.01",
            "sweep.lr.high=0.01", "sweep.lr.points=1", "sweep.seeds=[0]", "sweep.jobs=1", "sweep.progress=false",
            "trainer.val_subset=null", "trainer.test=true", *TINY]  # fmt: skip
    r = bnexp("sweep", *args)
    assert r.returncode == 0, r.stderr[-2000:]
    (trial,) = [json.loads(p.read_text()) for p in (tmp_path / "sw").glob("trials/*/*/metrics.json")]
    assert run["memory_format"] == trial["memory_format"] == "channels_last"
    for k in ("val/acc", "val/loss", "val/acc_batchstats", "val/loss_batchstats", "test/acc", "val/acc_recal"):
        assert run[k] == trial[k], k
    c = tmp_path / "contig"  # bnexp.run's own default: the seed's arithmetic
    r = bnexp("run", *point, f"hydra.run.dir={c}")
    assert r.returncode == 0, r.stderr[-2000:]
    assert json.loads((c / "metrics.json").read_text())["memory_format"] == "contiguous"


@pytest.mark.parametrize(
    "command, args, says",
    [
        ("run", ["trainer.memory_format=nhwc"], "trainer.memory_format"),
        ("sweep", ["sweep=lr_stability", "sweep.population=2", "trainer.memory_format=channels_last"],
         "trainer.memory_format=auto"),
    ],
)  # fmt: skip
def test_a_layout_that_cannot_run_is_refused_in_one_line(tmp_path, command, args, says):
    out = tmp_path / "out"
    where = f"hydra.run.dir={out}" if command == "run" else f"sweep.out_dir={out}"
    r = bnexp(command, *TINY, *args, where)
    assert r.returncode == 2, r.stderr[-2000:]
    assert says in r.stderr and "Traceback" not in r.stderr
    assert not list(out.glob("**/*.db")) and not list(out.glob("**/metrics.json"))


def test_the_compiled_net_cache_keeps_one_entry_per_layout(monkeypatch):
    """A kept compiled graph is traced for its net's layout: a net in the other layout must not reuse it."""
    from bnexp.core.compiled import clear, compiled_net

    monkeypatch.setenv("BNEXP_COMPILE_BACKEND", "aot_eager")
    clear()
    try:
        nets = {
            f: build_module(compose_cfg([*TINY, f"trainer.memory_format={f}"])) for f in ("contiguous", "channels_last")
        }
        kept = {f: compiled_net(m.model, "default") for f, m in nets.items()}
        assert kept["contiguous"] is not kept["channels_last"]
        again = build_module(compose_cfg([*TINY, "trainer.memory_format=channels_last"]))
        assert compiled_net(again.model, "default") is kept["channels_last"]
    finally:
        clear()
