"""K DeepConvNets as one module, derived from the net itself: no second definition of the architecture.

`PopulationNet(members)` deep-copies member 0 (a `bnexp.core.net.DeepConvNet`) and swaps each of its
parameterised leaves for a packed counterpart built from that leaf's own settings; every other part of the net
(DeepConvNet.forward, Block.forward with its BN placement, the TF-SAME ZeroPad2d, ReLU, flatten) is the net's
own code and runs unchanged on packed activations:

  nn.Conv2d   -> PackedConv2d: the K convs as one grouped conv; weight (K*C_out, C_in, kh, kw), member-major,
                 activations (N, K*C, H, W) (member k owns channels [k*C, (k+1)*C)); the same stride, padding,
                 dilation and bias as the leaf. The first layer's (N, 1, H, W) input is shared by all members.
  nn.Linear   -> PackedLinear: the K dense layers as one batched matmul on (N, K*F) activations; weight (K, out, in).
  BN (either implementation, bnexp.core.norm) -> the same class over K*C features: per-member statistics, since
                 a BN channel is one member's channel.

Because flatten(1) of (N, K*C, h, w) is member-major, the dense layers see each member's own flatten; the net
returns (N, K*10), reshaped here to (K, N, 10). Member k's tensors are the packed ones viewed as (K, -1)[k], so
packing (`from_members`, `from_seeds`) and unpacking (`member`) copy slices. A new BN placement, init or channel
plan in DeepConvNet reaches the population with no edit here; a new kind of parameterised layer fails loudly
(`_packed_leaf`), and tests/population checks K members against K solo nets, so a layer that mixed channels
across members would show.

Why not torch.func (stack_module_state + vmap(functional_call)), measured on this 2-core CPU (K=12, depth 4,
batch 64, one Adam step, thread CPU time, min of 3 rounds of 10 steps): vmap keeps BN running statistics right
with stacked buffers (checked against solo nets to 1e-15 in float64), but costs more with BN: bn=pre 483 ms vs
440 ms for the previous hand-written grouped population (bn=off 431 vs 426 ms); a profile shows why: vmap's BN
rule normalises, then applies each member's affine as separate ops (BN forward + backward 1.5 s vs 0.6 s, and
0.5 s of extra multiplies, per 5 steps). ManualBatchNorm's in-place lerp_ has no batching rule at all (vmap
falls back to a per-member loop). The packed net here runs the kernels the hand-written one ran (the same
grouped convs, BN and batched matmuls; its forward losses are bit-identical to it, its gradients equal to float32
rounding, as the head's matmul gets its gradient in another memory layout; bn=pre 450 vs 490 ms, bn=off 478 vs
485 ms in the same measurement), and torch.compile sees plain modules with in-place BN buffer updates, as for
the solo net.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from bnexp.core.net import DeepConvNet
from bnexp.core.norm import is_bn


class PackedConv2d(nn.Module):
    """K members' copies of `conv` as one grouped conv; weight (K*C_out, C_in, kh, kw), member-major."""

    def __init__(self, conv: nn.Conv2d, K: int) -> None:
        super().__init__()
        if conv.padding_mode != "zeros" or conv.groups != 1:
            raise ValueError(f"population: cannot pack {conv} (padding_mode zeros and groups=1 only)")
        self.K, self.c_in, self.c_out = K, conv.in_channels, conv.out_channels
        self.stride, self.padding, self.dilation = conv.stride, conv.padding, conv.dilation
        self.weight = nn.Parameter(torch.empty(K * conv.out_channels, *conv.weight.shape[1:]))
        self.bias = None if conv.bias is None else nn.Parameter(torch.empty(K * conv.out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, K*C_in, H, W), or (N, C_in, H, W) shared by all members (the images): groups K or 1
        groups = x.shape[1] // self.c_in
        return F.conv2d(x, self.weight, self.bias, self.stride, self.padding, self.dilation, groups)

    def extra_repr(self) -> str:
        return f"K={self.K}, {self.c_in}->{self.c_out}, stride={self.stride}, padding={self.padding}"


class PackedLinear(nn.Module):
    """K members' copies of `linear` as one batched matmul on (N, K*in) -> (N, K*out); weight (K, out, in)."""

    def __init__(self, linear: nn.Linear, K: int) -> None:
        super().__init__()
        self.K, self.d_in, self.d_out = K, linear.in_features, linear.out_features
        self.weight = nn.Parameter(torch.empty(K, linear.out_features, linear.in_features))
        self.bias = None if linear.bias is None else nn.Parameter(torch.empty(K, linear.out_features))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        N = x.shape[0]
        h = x.view(N, self.K, self.d_in).transpose(0, 1)  # (K, N, in): member k's rows
        w = self.weight.transpose(1, 2)  # (K, in, out)
        z = torch.bmm(h, w) if self.bias is None else torch.baddbmm(self.bias.unsqueeze(1), h, w)  # (K, N, out)
        return z.transpose(0, 1).reshape(N, self.K * self.d_out)

    def extra_repr(self) -> str:
        return f"K={self.K}, {self.d_in}->{self.d_out}, bias={self.bias is not None}"


def _widen_bn(bn: nn.Module, K: int) -> nn.Module:
    kw: dict[str, Any] = dict(eps=bn.eps, momentum=bn.momentum)
    if isinstance(bn, nn.modules.batchnorm._BatchNorm):
        kw.update(affine=bn.affine, track_running_stats=bn.track_running_stats)
    return type(bn)(K * bn.num_features, **kw)


def _packed_leaf(m: nn.Module, K: int) -> nn.Module | None:
    """The packed counterpart of a leaf with parameters or buffers; None for a module that has none."""
    if isinstance(m, nn.Conv2d):
        return PackedConv2d(m, K)
    if isinstance(m, nn.Linear):
        return PackedLinear(m, K)
    if is_bn(m):
        return _widen_bn(m, K)
    if next(m.parameters(recurse=False), None) is not None or next(m.buffers(recurse=False), None) is not None:
        raise ValueError(f"population: no packed form for {type(m).__name__}; add one in bnexp/population/net.py")
    return None


class PopulationNet(nn.Module):
    """K DeepConvNets (equal architecture) packed into one module; forward (N, 1, 28, 28) -> logits (K, N, 10).

    A (N, K, 28, 28) input gives member k its own images (channel k). The state_dict holds DeepConvNet's keys
    under `net.`, every tensor member-major (member k's tensor is `t.view(K, -1)[k]`; BN's num_batches_tracked
    is one counter for all). `from_seeds` gives member k exactly the init of `torch.manual_seed(seeds[k]);
    DeepConvNet(**arch)`, the solo run's.
    """

    def __init__(self, members: Sequence[DeepConvNet]) -> None:
        super().__init__()
        if not members:
            raise ValueError("a population needs at least one member")
        self.K = len(members)
        self.net = copy.deepcopy(members[0])
        for name, leaf in list(self.net.named_modules()):
            packed = _packed_leaf(leaf, self.K)
            if packed is not None:
                parent, _, attr = name.rpartition(".")
                setattr(self.net.get_submodule(parent), attr, packed)
        # an unpacked copy on the meta device (no memory): the shape `member(k)` fills; not a submodule
        self._template = (copy.deepcopy(members[0]).to("meta"),)
        ref = next(members[0].parameters())
        self.to(device=ref.device, dtype=ref.dtype)
        self.load_members(members)

    @classmethod
    def from_members(cls, models: Sequence[DeepConvNet]) -> PopulationNet:
        """Pack existing nets; their weights and buffers are copied."""
        return cls(models)

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], **arch: Any) -> PopulationNet:
        """Member k initialised as `torch.manual_seed(seeds[k]); DeepConvNet(**arch)` (the solo run's init)."""
        members = []
        for s in seeds:
            torch.manual_seed(int(s))
            members.append(DeepConvNet(**arch))
        return cls(members)

    @torch.no_grad()
    def load_members(self, models: Sequence[DeepConvNet]) -> None:
        if len(models) != self.K:
            raise ValueError(f"got {len(models)} members for a population of K={self.K}")
        own = self.net.state_dict()
        for k, m in enumerate(models):
            sd = m.state_dict()
            if sd.keys() != own.keys():
                diff = sorted(set(sd) ^ set(own))
                raise ValueError(f"member {k} does not match the population's architecture (keys differ: {diff[:4]})")
            for key, t in own.items():
                if t.dim() == 0:  # BN's num_batches_tracked: one counter shared by all members
                    t.copy_(sd[key])
                else:
                    t.view(self.K, -1)[k].copy_(sd[key].reshape(-1))

    @torch.no_grad()
    def member(self, k: int) -> DeepConvNet:
        """Member k as a standalone DeepConvNet (a copy, on the population's device and dtype)."""
        ref = next(self.parameters())
        m = copy.deepcopy(self._template[0]).to_empty(device=ref.device).to(ref.dtype)
        sd = m.state_dict()
        for key, t in self.net.state_dict().items():
            sd[key].copy_(t if t.dim() == 0 else t.view(self.K, -1)[k].view_as(sd[key]))
        m.train(self.training)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.net(x)  # (N, K*10): DeepConvNet.forward on packed activations
        return logits.view(x.shape[0], self.K, -1).transpose(0, 1)  # (K, N, 10)
