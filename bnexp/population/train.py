"""Population training: K learning-rate points of one variant trained as one model.

`PopulationNet` packs K copies of `DeepConvNet` side by side: every conv is one grouped conv (member k
owns channels [k*C, (k+1)*C) of every layer), so a BN layer over K*C channels keeps statistics per
member; the FC layer and the head are batched matmuls with weights (K, out, in). The members never
share a value: each member's forward, loss, gradient and update are exactly its solo run's, up to
float rounding (grouped vs. plain conv kernels, bmm vs. addmm).

`PopulationAdam` / `PopulationSGD` are torch.optim's single-tensor Adam / SGD written on the packed
tensors with a per-member learning-rate vector (same operations in the same order, so on equal
gradients the update equals torch's to the last bit). A member whose loss turns non-finite is marked
diverged on the device (no host sync); its loss leaves the summed loss via `torch.where` (0 * NaN would
still be NaN) and its parameters and optimizer state are frozen, so the others are untouched.

`train_population(cfg, lrs, output_dirs, seeds)` is the population counterpart of `bnexp.run.train`:
a plain PyTorch loop (no Lightning), the same batches, the same evaluation and the same metrics
contract per member, written to each member's own output dir.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from omegaconf import DictConfig, OmegaConf
from torch import nn

from bnexp.core.net import BN_MODES, DeepConvNet, conv_plan, use_bias
from bnexp.core.norm import ManualBatchNorm, build_bn

log = logging.getLogger(__name__)


# ---- the packed model -----------------------------------------------------------------------------
class GroupConv(nn.Module):
    """K members' 3x3 convs as one grouped conv; weight (K*C_out, C_in, 3, 3), member-major."""

    def __init__(self, K: int, c_in: int, c_out: int, stride: int, pad: tuple[int, int], bias: bool) -> None:
        super().__init__()
        self.K, self.c_in, self.c_out, self.stride = K, c_in, c_out, stride
        self.pad = pad  # TF SAME (top, bottom); left/right the same
        self.weight = nn.Parameter(torch.empty(K * c_out, c_in, 3, 3))
        self.bias = nn.Parameter(torch.zeros(K * c_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, K*C_in, H, W), or (N, 1, H, W) for the first layer when every member sees the same images
        groups = x.shape[1] // self.c_in  # K, or 1 for the shared single-channel input
        top, bottom = self.pad
        if top == bottom:
            return F.conv2d(x, self.weight, self.bias, self.stride, padding=top, groups=groups)
        x = F.pad(x, (top, bottom, top, bottom))  # the odd pixel at bottom/right, as DeepConvNet
        return F.conv2d(x, self.weight, self.bias, self.stride, groups=groups)  # (N, K*C_out, H', W')

    def extra_repr(self) -> str:
        return f"K={self.K}, {self.c_in}->{self.c_out}, stride={self.stride}, pad={self.pad}"


class BatchedLinear(nn.Module):
    """K members' dense layers as one batched matmul; weight (K, out, in) (member k = nn.Linear.weight)."""

    def __init__(self, K: int, d_in: int, d_out: int, bias: bool) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(K, d_out, d_in))
        self.bias = nn.Parameter(torch.zeros(K, d_out)) if bias else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # (K, N, in) @ (K, in, out) -> (K, N, out)
        if self.bias is None:
            return torch.bmm(x, self.weight.transpose(1, 2))
        return torch.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class PopBlock(nn.Module):
    """Layer + (BN over K*C channels) + ReLU in the configured order, as model.Block."""

    def __init__(self, layer: nn.Module, bn: nn.Module | None, mode: str) -> None:
        super().__init__()
        self.layer, self.bn, self.mode = layer, bn, mode

    def _bn(self, z: torch.Tensor) -> torch.Tensor:
        if z.dim() == 3:  # (K, N, F) from a batched matmul -> (N, K*F) for BN1d, and back
            K, N, Fd = z.shape
            return self.bn(z.transpose(0, 1).reshape(N, K * Fd)).view(N, K, Fd).transpose(0, 1)
        return self.bn(z)  # (N, K*C, H, W)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = self.layer(x)
        if self.mode == "pre":
            return F.relu(self._bn(z))
        if self.mode == "post":
            return self._bn(F.relu(z))
        return F.relu(z)


