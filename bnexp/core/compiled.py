"""Compile once, train many: `trainer.compile`, its `auto` rule, and a process-level cache of compiled nets.

* `choose(...)`      the `auto` rule, pure (no torch): compile where the training steps one process (a sweep
                     worker) is expected to run reach the break-even, stay eager otherwise. On a GPU, compiling
                     means `reduce-overhead` (CUDA graphs), on a CPU inductor's `default`.
* `compiled_net(net, mode)`  the compiled net for this trial. One net per variant and mode is kept for the whole
                     process (the cache): a new trial copies its freshly initialised weights and buffers into the
                     kept net and reuses its compiled graphs (the training step's forward and backward, and the
                     evaluation passes: population statistics, batch statistics, the batch-of-1 test), whatever
                     its lr or seed. The parameters keep their addresses, so CUDA graphs replay without
                     re-recording. Another variant (depth, bn, bias, K members, ...) is another entry.
* `graphs()`         the graphs torch has compiled in this process (dynamo's unique_graphs counter): train()
                     logs how many each run added, and a test checks that a second trial adds none.

Inductor's on-disk cache (its FX graph cache, the generated code) goes to $TORCHINDUCTOR_CACHE_DIR when that is
set, else to `$XDG_CACHE_HOME/bnexp/inductor` (~/.cache/bnexp/inductor): per user, surviving reboots and /tmp
cleaners, so a rerun of a study (or a second study of the same variant) skips inductor's code generation.

$BNEXP_COMPILE_BACKEND picks another torch.compile backend than inductor (`mode` then only switches compilation
on): aot_eager traces the very graphs (capture, autograd, BN buffer updates) without code generation, for quick
CPU checks of the compiled paths (tests, bench/gpu_check.py --quick).
"""

from __future__ import annotations

import logging
import math
import os
from typing import Any

log = logging.getLogger("bnexp")

# The break-even of `auto`, in training steps per variant per process: what compiling one variant costs (its
# training step and evaluation passes, inductor's cache cold) over what it saves per step, against eager in
# the layout a sweep trains (trainer.memory_format=auto: channels_last on a CPU, bnexp.core.layout).
# CPU, 1 thread (sweep.jobs=auto's CPU workers), this project's 2-core AMD EPYC (AVX512), quiet, depth 19 bn=pre,
# through the real command (`python bench/bench_compile.py --points 4 --steps 300 --threads 1 --break-even 1000
# --no-plain`): a 300-step trial 13.8 s eager, 13.4 s compiled (0.97x) after a 53.8 s compile: 42777 steps.
# Why so little: most of what inductor gains on this CPU is the layout, which eager now has too. Per step
# (`python bench/bench_layout.py`, plain loop, depth 19, ms): 1 thread, pre: contiguous 41.5, channels_last
# 34.6, compiled 33.0 (0.80x contiguous, 0.95x channels_last); off: 34.1, 28.1, 34.2 (inductor leaves BN-off
# nets contiguous: 1.22x channels_last). 2 threads, pre: 27.9, 27.4, 22.9 (0.84x channels_last); off: 22.2,
# 17.8, 21.8. So the compile gain depends on the variant and the thread count, and with a BN-off variant in
# most studies a multi-threaded CPU process stays eager (None: `auto` never compiles) until a trial-level
# measurement says otherwise; `trainer.compile_break_even_steps=N` or `trainer.compile=default` compile on
# purpose. CUDA: an estimate until bench/gpu_check.py's compile section has run on a GPU (reduce-overhead
# saves ~9.4 ms per step on an H100, 11.2 -> 1.79 ms; the compile is assumed to cost ~50 s).
BREAK_EVEN_STEPS: dict[str, int | None] = {"cpu": None, "cpu-1-thread": 43000, "cuda": 6000}
COMPILED_MODE = {"cpu": "default", "cuda": "reduce-overhead"}
# graphs per code object before dynamo gives up and runs eagerly: every variant in a process adds its training
# graph and ~4 evaluation graphs to the same forward (torch's default, 8, is two variants)
RECOMPILE_LIMIT = 256

_CACHE: dict[tuple, Any] = {}


