"""Observe every ReLU-family node of an ONNX model, with the statistics computed in the graph.

Three phases, as onnxruntime's quantisation calibrator does it:

1. **Find sites** by op type (never by name): ``Relu``; ``Clip`` with a constant min of 0
   (``relu6`` when max is 6, else ``clip``); ``Max(x, 0)`` (``relu``); ``LeakyRelu`` and
   ``PRelu`` (``leaky_relu``/``prelu``: a unit "fires" when its pre-activation is > 0, so a dead
   one is always on the negative side). Hard-swish / hard-sigmoid gates
   (``x * Clip(x + 3, 0, 6) / 6``) are recognised and not reported (a warning counts them).
   What is an activation follows ``sites`` (its docstring has the rule): a Clip to a computed
   bound, an op on integers, on box coordinates (an input from Gather/Slice on the last axis,
   GatherND, TopK, ...) or on constants is no site and goes to ``ignored_ops`` with the reason.
   Sites inside ``If`` branches are observed; sites inside ``Loop``/``Scan`` bodies, and
   activations already fused by onnxruntime (``com.microsoft`` FusedConv/FusedGemm), are
   reported as unobserved sites with the reason.
2. **Augment a copy of the graph**: for each site's pre-activation X and output Y, add nodes
   computing per-sample, per-unit vectors [N, U] (batch axis kept, so the padded rows of a
   fixed-batch remainder can be dropped): max(X), the count of X > 0, sum |Y|, min(X) for
   bounded ops, plus a strided subsample of X for the histogram. For the channel axis of a
   convolutional map these are GlobalMaxPool / GlobalAveragePool / a 1x1 MaxPool with stride,
   which onnxruntime runs in its blocked NCHWc layout next to the convolutions; other axes use
   ReduceMax / ReduceSum. Only these small outputs leave the session, and onnxruntime keeps
   all its graph optimisations on.
3. **Collect** over the calibration batches: numpy folds the [N, U] outputs (valid rows only)
   into ``UnitCounts``.

Details:

- The count of X > 0 is HardSigmoid(X; alpha=3e38, beta=0) (exactly 1 for every normal float
  X > 0, else 0) averaged per sample and unit, times the positions per unit, rounded: exact
  below 2**24 positions. A unit whose max exceeds 0 counts as having fired at least once even
  if its only positive values were denormals the indicator rounds down.
- Histogram: a strided subsample of X per batch (a 1x1 MaxPool with stride over the spatial
  axes of a [N, C, ...] map, every column-step of the flattened activation otherwise), about
  HIST_SAMPLE values, binned in numpy with the fixed HIST_EDGES, like the PyTorch observer's
  ``flat[::step]`` sample. Padded rows are dropped first.
- Unit axis: 1 after a convolution (through normalisation, Add, Mul, ...) or before one (a
  [N, A, B] that feeds a Conv), the last axis after MatMul/Gemm, else as for PyTorch (1 for
  [N, C, ...] and [N, F], last for [N, T, F]); ``unit_axis`` overrides. Each site states why
  (``unit_axis_reason``). Shapes come from ONNX shape inference; when it cannot tell, one
  batch is run with the pre-activations exposed to learn them.
- The model given is never modified: the instrumented model is the original's bytes followed
  by a small message with the new nodes and outputs (protobuf appends repeated fields), or a
  copy where If branches change.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np

from reludoctor.errors import DataError, ModelLoadError, NoSitesError, ObserverFailure, UsageError
from reludoctor.core.sites import (
    CONSTANT_ORIGIN,
    INDEXED,
    INPUT_ORIGIN,
    LAYER,
    Origin,
    SiteSpec,
    choose_unit_axis,
    not_an_activation,
    strongest,
    unique_names,
    unit_axis_choice,
)
from reludoctor.backends.base import LoadedModel
from reludoctor.core.observers import HIST_EDGES, HIST_SAMPLE, UnitCounts
from reludoctor.report.model import IgnoredOp, UnobservedSite
from reludoctor import activations

DEFAULT_DOMAINS = ("", "ai.onnx")
# HardSigmoid(x; alpha, 0) = clip(alpha * x, 0, 1): 1 for every normal float x > 0, 0 for x <= 0.
INDICATOR_ALPHA = 3.0e38
# Past this serialized size a model cannot go through protobuf in one piece: the session is
# created from a temporary folder with external data instead.
MAX_PROTO_BYTES = 1_900_000_000
# Shape inference copies the model: past this size it runs with the weights moved aside.
STRIP_FOR_INFERENCE_BYTES = 256 * 2**20
# Ops through which a producer's unit layout survives (as PASS_THROUGH_OPS for PyTorch).
PASS_THROUGH = {
    "BatchNormalization", "InstanceNormalization", "Add", "Sub", "Mul", "Div", "Dropout",
    "Identity", "Cast", "DequantizeLinear", "QuantizeLinear", "Sum", "Neg", "Abs",
    "LayerNormalization", "GroupNormalization", "Pow", "Sqrt",
}
CONV_OPS = {"Conv", "ConvTranspose", "ConvInteger", "QLinearConv", "FusedConv", "NhwcFusedConv"}
LINEAR_OPS = {"MatMul", "Gemm", "MatMulInteger", "QLinearMatMul", "Einsum", "FusedMatMul",
              "FusedGemm", "MatMulNBits"}
# What is an activation: the rules of ``sites`` (its docstring), on ONNX op types. Op types
# whose output is a layer's (as sites.LAYER_OPS; Gather from an initializer is an embedding):
LAYER_OPS = CONV_OPS | LINEAR_OPS | {
    "BatchNormalization", "InstanceNormalization", "LayerNormalization", "GroupNormalization",
    "SimplifiedLayerNormalization", "SkipLayerNormalization", "SkipSimplifiedLayerNormalization",
    "RMSNormalization", "LSTM", "GRU", "RNN", "Attention", "MultiHeadAttention", "EmbedLayerNormalization",
}
# Op types that pick elements by data-dependent indices (as sites.INDEXING_OPS); Gather by
# computed indices or on the last axis, and Slice with a step on the last axis, too.
INDEXING_OPS = {"GatherElements", "GatherND", "NonZero", "TopK", "Compress", "Unique"}
METADATA_OPS = {"Shape", "Size"}  # a tensor's size, not its values: a constant
# Ops through which an activation's output reaches its consumer unchanged (unit-axis choice).
FORWARD_OPS = {"Identity", "Dropout", "Cast"}
INTEGER_TYPES = {2, 3, 4, 5, 6, 7, 9, 12, 13, 21, 22}  # (u)int8/16/32/64, bool, (u)int4
RELU_FAMILY = activations.onnx_ops()
FUSED_ACTIVATION_OPS = {"FusedConv", "FusedGemm", "NhwcFusedConv", "FusedMatMul"}
FUSED_ACTIVATIONS = activations.onnx_fused()
FLOAT = 1  # onnx.TensorProto.FLOAT
INT64 = 7

Warn = Callable[[str], None]
Progress = Callable[[int, "int | None"], None]


# ----------------------------------------------------------------------------- phase 1: sites


@dataclass
class _Found:
    """A ReLU-family node, where it sits, and what is known about its pre-activation."""

    name: str
    op: str
    module: str
    lower: float
    upper: float | None
    x: str  # pre-activation tensor
    y: str  # activation output
    signed_output: bool  # leaky_relu / prelu: |Y| needs an Abs
    path: tuple  # ((node index, attribute name), ...) from the main graph to the site's graph
    unobserved: str | None = None  # reason when it cannot be observed
    producer: str | None = None
    dims: tuple | None = None  # full shape of X, None entries unknown; None: rank unknown
    elem_type: int = 0
    axis: int = 1
    consumer: str | None = None  # "conv" | "linear": the layer the activation feeds
    axis_reason: str = ""


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


def _classify(node: Any, scope: _Scope, opset: int,
              ) -> tuple[str, float | None, str, bool, str | None] | None:
    """(op, upper, pre-activation name, signed output, reason it is no activation or None) for
    a ReLU-family node (by op and bounds), else None."""
    if node.domain not in DEFAULT_DOMAINS or not node.input or not node.output:
        return None
    kind = node.op_type
    if not node.input[0] or scope.is_constant(node.input[0]):
        if not (kind == "Max" and len(node.input) == 2):
            return None  # an activation of a constant has no batch and no units
    if kind == "Relu":
        return "relu", None, node.input[0], False, None
    if kind == "LeakyRelu":
        return "leaky_relu", None, node.input[0], True, None
    if kind == "PRelu":
        return "prelu", None, node.input[0], True, None
    if kind == "Max" and len(node.input) == 2:
        for index in (0, 1):
            other = node.input[1 - index]
            if scope.scalar(node.input[index]) == 0.0 and other and not scope.is_constant(other):
                return "relu", None, other, False, None
        return None
    if kind == "Clip":
        if opset >= 11:
            names = list(node.input[1:3]) + ["", ""]
            if not names[0]:
                return None
            low = scope.scalar(names[0])
            high = scope.scalar(names[1]) if names[1] else None
            if low == 0.0 and names[1] and high is None:
                return ("clip", None, node.input[0], False,
                        "its upper bound is not a constant (a tensor computed by the model, e.g. "
                        "an image size)")
        else:
            low = _attribute(node, "min", None)
            high = _attribute(node, "max", None)
            high = None if high is None or high >= 3.0e38 else float(high)
        if low != 0.0:
            return None
        if high is not None and not math.isfinite(high):
            high = None
        op = "relu6" if high == 6.0 else "clip"
        return op, high, node.input[0], False, None
    return None


def _node_origin(node: Any, scope: _Scope, types: dict, extra: list[Origin]) -> Origin:
    """The origin of a node's outputs (``sites.derive`` for ONNX op types); ``extra``: the
    origins of its subgraphs' outputs."""
    top = strongest([scope.origin(name) for name in node.input if name] + extra)
    kind = node.op_type
    if top.kind == "constant" or kind in METADATA_OPS:
        return CONSTANT_ORIGIN
    if kind in LAYER_OPS:
        return Origin(LAYER, kind)
    if kind in INDEXING_OPS:
        return Origin(INDEXED, kind)
    data = node.input[0] if node.input else ""
    rank = len(types[data][1]) if data in types and types[data][1] is not None else None
    if kind == "Gather" and len(node.input) >= 2:
        if scope.is_constant(data):
            return Origin(LAYER, "Gather from an initializer (embedding)")
        if scope.values(node.input[1]) is None:
            return Origin(INDEXED, "Gather by computed indices")
        axis = int(_attribute(node, "axis", 0))
        if axis == -1 or (rank is not None and axis == rank - 1):
            return Origin(INDEXED, "Gather on the last axis")
    if kind == "Slice" and len(node.input) >= 5 and node.input[4]:
        steps = scope.values(node.input[4])
        axes = scope.values(node.input[3]) if node.input[3] else None
        if steps is not None:
            steps = [int(v) for v in np.asarray(steps).reshape(-1)]
            axes = ([int(v) for v in np.asarray(axes).reshape(-1)] if axes is not None
                    else list(range(len(steps))))
            for axis, step in zip(axes, steps):
                if step != 1 and (axis == -1 or (rank is not None and axis == rank - 1)):
                    return Origin(INDEXED, f"Slice with step {step} on the last axis")
    return top