class PopulationNet(nn.Module):
    """K DeepConvNets packed into one module; forward (N, 1, 28, 28) -> logits (K, N, 10).

    The state_dict has DeepConvNet's keys with every tensor member-major (member k's tensor is
    `t.view(K, -1)[k]`), so `from_members` / `member` just copy slices. A fresh PopulationNet draws
    its members one after another from the global RNG; use `from_seeds` to give member k exactly the
    init of `torch.manual_seed(seeds[k]); DeepConvNet(...)` (the solo run's init for that seed).
    A (N, K, 28, 28) input gives member k its own images (channel k), for members with their own batches.
    """

    def __init__(
        self,
        K: int,
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
        init: bool = True,
    ) -> None:
        super().__init__()
        if bn not in BN_MODES:
            raise ValueError(f"unknown bn {bn!r}; choose one of {', '.join(BN_MODES)}")
        if K < 1:
            raise ValueError(f"population size K must be >= 1, got {K}")
        self.K, self.depth, self.bn_mode = K, depth, bn
        self.arch = dict(
            depth=depth,
            bn=bn,
            bias=bias,
            bn_impl=bn_impl,
            bn_momentum=bn_momentum,
            bn_eps=bn_eps,
            fc_units=fc_units,
            init_std=init_std,
            in_hw=in_hw,
            num_classes=num_classes,
        )
        has_bias = use_bias(bn, bias)

        def make_bn(n: int, dims: int) -> nn.Module | None:
            return None if bn == "off" else build_bn(bn_impl, K * n, dims, bn_momentum, bn_eps)

        plan = conv_plan(depth, in_hw)
        self.features = nn.Sequential(
            *[
                PopBlock(
                    GroupConv(K, p["c_in"], p["c_out"], p["stride"], p["pad"], has_bias), make_bn(p["c_out"], 2), bn
                )
                for p in plan
            ]
        )
        self.flat = plan[-1]["c_out"] * plan[-1]["hw_out"] ** 2
        self.fc = PopBlock(BatchedLinear(K, self.flat, fc_units, has_bias), make_bn(fc_units, 1), bn)
        self.head = BatchedLinear(K, fc_units, num_classes, True)
        if init:  # K members drawn one after another: the same init distribution as DeepConvNet
            self.load_members([DeepConvNet(**self.arch) for _ in range(K)])

    @classmethod
    def from_members(cls, models: Sequence[DeepConvNet]) -> PopulationNet:
        """Pack existing nets (same architecture) into a population; their weights and buffers are copied."""
        if not models:
            raise ValueError("from_members needs at least one DeepConvNet")
        ref = next(models[0].parameters())
        net = cls(len(models), **_arch_of(models[0]), init=False).to(device=ref.device, dtype=ref.dtype)
        net.load_members(models)
        return net

    @classmethod
    def from_seeds(cls, seeds: Sequence[int], **arch: Any) -> PopulationNet:
        """Member k initialised as `torch.manual_seed(seeds[k]); DeepConvNet(**arch)` (the solo run's init)."""
        members = []
        for s in seeds:
            torch.manual_seed(int(s))
            members.append(DeepConvNet(**arch))
        return cls.from_members(members)

    @torch.no_grad()
    def load_members(self, models: Sequence[DeepConvNet]) -> None:
        if len(models) != self.K:
            raise ValueError(f"got {len(models)} members for a population of K={self.K}")
        own = self.state_dict()
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
        with torch.random.fork_rng(devices=[]):  # its random init is overwritten: leave the global RNG alone
            m = DeepConvNet(**self.arch)
        m = m.to(device=ref.device, dtype=ref.dtype)
        sd = m.state_dict()
        for key, t in self.state_dict().items():
            sd[key].copy_(t if t.dim() == 0 else t.view(self.K, -1)[k].view_as(sd[key]))
        m.train(self.training)
        return m

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (N, 1, H, W) shared by all members, or (N, K, H, W) with member k's images in channel k
        N = x.shape[0]
        h = self.features(x)  # (N, K*C, h, w), member-major channels
        h = h.reshape(N, self.K, self.flat).transpose(0, 1)  # (K, N, C*h*w): member k's flatten(1)
        h = self.fc(h)  # (K, N, fc_units)
        return self.head(h)  # (K, N, 10) logits


