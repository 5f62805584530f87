"""A torch.export graph made editable: Conv/Linear/BatchNorm calls lifted back into modules.

``ExportedProgram.module()`` calls ``aten.conv2d(x, weight, bias, ...)`` on parameters held by
plain container modules, so a dependency-graph library that works on ``nn.Conv2d`` modules cannot
see the layers. ``lift`` replaces each such call (and BatchNorm in eval form, and ``linear``) with
a ``call_module`` to a real ``nn.Conv*d`` / ``nn.Linear`` / ``nn.BatchNorm*d`` placed at the same
module path and sharing the same parameter tensors, so parameter names (state_dict keys) and the
activation nodes' ``nn_module_stack`` metadata - hence the scan's site names - stay the same.
Calls that cannot be lifted exactly (transposed convolutions, training-mode BatchNorm, containers
holding more than the layer's own tensors) stay functional: their layers are then not editable.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

from reludoctor.backends.torch.export import activation_nodes as graph_activation_nodes
from reludoctor.backends.torch.sites import ActivationOp, op_base_name

CONV_CALLS = {"conv1d": 1, "conv2d": 2, "conv3d": 3}


@dataclass(frozen=True)
class ActivationNode:
    """One activation call in a graph, named exactly as the scan's export path names it."""

    name: str
    node: Any
    activation: ActivationOp


def get_path(root: Any, path: str) -> Any:
    value = root
    for part in path.split("."):
        if not part:
            continue
        value = getattr(value, part, None)
        if value is None:
            return None
    return value


def _set_module(root: Any, path: str, module: Any) -> None:
    parent, _, leaf = path.rpartition(".")
    setattr(get_path(root, parent) if parent else root, leaf, module)


def activation_nodes(graph_module: Any) -> list[ActivationNode]:
    """Every ReLU-family call node, in graph order, with the scan's site names."""
    return [ActivationNode(name, node, activation)
            for node, activation, _, name in graph_activation_nodes(graph_module)]


def export_program(module: Any, example: tuple, dynamic_batch: bool) -> Any:
    """torch.export (non-strict) with a dynamic batch axis on every input when asked."""
    import torch
    from torch.export import Dim

    if dynamic_batch and example[0].shape[0] < 2:  # a batch of 1 would be specialised
        example = tuple(torch.cat([t, t]) for t in example)
    from reludoctor.backends.torch.scan import quiet_export

    shapes = tuple({0: Dim("batch")} for _ in example) if dynamic_batch else None
    with quiet_export():  # a failed capture's graph dump is not the user's to read
        return torch.export.export(module, example, dynamic_shapes=shapes, strict=False)


def _container_ok(container: Any, own: set[str]) -> bool:
    """A container we may replace: no child modules, and no tensors besides ``own``."""
    if container is None or any(True for _ in container.children()):
        return False
    names = {n for n, _ in container.named_parameters(recurse=False)}
    names |= {n for n, _ in container.named_buffers(recurse=False)}
    return names <= own


def _attr_target(node: Any) -> str | None:
    return str(node.target) if getattr(node, "op", None) == "get_attr" else None


def _split(target: str) -> tuple[str, str]:
    path, _, leaf = target.rpartition(".")
    return path, leaf


def _as_tuple(value: Any, dims: int, default: int) -> tuple:
    if value is None:
        return (default,) * dims
    if isinstance(value, int):
        return (value,) * dims
    value = tuple(value)
    return value * dims if len(value) == 1 else value


def _weight_and_bias(graph_module: Any, weight_ref: Any, bias_ref: Any) -> tuple[str, Any, Any] | None:
    """(module path, weight, bias or None) when both are attributes ``path.weight`` and
    ``path.bias`` of one module of the graph, else None."""
    weight_target = _attr_target(weight_ref)
    bias_target = _attr_target(bias_ref) if bias_ref is not None else None
    if weight_target is None or (bias_ref is not None and bias_target is None):
        return None
    path, leaf = _split(weight_target)
    if leaf != "weight" or not path:
        return None
    if bias_target is not None and _split(bias_target)[0] != path:
        return None
    bias = get_path(graph_module, bias_target) if bias_target is not None else None
    return path, get_path(graph_module, weight_target), bias


def _conv_module(graph_module: Any, node: Any, name: str) -> tuple[str, Any] | None:
    import torch.nn as nn

    args = list(node.args) + [None] * 9
    x, weight_ref, bias_ref = args[0], args[1], args[2]
    if name in ("convolution", "_convolution"):
        stride, padding, dilation, transposed, output_padding, groups = args[3:9]
        if transposed:
            return None
    else:
        stride, padding, dilation, groups = args[3:7]
    found = _weight_and_bias(graph_module, weight_ref, bias_ref)
    if found is None:
        return None
    path, weight, bias = found
    dims = weight.ndim - 2
    if dims not in (1, 2, 3):
        return None
    groups = int(groups or 1)
    if isinstance(padding, str):
        pad: Any = padding
    else:
        pad = _as_tuple(padding, dims, 0)
    cls = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}[dims]
    conv = cls(weight.shape[1] * groups, weight.shape[0], tuple(weight.shape[2:]),
               stride=_as_tuple(stride, dims, 1), padding=pad, dilation=_as_tuple(dilation, dims, 1),
               groups=groups, bias=bias_ref is not None, device="meta")
    conv.weight = weight
    conv.bias = bias
    del x
    return path, conv