def _consumer_kind(name: str, scope: _Scope, depth: int = 8) -> str | None:
    """The kind ("conv" | "linear") of the layers an activation output feeds, through
    Identity/Dropout/Cast: a convolution when any consumer is one."""
    frontier, kinds = [name], set()
    for _ in range(depth):
        next_frontier = []
        for tensor in frontier:
            for node in scope.consumers.get(tensor, []):
                if node.op_type in FORWARD_OPS:
                    next_frontier.extend(o for o in node.output[:1] if o)
                elif node.op_type in CONV_OPS:
                    kinds.add("conv")
                elif node.op_type in LINEAR_OPS:
                    kinds.add("linear")
        frontier = next_frontier
    return "conv" if "conv" in kinds else "linear" if "linear" in kinds else None


def _is_hard_gate(pre: str, upper: float | None, scope: _Scope) -> bool:
    """Clip(z + 3, 0, 6) (the hard-sigmoid inside hard-swish ``x * Clip(x + 3, 0, 6) / 6``) or
    Clip(z + 0.5, 0, 1) (hard-sigmoid written as ``Clip(x / 6 + 0.5, 0, 1)``)."""
    offset = {6.0: 3.0, 1.0: 0.5}.get(upper) if upper is not None else None
    node = scope.producer(pre)
    if offset is None or node is None or node.op_type != "Add" or len(node.input) != 2:
        return False
    return any(scope.scalar(name) == offset for name in node.input)


