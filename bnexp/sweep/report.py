"""`python -m bnexp.report`: rebuild a study's report from what it stored (nothing is trained).

    python -m bnexp.report outputs/sweeps/lr_stability                 # a sweep's output dir (its sweep.json)
    python -m bnexp.report docs/results/lr_stability_d19 --out X       # a saved report (its trials.csv)
    python -m bnexp.report --storage URL --study-name NAME [--out DIR]  # any study in any storage
    python -m bnexp.report --trials trials.csv --out DIR               # any saved table
    python -m bnexp.report DIR --threshold 0.3 --out X                 # re-judged by another rule
    python -m bnexp.report DIR --threshold 0.3 --in-place              # ... replacing DIR's own report

The rule is a report-time choice: every `--threshold/--mode/--epsilon/--seed-quorum/--last-k/--statistics`
given replaces that setting of the rule the study was created with (the rest are kept), and the report says
both in one line (`judged by threshold 0.3; the study was created with 0.9`), in report.md, summary.json and
on stdout. A re-judgement writes to `--out`; it replaces DIR's own files only with `--in-place`, and the rule
the study was created with stays recorded as its rule (summary.json's `recorded_rule`): the next plain
`report DIR` judges by it again. Flags follow Optuna's own CLI; the storage URL may come from `$BNEXP_STORAGE`.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from bnexp import sweep_file
from bnexp.cli import ConfigError, check_writable_dir, guard
from bnexp.names import BASE_AXES
from bnexp.sweep.locate import add_rule_args, add_study_args, flag, rule_flags, storage_and_study


def _rejudged(recorded: Any, a: argparse.Namespace) -> Any:
    """The recorded rule with each rule flag given on the command line in its place."""
    from bnexp.analysis.stability import StabilityRule

    return StabilityRule.of({**recorded.settings(), **rule_flags(a)}, flag)


def _flags_txt(a: argparse.Namespace) -> str:
    return "".join(f" {flag(k, v)}" for k, v in rule_flags(a).items())


def _from_storage(url: str, study_name: str, out: Path, a: argparse.Namespace) -> dict:
    from bnexp.sweep.records import build_report, recorded_spec, rule_of
    from bnexp.sweep.storage import load_study

    study = load_study(url, study_name)
    rule = _rejudged(rule_of(recorded_spec(study)["sweep"]), a)
    if a.sweep_dir:  # the sweep that made the study (sweep.json records it), then this command as typed
        made = sweep_file.read(a.sweep_dir).command
        out_txt = f" --out {a.out}" if a.out else " --in-place" if a.in_place else ""
        this = f"python -m bnexp.report {a.sweep_dir}{out_txt}{_flags_txt(a)}"
        cmds = [*([made] if isinstance(made, str) else []), this]
    else:
        cmds = [f"python -m bnexp.report --storage $BNEXP_STORAGE --study-name {study_name} --out {out}{_flags_txt(a)}"]
    summary = build_report(study, out, cmds, rule, **_figure_kw(a))
    _say_unfinished(study, a.sweep_dir or f"--storage ... --study-name {study_name}")
    return summary


def _say_unfinished(study: Any, where: str) -> None:
    """A study still running: the report holds the trials finished so far; say what it does not hold."""
    from optuna.trial import TrialState

    n = {s: len(study.get_trials(deepcopy=False, states=(s,))) for s in (TrialState.RUNNING, TrialState.WAITING)}
    if any(n.values()):
        print(
            f"bnexp: the study is not finished: {n[TrialState.RUNNING]} running, {n[TrialState.WAITING]} waiting; "
            f"this report holds the trials finished so far (python -m bnexp.status {where})",
            file=sys.stderr,
        )


def _saved(path: Path) -> dict:
    """A saved report's summary.json beside its trials.csv: the study's name, rule and variant keys."""
    return _json(path.with_name("summary.json"))


def _json(f: Path) -> dict:
    """A JSON file bnexp wrote; {} when missing or unreadable (a report then does without what it holds)."""
    try:
        return json.loads(f.read_text()) if f.is_file() else {}
    except (ValueError, UnicodeDecodeError):
        return {}


def _from_csv(path: Path, out: Path, a: argparse.Namespace) -> dict:
    from bnexp.analysis.report import write_report
    from bnexp.analysis.stability import StabilityRule

    if not path.is_file():
        raise ConfigError(f"{path} not found; give a trials.csv written by a sweep's report")
    saved = _saved(path)
    # the study's own rule: a report re-judged in place keeps it as recorded_rule (its `rule` is the re-judgement)
    own = saved.get("recorded_rule") or saved.get("rule")
    recorded = StabilityRule.of(own, flag) if isinstance(own, dict) else StabilityRule()
    rule = _rejudged(recorded, a)
    keys = tuple(a.variant_keys.split(",")) if a.variant_keys else tuple(saved.get("variant_keys") or BASE_AXES)
    trials = _read_trials(path, keys, rule.metric)
    for t in trials:
        t.pop("stable", None)  # recomputed under the (possibly new) rule
    study = a.study_name or saved.get("study") or path.parent.name or "study"
    cmd = f"python -m bnexp.report --trials {path} --out {out}{_flags_txt(a)}"
    return write_report(out, study, trials, rule, [cmd], keys, recorded_rule=recorded, **_figure_kw(a))


def _read_trials(path: Path, keys: tuple[str, ...], metric: str) -> list[dict]:
    """A trials.csv a report wrote, typed; a non-UTF-8 file, a foreign CSV or --variant-keys naming no column
    is one line naming the fix, never a report of variants called "None-None-dNone"."""
    import csv

    from bnexp.analysis.report import load_trials_csv
    from bnexp.cli import one_line

    try:
        bad = _bad_cell(path)  # a hand-edited table: the first cell that is not of its column's kind, by row
        if bad:
            raise ConfigError(bad)
        trials = load_trials_csv(path)
    except (UnicodeDecodeError, csv.Error) as e:
        raise ConfigError(f"{path} is not a trials.csv ({one_line(e)[:100]}); give one a report wrote") from None
    except ValueError:  # a cell that is not of its column's type (a hand-edited table): name it
        raise ConfigError(_bad_cell(path) or f"{path} holds a cell that is not of its column's type") from None
    have = set(trials[0]) if trials else set()
    missing = [k for k in ("lr", "state", metric, *keys) if k not in have]
    if missing:
        raise ConfigError(
            f"{path} has no column {', '.join(missing)} (it has: {', '.join(sorted(have))[:200] or 'no rows'}); "
            "give a trials.csv a sweep's report wrote, and --variant-keys from its columns (default bn,bias,depth)"
        )
    for row, t in enumerate(trials, start=2):  # row 1 is the header, as a spreadsheet numbers them
        problem = _bad_trial(t)
        if problem:
            raise ConfigError(f"{path} row {row}: {problem}; fix the cell, or delete the row")
    return trials


STATES = ("COMPLETE", "FAIL", "RUNNING", "WAITING", "PRUNED")  # Optuna's trial states, as a report writes them


def _bad_cell(path: Path) -> str | None:
    """The first row of `path` with more or fewer cells than the header, or cell that does not parse as its
    column's type (a number, a whole number, True/False), as one line; None: none found."""
    import csv

    from bnexp.record import RESULT_KEYS, canonical

    ints, floats = (
        {"number", "depth", "seed", "step", "diverged_step"},
        {"lr", *RESULT_KEYS} - {"step", "diverged_step"},
    )
    bools = {"diverged", "stable"}
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        for row, cells in enumerate(reader, start=2):
            if None in cells or None in cells.values():  # DictReader: extra cells under None, missing ones None
                more, n = None in cells, len(reader.fieldnames or [])
                return f"{path} row {row} has {'more' if more else 'fewer'} cells than its header's {n}; fix the row"
            for k, v in cells.items():
                k = canonical(k or "")
                if k in bools and v.strip().lower() not in ("", "true", "false", "1", "0"):
                    return f"{path} row {row}: {k}={v!r} is not True or False; fix the cell, or delete the row"
                if v in ("", None) or (k not in ints and k not in floats):
                    continue
                try:
                    float(v)
                except ValueError:
                    kind = "a whole number" if k in ints else "a number"
                    why = f"{k}={v!r} is not {kind}"
                    return f"{path} row {row}: {why}; fix the cell (empty: not measured), or delete the row"
    return None


