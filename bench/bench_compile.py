"""Compile once, train many: the same sweep through the real command, eager against `trainer.compile=auto`.

    python bench/bench_compile.py                       # CPU: depth 19 bn=pre, 10 lrs x 300 steps, one worker
    python bench/bench_compile.py --points 12 --warm    # + `auto` again on inductor's now warm on-disk cache
    python bench/bench_compile.py --device cuda         # on a GPU (auto = reduce-overhead: CUDA graphs)

Each arm runs `python -m bnexp.sweep sweep=lr_stability sweep.grid.model.bn=[pre] sweep.seeds=[0]
sweep.lr.points=P trainer.max_steps=S sweep.jobs=1 logger=none trainer.compile=MODE` in a subprocess (lrs in
[1e-4, 3e-2]: every trial trains its S steps, none diverges early), with inductor's cache in a fresh dir (cold);
--threads N gives each arm N OpenMP/torch threads, --break-even N lowers auto's threshold to a smaller design.
Per arm: the whole command's wall time and each trial's wall time (metrics.json `wall_s`: build, fit, the
validations both ways, the test and the batch-of-1 test). Reported: the steady-state trial (median of trials
2..P) compiled / eager, the first trial's compile cost (first - steady, compiled), the break-even number of
trials per worker ((first_c - steady_c) / (steady_e - steady_c)), and the same trial as a plain PyTorch loop in
this process (bench/bench_step.py's plain_trial: eager, then compiled twice, on the auto arm's inductor cache),
and ms per plain-loop step eager vs compiled, interleaved over 3 rounds (bench_step.plain_steps).
The arms run in turn (plain eager, sweep eager, sweep auto, plain compiled): on a shared machine, read ratios.
Writes JSON (--out, default bench/results/compile-<device>.json) and prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def sweep_arm(
    mode: str, a: argparse.Namespace, cache: Path, tmp: Path, tag: str, extra: tuple = (), backend: bool = False
) -> dict:
    """One arm: the sweep command in a subprocess (`extra`: more overrides; `backend`: keep
    $BNEXP_COMPILE_BACKEND, else inductor); its whole time, each trial's wall time, what it compiled."""
    out = tmp / tag
    if getattr(a, "break_even", None) is not None and mode == "auto":
        extra = (*extra, f"trainer.compile_break_even_steps={a.break_even}")
    cmd = [
        sys.executable, "-m", "bnexp.sweep", "sweep=lr_stability", "sweep.grid.model.bn=[pre]", "sweep.seeds=[0]",
        f"sweep.lr.points={a.points}", "sweep.lr.low=1e-4", "sweep.lr.high=3e-2", f"trainer.max_steps={a.steps}",
        f"model.depth={a.depth}", "sweep.jobs=1", "logger=none", f"trainer.compile={mode}", "sweep.progress=false",
        f"trainer.accelerator={'gpu' if a.device == 'cuda' else 'cpu'}", *extra, f"sweep.out_dir={out}",
    ]  # fmt: skip
    env = {**os.environ, "TORCHINDUCTOR_CACHE_DIR": str(cache), "BNEXP_LOG": "INFO"}
    if getattr(a, "threads", 0):  # a shared machine: OpenMP threads that wait on busy cores cost far more than 1
        env.update(OMP_NUM_THREADS=str(a.threads), MKL_NUM_THREADS=str(a.threads))
    if not backend:
        env.pop("BNEXP_COMPILE_BACKEND", None)
    t = time.perf_counter()
    r = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=a.timeout_s)
    whole = time.perf_counter() - t
    if r.returncode != 0:
        raise SystemExit(f"{tag}: exit {r.returncode}\n{r.stderr[-3000:]}")
    trials = sorted((out / "trials").glob("*/*/metrics.json"), key=lambda p: p.parent.name)
    ms = [json.loads(p.read_text()) for p in trials]
    walls = [m["wall_s"] for m in ms]
    cpus = [m["cpu_s"] for m in ms]
    decided = [ln.split("] ", 1)[-1] for ln in r.stderr.splitlines() if "trainer.compile=auto ->" in ln]
    return {
        "command": " ".join(cmd[1:-1]),
        "whole_s": whole,
        "trial_wall_s": walls,
        "first_s": walls[0],
        "steady_s": statistics.median(walls[1:]),
        "trial_cpu_s": cpus,
        "first_cpu_s": cpus[0],
        "steady_cpu_s": statistics.median(cpus[1:]),
        "compile": sorted({m.get("compile") for m in ms}),
        "new_graphs": [m.get("compile_new_graphs") for m in ms],
        "val_acc": [m["val/acc"] for m in ms],
        "diverged": sum(bool(m["diverged"]) for m in ms),
        "auto_decision": decided[0] if decided else None,
    }


