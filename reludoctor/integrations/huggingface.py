"""``ReludoctorCallback``: ``reludoctor.watch`` in a Hugging Face ``Trainer`` (extra: huggingface).

The Trainer calls the model itself, so the watcher's forward hooks see its training forwards;
the callback sets the step to ``state.global_step`` and closes the watcher at the end.
"""

from __future__ import annotations

from typing import Any

from reludoctor.integrations import require

require("transformers", "huggingface")

from transformers import TrainerCallback  # noqa: E402

from reludoctor.watching import Watcher  # noqa: E402


class ReludoctorCallback(TrainerCallback):
    """Watch the Trainer's model; ``options``: those of ``reludoctor.watch``. ``self.watcher``
    holds the results after the run."""

    def __init__(self, every: int = 50, window: int = 20, log: Any = None, **options: Any):
        self.options = {"every": every, "window": window, "log": log, **options}
        self.watcher: Watcher | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, model: Any = None, optimizer: Any = None,
                       **kwargs: Any) -> None:
        if self.watcher is None and model is not None:
            options = {"optimizer": optimizer, **self.options}
            self.watcher = Watcher(model, **options)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is not None:
            self.watcher.step = state.global_step

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.watcher is not None:
            self.watcher.close()
