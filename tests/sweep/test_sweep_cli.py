"""The sweep command on real MNIST slices, real Optuna storage (SQLite), real Hydra: in-process where the
command's own behaviour is tested, as a subprocess where what a user types is the point."""

import collections
import json
import os
import subprocess
from pathlib import Path

import optuna
import pytest
from helpers.env import REPO, bnexp, child_env, compose_cfg
from helpers.sweeps import cli, completed_keys, run_sweep, sweep_args
from helpers.wandb_offline import offline_runs, read_offline_run
from omegaconf import OmegaConf

from bnexp.sweep.app import main
from bnexp.sweep.spec import training_cfg


@pytest.mark.parametrize(
    "args,needle",
    [
        (["sweep.lr.low=1", "sweep.lr.high=0.1"], "sweep.lr.low=1.0 must be < sweep.lr.high=0.1"),
        (["sweep.lr.points=0"], "sweep.lr.points=0 must be >= 1"),
        (["sweep.grid.model.bn=[]"], "sweep.grid must map config keys to non-empty lists"),
        (["sweep.grid.model.bn=[off,foo]"], "model.bn='foo' is not allowed"),
        (["model.bm=pre"], "unknown config key 'model.bm'; valid keys under model: depth"),
        (["sweep.bogus=1"], "unknown config key 'sweep.bogus'; valid keys under sweep: name, grid"),
        (
            ["sweep=nonexistent"],
            "Available options in 'sweep': bias_ablation bn_momentum depth_ablation init_scale lr_stability optim",
        ),
        (["optim.lr=0.5"], "optim.lr=0.5 is the axis every study varies"),
        (["--frobnicate"], "unknown flag '--frobnicate'"),
        (["--max-trials", "x"], "--max-trials=x: give a positive whole number"),
    ],
)
def test_spec_errors_exit_2(args, needle, tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([f"sweep.out_dir={tmp_path}", *args])
    assert e.value.code == 2
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert needle in lines[-1] and lines[-1].startswith("bnexp: error:"), err
    assert "Error executing job" not in err and "Traceback" not in err
    assert not (tmp_path / "study.db").exists()  # nothing started


def test_a_spec_of_ones_own_in_a_config_dir_and_one_that_does_not_parse(tmp_path, capsys):
    (tmp_path / "sweep").mkdir()
    (tmp_path / "sweep" / "mine.yaml").write_text(
        "# @package _global_\nsweep:\n  name: mine\n  grid: {model: {bn: ['off'], depth: [2, 3]}}\n"
    )
    (tmp_path / "sweep" / "bad.yaml").write_text("grid: {model.bn: [off, pre]\nlr: [")
    main(["--config-dir", str(tmp_path), "sweep=mine", "--dry-run", "sweep.lr.points=2"])
    keys = capsys.readouterr().out.split("\n")
    assert [k for k in keys if k.startswith("model.")] == [
        "model.bn=off model.depth=2 seed=0 lr=1e-05",
        "model.bn=off model.depth=2 seed=0 lr=1.0",
        "model.bn=off model.depth=3 seed=0 lr=1e-05",
        "model.bn=off model.depth=3 seed=0 lr=1.0",
    ]
    with pytest.raises(SystemExit) as e:
        main(["--config-dir", str(tmp_path), "sweep=bad"])
    assert e.value.code == 2 and "bad.yaml, line 2 is not valid YAML" in capsys.readouterr().err


def test_tiny_sweep_end_to_end_and_report_rebuild(tmp_path):
    out = tmp_path / "sw"
    summary = run_sweep(sweep_args(out))
    for f in ("summary.json", "trials.csv", "stability.png", "report.md", "sweep.json", "study.db"):
        assert (out / f).is_file(), f
    s = json.loads((out / "summary.json").read_text())
    assert s["study"] == "t" and s["rule"]["threshold"] == 0.3  # the spec's rule, as the command line set it
    assert [v["label"] for v in s["variants"]] == ["off-auto-d3", "pre-auto-d3"]
    for v in s["variants"]:
        assert v["n_trials"] == 2
    rows = (out / "trials.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 4 and "optim.lr=" in rows[1]
    study, done = completed_keys(out)
    assert sorted(done.values()) == [1, 1, 1, 1]
    for t in study.get_trials():
        trial_dir = Path(t.user_attrs["trial_dir"])
        assert trial_dir.parent == out / "trials" / "t"  # keyed by study: two studies never share a trial dir
        assert json.loads((trial_dir / "metrics.json").read_text())["step"] == 12
        assert [h["step"] for h in t.user_attrs["val_history"]] == [6, 12]  # the curve, in the storage
        # the recorded override list rebuilds the trial's config with python -m bnexp.run
        rerun = training_cfg(compose_cfg(t.user_attrs["overrides"].split()))
        ran = OmegaConf.load(trial_dir / "config.yaml")
        for key in ("model", "optim", "data.limit_train", "trainer.max_steps", "seed", "loss"):
            assert OmegaConf.select(rerun, key) == OmegaConf.select(ran, key), key
    # the report rebuilds from storage alone, through the command a user types
    (out / "summary.json").unlink()
    r = bnexp("report", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert json.loads((out / "summary.json").read_text())["variants"] == summary["variants"]
    r = bnexp("report", "--storage", f"sqlite:///{out}/study.db", "--study-name", "t", "--out", "rep", cwd=tmp_path)
    assert r.returncode == 0 and (tmp_path / "rep" / "report.md").is_file(), r.stderr


def test_resume_runs_no_finished_trial_again(tmp_path):
    out = tmp_path / "sw"
    run_sweep(sweep_args(out, extra=["--max-trials", "2"]))  # stops early, like an interrupted run
    _, done = completed_keys(out)
    assert sum(done.values()) == 2
    first_dirs = set(os.listdir(out / "trials" / "t"))
    run_sweep(sweep_args(out))
    _, done = completed_keys(out)
    assert len(done) == 4 and set(done.values()) == {1}
    assert len(os.listdir(out / "trials" / "t")) == 4 and first_dirs <= set(os.listdir(out / "trials" / "t"))


def test_study_with_different_spec_is_refused(tmp_path, capsys):
    out = tmp_path / "sw"
    run_sweep(sweep_args(out, points=1))
    with pytest.raises(SystemExit) as e:
        main(sweep_args(out, points=3))
    assert e.value.code == 2 and "different spec" in capsys.readouterr().err
    assert (out / "summary.json").exists()  # nothing finished was lost


def test_report_only_never_creates_a_study(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        main([*sweep_args(tmp_path / "sw", name="typo"), "--report-only"])
    assert e.value.code == 2 and "no study storage at" in capsys.readouterr().err
    assert not (tmp_path / "sw" / "study.db").exists()  # not even an empty database file


@pytest.mark.slow  # the default suite shares one storage among local workers (sweep.jobs=2) and on PostgreSQL
def test_two_workers_share_one_sqlite_storage(tmp_path):
    out = tmp_path / "sw"
    env = child_env()
    subprocess.run(cli(out, "--create-only", points=3), check=True, cwd=REPO, env=env, capture_output=True)
    procs = [
        subprocess.Popen(cli(out, points=3), cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        for _ in range(2)
    ]
    logs = [p.communicate(timeout=600)[0] for p in procs]
    assert all(p.returncode == 0 for p in procs), logs
    study, done = completed_keys(out)
    assert len(done) == 6 and set(done.values()) == {1}  # every point, exactly once
    assert len(study.get_trials()) == 6  # and no trial beyond the grid
    assert len(os.listdir(out / "trials" / "t")) == 6


def test_population_sweep_trains_k_points_as_one_model(tmp_path):
    out = tmp_path / "sw"
    summary = run_sweep(sweep_args(out, points=3, extra=["sweep.population=3"]))
    study, done = completed_keys(out)
    assert len(done) == 6 and set(done.values()) == {1}
    assert len(study.get_trials()) == 6  # no bookkeeping trials left behind
    assert {t.user_attrs["population"] for t in study.get_trials()} == {3}  # 3 lrs of a variant per model
    for t in study.get_trials():
        m = json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())
        assert m["lr"] == pytest.approx(t.params["optim.lr"]) and m["step"] == 12
    assert [v["n_trials"] for v in summary["variants"]] == [3, 3]


# ---- what a user types, in a subprocess ---------------------------------------------------------------
def test_overrides_reach_the_design_and_the_trials_through_the_real_cli(tmp_path):
    """model.bn=off narrows the grid; --dry-run plans; hydra.run.dir moves the study; a training override
    reaches every trial; --cfg job and --help are Hydra's."""
    r = bnexp("sweep", "sweep=lr_stability", "model.bn=off", "sweep.lr.points=3", "seed=4", "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() and all(k.startswith(("model.bn=off", "seed=", "lr=")) for k in r.stdout.split())
    assert r.stdout.count("model.bn=off") == 3 and r.stdout.count("seed=4") == 3  # narrowed to off, seeds [4]
    r = bnexp("sweep", "--cfg", "job", "sweep=depth_ablation", "seed=3", cwd=tmp_path)
    assert r.returncode == 0 and "depth_ablation" in r.stdout and "\nseed: 3" in r.stdout, r.stderr
    r = bnexp("sweep", "--help", cwd=tmp_path)
    assert r.returncode == 0 and "--create-only" in r.stdout and "sweep: bias_ablation" in r.stdout
    where = tmp_path / "elsewhere"
    args = [*sweep_args(tmp_path / "ignored", points=1), f"hydra.run.dir={where}", "model.bn_eps=0.01"]
    r = bnexp("sweep", *args, "--max-trials", "1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert (where / "study.db").is_file() and not (tmp_path / "ignored").exists()
    (trial,) = (where / "trials" / "t").iterdir()
    assert OmegaConf.load(trial / "config.yaml").model.bn_eps == 0.01


def test_multirun_runs_one_study_per_job(tmp_path):
    args = [a for a in sweep_args(tmp_path / "sw", points=1) if not a.startswith("model.depth")]
    r = bnexp("sweep", "-m", *args, "model.depth=2,3", "sweep.grid.model.bn=[pre]", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    names = sorted(
        s.study_name for s in optuna.get_all_study_summaries(f"sqlite:///{tmp_path}/sw/model.depth=2/study.db")
    )
    assert names == ["t-model.depth=2"]
    for depth in (2, 3):
        s = json.loads((tmp_path / "sw" / f"model.depth={depth}" / "summary.json").read_text())
        assert s["study"] == f"t-model.depth={depth}" and [v["label"] for v in s["variants"]] == [f"pre-auto-d{depth}"]


def test_logger_wandb_on_the_command_line_logs_every_trial_and_the_summary(tmp_path):
    """With no API key and a terminal attached (W&B would prompt there), `logger=wandb` on the sweep's command
    line makes one offline run per trial plus the sweep-summary run, read back from the .wandb files."""
    import pty

    out = tmp_path / "sw"
    home = tmp_path / "home"
    home.mkdir()
    env = child_env(HOME=str(home), NETRC=str(home / "none"), BNEXP_LOG="INFO")
    for var in ("WANDB_MODE", "WANDB_API_KEY", "WANDB_SILENT"):
        env.pop(var, None)
    # trainer.test=true: a sweep's trials skip the test pass by default; here its metric's one name is checked too
    args = [a for a in sweep_args(out) if a != "logger=none"] + ["trainer.test=true"]
    primary, secondary = pty.openpty()
    p = subprocess.Popen(
        [*cli(out)[:3], *args, "logger=wandb", "logger.diagnostics_every=5"],
        cwd=REPO,
        env=env,
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
    )
    os.close(secondary)
    seen = b""
    while True:  # drain the terminal so the child never blocks on a full pty
        try:
            chunk = os.read(primary, 65536)
        except OSError:
            break
        if not chunk:
            break
        seen += chunk
    assert p.wait(timeout=600) == 0, seen.decode(errors="replace")[-3000:]
    assert b"API key" not in seen and b"wandb login" not in seen
    assert {p.parent for p in offline_runs(out)} == {out / "wandb"}  # one `wandb sync out/wandb/*` syncs the study
    runs = [read_offline_run(r, wait_s=30) for r in offline_runs(out)]
    trials = [r for r in runs if r["job_type"] == "trial"]
    for r in trials:  # one name: the trial dir's, the W&B run's, and the head of its id
        assert r["id"].startswith(r["name"] + "-") and (out / "trials" / "t").glob(f"*_{r['name']}")
    summaries = [r for r in runs if r["job_type"] == "sweep-summary"]
    assert len(trials) == 4 and len(summaries) == 1
    spec_hash = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}").user_attrs["spec_hash"]
    assert {r["group"] for r in runs} == {f"t-{spec_hash[:8]}"}  # the study's own group: name + spec hash
    assert sorted(r["name"] for r in trials) == sorted(
        f"{bn}-auto-d3-lr{lr}-s0" for bn in ("off", "pre") for lr in ("1e-04", "1e-01")
    )
    for r in trials:
        assert "train/loss" in r["history_keys"] and "act/z_std/L01" in r["history_keys"]
        assert any("training bn=" in line for line in r["console"])  # the console is captured
        assert r["summary"]["stable_rule"] == "not diverged and val/acc >= 0.3"  # the spec's rule, as set
        assert r["summary"]["stable"] == (r["summary"]["val/acc"] >= 0.3)
    s = summaries[0]
    assert s["name"] == "t-summary" and s["exit_code"] == 0
    assert s["config"]["study"] == "t" and s["config"]["rule"]["threshold"] == pytest.approx(0.3)
    sm = s["summary"]
    assert sm["n_trials"] == 4 and sm["n_stable"] == sum(r["summary"]["stable"] for r in trials)
    report = json.loads((out / "summary.json").read_text())
    for v in report["variants"]:  # the W&B summary and report.md judge by the one rule
        assert sm[f"width/{v['label']}"] == pytest.approx(v["width"])
    for table, nrows in (("trials", 4), ("variants", 2), ("points", 4)):
        assert sm[table]["_type"] == "table-file" and sm[table]["nrows"] == nrows, table
    assert any(k.startswith("charts/val_acc_vs_log_lr") for k in sm) and sm["stability"]["_type"] == "image-file"
    (art,) = [a for a in s["artifacts"] if a["type"] == "sweep-report"]
    assert {"stability.png", "report.md", "summary.json", "trials.csv"} <= set(art["files"])
    _one_name_per_metric(out, trials, report)


def _one_name_per_metric(out, wandb_trials, report) -> None:
    """Each metric has one name in metrics.json, trials.csv, curves.csv, summary.json and the W&B runs; each
    validation is at the same step in metrics.json and W&B; Optuna holds the learning curve and names things."""
    from bnexp.record import LEGACY_NAMES, STATISTICS, TEST_ACC, VAL_ACC, VAL_ACC_BATCH

    metrics = {}
    for p in out.glob("trials/t/*/metrics.json"):
        m = json.loads(p.read_text())
        metrics[(m["bn"], m["lr"])] = m
    trials_cols = (out / "trials.csv").read_text().splitlines()[0].split(",")
    curves_cols = (out / "curves.csv").read_text().splitlines()[0].split(",")
    for name in (VAL_ACC, VAL_ACC_BATCH):
        assert all(name in m for m in metrics.values()) and name in trials_cols and name in curves_cols
        assert all(name in r["summary"] and name in r["history_keys"] for r in wandb_trials)
    assert TEST_ACC in trials_cols and all(TEST_ACC in r["summary"] for r in wandb_trials)
    assert report["statistics"] == STATISTICS and {v["metric"] for v in report["variants"]} == {VAL_ACC}
    old = set(LEGACY_NAMES) - {"optim.lr"}
    assert not old & set(trials_cols) and not old & set(curves_cols)
    assert not any(old & set(r["summary"]) for r in wandb_trials)
    for r in wandb_trials:  # W&B's step of each validation is metrics.json's
        m = metrics[(r["config"]["model"]["bn"], r["config"]["optim"]["lr"])]
        assert [h["trainer/global_step"] for h in r["history"] if VAL_ACC in h] == [h["step"] for h in m["val_history"]]
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{out / 'study.db'}")
    assert study.metric_names == [VAL_ACC] and "spec" not in study.user_attrs  # `optuna studies` stays readable
    for t in study.trials:
        assert "optim.lr" in t.params and "lr" not in t.params
        m = metrics[(t.params["model.bn"], t.params["optim.lr"])]
        assert t.intermediate_values == {h["step"]: h[VAL_ACC] for h in m["val_history"]}  # optuna-dashboard's curves


def test_a_retried_trial_resumes_its_wandb_run(tmp_path, monkeypatch):
    """A trial that fails mid-training is retried; the retry logs to the same W&B run id (offline: a second
    run dir with that id, which `wandb sync` joins), and every point has its own id."""
    from lightning.pytorch.callbacks import Callback

    import bnexp.core.train

    real, calls = bnexp.core.train.train, []

    class FailMidway(Callback):
        def on_train_batch_end(self, trainer, *a):
            if trainer.global_step == 5:
                raise RuntimeError("node lost")

    def flaky_train(cfg, **kw):
        calls.append(cfg.optim.lr)
        if len(calls) == 1:  # the first trial dies half way, its W&B run already started
            kw["callbacks"] = [*kw.get("callbacks", []), FailMidway()]
        return real(cfg, **kw)

    monkeypatch.setattr(bnexp.core.train, "train", flaky_train)
    out = tmp_path / "sw"
    run_sweep([a for a in sweep_args(out, points=1) if a != "logger=none"] + ["logger=wandb", "logger.mode=offline"])
    study, done = completed_keys(out)
    assert len(done) == 2 and [t.state.name for t in study.get_trials()].count("FAIL") == 1
    runs = [read_offline_run(p, wait_s=30) for p in offline_runs(out / "wandb")]
    runs = [r for r in runs if r["job_type"] == "trial"]
    ids = collections.Counter(r["id"] for r in runs)
    assert len(runs) == 3 and sorted(ids.values()) == [1, 2]  # the failed point's two attempts: one run id
    (retried,) = [i for i, n in ids.items() if n == 2]
    assert sorted(r["exit_code"] for r in runs if r["id"] == retried) == [0, 1]


def test_the_console_script_completes_on_tab(tmp_path):
    import shutil

    exe = shutil.which("bnexp-sweep")
    assert exe, "pip install -e . installs the bnexp-sweep console script"
    r = subprocess.run([exe, "-sc", "query=bash"], env=child_env(COMP_LINE="bnexp-sweep sweep="), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    want = {
        "sweep=bias_ablation",
        "sweep=bn_momentum",
        "sweep=depth_ablation",
        "sweep=init_scale",
        "sweep=lr_stability",
        "sweep=optim_divergence",
    }
    assert set(r.stdout.split()) == want, r.stderr
    r = subprocess.run([exe, "-sc", "query=bash"], env=child_env(COMP_LINE="bnexp-sweep sweep.lr."), cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert set(r.stdout.split()) == {"sweep.lr.high=", "sweep.lr.low=", "sweep.lr.points=", "sweep.lr.search=",
                                     "sweep.lr.resolution=", "sweep.lr.warm_start=", "sweep.lr.coarse="}  # fmt: skip


def test_local_workers_share_the_study_and_split_the_cores(tmp_path):
    """sweep.jobs=2: the command's process and one more worker claim points from one storage; each point is
    trained once, the cores are split (one torch thread each on this 2-core machine), one report at the end."""
    out = tmp_path / "sw"
    args = [a for a in sweep_args(out, points=3) if a != "sweep.jobs=1"]
    r = bnexp("sweep", *args, "sweep.jobs=2", cwd=tmp_path, env=child_env(OMP_NUM_THREADS="2"))
    assert r.returncode == 0, r.stderr[-3000:]
    study, done = completed_keys(out)
    assert len(done) == 6 and set(done.values()) == {1} and len(study.get_trials()) == 6
    assert len({t.user_attrs["worker"] for t in study.get_trials()}) == 2  # two processes did the work
    for t in study.get_trials():
        m = json.loads((Path(t.user_attrs["trial_dir"]) / "metrics.json").read_text())
        assert m["provenance"]["torch_threads"] == 1  # 2 cores // 2 workers
    assert json.loads((out / "summary.json").read_text())["n_trials"] == 6


def test_sweep_jobs_auto_plans_a_worker_per_core_or_per_gpu():
    from bnexp.sweep.local import plan

    cfg = compose_cfg(["sweep=lr_stability", "sweep.jobs=auto"], config_name="study")
    sw, base = cfg.sweep, training_cfg(cfg)
    assert plan(sw, base, 72, n_cores=2, n_gpus=0, memory_gib=24) == (2, 1, 0)  # a core each, one thread
    assert plan(sw, base, 72, n_cores=16, n_gpus=0, memory_gib=6) == (4, 4, 0)  # as many as memory holds
    assert plan(sw, base, 3, n_cores=16, n_gpus=0, memory_gib=64) == (3, 5, 0)  # no more than points
    assert plan(sw, base, 72, n_cores=16, n_gpus=4, memory_gib=64) == (4, 4, 4)  # a GPU each
    sw.jobs = 1
    assert plan(sw, base, 72, n_cores=16, n_gpus=0, memory_gib=64) == (1, 16, 0)
    sw.jobs, sw.max_trials = "auto", 2  # --max-trials caps one worker
    assert plan(sw, base, 72, n_cores=16, n_gpus=0, memory_gib=64)[0] == 1
