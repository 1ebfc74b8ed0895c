"""A study's report files: summary.json, trials.csv, curves.csv, the figures and report.md (what
bnexp.analysis.stability finds, written out). `write_report` is the one writer; `load_trials_csv` reads a saved
table back, typed, with its learning curves.

trials.csv has one row per trial and no `val_history` column: a JSON list of a dozen dicts in one cell makes
the table unreadable in a spreadsheet and in `column -t`. The curves go to curves.csv instead, long format
(one row per trial and validation, keyed by the trial's `number`), which plots and filters directly.
Every file is written through a temp file and a rename (bnexp.files).
"""

from __future__ import annotations

import csv
import io
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnexp import record
from bnexp.analysis.bn_gain import compare
from bnexp.analysis.edges import add_widths, width_txt
from bnexp.analysis.figures import colour_of_label, write_figures
from bnexp.analysis.figures.edges import EDGES_CAPTION, plot_edges
from bnexp.analysis.rule import check_judged_whole
from bnexp.analysis.stability import (
    DEFAULT_VARIANT_KEYS,
    RESULT_STATES,
    STATISTICS,
    StabilityRule,
    analyse,
    is_stable,
    variant_key,
    variant_label,
)
from bnexp.analysis.stability import state_of as _state
from bnexp.files import staged, write_json_atomic, write_text_atomic
from bnexp.record import as_bool as _as_bool

# Known columns get a fixed type on reading back, so e.g. bias "true" stays a string.
_COLUMN_TYPES: dict[str, type] = {
    "number": int,
    "state": str,
    "key": str,
    "bn": str,
    "bias": str,
    "depth": int,
    "lr": float,
    "seed": int,
    "diverged": bool,
    **{k: float for k in record.RESULT_KEYS},
    record.STEP: int,
    record.DIVERGED_STEP: int,
    "overrides": str,
    "stable": bool,
}
_INT_RE = re.compile(r"^[+-]?\d+$")


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, (bool, np.bool_)):
        return "True" if v else "False"
    if isinstance(v, np.generic):
        v = v.item()
    if isinstance(v, float):
        return repr(v)  # exact round trip; nan/inf become "nan"/"inf"
    if isinstance(v, (list, dict, tuple)):
        return json.dumps(v)
    return str(v)


def _parse_cell(text: str, typ: type | None) -> Any:
    if typ is str:
        return text  # an empty string stays a string for known text columns
    if text == "":
        return None
    if typ is bool or (typ is None and text in ("True", "False")):
        return _as_bool(text)
    if typ is int:
        if _INT_RE.match(text):
            return int(text)
        f = float(text)  # "3.0" from a float-typed writer; nan stays a float
        return int(f) if f.is_integer() else f
    if typ is float:
        return float(text)
    # unknown column: int, then float, else the text
    if _INT_RE.match(text):
        return int(text)
    try:
        return float(text)
    except ValueError:
        return text


def _write_csv(path: str | Path, columns: list[str], rows: Sequence[Sequence[str]]) -> None:
    buf = io.StringIO(newline="")
    w = csv.writer(buf)
    w.writerow(columns)
    w.writerows(rows)
    write_text_atomic(path, buf.getvalue())


def write_trials_csv(path: str | Path, trials: Sequence[dict]) -> list[str]:
    """One row per trial; columns = the union of keys in first-seen order, `val_history` left out (it is
    curves.csv's). Returns columns."""
    columns: list[str] = []
    for rec in trials:
        for k in rec:
            if k not in columns and k != "val_history":
                columns.append(k)
    _write_csv(path, columns, [[_cell(rec.get(k)) for k in columns] for rec in trials])
    return columns


_CURVE_ID = ("number", "variant", "lr", "seed", "step")


def write_curves_csv(path: str | Path, trials: Sequence[dict], variant_keys: Sequence[str]) -> int:
    """Every trial's validation history, one row per validation: number, variant, lr, seed, step, then the
    metrics under their metrics.json names (val/acc, val/acc_batchstats, ...). Returns the row count."""
    seen = [k for r in trials for h in r.get("val_history") or [] for k in h if k != "step"]
    order = list(record.CURVE_KEYS)
    metrics = [k for k in order if k in seen] + list(dict.fromkeys(k for k in seen if k not in order))
    rows = []
    for r in trials:
        label = variant_label(variant_key(r, variant_keys), variant_keys)
        for h in r.get("val_history") or []:
            ident = [r.get("number"), label, r.get("lr"), r.get("seed"), h.get("step")]
            rows.append([_cell(x) for x in ident] + [_cell(h.get(k)) for k in metrics])
    _write_csv(path, [*_CURVE_ID, *metrics], rows)
    return len(rows)


