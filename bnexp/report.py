"""`python -m bnexp.report SWEEP_DIR` or `python -m bnexp.report --storage URL --study NAME [--out DIR]`.

Rebuilds a sweep's report (summary.json, trials.csv, stability.png, report.md) from the Optuna storage
alone: nothing is trained.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from omegaconf import OmegaConf

from bnexp.config import ConfigError


def rebuild(storage: str, study_name: str, out_dir: Path) -> dict:
    import optuna

    from bnexp.sweep import SweepSpec, make_storage, write_study_report

    st = make_storage(storage)
    try:
        study = optuna.load_study(study_name=study_name, storage=st)
    except KeyError:
        names = ", ".join(s.study_name for s in optuna.get_all_study_summaries(st)) or "none"
        raise ConfigError(f"no study {study_name!r} in {storage}; studies there: {names}") from None
    spec = OmegaConf.merge(OmegaConf.structured(SweepSpec), study.user_attrs.get("spec", {"name": study_name}))
    overrides = study.user_attrs.get("train_overrides", [])
    commands = [f"python -m bnexp.report --storage {storage} --study {study_name} --out {out_dir}"]
    if overrides is not None:
        commands.insert(0, "python -m bnexp.sweep sweep=" + study_name + " " + " ".join(overrides))
    out_dir.mkdir(parents=True, exist_ok=True)
    return write_study_report(study, spec, out_dir, commands)


def main(argv: list[str] | None = None) -> None:
    from bnexp.run import fail, one_line
    from bnexp.sweep import _print_summary

    ap = argparse.ArgumentParser(prog="python -m bnexp.report", description=__doc__.splitlines()[0])
    ap.add_argument("sweep_dir", nargs="?", help="a sweep's output dir (holds sweep.json)")
    ap.add_argument("--storage", help="Optuna storage URL (sqlite:///..., postgresql://..., journal:///...)")
    ap.add_argument("--study", help="study name (with --storage)")
    ap.add_argument("--out", help="where to write the report (default: the sweep dir, or ./report-<study>)")
    a = ap.parse_args(argv)
    try:
        if a.sweep_dir:
            meta_path = Path(a.sweep_dir) / "sweep.json"
            if not meta_path.is_file():
                raise ConfigError(f"{meta_path} not found; give a sweep output dir or --storage URL --study NAME")
            meta = json.loads(meta_path.read_text())
            storage, study = a.storage or meta["storage"], a.study or meta["study"]
            out = Path(a.out or a.sweep_dir)
        elif a.storage and a.study:
            storage, study, out = a.storage, a.study, Path(a.out or f"report-{a.study}")
        else:
            raise ConfigError("give a sweep dir, or --storage URL and --study NAME")
        summary = rebuild(storage, study, out)
    except ConfigError as e:
        fail(one_line(e))
    _print_summary(summary, out)
    sys.exit(0)


if __name__ == "__main__":
    main()