def _producer_kind(name: str, scope: _Scope, depth: int = 8) -> str | None:
    """Walk back through normalisation/add/mul to the op that laid out the units."""
    frontier = [name]
    for _ in range(depth):
        next_frontier = []
        for tensor in frontier:
            node = scope.producer(tensor)
            if node is None:
                continue
            if node.op_type in CONV_OPS:
                return "conv"
            if node.op_type in LINEAR_OPS:
                return "linear"
            if node.op_type in PASS_THROUGH:
                next_frontier.extend(i for i in node.input if i and not scope.is_constant(i))
        if not next_frontier:
            return None
        frontier = next_frontier
    return None


@dataclass
class _Discovery:
    sites: list[_Found] = field(default_factory=list)
    gates: int = 0  # hard-swish / hard-sigmoid gates recognised
    ignored: list[IgnoredOp] = field(default_factory=list)  # ReLU-like nodes that are no activation


def _floating(node: Any, pre: str, scope: _Scope, types: dict) -> bool:
    """Whether the pre-activation holds floating-point values (unknown: assumed so)."""
    elem_type = types.get(pre, (0, None))[0]
    if not elem_type:  # Max(x, 0): the constant 0 has x's type
        elem_type = next((scope.elem_type(name) for name in node.input
                          if name and name != pre and scope.elem_type(name)), 0)
    return elem_type not in INTEGER_TYPES


def _discover(model: Any, opset: int, types: dict | None = None) -> _Discovery:
    """The ReLU-family nodes of every graph, in graph order, and the ReLU-like ones that are no
    activation (``sites``' rules: a data-dependent bound, integers, an input from indexing or
    from constants only). ``types``: ``_value_types`` of the model, when known."""
    found = _Discovery()
    types = types or {}

    def walk(graph: Any, parent: _Scope | None, path: tuple, blocked: str | None) -> _Scope:
        scope = _Scope(graph, parent)
        for index, node in enumerate(graph.node):
            site_name = node.name or (node.output[0] if node.output else node.op_type)
            if node.domain in DEFAULT_DOMAINS and node.op_type in ("HardSwish", "HardSigmoid"):
                found.gates += 1
            if node.domain == "com.microsoft" and node.op_type in FUSED_ACTIVATION_OPS:
                activation = _attribute(node, "activation", b"")
                activation = activation.decode() if isinstance(activation, bytes) else activation
                if activation in FUSED_ACTIVATIONS:
                    found.sites.append(_Found(
                        site_name, FUSED_ACTIVATIONS[activation], _module_of(node), 0.0, None,
                        node.input[0], node.output[0], False, path,
                        unobserved=f"{activation} is fused into a com.microsoft.{node.op_type} node "
                                   "(an onnxruntime-optimised model): its pre-activation is never "
                                   "materialised; scan the model as exported instead"))
            classified = _classify(node, scope, opset)
            if classified is not None:
                op, upper, pre, signed, reason = classified
                if reason is None:
                    reason = not_an_activation(scope.origin(pre), _floating(node, pre, scope, types))
                if op in ("relu6", "clip") and _is_hard_gate(pre, upper, scope):
                    found.gates += 1
                elif reason is not None:
                    found.ignored.append(IgnoredOp(op, site_name, _module_of(node), reason))
                else:
                    site = _Found(site_name, op, _module_of(node), 0.0, upper, pre, node.output[0],
                                  signed, path, unobserved=blocked)
                    site.producer = _producer_kind(pre, scope)
                    site.consumer = _consumer_kind(node.output[0], scope)
                    found.sites.append(site)
            extra: list[Origin] = []
            # then_branch before else_branch (onnx.helper stores attributes sorted by name)
            ordered = sorted(node.attribute, key=lambda a: a.name != "then_branch")
            for attribute in ordered:
                subgraphs = ([attribute.g] if attribute.HasField("g") else []) + list(attribute.graphs)
                for sub_index, subgraph in enumerate(subgraphs):
                    key = attribute.name if attribute.HasField("g") else f"{attribute.name}[{sub_index}]"
                    reason = blocked
                    if reason is None and not (node.op_type == "If" and node.domain in DEFAULT_DOMAINS
                                               and attribute.HasField("g")):
                        where = f"'{node.name}'" if node.name else "a"
                        if node.op_type in ("Loop", "Scan"):
                            reason = (f"inside the body of {where} {node.op_type} node: statistics are "
                                      f"not collected across {node.op_type} iterations")
                        else:
                            reason = (f"inside a subgraph of {where} {node.op_type} node, which "
                                      "reludoctor does not instrument")
                    inner = walk(subgraph, scope, (*path, (index, key)), reason)
                    extra.extend(inner.origin(value.name) for value in subgraph.output)
            origin = _node_origin(node, scope, types, extra)
            for name in node.output:
                if name:
                    scope.origins[name] = origin
        return scope

    walk(model.graph, None, (), None)
    names = unique_names([site.name for site in found.sites])
    for site, name in zip(found.sites, names):
        site.name = name
    return found


# ------------------------------------------------------------------------ shapes and unit axes


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


# ------------------------------------------------------------------- phase 2: augment the graph


class _Names:
    """Fresh tensor/node names, never one the model already uses (in any graph)."""

    def __init__(self, model: Any):
        from reludoctor.backends.onnx.loader import _graphs

        self.count = 0
        self.taken: set[str] = set()
        for graph in _graphs(model.graph):
            self.taken.update(v.name for v in graph.input)
            self.taken.update(t.name for t in graph.initializer)
            for node in graph.node:
                self.taken.update(node.output)
                self.taken.add(node.name)

    def fresh(self, hint: str) -> str:
        while True:
            self.count += 1
            name = f"reludoctor__{self.count}_{hint}"
            if name not in self.taken:
                return name


