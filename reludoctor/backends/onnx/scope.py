"""Names visible in one ONNX graph (and its enclosing graphs), constants' values, node attributes.

What the site discovery (``discover``) asks of a graph: where a tensor comes from, whether it is
a constant and which, and the PyTorch module path an exporter recorded on a node.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from reludoctor.core.sites import CONSTANT_ORIGIN, INPUT_ORIGIN, Origin

FLOAT = 1  # onnx.TensorProto.FLOAT
INT64 = 7


class _Scope:
    """Names visible in one graph: producers and constant values, then the enclosing graphs."""

    def __init__(self, graph: Any, parent: _Scope | None):
        self.parent = parent
        self.producers = {out: node for node in graph.node for out in node.output if out}
        self.initializers = {t.name: t for t in graph.initializer}
        self.graph_inputs = {v.name for v in graph.input}
        self.origins: dict[str, Origin] = {}  # node outputs, filled in graph order
        self.consumers: dict[str, list] = {}
        for node in graph.node:
            for name in node.input:
                if name:
                    self.consumers.setdefault(name, []).append(node)

    def origin(self, name: str) -> Origin:
        """Where a tensor comes from (``sites.Origin``): inputs of any graph are inputs."""
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.origins:
                return scope.origins[name]
            if name in scope.initializers:
                return CONSTANT_ORIGIN
            if name in scope.graph_inputs:
                return INPUT_ORIGIN
            scope = scope.parent
        return CONSTANT_ORIGIN  # a Constant node (its output is set) or an unknown name

    def values(self, name: str) -> np.ndarray | None:
        """The value of a constant (initializer or Constant node), else None."""
        from onnx import numpy_helper

        kind, found = self._lookup(name)
        try:
            if kind == "initializer":
                return numpy_helper.to_array(found)
            if kind == "node" and found.op_type == "Constant":
                return _constant_node_value(found)
        except Exception:  # noqa: BLE001 - an unreadable constant is just "not known"
            return None
        return None

    def elem_type(self, name: str) -> int:
        """The element type of a constant, 0 when not a constant or unknown."""
        kind, found = self._lookup(name)
        if kind == "initializer":
            return int(found.data_type)
        if kind == "node" and found.op_type == "Constant":
            for attribute in found.attribute:
                if attribute.name == "value":
                    return int(attribute.t.data_type)
                if attribute.name in ("value_int", "value_ints"):
                    return INT64
                if attribute.name in ("value_float", "value_floats"):
                    return FLOAT
        return 0

    def producer(self, name: str) -> Any:
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.producers:
                return scope.producers[name]
            if name in scope.initializers or name in scope.graph_inputs:
                return None
            scope = scope.parent
        return None

    def _lookup(self, name: str) -> tuple[str, Any]:
        """('initializer', TensorProto) | ('node', NodeProto) | ('input', None) | ('none', None)."""
        scope: _Scope | None = self
        while scope is not None:
            if name in scope.initializers:
                return "initializer", scope.initializers[name]
            if name in scope.producers:
                return "node", scope.producers[name]
            if name in scope.graph_inputs:
                return "input", None
            scope = scope.parent
        return "none", None

    def is_constant(self, name: str) -> bool:
        kind, found = self._lookup(name)
        return kind == "initializer" or (kind == "node" and found.op_type == "Constant")

    def scalar(self, name: str) -> float | None:
        """The value of a one-element constant (initializer or Constant node), else None."""
        from onnx import numpy_helper

        kind, found = self._lookup(name)
        try:
            if kind == "initializer":
                if int(np.prod(found.dims, dtype=np.int64)) != 1:
                    return None
                return _scalar(numpy_helper.to_array(found))
            if kind == "node" and found.op_type == "Constant":
                return _scalar(_constant_node_value(found))
        except Exception:  # noqa: BLE001 - an unreadable constant is just "not a known scalar"
            return None
        return None


def _constant_node_value(node: Any) -> np.ndarray | None:
    from onnx import numpy_helper

    for attribute in node.attribute:
        if attribute.name == "value":
            return numpy_helper.to_array(attribute.t)
        if attribute.name == "value_float":
            return np.array(attribute.f, np.float32)
        if attribute.name == "value_floats":
            return np.array(list(attribute.floats), np.float32)
        if attribute.name == "value_int":
            return np.array(attribute.i, np.int64)
        if attribute.name == "value_ints":
            return np.array(list(attribute.ints), np.int64)
    return None


def _scalar(value: np.ndarray | None) -> float | None:
    if value is None or value.size != 1 or value.dtype.kind not in "fiu":
        return None
    return float(value.reshape(-1)[0])


def _attribute(node: Any, name: str, default: Any = None) -> Any:
    from onnx import helper

    for attribute in node.attribute:
        if attribute.name == name:
            return helper.get_attribute_value(attribute)
    return default


def _module_of(node: Any) -> str:
    """The PyTorch module path a dynamo export recorded in ``namespace`` metadata, or ''."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":  # ['', 'layer1', 'layer1.1', 'layer1.1.relu', 'relu_3']
            try:
                scopes = _literal_list(prop.value)
            except ValueError:
                break
            return scopes[-2] if len(scopes) >= 2 else ""
    return ""


def _literal_list(text: str) -> list[str]:
    """Parse "['', 'layer1', 'layer1.0', 'relu']" without eval."""
    import ast

    try:
        value = ast.literal_eval(text)
    except (ValueError, SyntaxError) as exc:
        raise ValueError(text) from exc
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ValueError(text)
    return value
