"""What a sweep trial no longer computes, through the real commands: validations before the last on a subset,
no test pass, hopeless trials pruned (Optuna's PRUNED), later seeds warm-started, glibc told to keep its
memory; each saving shown to leave the verdict's inputs alone, and each setting that could change a verdict
refused."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import optuna
import pytest
from helpers.env import REPO, TINY, bnexp, replace

sys.path.insert(0, str(REPO / "bench"))

TRAIN = replace(TINY, "trainer.max_steps=40", "trainer.val_every=10", "data.limit_val=500", "data.eval_batch_size=250")
# a silent trial (bnexp.sweep.pruning) is pruned at the first validation 100 silent steps in: 160 of 240
PRUNE = replace(TRAIN, "trainer.max_steps=240", "trainer.val_every=80")


def sweep(out: Path, *extra: str, bn: str = "pre", lrs: tuple = (1e-3, 1e-2), train: list = TRAIN) -> None:
    args = [
        "sweep=lr_stability",
        f"sweep.out_dir={out}",
        f"sweep.grid.model.bn=[{bn}]",
        f"sweep.lr.low={lrs[0]}",
        f"sweep.lr.high={lrs[-1]}",
        f"sweep.lr.points={len(lrs)}",
        "sweep.seeds=[0]",
        "sweep.jobs=1",
        "sweep.progress=false",
        "sweep.rule.threshold=0.3",
        "trainer.val_subset=200",
        *train,
        *extra,
    ]
    r = bnexp("sweep", *args)
    assert r.returncode == 0, r.stderr[-2000:]


def trial_metrics(out: Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(out.glob("trials/*/*/metrics.json"))]


def test_a_trial_validates_on_a_subset_before_the_last_and_skips_the_test_pass(tmp_path):
    sweep(tmp_path / "new")
    sweep(tmp_path / "full", "trainer.val_subset=null", "trainer.test=true")
    new, full = trial_metrics(tmp_path / "new"), trial_metrics(tmp_path / "full")
    assert len(new) == len(full) == 2
    for m, f in zip(new, full, strict=True):
        assert [h["n"] for h in m["val_history"]] == [200, 200, 200, 500]  # the last one whole
        assert [h["n"] for h in f["val_history"]] == [500] * 4
        # the same weights: the final validation, which the verdict reads, is the same to the last bit
        for k in ("val/acc", "val/acc_batchstats", "val/loss", "val/acc_recal"):
            assert m[k] == f[k], k
        assert m.get("test/acc") is None and f["test/acc"] is not None and f["test/acc_single"] is not None
        assert any("trainer.test=false" in s for s in m["skipped"]) and any("val_subset" in s for s in m["skipped"])
        assert m["val_subset"] == 200 and f["skipped"] == []
    # a re-judgement by the last 2 validations reads one scored on 200 images: refused, nothing written
    r = bnexp("report", str(tmp_path / "new"), "--last-k", "2", "--out", str(tmp_path / "k2"))
    assert r.returncode == 2 and "trainer.val_subset" in r.stderr and not (tmp_path / "k2").exists(), r.stderr
    assert bnexp("report", str(tmp_path / "full"), "--last-k", "2", "--out", str(tmp_path / "k2f")).returncode == 0


def _trials(out: Path) -> list[optuna.trial.FrozenTrial]:
    storage = f"sqlite:///{out}/study.db"
    return optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage).get_trials()


def test_a_silent_trial_is_pruned_recorded_and_counted_and_one_only_at_chance_is_not(tmp_path):
    """Depth 3, lr 0.1: BN off gets no gradient at its first layer from its first steps (a dead layer), so it is
    pruned at step 160, the first validation 100 silent steps in. At lr 0.01 BN off is at chance to the end too,
    but its gradients flow (a possible late starter): it trains to the end. BN pre is not at chance."""
    sweep(tmp_path / "p", bn="off,pre", lrs=(1e-2, 1e-1), train=PRUNE)
    states = {(t.params["model.bn"], t.params["optim.lr"]): t.state.name for t in _trials(tmp_path / "p")}
    assert states == {("off", 0.01): "COMPLETE", ("off", 0.1): "PRUNED", ("pre", 0.01): "COMPLETE",
                      ("pre", 0.1): "COMPLETE"}  # fmt: skip
    m = {(x["bn"], x["lr"]): x for x in trial_metrics(tmp_path / "p")}
    dead, alive = m[("off", 0.1)], m[("off", 0.01)]
    assert dead["pruned_step"] == 160 and dead["step"] == 160 and dead["pruned_silent_steps"] >= 100
    assert alive["pruned_step"] is None and alive["step"] == 240 and alive["val/acc"] < 0.2
    assert any("pruner" in s for s in dead["skipped"])
    trials = _trials(tmp_path / "p")
    quiet = {(t.params["model.bn"], t.params["optim.lr"]): t.user_attrs.get("silent_steps") for t in trials}
    assert quiet[("off", 0.1)]["80"] >= 70 and quiet[("off", 0.01)] == {"80": 0, "160": 0, "240": 0}
    assert quiet[("pre", 0.01)] is None and quiet[("pre", 0.1)] is None  # with BN, silence is not judged
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    off, pre = s["variants"]
    assert (off["n_pruned"], off["n_trials"], off["n_stable"]) == (1, 2, 0) and pre["n_pruned"] == 0
    assert "pruned" in (tmp_path / "p" / "report.md").read_text()
    assert "PRUNED" in (tmp_path / "p" / "trials.csv").read_text()
    sweep(tmp_path / "off", "sweep.prune=false", bn="off", lrs=(1e-1,), train=PRUNE)
    assert [x.state.name for x in _trials(tmp_path / "off")] == ["COMPLETE"]
    # weight decay moves the silent layers: silence is not judged, also where a grid varies it (each trial's
    # own window, not the study's base config's)
    sweep(tmp_path / "wd", "optim.weight_decay=1e-4", bn="off", lrs=(1e-1,), train=PRUNE)
    assert [x.state.name for x in _trials(tmp_path / "wd")] == ["COMPLETE"]
    sweep(tmp_path / "g", "+sweep.grid.optim.weight_decay=[0.0,0.0001]", bn="off", lrs=(1e-1,), train=PRUNE)
    grid = {
        t.params["optim.weight_decay"]: (t.state.name, t.user_attrs.get("silent_window"))
        for t in _trials(tmp_path / "g")
    }
    assert grid == {0.0: ("PRUNED", 100), 0.0001: ("COMPLETE", None)}


@pytest.mark.parametrize(
    "args, says",
    [
        (["sweep.prune_after=700"], "drop sweep.prune_after"),
        (["sweep.prune=true", "optim.weight_decay=1e-4"], "optim.weight_decay moves every parameter"),
        (["sweep.prune=true", "trainer.max_steps=100"], "no validation before the last comes 100 steps (of"),
        (["sweep.prune=true", "data.batch_size=8"], "comes 800 steps (of data.batch_size=8 images) in"),
        (
            ["sweep.prune=true", "+sweep.grid.optim.weight_decay=[0.0,0.0001]"],
            "variant model.bn=off optim.weight_decay",
        ),
        (["sweep.prune=true", "+sweep.grid.data.batch_size=[8,64]"], "data.batch_size=8: sweep.prune=true cannot"),
        (["sweep.prune=true", "+sweep.grid.trainer.precision=[32-true,16-true]"], "precision=16-true: sweep.prune"),
        (["sweep.prune=true", "sweep.rule.mode=relative"], "relative rule"),
        (["sweep.prune=true", "sweep.rule.threshold=0.1"], "is met at chance"),
        (["sweep.prune=true", "trainer.precision=16-true"], "cannot judge a silent trial in trainer.precision=16"),
        (["sweep.prune=maybe"], "choose one of: auto, true, false"),
        (["sweep.lr.coarse=middle"], "choose one of: outward, all"),
        (["sweep.prune=false", "sweep.prune_after=700"], "drop sweep.prune_after"),
        (["sweep.rule.last_k=2"], "trainer.val_subset=1000 scores all but the final one"),
        (["trainer.val_subset=0"], "trainer.val_subset=0 must be >= 1"),
    ],
)
def test_a_saving_that_could_change_a_verdict_is_refused(tmp_path, args, says):
    out = tmp_path / "s"
    r = bnexp("sweep", "sweep=lr_stability", f"sweep.out_dir={out}", *args)
    assert r.returncode == 2, r.stderr[-1500:]
    lines = [x for x in r.stderr.strip().splitlines() if x.strip()]
    assert len(lines) == 1 and says in lines[0], r.stderr
    assert not (out / "study.db").exists() and not (out / "sweep.json").exists()  # nothing of a study


def test_run_and_sweep_keep_glibc_from_returning_memory(tmp_path):
    """bnexp.run sets glibc's mmap and trim thresholds at start (bnexp.core.alloc); BNEXP_MALLOC=default
    and a user's own MALLOC_*_ variables leave glibc alone; metrics.json says which."""
    from helpers.env import child_env

    def run(name: str, **env: str) -> dict:
        r = bnexp("run", *TINY, f"hydra.run.dir={tmp_path / name}", env=child_env(**env))
        assert r.returncode == 0, r.stderr[-1500:]
        return json.loads((tmp_path / name / "metrics.json").read_text())["malloc"]

    assert run("kept") == {"mmap_threshold": 32 * 2**20, "trim_threshold": 2**31 - 1, "top_pad": 64 * 2**20}
    assert run("default", BNEXP_MALLOC="default") == {}
    assert run("user", MALLOC_TRIM_THRESHOLD_="1000000") == {}


