"""Observe every ReLU-family node of a torch.export graph.

An observer call is inserted just before each activation node, on its input: that is the
pre-activation, even for an inplace ``relu_`` that overwrites it. The graph module comes from
``ExportedProgram.module()``, a fresh copy, so the caller's program is never modified.
"""

from __future__ import annotations

from typing import Any

from reludoctor.backends.torch.sites import (
    FORWARD_OPS,
    PASS_THROUGH_OPS,
    base_name,
    decide,
    derive,
    op_base_name,
    producer_kind,
)
from reludoctor.core.observers import BatchContext, TorchUnitObserver
from reludoctor.core.sites import (
    CONSTANT_ORIGIN,
    INPUT_ORIGIN,
    Ignored,
    Origin,
    SiteSpec,
    strongest,
    unique_names,
    unit_axis_choice,
)


def _module_of(node: Any) -> tuple[str, str]:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "", ""
    path, module_type = list(stack.values())[-1]
    return str(path), str(module_type)


def _producer(node: Any, depth: int = 8) -> str | None:
    """Walk back through normalisation/add/dropout to the op that laid out the units."""
    frontier = [node]
    for _ in range(depth):
        next_frontier = []
        for current in frontier:
            if getattr(current, "op", None) != "call_function":
                continue
            name = op_base_name(current.target)
            kind = producer_kind(name)
            if kind is not None:
                return kind
            if name.rstrip("_") in PASS_THROUGH_OPS or name == "getitem":
                next_frontier.extend(a for a in current.args if hasattr(a, "op"))
        if not next_frontier:
            return None
        frontier = next_frontier
    return None


def _consumer(node: Any, depth: int = 8) -> str | None:
    """The kind ("conv" | "linear") of the layers the activation ``node`` feeds, through copies
    (clone, dropout, ...): a convolution when any user is one."""
    frontier, kinds = [node], set()
    for _ in range(depth):
        next_frontier = []
        for current in frontier:
            for user in current.users:
                if user.op != "call_function":
                    continue
                name = op_base_name(user.target)
                if name.rstrip("_") in FORWARD_OPS or name == "getitem":
                    next_frontier.append(user)
                elif producer_kind(name) is not None:
                    kinds.add(producer_kind(name))
        frontier = next_frontier
    return "conv" if "conv" in kinds else "linear" if "linear" in kinds else None


def _ndim(node: Any) -> int:
    value = node.meta.get("val")
    return int(value.ndim) if value is not None and hasattr(value, "ndim") else 2


def _floating(node: Any) -> bool:
    value = node.meta.get("val")
    dtype = getattr(value, "dtype", None)
    return bool(dtype.is_floating_point) if dtype is not None else True


def _origins(graph_module: Any) -> dict[Any, Origin]:
    """Every node's origin (``sites.derive``), in graph order: placeholders are the inputs."""
    origins: dict[Any, Origin] = {}

    def inputs(value: Any, out: list) -> list:
        if hasattr(value, "op") and hasattr(value, "users"):
            out.append(origins.get(value, CONSTANT_ORIGIN))
        elif isinstance(value, (list, tuple)):
            for item in value:
                inputs(item, out)
        elif isinstance(value, dict):
            for item in value.values():
                inputs(item, out)
        return out

    for node in graph_module.graph.nodes:
        if node.op == "placeholder":
            origins[node] = INPUT_ORIGIN
        elif node.op == "call_function":
            found = inputs(list(node.args) + list(node.kwargs.values()), [])
            if op_base_name(node.target) == "getitem":
                origins[node] = strongest(found)
                continue
            first = node.args[0] if node.args and hasattr(node.args[0], "meta") else None
            origins[node] = derive(op_base_name(node.target), node.args, node.kwargs, found,
                                   _ndim(first) if first is not None else None)
        elif node.op in ("call_module", "call_method"):
            origins[node] = strongest(inputs(list(node.args) + list(node.kwargs.values()), []))
    return origins


def _classified(graph_module: Any) -> tuple[list, list]:
    """(activation nodes, ignored ReLU-like nodes), both [(node, activation, path, base name)]."""
    found, ignored = [], []
    origins = _origins(graph_module)
    for node in graph_module.graph.nodes:
        if node.op != "call_function" or not node.args or not hasattr(node.args[0], "op"):
            continue
        pre = node.args[0]
        activation = decide(node.target, node.args, node.kwargs, origins.get(pre), _floating(pre))
        if activation is None:
            continue
        path, module_type = _module_of(node)
        entry = (node, activation, path, base_name(path, module_type, activation.op))
        (ignored if isinstance(activation, Ignored) else found).append(entry)
    return found, ignored


def activation_nodes(graph_module: Any) -> list[tuple[Any, Any, str, str]]:
    """(node, activation, module path, site name) for every activation node of an exported
    graph, in graph order (= execution order): the one place sites of a graph are named, so the
    observers, the evidence, the gradient probes and the fixes agree on names."""
    found, _ = _classified(graph_module)
    names = unique_names([entry[3] for entry in found])
    return [(node, activation, path, name) for (node, activation, path, _), name in zip(found, names)]


def ignored_nodes(graph_module: Any) -> list:
    """The ReLU-like nodes that are not activations (``report.IgnoredOp``), one per name, op
    and reason, in graph order."""
    from reludoctor.report.model import IgnoredOp

    _, ignored = _classified(graph_module)
    seen = dict.fromkeys((name, found.op, path, found.reason) for _, found, path, name in ignored)
    return [IgnoredOp(op, name, path, reason) for name, op, path, reason in seen]


def instrument_graph_module(
    graph_module: Any, batch: BatchContext, unit_axis: int | None = None,
    ignored: list | None = None,
) -> list[tuple[SiteSpec, TorchUnitObserver]]:
    """Insert one observer per activation node (graph order = execution order); ``ignored``
    receives the ReLU-like nodes that are not activations."""
    sites = []
    graph = graph_module.graph
    if ignored is not None:
        ignored.extend(ignored_nodes(graph_module))
    for node, activation, path, name in activation_nodes(graph_module):
        pre = node.args[0]
        axis, reason = unit_axis_choice(_ndim(pre), _producer(pre), _consumer(node), unit_axis)
        spec = SiteSpec(name, activation.op, path, activation.lower, activation.upper, axis,
                        activation.inplace, reason)
        observer = TorchUnitObserver(axis, activation.lower, activation.upper, batch)
        observer.__name__ = f"reludoctor_observe_{len(sites)}"  # FX names nodes after targets
        with graph.inserting_before(node):
            graph.call_function(observer, (node.args[0],))
        sites.append((spec, observer))
    graph_module.recompile()
    return sites
