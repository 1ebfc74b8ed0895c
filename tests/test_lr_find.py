"""`python -m bnexp.lr_find`: the LR range test through Lightning's Tuner, as a user types it."""

from __future__ import annotations

import json

from helpers.env import TINY, bnexp
from helpers.tables import PNG_MAGIC

from bnexp.lr_find import blowup_lr


def test_lr_find_writes_its_png_and_json(tmp_path):
    r = bnexp("lr_find", *TINY, "model.bn=pre", f"hydra.run.dir={tmp_path}", "--steps", "20", "--max-lr", "100")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "lr range test pre-auto-d3: suggestion" in r.stdout
    assert (tmp_path / "lr_find.png").read_bytes()[:8] == PNG_MAGIC
    d = json.loads((tmp_path / "lr_find.json").read_text())
    assert len(d["lrs"]) == len(d["losses"]) and 5 <= len(d["lrs"]) <= 20
    assert d["lrs"] == sorted(d["lrs"]) and d["lrs"][0] >= 1e-6 and d["lrs"][-1] <= 100  # exponential, in range
    assert d["lrs"][0] <= d["loss_min_lr"] <= d["lrs"][-1]
    assert d["blowup_lr"] is None or d["lrs"][0] < d["blowup_lr"] <= d["lrs"][-1]  # past the first step, in range


def test_blowup_is_the_first_lr_past_four_times_the_lowest_loss():
    lrs = [1e-4, 1e-3, 1e-2, 1e-1, 1.0]
    assert blowup_lr(lrs, [1.0, 0.5, 0.4, 1.5, 9.0]) == 1.0  # 9 > 4 x 0.4; 1.5 is not
    assert blowup_lr(lrs, [1.0, 0.5, float("nan"), 0.1, 0.1]) == 1e-2
    assert blowup_lr(lrs, [1.0, 0.9, 0.8, 0.7, 0.6]) is None


def test_lr_find_flags_are_checked(tmp_path):
    r = bnexp("lr_find", *TINY, f"hydra.run.dir={tmp_path}", "--min-lr", "1", "--max-lr", "0.1")
    assert r.returncode == 2 and "need 0 < min < max" in r.stderr and len(r.stderr.strip().splitlines()) == 1