class _Builder:
    """Nodes appended to one graph; every name it makes is unique in the model."""

    def __init__(self, opset: int, names: _Names):
        self.opset = opset
        self.names = names
        self.nodes: list[Any] = []

    def fresh(self, hint: str) -> str:
        return self.names.fresh(hint)

    def node(self, op: str, inputs: list[str], hint: str, **attrs: Any) -> str:
        from onnx import helper

        out = self.fresh(hint)
        self.nodes.append(helper.make_node(op, inputs, [out], name=out, **attrs))
        return out

    def const(self, value: np.ndarray, hint: str = "const") -> str:
        from onnx import helper, numpy_helper

        out = self.fresh(hint)
        self.nodes.append(helper.make_node("Constant", [], [out], name=out,
                                           value=numpy_helper.from_array(np.asarray(value), out)))
        return out

    def reduce(self, op: str, x: str, axes: list[int], hint: str) -> str:
        axes_as_input = self.opset >= (13 if op == "ReduceSum" else 18)
        if axes_as_input:
            return self.node(op, [x, self.const(np.array(axes, np.int64), "axes")], hint, keepdims=0)
        return self.node(op, [x], hint, axes=axes, keepdims=0)

    def strided(self, flat: str, step: int, hint: str) -> str:
        """Every step-th column of a [N, M] tensor (a prefix for opsets without Slice steps)."""
        if step <= 1:
            return flat
        if self.opset >= 10:
            return self.node("Slice", [flat, self.const(np.array([0], np.int64)),
                                       self.const(np.array([2**62], np.int64)),
                                       self.const(np.array([1], np.int64)),
                                       self.const(np.array([step], np.int64))], hint)
        return self.node("Slice", [flat], hint, starts=[0], ends=[max(1, HIST_SAMPLE)], axes=[1])


@dataclass
class _Plan:
    """What one site's observer reads from the session's outputs."""

    mode: str  # pool (mean over positions) | reduce (sum over positions) | raw ([N, U] itself)
    outputs: dict[str, str]  # stat -> output name in the site's graph (lifted later)
    static_shape: tuple[int, ...] | None  # activation shape without batch when fully static


def _hist_stride(dims: tuple | None, spatial_from: int, rows: int) -> int:
    """Stride per spatial axis so a batch gives about HIST_SAMPLE values."""
    if dims is None:
        return 8
    spatial = dims[spatial_from:]
    leading = dims[1:spatial_from]
    if any(d is None for d in spatial) or any(d is None for d in leading):
        return 8
    per_row = int(np.prod(leading, dtype=np.int64)) if leading else 1
    want = max(1.0, HIST_SAMPLE / max(1, rows * per_row))
    total = float(np.prod(spatial, dtype=np.float64)) if spatial else 1.0
    if total <= want or not spatial:
        return 1
    return max(1, int(math.ceil((total / want) ** (1.0 / len(spatial)))))


