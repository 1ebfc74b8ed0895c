"""The third break-test round, as a user meets it: --dry-run paths, `report --trials` on hand-edited tables,
settings each valid alone but unsafe or meaningless together, stop signals other than INT and TERM, and the
round's eleven cases (compare, status and report on a running study, a re-judgement in place).

Bad input: one line `bnexp: error: ...` naming the fix, exit 2, nothing written. Odd but usable input: a line
`bnexp: warning: ...`, and the command goes on. Every case here exits before training but the signal ones."""

from __future__ import annotations

import csv
import hashlib
import json
import logging
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers.env import REPO, TINY, child_env, replace, wait_until_caught
from helpers.sweeps import cli, parts, sweep_args, wait_running

from bnexp import cli as bnexp_cli
from bnexp.core.train import CHECKPOINT
from bnexp.sweep import app, report, status

PASSWORD_WITH_AT = "Kq7é /:@?#%Zw"  # issue 25's case 1: an unencoded `@` inside the password


@pytest.fixture(autouse=True)
def _fresh_process_state(monkeypatch):
    """Each case as a fresh command would meet it: no secret registered, no warning said yet, and the root
    logger's handlers as they were (sweep.main binds one to this test's captured stderr)."""
    monkeypatch.setattr(bnexp_cli, "_SECRETS", set())
    monkeypatch.setattr(bnexp_cli, "_HIDDEN", {})
    monkeypatch.setattr(bnexp_cli, "_WARNED", set())
    monkeypatch.setattr(logging.root, "handlers", list(logging.root.handlers))


def _run(main, args: list[str], capsys) -> tuple[int, str, str]:
    """A command in this process, as a user types it: (exit status, stdout, stderr)."""
    try:
        main(args)
        code = 0
    except SystemExit as e:
        code = e.code or 0
    got = capsys.readouterr()
    return code, got.out, got.err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err, err
    assert lines and lines[-1].startswith("bnexp: error: "), err
    assert sum(ln.startswith("bnexp: error: ") for ln in lines) == 1, err
    return lines[-1]


def _tree(root: Path) -> list[tuple[str, str]]:
    return sorted(
        (str(p.relative_to(root)), hashlib.md5(p.read_bytes()).hexdigest() if p.is_file() else "dir")
        for p in root.rglob("*")
    )


def _setup(tmp: Path) -> None:
    (tmp / "afile").write_text("a regular file, not a directory\n")
    (tmp / "adir").mkdir()


# ---- --dry-run: it stops where the real command would, says so in one line, writes nothing ---------------
DRY = {
    "out-dir-under-a-file": (["sweep.out_dir={tmp}/afile/x"], ["afile is a regular file", "set sweep.out_dir"]),
    "hydra-run-dir-under-a-file": (["hydra.run.dir={tmp}/afile/x"], ["afile is a regular file"]),
    "password-with-an-unencoded-at": (
        [f"sweep.storage=postgresql://u:{PASSWORD_WITH_AT}@127.0.0.1:5432/db"],
        ["unencoded '@'", "%40"],
    ),  # fmt: skip
    "storage-refuses-the-login": (
        ["sweep.storage=postgresql://u:s3cretpw@127.0.0.1:1/db"],
        ["cannot open storage 'postgresql://u:***@127.0.0.1:1/db'"],
    ),  # fmt: skip
    "sqlite-storage-is-a-dir": (["sweep.storage=sqlite:///{tmp}/adir"], ["adir is a directory"]),
    "sqlite-storage-is-not-a-db": (["sweep.storage=sqlite:///{tmp}/afile"], ["afile"]),
    "journal-storage-is-damaged": (["sweep.storage=journal:///{tmp}/afile"], ["afile is damaged"]),
    "jobs-zero": (["sweep.jobs=0"], ["sweep.jobs=0"]),
    "study-name-with-a-slash": (["sweep.name=a/b"], ["sweep.name='a/b'"]),
    "run-name-with-a-newline": (["logger.run_name='two\nlines'"], ["logger.run_name=", "on one line"]),
    "unknown-key": (["model.bm=pre"], ["unknown config key 'model.bm'"]),
}