def _arch_of(m: DeepConvNet) -> dict[str, Any]:
    """Recover DeepConvNet's constructor arguments from an instance (for from_members)."""
    conv = m.features[0].layer
    bn = m.features[0].bn
    arch = dict(
        depth=m.depth,
        bn=m.bn_mode,
        bias="true" if conv.bias is not None else "false",
        fc_units=m.fc.layer.out_features,
        in_hw=28,
        num_classes=m.head.out_features,
    )
    if bn is not None:
        arch.update(
            bn_impl="manual" if isinstance(bn, ManualBatchNorm) else "torch", bn_momentum=bn.momentum, bn_eps=bn.eps
        )
    # in_hw: the flattened size pins it down for the depths we use; check it
    plan = conv_plan(m.depth, 28)
    if plan[-1]["c_out"] * plan[-1]["hw_out"] ** 2 != m.fc.layer.in_features:
        raise ValueError("from_members supports 28x28 inputs only")
    return arch


# ---- losses ---------------------------------------------------------------------------------------
def member_losses(logits: torch.Tensor, y: torch.Tensor, kind: str) -> torch.Tensor:
    """Per-member mean loss, (K,), as module.compute_loss on each member; y is (N,) shared or (K, N)."""
    K, N, C = logits.shape
    y = y.expand(K, N)
    if kind == "sigmoid":  # sigmoid cross-entropy on one-hot labels, mean over N*10 per member
        target = F.one_hot(y, C).to(logits.dtype)
        return F.binary_cross_entropy_with_logits(logits, target, reduction="none").mean((1, 2))
    if kind == "softmax":
        return F.cross_entropy(logits.reshape(K * N, C), y.reshape(-1), reduction="none").view(K, N).mean(1)
    raise ValueError(f"unknown loss {kind!r}; choose sigmoid or softmax")


# ---- optimizers with a per-member learning rate ---------------------------------------------------
class _PopulationOptimizer:
    """Shared plumbing: packed params viewed as (K, -1), a float64 lr vector (K, 1), a freeze mask."""

    def __init__(self, params: Sequence[nn.Parameter], K: int, lrs: Sequence[float], weight_decay: float) -> None:
        self.params = [p for p in params if p.requires_grad]
        if len(lrs) != K:
            raise ValueError(f"got {len(lrs)} learning rates for a population of K={K}")
        self.K, self.weight_decay = K, float(weight_decay)
        dev = self.params[0].device
        # float64: lr / bias_correction is then the same double torch computes on the host
        self.lr = torch.tensor([float(v) for v in lrs], dtype=torch.float64, device=dev).view(K, 1)
        self.step_count = 0

    def zero_grad(self) -> None:
        for p in self.params:
            p.grad = None

    def _views(self) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        ps = [p.view(self.K, -1) for p in self.params]
        gs = [p.grad.reshape(self.K, -1) for p in self.params]
        if self.weight_decay != 0:  # L2 as torch: grad = grad + wd * param
            gs = torch._foreach_add(gs, ps, alpha=self.weight_decay)
        return ps, gs

    @staticmethod
    def _apply(ps: list[torch.Tensor], upds: list[torch.Tensor], alive: torch.Tensor | None) -> None:
        # frozen members get + 0 (where, not a 0-multiply: their update may be NaN)
        if alive is not None:
            a = alive.view(-1, 1)
            upds = [torch.where(a, u, 0.0) for u in upds]
        torch._foreach_add_(ps, upds)