def device_type(accelerator: str, cuda_available: bool) -> str:
    """'cuda' or 'cpu': where `trainer.accelerator` puts the training."""
    a = str(accelerator)
    if a in ("gpu", "cuda") or (a == "auto" and cuda_available):
        return "cuda"
    return "cpu"


def choose(mode: str, device: str, runs: int, steps: int, break_even_steps: int | None = None, threads: int = 0) -> str:
    """The compile mode to use: `mode` itself unless it is "auto". `auto` compiles when the `runs` trainings of
    `steps` steps one process is expected to run (a sweep worker's share of the waiting points; 1 for a single
    run) reach the break-even (`break_even_steps`, else BREAK_EVEN_STEPS for the device), with reduce-overhead
    (CUDA graphs) on a GPU and inductor's default on a CPU; below it, eager ("none"). A single-threaded CPU
    process (`threads` == 1: sweep.jobs=auto's CPU workers) has its own, higher break-even."""
    if mode != "auto":
        return mode
    dev = "cuda" if device == "cuda" else "cpu"
    need = break_even(dev, threads) if break_even_steps is None else int(break_even_steps)
    return COMPILED_MODE[dev] if need is not None and runs * steps >= need else "none"


def break_even(device: str, threads: int = 0) -> int | None:
    """auto's threshold in steps per process for a device ('cpu', 'cuda') and a CPU process's thread count;
    None: auto never compiles there (measured: it does not pay on this project's CPU)."""
    if device == "cuda":
        return BREAK_EVEN_STEPS["cuda"]
    return BREAK_EVEN_STEPS["cpu-1-thread" if threads == 1 else "cpu"]


def runs_per_worker(points: int, workers: int, population: int = 1, max_trials: int | None = None) -> int:
    """The trainings one of `workers` processes is expected to run for `points` waiting points (a population
    trains up to `population` points as one training)."""
    trials = math.ceil(points / max(1, workers))
    if max_trials is not None:
        trials = min(trials, int(max_trials))
    return math.ceil(trials / max(1, population))


def cluster_workers() -> int:
    """Workers on other machines that share the study, when the scheduler says (a SLURM array's task count)."""
    n = os.environ.get("SLURM_ARRAY_TASK_COUNT", "")
    return int(n) if n.isdigit() and int(n) > 0 else 1


def inductor_cache_dir() -> str:
    """Where inductor keeps its on-disk cache ($TORCHINDUCTOR_CACHE_DIR wins); set in the environment, so that the
    compile workers inductor starts see it too."""
    d = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    if not d:
        base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        d = os.environ["TORCHINDUCTOR_CACHE_DIR"] = os.path.join(base, "bnexp", "inductor")
    return d


def configure() -> None:
    """Dynamo settings for many trials in one process: one static graph per shape (no automatic dynamic shapes
    after the first evaluation batch of another size: CUDA graphs need static shapes, and each pass keeps its
    own graph), and room for many variants before dynamo would silently fall back to eager."""
    import torch._dynamo

    dyn = torch._dynamo.config
    dyn.automatic_dynamic_shapes = False
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dyn, name):
            setattr(dyn, name, max(getattr(dyn, name), RECOMPILE_LIMIT))
            break
    if hasattr(dyn, "accumulated_recompile_limit"):
        dyn.accumulated_recompile_limit = max(dyn.accumulated_recompile_limit, 4 * RECOMPILE_LIMIT)


def graphs() -> int:
    """Graphs compiled in this process so far."""
    from torch._dynamo.utils import counters

    return int(counters["stats"]["unique_graphs"])


def _signature(net: Any) -> tuple:
    """What makes two nets the same variant for a compiled graph: each module's type and plain settings, each
    parameter's and buffer's name, shape, dtype and layout."""
    import torch

    mods = tuple(
        (name, type(m).__qualname__, tuple(sorted((k, v) for k, v in vars(m).items() if _plain(k, v))))
        for name, m in net.named_modules()
    )
    tensors = tuple(
        (k, tuple(v.shape), str(v.dtype), v.dim() == 4 and v.is_contiguous(memory_format=torch.channels_last))
        for k, v in net.state_dict(keep_vars=True).items()
    )  # a graph is traced for its inputs' layout (trainer.memory_format): another layout is another entry
    return type(net).__qualname__, mods, tensors