@pytest.mark.parametrize("case", list(DRY), ids=list(DRY))
def test_dry_run_refuses_what_the_real_command_refuses(case, tmp_path, capsys):
    _setup(tmp_path)
    extra, needles = DRY[case]
    extra = [a.format(tmp=tmp_path) for a in extra]
    given = {a.split("=", 1)[0] for a in extra}
    args = [*(a for a in sweep_args(tmp_path / "sw") if a.split("=", 1)[0] not in given), *extra, "--dry-run"]
    before = _tree(tmp_path)
    code, out, err = _run(app.main, args, capsys)
    assert code == 2, err
    line = _one_error_line(err)
    for n in needles:
        assert n in line, (n, line)
    assert out == ""  # no design printed for a study that cannot run
    assert "Kq7" not in err and "Zw@" not in err and "s3cretpw" not in err  # no part of a password
    assert _tree(tmp_path) == before  # nothing written, not even Hydra's log


def test_dry_run_of_a_multirun_writes_nothing_and_plans_each_job(tmp_path, capsys):
    args = [a for a in sweep_args(tmp_path / "sw") if not a.startswith("model.depth=")]
    code, out, err = _run(app.main, ["-m", *args, "model.depth=2,3", "--dry-run"], capsys)
    assert code == 0, err
    assert err.count("study t-model.depth=2:") == 1 and err.count("study t-model.depth=3:") == 1, err
    assert sum(ln.startswith("model.bn=") for ln in out.splitlines()) == 2 * 4 and list(tmp_path.iterdir()) == []


# ---- settings valid alone, unsafe (refused) or meaningless (a warning) together --------------------------
REFUSED = {
    "edge-resolution-vs-lr-range": (
        ["sweep.lr.search=edges", "sweep.lr.resolution=10"],
        ["no finer than the coarse grid's step", "sweep.lr.resolution below"],
    ),  # fmt: skip
    "rule-last-k-vs-validations": (
        ["sweep.rule.last_k=5", "trainer.val_subset=null"],
        ["more validations than a trial makes (2", "last_k to 2"],
    ),  # fmt: skip
    "recal-statistics-vs-recal-batches": (
        ["sweep.rule.statistics=recal", "trainer.recal_batches=0"],
        ["trainer.recal_batches=0", "statistics=population"],
    ),  # fmt: skip
    "recal-statistics-vs-population": (
        ["sweep.rule.statistics=recal", "sweep.population=2"],
        ["sweep.population=2"],
    ),  # fmt: skip
    "recal-statistics-vs-manual-bn": (
        ["sweep.rule.statistics=recal", "model.bn_impl=manual"],
        ["model.bn_impl=manual"],
    ),  # fmt: skip
    "max-trials-vs-jobs": (["sweep.jobs=2", "--max-trials", "1"], ["--max-trials", "sweep.jobs=1"]),
    "trainer-devices-vs-sweep-jobs": (
        ["trainer.accelerator=cpu", "trainer.devices=2"],
        ["one device each", "sweep.jobs=N"],
    ),  # fmt: skip
    "trainer-num-nodes-vs-sweep": (["trainer.num_nodes=2"], ["one device each"]),
}
WARNED = {
    "grace-vs-heartbeat": (["sweep.heartbeat=30", "sweep.grace=40"], "sweep.grace=40 < 2 x sweep.heartbeat=30"),
    "grace-without-heartbeat": (["sweep.heartbeat=0", "sweep.grace=100"], "with sweep.heartbeat=0"),
    "edge-resolution-with-grid-search": (["sweep.lr.resolution=0.05"], "with sweep.lr.search=grid it is unused"),
    "edge-coarse-with-grid-search": (["sweep.lr.coarse=all"], "sweep.lr.coarse=all is the edge search's"),
    "population-vs-lr-points": (["sweep.population=8"], "sweep.population=8 > sweep.lr.points=2"),
    "val-every-vs-max-steps": (["trainer.val_every=100"], "trainer.val_every=100 > trainer.max_steps=12"),
    "log-every-vs-max-steps": (["trainer.log_every=100"], "trainer.log_every=100 > trainer.max_steps=12"),
    "diagnostics-every-vs-max-steps": (["logger.diagnostics_every=1000"], "logger.diagnostics_every=1000 > "),
    "landscape-every-vs-logger-none": (["logger.landscape_every=5"], "logger.landscape_every=5 with logger=none"),
    "sync-bn-vs-bn-off": (["model.sync_bn=true", "model.bn=off"], "no BN to synchronise"),
    "compile-break-even-vs-compile-none": (
        ["trainer.compile=none", "trainer.compile_break_even_steps=100"],
        "with trainer.compile=none it is unused",
    ),  # fmt: skip
    "wandb-project-vs-logger-none": (["logger.project=mine"], "logger.project=mine is a W&B setting"),
    "batch-statistics-vs-bn-off-only": (["sweep.rule.statistics=batch", "model.bn=off"], "without BN every"),
    "run-id-vs-sweep": (["logger.run_id=mine"], "logger.run_id is set per trial by the sweep"),
    "one-lr-point-vs-lr-range": (["sweep.lr.points=1"], "sweep.lr.high=0.1 is unused"),
    "epsilon-vs-threshold-mode": (["sweep.rule.epsilon=0.05"], "with sweep.rule.mode=threshold it is unused"),
    "threshold-vs-relative-mode": (["sweep.rule.mode=relative"], "with sweep.rule.mode=relative it is unused"),
    "seed-quorum-vs-one-seed": (["sweep.rule.seed_quorum=1"], "sweep.rule.seed_quorum=1 with one seed"),
    "max-trials-vs-dry-run": (["--max-trials", "3"], "sweep.action=plan trains none"),
    "momentum-vs-adam": (["optim.momentum=0.5"], "with optim.name=adam it is unused"),
}


