"""Where torch.compile's CPU gain comes from: the conv layout, the thread count, and the compile itself.

    python bench/bench_layout.py                      # depth 19, BN pre and off, 1 and 2 threads, 3 rounds
    python bench/bench_layout.py --bn pre --threads 1 --rounds 2 --no-compile

A plain PyTorch loop of the training step (forward, sigmoid loss, backward, Adam: bench_step.plain_steps), in
this one process, ms per step for each arm:
  contiguous          eager, NCHW (trainer.memory_format=contiguous: bnexp before this round)
  channels_last       eager, NHWC (trainer.memory_format=auto on a CPU)
  compiled            torch.compile(mode="default"), inductor, from the contiguous net (inductor picks its own
                      layout: its layout optimisation converts the convolutions to channels_last)
The arms run interleaved, round by round, at each thread count (torch.set_num_threads), so a shared machine
loads them alike; read the ratios. The first call of each compiled arm (inductor's cache in a fresh dir: cold)
is timed as its compile. Prints a Markdown table; writes JSON (--out, default bench/results/layout-cpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from bnexp.core.metrics import compute_loss  # noqa: E402
from bnexp.core.net import DeepConvNet  # noqa: E402

ARMS = ("contiguous", "channels_last", "compiled")


def make_step(arm: str, bn: str, depth: int, x: torch.Tensor, y: torch.Tensor):
    """One arm's training step as a closure, and its first call's seconds (the compile, for a compiled arm)."""
    torch.manual_seed(0)
    net = DeepConvNet(depth=depth, bn=bn)
    if arm == "channels_last":
        net = net.to(memory_format=torch.channels_last)
    fwd = net
    if arm == "compiled":
        fwd = torch.compile(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.002)

    def step() -> None:
        loss = compute_loss(fwd(x), y, "sigmoid")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    t = time.perf_counter()
    for _ in range(3):  # the compile (forward and backward graphs), then two steps to settle
        step()
    return step, time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--depth", type=int, default=19)
    ap.add_argument("--bn", default="pre,off")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="bench_layout_inductor_"))
    from bnexp.core.data import load_mnist, make_splits

    splits = make_splits(load_mnist(os.environ.get("BNEXP_DATA_DIR")), None, None, None)
    x, y = splits.train_x[:64].contiguous(), splits.train_y[:64].contiguous()  # one real batch, every step
    arms = [a_ for a_ in ARMS if not (a.no_compile and a_.startswith("compiled"))]
    rows = []
    for threads in (int(t) for t in a.threads.split(",")):
        torch.set_num_threads(threads)
        for bn in a.bn.split(","):
            steps, first = {}, {}
            for arm in arms:
                steps[arm], first[arm] = make_step(arm, bn, a.depth, x, y)
            ms: dict[str, list[float]] = {arm: [] for arm in arms}
            for r in range(a.rounds):
                for arm in arms if r % 2 == 0 else reversed(arms):
                    t = time.perf_counter()
                    for _ in range(a.steps):
                        steps[arm]()
                    ms[arm].append(1000 * (time.perf_counter() - t) / a.steps)
            med = {arm: statistics.median(v) for arm, v in ms.items()}
            for arm in arms:
                rel = dict(vs_contiguous=med[arm] / med["contiguous"], vs_channels_last=med[arm] / med["channels_last"])
                rows.append(dict(threads=threads, bn=bn, arm=arm, ms=med[arm], **rel, first_s=first[arm]))
                print(f"threads {threads} bn {bn} {arm}: {med[arm]:.1f} ms", file=sys.stderr, flush=True)
    print("| threads | bn | arm | ms / step | vs contiguous | vs channels_last | first 3 steps (s) |")
    print("|---:|---|---|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['threads']} | {r['bn']} | {r['arm']} | {r['ms']:.1f} | {r['vs_contiguous']:.2f}x | "
              f"{r['vs_channels_last']:.2f}x | {r['first_s']:.1f} |")  # fmt: skip
    out = Path(a.out or REPO / "bench" / "results" / "layout-cpu.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"config": vars(a), "torch": torch.__version__, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