def load_trials_csv(path: str | Path) -> list[dict]:
    """Parse a ``trials.csv`` back with types. Empty cells become None (also for keys a trial
    never had), except in known text columns, where they stay ``""``. A curves.csv beside it gives each
    trial back its ``val_history`` (matched by ``number``; only when the numbers are unique)."""
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    rows = [{record.canonical(k): v for k, v in row.items()} for row in rows]  # a table from before one name
    trials = [{k: _parse_cell(v, _COLUMN_TYPES.get(k)) for k, v in row.items()} for row in rows]
    curves = Path(path).with_name("curves.csv")
    numbers = [t.get("number") for t in trials]
    if curves.is_file() and None not in numbers and len(set(numbers)) == len(numbers):
        hist: dict[Any, list[dict]] = {n: [] for n in numbers}
        with open(curves, newline="") as f:
            for row in csv.DictReader(f):
                n = _parse_cell(row["number"], int)
                if n in hist:
                    entry = {"step": _parse_cell(row["step"], int)}
                    entry.update(
                        {record.canonical(k): _parse_cell(v, float) for k, v in row.items() if k not in _CURVE_ID}
                    )
                    hist[n].append(entry)
        for t in trials:
            t["val_history"] = hist[t["number"]]
    return trials


def _json_safe(obj: Any) -> Any:
    """NaN/inf are not JSON: write them as null (json.dump would emit invalid 'NaN')."""
    if isinstance(obj, dict):
        return {str(k): _json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_json_safe(v) for v in obj]
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def _fmt(x: Any, spec: str = ".2f") -> str:
    return "–" if x is None else format(x, spec)


def _range(view: dict) -> str:
    lo, hi = view.get("stable_lr_min"), view.get("stable_lr_max")
    return f"{lo:.3g} – {hi:.3g}" if lo is not None else "none"


def _per_seed_txt(view: dict, key: str = "width") -> str:
    """Each seed's `width` (or `stable_span`): 's0 1.75, s1 2.00, ...'; '–' for one seed (its own is the
    variant's)."""
    seeds = view.get("per_seed") or []
    if len(seeds) < 2:
        return "–"
    return ", ".join(f"s{s['seed']} {_fmt(s.get(key))}" for s in seeds)


def _lrs_txt(lrs: Sequence[float]) -> str:
    return ", ".join(f"{lr:.3g}" for lr in lrs)


def _statistics_section(summary: dict) -> list[str]:
    """Each variant's stable range judged by population, batch and recalibrated statistics, and one line per
    variant where population and batch statistics differ."""
    pop_m, bat_m = STATISTICS["population"], STATISTICS["batch"]
    lines = [
        "## Population, batch and recalibrated statistics",
        "",
        f"The rule judges `{STATISTICS[summary['rule']['statistics']]}`. Population statistics (`{pop_m}`) is"
        " the net in inference mode, normalising with BN's running averages; batch statistics"
        f" (`{bat_m}`) is the same weights normalising each validation batch with its own statistics."
        "",
        f"Recalibrated statistics (`{STATISTICS['recal']}`) is the final weights with each BN layer's"
        " statistics recomputed over training batches (precise BN): where population statistics fail and it"
        " passes, only BN's running averages lagged. The same rule on each gives (the stable lr range pooled over"
        " seeds; the width, median [range over seeds], and each seed's):",
        "",
        "| variant | population: stable lr range | width | per seed | batch: stable lr range | width | per seed"
        " | recalibrated: stable lr range | width | per seed |",
        "|---|---|---:|---|---|---:|---|---|---:|---|",
    ]
    differ = []
    for v in summary["variants"]:
        views = v.get("by_statistics") or {}
        cells = []
        for stats in STATISTICS:
            view = views.get(stats) or {}
            if not view.get("n_finite") and stats == "recal" and v.get("bn") == "off":
                cells += ["no BN: as population", "–", "–"]  # nothing to recalibrate
            elif not view.get("n_finite"):
                cells += ["not recorded", "–", "–"]
            else:
                cells += [_range(view), width_txt(view), _per_seed_txt(view)]
        lines.append(f"| {v['label']} | " + " | ".join(cells) + " |")
        if v.get("statistics_differ"):
            p, b = views["population"], views["batch"]
            only_b = [lr for lr in b["stable_lrs"] if lr not in p["stable_lrs"]]
            only_p = [lr for lr in p["stable_lrs"] if lr not in b["stable_lrs"]]
            parts = [
                f"- **{v['label']}**: population statistics {_range(p)} (width {width_txt(p)} decades),"
                f" batch statistics {_range(b)} (width {width_txt(b)} decades)"
            ]
            if only_b:
                parts.append(f"stable only by batch statistics at lr {_lrs_txt(only_b)}")
            if only_p:
                parts.append(f"only by population statistics at lr {_lrs_txt(only_p)}")
            differ.append("; ".join(parts) + ".")
    lines.append("")
    if differ:
        lines += [
            "Where the two differ (at an lr stable only by batch statistics the weights classify well with each"
            " batch's own statistics; inference with the running averages is what falls short):",
            "",
            *differ,
        ]
    else:
        lines.append("Both ways give the same stable learning rates for every variant.")
    return [*lines, ""]


