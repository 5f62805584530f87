"""The gradient plan for ONNX models: the graph converted with onnx2torch, differentiated with autograd."""

from __future__ import annotations

from typing import Any, Iterable

from reludoctor.backends.onnx.discover import Scanned, site_nodes
from reludoctor.backends.torch.gradients import insert_probes
from reludoctor.core.gradients import (
    GradientPass,
    GradientsUnavailable,
    SiteAccumulator,
    unique_params,
)
from reludoctor.core.observers import BatchContext
from reludoctor.errors import first_line
from reludoctor.report.model import SiteStats


def converted(model: Any, names: Iterable[str], scanned: Scanned | None,
              unavailable: type[Exception]) -> tuple[Any, dict[str, tuple[Any, Any]], dict[Any, str]]:
    """The model converted with onnx2torch: (graph module, site name -> (ONNX site, the fx node
    of its activation) for the sites ``names`` that map, fx node -> ONNX node name). Raises
    ``unavailable`` with the reason when onnx2torch is missing or cannot convert it."""
    try:
        from onnx2torch import convert
    except ImportError as exc:
        raise unavailable("onnx2torch is not installed (pip install 'reludoctor[gradients-onnx]')") from exc
    import onnx

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    try:
        graph_module = convert(copy)
    except Exception as exc:  # noqa: BLE001 - onnx2torch raises many kinds
        raise unavailable(f"onnx2torch cannot convert this model: {type(exc).__name__}: "
                          f"{first_line(exc)}") from exc
    nodes = list(model.graph.node)
    modules = [n for n in graph_module.graph.nodes if n.op == "call_module"]
    if len(modules) != len(nodes):
        raise unavailable("onnx2torch's module does not map one to one onto the ONNX nodes")
    fx_of = {onnx_node.output[0]: fx for onnx_node, fx in zip(nodes, modules) if onnx_node.output}
    wanted = set(names)
    onnx_names = {fx: onnx_node.name or onnx_node.output[0] for onnx_node, fx in zip(nodes, modules)}
    by_name = {}
    for name, (site, _) in site_nodes(model, scanned).items():
        fx_node = fx_of.get(site.y)
        if name in wanted and fx_node is not None and fx_node.args and hasattr(fx_node.args[0], "op"):
            by_name[name] = (site, fx_node)
    return graph_module, by_name, onnx_names


def onnx_plan(model: Any, sites: list[SiteStats], scanned: Scanned | None = None) -> GradientPass:
    """Convert with onnx2torch; probes around the converted module of each ONNX site."""
    graph_module, by_name, onnx_names = converted(model, [site.name for site in sites], scanned,
                                                  GradientsUnavailable)
    stats = {site.name: site for site in sites}
    context = BatchContext()
    accumulators = []
    graph = graph_module.graph
    for index, name in enumerate(n for n in stats if n in by_name):
        site, fx_node = by_name[name]
        accumulator = SiteAccumulator(name, site.op, stats[name].lower_bound, stats[name].upper_bound,
                                      context)
        insert_probes(graph, fx_node, accumulator, index)
        accumulators.append(accumulator)
    graph_module.recompile()
    graph_module.eval()
    producers = {}
    for accumulator in accumulators:
        producers[accumulator.name] = _onnx_producer(graph_module, by_name[accumulator.name][1],
                                                     onnx_names)
    plan = GradientPass(graph_module, accumulators, unique_params(graph_module.parameters()),
                 {k: v[1] for k, v in producers.items() if v is not None}, context=context)
    plan.producer_names = {k: v[0] for k, v in producers.items() if v is not None}  # type: ignore[attr-defined]
    return plan


def _onnx_producer(graph_module: Any, fx_node: Any, onnx_names: dict) -> tuple[str, Any] | None:
    import torch

    node = fx_node.args[0]
    for _ in range(4):
        if getattr(node, "op", None) != "call_module":
            return None
        sub = graph_module.get_submodule(node.target)
        if isinstance(sub, torch.nn.modules.batchnorm._BatchNorm) and node.args:
            node = node.args[0]
            continue
        if isinstance(sub, (torch.nn.Conv1d, torch.nn.Conv2d, torch.nn.Conv3d, torch.nn.Linear)):
            return onnx_names.get(node, str(node.target)), sub.weight
        return None
    return None
