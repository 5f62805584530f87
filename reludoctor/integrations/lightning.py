"""``ReludoctorCallback``: ``reludoctor.watch`` in a Lightning ``Trainer`` (extra: lightning).

Lightning calls ``training_step`` directly, not the module's ``__call__``, so the model's own
forward hooks would miss a ``training_step`` that calls ``self.net(x)``. The callback marks the
step instead: observation begins at ``on_train_batch_start`` (step = ``trainer.global_step``)
and ends at ``on_before_backward`` (or ``on_train_batch_end`` when no backward ran).
"""

from __future__ import annotations

from typing import Any

from reludoctor.integrations import require

require("lightning", "lightning")

import lightning.pytorch as pl  # noqa: E402
from lightning.pytorch.loggers import TensorBoardLogger  # noqa: E402

from reludoctor.watching import Watcher  # noqa: E402


class ReludoctorCallback(pl.Callback):
    """Watch the LightningModule's training steps; ``options``: those of ``reludoctor.watch``.
    A ``TensorBoardLogger`` among the trainer's loggers gets the scalars unless
    ``tensorboard=`` is given. ``self.watcher`` holds the results after the run."""

    def __init__(self, every: int = 50, window: int = 20, log: Any = None, **options: Any):
        self.options = {"every": every, "window": window, "log": log, **options}
        self.watcher: Watcher | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if stage != "fit" or self.watcher is not None:
            return
        options = dict(self.options)
        if "tensorboard" not in options:
            board = next((lg for lg in trainer.loggers if isinstance(lg, TensorBoardLogger)), None)
            options["tensorboard"] = None if board is None else board.experiment
        self.watcher = Watcher(pl_module, hooks=False, **options)

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.watcher is not None and self.watcher.optimizer is None and trainer.optimizers:
            self.watcher.optimizer = trainer.optimizers[0]

    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule, batch: Any,
                             batch_idx: int) -> None:
        if self.watcher is not None:
            self.watcher.step = trainer.global_step
            self.watcher.begin_step(tuple(batch.values()) if isinstance(batch, dict) else (batch,))

    def on_before_backward(self, trainer: pl.Trainer, pl_module: pl.LightningModule, loss: Any) -> None:
        if self.watcher is not None and self.watcher.observing:
            self.watcher.end_step()

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any,
                           batch_idx: int) -> None:
        if self.watcher is not None and self.watcher.observing:
            self.watcher.end_step()

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self.watcher is not None:
            self.watcher.close()

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        if self.watcher is not None:  # a run that raised: hooks and dispatch mode undone too
            self.watcher.close()