class PopulationAdam(_PopulationOptimizer):
    """torch.optim.Adam (single-tensor path, L2 weight decay) with lr per member.

    torch: param.addcdiv_(exp_avg, denom, value=-lr/bc1), computed as param + ((-step) * exp_avg) / denom;
    here the same three roundings with a (K, 1) step vector. `step(alive)` freezes members where
    alive is False (parameters and moments keep their values).
    """

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        K: int,
        lrs: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, K, lrs, weight_decay)
        self.beta1, self.beta2 = betas
        self.eps = eps
        self.exp_avg = [torch.zeros_like(p).view(K, -1) for p in self.params]
        self.exp_avg_sq = [torch.zeros_like(p).view(K, -1) for p in self.params]

    @torch.no_grad()
    def step(self, alive: torch.Tensor | None = None) -> None:
        ps, gs = self._views()
        self.step_count += 1
        t, b1, b2 = self.step_count, self.beta1, self.beta2
        # a frozen member's moments may go NaN here; they only ever feed its own (masked) update
        torch._foreach_lerp_(self.exp_avg, gs, 1 - b1)
        torch._foreach_mul_(self.exp_avg_sq, b2)
        torch._foreach_addcmul_(self.exp_avg_sq, gs, gs, value=1 - b2)
        bc1 = 1 - b1**t
        bc2_sqrt = (1 - b2**t) ** 0.5
        neg_step = (self.lr / bc1).neg_().to(ps[0].dtype)  # (K, 1): float(-(lr / bc1)) as torch's scalar
        denom = torch._foreach_sqrt(self.exp_avg_sq)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, self.eps)
        upds = [m * neg_step for m in self.exp_avg]
        torch._foreach_div_(upds, denom)
        self._apply(ps, upds, alive)


class PopulationSGD(_PopulationOptimizer):
    """torch.optim.SGD (momentum, no dampening/nesterov, L2 weight decay) with lr per member."""

    def __init__(
        self,
        params: Sequence[nn.Parameter],
        K: int,
        lrs: Sequence[float],
        momentum: float = 0.0,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, K, lrs, weight_decay)
        self.momentum = float(momentum)
        self.buf: list[torch.Tensor] | None = None

    @torch.no_grad()
    def step(self, alive: torch.Tensor | None = None) -> None:
        ps, gs = self._views()
        self.step_count += 1
        if self.momentum != 0:
            if self.buf is None:
                self.buf = [g.clone() for g in gs]
            else:
                torch._foreach_mul_(self.buf, self.momentum)
                torch._foreach_add_(self.buf, gs)
            gs = self.buf
        neg_lr = self.lr.neg().to(ps[0].dtype)  # (K, 1)
        self._apply(ps, [g * neg_lr for g in gs], alive)


def build_optimizer(net: PopulationNet, lrs: Sequence[float], o: DictConfig | Any) -> _PopulationOptimizer:
    if o.name == "adam":
        return PopulationAdam(list(net.parameters()), net.K, lrs, weight_decay=o.weight_decay)
    if o.name == "sgd":
        return PopulationSGD(list(net.parameters()), net.K, lrs, momentum=o.momentum, weight_decay=o.weight_decay)
    raise ValueError(f"unknown optim {o.name!r}; choose adam or sgd")


def train_step(
    net: PopulationNet,
    opt: _PopulationOptimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    loss_kind: str,
    alive: torch.Tensor,
    diverged_at: torch.Tensor,
    step: int,
) -> torch.Tensor:
    """One step of all members, no host sync; returns the per-member losses (K,).

    A member whose loss is non-finite is marked dead in `alive` (bool, (K,)) and its step index is
    written to `diverged_at` (long, (K,)); from this step on it is left out of the loss and frozen.
    """
    losses = member_losses(net(x), y, loss_kind)  # (K,)
    bad = alive & ~torch.isfinite(losses)
    diverged_at.masked_fill_(bad, step)
    alive &= ~bad
    # the sum of the live members' losses: each member gets exactly its own gradient; where(), not a
    # 0/1 multiply, so a dead member's NaN stays out of the sum
    torch.where(alive, losses, 0.0).sum().backward()
    opt.step(alive)
    opt.zero_grad()
    return losses.detach()