def _linear_module(graph_module: Any, node: Any) -> tuple[str, Any] | None:
    import torch.nn as nn

    args = list(node.args) + [None] * 3
    bias_ref = args[2] if len(node.args) > 2 else node.kwargs.get("bias")
    found = _weight_and_bias(graph_module, args[1], bias_ref)
    if found is None:
        return None
    path, weight, bias = found
    if weight.ndim != 2:
        return None
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias_ref is not None, device="meta")
    linear.weight = weight
    linear.bias = bias
    return path, linear


def _norm_module(graph_module: Any, node: Any, name: str) -> tuple[str, Any] | None:
    import torch.nn as nn

    args = list(node.args) + [None] * 9
    if name == "batch_norm":
        x, w, b, mean, var, training, momentum, eps = args[:8]
        if training:
            return None
    else:  # _native_batch_norm_legit_no_training(input, weight, bias, mean, var, momentum, eps)
        x, w, b, mean, var, momentum, eps = args[:7]
    targets = [_attr_target(r) if r is not None else None for r in (w, b, mean, var)]
    if targets[2] is None or targets[3] is None or (w is not None and targets[0] is None) \
            or (b is not None and targets[1] is None) or (w is None) != (b is None):
        return None
    path = _split(targets[2])[0]
    if not path or any(t is not None and _split(t)[0] != path for t in targets):
        return None
    value = x.meta.get("val") if hasattr(x, "meta") else None
    ndim = int(value.ndim) if value is not None and hasattr(value, "ndim") else None
    cls = {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}.get(ndim)
    if cls is None:
        return None
    running_mean = get_path(graph_module, targets[2])
    norm = cls(running_mean.shape[0], eps=float(eps if eps is not None else 1e-5),
               momentum=float(momentum) if momentum is not None else 0.1, affine=w is not None,
               device="meta")
    if w is not None:
        norm.weight = get_path(graph_module, targets[0])
        norm.bias = get_path(graph_module, targets[1])
    norm.running_mean = running_mean
    norm.running_var = get_path(graph_module, targets[3])
    container = get_path(graph_module, path)
    tracked = getattr(container, "num_batches_tracked", None)
    norm.num_batches_tracked = tracked
    norm.eval()
    return path, norm


def lift(graph_module: Any) -> Any:
    """A new, editable GraphModule computing the same function as ``graph_module`` (an
    ``ExportedProgram.module()``), with Conv/Linear/BatchNorm calls as real modules.

    The input graph module is not modified (its parameters are copied)."""
    import torch.fx

    source = copy.deepcopy(graph_module)
    graph = source.graph
    lifted: dict[str, Any] = {}
    for node in list(graph.nodes):
        if node.op == "call_module" and str(node.target) == "_guards_fn" and not node.users:
            graph.erase_node(node)  # the old program's input-shape guards; re-export adds its own
            continue
        if node.op != "call_function":
            continue
        name = op_base_name(node.target)
        built = None
        if name in CONV_CALLS or name in ("convolution", "_convolution"):
            built = _conv_module(source, node, name)
            own = {"weight", "bias"}
        elif name == "linear":
            built = _linear_module(source, node)
            own = {"weight", "bias"}
        elif name in ("batch_norm", "_native_batch_norm_legit_no_training"):
            built = _norm_module(source, node, name)
            own = {"weight", "bias", "running_mean", "running_var", "num_batches_tracked"}
        if built is None:
            continue
        path, module = built
        if path in lifted:
            previous = lifted[path]
            if repr(previous) != repr(module):  # the same weights used with other settings
                continue
            module = previous
        elif not _container_ok(get_path(source, path), own):
            continue
        lifted[path] = module
        _set_module(source, path, module)
        with graph.inserting_before(node):
            call = graph.call_module(path, (node.args[0],))
        call.meta = dict(node.meta)
        if name == "_native_batch_norm_legit_no_training":  # returns (out, mean, rstd)
            users = list(node.users)
            if not all(op_base_name(u.target) == "getitem" and u.args[1] == 0 for u in users):
                graph.erase_node(call)
                continue
            for user in users:
                user.replace_all_uses_with(call)
                graph.erase_node(user)
        else:
            node.replace_all_uses_with(call)
        graph.erase_node(node)
    graph.eliminate_dead_code()
    # A plain GraphModule (an ExportedProgram's module refuses .eval()/.train()).
    lifted_module = torch.fx.GraphModule(source, graph)
    lifted_module.eval()
    return lifted_module
