"""The main command's exact seed-0 values, pinned per machine: on one machine a run is bitwise repeatable, on
another CPU float rounding differs (a different instruction set, a different reduction order), so each
machine's values are keyed by its CPU model, torch's CPU capability and torch's thread count (provenance
records all three). An unknown machine skips, saying how to add its row.

Slow (about 2 minutes a variant on 2 CPU cores): python -m pytest -m slow tests/core/test_seed_values.py
"""

import json
import os
import subprocess
import sys

import pytest
from helpers.env import REPO

from bnexp.core.provenance import cpu_capability, cpu_model

KEYS = ("val/acc", "val/acc_batchstats", "test/acc", "test/acc_single")

# (CPU model, torch CPU capability, torch threads) -> the conv layout they were recorded in
# (trainer.memory_format; bnexp.run's default, contiguous, is checked as typed, another one with its override)
# and, per variant, the values of `python -m bnexp.run model.bn=<variant> logger=none` (torch 2.13.0+cpu).
RUN_LAYOUT = "contiguous"
SEED_VALUES = {
    ("Intel(R) Xeon(R) Processor", "AVX512", 2): {
        "layout": "contiguous",
        "pre": {"val/acc": 0.973, "val/acc_batchstats": 0.97, "test/acc": 0.976, "test/acc_single": 0.99},
        "post": {"val/acc": 0.9742, "val/acc_batchstats": 0.9762, "test/acc": 0.9749, "test/acc_single": 0.99},
    },
    ("AMD EPYC", "AVX512", 2): {
        "layout": "contiguous",
        "pre": {"val/acc": 0.9688, "val/acc_batchstats": 0.9716, "test/acc": 0.9691, "test/acc_single": 1.0},
        "post": {"val/acc": 0.9632, "val/acc_batchstats": 0.9728, "test/acc": 0.9623, "test/acc_single": 0.99},
        "off": {"val/acc": 0.107, "val/acc_batchstats": 0.107, "test/acc": 0.0982, "test/acc_single": 0.14},
    },
}


def _machine() -> tuple[str, str, int]:
    import torch

    return cpu_model(), cpu_capability(), torch.get_num_threads()


def test_provenance_names_the_cpu_and_its_instruction_set():
    from bnexp.core.provenance import provenance

    p = provenance("cpu")
    assert p["cpu_model"] == cpu_model() and p["cpu_model"] != ""
    import torch

    assert p["cpu_capability"] == torch.backends.cpu.get_cpu_capability()  # e.g. AVX2, AVX512, DEFAULT
    assert p["device_name"]


@pytest.mark.slow
@pytest.mark.parametrize("bn", ["pre", "post", "off"])
def test_main_command_gives_this_machine_s_pinned_values(bn, tmp_path):
    machine = _machine()
    known = SEED_VALUES.get(machine, {})
    if bn not in known:
        pytest.skip(
            f"no seed-0 values recorded for model.bn={bn} on {machine}: run `python -m bnexp.run model.bn={bn} "
            "logger=none` here and add its metrics.json values, with its `memory_format` as the layout, to SEED_VALUES"
        )
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}  # as typed
    r = subprocess.run(
        [sys.executable, "-m", "bnexp.run", f"model.bn={bn}", "logger=none", "trainer.progress_bar=false",
         *([f"trainer.memory_format={known['layout']}"] if known["layout"] != RUN_LAYOUT else []),
         f"hydra.run.dir={tmp_path}"],  # fmt: skip
        cwd=REPO, env=env, capture_output=True, text=True, timeout=1800,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert (m["provenance"]["cpu_model"], m["provenance"]["cpu_capability"]) == machine[:2]
    assert m["memory_format"] == known["layout"]
    assert {k: m[k] for k in KEYS} == known[bn]  # bitwise: the same machine, the same numbers
