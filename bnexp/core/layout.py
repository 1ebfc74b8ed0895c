"""`trainer.memory_format`: the tensor layout the net's convolutions run in (channels_last, NHWC, or contiguous).

`auto`, a sweep's default (bnexp/conf/study.yaml), picks channels_last on a CPU and contiguous on a GPU.
`python -m bnexp.run` stays contiguous: the seed's arithmetic, whose seed-0 values the README pins (on this
project's AMD CPU, BN pre's val/acc is 0.9688 contiguous and 0.9268 channels_last: one draw of the
population statistics, which swing by that much with the last bit at 800 steps). The choice depends on the
device type only, never on a timing taken at run time: the layout changes the float32 rounding of the conv
kernels (as another CPU does), so a choice made from a measurement under load would make the same command
give other numbers on another day. A sweep trial is reproduced by `python -m bnexp.run` with its overrides,
`trainer.memory_format=channels_last` and the worker's thread count (`OMP_NUM_THREADS=1` for
`sweep.jobs=auto`'s workers), to the last bit.

Why channels_last on a CPU (`python bench/bench_layout.py`: a plain PyTorch loop of the training step, depth 19,
batch 64, interleaved rounds, torch 2.13.0+cpu on this project's 2-core AMD EPYC, AVX512): at one thread, as a
sweep worker trains, a step takes 41.5 ms contiguous and 34.6 ms channels_last with BN pre (0.83x), 34.1 and 28.1
ms without BN (0.83x); a 1000-image evaluation forward 247 and 164 ms (0.66x, timed by hand in the same way).
oneDNN runs these small convolutions (4 to 76 channels) faster in NHWC. At two threads BN pre gains little (27.9
-> 27.4 ms) and BN off 0.80x; nothing measured is slower. This is most of what torch.compile gains on this CPU:
inductor converts a BN net's convolutions to channels_last itself, so a compiled step is 0.80x an eager contiguous
one but 0.95x an eager channels_last one at one thread (bnexp.core.compiled, "the break-even"). On a GPU cuDNN's
choice is left alone until bench/gpu_check.py has measured it there."""

from __future__ import annotations

from typing import Any

FORMATS = ("auto", "channels_last", "contiguous")


def choose(setting: str, device: str) -> str:
    """The layout to use: `setting` itself unless it is "auto"; auto is channels_last on a CPU, contiguous on CUDA."""
    if setting != "auto":
        return setting
    return "contiguous" if device == "cuda" else "channels_last"


def apply(module: Any, fmt: str) -> Any:
    """The module's net (`module.model`) in layout `fmt` ("channels_last" or "contiguous"), in place; the chosen
    layout is kept as `module.memory_format` (metrics.json records it). Only the conv weights (4-d) change; a
    1-channel input is contiguous in both layouts, so the first convolution's output follows the weights."""
    import torch

    fmt = {"channels_last": torch.channels_last, "contiguous": torch.contiguous_format}[fmt]
    module.model.to(memory_format=fmt)
    module.memory_format = "channels_last" if fmt is torch.channels_last else "contiguous"
    return module