@pytest.mark.parametrize("case", list(REFUSED), ids=list(REFUSED))
def test_an_unsafe_pair_of_settings_is_refused_naming_the_fix(case, tmp_path, capsys):
    extra, needles = REFUSED[case]
    code, out, err = _run(app.main, [*sweep_args(tmp_path / "sw"), *extra, "--dry-run"], capsys)
    assert code == 2, err
    line = _one_error_line(err)
    for n in needles:
        assert n in line, (n, line)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("case", list(WARNED), ids=list(WARNED))
def test_a_meaningless_pair_of_settings_is_said_once_and_the_command_goes_on(case, tmp_path, capsys):
    extra, needle = WARNED[case]
    code, out, err = _run(app.main, [*sweep_args(tmp_path / "sw"), *extra, "--dry-run"], capsys)
    assert code == 0, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("bnexp: warning: ")]
    assert [w for w in warnings if needle in w], err
    assert len(warnings) == len(set(warnings))  # each said once, though every variant's config is checked
    assert out.strip()  # the design is printed: the study would run


def test_the_default_settings_warn_of_nothing(tmp_path, capsys):
    code, _, err = _run(app.main, [*sweep_args(tmp_path / "sw"), "--dry-run"], capsys)
    assert code == 0 and "warning" not in err, err


# ---- report --trials on hand-edited tables -----------------------------------------------------------------
HEADER = ["number", "state", "key", "bn", "bias", "depth", "lr", "seed", "diverged", "val/acc", "test/acc"]


def _table(path: Path, edit: tuple[int, str, str] | None = None, cells: list | None = None, depth: int = 3) -> Path:
    rows = [[i, "COMPLETE", f"model.bn=pre seed=0 lr={lr}", "pre", "auto", depth, lr, 0, "False", acc, acc]
            for i, (lr, acc) in enumerate([(1e-4, 0.11), (1e-3, 0.95), (1e-2, 0.96), (1e-1, 0.2)])]  # fmt: skip
    if edit is not None:
        row, col, value = edit
        rows[row][HEADER.index(col)] = value
    if cells is not None:
        rows[2] = cells
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    return path


