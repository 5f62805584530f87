"""The ReLU-family sites of an ONNX model: found by op type (never by name), and named once.

``Relu``; ``Clip`` with a constant min of 0 (``relu6`` when max is 6, else ``clip``); ``Max(x, 0)``
(``relu``); ``LeakyRelu`` and ``PRelu`` (``leaky_relu``/``prelu``: a unit "fires" when its
pre-activation is > 0, so a dead one is always on the negative side). Hard-swish / hard-sigmoid
gates (``x * Clip(x + 3, 0, 6) / 6``) are recognised and not reported (a warning counts them).
What is an activation follows ``sites`` (its docstring has the rule): a Clip to a computed bound,
an op on integers, on box coordinates (an input from Gather/Slice on the last axis, GatherND,
TopK, ...) or on constants is no site and goes to ``ignored_ops`` with the reason. Sites inside
``If`` branches are observed; sites inside ``Loop``/``Scan`` bodies, and activations already fused
by onnxruntime (``com.microsoft`` FusedConv/FusedGemm), are reported as unobserved sites with the
reason.

``discover_model`` is the one place a site gets its name: the observer, the producer evidence,
the gradient plan and the fixer all read the names (and nodes) from it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from reludoctor import activations
from reludoctor.backends.onnx.scope import _attribute, _module_of, _Scope
from reludoctor.backends.onnx.shapes import _value_types
from reludoctor.core.sites import (
    CONSTANT_ORIGIN,
    INDEXED,
    LAYER,
    Origin,
    not_an_activation,
    strongest,
    unique_names,
)
from reludoctor.report.model import IgnoredOp

DEFAULT_DOMAINS = ("", "ai.onnx")
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
# The op types that are a site whatever their constants (Clip and Max: only with the bounds
# ``_classify`` checks), with their catalogue entry.
PLAIN_OPS = {name: a for a in activations.CATALOGUE for name in a.onnx_ops if name not in ("Clip", "Max")}
FUSED_ACTIVATION_OPS = {"FusedConv", "FusedGemm", "NhwcFusedConv", "FusedMatMul"}
FUSED_ACTIVATIONS = activations.onnx_fused()

Warn = Callable[[str], None]


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
    plain = PLAIN_OPS.get(kind)
    if plain is not None:  # |Y| of an op not zero below its bound needs an Abs
        return plain.op, None, node.input[0], not plain.zero_below, None
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


@dataclass
class Scanned:
    """A model's sites as the scan names them, and what the observer needs next."""

    model: Any  # the model scanned: the one given, or a copy with its local functions inlined
    opset: int
    types: dict  # ``_value_types`` of ``model``
    discovery: _Discovery


def discover_model(model: Any, warn: Warn | None = None) -> Scanned:
    """The sites of ``model`` (local functions inlined first, so the sites inside them are found
    too), named as every report, evidence, gradient and fix names them."""
    from reludoctor.backends.onnx.loader import opset_of

    opset = opset_of(model) or 11
    if any(n.op_type in RELU_FAMILY for f in model.functions for n in f.node):
        try:
            import onnx.inliner
        except ImportError:  # onnx < 1.16
            if warn is not None:
                warn("the model has ReLU-family nodes inside local functions, which this onnx "
                     "version cannot inline: they are not observed (install onnx >= 1.16)")
        else:
            model = onnx.inliner.inline_local_functions(model)  # a copy: sites inside functions
    types = _value_types(model)
    return Scanned(model, opset, types, _discover(model, opset, types))


def site_nodes(model: Any, scanned: Scanned | None = None) -> dict[str, tuple[_Found, Any]]:
    """site name -> (site, its node in ``model.graph``), for the observable sites of the main
    graph (those a graph edit or a converted module can reach). The node is found by its first
    output, ``site.y`` (a function's call node keeps the output of the site inlined from it:
    only ReLU-family nodes count). ``scanned``: the scan's own discovery of ``model``, reused
    (it costs a shape inference); None: discovered here."""
    by_output = {node.output[0]: node for node in model.graph.node
                 if node.output and node.op_type in RELU_FAMILY and node.domain in DEFAULT_DOMAINS}
    scanned = scanned or discover_model(model)
    return {site.name: (site, by_output[site.y]) for site in scanned.discovery.sites
            if not site.path and not site.unobserved and site.y in by_output}
