"""`bnexp.load`: every kind of result as pandas tables, through the real files, storage and commands."""

import subprocess
import sys

import optuna
import pytest
from helpers.env import REPO, bnexp, child_env, replace
from helpers.sweeps import TRAIN, sweep_args

import bnexp as bnexp_pkg
from bnexp.cli import ConfigError

# The population-statistics accuracy as curves.csv and metrics.json name it; the one name the tests use.
VAL_ACC = "val/acc"
REFERENCE = REPO / "docs" / "results"


def test_import_bnexp_stays_light():
    code = (
        "import sys, bnexp; assert callable(bnexp.load); print(sorted({'pandas', 'torch', 'optuna'} & {*sys.modules}))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=child_env())
    assert r.returncode == 0 and r.stdout.strip() == "[]", r.stderr[-2000:]


@pytest.mark.parametrize("study", ["depth_ablation", "lr_stability_d19"])
def test_load_committed_reference_study(study):
    d = REFERENCE / study
    r = bnexp_pkg.load(d)
    header = (d / "trials.csv").read_text().splitlines()
    assert r.trials.shape == (len(header) - 1, len(header[0].split(",")))
    assert list(r.trials.columns) == header[0].split(",")  # the file's own names, untranslated
    assert list(r.curves.columns[:5]) == ["number", "variant", "lr", "seed", "step"] and VAL_ACC in r.curves
    assert len(r.curves) == len((d / "curves.csv").read_text().splitlines()) - 1
    assert [v["label"] for v in r.summary["variants"]] == list(r.variants["label"])
    assert set(r.curves["variant"]) == set(r.variants["label"])
    assert r.trials["bias"].map(type).eq(str).all()  # the typed reader: 'auto' / 'true' stay text


def test_load_fresh_sweep_dir_storage_and_optuna_dataframe(tmp_path):
    out = tmp_path / "sw"
    args = sweep_args(out, name="ld", points=2, extra=["--no-report"])
    r = bnexp("sweep", *args)
    assert r.returncode == 0, r.stderr[-3000:]
    assert not (out / "trials.csv").exists()  # --no-report: load reads the study from its storage

    from_dir = bnexp_pkg.load(out)
    assert from_dir.trials.shape[0] == 4 and set(from_dir.trials["bn"]) == {"off", "pre"}
    assert VAL_ACC in from_dir.curves and len(from_dir.curves) == 4 * 2  # 12 steps, a validation every 6
    assert from_dir.summary["study"] == "ld" and len(from_dir.summary["variants"]) == 2
    assert from_dir.trials["stable"].dtype == bool

    url = f"sqlite:///{out / 'study.db'}"
    from_url = bnexp_pkg.load(url, "ld")
    assert from_url.trials.equals(from_dir.trials) and from_url.curves.equals(from_dir.curves)

    df = optuna.load_study(study_name="ld", storage=url).trials_dataframe()  # needs pandas
    assert len(df) >= 4 and "params_optim.lr" in df

    # after the report, the same dir still reads (from storage) and agrees with the report's trials.csv
    assert bnexp("sweep", *[a for a in args if a != "--no-report"], "--report-only").returncode == 0
    from bnexp.results import _from_report_dir

    rep = _from_report_dir(out)
    assert list(rep.trials["number"]) == list(from_dir.trials["number"])
    assert rep.summary["variants"][0]["width"] == from_dir.summary["variants"][0]["width"]


def test_load_run_multirun_dir(tmp_path):
    args = replace(TRAIN, "trainer.max_steps=6", "trainer.val_every=3")
    r = bnexp("run", "-m", "model.bn=off,pre", *args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    (mdir,) = (tmp_path / "outputs" / "multirun").glob("*/*")
    res = bnexp_pkg.load(mdir)
    assert res.kind == "multirun" and list(res.trials["bn"]) == ["off", "pre"] and VAL_ACC in res.trials
    assert len(res.curves) == 4 and set(res.curves["variant"]) == {"off-auto-d3", "pre-auto-d3"}


def test_load_bad_input_names_the_fix(tmp_path):
    with pytest.raises(ConfigError, match="not a directory"):
        bnexp_pkg.load(tmp_path / "nope")
    with pytest.raises(ConfigError, match="no sweep.json, trials.csv or summary.csv"):
        bnexp_pkg.load(tmp_path)
    with pytest.raises(ConfigError, match="needs a study name"):
        bnexp_pkg.load(f"sqlite:///{tmp_path}/x.db")


def test_load_edges_one_row_per_variant_seed_and_side_with_honest_dtypes():
    r = bnexp_pkg.load(REFERENCE / "edges_d19")
    e = r.edges
    assert list(e.columns) == [
        "variant",
        "seed",
        "side",
        "stable_lr",
        "unstable_lr",
        "edge",
        "resolution",
        "width",
        "open",
        "stable_past",
    ]
    pre = e[e["variant"] == "pre-auto-d19"]
    assert len(pre) == 3 * 2 and set(pre["side"]) == {"low", "high"} and not pre["open"].any()
    assert (pre["resolution"] <= 0.15).all()  # bisected to the study's resolution
    off = e[e["variant"] == "off-auto-d19"]  # nothing stable: one row per seed, width 0
    assert len(off) == 3 and off["side"].isna().all() and (off["width"] == 0).all()
    for v in r.variants_list:  # the summary's width is the median of the seeds' widths in .edges
        seeds = e[e["variant"] == v["label"]].drop_duplicates("seed")["width"]
        assert seeds.median() == pytest.approx(v["width"])
    assert all(p == () for p in pre["stable_past"])
    band = bnexp_pkg.load(REFERENCE / "edges_d19_cl").edges  # pre seed 2: high [0.01, 0.0133], stable again at 0.042
    row = band[(band["variant"] == "pre-auto-d19") & (band["seed"] == 2) & (band["side"] == "high")]
    assert row["stable_past"].iloc[0] == (0.0421697,)
    assert isinstance(r.variants_list, list) and len(r.variants_list) == len(r.variants)  # a property, as the rest
    assert {"width", "width_low", "width_high", "stable_span"} <= set(r.variants.columns)
    assert not {"stable_decades", "stable_decades_ci"} & set(r.variants.columns)
    assert r.trials["diverged"].dtype == bool and r.trials["stable"].dtype == bool
    assert str(r.trials["diverged_step"].dtype) == "Int64"
    assert {"train_s", "recal_s", "cpu_s"} <= set(r.trials.columns)  # what each trial cost (blank: not recorded)