HAND_EDITED = {  # (row, column, cell) -> what the one line names; rows count from the header, as a sheet does
    "text-in-val-acc": ((1, "val/acc", "abc"), "row 3: val/acc='abc' is not a number"),
    "lr-nan": ((1, "lr", "nan"), "row 3: lr=nan is not a learning rate"),
    "lr-negative": ((1, "lr", "-1"), "row 3: lr=-1.0 is not a learning rate"),
    "lr-zero": ((1, "lr", "0"), "row 3: lr=0.0 is not a learning rate"),
    "lr-inf": ((1, "lr", "inf"), "row 3: lr=inf is not a learning rate"),
    "lr-empty": ((1, "lr", ""), "row 3: lr=(empty) is not a learning rate"),
    "lr-text": ((1, "lr", "fast"), "row 3: lr='fast' is not a number"),
    "val-acc-above-one": ((1, "val/acc", "7.5"), "row 3: val/acc=7.5 is not an accuracy"),
    "val-acc-negative": ((1, "val/acc", "-0.1"), "row 3: val/acc=-0.1 is not an accuracy"),
    "test-acc-above-one": ((1, "test/acc", "2"), "row 3: test/acc=2.0 is not an accuracy"),
    "unknown-state": ((1, "state", "DONE"), "row 3: state='DONE' is not a trial state"),
    "seed-negative": ((1, "seed", "-1"), "row 3: seed=-1 is not a seed"),
    "seed-fraction": ((1, "seed", "1.5"), "row 3: seed=1.5 is not a seed"),
    "depth-text": ((1, "depth", "deep"), "row 3: depth='deep' is not a whole number"),
    "diverged-maybe": ((1, "diverged", "maybe"), "row 3: diverged='maybe' is not True or False"),
}


@pytest.mark.parametrize("case", list(HAND_EDITED), ids=list(HAND_EDITED))
def test_report_trials_names_the_row_and_cell_a_hand_edit_spoiled(case, tmp_path, capsys):
    edit, needle = HAND_EDITED[case]
    table = _table(tmp_path / "trials.csv", edit)
    code, out, err = _run(report.main, ["--trials", str(table), "--out", str(tmp_path / "r")], capsys)
    assert code == 2, err
    line = _one_error_line(err)
    assert f"{table} {needle}" in line and "fix the cell" in line, line
    assert not (tmp_path / "r").exists()


@pytest.mark.parametrize("cells", [[2, "COMPLETE", "k", "pre"], [*range(len(HEADER)), "extra"]], ids=["fewer", "more"])
def test_report_trials_refuses_a_row_with_another_number_of_cells(cells, tmp_path, capsys):
    table = _table(tmp_path / "trials.csv", cells=cells)
    code, _, err = _run(report.main, ["--trials", str(table), "--out", str(tmp_path / "r")], capsys)
    assert code == 2 and "row 4 has" in _one_error_line(err) and "cells than its header's 11" in err, err


def test_report_trials_takes_an_empty_or_nan_result_as_not_measured(tmp_path, capsys):
    table = _table(tmp_path / "trials.csv", (3, "val/acc", "nan"))
    code, out, err = _run(
        report.main, ["--trials", str(table), "--out", str(tmp_path / "r"), "--format", "svg"], capsys
    )
    assert code == 0, err
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert summary["variants"][0]["n_trials"] == 4


# ---- a re-judgement never changes a dir's files unasked, nor the study's recorded rule ----------------------
def test_a_rejudgement_writes_to_out_or_in_place_when_asked_and_keeps_the_studys_rule(tmp_path, capsys):
    saved = tmp_path / "saved"
    code, _, err = _run(report.main, ["--trials", str(_table(tmp_path / "t.csv")), "--out", str(saved)], capsys)
    assert code == 0, err
    before = _tree(saved)
    code, _, err = _run(report.main, [str(saved), "--threshold", "0.1"], capsys)
    assert code == 2 and "--out DIR" in _one_error_line(err) and "--in-place" in err, err
    assert _tree(saved) == before  # not rewritten
    for bad in ([str(saved), "--in-place", "--out", str(tmp_path / "x")], ["--in-place", "--threshold", "0.1"]):
        code, _, err = _run(report.main, bad, capsys)
        assert code == 2 and _one_error_line(err), err
    code, _, err = _run(report.main, [str(saved), "--threshold", "0.1", "--in-place", "--format", "svg"], capsys)
    assert code == 0, err
    s = json.loads((saved / "summary.json").read_text())
    assert s["rule"]["threshold"] == 0.1 and s["recorded_rule"]["threshold"] == 0.9
    code, out, err = _run(report.main, [str(saved), "--format", "svg"], capsys)  # a plain report: the study's rule
    assert code == 0, err
    s = json.loads((saved / "summary.json").read_text())
    assert s["rule"]["threshold"] == 0.9 and not s.get("rule_note"), s.get("rule_note")