# ---- evaluation -----------------------------------------------------------------------------------
@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    was = net.training
    net.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        net.train(was)


def _sums(net: PopulationNet, batches, kind: str) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Summed loss (K,) and correct count (K,) over `batches` in the net's current mode; stays on the device."""
    loss_sum, correct, n = 0, 0, 0
    for x, y in batches:
        logits = net(x)  # (K, N, 10)
        loss_sum = loss_sum + member_losses(logits, y, kind) * y.shape[0]
        correct = correct + (logits.argmax(-1) == y).sum(1)
        n += y.shape[0]
    return loss_sum, correct, n


def evaluate(net: PopulationNet, batches, kind: str, batchstats: bool) -> dict[str, list[float]]:
    """Per-member val metrics as module.py: population statistics, and batch statistics (buffers restored)."""
    from bnexp.core.lit import batch_stats

    with _eval_mode(net):
        loss, correct, n = _sums(net, batches, kind)
        out = {"val/loss": loss / n, "val/acc": correct.double() / n}
        if batchstats:
            with batch_stats(net):
                bl, bc, _ = _sums(net, batches, kind)
            out["val/loss_batchstats"], out["val/acc_batchstats"] = bl / n, bc.double() / n
        else:
            out["val/loss_batchstats"], out["val/acc_batchstats"] = out["val/loss"], out["val/acc"]
    return {k: v.double().cpu().tolist() for k, v in out.items()}  # one host sync


# ---- training -------------------------------------------------------------------------------------
def resolve_device(accelerator: str) -> torch.device:
    a = str(accelerator)
    if a == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if torch.backends.mps.is_available() else torch.device("cpu")
    if a in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            from bnexp.cli import ConfigError

            raise ConfigError(f"trainer.accelerator={a} but no CUDA device is visible; use trainer.accelerator=cpu")
        return torch.device("cuda")
    if a in ("cpu", "mps"):
        return torch.device(a)
    from bnexp.cli import ConfigError

    raise ConfigError(f"trainer.accelerator={a!r} is not supported by population training; choose auto, cpu, gpu")


PRECISIONS = {"32-true": torch.float32, "32": torch.float32, "64-true": torch.float64, "64": torch.float64}


def _check_supported(cfg: DictConfig) -> None:
    from bnexp.cli import ConfigError

    t = cfg.trainer
    if str(t.precision) not in PRECISIONS:
        raise ConfigError(
            f"trainer.precision={t.precision} is not supported by population training; choose one of "
            f"{', '.join(PRECISIONS)}"
        )
    if int(t.num_nodes) != 1 or str(t.strategy) not in ("auto", "single_device") or str(t.devices) not in ("1", "auto"):
        raise ConfigError("population training runs on one device; set trainer.devices=1 trainer.strategy=auto")
    if cfg.model.sync_bn:
        raise ConfigError("model.sync_bn=true needs several devices; population training runs on one")


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


