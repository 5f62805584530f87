"""The backends, and how a model finds its own: a file by its content (``detect``), an object by
``Backend.accepts``, a report by its ``model.format``. The only list of formats in the package."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

from reludoctor.backends.base import Backend, LoadedModel


@cache
def backends() -> tuple[Backend, ...]:
    """Every backend, most specific first (the last one is the fallback for objects)."""
    from reludoctor.backends.onnx import OnnxBackend
    from reludoctor.backends.torch import TorchBackend

    return (OnnxBackend(), TorchBackend())


def for_format(model_format: str) -> Backend:
    """The backend of a ``ModelFormat`` (a LoadedModel's or a report's ``model.format``)."""
    for backend in backends():
        if model_format in backend.formats:
            return backend
    raise KeyError(f"no backend for model format {model_format!r}")


def load(model: Any, options: Any) -> tuple[Backend, LoadedModel]:
    """A path (routed by its content) or an in-memory model -> (its backend, the loaded model).

    ``options.imports`` (``--import``) are imported first: op libraries a model needs."""
    from reludoctor.backends import detect
    from reludoctor.backends.torch.loader import import_modules

    if options.imports:
        options.imports = import_modules(options.imports)
    if isinstance(model, (str, Path)):
        path = Path(model)
        kind = detect.detect_format(path)
        for backend in backends():
            if kind in backend.file_kinds:
                return backend, backend.load_path(path, kind, options)
        raise AssertionError(f"detect_format returned {kind!r}, which no backend loads")
    for backend in backends():
        if backend.accepts(model):
            return backend, backend.load_object(model, options)
    raise AssertionError("the last backend accepts any object")