def plain_arm(mode: str, a: argparse.Namespace, times: int) -> list[float]:
    sys.path.insert(0, str(REPO / "bench"))
    from bench_step import plain_trial

    from bnexp.core.data import load_mnist, make_splits

    splits = make_splits(load_mnist())
    out = []
    for _ in range(times):
        c = time.process_time()
        wall = plain_trial(splits, "pre", a.depth, a.device, mode, steps=a.steps)
        out.append((wall, time.process_time() - c))
    return out


def step_ab(a: argparse.Namespace, compiled: str, rounds: int = 3, steps: int = 40) -> dict:
    """ms per training step of the plain loop (bench_step.plain_steps), eager and compiled, interleaved over
    `rounds` (which goes first alternates): a per-step ratio that load swings between arms cannot fake."""
    import statistics as st

    sys.path.insert(0, str(REPO / "bench"))
    from bench_step import plain_steps

    from bnexp.core.data import load_mnist, make_splits

    splits = make_splits(load_mnist())
    ms: dict[str, list[float]] = {"none": [], compiled: []}
    for r in range(rounds):
        for mode in ("none", compiled) if r % 2 == 0 else (compiled, "none"):
            ms[mode].append(1000 * plain_steps(splits, "pre", a.depth, steps, 10 if r == 0 else 5, a.device, mode))
    e, c = st.median(ms["none"]), st.median(ms[compiled])
    return {"eager_ms": e, "compiled_ms": c, "ratio": c / e, "rounds": ms}