def train_population(
    cfg: DictConfig,
    lrs: Sequence[float],
    output_dirs: Sequence[str | os.PathLike],
    seeds: Sequence[int] | None = None,
    on_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """Train K = len(lrs) learning rates of one variant together; return each member's `run.train` metrics.

    Member k equals the solo run `train(cfg with optim.lr=lrs[k], seed=seeds[k])`: the same init
    (torch.manual_seed(seeds[k]) before building the net) and the same batches (BatchStream seeded by
    its seed; members with one seed share one stream). seeds defaults to cfg.seed for every member.
    Each output dir gets that member's config.yaml (lr and seed filled in) and metrics.json. The
    timing keys (wall_s, train_s, steps_per_s) are the population's, shared by its members.
    """
    from bnexp.core.config import validate
    from bnexp.core.data import BatchStream, eval_batches, load_mnist, make_splits

    validate(cfg)
    _check_supported(cfg)
    K = len(lrs)
    seeds = [int(cfg.seed)] * K if seeds is None else [int(s) for s in seeds]
    if K < 1 or len(output_dirs) != K or len(seeds) != K:
        raise ValueError(f"need one output dir and seed per lr: {K} lrs, {len(output_dirs)} dirs, {len(seeds)} seeds")
    for lr in lrs:
        if not (math.isfinite(lr) and lr > 0):
            raise ValueError(f"learning rates must be positive numbers, got {lr}")

    outs = [Path(d) for d in output_dirs]
    for out, lr, s in zip(outs, lrs, seeds, strict=True):
        c = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        c.optim.lr, c.seed = float(lr), s
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(OmegaConf.to_yaml(c, resolve=True))

    t0 = time.perf_counter()
    device = resolve_device(cfg.trainer.accelerator)
    d, m, t = cfg.data, cfg.model, cfg.trainer
    splits = make_splits(load_mnist(d.dir, download=d.download), d.limit_train, d.limit_val, d.limit_test)
    dtype = PRECISIONS[str(t.precision)]  # 64-true: as Lightning's double precision, model and inputs in float64
    if dtype != torch.float32:
        splits = type(splits)(**{k: v.to(dtype) if v.is_floating_point() else v for k, v in vars(splits).items()})
    if d.on_device:
        splits = splits.to(device)
    from bnexp.core.train import model_kwargs

    net = PopulationNet.from_seeds(seeds, **model_kwargs(cfg)).to(device=device, dtype=dtype)
    opt = build_optimizer(net, lrs, cfg.optim)
    if t.compile != "none":
        log.warning("trainer.compile=%s is not applied in population training (plain eager loop)", t.compile)

    # batches: one stream per distinct seed; members with one seed share it (solo: BatchStream(seed))
    uniq = sorted(set(seeds))
    streams = {s: iter(BatchStream(splits.train_x, splits.train_y, d.batch_size, s)) for s in uniq}
    shared = len(uniq) == 1
    val = eval_batches(splits.val_x, splits.val_y, d.eval_batch_size)

    def to_dev(xy):
        return xy[0].to(device, non_blocking=True), xy[1].to(device, non_blocking=True)

    if not d.on_device:
        val = [to_dev(b) for b in val]

    loss_kind, has_bn = cfg.loss, m.bn != "off"
    check_every = 1 if device.type == "cpu" else t.log_every
    alive = torch.ones(K, dtype=torch.bool, device=device)
    div_dev = torch.full((K,), -1, dtype=torch.long, device=device)  # step index whose loss was non-finite
    diverged_step: list[int | None] = [None] * K
    stop_step: list[int | None] = [None] * K  # steps trained when stopped (solo: trainer.global_step)
    history: list[list[dict]] = [[] for _ in range(K)]
    finished = [False] * K  # a diverged member's final validation is recorded
    log.info(
        "population K=%d bn=%s bias=%s depth=%d bn_impl=%s lrs=[%s] steps=%d on %s",
        K,
        m.bn,
        m.bias,
        m.depth,
        m.bn_impl,
        ", ".join(f"{v:g}" for v in lrs),
        t.max_steps,
        device,
    )

    def sync_divergence() -> None:
        steps = div_dev.cpu().tolist()  # one host sync
        for k, sk in enumerate(steps):
            if sk >= 0 and diverged_step[k] is None:
                diverged_step[k], stop_step[k] = sk, sk + 1  # solo: the diverging step still runs
                log.warning("member %d (lr=%g): non-finite loss at step %d, frozen, marked diverged", k, lrs[k], sk)

    def validate_now(step: int, final: bool = False) -> None:
        ms = evaluate(net, val, loss_kind, has_bn)
        for k in range(K):
            if finished[k] or (final and history[k] and history[k][-1]["step"] == (stop_step[k] or step)):
                continue
            mk = {key: ms[key][k] for key in ms}
            if diverged_step[k] is not None:  # frozen: its one last validation, at the step it stopped
                finished[k] = True
                at = stop_step[k]
            else:
                at = step
            mk["val/acc_best"] = max([h["val/acc"] for h in history[k]] + [mk["val/acc"]])
            history[k].append({"step": at, **mk})
            if diverged_step[k] is None and not math.isfinite(mk["val/loss"]) and not final:
                # solo: a non-finite validation loss during fit stops the run at this step
                diverged_step[k], stop_step[k], finished[k] = step, step, True
                alive[k] = False

    det, bench = torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.benchmark
    if t.deterministic:
        torch.use_deterministic_algorithms(True)
    elif device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # grouped convs: let cuDNN pick per (static) shape
    net.train()
    t_fit = time.perf_counter()
    done = 0
    try:
        for s in range(t.max_steps):
            if on_step is not None:  # e.g. a sweep worker's stop check: it may raise to end the run
                on_step()
            if shared:
                x, y = next(streams[uniq[0]])  # (N, 1, 28, 28), (N,)
            else:
                got = {u: next(it) for u, it in streams.items()}
                x = torch.cat([got[sk][0] for sk in seeds], 1)  # (N, K, 28, 28): member k's images in channel k
                y = torch.stack([got[sk][1] for sk in seeds])  # (K, N)
            if not d.on_device:
                x, y = to_dev((x, y))
            train_step(net, opt, x, y, loss_kind, alive, div_dev, s)
            done = s + 1
            if done % t.val_every == 0:
                sync_divergence()
                validate_now(done)
            elif s % check_every == 0 or done == t.max_steps:
                sync_divergence()
            if all(ds is not None for ds in diverged_step):
                log.warning("every member diverged by step %d; stopping", s)
                break
        train_s = time.perf_counter() - t_fit
        sync_divergence()
        for k in range(K):
            if stop_step[k] is None:
                stop_step[k] = done
        validate_now(done, final=True)  # members whose last validation is not at their stop step
        test = _test(net, splits, cfg, to_dev if not d.on_device else None)
    finally:
        torch.use_deterministic_algorithms(det)
        torch.backends.cudnn.benchmark = bench

    wall_s = time.perf_counter() - t0
    results = []
    for k in range(K):
        final = {
            key: history[k][-1][key] for key in ("val/loss", "val/acc", "val/loss_batchstats", "val/acc_batchstats")
        }
        final["val/acc_best"] = max(h["val/acc"] for h in history[k])
        final.update({key: v[k] for key, v in test.items()})
        met: dict[str, Any] = {key: _finite_or_none(float(v)) for key, v in final.items()}
        met.update(
            diverged=diverged_step[k] is not None,
            diverged_step=diverged_step[k],
            step=int(stop_step[k]),
            wall_s=wall_s,
            train_s=train_s,
            steps_per_s=done / train_s if train_s > 0 else None,
            bn=m.bn,
            bias=m.bias,
            depth=int(m.depth),
            lr=float(lrs[k]),
            seed=seeds[k],
            val_history=[{key: _finite_or_none(v) if key != "step" else v for key, v in h.items()} for h in history[k]],
            population=K,
        )
        (outs[k] / "metrics.json").write_text(json.dumps(met, indent=2))
        results.append(met)
    log.info("population K=%d: %d steps in %.1fs (%.1f steps/s)", K, done, train_s, done / max(train_s, 1e-9))
    return results


def _test(net: PopulationNet, splits, cfg: DictConfig, to_dev) -> dict[str, list[float]]:
    """test/loss, test/acc on the test set in big batches; test/acc_single: the first single_n images one at a time."""
    from bnexp.core.data import eval_batches

    d = cfg.data
    full = eval_batches(splits.test_x, splits.test_y, d.eval_batch_size)
    n = min(d.single_n, splits.test_x.shape[0])
    single = eval_batches(splits.test_x[:n], splits.test_y[:n], 1)
    if to_dev is not None:
        full, single = [to_dev(b) for b in full], [to_dev(b) for b in single]
    with _eval_mode(net):
        loss, correct, nt = _sums(net, full, cfg.loss)
        _, sc, ns = _sums(net, single, cfg.loss)
        out = {"test/loss": loss / nt, "test/acc": correct.double() / nt, "test/acc_single": sc.double() / ns}
    return {k: v.double().cpu().tolist() for k, v in out.items()}
