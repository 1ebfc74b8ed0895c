"""DDP plumbing: every rank of a `python -m bnexp.run trainer=ddp ...` job in rank 0's run dir.

Lightning's DDP launcher starts the extra ranks of a node by running this command again (with
LOCAL_RANK set). Its Hydra hook re-passes sys.argv plus hydra.run.dir, which suffices for a single
run but not for `-m`: each child would run the whole multirun again into its own sweep dir
(lightning-hydra-template issue 393). So rank 0 leaves the exact job in the environment the
children inherit, and a child replaces its argv with it: this job's overrides, rank 0's run dir, no
.hydra/ of its own.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

_CHILD_ARGV = "BNEXP_DDP_CHILD_ARGV"
_CONFIG_FLAGS = ("-cp", "--config-path", "-cn", "--config-name", "-cd", "--config-dir")


def is_rank_zero() -> bool:
    """False in a process its launcher started as a DDP rank other than 0.

    Known before any Trainer exists (Hydra's job, the summary line). LOCAL_RANK/NODE_RANK: Lightning's
    launcher and torchrun; RANK: torchrun; SLURM_PROCID: srun with one task per device.
    """
    env = os.environ
    if "RANK" in env:
        return int(env["RANK"]) == 0
    if int(env.get("SLURM_NTASKS", "1")) > 1 and int(env.get("SLURM_PROCID", "0")) != 0:
        return False
    return int(env.get("LOCAL_RANK", 0)) == 0 and int(env.get("NODE_RANK", 0)) == 0


def _share_run_dir_with_ranks(out: Path) -> None:
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not is_rank_zero():
        return
    hc = HydraConfig.get()
    flags, argv = [], sys.argv[1:]
    for i, a in enumerate(argv):  # keep --config-name/-cp/... (and their values); drop -m and sweeps
        if a.split("=")[0] in _CONFIG_FLAGS:
            flags += [a] if "=" in a else argv[i : i + 2]
    rundir = str(out.resolve()).replace("\\", "\\\\").replace('"', '\\"')
    child = [*flags, *hc.overrides.task, f'hydra.run.dir="{rundir}"', "hydra.output_subdir=null", "hydra.job.name=rank"]
    os.environ[_CHILD_ARGV] = json.dumps(child)


@contextlib.contextmanager
def ddp_job(trainer: Any, out: Path) -> Iterator[None]:
    """One DDP job per process group: Lightning's launcher leaves LOCAL_RANK etc. in rank 0's environment
    and the process group up, so a second job in the same process (the next `-m` job) would take itself
    for an externally launched rank and talk to the exited children. Undo both when the job ends."""
    if trainer.world_size <= 1:
        yield
        return
    keys = ("LOCAL_RANK", "NODE_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", _CHILD_ARGV)
    saved = {k: os.environ.get(k) for k in keys}
    _share_run_dir_with_ranks(out)
    try:
        yield
    finally:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def adopt_rank0_argv() -> None:
    """In a DDP child started by Lightning's launcher: run rank 0's job, not its command line."""
    child = os.environ.get(_CHILD_ARGV)
    if child and os.environ.get("LOCAL_RANK", "0") != "0":
        sys.argv = [sys.argv[0], *json.loads(child)]