# ---- compare: a dir twice, sources by dir, the x axis a design setting -------------------------------------
def test_compare_the_same_dir_twice_warns_and_compares_it_once(tmp_path, capsys):
    from bnexp import compare

    saved = tmp_path / "depth_ablation"
    assert _run(report.main, ["--trials", str(_table(tmp_path / "t.csv")), "--out", str(saved)], capsys)[0] == 0
    other = tmp_path / "elsewhere" / "depth_ablation"  # another study dir of the same name
    other.parent.mkdir()
    _table(tmp_path / "t2.csv", depth=8)
    assert _run(report.main, ["--trials", str(tmp_path / "t2.csv"), "--out", str(other)], capsys)[0] == 0
    dirs = [str(saved), f"{tmp_path}/./depth_ablation", str(other)]
    code, out, err = _run(compare.main, [*dirs, "--out", str(tmp_path / "cmp"), "--format", "svg"], capsys)
    assert code == 0, err
    assert err.count("bnexp: warning: ") == 1 and "is the same directory as" in err and "compared once" in err
    rows = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))
    assert len(rows) == 2  # one variant per distinct dir
    assert {r["source"] for r in rows} == {str(Path(*saved.parts[-2:])), str(Path(*other.parts[-2:]))}


def test_compare_never_takes_an_execution_setting_as_its_x_axis(tmp_path, capsys):
    """Two studies whose trials differ in model.depth and in trainer.compile (how they ran): x is the depth."""
    from bnexp import compare

    dirs = []
    for depth, comp in ((3, "none"), (8, "default")):
        t = _table(tmp_path / f"t{depth}.csv", depth=depth)
        rows = list(csv.reader(open(t)))
        rows[0].append("overrides")
        for r in rows[1:]:
            r.append(f"trainer.compile={comp} model.depth={depth}")  # the order the case met
        csv.writer(open(t, "w", newline="")).writerows(rows)
        dirs.append(str(tmp_path / f"d{depth}"))
        assert _run(report.main, ["--trials", str(t), "--out", dirs[-1], "--format", "svg"], capsys)[0] == 0
    code, out, err = _run(compare.main, [*dirs, "--out", str(tmp_path / "cmp"), "--format", "svg"], capsys)
    assert code == 0, err
    assert "x = model.depth" in out, out
    assert "Differing setting(s): `model.depth`." in (tmp_path / "cmp" / "compare.md").read_text()
    table = list(csv.DictReader(open(tmp_path / "cmp" / "compare.csv")))
    assert {r["trainer.compile"] for r in table} == {"none", "default"}  # kept in the table, never the x axis


# ---- status and report on a study still running --------------------------------------------------------------
def _dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


