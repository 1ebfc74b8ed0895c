"""The GPU acceptance run, one command (target: under 8 minutes on one H100, --budget-s 450):

    python bench/gpu_check.py --out gpu.json
    python bench/gpu_check.py --device cpu --quick --out /tmp/gpu.json   # the same code, tiny, on the CPU (a test)

Sections, in this order (correctness first, the longest compiles last); each is timed, written to --out as
soon as it ends (an error ends that section only, with its message), and skipped (recorded) when less than its
estimate is left of --budget-s:
  gpu_tests   `pytest -m gpu` in a subprocess, first (before this process holds GPU memory): passed / failed /
              skipped counts and the failures' names
  agreement   on this device: population members vs solo runs (float64, short: relative 1e-6 on the losses)
              and compiled vs eager (float32, short; a population and a solo run: relative 2e-2; with --quick
              the population only, in float64 to 1e-9)
  step        ms per training step, harness (trainer.fit, logger=csv) vs a plain loop, solo net depth 19,
              bn=pre: eager, and --compile (reduce-overhead: CUDA graphs)  [bench/bench_step.py's functions]
  trial       one 800-step depth-19 trial end to end (train(): 8 validations both ways, test, batch-of-1),
              eager and --compile: wall time
  study       32 learning rates of one variant, depth 19, 800 steps: one population (train_population,
              --compile) vs solo trials (train(), --compile), 2 of them timed, the other 30 extrapolated
  population  ms per step and per model step of a K-member population, K = 8, 32, 128, --compile
              [bench/bench_population.py's population_step_s]
  compile     compile once, train many: the same 12-lr depth-19 sweep (300 steps a trial, one worker) through
              the real command, eager and --compile: the steady-state trial ratio, the first trial's compile
              cost, the whole command, the break-even in trials and steps per worker (what trainer.compile=auto's
              GPU threshold, bnexp.core.compiled.BREAK_EVEN_STEPS["cuda"], should be), and the graphs each trial
              compiled (the first trial only)  [bench/bench_compile.py's sweep_arm]
Each section records its peak GPU memory (torch.cuda.max_memory_allocated). `ok` in the JSON: every section ran
and passed its checks. With --quick the sizes are tiny, the compiled arms run in `agreement` only (elsewhere
"compiled" arms are left out: their code is the eager arms' with a mode), the GPU tests are tests/test_gpu.py's
(collecting every test module takes long), and on the CPU torch.compile uses the aot_eager backend (the same
captured graphs without inductor's minutes of code generation; $BNEXP_COMPILE_BACKEND).
"""

from __future__ import annotations

import argparse
import math
import os
import subprocess
import sys
import tempfile
import time
import traceback
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

# seconds each section needs at full size on one H100 (compiles included): skipped when less is left
ESTIMATE_S = {"gpu_tests": 150, "agreement": 60, "step": 60, "trial": 60, "study": 80, "population": 90, "compile": 240}


