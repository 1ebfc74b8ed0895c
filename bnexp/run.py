"""`python -m bnexp.run [overrides]`: train one configuration (Hydra app) and print its summary line.

    python -m bnexp.run model.bn=pre                       # the seed experiment
    python -m bnexp.run -m model.bn=off,pre,post           # Hydra multirun
    python -m bnexp.run --cfg job                          # every key and its value

The work is `bnexp.core.train.train(cfg)`; this module is only the command: Hydra's entry point, the DDP
child hand-off (bnexp.core.ddp) and the error layer (bnexp.cli: bad input is one line, exit status 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import hydra
from omegaconf import DictConfig

from bnexp.cli import UsageError, disk_full, fail, guard, library_refusal, one_line, stopping
from bnexp.core.alloc import keep_memory
from bnexp.core.config import Config, check_hardware, register_configs, validate
from bnexp.core.ddp import adopt_rank0_argv, is_rank_zero

register_configs()


def default_verdict(metrics: dict) -> dict:
    """A single run's W&B summary says whether it is stable under the default rule (a sweep's trials: its rule)."""
    from bnexp.analysis.stability import StabilityRule, verdict_summary

    return verdict_summary(metrics, StabilityRule())


@hydra.main(version_base="1.3", config_path="conf", config_name="config")
def _hydra_main(cfg: DictConfig) -> dict[str, Any]:
    from hydra.core.hydra_config import HydraConfig

    try:
        check_hardware(validate(cfg))  # this machine has the devices asked for (train() validates again)
        from bnexp.core.train import train  # torch and Lightning load only for a config that passed

        metrics = train(cfg, summarize=default_verdict)
    except UsageError as e:  # here, not in Hydra's job runner: its "Error executing job" line stays unsaid
        _drop_empty_run_dir()
        _summarize_jobs_so_far()
        fail(one_line(e))
    except BaseException as e:
        if "bnexp.core.train" not in sys.modules:  # stopped before training was even imported
            raise
        from bnexp.core.train import CHECKPOINT, is_stop

        if not is_stop(e):
            refused = disk_full(e) or library_refusal(e)  # a full disk; a setting Lightning or W&B refuses here
            if refused is None:
                raise
            _drop_empty_run_dir()
            _summarize_jobs_so_far()
            fail(refused)
        stopping()  # a second SIGTERM/Ctrl-C while the stop is said: ignored, the exit stays 130
        out = Path(HydraConfig.get().runtime.output_dir)
        if (out / CHECKPOINT).is_file() and is_rank_zero():
            again = " ".join([*HydraConfig.get().overrides.task, f"hydra.run.dir={out}"])
            print(f"bnexp: stopped; checkpoint {out / CHECKPOINT}; resume: python -m bnexp.run {again}",
                  file=sys.stderr, flush=True)  # fmt: skip
        sys.exit(130)
    if is_rank_zero():
        from bnexp.core.train import summary_line

        print(summary_line(metrics), flush=True)
    return metrics


def _drop_empty_run_dir() -> None:
    """Bad input found inside the job: remove the run dir Hydra just made if it holds nothing but Hydra's
    own bookkeeping (.hydra/, an empty run.log), so a typo leaves no empty run behind. A dir with
    anything else in it (an earlier run's results) is left alone."""
    import shutil

    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized() or not is_rank_zero():
        return
    out = Path(HydraConfig.get().runtime.output_dir)
    names = {p.name for p in out.iterdir()} if out.is_dir() else {"?"}
    log_file = out / f"{HydraConfig.get().job.name}.log"
    if names <= {".hydra", log_file.name} and (not log_file.exists() or log_file.stat().st_size == 0):
        shutil.rmtree(out, ignore_errors=True)


def _summarize_jobs_so_far() -> None:
    """A -m job that stops the multirun with exit 2 (a rerun refused for a job dir that holds a finished run)
    ends it before Hydra's end-of-multirun callback: write the multirun's summary.csv/md now, so that the
    table lists every job dir there, the ones this command has just trained included, not the last run's."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    if not HydraConfig.initialized() or HydraConfig.get().mode != RunMode.MULTIRUN or not is_rank_zero():
        return
    from bnexp.core.multirun import write_summary

    sweep_dir = Path(HydraConfig.get().sweep.dir)
    try:
        write_summary(sweep_dir)
    except Exception:  # the jobs' own files are the results; the table is a view of them
        pass


def main() -> None:
    keep_memory()  # glibc keeps PyTorch's freed blocks (bnexp.core.alloc): less kernel time per step
    adopt_rank0_argv()
    guard(_hydra_main, schema=Config, prog="python -m bnexp.run")


if __name__ == "__main__":
    main()
