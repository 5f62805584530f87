"""What every loader returns: the model, how it was stored, and what it expects as input."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class InputSpec:
    name: str
    shape: tuple[int | None, ...] | None  # None entries are dynamic (the batch, usually)
    dtype: str | None  # numpy dtype name, e.g. "float32", "int64"
    # How calibration data binds to it (``reludoctor.data.binding``):
    optional: bool = False  # has a default: bound only when the data or a constant gives it
    batch_axis: int | None = 0  # where its samples lie; None: not per-sample (fed whole, a constant)
    kind: str = "tensor"  # tensor | tensors (a list, one tensor per sample) | value (int, str, ...)
    keyword: bool = False  # passed by name only (a keyword-only parameter)


@dataclass
class LoadedModel:
    format: str  # torch-export | torchscript | state-dict | module | pickled-module
    module: Any  # callable: nn.Module, ScriptModule or the exported program's module
    exported: Any = None  # torch.export.ExportedProgram when the model is one
    inputs: list[InputSpec] = field(default_factory=list)
    fixed_batch: int | None = None  # batch size a fixed-shape export was traced with
    path: str | None = None
    sha256: str | None = None
    # Values of inputs the model fixed when it was made (an exported program's int and float
    # arguments): constants unless the user gives others (``reludoctor.data.binding``).
    constants: dict[str, Any] = field(default_factory=dict)