def _plain(k: str, v: Any) -> bool:
    return not k.startswith("_") and k != "training" and isinstance(v, (bool, int, float, str, tuple, type(None)))


def _load_into(kept: Any, fresh: Any) -> None:
    """This trial's initial state (weights, BN buffers, train mode) into the kept net, in place; no gradients."""
    import torch

    dst, src = kept.state_dict(keep_vars=True), fresh.state_dict(keep_vars=True)
    with torch.no_grad():
        for k, v in src.items():
            if dst[k].dtype != v.dtype:  # a run in another precision before (Lightning converts in place)
                kept.to(dtype=v.dtype)
                dst = kept.state_dict(keep_vars=True)
            dst[k].copy_(v)
    for p in kept.parameters():
        p.grad = None
    kept.train(fresh.training)


def compiled_net(net: Any, mode: str) -> Any:
    """`net` compiled with `mode` ("default", "reduce-overhead", "max-autotune"), through the process's cache: the
    first net of a variant is compiled and kept; a later one of the same variant and mode loads its state into
    the kept net and gets the kept compiled net back (no new graph)."""
    import torch

    backend = os.environ.get("BNEXP_COMPILE_BACKEND", "inductor")
    key = (mode, backend, _signature(net))
    hit = _CACHE.get(key)
    if hit is not None:
        _load_into(hit._orig_mod, net)
        log.info("torch.compile: reusing the compiled %s (mode=%s, backend=%s)", type(net).__name__, mode, backend)
        return hit
    configure()
    if backend == "inductor":
        inductor_cache_dir()
    log.info(
        "torch.compile: compiling %s (mode=%s, backend=%s, pid %d), kept for every later trial of this variant",
        type(net).__name__, mode, backend, os.getpid(),
    )  # fmt: skip
    kw = dict(mode=mode) if backend == "inductor" else dict(backend=backend)
    hit = _CACHE[key] = torch.compile(net, **kw)
    return hit


def clear() -> None:
    """Forget the kept nets (their compiled graphs stay in torch's own cache)."""
    _CACHE.clear()


def match_state_keys(state: dict[str, Any], own: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's state_dict with torch.compile's `_orig_mod.` segment added or dropped to match this module's
    own keys: a run stopped while compiled resumes eagerly and vice versa (`auto` may decide differently when
    fewer points are left)."""
    if set(state) == set(own):
        return state
    out = {}
    for k, v in state.items():
        bare = k.replace("._orig_mod.", ".")
        if bare in own:
            out[bare] = v
        else:
            head, _, tail = bare.partition(".")
            wrapped = f"{head}._orig_mod.{tail}"
            out[wrapped if wrapped in own else k] = v
    return out


def sweep_mode(
    trainer: Any,
    waiting: int,
    workers: int,
    gpus: int,
    population: int,
    max_trials: int | None,
    threads: int = 0,
    variants: int = 1,
) -> str:
    """`auto` decided once for a sweep's workers (the same answer for each: each compiles once per variant, then
    reuses): `waiting` points of `variants` variants shared by `workers` processes of `threads` threads (0: this
    process's), on GPUs if `gpus`. A process compiles each variant it trains, so the break-even is reached by
    one variant's share of the points. Logs the decision and its numbers."""
    runs = runs_per_worker(math.ceil(waiting / max(1, variants)), workers, population, max_trials)
    dev = "cuda" if gpus else "cpu"
    if not threads:  # this process's own (one worker): what OMP_NUM_THREADS or torch gave it
        import torch

        threads = torch.get_num_threads()
    mode = choose(trainer.compile, dev, runs, int(trainer.max_steps), trainer.compile_break_even_steps, threads)
    need = break_even(dev, threads) if trainer.compile_break_even_steps is None else trainer.compile_break_even_steps
    pays = f"compiling pays from {need} steps" if need is not None else "compiling is not measured to pay here"
    log.info(
        "trainer.compile=%s -> %s: %d point(s) to train, %d variant(s), %d worker(s): ~%d training(s) of %d steps "
        "per variant per worker on %s, %d thread(s) (%s)",
        *(trainer.compile, mode, waiting, variants, workers, runs, trainer.max_steps, dev, threads, pays),
    )
    return mode
