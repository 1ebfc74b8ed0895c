"""The pruner's evidence, from the committed studies' curves: where late starters leave chance, how many
committed trials the rule would have stopped that ended stable (false stops: must be 0), and the training
time it would have saved per study.

    python bench/prune_evidence.py                      # every study under docs/results
    python bench/prune_evidence.py --after 500          # another first pruning step (of 800)
    python bench/prune_evidence.py --json out.json      # the figures as JSON too
    python bench/prune_evidence.py --prefixes           # every curve cut at every validation step, as a shorter run

A committed trial is "stopped" when at some validation step s >= after (s < its last step) both views (the
population and batch statistics) score below the pruner's chance level (bnexp.sweep.pruning.CHANCE_ACC);
after: --after, else the rule's first step for its study's trainer.max_steps (bnexp.sweep.pruning.default_after).
Saved time: the trial's wall time x (last step - s) / last step (training and validation alike; the
evaluations after training are not counted, so the saving is a lower bound).

--prefixes judges shorter runs: a run of T steps is the first T steps of a committed one (a constant lr, the
same batches), so each curve cut at each of its validation steps T is a run of T steps, pruned from the
rule's first step for T (bnexp.sweep.pruning.default_after) and judged stable by its val/acc at T. It counts
the false stops of the rule and of the share of the run alone (3/4 of T, no step floor), per T.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnexp.sweep.pruning import AFTER_FRACTION, CHANCE_ACC, default_after  # noqa: E402


def load(root: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    curves, trials = [], []
    for d in sorted(p for p in root.iterdir() if (p / "curves.csv").is_file() and (p / "trials.csv").is_file()):
        curves.append(pd.read_csv(d / "curves.csv").assign(study=d.name))
        trials.append(pd.read_csv(d / "trials.csv").assign(study=d.name))
    return pd.concat(curves, ignore_index=True), pd.concat(trials, ignore_index=True)


def evidence(curves: pd.DataFrame, trials: pd.DataFrame, after: int | None, threshold: float) -> dict:
    c = curves.copy()
    c["best"] = c[["val/acc", "val/acc_batchstats"]].max(axis=1)
    c["chance"] = c["best"] < CHANCE_ACC
    t = trials[trials["state"] == "COMPLETE"].set_index(["study", "number"])
    rows = []
    run_steps = c.groupby("study")["step"].max()  # a study's trainer.max_steps (a pruned trial's curve ends early)
    for (study, number), g in c.groupby(["study", "number"]):
        g = g.sort_values("step")
        last = int(g["step"].iloc[-1])
        end = float(g["best"].iloc[-1])
        at_chance = g.loc[g["chance"], "step"]
        steps = g["step"].astype(int).tolist()
        every = min(b - a for a, b in zip(steps, steps[1:], strict=False)) if len(steps) > 1 else steps[0]
        rule_at = default_after(int(run_steps[study]), every)
        stop_at = after if after is not None else (rule_at if rule_at is not None else last + 1)
        stops = g[(g["step"] >= stop_at) & (g["step"] < last) & g["chance"]]["step"]
        rec = t.loc[(study, number)] if (study, number) in t.index else None
        final = float(rec["val/acc"]) if rec is not None and pd.notna(rec["val/acc"]) else float(g["val/acc"].iloc[-1])
        rows.append(
            {
                "study": study,
                "number": number,
                "variant": g["variant"].iloc[0],
                "lr": float(g["lr"].iloc[0]),
                "seed": int(g["seed"].iloc[0]),
                "last_step": last,
                "ended_above_chance": end >= CHANCE_ACC,
                "ended_stable": final >= threshold,
                "last_chance_step": int(at_chance.max()) if len(at_chance) else None,
                "stop_step": int(stops.min()) if len(stops) else None,
                "wall_s": float(rec["wall_s"])
                if rec is not None and "wall_s" in rec and pd.notna(rec["wall_s"])
                else None,
            }
        )
    r = pd.DataFrame(rows)
    stopped = r[r["stop_step"].notna()]
    saved = (stopped["wall_s"] * (stopped["last_step"] - stopped["stop_step"]) / stopped["last_step"]).fillna(0)
    r.loc[stopped.index, "saved_s"] = saved
    late = r[r["ended_above_chance"] & r["last_chance_step"].notna()]
    late_stable = r[r["ended_stable"] & r["last_chance_step"].notna()]
    per_study = []
    for study, g in r.groupby("study"):
        per_study.append(
            {
                "study": study,
                "trials": len(g),
                "stopped": int(g["stop_step"].notna().sum()),
                "false_stops": int((g["stop_step"].notna() & g["ended_stable"]).sum()),
                "stopped_above_chance": int((g["stop_step"].notna() & g["ended_above_chance"]).sum()),
                "wall_s": round(float(g["wall_s"].sum()), 1),
                "saved_s": round(float(g["saved_s"].fillna(0).sum()), 1),
            }
        )
    return {
        "chance_acc": CHANCE_ACC,
        "after": after if after is not None else "the rule's first step for each study's steps",
        "threshold": threshold,
        "n_trials": len(r),
        "latest_chance_step_of_a_trial_ending_above_chance": int(late["last_chance_step"].max()) if len(late) else None,
        "latest_chance_step_of_a_trial_ending_stable": (
            int(late_stable["last_chance_step"].max()) if len(late_stable) else None
        ),
        "false_stops": int((r["stop_step"].notna() & r["ended_stable"]).sum()),
        "stopped_above_chance": int((r["stop_step"].notna() & r["ended_above_chance"]).sum()),
        "stopped": int(r["stop_step"].notna().sum()),
        "per_study": per_study,
    }


def prefixes(curves: pd.DataFrame, threshold: float) -> dict:
    """Every committed curve cut at every validation step T, judged as a run of T steps (module docstring):
    per T, how many such runs there are, how many the rule and the share alone stop, and their false stops
    (stopped, yet val/acc >= `threshold` at T)."""
    c = curves.copy()
    c["best"] = c[["val/acc", "val/acc_batchstats"]].max(axis=1)
    out: dict[int, dict] = {}
    for _, g in c.groupby(["study", "number"]):
        g = g.sort_values("step")
        steps, best, pop = g["step"].astype(int).tolist(), g["best"].tolist(), g["val/acc"].tolist()
        every = min(b - a for a, b in zip(steps, steps[1:], strict=False)) if len(steps) > 1 else steps[0]
        for k, T in enumerate(steps):
            row = out.setdefault(T, {"runs": 0, "stopped": 0, "false_stops": 0, "share_stopped": 0,
                                     "share_false_stops": 0})  # fmt: skip
            row["runs"] += 1
            stable = pop[k] is not None and pop[k] >= threshold
            share = -(-int(AFTER_FRACTION * T) // every) * every  # 3/4 of T on a validation, no step floor
            for name, after in (("", default_after(T, every)), ("share_", share)):
                if after is None:
                    continue
                if any(after <= s < T and b < CHANCE_ACC for s, b in zip(steps[:k], best[:k], strict=True)):
                    row[name + "stopped"] += 1
                    row[name + "false_stops"] += int(stable)
    total = {k: sum(r[k] for r in out.values()) for k in ("runs", "stopped", "false_stops", "share_stopped",
                                                          "share_false_stops")}  # fmt: skip
    return {"threshold": threshold, "by_steps": {str(T): out[T] for T in sorted(out)}, "total": total}


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--results", default=str(REPO / "docs" / "results"), help="a dir of study dirs")
    ap.add_argument("--after", type=int, default=None, help="first step pruned at (default: 3/4 of each trial's)")
    ap.add_argument("--threshold", type=float, default=0.9, help="what 'ended stable' means (final val/acc)")
    ap.add_argument("--json", default=None, help="also write the figures here")
    ap.add_argument("--prefixes", action="store_true", help="judge every curve cut at every validation step")
    a = ap.parse_args(argv)
    if a.prefixes:
        out = prefixes(load(Path(a.results))[0], a.threshold)
        print(f"every committed curve cut at every validation step T, as a run of T steps (stable: val/acc >= "
              f"{a.threshold:g} at T)")  # fmt: skip
        print("| T | runs | stopped by the rule | false stops | stopped by 3/4 of T alone | false stops |")
        print("|---:|---:|---:|---:|---:|---:|")
        for T, r in out["by_steps"].items():
            print(f"| {T} | {r['runs']} | {r['stopped']} | {r['false_stops']} | {r['share_stopped']} | "
                  f"{r['share_false_stops']} |")  # fmt: skip
        t = out["total"]
        print(f"| all | {t['runs']} | {t['stopped']} | {t['false_stops']} | {t['share_stopped']} | "
              f"{t['share_false_stops']} |")  # fmt: skip
        if a.json:
            Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        return out
    out = evidence(*load(Path(a.results)), a.after, a.threshold)
    print(f"{out['n_trials']} committed trials; pruned when both views < {CHANCE_ACC} at a step >= {out['after']}")
    print(f"latest step still at chance: {out['latest_chance_step_of_a_trial_ending_stable']} (a trial ending stable), "
          f"{out['latest_chance_step_of_a_trial_ending_above_chance']} (a trial ending above chance)")  # fmt: skip
    print(f"stopped: {out['stopped']}; of them ended stable (false stops): {out['false_stops']}; "
          f"ended above chance: {out['stopped_above_chance']}")  # fmt: skip
    print("| study | trials | stopped | false stops | trial wall, summed (s) | saved (s) | saved |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for s in out["per_study"]:
        pct = 100 * s["saved_s"] / s["wall_s"] if s["wall_s"] else 0
        print(f"| {s['study']} | {s['trials']} | {s['stopped']} | {s['false_stops']} | {s['wall_s']:.0f} | "
              f"{s['saved_s']:.0f} | {pct:.0f}% |")  # fmt: skip
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
    return out


if __name__ == "__main__":
    main()