def compare(e: dict, c: dict, steps: int) -> dict:
    """Eager arm `e` against compiled arm `c`: the steady-state ratio, the compile cost, the break-even (trials
    of `steps` steps per worker, and steps), the whole command's ratio."""
    gain = e["steady_s"] - c["steady_s"]
    cost = c["first_s"] - c["steady_s"]
    return {
        "steady_ratio": c["steady_s"] / e["steady_s"],
        "steady_cpu_ratio": c["steady_cpu_s"] / e["steady_cpu_s"],
        "compile_cost_s": cost,
        "break_even_trials": cost / gain + 1 if gain > 0 else None,
        "break_even_steps": cost / gain * steps if gain > 0 else None,
        "whole_ratio": c["whole_s"] / e["whole_s"],
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    ap.add_argument("--points", type=int, default=10, help="lrs in the study (trials of the one worker)")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--depth", type=int, default=19)
    ap.add_argument("--warm", action="store_true", help="run `auto` again on the warm inductor cache")
    ap.add_argument("--no-plain", action="store_true", help="leave out the plain-loop arms")
    ap.add_argument("--threads", type=int, default=0, help="OMP/torch threads per arm (0: torch's default)")
    ap.add_argument(
        "--break-even",
        type=int,
        default=None,
        help="trainer.compile_break_even_steps for the auto arm (a design smaller than the break-even: what a "
        "longer sweep would decide, measured on fewer trials)",
    )
    ap.add_argument("--timeout-s", type=float, default=3600)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="bench_compile_"))
    # the plain loop compiles the same graphs as the auto arm: it runs after it on its (then warm) inductor cache
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(tmp / "cache-auto")
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    compiled = "reduce-overhead" if a.device == "cuda" else "default"
    res: dict = {"device": a.device, "points": a.points, "steps": a.steps, "depth": a.depth, "cores": os.cpu_count()}
    res.update(threads=a.threads or None, break_even_override=a.break_even)
    if not a.no_plain:
        res["plain_eager_s"], res["plain_eager_cpu_s"] = plain_arm("none", a, 1)[0]
    res["eager"] = sweep_arm("none", a, tmp / "cache-eager", tmp, "eager")
    res["auto"] = sweep_arm("auto", a, tmp / "cache-auto", tmp, "auto")
    if a.warm:
        res["auto_warm"] = sweep_arm("auto", a, tmp / "cache-auto", tmp, "auto-warm")
    if not a.no_plain:
        (first, _), (second, second_cpu) = plain_arm(compiled, a, 2)
        res.update(plain_compiled_first_s=first, plain_compiled_s=second, plain_compiled_cpu_s=second_cpu)
        res["step_ab"] = step_ab(a, compiled)
    res.update(compare(res["eager"], res["auto"], a.steps))
    out = Path(a.out or REPO / "bench" / "results" / f"compile-{a.device}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1))
    print(table(res))
    print(f"wrote {out}")


def table(r: dict) -> str:
    e, c = r["eager"], r["auto"]
    ew, ec = e["steady_s"], e["steady_cpu_s"]

    def row(name: str, first: float | None, wall: float, cpu: float, whole: float | None) -> str:
        f = "" if first is None else f"{first:.1f} s"
        w = "" if whole is None else f"{whole:.0f} s"
        return f"| {name} | {f} | {wall:.1f} s | {cpu:.1f} s | {w} | {wall / ew:.2f} | {cpu / ec:.2f} |"

    rows = [
        "| arm | first trial | later trials (median) | their CPU time | whole command | wall vs eager | CPU vs eager |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("sweep, `trainer.compile=none`", e["first_s"], ew, ec, e["whole_s"]),
        row(f"sweep, `trainer.compile=auto` ({', '.join(map(str, c['compile']))})", c["first_s"], c["steady_s"],
            c["steady_cpu_s"], c["whole_s"]),
    ]  # fmt: skip
    if "auto_warm" in r:
        w = r["auto_warm"]
        rows.append(
            row("sweep, `auto`, inductor cache warm", w["first_s"], w["steady_s"], w["steady_cpu_s"], w["whole_s"])
        )
    if "plain_eager_s" in r:
        rows.append(row("plain loop, eager", None, r["plain_eager_s"], r["plain_eager_cpu_s"], None))
        if "plain_compiled_s" in r:
            rows.append(row("plain loop, compiled", None, r["plain_compiled_s"], r["plain_compiled_cpu_s"], None))
    if "step_ab" in r:
        ab = r["step_ab"]
        rows.append(
            f"\nplain loop per step, interleaved: eager {ab['eager_ms']:.1f} ms, compiled {ab['compiled_ms']:.1f} ms, "
            f"{ab['ratio']:.2f}x"
        )
    be = r["break_even_trials"]
    rows += [
        "",
        f"compile cost (first - steady, compiled): {r['compile_cost_s']:.1f} s; break-even: "
        + (f"{be:.1f} trials of {r['steps']} steps per worker ({r['break_even_steps']:.0f} steps)" if be else "never")
        + f"; whole command auto / eager: {r['whole_ratio']:.2f}; auto decided: {c['auto_decision']}",
        f"graphs compiled per trial (auto): {c['new_graphs']}; "
        f"diverged trials: {e['diverged']} eager, {c['diverged']} auto",
    ]
    return "\n".join(rows)


if __name__ == "__main__":
    main()
