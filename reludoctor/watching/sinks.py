"""Where a watcher's records go: JSON lines and TensorBoard scalars, behind ``write(records)``.

Records are plain dicts (``type``: ``step`` or ``alert``), written a flush at a time.
"""

from __future__ import annotations

import json
import os
from typing import Any, Protocol

TAG = "reludoctor"
RATIOS = ("dead", "near_dead", "dormant")


class Sink(Protocol):
    def write(self, records: list[dict]) -> None: ...

    def close(self) -> None: ...


class JsonlSink:
    """One JSON object per line, appended: a flush's records go out in one write and are
    flushed, so a reader (or a crash) never sees half a batch written by this process."""

    def __init__(self, path: str | os.PathLike):
        self.path = os.fspath(path)
        self._file: Any = None

    def write(self, records: list[dict]) -> None:
        if not records:
            return
        if self._file is None:
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close())
        self._file.write("".join(json.dumps(record, sort_keys=True) + "\n" for record in records))
        self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


class TensorBoardSink:
    """``reludoctor/<ratio>_ratio/<site>`` scalars per observed step, on any object with
    ``add_scalar(tag, value, step)`` (a ``SummaryWriter``). The writer is the caller's: it is
    flushed, never closed."""

    def __init__(self, writer: Any):
        if not callable(getattr(writer, "add_scalar", None)):
            raise TypeError("tensorboard= needs an object with add_scalar(tag, value, step), "
                            "e.g. torch.utils.tensorboard.SummaryWriter")
        self.writer = writer

    def write(self, records: list[dict]) -> None:
        for record in records:
            if record["type"] != "step":
                continue
            for site, values in record["sites"].items():
                for ratio in RATIOS:
                    self.writer.add_scalar(f"{TAG}/{ratio}_ratio/{site}", values["ratios"][ratio], record["step"])
        if records and callable(getattr(self.writer, "flush", None)):
            self.writer.flush()

    def close(self) -> None:
        pass
