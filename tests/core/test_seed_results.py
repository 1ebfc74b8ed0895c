"""The tutorial's headline result at its own settings (depth 19, 800 steps, real MNIST, seed 0).

Slow (about 2-3 minutes on 2 quiet CPU cores): python -m pytest -m slow tests/core/test_seed_results.py
"""

import pytest
from helpers.env import compose_cfg

from bnexp.core.train import train


@pytest.mark.slow
@pytest.mark.parametrize(
    "bn,check",
    [
        ("pre", lambda m: m["val/acc"] >= 0.95 and m["test/acc_single"] >= 0.95),
        ("post", lambda m: m["val/acc"] >= 0.93),
        ("off", lambda m: m["val/acc"] <= 0.2),
    ],
)
def test_seed_defaults(bn, check, tmp_path):
    m = train(compose_cfg([f"model.bn={bn}", "trainer.accelerator=cpu", "trainer.progress_bar=false"]), tmp_path)
    assert m["step"] == 800 and not m["diverged"]
    assert check(m), {k: m[k] for k in ("val/acc", "test/acc", "test/acc_single")}
