"""Observe every ReLU-family node of a torch.export graph.

An observer call is inserted just before each activation node, on its input: that is the
pre-activation, even for an inplace ``relu_`` that overwrites it. The graph module comes from
``ExportedProgram.module()``, a fresh copy, so the caller's program is never modified.
"""

from __future__ import annotations

from typing import Any

from reludoctor.instrument.sites import (
    PASS_THROUGH_OPS,
    SiteSpec,
    base_name,
    choose_unit_axis,
    classify,
    op_base_name,
    producer_kind,
    unique_names,
)
from reludoctor.observers import BatchContext, TorchUnitObserver


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


def _ndim(node: Any) -> int:
    value = node.meta.get("val")
    return int(value.ndim) if value is not None and hasattr(value, "ndim") else 2


def activation_nodes(graph_module: Any) -> list[tuple[Any, Any, str, str]]:
    """(node, activation, module path, site name) for every activation node of an exported
    graph, in graph order (= execution order): the one place sites of a graph are named, so the
    observers, the evidence, the gradient probes and the fixes agree on names."""
    found = []
    for node in graph_module.graph.nodes:
        if node.op != "call_function":
            continue
        activation = classify(node.target, node.args, node.kwargs)
        if activation is None or not node.args or not hasattr(node.args[0], "op"):
            continue
        path, module_type = _module_of(node)
        found.append((node, activation, path, base_name(path, module_type, activation.op)))
    names = unique_names([entry[3] for entry in found])
    return [(node, activation, path, name) for (node, activation, path, _), name in zip(found, names)]


def instrument_graph_module(
    graph_module: Any, batch: BatchContext, unit_axis: int | None = None
) -> list[tuple[SiteSpec, TorchUnitObserver]]:
    """Insert one observer per activation node (graph order = execution order)."""
    sites = []
    graph = graph_module.graph
    for node, activation, path, name in activation_nodes(graph_module):
        pre = node.args[0]
        axis = choose_unit_axis(_ndim(pre), _producer(pre), unit_axis)
        spec = SiteSpec(name, activation.op, path, activation.lower, activation.upper, axis,
                        activation.inplace)
        observer = TorchUnitObserver(axis, activation.lower, activation.upper, batch)
        observer.__name__ = f"reludoctor_observe_{len(sites)}"  # FX names nodes after targets
        with graph.inserting_before(node):
            graph.call_function(observer, (node.args[0],))
        sites.append((spec, observer))
    graph_module.recompile()
    return sites
