"""torch.optim's Adam and SGD on packed parameters with one learning rate per member, and a freeze mask.

torch.optim has no per-slice learning rate; these are torch.optim.Optimizer subclasses (so Lightning's manual
optimization drives them as any optimizer) whose parameters are a population's packed tensors (member k's slice
is `p.view(K, -1)[k]`, bnexp.population.net). The update is torch's single-tensor path, written on (K, -1) views
with a (K, 1) learning-rate vector: the same operations in the same order, so on equal gradients Adam's update
equals torch's to the last bit (tests/population). The choice between them is bnexp.core.lit.build_optimizer's.

`alive` ((K,) bool on the device, set by the training module; None: all) freezes members where it is False:
their parameters get + 0 (torch.where, not a 0-multiply: their update may be NaN) and their moments only ever
feed their own masked update.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch


class _PopulationOptimizer(torch.optim.Optimizer):
    """One param group of packed tensors; `lr` is one value per member (K = len(lr))."""

    def __init__(self, params: Iterable[torch.Tensor], lr: Sequence[float], defaults: dict[str, Any]) -> None:
        lrs = [float(v) for v in lr]
        if not lrs or any(not (v > 0) for v in lrs):
            raise ValueError(f"learning rates must be positive, got {lrs}")
        super().__init__(list(params), dict(lr=lrs, **defaults))
        if len(self.param_groups) != 1:
            raise ValueError("a population optimizer takes one parameter group")
        self.K = len(lrs)
        self.alive: torch.Tensor | None = None
        self.step_count = 0
        self._lr: torch.Tensor | None = None

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "step_count": self.step_count}  # Adam's bias correction: a resumed run

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        state_dict = dict(state_dict)
        self.step_count = int(state_dict.pop("step_count", 0))
        super().load_state_dict(state_dict)
        self._lr = None

    def lr_vector(self, ref: torch.Tensor) -> torch.Tensor:
        """(K, 1) float64 on ref's device: lr / bias_correction is then the double torch computes on the host."""
        if self._lr is None or self._lr.device != ref.device:
            self._lr = torch.tensor(self.param_groups[0]["lr"], dtype=torch.float64, device=ref.device).view(self.K, 1)
        return self._lr

    def _views(self) -> tuple[list[torch.Tensor], list[torch.Tensor], list[dict]]:
        group = self.param_groups[0]
        params = [p for p in group["params"] if p.grad is not None]
        ps = [p.view(self.K, -1) for p in params]
        gs = [p.grad.reshape(self.K, -1) for p in params]
        if group["weight_decay"] != 0:  # L2 as torch: grad = grad + wd * param
            gs = torch._foreach_add(gs, ps, alpha=group["weight_decay"])
        return ps, gs, [self.state[p] for p in params]

    def _apply(self, ps: list[torch.Tensor], upds: list[torch.Tensor]) -> None:
        if self.alive is not None:
            a = self.alive.view(-1, 1)
            upds = [torch.where(a, u, 0.0) for u in upds]
        torch._foreach_add_(ps, upds)

    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None) -> Any:
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        ps, gs, states = self._views()
        if ps:
            self.step_count += 1
            self._update(ps, gs, states, self.param_groups[0])
        return loss

    def _update(self, ps: list[torch.Tensor], gs: list[torch.Tensor], states: list[dict], group: dict) -> None:
        raise NotImplementedError


class PopulationAdam(_PopulationOptimizer):
    """torch.optim.Adam (single-tensor path, L2 weight decay) with lr per member.

    torch: param.addcdiv_(exp_avg, denom, value=-lr/bc1), computed as param + ((-step) * exp_avg) / denom;
    here the same three roundings with a (K, 1) step vector.
    """

    def __init__(
        self,
        params: Iterable[torch.Tensor],
        lr: Sequence[float],
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(params, lr, dict(betas=betas, eps=eps, weight_decay=weight_decay))

    def _update(self, ps: list[torch.Tensor], gs: list[torch.Tensor], states: list[dict], group: dict) -> None:
        for s, p in zip(states, ps, strict=True):
            if not s:
                s["exp_avg"], s["exp_avg_sq"] = torch.zeros_like(p), torch.zeros_like(p)
        exp_avg, exp_avg_sq = [s["exp_avg"] for s in states], [s["exp_avg_sq"] for s in states]
        (b1, b2), t = group["betas"], self.step_count
        torch._foreach_lerp_(exp_avg, gs, 1 - b1)
        torch._foreach_mul_(exp_avg_sq, b2)
        torch._foreach_addcmul_(exp_avg_sq, gs, gs, value=1 - b2)
        bc1 = 1 - b1**t
        bc2_sqrt = (1 - b2**t) ** 0.5
        neg_step = (self.lr_vector(ps[0]) / bc1).neg_().to(ps[0].dtype)  # (K, 1): float(-(lr / bc1)) as torch's
        denom = torch._foreach_sqrt(exp_avg_sq)
        torch._foreach_div_(denom, bc2_sqrt)
        torch._foreach_add_(denom, group["eps"])
        upds = [m * neg_step for m in exp_avg]
        torch._foreach_div_(upds, denom)
        self._apply(ps, upds)


class PopulationSGD(_PopulationOptimizer):
    """torch.optim.SGD (momentum, no dampening/nesterov, L2 weight decay) with lr per member."""

    def __init__(
        self, params: Iterable[torch.Tensor], lr: Sequence[float], momentum: float = 0.0, weight_decay: float = 0.0
    ) -> None:
        super().__init__(params, lr, dict(momentum=float(momentum), weight_decay=weight_decay))

    def _update(self, ps: list[torch.Tensor], gs: list[torch.Tensor], states: list[dict], group: dict) -> None:
        momentum = group["momentum"]
        if momentum != 0:
            if "buf" not in states[0]:
                for s, g in zip(states, gs, strict=True):
                    s["buf"] = g.clone()
            else:
                bufs = [s["buf"] for s in states]
                torch._foreach_mul_(bufs, momentum)
                torch._foreach_add_(bufs, gs)
            gs = [s["buf"] for s in states]
        neg_lr = self.lr_vector(ps[0]).neg().to(ps[0].dtype)  # (K, 1)
        self._apply(ps, [g * neg_lr for g in gs])


KINDS = {"adam": PopulationAdam, "sgd": PopulationSGD}  # for bnexp.core.lit.build_optimizer