def _bad_trial(t: dict) -> str | None:
    """Why a typed trials.csv row cannot be a trial (an lr that is no learning rate, an accuracy outside
    [0, 1], an unknown state), else None. An empty result cell is a result not measured, and allowed."""
    import math

    from bnexp.record import RESULT_KEYS

    lr = t.get("lr")
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not math.isfinite(lr) or lr <= 0:
        return f"lr={'(empty)' if lr is None else repr(lr)} is not a learning rate (a finite number > 0)"
    if t.get("state") not in STATES:
        return f"state={t.get('state')!r} is not a trial state ({', '.join(STATES)})"
    for k in RESULT_KEYS:
        v = t.get(k)
        if "/acc" in k and isinstance(v, (int, float)) and not math.isnan(v) and not 0.0 <= v <= 1.0:
            return f"{k}={v!r} is not an accuracy (a fraction in [0, 1])"
    seed = t.get("seed")
    if seed is not None and not (isinstance(seed, int) and seed >= 0):
        return f"seed={seed!r} is not a seed (a whole number >= 0)"
    return None


def _figure_kw(a: argparse.Namespace) -> dict:
    return {"fmt": a.format} if getattr(a, "format", None) else {}


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m bnexp.report", description=__doc__.splitlines()[0])
    add_study_args(ap)
    ap.add_argument("--out", help="where to write the report (default: the sweep dir, or ./report-<study>)")
    ap.add_argument("--trials", help="a trials.csv to rebuild the report from (no storage)")
    ap.add_argument("--variant-keys", help="with --trials: the columns that name a variant (default: bn,bias,depth)")
    ap.add_argument("--format", choices=("png", "svg", "pdf"), help="the figures' format (default: png)")
    ap.add_argument(
        "--in-place", action="store_true", help="with rule flags: replace DIR's own report (default: --out needed)"
    )
    add_rule_args(ap)
    return ap


