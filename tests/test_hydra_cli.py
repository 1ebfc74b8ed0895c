"""bnexp.run's Hydra command line as users type it: `experiment=...` without `+`, the smoke preset, and a
`--help` that lists the groups bnexp.run takes (and only those)."""

import json
import re
from pathlib import Path

from helpers.env import bnexp

CONF = Path(__file__).resolve().parents[1] / "bnexp" / "conf"
NOT_FOR_RUN = {"schema", "sweep", "hydra"}  # schema is internal, sweep/ is bnexp.sweep's; hydra/launcher below


def test_experiment_preset_without_plus():
    r = bnexp("run", "experiment=seed_bn", "--cfg", "hydra")
    assert r.returncode == 0, r.stderr[-2000:]
    assert "mode: MULTIRUN" in r.stdout and "model.bn: off,pre,post" in r.stdout


def test_smoke_preset_composes_small_and_trains_in_seconds(tmp_path):
    r = bnexp("run", "experiment=smoke", "--cfg", "job")
    assert r.returncode == 0, r.stderr[-2000:]
    assert re.search(r"^  depth: 2$", r.stdout, re.M) and re.search(r"^  max_steps: 30$", r.stdout, re.M)
    r = bnexp("run", "experiment=smoke", "logger=none", "trainer.progress_bar=false", f"hydra.run.dir={tmp_path}")
    assert r.returncode == 0, r.stderr[-2000:]
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert m["step"] == 30 and m["depth"] == 2 and not m["diverged"]


def _help_groups(text: str) -> dict[str, list[str]]:
    block = text.split("== Configuration groups ==", 1)[1].split("==", 1)[0]
    groups = {}
    for line in block.strip().splitlines():
        name, options = line.split(":", 1)
        groups[name.strip()] = [o.strip() for o in options.split("(")[0].split(",")]
    return groups


def test_help_lists_exactly_the_groups_run_takes():
    r = bnexp("run", "--help")
    assert r.returncode == 0, r.stderr[-2000:]
    listed = _help_groups(r.stdout)
    on_disk = {
        d.name: sorted(p.stem for p in d.glob("*.yaml"))
        for d in CONF.iterdir()
        if d.is_dir() and d.name not in NOT_FOR_RUN and list(d.glob("*.yaml"))
    }
    on_disk["hydra/launcher"] = sorted(p.stem for p in (CONF / "hydra" / "launcher").glob("*.yaml"))
    assert {k: sorted(v) for k, v in listed.items()} == on_disk
    assert "sweep:" not in r.stdout and "schema:" not in r.stdout
    # bnexp.sweep keeps Hydra's own listing, its sweep specs included
    s = bnexp("sweep", "--help")
    assert s.returncode == 0 and "sweep: bias_ablation" in s.stdout and "python -m bnexp.sweep" in s.stdout
