"""The net's plan without torch: the choices a config may name and the conv layers a depth makes.

bnexp.core.net builds the net from this plan; bnexp.core.config checks a config and estimates its memory from
it, so that a bad value is refused (exit 2) without importing torch.
"""

from __future__ import annotations

import math

BN_IMPLS = ("torch", "manual")  # bnexp.core.norm: PyTorch's layer, the seed's hand-written BN
BN_MODES = ("off", "pre", "post")
BIAS_MODES = ("auto", "true", "false")


def conv_plan(depth: int, in_hw: int = 28) -> list[dict]:
    """Per conv layer: channels, stride, TF-SAME padding (top, bottom) and output size."""
    plan, hw, c_in = [], in_hw, 1
    for i in range(1, depth + 1):
        stride = 2 if i % 3 == 0 else 1
        out = math.ceil(hw / stride)
        total = max((out - 1) * stride + 3 - hw, 0)
        plan.append(dict(i=i, c_in=c_in, c_out=4 * i, stride=stride, pad=(total // 2, total - total // 2), hw_out=out))
        hw, c_in = out, 4 * i
    return plan


def use_bias(bn: str, bias: str) -> bool:
    if bias == "auto":
        return bn != "pre"  # only "pre" has BN directly after the conv/FC
    if bias in ("true", "false"):
        return bias == "true"
    raise ValueError(f"unknown bias {bias!r}; choose one of {', '.join(BIAS_MODES)}")
