"""The cluster paths without a cluster: Hydra's submitit launcher locally (hydra/launcher=slurm_local, the code
path of hydra/launcher=slurm), the SLURM launcher config as composed, and scripts/slurm_sweep_workers.sh
driven by a stand-in `sbatch` that runs the array tasks as local processes."""

import collections
import json
import os
import stat
import subprocess
import sys

import optuna
import pytest
from helpers.env import REPO, TINY, child_env, compose_cfg

SMALL = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every", "data.limit_train"))]
SMALL += ["trainer.max_steps=10", "trainer.val_every=5", "data.limit_train=512"]


def test_submitit_local_fans_out_one_process_per_job(tmp_path):
    r = subprocess.run(
        [sys.executable, "-m", "bnexp.run", "-m", "hydra/launcher=slurm_local", "model.bn=off,pre", *SMALL],
        cwd=tmp_path,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "Submitit 'local' sweep output dir" in r.stdout + r.stderr
    sweeps = list((tmp_path / "outputs" / "multirun").glob("*/*"))
    assert len(sweeps) == 1, sweeps
    jobs = sorted(p.name for p in sweeps[0].iterdir() if p.is_dir() and not p.name.startswith("."))
    assert jobs == ["0_off-auto-d3-lr2e-03-s0", "1_pre-auto-d3-lr2e-03-s0"]  # one name: dir, W&B name, id
    for j, bn in zip(jobs, ("off", "pre"), strict=True):
        m = json.loads((sweeps[0] / j / "metrics.json").read_text())
        assert m["bn"] == bn and m["step"] == 10
    # each job ran in a process of its own, with submitit's logs and pickled result
    assert len(list((sweeps[0] / ".submitit").glob("*/*_result.pkl"))) == 2


def test_slurm_launcher_config_follows_the_trainer():
    overrides = ["hydra/launcher=slurm", "hydra.launcher.partition=gpu", "trainer=ddp", "trainer.devices=4"]
    cfg = compose_cfg([*overrides, "trainer.num_nodes=2"], return_hydra_config=True)
    launcher = cfg.hydra.launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert launcher.partition == "gpu" and launcher.timeout_min == 60 and launcher.array_parallelism == 32
    # one task per GPU on every node: srun starts the DDP ranks, Lightning's SLURM environment reads them
    assert (launcher.gpus_per_node, launcher.tasks_per_node, launcher.nodes) == (4, 4, 2)


FAKE_SBATCH = """#!/usr/bin/env bash
# stand-in for sbatch: runs the batch script here; array tasks as parallel processes, then waits for them
# (so a later --dependency=afterany job runs after the array, as on SLURM). Prints a job id, as --parsable.
array=""
while [ $# -gt 0 ]; do
  case "$1" in
    --array=*) array="${1#--array=}" ;;
    --export=ALL,*) export "${1#--export=ALL,}" ;;
    --*) ;;
    *) break ;;
  esac
  shift
done
script="$1"; shift
jid=$((1000 + RANDOM % 1000))
echo "$jid $array $*" >> "$FAKE_SLURM_LOG/submissions"
if [ -n "$array" ]; then
  for i in $(seq "${array%-*}" "${array#*-}"); do
    SLURM_JOB_ID=$jid SLURM_ARRAY_JOB_ID=$jid SLURM_ARRAY_TASK_ID=$i bash "$script" "$@" \
      > "$FAKE_SLURM_LOG/task$i.log" 2>&1 &
  done
  wait
else
  SLURM_JOB_ID=$jid bash "$script" "$@" > "$FAKE_SLURM_LOG/report.log" 2>&1
fi
echo "$jid"
"""


@pytest.mark.slow
def test_slurm_sweep_workers_script(tmp_path):
    bin_dir, logs, out = tmp_path / "bin", tmp_path / "slurm", tmp_path / "sw"
    bin_dir.mkdir(), logs.mkdir()
    (bin_dir / "sbatch").write_text(FAKE_SBATCH)
    (bin_dir / "sbatch").chmod(stat.S_IRWXU)
    storage = f"sqlite:///{tmp_path}/study.db"
    env = {
        **child_env(),
        "PATH": f"{bin_dir}:{os.path.dirname(sys.executable)}:{os.environ['PATH']}",
        "BNEXP_STORAGE": storage,
        "FAKE_SLURM_LOG": str(logs),
    }
    args = ["sweep=lr_stability", "sweep.name=slurm", f"sweep.out_dir={out}", "sweep.grid.model.bn=[off,pre]"]
    args += ["sweep.lr.points=2", "sweep.seeds=[0]", "sweep.jobs=1", "sweep.lr.low=1e-3", "sweep.lr.high=1e-2", *SMALL]
    r = subprocess.run(
        ["bash", str(REPO / "scripts/slurm_sweep_workers.sh"), "2", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    assert "submitted 2 workers as array job" in r.stdout
    subs = (logs / "submissions").read_text().splitlines()
    assert len(subs) == 2 and " 0-1 " in subs[0]  # the array, then the report job
    study = optuna.load_study(study_name="slurm", storage=storage)
    done = collections.Counter(t.user_attrs["key"] for t in study.get_trials() if t.state.name == "COMPLETE")
    assert len(done) == 4 and set(done.values()) == {1} and len(study.get_trials()) == 4
    workers = {t.user_attrs["worker"].split(" slurm:")[1] for t in study.get_trials()}
    assert workers <= {f"{subs[0].split()[0]}_0", f"{subs[0].split()[0]}_1"}  # the array tasks did the work
    assert json.loads((out / "summary.json").read_text())["n_trials"] == 4  # the report job ran after them
    # bad input stops on the login node, before anything is submitted
    r = subprocess.run(
        ["bash", str(REPO / "scripts/slurm_sweep_workers.sh"), "2", *args, "sweep.lr.low=1"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2 and "bnexp: error: sweep.lr.low=1.0 must be <" in r.stderr
    assert len((logs / "submissions").read_text().splitlines()) == 2
