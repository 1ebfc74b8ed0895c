"""The seed's deep MNIST conv net as a plain nn.Module.

Conv layer i (i = 1..depth): 4*i channels, 3x3, stride 2 when i % 3 == 0, TF "SAME" padding,
truncated-normal(0.05) weights; flatten; FC-100 (+BN where BN is on) + ReLU; dense-10 logits.

BN placement (`bn`): "off" conv -> ReLU; "pre" conv -> BN -> ReLU (the seed); "post" conv -> ReLU -> BN.
Bias (`bias`): "auto" drops the conv/FC bias where a BN follows the layer directly ("pre"; BN's beta
makes it redundant, as the seed recommends) and keeps it elsewhere; "true"/"false" force it.

TF SAME padding: out = ceil(H / s); the total padding max((out - 1) * s + k - H, 0) is split with the
odd pixel at the bottom/right. For a 28x28 input the stride-2 layers at 28 -> 14 and 14 -> 7 need a
total of 1 (0 top, 1 bottom), which PyTorch's symmetric `padding=1` would put on the wrong side, so
those layers get an explicit asymmetric ZeroPad2d; the others use the symmetric conv padding.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from bnexp.core.arch import BIAS_MODES, BN_MODES, conv_plan, use_bias  # noqa: F401 (the net's names)
from bnexp.core.norm import build_bn

log = logging.getLogger(__name__)


def trunc_normal_(w: torch.Tensor, std: float) -> torch.Tensor:
    # tf.truncated_normal: resample beyond 2 std
    return nn.init.trunc_normal_(w, mean=0.0, std=std, a=-2 * std, b=2 * std)


class Block(nn.Module):
    """Linear/conv layer + (BN) + ReLU in the configured order."""

    def __init__(self, layer: nn.Module, bn: nn.Module | None, mode: str, pad: nn.Module | None = None):
        super().__init__()
        self.pad = pad
        self.layer = layer
        self.bn = bn
        self.mode = mode
        self.act = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pad is not None:
            x = self.pad(x)
        z = self.layer(x)  # pre-activation, (N, C, H, W) or (N, F)
        if self.mode == "pre":
            return self.act(self.bn(z))
        if self.mode == "post":
            return self.bn(self.act(z))
        return self.act(z)


class DeepConvNet(nn.Module):
    """The seed's conv net; `depth` conv layers (seed: 19), then FC-`fc_units`, then 10 logits."""

    def __init__(
        self,
        depth: int = 19,
        bn: str = "pre",
        bias: str = "auto",
        bn_impl: str = "torch",
        bn_momentum: float = 0.01,
        bn_eps: float = 1e-3,
        fc_units: int = 100,
        init_std: float = 0.05,
        in_hw: int = 28,
        num_classes: int = 10,
    ) -> None:
        super().__init__()
        if bn not in BN_MODES:
            raise ValueError(f"unknown bn {bn!r}; choose one of {', '.join(BN_MODES)}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1, got {depth}")
        self.depth, self.bn_mode = depth, bn
        has_bias = use_bias(bn, bias)

        def make_bn(n: int, dims: int) -> nn.Module | None:
            return None if bn == "off" else build_bn(bn_impl, n, dims, bn_momentum, bn_eps)

        blocks = []
        plan = conv_plan(depth, in_hw)
        for p in plan:
            top, bottom = p["pad"]
            if top == bottom:
                conv = nn.Conv2d(p["c_in"], p["c_out"], 3, p["stride"], padding=top, bias=has_bias)
                pad = None
            else:  # TF SAME with the odd pixel at bottom/right: (left, right, top, bottom)
                conv = nn.Conv2d(p["c_in"], p["c_out"], 3, p["stride"], padding=0, bias=has_bias)
                pad = nn.ZeroPad2d((top, bottom, top, bottom))
            trunc_normal_(conv.weight, init_std)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)
            blocks.append(Block(conv, make_bn(p["c_out"], 2), bn, pad))
        self.features = nn.Sequential(*blocks)
        flat = plan[-1]["c_out"] * plan[-1]["hw_out"] ** 2  # depth 19: 76 * 1 * 1
        fc = nn.Linear(flat, fc_units, bias=has_bias)
        nn.init.xavier_uniform_(fc.weight)  # tf.layers.dense default: glorot_uniform, zero bias
        if fc.bias is not None:
            nn.init.zeros_(fc.bias)
        self.fc = Block(fc, make_bn(fc_units, 1), bn)
        self.head = nn.Linear(fc_units, num_classes)
        nn.init.xavier_uniform_(self.head.weight)
        nn.init.zeros_(self.head.bias)
        log.debug("DeepConvNet depth=%d bn=%s bias=%s(%s) bn_impl=%s", depth, bn, bias, has_bias, bn_impl)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)  # (N, 4*depth, h, w)
        h = self.fc(h.flatten(1))  # (N, fc_units)
        return self.head(h)  # (N, 10) logits

    def labelled_blocks(self) -> list[tuple[str, Block]]:
        """(label, Block) for the conv blocks (L01..) and the FC block (fc), in forward order."""
        out = []
        for name, m in self.named_modules():
            if isinstance(m, Block):
                out.append((f"L{int(name.split('.')[1]) + 1:02d}", m) if name.startswith("features.") else (name, m))
        return out
