"""Every core (or every GPU) of one machine: `sweep.jobs=N` local workers on the study's one storage.

The multi-worker path a cluster uses, on one machine: the command's own process is worker 1; it starts N-1
more `python -m bnexp.sweep` processes with the same job's overrides (`sweep.action=work`), each claiming
waiting points until none is left, then writes the report. Threads are split so the workers do not
oversubscribe the cores (OpenMP's threads per worker = cores // N; torch's intra-op threads likewise).

`sweep.jobs=auto` (the default):
  * CUDA devices visible and training on them: one worker per device (each sees only its own, through
    CUDA_VISIBLE_DEVICES; a population packs its K learning rates on that one device);
  * otherwise (CPU): one single-threaded worker per core, at most one per design point and as many as
    memory holds (about 1.5 GiB each). This small net at batch 64 uses a second thread poorly (measured on 2
    cores: 19.6 s per depth-4 trial with 1 thread, 17.5 s with 2), so cores are better spent on trials.
`--max-trials N` caps one worker, so it runs one worker.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
from pathlib import Path

from omegaconf import DictConfig

from bnexp.cli import ConfigError

log = logging.getLogger("bnexp.sweep")
GIB_PER_WORKER = 1.5
CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def _memory_gib() -> float:
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    except (ValueError, OSError, AttributeError):
        return float("inf")


def _gpus(base: DictConfig) -> int:
    if str(base.trainer.accelerator) not in ("auto", "gpu", "cuda"):
        return 0
    try:
        import torch

        return torch.cuda.device_count() if torch.cuda.is_available() else 0
    except Exception:
        return 0


def cores() -> int:
    """The cores this process may use (its CPU affinity: what SLURM or taskset gave it, not the whole node)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def check_jobs(sw: DictConfig) -> None:
    """`sweep.jobs` is auto or a whole number >= 1 (checked before the study is created, and again in plan)."""
    jobs = str(sw.jobs).strip().lower()
    if jobs != "auto" and (not jobs.isdigit() or int(jobs) < 1):
        raise ConfigError(f"sweep.jobs={sw.jobs}: give auto or a whole number >= 1 (e.g. sweep.jobs=2)")


def plan(
    sw: DictConfig,
    base: DictConfig,
    design_size: int,
    n_cores: int | None = None,
    n_gpus: int | None = None,
    memory_gib: float | None = None,
) -> tuple[int, int, int]:
    """(workers, threads per worker, GPUs used) for `sweep.jobs` on this machine (or the one described)."""
    n_cores = cores() if n_cores is None else n_cores
    gpus = _gpus(base) if n_gpus is None else n_gpus
    mem = _memory_gib() if memory_gib is None else memory_gib
    jobs = str(sw.jobs).strip().lower()
    if sw.max_trials is not None:
        n = 1
    elif jobs == "auto":
        if gpus:
            n = gpus
        else:
            n = max(1, min(n_cores, design_size, int(mem // GIB_PER_WORKER) or 1))
    else:
        check_jobs(sw)
        n = int(jobs)
    n = max(1, min(n, design_size))
    return n, max(1, n_cores // n), min(gpus, n)


def config_flags(argv: list[str]) -> list[str]:
    """The config-source flags of a command line (and their values): a child composes from the same files."""
    out: list[str] = []
    for i, a in enumerate(argv):
        if a.split("=", 1)[0] in CONFIG_FLAGS:
            out += [a] if "=" in a else argv[i : i + 2]
    return out


def worker_command(task: list[str], out_dir: Path, study: str) -> list[str]:
    """A worker's command line: the job's overrides, in its study and dir; never the storage URL (it may hold a
    password: the workers get it in $BNEXP_STORAGE, not on a command line that ps shows)."""
    drop = ("sweep.action", "sweep.jobs", "sweep.progress", "sweep.storage")
    keep = [o for o in task if o.split("=", 1)[0].lstrip("+~") not in drop]
    return [
        sys.executable,
        "-m",
        "bnexp.sweep",
        *config_flags(sys.argv[1:]),
        *keep,
        "sweep.action=work",
        "sweep.jobs=1",
        "sweep.progress=false",
        f"sweep.study={study}",
        f"hydra.run.dir={out_dir}",
    ]


def start(
    n: int, threads: int, gpus: int, task: list[str], out_dir: Path, study: str, storage: str
) -> list[subprocess.Popen]:
    """Start workers 2..n (this process is worker 1) on the job's overrides, in its study, dir and storage."""
    argv = worker_command(task, out_dir, study)
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads), "BNEXP_STORAGE": storage}
    procs = []
    for i in range(1, n):
        e = dict(env)
        if gpus:
            e["CUDA_VISIBLE_DEVICES"] = str(i % gpus)
        procs.append(subprocess.Popen(argv, env=e, stdout=subprocess.DEVNULL))
    log.info("%d local workers (%d thread(s) each%s)", n, threads, f", {gpus} GPU(s)" if gpus else "")
    return procs


def pin_this_worker(threads: int) -> None:
    """Worker 1 (this process) gets its share of the cores (on GPUs it trains on cuda:0, the others on their own)."""
    import torch

    torch.set_num_threads(threads)


def stop(procs: list[subprocess.Popen], interrupted: bool) -> list[int]:
    """Wait for the other workers (on an interrupt, pass SIGTERM on first: each fails its trial in flight)."""
    if interrupted:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
    codes = []
    for p in procs:
        try:
            codes.append(p.wait(timeout=None if not interrupted else 300))
        except subprocess.TimeoutExpired:
            p.kill()
            codes.append(p.wait())
    bad = [c for c in codes if c not in (0, 130)]
    if bad:
        log.warning("local workers exited with %s (their failed trials are in the study)", bad)
    return codes