@pytest.mark.parametrize("how", ["killed-here", "no-heartbeat"])
def test_status_says_a_running_trial_whose_worker_is_gone_is_maybe_dead(how, tmp_path, capsys):
    from bnexp.sweep import liveness

    beats = [f"sweep.storage=journal://{tmp_path}/study.log", "sweep.heartbeat=1", "sweep.grace=2"]
    p = parts(sweep_args(tmp_path / "sw", extra=beats if how == "no-heartbeat" else []))
    t = liveness.claim(p.study, heartbeat=0)
    if how == "killed-here":
        t.set_user_attr("worker", f"{socket.gethostname()}:{_dead_pid()}")
    else:  # another host's worker, silent past the grace (journal storages record bnexp's own heartbeat)
        t.set_user_attr("worker", "elsewhere:4242")
        liveness.Heartbeat(p.study, liveness.trial_id(t), 1).record()
        time.sleep(3)
    code, out, err = _run(status.main, ["--storage", p.url, "--study-name", "t"], capsys)
    assert code == 0, err
    assert "1 running" in out and f"trial {t.number} (" in out and "maybe dead" in out, out
    assert ("is gone" if how == "killed-here" else "no heartbeat for 3 s (sweep.grace=2 s)") in out, out
    code, out, err = _run(report.main, ["--storage", p.url, "--study-name", "t", "--out", str(tmp_path / "r"),
                                        "--format", "svg"], capsys)  # fmt: skip
    assert code == 0, err
    assert "the study is not finished: 1 running, 3 waiting" in err and "bnexp.status" in err, err


# ---- stop signals other than SIGINT and SIGTERM ----------------------------------------------------------------
def _start(args: list[str], cwd: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", *args], cwd=cwd, env=child_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip


def _wait_until_caught(p: subprocess.Popen, sig: int, timeout: float = 120) -> None:
    wait_until_caught(p, sig, timeout)


def _stopped(p: subprocess.Popen) -> str:
    _, err = p.communicate(timeout=120)
    assert p.returncode == 130, (p.returncode, err[-3000:])  # not -1 / -3 (killed), not 1 (a traceback)
    assert "Traceback" not in err and "Exception ignored" not in err, err[-3000:]
    return err.strip().splitlines()[-1]


@pytest.mark.parametrize("sig", ["SIGHUP", "SIGQUIT"])
@pytest.mark.parametrize("command", ["run", "sweep"])
def test_hup_or_quit_before_training_is_one_line(tmp_path, command, sig):
    args = ["bnexp.run", *TINY, f"hydra.run.dir={tmp_path / 'r'}"] if command == "run" else cli(tmp_path / "sw")[2:]
    p = _start(args, tmp_path)
    _wait_until_caught(p, getattr(signal, sig))
    p.send_signal(getattr(signal, sig))
    assert _stopped(p) == f"bnexp: stopped ({sig}) before training began; rerun the same command to start again"


@pytest.mark.parametrize("sig", ["SIGHUP", pytest.param("SIGQUIT", marks=pytest.mark.slow)])
def test_hup_or_quit_during_training_checkpoints_and_the_rerun_resumes(tmp_path, sig):
    """A closed terminal (SIGHUP) or Ctrl-\\ (SIGQUIT) stops `bnexp.run` as SIGTERM does: its checkpoint, exit
    130, the command that resumes it; that command resumes from the checkpoint's step, not from step 0."""
    run_dir = tmp_path / "run"
    args = [*replace(TINY, "trainer.max_steps=300", "trainer.val_every=150", "logger=csv"), f"hydra.run.dir={run_dir}"]
    p = _start(["bnexp.run", *args], tmp_path)
    csv_file, deadline = run_dir / "csv" / "metrics.csv", time.time() + 300
    while time.time() < deadline and not (csv_file.is_file() and csv_file.read_text().count("\n") > 3):
        time.sleep(0.2)  # training has logged a few times: past step 0
    p.send_signal(getattr(signal, sig))
    line = _stopped(p)
    assert line.startswith("bnexp: stopped; checkpoint") and "resume: python -m bnexp.run" in line, line
    assert (run_dir / CHECKPOINT).is_file()
    r = subprocess.run([sys.executable, "-m", "bnexp.run", *args], cwd=tmp_path, env=child_env(), capture_output=True,
                       text=True, timeout=600)  # fmt: skip
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((run_dir / "metrics.json").read_text())["resumed_from_step"] > 0


def test_hup_during_a_sweep_stops_it_as_sigterm_does(tmp_path):
    out = tmp_path / "sw"
    p = subprocess.Popen(cli(out, "trainer.max_steps=100000"), cwd=REPO, env=child_env(),
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)  # fmt: skip
    wait_running(out, p)
    p.send_signal(signal.SIGHUP)
    assert "sweep interrupted; rerun the same command to resume" in _stopped(p)
