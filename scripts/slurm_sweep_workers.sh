#!/usr/bin/env bash
# N sweep workers on a SLURM cluster: one job array whose tasks all run the same `python -m bnexp.sweep`
# command against one Optuna storage (PostgreSQL). Optuna hands each waiting design point to exactly one
# worker; a worker that dies has its trial failed by the heartbeat check and the point retried by another.
#
# Usage, on the login node from the repo root (venv active, PostgreSQL reachable from the compute nodes):
#   export BNEXP_STORAGE=postgresql://user:pw@dbhost:5432/bnexp
#   scripts/slurm_sweep_workers.sh 8 sweep=lr_stability sweep.lr.points=24          # 8 workers
#   scripts/slurm_sweep_workers.sh 4 sweep=depth_ablation sweep.out_dir=/shared/sw   # any sweep/training overrides
#   BNEXP_SBATCH="--partition=gpu --account=me --time=08:00:00" scripts/slurm_sweep_workers.sh 8 ...
# It
#   1. creates the study once, here, before any task starts (--create-only: every point enqueued once);
#   2. submits the array: task i runs   python -m bnexp.sweep ARGS --no-report   (storage from $BNEXP_STORAGE,
#      which sbatch exports to the tasks: the URL and its password never appear on a command line, in ps,
#      scontrol or sacct)
#      (the same command everywhere; what a task trains is whatever point it pops next; one task per array
#      element: `srun -n N` in one job would make Lightning take the N workers for DDP ranks);
#   3. submits one report job after the array (afterany): the same command with --report-only.
# Progress meanwhile, from anywhere: python -m bnexp.report --study-name NAME --out DIR   (storage: $BNEXP_STORAGE)
# More workers later: run this again with the same ARGS (the study exists: nothing is enqueued twice).
#
# Faults: a task killed outright (node failure, OOM-killer, scancel -s KILL) stops heartbeating; after
# sweep.grace seconds another worker fails its trial and enqueues the point again (sweep.retries times).
# Preemption and the time limit send SIGTERM (here 120 s early): the worker fails the trial in flight with
# reason "interrupted", exits 130, and --requeue starts it again. A CUDA OOM fails that trial only (reason
# "CUDA out of memory: ..."); a diverged trial is a result. sweep.out_dir must be on a shared filesystem
# if you want the per-trial dirs in one place; the study itself lives only in the storage.
#
#SBATCH --job-name=bnexp-sweep
#SBATCH --nodes=1
#SBATCH --ntasks=1
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=4
#SBATCH --mem=16G
#SBATCH --time=04:00:00
#SBATCH --signal=B:TERM@120
#SBATCH --requeue
#SBATCH --output=slurm-%x-%A_%a.out
set -euo pipefail

if [ -n "${SLURM_JOB_ID:-}" ]; then
  # ---- inside SLURM: a worker (array task) or the final report job. exec: python itself gets SIGTERM.
  if [ "${BNEXP_ROLE:-worker}" = report ]; then
    exec python -m bnexp.sweep "$@" --report-only
  fi
  exec python -m bnexp.sweep "$@" --no-report
fi

# ---- on the login node: create, then submit
N="${1:-}"
if ! [[ "$N" =~ ^[1-9][0-9]*$ ]]; then
  echo "usage: BNEXP_STORAGE=postgresql://... $0 N_WORKERS [sweep=NAME] [sweep.KEY=VALUE ...] [KEY=VALUE ...]" >&2
  exit 2
fi
shift
if [ -z "${BNEXP_STORAGE:-}" ]; then
  echo "$0: set BNEXP_STORAGE to one Optuna storage every node reaches, e.g. postgresql://user:pw@dbhost/bnexp" >&2
  exit 2
fi
export BNEXP_STORAGE  # the workers read it from the environment (sbatch's default --export=ALL passes it on)
ARGS=("$@" "sweep.progress=false")
python -m bnexp.sweep "${ARGS[@]}" --create-only   # bad input fails here, before anything is queued
# shellcheck disable=SC2086  # BNEXP_SBATCH is a list of sbatch options
ARRAY=$(sbatch --parsable ${BNEXP_SBATCH:-} --array="0-$((N - 1))" "$0" "${ARGS[@]}")
# shellcheck disable=SC2086
REPORT=$(sbatch --parsable ${BNEXP_SBATCH:-} --dependency="afterany:${ARRAY%%;*}" --time=00:30:00 \
  --job-name=bnexp-sweep-report --export=ALL,BNEXP_ROLE=report "$0" "${ARGS[@]}")
echo "submitted $N workers as array job $ARRAY; report job $REPORT runs after them"
