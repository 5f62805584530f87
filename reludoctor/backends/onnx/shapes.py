"""Tensor shapes from ONNX shape inference, and the unit axis a site's shape implies."""

from __future__ import annotations

from typing import Any

from reludoctor.core.sites import choose_unit_axis, unit_axis_choice

# Shape inference copies the model: past this size it runs with the weights moved aside.
STRIP_FOR_INFERENCE_BYTES = 256 * 2**20


def _value_types(model: Any) -> dict[str, tuple[int, tuple | None]]:
    """tensor name -> (elem_type, dims) from ONNX shape inference (all graphs); best effort."""
    import onnx

    stripped: list[tuple[Any, bytes]] = []
    try:
        if model.ByteSize() > STRIP_FOR_INFERENCE_BYTES:  # infer on the structure: weights aside
            from reludoctor.backends.onnx.loader import _tensors

            for tensor in _tensors(model):
                if len(tensor.raw_data) > 1024:
                    stripped.append((tensor, tensor.raw_data))
                    tensor.ClearField("raw_data")
        try:
            inferred = onnx.shape_inference.infer_shapes(model, data_prop=True)
        except Exception:  # noqa: BLE001 - shape inference is optional: fall back to a probe
            inferred = model
    finally:
        for tensor, data in stripped:
            tensor.raw_data = data

    types: dict[str, tuple[int, tuple | None]] = {}

    def collect(graph: Any) -> None:
        for value in list(graph.input) + list(graph.output) + list(graph.value_info):
            if not value.type.HasField("tensor_type"):
                continue
            tensor_type = value.type.tensor_type
            dims = None
            if tensor_type.HasField("shape"):
                dims = tuple(int(d.dim_value) if d.HasField("dim_value") else None
                             for d in tensor_type.shape.dim)
            types[value.name] = (tensor_type.elem_type, dims)
        for tensor in graph.initializer:
            types.setdefault(tensor.name, (tensor.data_type, tuple(int(d) for d in tensor.dims)))
        for node in graph.node:
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    collect(attribute.g)
                for subgraph in attribute.graphs:
                    collect(subgraph)

    collect(inferred.graph)
    return types


def _unit_axis(ndim: int, producer: str | None, override: int | None,
               consumer: str | None = None) -> tuple[int, str]:
    """(axis, reason): the last axis after MatMul/Gemm of any rank > 2; else as PyTorch
    (``sites.unit_axis_choice``: a Conv producing or consuming a [N, A, B] means axis 1)."""
    if override is not None:
        return choose_unit_axis(ndim, producer, override), "--unit-axis"
    if ndim > 3 and producer == "linear":
        return ndim - 1, "linear on last axis"
    return unit_axis_choice(ndim, producer, consumer, None)
