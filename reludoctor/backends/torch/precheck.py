"""Before the calibration pass: does a torch.export program hold any ReLU-family op at all?

Deliberately loose: any op that could be a site (``clamp`` with any bounds, ``leaky_relu``), or
an op of an unknown library, lets the scan go on, and the site discovery (``backends.torch.sites``)
decides exactly; only a graph in which no such op appears is refused here.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import torch
import torch.fx

from reludoctor import activations
from reludoctor.errors import NoSitesError

# ATen ops that might be a ReLU-family site (a superset of what ``sites.classify`` accepts).
TORCH_CANDIDATES = {name.rstrip("_") for name in activations.torch_ops()} | {
    "clip", "leaky_relu", "prelu", "_prelu_kernel", "rrelu", "rrelu_with_noise", "_addmm_activation",
}
# Namespaces whose ops we know: an op of any other library might hide an activation.
TORCH_KNOWN_NAMESPACES = {"aten", "prims", "higher_order", "_operator"}
# Activations named in the message, so the user sees what the model uses instead.
TORCH_SMOOTH = {"silu", "gelu", "sigmoid", "tanh", "hardswish", "hardsigmoid", "mish", "elu",
                "selu", "celu", "softplus", "glu", "log_sigmoid_forward", "softsign"}

TORCH_HINT = (activations.describe("torch") + "; a model with "
              "smooth activations (SiLU, GELU) has no dead ReLU units to find")


def _torch_ops(program: Any) -> tuple[Counter, bool]:
    """(smooth activations by name, whether any node might be a site)."""
    smooth: Counter = Counter()
    for module in program.graph_module.modules():
        if not isinstance(module, torch.fx.GraphModule):
            continue
        for node in module.graph.nodes:
            if node.op != "call_function":
                continue
            target = node.target
            namespace = getattr(target, "namespace", None)
            if namespace is None:  # operator.getitem, sym ops, higher-order ops: their
                namespace = "higher_order" if isinstance(target, torch._ops.HigherOrderOperator) \
                    else "_operator"  # subgraphs are GraphModules of their own, visited above
            if namespace not in TORCH_KNOWN_NAMESPACES:
                return smooth, True  # a custom op: it may compute a ReLU we cannot see here
            packet = getattr(target, "_overloadpacket", None)
            name = (getattr(packet, "__name__", None) or getattr(target, "__name__", "")).split(".")[-1]
            base = name.rstrip("_") if name.endswith("_") and not name.startswith("_") else name
            if base in TORCH_CANDIDATES or name in TORCH_CANDIDATES:
                return smooth, True
            if base in TORCH_SMOOTH:
                smooth[base] += 1
    return smooth, False


def refuse_without_candidates(loaded: Any) -> None:
    """Raise NoSitesError when a torch ``loaded`` model is an exported program without an op
    that could be a site. An nn.Module or TorchScript (graph not known yet) passes."""
    if loaded.exported is not None:
        check_program(loaded.exported, loaded.path or "model")


def check_program(program: Any, where: str) -> None:
    """Raise NoSitesError when ``program`` (torch.export) holds no op that could be a site;
    also for a program the scan has just exported from an nn.Module, before its calibration pass."""
    smooth, candidate = _torch_ops(program)
    if not candidate:
        raise NoSitesError(f"{where}: no ReLU-family op in the exported graph ({activations.listed_uses(smooth)})",
                           TORCH_HINT)