def _holes_txt(v: dict) -> str:
    return "none" if not v.get("holes") else f"{len(v['holes'])}: lr {_lrs_txt(v['holes'])}"


def _rule_lines(summary: dict, rule: StabilityRule) -> list[str]:
    lines = [
        f"**Rule.** A trial is stable when it is {rule.describe()}. An lr is stable when at least"
        f" {rule.seed_quorum:g} of its seeds are. A seed's *width* is log10(high / low edge) of its unbroken"
        " stable range around its best lr, each edge the midpoint of the bracket it lies in (last stable lr,"
        " first unstable one; see Edges); a variant's width is the median over seeds, the range over seeds in"
        " brackets (their spread, not a confidence interval), and a seed with nothing stable counts as 0. The"
        " *stable span* is log10(max/min) of the unbroken run of lrs stable for the quorum of seeds, at the lrs"
        " trained (so about one bracket less than the width); an unstable lr between stable ones is a *hole*,"
        " counted and named, and the span that ignores holes is given apart, labelled as such. Diverged trials"
        " are COMPLETE results that"
        " are never stable; so are PRUNED trials, stopped early by the sweep's pruner as unable to end stable"
        " (sweep.prune; counted per variant); FAIL trials (attempts) are counted apart, with how many a later"
        " attempt of the same point completed.",
        "",
    ]
    if summary.get("rule_note"):
        lines += [f"**Judged by another rule than the study's:** {summary['rule_note']}.", ""]
    return lines


def _variant_table(summary: dict) -> list[str]:
    lines = [
        "| variant | trials | stable | diverged | pruned | failed | width (decades) | per-seed width"
        " | stable lr range (unbroken, pooled) | stable span (decades) | holes | span ignoring holes (decades)"
        " | best lr | best value |",
        "|---|---:|---:|---:|---:|---:|---|---|---|---:|---|---:|---:|---:|",
    ]
    for v in summary["variants"]:
        lines.append(
            f"| {v['label']} | {v['n_trials']} | {v['n_stable']} | {v['n_diverged']} | {v.get('n_pruned', 0)}"
            f" | {_failed_txt(v, short=True)} | {width_txt(v)} | {_per_seed_txt(v)} | {_range(v)}"
            f" | {v['stable_span']:.2f} | {_holes_txt(v)} | {v['span_with_holes']:.2f}"
            f" | {_fmt(v['best_lr'], '.3g')} | {_fmt(v['best_value'], '.4f')} |"
        )
    return lines


def _failed_txt(d: dict, short: bool = False) -> str:
    """FAIL attempts, and how many of them a later attempt of the same point completed (a stopped trial
    retried is no missing result)."""
    n, retried = d["n_failed"], d.get("n_failed_retried") or 0
    if not retried:
        return str(n) if short else f"{n} failed"
    if short:
        return f"{n} ({retried} retried)"
    which = "all" if retried == n else f"{retried} of them"
    return f"{n} failed attempt{'s' if n != 1 else ''}, {which} retried to completion"


