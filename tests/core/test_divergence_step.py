"""A solo run stops at its first non-finite training loss: diverged_step is that very step (seen here by a
callback on the real Trainer), and the run trains one step past it, not on to the next validation."""

import math

import lightning as L
from helpers.env import TINY, compose_cfg

from bnexp.core.train import train


class LossWatcher(L.Callback):
    def __init__(self) -> None:
        self.losses: dict[int, float] = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        self.step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs
        self.losses[self.step] = float(loss)


def test_a_solo_run_stops_at_the_first_non_finite_training_loss(tmp_path):
    over = [o for o in TINY if not o.startswith(("trainer.max_steps", "trainer.val_every"))]
    cfg = compose_cfg([*over, "model.depth=2", "model.bn=off", "optim=sgd", "optim.lr=1e6", "trainer.max_steps=40",
                       "trainer.val_every=20"])  # fmt: skip
    watch = LossWatcher()
    m = train(cfg, output_dir=tmp_path, callbacks=[watch])
    first_bad = min(s for s, v in watch.losses.items() if not math.isfinite(v))
    assert first_bad < 19  # the test means something: the loss blew up well before the first validation
    assert m["diverged"] is True and m["diverged_step"] == first_bad
    assert m["step"] == first_bad + 1 and max(watch.losses) == first_bad  # not one batch more
