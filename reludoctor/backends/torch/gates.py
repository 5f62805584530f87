"""Hard-swish / hard-sigmoid gates in PyTorch models: counted and named, never sites.

``hardswish(x) = x * relu6(x + 3) / 6`` and ``hardsigmoid`` are smooth gates, not ReLUs (their
"dead" side still passes gradient near the knee), so no path reports them as sites. The ONNX
path says how many it passed over (``onnx.discover``); this module lets the PyTorch paths say the
same: from the exported graph, or by counting the calls of the first forward pass under
TorchDispatchMode (every call site runs once per forward, loops aside).
"""

from __future__ import annotations

from typing import Any, Callable

import torch.fx
from torch.utils._python_dispatch import TorchDispatchMode

GATE_OPS = {"hardswish", "hardswish_", "hardsigmoid", "hardsigmoid_"}


def message(count: int) -> str:
    """The warning, worded as the ONNX path's."""
    return (f"{count} hard-swish/hard-sigmoid gate(s) (hardswish, hardsigmoid) are smooth gates, "
            "not ReLUs: not reported as sites")


def _base(target: Any) -> str:
    packet = getattr(target, "_overloadpacket", None)
    name = getattr(packet, "__name__", None) or getattr(target, "__name__", None) or str(target)
    return name.split(".")[-1]


def count_graph(graph_module: Any) -> int:
    """Gate calls in a torch.fx GraphModule (an exported program's module), subgraphs included."""
    count = 0
    for module in graph_module.modules():
        if isinstance(module, torch.fx.GraphModule):
            count += sum(1 for node in module.graph.nodes
                         if node.op == "call_function" and _base(node.target) in GATE_OPS)
    return count


class GateCounter:
    """Counts the gate calls of the first forward it wraps (``wrap``); ``count`` is None until
    that forward has run. Its dispatch mode only counts: each call runs unchanged."""

    def __init__(self) -> None:
        self.count: int | None = None

    def wrap(self, forward: Callable[..., Any]) -> Callable[..., Any]:
        counter = self

        class _Counting(TorchDispatchMode):
            calls = 0

            def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # noqa: ANN001, ANN204
                if _base(func) in GATE_OPS:
                    self.calls += 1
                return func(*args, **(kwargs or {}))

        def counted(*args: Any, **kwargs: Any) -> Any:
            if counter.count is not None:
                return forward(*args, **kwargs)
            mode = _Counting()
            with mode:
                result = forward(*args, **kwargs)
            counter.count = mode.calls
            return result

        return counted