def _comparison_lines(summary: dict) -> list[str]:
    if not summary["comparison"]:
        return ["No BN / no-BN pairs in this table."]
    first = summary["comparison"][0]
    axes = list(first)[: list(first).index("bn")]  # every variant key but bn: bias, depth, init_std, ...
    groups = [k for k in ("depth", "bias") if k in axes] + [k for k in axes if k not in ("depth", "bias")]
    lines = [
        "| " + " | ".join([*groups, "bn"]) + " | width | off width | Δ width | holes (bn / off) |",
        "|" + "---|" * (len(groups) + 1) + "---:|---:|---:|---|",
    ]
    for c in summary["comparison"]:
        lines.append(
            "| "
            + " | ".join(str(c.get(k, "–")) for k in [*groups, "bn"])
            + f" | {_fmt(c['width'])} | {_fmt(c['off_width'])}"
            f" | {_fmt(c['delta_width'], '+.2f')} | {c['n_holes']} / {_fmt(c['off_n_holes'], 'd')} |"
        )
    return lines


def _lr_range(spread: dict) -> str:
    if spread.get("median") is None:
        return "–"
    lo, hi = spread["range"]
    rng = f" [{lo:.3g}, {hi:.3g}]" if hi > lo else ""
    return f"{spread['median']:.3g}{rng}" + (" (open: the range goes on past the search)" if spread.get("open") else "")


def _seed_brackets(e: dict) -> str:
    parts = []
    for seed, s in (e.get("per_seed") or {}).items():
        if not s.get("low"):
            parts.append(f"s{seed}: nothing stable")
            continue
        b = [f"[{x[0]:.3g}, {x[1]:.3g}]" if x[1] is not None else f"[{x[0]:.3g}, open]" for x in (s["low"], s["high"])]
        past = [x for side in ("low", "high") for x in (s.get("stable_past") or {}).get(side) or []]
        again = f", stable again at {', '.join(f'{x:.3g}' for x in sorted(past))}" if past else ""
        parts.append(f"s{seed}: low {b[0]}, high {b[1]}{again}")
    return "; ".join(parts)


def _edges_section(summary: dict) -> list[str]:
    """Where each variant's stable range begins and ends: per-seed brackets, the median over seeds with the
    range over seeds, the resolution reached and the trials it took."""
    lines = [
        "## Edges",
        "",
        "Each seed's edges bracket its unbroken stable range around its best lr: the low edge lies between the"
        " range's first stable lr and the unstable lr below it, the high edge between its last stable lr and the"
        " unstable lr above it. An edge is the bracket's geometric midpoint; the width is log10(high / low)."
        " Across seeds: the median, and in brackets the range over seeds (their spread, not a confidence"
        " interval). *Resolution* is the widest bracket: how exactly the edges are known. *Stable again at*:"
        " a seed stable at an lr past an unstable one outside its range, where the edge is a chaotic band.",
        "",
        "| variant | low edge | high edge | width (decades) | resolution (decades) | trials | seeds stable"
        " | per seed |",
        "|---|---|---|---|---:|---:|---:|---|",
    ]
    for v in summary["variants"]:
        e = v.get("edges") or {}
        wtxt = width_txt(v)  # the variant's width is its edges' (edges.add_widths): one number, one text
        res = "–" if e.get("resolution") is None else f"{e['resolution']:.2f}"
        lines.append(
            f"| {v['label']} | {_lr_range(e.get('low') or {})} | {_lr_range(e.get('high') or {})} | {wtxt} | {res}"
            f" | {e.get('n_trials', 0)} | {e.get('n_seeds_stable', 0)} / {e.get('n_seeds', 0)} | {_seed_brackets(e)} |"
        )
    return [*lines, ""]


def _markdown(summary: dict, rule: StabilityRule, commands: Sequence[str], figures: Sequence[tuple[str, str]]) -> str:
    several = any(len(v.get("per_seed") or []) > 1 for v in summary["variants"])
    lines = [
        f"# Stability report: {summary['study']}",
        "",
        *_rule_lines(summary, rule),
        f"Trials: {summary['n_trials']} complete, {_failed_txt(summary)} ({summary['n_records']} records).",
        "",
        "## Variants",
        "",
        *_variant_table(summary),
    ]
    if several:
        lines += [
            "",
            "*Per-seed width* judges each seed's own trials alone: the bracketed range of the width is these"
            " seeds' lowest and highest, the seed-to-seed variation, not a confidence interval (with a handful"
            " of seeds no interval would mean much). The stable span pools the seeds by the quorum at the lrs"
            " trained.",
        ]
    lines += ["", *_edges_section(summary), *_statistics_section(summary), "## BN vs no BN", ""]
    lines += _comparison_lines(summary)
    lines += ["", "## Figures", ""]
    if not any(v["n_diverged"] for v in summary["variants"]):  # plots.write_figures drew no divergence figure
        lines += ["No trial diverged.", ""]
    for f, caption in figures:
        lines += [f"![{f.rsplit('.', 1)[0]}]({f})", "", f"*{caption}*", ""]
    lines += ["## Reproduce", "", "```bash", *commands, "```", ""]
    return "\n".join(lines)


