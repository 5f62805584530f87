"""ONNX models: a ``.onnx`` file (with external data beside it) or an in-memory ModelProto.

External data is read only after every tensor's ``location`` has been checked to stay inside
the model's folder (no absolute paths, no ``..`` escapes, no symlinks leading out): the file is
parsed with ``load_external_data=False`` first, the locations are checked, then the data is
loaded. Nothing in an ONNX file executes code; custom-op libraries are never registered.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any, Iterator

from reludoctor import safeio
from reludoctor.backends.base import LoadedModel
from reludoctor.backends.torch.loader import sha256_of  # plain hashlib: does not import torch
from reludoctor.core.timings import phase
from reludoctor.data.binding import InputSpec
from reludoctor.errors import ModelLoadError, first_line
from reludoctor.options import ModelFormat

MIN_OPSET = 7  # the in-graph statistics use ops (Cast, HardSigmoid, pools) of opset 7 and up
DEFAULT_DOMAINS = ("", "ai.onnx")


def _graphs(graph: Any) -> Iterator[Any]:
    """The graph (or a function body) and every subgraph (If branches, Loop and Scan bodies)
    inside it, depth first."""
    yield graph
    for node in graph.node:
        for attribute in node.attribute:
            if attribute.HasField("g"):
                yield from _graphs(attribute.g)
            for subgraph in attribute.graphs:
                yield from _graphs(subgraph)


def bodies(model: Any) -> Iterator[Any]:
    """The main graph, every local function's body, and every subgraph inside any of them."""
    yield from _graphs(model.graph)
    for function in model.functions:
        yield from _graphs(function)


def _tensors(model: Any) -> Iterator[Any]:
    """Every TensorProto that can hold data: initializers (dense and sparse) and tensor
    attributes (dense and sparse), in the main graph, in local functions and in every subgraph
    of either (an If branch inside a function body included)."""
    for body in bodies(model):
        yield from getattr(body, "initializer", ())  # a FunctionProto has none
        for sparse in getattr(body, "sparse_initializer", ()):
            yield sparse.values
            yield sparse.indices
        for node in body.node:
            for attribute in node.attribute:
                if attribute.HasField("t"):
                    yield attribute.t
                yield from attribute.tensors
                sparse_tensors = list(attribute.sparse_tensors)
                if attribute.HasField("sparse_tensor"):
                    sparse_tensors.insert(0, attribute.sparse_tensor)
                for sparse in sparse_tensors:
                    yield sparse.values
                    yield sparse.indices


def _external(tensor: Any) -> bool:
    from onnx import TensorProto

    return tensor.HasField("data_location") and tensor.data_location == TensorProto.EXTERNAL


def _check_external_locations(model: Any, path: Path) -> bool:
    """Refuse external data outside the model's folder; True when the model has any."""
    folder = path.parent
    real_folder = Path(os.path.realpath(folder))
    found = False
    for tensor in _tensors(model):
        if not _external(tensor):
            continue
        found = True
        entries = {entry.key: entry.value for entry in tensor.external_data}
        location = entries.get("location", "")
        shown = repr(location) if location else "(none)"
        if not location or "\x00" in location:
            raise ModelLoadError(f"{path}: tensor '{tensor.name}' has external data without a valid "
                                 f"location {shown}", "re-export the model")
        if os.path.isabs(location) or location.startswith(("/", "\\")) or ":" in location[:3]:
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' refers to external data at the absolute path "
                f"{location!r}; refused", "external data must lie in the model's folder")
        parts = location.replace("\\", "/").split("/")
        target = Path(os.path.realpath(folder / location))
        if ".." in parts or not target.is_relative_to(real_folder):
            raise ModelLoadError(
                f"{path}: tensor '{tensor.name}' refers to external data {location!r}, which leaves "
                f"the model's folder; refused", "external data must lie in the model's folder")
        try:
            mode = os.stat(target).st_mode
        except FileNotFoundError:
            raise ModelLoadError(f"{path}: external data file {location!r} of tensor "
                                 f"'{tensor.name}' is missing", "copy it next to the model file") from None
        except OSError as exc:
            raise ModelLoadError(f"{path}: external data file {location!r} of tensor "
                                 f"'{tensor.name}': {safeio.os_reason(exc)}") from None
        if not stat.S_ISREG(mode):  # a FIFO would block the read, a device never end
            raise ModelLoadError(f"{path}: external data {location!r} of tensor '{tensor.name}' is "
                                 "not a regular file", "external data must be a regular file")
        safeio.note_read(folder / location)
    return found


def _dtype_name(elem_type: int) -> str | None:
    from onnx import TensorProto, helper

    if elem_type == TensorProto.UNDEFINED:
        return None
    try:
        import numpy as np

        return np.dtype(helper.tensor_dtype_to_np_dtype(elem_type)).name
    except (KeyError, TypeError, ValueError):
        return TensorProto.DataType.Name(elem_type).lower()


