"""`trainer.memory_format`: the tensor layout the net's convolutions run in (channels_last, NHWC, or contiguous).

`auto` picks channels_last on a CPU and contiguous on a GPU. The choice depends on the device type only, never
on a timing taken at run time: the layout changes the float32 rounding of the conv kernels (as another CPU
does), so a choice made from a measurement under load would make the same command give other numbers on
another day. A sweep trial and `python -m bnexp.run` with the same overrides on the same machine therefore
compute the same trajectory.

Why channels_last on a CPU (measured with torch 2.13.0+cpu on this project's 2-core AMD EPYC, AVX512, one
thread as a sweep worker runs, depth 19, batch 64, plain PyTorch loop: forward, sigmoid loss, backward,
Adam): a training step takes 40.6-45.2 ms contiguous and 35.0-36.8 ms channels_last (0.80x-0.87x; BN off
33.8 -> 27.2 ms, 0.80x), at depth 8 29.6 -> 25.4 ms; a 1000-image evaluation forward 247 -> 164 ms (0.66x).
oneDNN runs these small-channel convolutions (4-76 channels) faster in NHWC. At two threads the BN nets gain
nothing (26.2 vs 25.5 ms at depth 19, 17.6 vs 18.6 ms at depth 8) and BN off still 0.78x; nothing measured
is slower beyond noise. This is also most of what torch.compile gains on this CPU: inductor converts the
convolutions to channels_last itself (its layout optimisation), so a compiled step (33.2 ms) is 0.76x an
eager contiguous one but only 0.91x-0.95x an eager channels_last one (bnexp.core.compiled, "the rule").
On a GPU cuDNN's choice is left alone until bench/gpu_check.py has measured it there.
"""

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
