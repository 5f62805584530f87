"""The PyTorch backend's certify phase: the input box on the exported program's inputs,
interval bound propagation (``bounds``) through a fresh copy of its graph, and each site's
per-unit upper bound, named as the observers named the sites."""

from __future__ import annotations

from typing import Any

from reludoctor.core.certify import SiteBounds
from reludoctor.errors import UsageError

NO_GRAPH = ("certification needs the torch.export graph; not supported for models observed with "
            "dispatch (TorchScript, models torch.export cannot capture, --method dispatch)")


def site_bounds(observation: Any, calibration: Any, box: Any, run: Any, fixed_batch: int | None) -> SiteBounds:
    """Per site, the largest pre-activation each unit can reach for inputs in ``box``."""
    import torch

    from reludoctor.backends.torch import bounds
    from reludoctor.backends.torch.export import activation_nodes

    program = observation.artifacts.get("program") if observation.method == "export" else None
    if program is None:
        return SiteBounds(note=NO_GRAPH)
    graph_module = program.module()  # a fresh copy: the scan's graph carries observer calls
    graph_module.to(run.device)
    inputs = box_inputs(graph_module, calibration, box, run.device, fixed_batch or 1)
    with torch.no_grad():
        env = bounds.propagate(graph_module, inputs)
    axes = {spec.name: spec.unit_axis for spec, _ in observation.sites}
    result = SiteBounds()
    for node, _, _, name in activation_nodes(graph_module):
        value = bounds.as_interval(env[node.args[0]])
        if name not in axes:
            continue
        if isinstance(value, bounds.Unsupported):
            result.failed[name] = value.reason
            continue
        axis = axes[name] % value.hi.dim()
        others = [d for d in range(value.hi.dim()) if d != axis]
        upper = value.hi.amax(dim=others) if others else value.hi
        result.upper[name] = tuple(float(v) for v in upper.cpu())
    return result


def box_inputs(graph_module: Any, calibration: Any, box: Any, device: Any, rows: int) -> dict[str, Any]:
    """Placeholder name -> value: the box on the one floating-point input (``rows`` samples of
    it, for a fixed-batch export), the data's own values on the others (integers, constants)."""
    import torch
    from torch.utils._pytree import tree_leaves

    example = tuple(torch.as_tensor(a).to(device) for a in calibration.example(rows))
    args, kwargs = calibration.binding.arguments(example, device)
    leaves = tree_leaves((tuple(args), kwargs or {}))
    placeholders = [n for n in graph_module.graph.nodes if n.op == "placeholder"]
    floating = [i for i, leaf in enumerate(leaves) if isinstance(leaf, torch.Tensor) and leaf.is_floating_point()]
    if len(floating) > 1:
        raise UsageError(f"--input-range: the model has {len(floating)} floating-point inputs and one range "
                         "would apply to all of them", "per-input ranges are not supported yet; scan without "
                         "--input-range")
    if len(placeholders) != len(leaves):  # the inputs do not line up: every site says it has no value
        return {}
    return {node.name: _box(leaf, box, node.name) if i in floating else leaf
            for i, (node, leaf) in enumerate(zip(placeholders, leaves))}


def _box(leaf: Any, box: Any, name: str) -> Any:
    import torch

    from reludoctor.backends.torch.bounds import Interval

    shape = tuple(leaf.shape)
    low = torch.tensor(box.low, dtype=torch.float64, device=leaf.device)
    high = torch.tensor(box.high, dtype=torch.float64, device=leaf.device)
    if box.per_channel:
        if len(shape) < 2 or shape[1] != len(box.low):
            raise UsageError(f"--input-range {box.spec} has {len(box.low)} channels, but input {name} has "
                             f"shape {list(shape[1:])} (channels on axis 1)", "give LOW,HIGH for every element")
        view = [1, -1] + [1] * (len(shape) - 2)
        low, high = low.reshape(view), high.reshape(view)
    return Interval(low.expand(shape).clone(), high.expand(shape).clone())
