"""The W&B Report's structure, built without network; the CLI without a login."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
from helpers.env import REPO

wr = pytest.importorskip("wandb_workspaces.reports.v2")

from bnexp.tracking.dashboard import build_report, describe, main  # noqa: E402


def _by_title(report) -> dict:
    return {d["title"]: d for d in describe(report)}


def test_report_has_the_stability_panels():
    report = build_report("ent", "proj", study="lr_stability")
    assert (report.entity, report.project) == ("ent", "proj") and "lr_stability" in report.title
    panels = _by_title(report)
    val_vs_lr = panels["final val/acc vs log10 lr, per variant"]
    assert val_vs_lr["type"] == "CustomChart"
    assert {"table:points", "log10_lr", "mean", "variant"} <= set(val_vs_lr["plots"])
    widths = panels["width per variant (decades: median over seeds of log10 high / low edge)"]
    assert widths["type"] == "CustomChart" and "width" in widths["plots"]
    assert "n_diverged" in panels["diverged trials per variant"]["plots"]  # from the sweep-summary table
    assert panels["diverged count per variant (trial runs)"]["plots"] == ["diverged_count"]  # BarPlot, summed
    scatter = panels["final val/acc vs learning rate (every trial)"]
    assert scatter["type"] == "ScatterPlot" and scatter["plots"] == ["optim.lr", "val/acc"]
    loss = panels["training loss by variant (mean, min-max over trials)"]
    assert loss["type"] == "LinePlot" and "train/loss" in loss["plots"]
    layer_regexes = {p for d in describe(report) for p in d["plots"] if p.startswith(("act/", "grad/", "landscape/"))}
    assert {r"act/z_std/.*", r"act/bn_out_std/.*", r"grad/.*", "landscape/loss_range"} <= layer_regexes


def test_panels_group_by_variant_and_serialise_without_network():
    report = build_report("ent", "proj", study="s1")
    grids = [b for b in report.blocks if isinstance(b, wr.PanelGrid)]
    assert len(grids) == 3
    for grid in grids:
        for p in grid.panels:
            p._to_model()  # every panel is a valid spec (runsets need the API; panels do not)
    loss = next(p for g in grids for p in g.panels if getattr(p, "title", "") and "training loss" in p.title)
    assert loss.groupby == wr.Config("variant") and loss.groupby_aggfunc == "mean"


def test_runsets_select_the_study_and_job_type():
    from wandb_workspaces import expr

    def filt(rs) -> dict:
        tree = expr.expr_to_filters(rs.filters)
        leaves = tree.filters[0].filters if tree.filters and tree.filters[0].filters else tree.filters
        return {leaf.key.name: leaf.value for leaf in leaves}

    report = build_report("ent", "proj", study="s1")
    runsets = {rs.name: rs for b in report.blocks if isinstance(b, wr.PanelGrid) for rs in b.runsets}
    assert filt(runsets["sweep summaries"]) == {"jobType": "sweep-summary", "group": "s1"}
    assert filt(runsets["trials"]) == {"jobType": "trial", "group": "s1"}
    assert filt(runsets["runs and trials"]) == {"jobType": ["run", "trial"], "group": "s1"}
    everything = build_report("ent", "proj")
    rs = next(rs for b in everything.blocks if isinstance(b, wr.PanelGrid) for rs in b.runsets)
    assert "Group" not in rs.filters


def test_dry_run_prints_panels(capsys):
    main(["--entity", "ent", "--project", "proj", "--study", "s1", "--dry-run"])
    out = capsys.readouterr().out
    assert "BN stability: s1" in out and "width per variant" in out and "act/z_std" in out


def test_saving_without_login_exits_2_with_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("WANDB_") and k != "NETRC"}
    env["HOME"] = str(tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "bnexp.dashboard", "--entity", "ent", "--project", "proj"],
        capture_output=True,
        text=True,
        cwd=REPO,
        env=env,
        timeout=120,
    )
    assert r.returncode == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and "wandb login" in lines[0], r.stderr


def _serve_optuna_dashboard(db, path: str):
    """GET `path` from optuna-dashboard serving `db` (the dashboard extra's console script), as JSON."""
    import json
    import socket
    import subprocess
    import sys
    import time
    import urllib.request
    from pathlib import Path

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    exe = Path(sys.executable).with_name("optuna-dashboard")
    cmd = [str(exe), f"sqlite:///{db}", "--host", "127.0.0.1", "--port", str(port), "--quiet"]
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and p.poll() is None:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as resp:
                    return json.loads(resp.read())
            except OSError:
                time.sleep(0.5)
        raise AssertionError(p.stderr.read().decode()[-2000:] if p.poll() is not None else "no answer")
    finally:
        p.kill()
        p.wait()


def test_optuna_dashboard_draws_each_trials_learning_curve(tmp_path):
    """Each trial reports its val/acc at each validation (trial.report), under the study's metric name: the
    dashboard's API gives a finished trial's intermediate values, the steps metrics.json gives them."""
    import json
    from pathlib import Path

    from helpers.env import REPO, child_env
    from helpers.sweeps import cli

    out = tmp_path / "sw"
    r = subprocess.run(cli(out, "sweep.grid.model.bn=[pre]"), cwd=REPO, env=child_env(), capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr[-2000:]
    study = _serve_optuna_dashboard(out / "study.db", "/api/studies/1")
    assert study["objective_names"] == ["val/acc"]  # Optuna's set_metric_names, as the dashboard reads it
    for t in study["trials"]:
        m = json.loads((Path(next(a["value"] for a in t["user_attrs"] if a["key"] == "trial_dir")) / "metrics.json")
                       .read_text())  # fmt: skip
        assert t["state"] == "Complete" and [p["name"] for p in t["params"]] == ["model.bn", "seed", "optim.lr"]
        got = {iv["step"]: iv["value"] for iv in t["intermediate_values"]}
        assert got == {h["step"]: pytest.approx(h["val/acc"]) for h in m["val_history"]} and len(got) == 2


def test_optuna_dashboard_reads_a_sweep_storage_as_is(tmp_path):
    # the README: `optuna-dashboard sqlite:///<out dir>/study.db` (the dashboard extra) shows a study as it is
    from helpers.env import REPO, child_env
    from helpers.sweeps import cli

    out = tmp_path / "sw"
    r = subprocess.run(cli(out, "--create-only"), cwd=REPO, env=child_env(), capture_output=True, text=True, timeout=99)
    assert r.returncode == 0, r.stderr[-2000:]
    studies = _serve_optuna_dashboard(out / "study.db", "/api/studies")
    (study,) = studies["study_summaries"]
    attrs = {a["key"]: a["value"] for a in study["user_attrs"]}
    assert study["study_name"] == "t" and attrs["design_size"] == "4"  # the 2 x 2 points, enqueued


def test_study_name_selects_one_study_by_its_group(tmp_path):
    """Two studies of one name (other out dirs or specs) have two W&B groups; a sweep dir names its own."""
    import json

    from bnexp.tracking.dashboard import _group

    d = tmp_path / "sw"
    d.mkdir()
    (d / "sweep.json").write_text(json.dumps({"study": "t", "storage": "sqlite:///x", "wandb_group": "t-0123abcd"}))
    assert _group(str(d)) == "t-0123abcd" and _group("t-0123abcd") == "t-0123abcd" and _group(None) is None
