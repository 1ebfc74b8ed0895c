"""bench/bench_study.py, the small study's cost table (docs/cluster.md), through the command a developer types,
at a tiny size: its old arm must really be every saving off and its new arm the defaults, its floor must price
the new arm's own steps, its brackets must be each arm's report's, and a rerun must re-read a finished arm, not
train it again. No timing is asserted."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest
from helpers.env import REPO, TINY, replace

sys.path.insert(0, str(REPO / "bench"))

EXTRA = replace(
    [o for o in TINY if not o.startswith(("model.depth=", "trainer.max_steps="))],
    "trainer.val_subset=128",
    "sweep.rule.statistics=batch",  # 60 steps: population statistics still lag (momentum 0.01)
    "sweep.rule.threshold=0.5",
)


def run(out) -> subprocess.CompletedProcess:
    args = ["--depth", "3", "--steps", "60", "--seeds", "0,1", "--points", "3", "--resolution", "1.0", "--jobs", "1"]
    return subprocess.run(
        [sys.executable, str(REPO / "bench" / "bench_study.py"), *args, "--floor", "--out-dir", str(out), *EXTRA],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=600,
    )


def metrics(arm) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(arm.glob("trials/*/*/metrics.json"))]


@pytest.mark.slow  # two tiny sweeps twice over (95 s in one process): the default suite's budget
def test_bench_study_runs_every_saving_off_against_the_defaults_and_rereads_a_finished_arm(tmp_path):
    r = run(tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    res = json.loads((tmp_path / "bench_study.json").read_text())
    old, new = res["arms"]["old"], res["arms"]["new"]

    # the old arm is every saving off: whole validations, the test pass, contiguous, glibc's own allocator
    # settings, no pruning; the new arm is the defaults, and its trials say what they skipped
    for m in metrics(tmp_path / "old"):
        assert (m["skipped"], m["val_subset"], m["memory_format"], m["malloc"]) == ([], None, "contiguous", {}), m
        assert m["test/acc"] is not None and m["pruned_step"] is None
    for m in metrics(tmp_path / "new"):
        assert m["skipped"] and m["val_subset"] == 128 and m["memory_format"] == "channels_last" and m["malloc"]
        assert "test/acc" not in m
    phases = {a: {r["phase"] for r in csv.DictReader((tmp_path / a / "trials.csv").open())} for a in ("old", "new")}
    assert "warm" not in phases["old"] and "warm" in phases["new"]  # seed 1 from seed 0's brackets, or from scratch

    # the brackets are each arm's report's, and every old one is set against the new one
    for arm, got in (("old", old), ("new", new)):
        summary = json.loads((tmp_path / arm / "summary.json").read_text())
        for v in summary["variants"]:
            for s, e in v["edges"]["per_seed"].items():
                assert got["brackets"][v["label"]][s] == [e["low"], e["high"]]
    assert any(lo is not None for seeds in old["brackets"].values() for lo, _ in seeds.values())
    assert len(res["relations"]) == 2 * sum(len(seeds) for seeds in old["brackets"].values())
    assert res["cpu_ratio"] == new["cpu_s"] / old["cpu_s"] > 0
    assert old["trials"] == len(metrics(tmp_path / "old")) and new["trials"] == len(metrics(tmp_path / "new"))

    # the floor prices the new arm's own steps, each at its variant's plain-loop step
    f = res["floor"]
    trained = metrics(tmp_path / "new")
    assert f["steps"] == sum(m["step"] for m in trained) > 0
    by_bn = {bn: sum(m["step"] for m in trained if m["bn"] == bn) for bn in ("off", "pre")}
    assert abs(f["cpu_s"] - sum(by_bn[bn] * f["step_ms"][bn] / 1000 for bn in by_bn)) < 1e-6
    assert f["ratio"] == f["cpu_s"] / old["cpu_s"]

    # a rerun re-reads both finished arms: nothing is trained or timed again
    spent = {arm: (tmp_path / f"{arm}.cpu.json").read_text() for arm in ("old", "new")}
    again = run(tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    assert {arm: (tmp_path / f"{arm}.cpu.json").read_text() for arm in ("old", "new")} == spent
    assert json.loads((tmp_path / "bench_study.json").read_text())["arms"]["old"] == old


def test_relation_names_how_a_new_bracket_sits_to_the_old_one():
    from bench_study import relation

    assert relation([0.1, 0.316], [0.1, 0.316]) == "same"
    assert relation([0.1, 0.316], [0.316, 0.562]) == "touch"
    assert relation([0.1, 0.316], [0.178, 0.562]) == "overlap"
    assert relation([0.0562, 0.1], [0.316, 0.562]) == "apart 0.50"
    assert relation(None, None) == "same" and relation(None, [0.1, 0.2]) == "differ"