def _emit(builder: _Builder, site: _Found, rows: int) -> _Plan:
    """Nodes computing the site's per-sample, per-unit statistics."""
    x, y = site.x, site.y
    if site.elem_type != FLOAT:
        x = builder.node("Cast", [x], "x_float", to=FLOAT)
        y = builder.node("Cast", [y], "y_float", to=FLOAT)
    magnitude = builder.node("Abs", [y], "abs") if site.signed_output else y
    dims = site.dims or ()
    rank = len(dims)
    static = tuple(dims[1:]) if dims and all(d is not None for d in dims[1:]) else None
    outputs: dict[str, str] = {}
    if rank <= 2:
        outputs["y"] = builder.node("Flatten", [magnitude], "y", axis=1)
        outputs["x"] = builder.node("Flatten", [x], "x", axis=1)
        mode = "raw"
    else:
        indicator = builder.node("HardSigmoid", [x], "fired", alpha=INDICATOR_ALPHA, beta=0.0)
        if site.axis == 1 and rank <= 5:
            mode = "pool"
            outputs["max"] = builder.node("GlobalMaxPool", [x], "max")
            outputs["count"] = builder.node("GlobalAveragePool", [indicator], "rate")
            outputs["sum"] = builder.node("GlobalAveragePool", [magnitude], "mean")
            if site.upper is not None:
                negated = builder.node("Neg", [x], "neg")
                outputs["negmin"] = builder.node("GlobalMaxPool", [negated], "negmin")
            stride = _hist_stride(site.dims, 2, rows)
            if stride > 1:
                outputs["hist"] = builder.node("MaxPool", [x], "sample", kernel_shape=[1] * (rank - 2),
                                               strides=[stride] * (rank - 2))
            else:
                outputs["hist"] = x
        else:
            mode = "reduce"
            axes = [d for d in range(1, rank) if d != site.axis]
            outputs["max"] = builder.reduce("ReduceMax", x, axes, "max")
            outputs["count"] = builder.reduce("ReduceSum", indicator, axes, "count")
            outputs["sum"] = builder.reduce("ReduceSum", magnitude, axes, "sum")
            if site.upper is not None:
                outputs["min"] = builder.reduce("ReduceMin", x, axes, "min")
            flat = builder.node("Flatten", [x], "flat", axis=1)
            per_row = int(np.prod(static, dtype=np.int64)) if static else None
            step = 16 if per_row is None else max(1, per_row // max(1, HIST_SAMPLE // max(rows, 1)))
            outputs["hist"] = builder.strided(flat, step, "sample")
        # The output of the |Y| chain is made first: see _augment_graph on execution order.
        for stat in sorted(outputs, key=lambda name: name != "sum"):
            outputs[stat] = builder.node("Flatten", [outputs[stat]], stat, axis=1)
    if static is None:
        outputs["shape"] = builder.node("Shape", [site.x], "shape")
    return _Plan(mode, outputs, static)


def _output_type(stat: str) -> int:
    return INT64 if stat == "shape" else FLOAT


def _augment_graph(graph: Any, path: tuple, sites: list[tuple[_Found, _Plan | None]], opset: int,
                   rows: int, names: _Names, emit_into: list[Any] | None = None,
                   ) -> list[tuple[_Plan, str]]:
    """Add statistics nodes for the sites in ``graph`` and under its If nodes.

    Returns the (plan, stat) pairs this graph now exposes, each plan's ``outputs[stat]`` naming
    the tensor in ``graph``; the caller lifts them one level up (If outputs) or makes them
    graph outputs. ``emit_into``: collect nodes there instead of appending to ``graph``.
    """
    from onnx import helper, numpy_helper

    builder = _Builder(opset, names)
    exposed: list[tuple[_Plan, str]] = []
    blocks: list[list[Any]] = []
    for index, (site, _) in enumerate(sites):
        if site.path == path:
            start = len(builder.nodes)
            plan = _emit(builder, site, rows)
            blocks.append(builder.nodes[start:])
            sites[index] = (site, plan)
            exposed.extend((plan, stat) for stat in plan.outputs)
    # Execution order. onnxruntime (1.32, default order) schedules the graph's leaves from the
    # last-listed one back: with the sites' node blocks listed in reverse, each site's
    # statistics run right after its activation is computed (while it is hot in cache, and
    # its buffer is freed early) instead of after the whole network, which held every site's
    # X and Y alive at once (5x the activation memory of plain inference on resnet18). And
    # within a block the |Y| sum's output is listed first, so it runs last: the statistics of
    # X run before the Relu, which then overwrites X in place. Measured on resnet18, batch
    # 32, one thread: 1.22x -> 1.12x plain onnxruntime. Correctness does not depend on it.
    builder.nodes = [node for block in reversed(blocks) for node in block]
    branch_nodes = sorted({site.path[len(path)][0] for site, _ in sites
                           if len(site.path) > len(path) and site.path[:len(path)] == path})
    for node_index in branch_nodes:
        node = graph.node[node_index]
        branches = {a.name: a.g for a in node.attribute if a.name in ("then_branch", "else_branch")}
        lifted: dict[str, list[tuple[_Plan, str]]] = {}
        for key in ("then_branch", "else_branch"):
            lifted[key] = _augment_graph(branches[key], (*path, (node_index, key)), sites, opset,
                                         rows, names)
        order = lifted["then_branch"] + lifted["else_branch"]
        for key, branch in branches.items():
            own = {id(entry) for entry in lifted[key]}
            for entry in order:
                plan, stat = entry
                if id(entry) in own:
                    name = plan.outputs[stat]
                else:  # the other branch's statistic: an empty tensor when this branch runs
                    empty = np.zeros((0,) if stat == "shape" else (0, 0),
                                     np.int64 if stat == "shape" else np.float32)
                    name = builder.fresh("absent")
                    branch.node.append(helper.make_node(
                        "Constant", [], [name], name=name, value=numpy_helper.from_array(empty, name)))
                branch.output.append(helper.make_tensor_value_info(name, _output_type(stat), None))
        for plan, stat in order:
            outer = builder.fresh(f"if_{stat}")
            node.output.append(outer)
            plan.outputs[stat] = outer
        exposed.extend(order)
    if emit_into is not None:
        emit_into.extend(builder.nodes)
    else:
        graph.node.extend(builder.nodes)
    return exposed


def _augmented_model(model: Any, sites: list[_Found], opset: int, rows: int,
                     ) -> tuple[Any, list[_Plan | None]]:
    """The instrumented model: bytes (small models) or a ModelProto copy; one plan per site."""
    import onnx
    from onnx import helper

    names = _Names(model)
    work: list[tuple[_Found, _Plan | None]] = [(s, None) for s in sites]
    nested = any(site.path for site in sites)
    if nested:  # If branches change: instrument a deep copy
        target = _copy(model)
        exposed = _augment_graph(target.graph, (), work, opset, rows, names)
        for plan, stat in exposed:
            target.graph.output.append(helper.make_tensor_value_info(plan.outputs[stat],
                                                                     _output_type(stat), None))
        return target, [plan for _, plan in work]
    # Main graph only: append the new nodes and outputs to the serialized model.
    extra = onnx.ModelProto()
    new_nodes: list[Any] = []
    exposed = _augment_graph(model.graph, (), work, opset, rows, names, emit_into=new_nodes)
    extra.graph.node.extend(new_nodes)
    for plan, stat in exposed:
        extra.graph.output.append(helper.make_tensor_value_info(plan.outputs[stat],
                                                                _output_type(stat), None))
    return _with_extra(model, extra), [plan for _, plan in work]


def _copy(model: Any) -> Any:
    import onnx

    target = onnx.ModelProto()
    target.CopyFrom(model)
    return target


def _with_extra(model: Any, extra: Any) -> Any:
    """``model`` with ``extra``'s nodes and outputs appended, never modifying ``model``.

    Protobuf merges concatenated messages (repeated fields append), so the original bytes plus
    the small ``extra`` message is the augmented model, without copying the weights in Python.
    Past protobuf's 2 GiB limit: a merged ModelProto copy instead (saved with external data).
    """
    if model.ByteSize() + extra.ByteSize() > MAX_PROTO_BYTES:
        target = _copy(model)
        target.MergeFrom(extra)
        return target
    return model.SerializeToString() + extra.SerializeToString()


# ---------------------------------------------------------------------------- sessions and data


def cuda_provider_available() -> bool:
    import onnxruntime

    return "CUDAExecutionProvider" in onnxruntime.get_available_providers()


def _providers(device: Any) -> list[Any]:
    kind = getattr(device, "type", str(device))
    if kind == "cpu":
        return ["CPUExecutionProvider"]
    if kind == "cuda":
        if not cuda_provider_available():
            raise UsageError("--device cuda: the installed onnxruntime has no CUDA execution provider",
                             "install onnxruntime-gpu, or use --device cpu")
        index = getattr(device, "index", None) or 0
        return [("CUDAExecutionProvider", {"device_id": index}), "CPUExecutionProvider"]
    raise UsageError(f"--device {device} is not supported for ONNX models", "use cpu or cuda")


def _session(model: Any, providers: list[Any], threads: int | None = None) -> Any:
    """An onnxruntime session with every graph optimisation on, from bytes or a ModelProto.

    A ModelProto over protobuf's limit is written to a temporary folder with external data
    (which converts its tensors: pass a copy).
    """
    import onnx
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
    if isinstance(model, bytes):
        return onnxruntime.InferenceSession(model, options, providers=providers)
    if model.ByteSize() <= MAX_PROTO_BYTES:
        return onnxruntime.InferenceSession(model.SerializeToString(), options, providers=providers)
    folder = tempfile.mkdtemp(prefix="reludoctor-onnx-")
    try:
        path = os.path.join(folder, "model.onnx")
        onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                        location="model.onnx.data", size_threshold=1024)
        return onnxruntime.InferenceSession(path, options, providers=providers)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\]\s*:\s*\d+\s*:\s*[A-Z_]+\s*:\s*")
