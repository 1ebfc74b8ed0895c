"""The rule is a report-time choice, always said: `bnexp.report --threshold ...` from a sweep dir, from its
storage and from a saved report re-judges without training; a rerun with another `sweep.rule.*` says so."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers.env import REPO, child_env
from helpers.sweeps import cli

pytestmark = pytest.mark.filterwarnings("ignore")


def _run(*args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=timeout)


def _report(*args: str) -> subprocess.CompletedProcess:
    return _run(sys.executable, "-m", "bnexp.report", *args)


@pytest.fixture(scope="module")
def swept(tmp_path_factory) -> Path:
    """A tiny 2-variant, 3-lr sweep judged at threshold 0.3 (the spec's rule), as a user runs it."""
    out = tmp_path_factory.mktemp("rejudge") / "sw"
    r = _run(*cli(out, points=3), timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    return out


def _summary(d: Path) -> dict:
    return json.loads((d / "summary.json").read_text())


def test_report_rejudges_from_the_dir_and_from_storage_and_says_so(swept, tmp_path):
    before = _summary(swept)
    assert before["rule"]["threshold"] == 0.3 and before["rule_note"] is None
    by_dir, by_storage = tmp_path / "dir", tmp_path / "storage"
    r1 = _report(str(swept), "--threshold", "0", "--out", str(by_dir))
    r2 = _report("--storage", f"sqlite:///{swept / 'study.db'}", "--study-name", "t", "--threshold", "0",
                 "--out", str(by_storage))  # fmt: skip
    for r in (r1, r2):
        assert r.returncode == 0, r.stderr[-2000:]
        assert "judged by threshold 0; the study was created with 0.3" in r.stdout
    for d in (by_dir, by_storage):
        s = _summary(d)
        assert s["rule"]["threshold"] == 0 and s["recorded_rule"]["threshold"] == 0.3
        assert s["rule_note"] == "judged by threshold 0; the study was created with 0.3"
        assert "**Judged by another rule than the study's:** judged by threshold 0" in (d / "report.md").read_text()
        for v in s["variants"]:  # threshold 0: every trial that did not diverge is stable
            assert v["n_stable"] == v["n_trials"] - v["n_diverged"]
            assert all(p["stable"] == (p["n_diverged"] < p["n_seeds"]) for p in v["points"])
        rows = (d / "trials.csv").read_text().splitlines()
        col = rows[0].split(",").index("stable")
        assert all(row.split(",")[col] == str(row.split(",")[rows[0].split(",").index("diverged")] == "False")
                   for row in rows[1:])  # fmt: skip
    assert sum(v["n_stable"] for v in _summary(by_dir)["variants"]) > sum(v["n_stable"] for v in before["variants"])
    # the figures are the new verdict's: the same from the dir and from storage, not the study's
    assert (by_dir / "stability.png").read_bytes() == (by_storage / "stability.png").read_bytes()
    assert (by_dir / "stability.png").read_bytes() != (swept / "stability.png").read_bytes()
    assert _summary(swept) == before  # the sweep's own report is left as it was
    # how to reproduce a re-judged report: the sweep that made the study, then the report command as typed
    made = json.loads((swept / "sweep.json").read_text())["command"]
    assert made.startswith("python -m bnexp.sweep ") and f"sweep.out_dir={swept}" in made
    assert made in (swept / "report.md").read_text()
    lines = (by_dir / "report.md").read_text().split("## Reproduce")[1].splitlines()
    assert made in lines and f"python -m bnexp.report {swept} --out {by_dir} --threshold 0.0" in lines


def test_a_saved_report_is_rejudged_titled_by_its_study(swept, tmp_path):
    saved = tmp_path / "saved"
    saved.mkdir()
    for f in ("trials.csv", "curves.csv", "summary.json"):
        (saved / f).write_bytes((swept / f).read_bytes())
    r = _report(str(saved), "--seed-quorum", "1", "--out", str(tmp_path / "again"))
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(tmp_path / "again")
    assert s["study"] == "t" and s["rule"]["seed_quorum"] == 1 and s["rule"]["threshold"] == 0.3
    assert (tmp_path / "again" / "report.md").read_text().startswith("# Stability report: t\n")


@pytest.mark.parametrize(
    "flags,needle",
    [(["--threshold", "3"], "--threshold 3 must be in [0, 1]"), (["--seed-quorum", "0"], "--seed-quorum 0 must be")],
)
def test_a_bad_rule_flag_is_one_line_and_exit_2(swept, tmp_path, flags, needle):
    r = _report(str(swept), *flags, "--out", str(tmp_path / "x"))
    assert r.returncode == 2 and needle in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "x" / "summary.json").exists()


def test_a_rerun_with_another_rule_rejudges_and_says_so(swept):
    before = (swept / "trials.csv").read_text()
    r = _run(*cli(swept, "sweep.rule.threshold=0", points=3))
    assert r.returncode == 0, r.stderr[-2000:]
    assert "judged by threshold 0; the study was created with 0.3" in r.stderr
    assert _summary(swept)["rule_note"] == "judged by threshold 0; the study was created with 0.3"
    assert "training bn=" not in r.stderr  # nothing trained again
    assert (swept / "trials.csv").read_text() != before  # the stable column, re-judged


@pytest.mark.parametrize("study,name", [("lr_stability_d19", "lr_stability"), ("depth_ablation", "depth_ablation")])
def test_a_committed_reference_study_is_re_read_by_the_tool_that_wrote_it(tmp_path, study, name):
    src = REPO / "docs" / "results" / study
    before = {p.name: p.read_bytes() for p in src.iterdir()}
    r = _report(str(src), "--out", str(tmp_path / "x"))
    assert r.returncode == 0, r.stderr[-2000:]
    s = _summary(tmp_path / "x")
    assert s["study"] == name and (tmp_path / "x" / "report.md").read_text().startswith(f"# Stability report: {name}\n")
    assert s["variants"] == json.loads((src / "summary.json").read_text())["variants"]  # the committed verdict
    assert {p.name: p.read_bytes() for p in src.iterdir()} == before  # --out elsewhere: the source untouched