def test_warm_started_seeds_and_an_outward_coarse_grid_end_at_the_brackets_of_a_search_from_scratch(tmp_path):
    """Two seeds' edge search through the real command: from scratch (every seed the whole coarse grid, then
    bisection), with the coarse grid trained outward alone, and with the defaults (outward, later seeds warm-
    started): the same brackets per seed at the same resolution, each saving in fewer trials (the oracle tests
    in tests/analysis/test_warm_start.py and test_coarse_outward.py check every pair of edges)."""
    common = [
        "sweep.grid.model.bn=[pre]",
        "sweep.seeds=[0,1]",
        "sweep.lr.search=edges",
        "sweep.lr.low=1e-5",
        "sweep.lr.high=1",
        "sweep.lr.points=6",
        "sweep.lr.resolution=0.3",
        "sweep.rule.statistics=batch",  # 40 steps are too few for BN's running averages to follow
        "sweep.rule.threshold=0.5",
        "sweep.jobs=1",
        "sweep.progress=false",
        *replace(TRAIN, "trainer.max_steps=30", "trainer.val_every=15"),
    ]
    arms = {
        "scratch": ["sweep.lr.warm_start=false", "sweep.lr.coarse=all"],
        "outward": ["sweep.lr.warm_start=false"],
        "defaults": [],
    }
    got = {}
    for arm, extra in arms.items():
        out = tmp_path / arm
        r = bnexp("sweep", "sweep=lr_stability", f"sweep.out_dir={out}", *extra, *common)
        assert r.returncode == 0, r.stderr[-2000:]
        (v,) = json.loads((out / "summary.json").read_text())["variants"]
        per = v["edges"]["per_seed"]
        got[arm] = ({s: (e["low"], e["high"]) for s, e in per.items()}, v["edges"]["n_trials"])
    assert got["outward"][0] == got["scratch"][0] == got["defaults"][0]
    assert all(lo and hi for lo, hi in got["scratch"][0].values())  # both seeds found a range to bracket
    assert got["defaults"][1] < got["outward"][1] < got["scratch"][1], got


def test_a_point_already_pruned_is_not_trained_again(tmp_path):
    """Two workers planning at one moment may enqueue one point twice; the later claim is dropped as a
    duplicate when the first is finished, and a pruned trial is finished (the depth-19 study trained one
    pruned point twice before this)."""
    from helpers.sweeps import parts, sweep_args, worker
    from optuna.trial import TrialState

    from bnexp.sweep import liveness

    p = parts(sweep_args(tmp_path / "s", points=1, extra=["sweep.grid.model.bn=[pre]"]))
    first = p.study.ask()
    key = first.user_attrs["key"]
    p.study.enqueue_trial(liveness.fixed_params(p.study, first), user_attrs={"key": key, "attempt": 0})
    p.study.tell(first, state=TrialState.PRUNED)
    again = p.study.ask()
    assert again.user_attrs["key"] == key
    assert worker(p)._drop_duplicate(again)