_ORT_SOURCE = re.compile(r"\S*\.(?:h|hpp|cc|cpp|cu):\d+\s+")
_ORT_NOISE = ("please fix either the inputs/outputs or the model",)
MAX_ORT_MESSAGE = 600


def _skip_signature(text: str) -> str:
    """Drop a C++ function signature (``ns::f(args) const``) that onnxruntime puts before a check."""
    match = re.match(r"[\w:~<>,*& ]*::[\w~<>]+\(", text)
    if not match:
        return text
    depth, index = 0, match.end() - 1
    while index < len(text):
        depth += {"(": 1, ")": -1}.get(text[index], 0)
        index += 1
        if depth == 0:
            break
    rest = text[index:].lstrip()
    return rest[len("const"):].lstrip() if rest.startswith("const ") else rest


def _ort_message(exc: BaseException) -> str:
    """An onnxruntime error on one line, keeping its decisive part.

    onnxruntime puts the error class on the first line and the detail that tells the user what
    to change (``index: 0 Got: 32 Expected: 2``, the node and its status message) on the next
    lines, behind C++ source locations; keep the detail, drop the prefix and the locations.
    """
    text = str(exc).strip()
    if not text:
        return type(exc).__name__
    parts = []
    for line in text.splitlines():
        line = _ORT_PREFIX.sub("", line.strip())
        while (found := _ORT_SOURCE.search(line)) is not None:
            line = line[:found.start()] + _skip_signature(line[found.end():])
        line = " ".join(line.split())
        if line and not any(noise in line.lower() for noise in _ORT_NOISE):
            parts.append(line.rstrip(";"))
    message = "; ".join(parts) or type(exc).__name__
    if len(message) > MAX_ORT_MESSAGE:  # keep both ends: the node names the place, the end the cause
        head = MAX_ORT_MESSAGE // 3
        message = message[:head].rstrip() + " … " + message[-(MAX_ORT_MESSAGE - head - 3):].lstrip()
    return message


def _quiet_run_options() -> Any:
    """RunOptions that keep onnxruntime from logging a failed run to stderr: the error is raised
    to the caller, which reports it in one line."""
    import onnxruntime

    options = onnxruntime.RunOptions()
    options.log_severity_level = 4  # fatal only
    return options


def _open_session(model: Any, original: Any, providers: list[Any], where: str,
                  threads: int | None = None) -> Any:
    """Create the instrumented session; tell a model onnxruntime rejects from our own failure."""
    try:
        return _session(model, providers, threads)
    except Exception as exc:
        plain = original
        if not isinstance(original, bytes) and original.ByteSize() > MAX_PROTO_BYTES:
            plain = _copy(original)  # _session converts a large proto's tensors
        try:
            _session(plain, providers)
        except Exception as plain_exc:
            raise ModelLoadError(f"{where}: onnxruntime cannot load the model: {_ort_message(plain_exc)}",
                                 "the file may be corrupt or use operators onnxruntime lacks") from plain_exc
        raise RuntimeError(f"the instrumented ONNX graph was rejected by onnxruntime: "
                           f"{_ort_message(exc)}") from exc


def _to_numpy(array: Any) -> np.ndarray:
    if isinstance(array, np.ndarray):
        return array
    if hasattr(array, "detach"):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _feed(loaded: LoadedModel, arrays: Iterable[Any], source: str, start: int,
          pad_to: int | None, binding: Any = None) -> tuple[dict[str, np.ndarray], int]:
    """Model inputs for one batch: numpy, the model's dtypes, shapes checked, padded if fixed.

    ``arrays``: the fed inputs of ``binding`` (samples on axis 0), each moved back to its batch
    axis here; the binding's constants are added (``reludoctor.data.binding``). Without a binding,
    every input of the model in order, samples on axis 0."""
    from reludoctor.data.binding import check_array

    feed: dict[str, np.ndarray] = {}
    rows = None
    arrays = list(arrays)
    specs = list(binding.fed) if binding is not None else list(loaded.inputs)
    axes = list(binding.axes) if binding is not None else [0] * len(specs)
    if pad_to is not None:  # the fixed batch comes from the file: bounded before padding
        from reludoctor.data.calibration import check_padding

        check_padding(arrays, pad_to, source)
    for spec, axis, raw in zip(specs, axes, arrays):
        array = _to_numpy(raw)
        if array.ndim == 0:
            raise DataError(f"{source}: input '{spec.name}' is a scalar, not a batch of samples",
                            "the first axis must index samples")
        rows = array.shape[0] if rows is None else rows
        check_array(spec, axis, np.moveaxis(array, 0, axis), source)
        if spec.dtype is not None and array.dtype.name != spec.dtype:
            try:
                want: np.dtype | None = np.dtype(spec.dtype)
            except TypeError:  # bfloat16, float8, ...: fed as given
                want = None
            have_float = array.dtype.kind == "f"
            if want is not None and want.kind == "f" and not have_float:
                raise DataError(f"{source}: input '{spec.name}' is {array.dtype.name} but the model "
                                f"expects {spec.dtype}", "convert (and normalise) the data to floats")
            if want is not None and want.kind in "iu" and have_float:
                raise DataError(f"{source}: input '{spec.name}' is {array.dtype.name} but the model "
                                f"expects {spec.dtype}", "pass integer data (e.g. token ids)")
            if want is not None:
                array = array.astype(want)
        if pad_to is not None and array.shape[0] < pad_to:
            filler = np.repeat(array[-1:], pad_to - array.shape[0], axis=0)
            array = np.concatenate([array, filler])
        feed[spec.name] = np.ascontiguousarray(np.moveaxis(array, 0, axis))
    if binding is not None:
        feed.update(binding.onnx_constants())
    return feed, int(rows or 0)


