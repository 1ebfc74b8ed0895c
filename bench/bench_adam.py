"""Adam's three implementations on this CPU, per training step of the net: torch's default on a CPU (a Python
loop over the parameters), `foreach=True` (one multi-tensor kernel per operation) and `fused=True` (one kernel
per parameter), in a plain PyTorch loop in one process, rounds interleaved, the layout a sweep trains in.

    python bench/bench_adam.py                        # depth 8, BN off and pre, one thread (a sweep worker)
    python bench/bench_adam.py --depth 19 --threads 2

The question: would the fused optimizer cut a sweep trial's steps, and what does it do to the arithmetic? Each
variant also reports the largest parameter difference after --check steps from the same start, against the
default: a saving that changes rounding moves a stability edge where training is chaotic, as channels_last does
(docs/cluster.md). Prints a table; bnexp trains with the default.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bnexp.core.alloc import keep_memory  # noqa: E402
from bnexp.core.net import DeepConvNet  # noqa: E402

KINDS = {"default": {}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def make(bn: str, depth: int, kind: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    net = DeepConvNet(depth=depth, bn=bn).to(memory_format=torch.channels_last)
    return net, torch.optim.Adam(net.parameters(), lr=1e-3, **KINDS[kind])


def steps(net: torch.nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, n: int) -> float:
    t0 = time.perf_counter()
    for _ in range(n):
        opt.zero_grad(set_to_none=True)
        torch.nn.functional.binary_cross_entropy_with_logits(net(x), y).backward()
        opt.step()
    return (time.perf_counter() - t0) / n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=8)
    ap.add_argument("--bn", default="off,pre")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--steps", type=int, default=100, help="steps per timed round")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--check", type=int, default=50, help="steps before comparing parameters")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    keep_memory()  # as a sweep worker
    g = torch.Generator().manual_seed(1)
    x = torch.randn(64, 1, 28, 28, generator=g).to(memory_format=torch.channels_last)
    y = torch.nn.functional.one_hot(torch.randint(0, 10, (64,), generator=g), 10).float()
    print(f"depth {a.depth}, {a.threads} thread(s), channels_last, batch 64; median of {a.rounds} interleaved rounds")
    print("| bn | Adam | ms/step | vs default | max param diff after", a.check, "steps |")
    print("|---|---|---:|---:|---:|")
    for bn in a.bn.split(","):
        runs = {k: make(bn, a.depth, k) for k in KINDS}
        for net, opt in runs.values():
            steps(net, opt, x, y, 10)
        times: dict[str, list[float]] = {k: [] for k in KINDS}
        for _ in range(a.rounds):
            for k, (net, opt) in runs.items():
                times[k].append(steps(net, opt, x, y, a.steps))
        ref = make(bn, a.depth, "default")
        steps(*ref, x, y, a.check)
        for k in KINDS:
            other = make(bn, a.depth, k)
            steps(*other, x, y, a.check)
            diff = max(
                (p - q).abs().max().item() for p, q in zip(ref[0].parameters(), other[0].parameters(), strict=True)
            )
            ms = 1000 * statistics.median(times[k])
            base = 1000 * statistics.median(times["default"])
            print(f"| {bn} | {k} | {ms:.1f} | {ms / base:.2f}x | {diff:.1e} |")


if __name__ == "__main__":
    main()
