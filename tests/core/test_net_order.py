"""The science's own switches, checked as behaviour on the real net: where BN sits in each variant (the modules
called, in order, by a forward pass), and TF "SAME" padding of every stride-2 layer against TF's own formula."""

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from bnexp.core.net import DeepConvNet

# what a forward pass through one layer block calls, by variant (the seed: pre is conv -> BN -> ReLU)
ORDER = {"off": ["layer", "act"], "pre": ["layer", "bn", "act"], "post": ["layer", "act", "bn"]}


@pytest.mark.parametrize("bn", ["off", "pre", "post"])
def test_bn_sits_where_the_variant_says_in_every_block(bn):
    m = DeepConvNet(depth=4, bn=bn)
    calls: list[tuple[str, str]] = []
    blocks = {f"features.{i}": b for i, b in enumerate(m.features)} | {"fc": m.fc}
    for name, block in blocks.items():
        for part, mod in block.named_children():
            if part in ("layer", "bn", "act"):
                mod.register_forward_hook(lambda mod, i, o, name=name, part=part: calls.append((name, part)))
    n_bn = sum(isinstance(x, nn.modules.batchnorm._BatchNorm) or "BatchNorm" in type(x).__name__ for x in m.modules())
    m(torch.randn(4, 1, 28, 28))
    for name in blocks:
        assert [p for n, p in calls if n == name] == ORDER[bn], (name, calls)
    assert n_bn == (0 if bn == "off" else len(blocks))  # a BN module exists exactly where one is called


def _tf_same(x: torch.Tensor, conv: nn.Conv2d) -> torch.Tensor:
    """TF's padding="SAME" (tf.nn.conv2d), written from its documented formula, not from bnexp's plan."""
    h, s, k = x.shape[-1], conv.stride[0], conv.kernel_size[0]
    total = max((math.ceil(h / s) - 1) * s + k - h, 0)
    before, after = total // 2, total - total // 2  # TF puts the odd pixel after (bottom/right)
    return F.conv2d(F.pad(x, (before, after, before, after)), conv.weight, conv.bias, stride=s)


def test_every_stride_2_layer_pads_as_tf_same():
    m = DeepConvNet(depth=19, bn="off", bias="true").eval()
    for b in m.features:
        nn.init.normal_(b.layer.bias)  # a bias too, so that any misplaced padding changes values
    seen, x = [], torch.randn(2, 1, 28, 28)
    with torch.no_grad():
        for i, block in enumerate(m.features, start=1):
            y = block(x)
            conv = block.layer
            assert torch.allclose(y, torch.relu(_tf_same(x, conv)), atol=1e-5), f"layer {i}, input {x.shape[-1]}"
            if conv.stride[0] == 2:
                seen.append((i, x.shape[-1], y.shape[-1]))
            x = y
    # 28 -> 14 and 14 -> 7 need the asymmetric (0, 1); 7 -> 4, 4 -> 2 pad (1, 1); 2 -> 1, 1 -> 1 their own
    assert seen == [(3, 28, 14), (6, 14, 7), (9, 7, 4), (12, 4, 2), (15, 2, 1), (18, 1, 1)]