def _inputs(model: Any) -> tuple[list[InputSpec], int | None]:
    """The graph's inputs and the model's fixed batch (None: dynamic).

    A size written as a number <= 0 (``dim_value: -1`` or 0, as some exporters write a dynamic
    size), a ``dim_param`` or no size at all is dynamic (None). The first input with a shape
    decides: a fixed first size is a fixed batch (each input's batch axis is then its first axis
    of that size); a dynamic one is the batch, and each input's batch axis is the dimension of
    the same name (``state [2, batch, 128]``: axis 1), else its first dynamic one. An input
    without a batch axis (a scalar ``sr``, an ``h [1, 1, 128]`` next to dynamic inputs) is fed
    whole: a constant (``--const``, or an array of exactly its shape)."""
    initializers = {t.name for t in model.graph.initializer}
    found = []
    for value in model.graph.input:
        if value.name in initializers:  # IR < 4 lists initializers as (overridable) inputs
            continue
        shape: tuple[int | None, ...] | None = None
        symbols: tuple[str, ...] = ()
        dtype = None
        if value.type.HasField("tensor_type"):
            tensor_type = value.type.tensor_type
            dtype = _dtype_name(tensor_type.elem_type)
            if tensor_type.HasField("shape"):
                dims = list(tensor_type.shape.dim)
                shape = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0
                              else None for d in dims)
                symbols = tuple(d.dim_param if d.HasField("dim_param") else "" for d in dims)
        found.append((value.name, shape, symbols, dtype))
    reference = next((shape, symbols) for _, shape, symbols, _ in found if shape) \
        if any(shape for _, shape, _, _ in found) else (None, ())
    fixed = reference[0][0] if reference[0] else None
    batch_symbol = reference[1][0] if reference[0] and fixed is None else ""
    specs = []
    for name, shape, symbols, dtype in found:
        axis: int | None = 0
        if shape is not None:
            if fixed is not None:
                axis = shape.index(fixed) if fixed in shape else None
            elif batch_symbol and batch_symbol in symbols:
                axis = symbols.index(batch_symbol)
            else:
                axis = shape.index(None) if None in shape else None
        specs.append(InputSpec(name, shape, dtype, batch_axis=axis))
    return specs, fixed


def _value_infos(model: Any) -> Iterator[Any]:
    for graph in _graphs(model.graph):
        yield from graph.input
        yield from graph.output
        yield from graph.value_info


def _numeric_dynamic_dims(model: Any) -> bool:
    """Whether a declared size is written as a number <= 0 (``dim_value: -1`` or 0)."""
    return any(d.HasField("dim_value") and d.dim_value <= 0
               for value in _value_infos(model) if value.type.HasField("tensor_type")
               for d in value.type.tensor_type.shape.dim)


def _symbolic_dynamic_dims(model: Any) -> None:
    """Sizes written as numbers <= 0 become symbolic (``dim_param``), in place: onnxruntime takes
    ``dim_value: 0`` for a fixed size of 0 and refuses every batch; both mean "dynamic" here."""
    count = 0
    for value in _value_infos(model):
        if not value.type.HasField("tensor_type"):
            continue
        for dim in value.type.tensor_type.shape.dim:
            if dim.HasField("dim_value") and dim.dim_value <= 0:
                count += 1
                dim.dim_param = f"unk__reludoctor_{count}"  # clears dim_value (a oneof)


def opset_of(model: Any) -> int | None:
    for entry in model.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    return None


def _checked(model: Any, where: str) -> LoadedModel:
    if not model.HasField("graph") or model.ir_version <= 0:
        raise ModelLoadError(f"{where}: not an ONNX model (no graph or IR version)",
                             "the file may be corrupt, truncated or of another format")
    opset = opset_of(model)
    if opset is None and model.ir_version >= 3:
        raise ModelLoadError(f"{where}: the ONNX model declares no default-domain opset",
                             "re-export the model")
    if opset is not None and opset < MIN_OPSET:
        raise ModelLoadError(f"{where}: ONNX opset {opset} is too old (reludoctor needs {MIN_OPSET}+)",
                             "convert it with onnx.version_converter.convert_version")
    inputs, fixed = _inputs(model)
    if not inputs:
        raise ModelLoadError(f"{where}: the ONNX graph has no inputs to feed")
    from reludoctor.data.calibration import check_model_inputs

    check_model_inputs(inputs, fixed, where)  # sizes from the file: bounded before allocating
    return LoadedModel(ModelFormat.ONNX, model, inputs=inputs, fixed_batch=fixed)


def load_path(path: Path) -> LoadedModel:
    """Parse a .onnx file, check its external data locations, then load that data."""
    with phase("import onnx"):
        import onnx
        from onnx.external_data_helper import load_external_data_for_model

    path = Path(path)
    with safeio.open_regular(path, "model", ModelLoadError) as handle:  # never a FIFO or device
        safeio.note_read(path)
        try:
            content = handle.read()
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read ({safeio.os_reason(exc)})",
                                 "check the path and permissions") from exc
    try:
        model = onnx.load_model_from_string(content)
        del content
    except Exception as exc:  # protobuf DecodeError and friends: corrupt or not ONNX
        raise ModelLoadError(f"{path}: not a valid ONNX model ({type(exc).__name__})",
                             "the file may be corrupt, truncated or of another format") from exc
    loaded = _checked(model, str(path))
    if _numeric_dynamic_dims(model):
        _symbolic_dynamic_dims(model)  # our parsed copy: the file is never written
    if _check_external_locations(model, path):
        try:
            load_external_data_for_model(model, str(path.parent))
        except Exception as exc:
            detail = first_line(exc, type(exc).__name__)
            raise ModelLoadError(f"{path}: cannot load its external data ({detail})",
                                 "the data file may be truncated; re-export the model") from exc
    loaded.path = str(path)
    loaded.sha256 = sha256_of(path)
    return loaded


def from_object(model: Any) -> LoadedModel:
    """Wrap an in-memory onnx.ModelProto (never modified: the scan instruments a copy)."""
    for tensor in _tensors(model):
        if _external(tensor):
            raise ModelLoadError(
                f"the in-memory ONNX model refers to external data (tensor '{tensor.name}')",
                "pass the .onnx path instead, or load it with onnx.load(path)")
    loaded = _checked(model, "in-memory ONNX model")
    if _numeric_dynamic_dims(model):  # the caller's model is never modified: a copy
        import onnx

        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        _symbolic_dynamic_dims(copy)
        loaded.module = copy
    return loaded