def _where_rejudged(a: argparse.Namespace) -> None:
    """A re-judgement (a rule flag) writes where asked: --out, or DIR itself only with --in-place."""
    if a.in_place and a.out:
        raise ConfigError("--in-place and --out both say where the report goes; give one")
    if a.in_place and not a.sweep_dir:
        raise ConfigError("--in-place replaces a DIR's report; give the DIR (or --out for a new report)")
    if rule_flags(a) and a.sweep_dir and not a.out and not a.in_place:
        raise ConfigError(
            f"{_flags_txt(a).strip()} re-judges the study; give --out DIR for the re-judged report "
            f"(or --in-place to replace {a.sweep_dir}'s own report, the study's rule kept as recorded)"
        )


def _report(a: argparse.Namespace) -> tuple[dict, Path]:
    _where_rejudged(a)
    saved_dir = a.sweep_dir and not sweep_file.exists(a.sweep_dir)
    if a.trials or (saved_dir and (Path(a.sweep_dir) / "trials.csv").is_file()):
        path = Path(a.trials) if a.trials else Path(a.sweep_dir) / "trials.csv"
        if not a.out and not saved_dir:
            raise ConfigError("--trials needs --out DIR")
        out = Path(a.out or a.sweep_dir)
        check_writable_dir(out, "--out")
        return _from_csv(path, out, a), out
    storage, study = storage_and_study(a.sweep_dir, a.storage, a.study_name)
    out = Path(a.out or a.sweep_dir or f"report-{study}")
    check_writable_dir(out, "--out")  # before the storage is read: a report that cannot be written is not made
    return _from_storage(storage, study, out, a), out


def main(argv: list[str] | None = None) -> None:
    from bnexp.sweep.records import print_summary

    a = parser().parse_args(argv)
    # guard: bad input (a damaged study.db or sweep.json, an --out that cannot be written, a bad rule flag, a full
    # disk while the report is written) is one line and exit status 2; the report's earlier files stay whole
    summary, out = guard(lambda: _report(a), prog="python -m bnexp.report", out_key="--out")
    print_summary(summary, out)
    sys.exit(0)


if __name__ == "__main__":
    main()