class Check:
    def __init__(self, a: argparse.Namespace) -> None:
        import torch

        self.a, self.t0 = a, time.perf_counter()
        self.cuda = a.device == "cuda"
        self.tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
        self.record: dict[str, Any] = {
            "args": vars(a),
            "device": a.device,
            "device_name": torch.cuda.get_device_name() if self.cuda else "cpu",
            "torch": torch.__version__,
            "compile": a.compile,
            "compile_backend": os.environ.get("BNEXP_COMPILE_BACKEND", "inductor"),
            "budget_s": a.budget_s,
            "sections": {},
        }

    # ---- plumbing -----------------------------------------------------------------------------------
    def overrides(self, *extra: str) -> list[str]:
        a = self.a
        over = [
            f"model.depth={a.depth}",
            "model.bn=pre",
            f"trainer.max_steps={a.steps}",
            f"trainer.val_every={a.val_every}",
            f"trainer.accelerator={'gpu' if self.cuda else 'cpu'}",
            "trainer.progress_bar=false",
            "logger=csv",
        ]
        if a.quick:
            over += ["data.limit_val=256", "data.limit_test=256", "data.single_n=10", "data.eval_batch_size=256"]
        return [*over, *extra]

    def cfg(self, *extra: str):
        from hydra.core.global_hydra import GlobalHydra

        from bnexp.conf import compose

        GlobalHydra.instance().clear()
        return compose(self.overrides(*extra))

    def modes(self) -> tuple[str, ...]:
        """The arms of step and trial: eager, and compiled unless --quick."""
        return ("none",) if self.a.quick else ("none", self.a.compile)

    def sync(self) -> None:
        if self.cuda:
            import torch

            torch.cuda.synchronize()

    def save(self) -> None:
        from bnexp.files import write_json_atomic

        self.record["wall_s"] = time.perf_counter() - self.t0
        sections = self.record["sections"]
        self.record["ok"] = bool(sections) and all(s.get("ok") for s in sections.values())
        write_json_atomic(self.a.out, self.record)

    def run(self, name: str, fn) -> None:
        import torch

        left = self.a.budget_s - (time.perf_counter() - self.t0)
        need = 0 if self.a.quick else ESTIMATE_S[name]
        if left < need:
            self.record["sections"][name] = {"ok": False, "skipped": f"{left:.0f}s of the budget left, needs ~{need}s"}
            print(f"[gpu_check] {name}: skipped ({left:.0f}s left)", flush=True)
            self.save()
            return
        if self.cuda:
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        t = time.perf_counter()
        try:
            out = fn()
            out.setdefault("ok", True)
        except Exception as e:
            out = {"ok": False, "error": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()[-4000:]}
        out["wall_s"] = time.perf_counter() - t
        out["peak_mem_gib"] = torch.cuda.max_memory_allocated() / 2**30 if self.cuda else None
        self.record["sections"][name] = out
        print(f"[gpu_check] {name}: {'ok' if out['ok'] else 'FAILED'} in {out['wall_s']:.1f}s", flush=True)
        self.save()

    # ---- sections -----------------------------------------------------------------------------------
    def gpu_tests(self) -> dict:
        xml = self.tmp / "gpu_tests.xml"
        cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider", f"--junitxml={xml}"]
        cmd += ["tests/test_gpu.py"] if self.a.quick else []
        r = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=self.a.tests_timeout_s)
        counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
        names = []
        if xml.is_file():
            for suite in ET.parse(xml).getroot().iter("testsuite"):
                for k in counts:
                    counts[k] += int(suite.get(k, 0))
                for case in suite.iter("testcase"):
                    if case.find("failure") is not None or case.find("error") is not None:
                        names.append(f"{case.get('classname')}::{case.get('name')}")
        passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
        ok = r.returncode in (0, 5) and not names  # 5: nothing collected
        if self.cuda:
            ok = ok and passed > 0
        return dict(ok=ok, returncode=r.returncode, passed=passed, **counts, failed_tests=names, tail=r.stdout[-1500:])

    def step(self) -> dict:
        from bench_step import harness_steps, plain_steps

        from bnexp.core.data import load_mnist, make_splits

        a, device = self.a, "cuda" if self.cuda else "cpu"
        splits = make_splits(load_mnist()).to(device)
        out: dict[str, Any] = {"depth": a.depth, "steps": a.step_steps, "warmup": a.step_warmup}
        for mode in self.modes():
            plain = plain_steps(splits, "pre", a.depth, a.step_steps, a.step_warmup, device, mode)
            harness = harness_steps("pre", a.depth, a.step_steps, a.step_warmup, device, mode, str(self.tmp / "step"))
            key = "eager" if mode == "none" else mode
            out[key] = {"plain_ms": 1000 * plain, "harness_ms": 1000 * harness, "ratio": harness / plain}
        return out

    def trial(self) -> dict:
        from bnexp.core.train import train

        out: dict[str, Any] = {"steps": self.a.steps, "depth": self.a.depth}
        for mode in self.modes():
            self.sync()
            t = time.perf_counter()
            m = train(self.cfg(f"trainer.compile={mode}"), output_dir=self.tmp / f"trial_{mode}")
            self.sync()
            key = "eager" if mode == "none" else mode
            out[key] = {"wall_s": time.perf_counter() - t, "train_s": m["train_s"], "val_acc": m["val/acc"]}
            out[key]["ok"] = m["step"] == self.a.steps and not m["diverged"]
        out["ok"] = all(v["ok"] for v in out.values() if isinstance(v, dict))
        return out

    def population(self) -> dict:
        from bench_population import lr_grid, population_step_s

        out: dict[str, Any] = {"compile": self.modes()[-1]}
        cfg = self.cfg(f"trainer.compile={self.modes()[-1]}")
        for k in self.a.ks:
            s = population_step_s(cfg, lr_grid(1e-4, 1e-1, k), self.a.pop_steps, self.a.pop_warmup, harness=True)
            out[f"K={k}"] = {"ms_per_step": 1000 * s["wall"], "ms_per_model_step": 1000 * s["wall"] / k}
        return out

    def study(self) -> dict:
        from bench_population import lr_grid

        from bnexp.core.train import train
        from bnexp.population.train import train_population

        a = self.a
        lrs = lr_grid(1e-4, 1e-1, a.study_points)
        mode = f"trainer.compile={self.modes()[-1]}"
        cfg = self.cfg(mode)
        self.sync()
        t = time.perf_counter()
        ms = train_population(cfg, lrs, [self.tmp / "study" / f"p{i}" for i in range(len(lrs))])
        self.sync()
        pop_s = time.perf_counter() - t
        solo = []
        for i, lr in enumerate(lrs[: a.solo_measured]):
            t = time.perf_counter()
            train(self.cfg(mode, f"optim.lr={lr}"), output_dir=self.tmp / "study" / f"s{i}")
            self.sync()
            solo.append(time.perf_counter() - t)
        solo_all = sum(solo) / len(solo) * len(lrs)
        return dict(
            compile=self.modes()[-1],
            points=len(lrs),
            population_wall_s=pop_s,
            population_train_s=ms[0]["train_s"],
            diverged=sum(bool(m["diverged"]) for m in ms),
            solo_measured=len(solo),
            solo_wall_s=solo,
            solo_wall_s_all_points=solo_all,
            extrapolated=len(solo) < len(lrs),
            speedup=solo_all / pop_s,
        )

    def compile(self) -> dict:
        from bench_compile import compare, sweep_arm

        from bnexp.core.compiled import BREAK_EVEN_STEPS

        a = self.a
        args = argparse.Namespace(device=a.device, points=a.compile_points, steps=a.compile_steps, depth=a.depth)
        args.timeout_s = 900
        tiny = ("data.limit_val=256", "data.limit_test=256", "data.single_n=10", "data.eval_batch_size=256")
        extra = tiny if a.quick else ()
        cache = self.tmp / "inductor-cache"  # fresh: the first trial's compile is a cold one
        # quick: the compiled arm through the same command with aot_eager ($BNEXP_COMPILE_BACKEND, kept)
        eager = sweep_arm("none", args, cache, self.tmp, "compile-eager", extra, backend=a.quick)
        comp = sweep_arm(a.compile, args, cache, self.tmp, "compile-compiled", extra, backend=a.quick)
        out: dict[str, Any] = {"points": a.compile_points, "steps": a.compile_steps, "compile": a.compile}
        out.update(eager=eager, compiled=comp, **compare(eager, comp, a.compile_steps))
        out["auto_break_even_steps_now"] = BREAK_EVEN_STEPS["cuda" if self.cuda else "cpu"]
        news = comp["new_graphs"]  # the first trial compiles, no later one does
        out["ok"] = bool(news) and news[0] > 0 and all(n == 0 for n in news[1:]) and eager["compile"] == ["none"]
        return out

    def agreement(self) -> dict:
        from bnexp.core.train import train
        from bnexp.population.train import train_population

        short = ["model.depth=3", f"trainer.max_steps={self.a.agree_steps}", f"trainer.val_every={self.a.agree_steps}"]
        lrs, out = [1e-3, 1e-2], {}
        keys = ("val/loss", "val/loss_batchstats", "test/loss")

        def pop(tag: str, *extra: str) -> list[dict]:
            dirs = [self.tmp / "agree" / f"{tag}{k}" for k in range(len(lrs))]
            return train_population(self.cfg(*short, *extra), lrs, dirs)

        def solo(tag: str, *extra: str, n: int = len(lrs)) -> list[dict]:
            cfgs = [self.cfg(*short, *extra, f"optim.lr={lr}") for lr in lrs[:n]]
            return [train(c, output_dir=self.tmp / "agree" / f"{tag}{i}") for i, c in enumerate(cfgs)]

        def compare(a: list[dict], b: list[dict], rel: float, abs_: float) -> dict:
            finite = all(m[k] is not None and math.isfinite(m[k]) for m in (*a, *b) for k in keys)
            if not finite:
                return {"max_rel_diff": None, "rel_tol": rel, "ok": False, "error": "a non-finite loss"}
            worst = max(abs(x[k] - y[k]) / max(abs(y[k]), abs_ / rel) for x, y in zip(a, b, strict=True) for k in keys)
            same_steps = [x["step"] for x in a] == [y["step"] for y in b]
            return {"max_rel_diff": worst, "rel_tol": rel, "ok": same_steps and worst <= rel}

        f64 = "trainer.precision=64-true"
        out["population_vs_solo_float64"] = compare(pop("p", f64), solo("s", f64), rel=1e-6, abs_=1e-9)
        mode = f"trainer.compile={self.a.compile}"
        if self.a.quick:  # aot_eager in float64 traces eager's very ops: equal to rounding; inductor is not run
            out["population_compiled_vs_eager_float64"] = compare(pop("pc", mode, f64), pop("pe", f64), 1e-9, 1e-12)
        else:
            out["population_compiled_vs_eager"] = compare(pop("pc", mode), pop("pe"), rel=2e-2, abs_=1e-6)
            out["solo_compiled_vs_eager"] = compare(solo("sc", mode, n=1), solo("se", n=1), rel=2e-2, abs_=1e-6)
        out["ok"] = all(v["ok"] for v in out.values())
        return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--quick", action="store_true", help="tiny sizes: checks that every section runs")
    p.add_argument("--out", default="gpu.json")
    p.add_argument("--budget-s", type=float, default=450.0, help="skip sections that would overrun this")
    p.add_argument("--compile", default="reduce-overhead", help="trainer.compile for the compiled arms")
    p.add_argument("--sections", default="gpu_tests,agreement,step,trial,study,population,compile")
    a = p.parse_args()
    full = dict(depth=19, steps=800, val_every=100, step_steps=100, step_warmup=20, ks=[8, 32, 128], pop_steps=40)
    full.update(pop_warmup=10, study_points=32, solo_measured=2, agree_steps=30, tests_timeout_s=240)
    full.update(compile_points=12, compile_steps=300)
    quick = dict(depth=2, steps=10, val_every=5, step_steps=4, step_warmup=2, ks=[2, 3], pop_steps=3, pop_warmup=2)
    quick.update(
        study_points=3, solo_measured=1, agree_steps=10, tests_timeout_s=300, compile_points=3, compile_steps=5
    )
    for k, v in (quick if a.quick else full).items():
        setattr(a, k, v)

    import torch

    if a.device == "cuda" and not torch.cuda.is_available():
        sys.exit("gpu_check: no CUDA device visible (use --device cpu --quick to check the script itself)")
    if a.device == "cpu" and a.quick:
        os.environ.setdefault("BNEXP_COMPILE_BACKEND", "aot_eager")  # no minutes of CPU code generation
    os.environ.setdefault("BNEXP_DATA_DIR", str(REPO.parent / "shared" / "data" / "mnist"))
    import logging
    import warnings

    from bnexp.core.train import quiet_lightning

    # many nets and shapes compile in one process here: each keeps its own static graph (no automatic dynamic
    # shapes after a second K) and none silently falls back to eager at the default limit of 8 recompiles
    dyn = torch._dynamo.config
    dyn.automatic_dynamic_shapes = False
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, name):
            setattr(dyn, name, 64)
            break
    quiet_lightning()
    warnings.filterwarnings("ignore")
    for name in ("bnexp", "lightning", "lightning.pytorch", "torch._dynamo", "torch._inductor"):
        logging.getLogger(name).setLevel(logging.ERROR)
    Path(a.out).parent.mkdir(parents=True, exist_ok=True)
    c = Check(a)
    for name in a.sections.split(","):
        c.run(name, getattr(c, name))
    c.save()
    r = c.record
    print(f"[gpu_check] {'ok' if r['ok'] else 'NOT ok'} in {r['wall_s']:.0f}s on {r['device_name']}; wrote {a.out}")
    sys.exit(0 if r["ok"] else 1)


if __name__ == "__main__":
    main()