# ------------------------------------------------------------------------ phase 3: observers


class OnnxSiteObserver:
    """Folds one site's per-sample, per-unit session outputs into ``UnitCounts`` (numpy)."""

    def __init__(self, site: _Found, plan: _Plan):
        self.site = site
        self.plan = plan
        self.lower = site.lower
        self.upper = site.upper
        self.shape: tuple[int, ...] | None = None
        self.padding_counted = False  # set when a padded batch could not be cut to real rows
        self._positions = 0
        self._samples = 0
        self._positive: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._abs_sum: np.ndarray | None = None
        self._hist = np.zeros(len(HIST_EDGES) + 1, np.int64)
        self._edges = HIST_EDGES.astype(np.float32)

    @property
    def observed(self) -> bool:
        return self._positive is not None

    def output_names(self) -> list[str]:
        return list(self.plan.outputs.values())

    def update(self, results: dict[str, np.ndarray], rows: int, valid: int) -> None:
        try:
            self._update(results, rows, valid)
        except ObserverFailure:
            raise
        except Exception as exc:
            raise ObserverFailure(f"observing ONNX site {self.site.name} failed: {exc}") from exc

    def _update(self, results: dict[str, np.ndarray], rows: int, valid: int) -> None:
        out = {stat: results[name] for stat, name in self.plan.outputs.items()}
        lead = out["x" if self.plan.mode == "raw" else "max"]
        if lead.ndim < 2 or lead.shape[0] == 0:
            return  # an If branch that did not run for this batch
        used = valid if lead.shape[0] == rows else lead.shape[0]
        if lead.shape[0] != rows and valid < rows:
            self.padding_counted = True
        units = lead.shape[1]
        if "shape" in out:
            dims = tuple(int(d) for d in out["shape"])
            shape = dims[1:] if len(dims) > 1 else (1,)
        else:
            shape = self.plan.static_shape if self.plan.static_shape else (1,)
        per_unit = (int(np.prod(shape, dtype=np.int64)) // units) if units else 0
        if self.plan.mode == "raw":
            per_unit = 1
        if self._positive is None:
            self.shape = tuple(int(d) for d in shape)
            self._positive = np.zeros(units, np.int64)
            self._max = np.full(units, -np.inf)
            self._abs_sum = np.zeros(units, np.float64)
            if self.upper is not None:
                self._min = np.full(units, np.inf)
        elif units != self._positive.shape[0]:
            raise ObserverFailure(f"site {self.site.name}: unit count changed between batches "
                                  f"({self._positive.shape[0]} -> {units})")
        if self.plan.mode == "raw":
            x = out["x"][:used]
            y = out["y"][:used]
            np.maximum(self._max, x.max(0), out=self._max)
            self._positive += (x > self.lower).sum(0, dtype=np.int64)
            self._abs_sum += y.sum(0, dtype=np.float64)
            if self._min is not None:
                np.minimum(self._min, x.min(0), out=self._min)
            sample = x
        else:
            scale = per_unit if self.plan.mode == "pool" else 1
            np.maximum(self._max, out["max"][:used].max(0), out=self._max)
            counts = np.rint(out["count"][:used].astype(np.float64) * scale)
            self._positive += np.nan_to_num(counts).sum(0).astype(np.int64)
            self._abs_sum += (out["sum"][:used].astype(np.float64) * scale).sum(0)
            if self._min is not None:
                if "negmin" in out:
                    np.minimum(self._min, -out["negmin"][:used].max(0), out=self._min)
                else:
                    np.minimum(self._min, out["min"][:used].min(0), out=self._min)
            sample = out["hist"][:used] if "hist" in out else None
        if sample is not None:
            flat = sample.reshape(-1)
            step = max(1, flat.size // HIST_SAMPLE)
            # The bins of searchsorted(edges, values, side="right"), from the values sorted:
            # count below each edge, differenced (NaN sorts last, into the last bin, as there).
            # ~2x faster than searching every value and bincount.
            values = np.sort(flat[::step])
            below = np.searchsorted(values, self._edges, side="left")
            self._hist += np.diff(below, prepend=0, append=values.size)
        self._positions += used * per_unit
        self._samples += valid

    def state(self) -> UnitCounts:
        if self._positive is None:
            raise RuntimeError("site was never executed")
        positive = self._positive.copy()
        # A unit whose max pre-activation is above the bound fired at least once, even when its
        # only firing was a denormal the in-graph indicator rounded away.
        positive[(positive == 0) & (self._max > self.lower)] = 1
        return UnitCounts(
            positions=self._positions,
            samples=self._samples,
            positive=positive,
            max=self._max.copy(),
            min=None if self._min is None else self._min.copy(),
            abs_output_sum=self._abs_sum.copy(),
            hist=self._hist.copy(),
        )


# ------------------------------------------------------------------------------------ driver


def _probe_shapes(model: Any, sites: list[_Found], feed: dict[str, np.ndarray],
                  providers: list[Any], where: str) -> None:
    """Run one batch with the unknown pre-activations exposed, to learn their ranks and types."""
    import onnx
    from onnx import helper

    extra = onnx.ModelProto()
    fresh = _Names(model)
    names = []
    for site in sites:
        name = fresh.fresh("probe")
        extra.graph.node.append(helper.make_node("Identity", [site.x], [name], name=name))
        extra.graph.output.append(onnx.ValueInfoProto(name=name))  # type unknown: name only
        names.append(name)
    session = _open_session(_with_extra(model, extra), model, providers, where)
    try:
        values = session.run(names, feed, _quiet_run_options())
    except Exception as exc:
        raise DataError(f"{where}: the model failed on the first batch: {_ort_message(exc)}",
                        "check that the data matches the model's inputs (shape, dtype, count)") from exc
    for site, value in zip(sites, values):
        dims = list(value.shape)
        site.dims = tuple([None] + dims[1:]) if dims else ()
        site.elem_type = helper.np_dtype_to_tensor_dtype(value.dtype)


class OnnxInstrument:
    """An instrumented onnxruntime session and its observers (built once, run over batches)."""

    def __init__(self, loaded: LoadedModel, calibration: Any, *, device: Any, batch_size: int,
                 unit_axis: int | None, warn: Warn, threads: int | None = None):
        from reludoctor.backends.onnx.loader import opset_of

        model = loaded.module
        self.loaded = loaded
        self.where = loaded.path or "in-memory ONNX model"
        self.fixed = loaded.fixed_batch
        self.rows = self.fixed or batch_size
        opset = opset_of(model) or 11
        providers = _providers(device)
        if any(n.op_type in RELU_FAMILY for f in model.functions for n in f.node):
            try:
                import onnx.inliner
            except ImportError:  # onnx < 1.16
                warn("the model has ReLU-family nodes inside local functions, which this onnx "
                     "version cannot inline: they are not observed (install onnx >= 1.16)")
            else:
                model = onnx.inliner.inline_local_functions(model)  # a copy: sites inside functions
        types = _value_types(model)
        discovery = _discover(model, opset, types)
        self.ignored = list(discovery.ignored)
        if discovery.gates:
            warn(f"{discovery.gates} hard-swish/hard-sigmoid gate(s) (HardSwish, HardSigmoid or "
                 "x * Clip(x + 3, 0, 6) / 6) are smooth gates, not ReLUs: not reported as sites")
        self.unobserved = [UnobservedSite(s.name, s.op, s.unobserved)
                           for s in discovery.sites if s.unobserved]
        sites = [s for s in discovery.sites if not s.unobserved]
        if not sites:
            if self.unobserved:
                raise NoSitesError(f"{self.where}: {len(self.unobserved)} ReLU-family site(s), none "
                                   f"observable: {self.unobserved[0].reason}")
            raise NoSitesError(f"{self.where}: no ReLU-family node in the ONNX graph",
                               activations.describe("onnx"))
        unknown = []
        for site in sites:
            elem_type, dims = types.get(site.x, (0, None))
            site.elem_type = elem_type
            site.dims = dims
            if dims is None or elem_type == 0:
                unknown.append(site)
        nested_unknown = {id(s) for s in unknown if s.path}  # a branch tensor cannot be probed
        for site in unknown:
            if id(site) in nested_unknown:
                self.unobserved.append(UnobservedSite(
                    site.name, site.op, "inside an If branch, and the shape of its input could not be inferred"))
        sites = [s for s in sites if id(s) not in nested_unknown]
        unknown = [s for s in unknown if id(s) not in nested_unknown]
        if unknown:
            first, _ = _feed(loaded, calibration.example(self.rows), calibration.source, 0, self.fixed,
                             calibration.binding)
            _probe_shapes(model, unknown, first, providers, self.where)
        for site in [s for s in sites if not s.dims]:
            self.unobserved.append(UnobservedSite(site.name, site.op,
                                                  "its input is a scalar: no batch, no units"))
        sites = [s for s in sites if s.dims]
        if not sites:
            raise NoSitesError(f"{self.where}: no ReLU-family site could be observed "
                               f"({self.unobserved[0].reason})")
        for site in sites:
            site.axis, site.axis_reason = _unit_axis(len(site.dims or ()), site.producer, unit_axis,
                                                     site.consumer)
        augmented, plans = _augmented_model(model, sites, opset, self.rows)
        self.session = _open_session(augmented, model, providers, self.where, threads)
        del augmented
        self.observers = [OnnxSiteObserver(site, plan) for site, plan in zip(sites, plans)
                          if plan is not None]
        self.output_names = [name for observer in self.observers for name in observer.output_names()]

    def run(self, calibration: Any, progress: Progress | None = None) -> int:
        """Every calibration batch through the session; returns the number of samples seen."""
        seen = 0
        for arrays in calibration.batches(self.rows):
            feed, valid = _feed(self.loaded, arrays, calibration.source, seen, self.fixed,
                                calibration.binding)
            if valid == 0:
                continue
            padded = valid if self.fixed is None or valid >= self.fixed else self.fixed
            try:
                values = self.session.run(self.output_names, feed, _quiet_run_options())
            except Exception as exc:  # onnxruntime rejected the data (shape, dtype, a runtime check)
                raise DataError(
                    f"{calibration.source}: the model failed on samples {seen}-{seen + valid - 1}: "
                    f"{_ort_message(exc)}",
                    "check that the data matches the model's inputs (shape, dtype, count)") from exc
            results = dict(zip(self.output_names, values))
            for observer in self.observers:
                observer.update(results, padded, valid)
            seen += valid
            if progress is not None:
                progress(seen, calibration.samples)
        return seen

    def sites(self) -> list[tuple[SiteSpec, OnnxSiteObserver]]:
        return [(SiteSpec(o.site.name, o.site.op, o.site.module, o.site.lower, o.site.upper,
                          o.site.axis, False, o.site.axis_reason), o) for o in self.observers]


def observe_onnx(
    loaded: LoadedModel,
    calibration: Any,
    *,
    device: Any,
    batch_size: int,
    unit_axis: int | None,
    progress: Progress | None,
    warn: Warn,
    ignored: list | None = None,
) -> tuple[list[tuple[SiteSpec, OnnxSiteObserver]], int, list[UnobservedSite]]:
    """Instrument ``loaded`` (an ONNX model) in-graph and run the calibration data through it.
    ``ignored`` receives the ReLU-like nodes that are not activations (``report.IgnoredOp``)."""
    instrument = OnnxInstrument(loaded, calibration, device=device, batch_size=batch_size,
                                unit_axis=unit_axis, warn=warn)
    if ignored is not None:
        ignored.extend(instrument.ignored)
    samples = instrument.run(calibration, progress)
    for observer in instrument.observers:
        if observer.padding_counted:
            warn(f"site {observer.site.name}: its first axis is not the batch, so the padded rows of "
                 "the last (fixed-size) batch are counted too")
    return instrument.sites(), samples, list(instrument.unobserved)