def write_report(
    out_dir: str | Path,
    study: str,
    trials: list[dict],
    rule: StabilityRule,
    commands: list[str],
    variant_keys: Sequence[str] = DEFAULT_VARIANT_KEYS,
    *,
    recorded_rule: StabilityRule | None = None,
    **figure_kw: Any,
) -> dict:
    """Write summary.json, trials.csv, curves.csv, the figures (bnexp.analysis.figures.write_figures) and
    report.md into `out_dir`, judged by `rule`. `recorded_rule`: the rule the study was created with; where it
    differs, summary.json and report.md say so (`rule_note`).

    Returns the summary dict (as written to summary.json); its `figures` lists each figure with its caption.
    """
    check_judged_whole(trials, rule)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    variant_keys = tuple(variant_keys)
    variants = analyse(trials, rule, variant_keys)
    add_widths(variants, trials, rule, variant_keys)  # each edge per seed; the width, median and range over seeds
    comparison = compare(variants, variant_keys)
    note = rule.differences(recorded_rule) if recorded_rule is not None else ""

    # Per-trial stable column; relative mode needs each trial's variant best.
    bests = {variant_key(v, variant_keys): v["variant_best"] for v in variants}
    rows = [{**r, "stable": is_stable(r, rule, bests.get(variant_key(r, variant_keys)))} for r in trials]
    for row in rows:  # what each trial cost, a column even where a study predates it (empty: not recorded)
        for k in (record.TRAIN_S, record.RECAL_S, record.CPU_S):
            row.setdefault(k, None)
    with staged():  # the report's files land together: a full disk leaves the previous report whole
        write_trials_csv(out / "trials.csv", rows)
        files = ["summary.json", "trials.csv"]
        if write_curves_csv(out / "curves.csv", trials, variant_keys):
            files.append("curves.csv")
        else:
            (out / "curves.csv").unlink(missing_ok=True)  # a table without curves leaves no stale one behind

        figures = write_figures(out, study, variants, trials, rule, variant_keys, **figure_kw)
        edge_fig = plot_edges(out, study, variants, colour_of_label(variants, variant_keys), **figure_kw)
        if edge_fig:
            figures.append((edge_fig, EDGES_CAPTION))
        files += [f for f, _ in figures] + ["report.md"]
        for stem in ("divergence", "stats_lag", "heatmap", "edges"):  # not drawn this time: no stale one stays
            stale = out / f"{stem}.{figure_kw.get('fmt', 'png')}"
            if stale.name not in files:
                stale.unlink(missing_ok=True)
        for stale in out.glob(f"curves-*.{figure_kw.get('fmt', 'png')}"):  # a variant renamed or gone
            if stale.name not in files:
                stale.unlink()

        summary = _json_safe(
            {
                "study": study,
                "rule": rule.settings(),
                "rule_describe": rule.describe(),
                "recorded_rule": recorded_rule.settings() if recorded_rule is not None else None,
                "rule_note": note or None,
                "statistics": dict(STATISTICS),
                "variant_keys": list(variant_keys),
                "n_records": len(trials),
                "n_trials": sum(_state(r) in RESULT_STATES for r in trials),
                "n_pruned": sum(_state(r) == "PRUNED" for r in trials),
                "n_failed": sum(_state(r) == "FAIL" for r in trials),
                "n_failed_retried": sum(v.get("n_failed_retried", 0) for v in variants),
                "variants": variants,
                "comparison": comparison,
                "figures": [{"file": f, "caption": c} for f, c in figures],
                "files": files,
            }
        )
        write_json_atomic(out / "summary.json", summary)
        write_text_atomic(out / "report.md", _markdown(summary, rule, commands, figures))
    return summary
