"""A third way to judge a trained net: recalibrated ("precise BN") statistics.

After training, each BN layer's population statistics are recomputed with the final weights over
`trainer.recal_batches` training batches (the first ones of the run's own training stream), by PyTorch's own
routine, `torch.optim.swa_utils.update_bn` (a cumulative average: momentum None), then the validation set is
scored once in inference mode: `val/acc_recal`, `val/loss_recal`. The run's own running averages are put back
afterwards, so the other metrics (and a checkpoint) are the run's.

What it tells: where population statistics fail but batch statistics pass, a recalibrated pass that passes
says the weights are fine and only BN's running averages lagged (momentum 0.01 over fast-moving weights), which
a cheap recalibration fixes; a recalibrated pass that fails too says training itself went wrong.

Only the library BN layer (`model.bn_impl=torch`) is recalibrated: update_bn knows torch's _BatchNorm, and
the tutorial's hand-written layer is not one (its runs record None). A population trains K nets in one
module; its members record None too (bnexp.population).
"""

from __future__ import annotations

import itertools
import logging
from typing import Any

import torch
from torch import nn

from bnexp.core.metrics import EvalSums
from bnexp.record import VAL_ACC, VAL_ACC_RECAL, VAL_LOSS, VAL_LOSS_RECAL

log = logging.getLogger("bnexp")


def _library_bns(model: nn.Module) -> list[nn.Module]:
    return [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]


@torch.no_grad()
def recalibrated(module: Any, dm: Any, n_batches: int) -> dict[str, float]:
    """{"val/acc_recal", "val/loss_recal"} of `module` (a BNExpModule after training) with its BN statistics
    recomputed over `n_batches` training batches; {} for a net without library BN layers or n_batches 0."""
    model = getattr(module.model, "_orig_mod", module.model)  # a compiled net's own module: no graph is compiled
    bns = _library_bns(model)
    if n_batches <= 0 or not bns:
        return {}
    p = next(model.parameters())
    device, dtype = p.device, p.dtype  # the net's precision (a float64 run gets float64 batches, as Lightning does)
    saved = {k: v.clone() for k, v in model.state_dict().items() if "running_" in k or "num_batches_tracked" in k}
    was_training = model.training
    try:
        batches = ((x.to(device, dtype), y) for x, y in itertools.islice(iter(dm.train_dataloader()), n_batches))
        torch.optim.swa_utils.update_bn(batches, model, device=device)
        model.eval()
        sums = EvalSums(module.hparams.loss)
        for x, y in dm.val_dataloader():
            sums.add("", model(x.to(device, dtype)), y.to(device))
        m = sums.validation()
        return {VAL_ACC_RECAL: m[VAL_ACC], VAL_LOSS_RECAL: m[VAL_LOSS]}
    finally:
        model.load_state_dict({**model.state_dict(), **saved})
        model.train(was_training)
