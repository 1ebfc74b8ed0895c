"""Batch normalization, the seed's two ways: the library layer and a hand-written one.

The seed (TF1 tutorial) shows `tf.layers.batch_normalization` and a hand-written version on
`tf.nn.moments` / `tf.nn.batch_normalization` with explicit population mean and variance.
`build_bn(impl=...)` returns either behind one factory; `tests/test_norm.py` checks they agree.

Variance convention (the one place the two could differ): the seed's hand-written layer feeds the
*biased* batch variance (tf.nn.moments) into its population update, PyTorch's library layer feeds the
*unbiased* one (n / (n - 1) times larger). We keep the library layer as it is and make the manual
layer match it: normalise with the biased batch variance (both do), update the population variance
with the unbiased one. For conv layers n = batch * H * W >= 64, so the factor is at most 64/63.
"""

from __future__ import annotations

import torch
from torch import nn

from bnexp.core.arch import BN_IMPLS  # noqa: F401 (the implementations a config may name)


class ManualBatchNorm(nn.Module):
    """The seed's hand-written batch norm: gamma, beta, population mean/variance buffers.

    Training: normalise with batch moments, then pop = pop * decay + batch * (1 - decay).
    Eval: normalise with the population statistics. Works on (N, C) and (N, C, H, W).
    """

    def __init__(self, num_features: int, momentum: float = 0.01, eps: float = 1e-3) -> None:
        super().__init__()
        self.num_features = num_features
        self.momentum = momentum  # = 1 - decay; the seed's decay 0.99 is momentum 0.01
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_features))  # gamma
        self.bias = nn.Parameter(torch.zeros(num_features))  # beta
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # reduce over every dim but channels: (N,) for FC, (N, H, W) for conv ("per feature map")
        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        if self.training:
            mean = x.mean(dims)
            var = x.var(dims, unbiased=False)  # tf.nn.moments: biased
            n = x.numel() // x.shape[1]
            with torch.no_grad():
                unbiased = var * (n / max(n - 1, 1))
                self.running_mean.lerp_(mean.detach(), self.momentum)
                self.running_var.lerp_(unbiased.detach(), self.momentum)
        else:
            mean, var = self.running_mean, self.running_var
        # tf.nn.batch_normalization: (x - mean) * gamma / sqrt(var + eps) + beta
        scale = self.weight * torch.rsqrt(var + self.eps)
        return x * scale.view(shape) + (self.bias - mean * scale).view(shape)

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}, eps={self.eps}"


def build_bn(impl: str, num_features: int, dims: int, momentum: float, eps: float) -> nn.Module:
    """One factory for both implementations; `dims` is 1 for FC and 2 for conv layers."""
    if impl == "torch":
        cls = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
        return cls(num_features, eps=eps, momentum=momentum)
    if impl == "manual":
        return ManualBatchNorm(num_features, momentum=momentum, eps=eps)
    raise ValueError(f"unknown bn_impl {impl!r}; choose one of {', '.join(BN_IMPLS)}")


def is_bn(m: nn.Module) -> bool:
    return isinstance(m, (nn.modules.batchnorm._BatchNorm, ManualBatchNorm))
