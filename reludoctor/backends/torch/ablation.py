"""Ablators for PyTorch models: zero chosen units of an activation's output, site by site.

Export route: a call after every activation node of a fresh copy of the exported graph
(``ExportedProgram.module()``), named by ``export.activation_nodes`` as the scan names sites; the
node's users read the call's result. Dispatch route: the ``DispatchInstrument`` finds the calls
as the scan does, and its hook zeroes the selected site's output in place right after the op
ran (inside ``__torch_dispatch__``, where the mode does not see the hook's own ops). Zeroing is
in place in both routes, so an inplace ``relu_``'s aliases see it too; ablated passes run under
``torch.inference_mode``, where that is allowed.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from reludoctor.backends.torch.dispatch import DispatchHook, DispatchInstrument
from reludoctor.backends.torch.export import activation_nodes
from reludoctor.core.observers import BatchContext, resolve_unit_axis


class _State:
    """What the next forward passes do at the sites: which units to zero, whether to record."""

    def __init__(self, axes: dict[str, int]) -> None:
        self.axes = axes
        self.site: str | None = None
        self.index: Any = None  # the units to zero, a tensor on the activation's device
        self.units: tuple[int, ...] = ()
        self.recording = False
        self.recorded: list[tuple[Any, Any]] = []  # (site name, or its dispatch holder; output)

    def select(self, site: str | None, units: Sequence[int]) -> None:
        self.site, self.units, self.index = site, tuple(units), None

    def record(self, on: bool) -> None:
        self.recording = on
        if on:
            self.recorded = []

    def take_outputs(self) -> dict[str, Any]:
        taken, self.recorded = self.recorded, []
        return {key if isinstance(key, str) else key[0]: y for key, y in taken}

    def apply(self, key: Any, y: Any) -> Any:
        if self.recording:
            self.recorded.append((key, y))
        name = key if isinstance(key, str) else key[0]
        if name != self.site or not self.units or not hasattr(y, "ndim"):
            return y
        if y.ndim == 1:  # [N]: one unit; zeroing it zeroes the whole activation
            return y.zero_()
        if self.index is None or self.index.device != y.device:
            self.index = torch.tensor(self.units, dtype=torch.long, device=y.device)
        return y.index_fill_(resolve_unit_axis(y.ndim, self.axes.get(name, 1)), self.index, 0.0)


class _Ablator:
    """What both routes share: the sites' state, set and read through the ``Ablator`` protocol
    (``core.ablation``)."""

    def __init__(self, axes: dict[str, int]) -> None:
        self.state = _State(axes)

    def select(self, site: str | None, units: Sequence[int]) -> None:
        self.state.select(site, units)

    def record(self, on: bool) -> None:
        self.state.record(on)

    def take_outputs(self) -> dict[str, Any]:
        return self.state.take_outputs()


class GraphAblator(_Ablator):
    """A graph module (a fresh copy of the exported program's, or onnx2torch's conversion) with a
    zeroing call after each activation."""

    def __init__(self, graph_module: Any, axes: dict[str, int], nodes: Any = None, method: str = "export") -> None:
        """``nodes``: (fx node, site name) of each activation; default: the exported graph's, as
        the scan names them (``export.activation_nodes``). ``method``: the report's name for how
        the graph was made."""
        super().__init__(axes)
        self.method = method
        graph = graph_module.graph
        if nodes is None:
            nodes = [(node, name) for node, _, _, name in activation_nodes(graph_module)]
        for index, (node, name) in enumerate(nodes):
            def zero(y: Any, _name: str = name) -> Any:
                return self.state.apply(_name, y)

            zero.__name__ = f"reludoctor_ablate_{index}"  # FX names nodes after targets
            with graph.inserting_after(node):
                call = graph.call_function(zero, (node,))
            node.replace_all_uses_with(call, delete_user_cb=lambda user, _call=call: user is not _call)
        graph_module.recompile()
        self.forward = graph_module

    def start(self, step: Any) -> None:
        pass


class _AblationHook(DispatchHook):
    """Per site a mutable name (known after the pass, as the scan names them); the op's output
    zeroed in place when its site is selected."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def on_site(self, name: str, activation: Any, pre: Any) -> list[str]:
        return [name]  # the base name until ``DispatchAblator.name_sites``

    def on_result(self, func: Any, args: tuple, kwargs: dict, out: Any, site: Any) -> None:
        if site is not None:
            self.state.apply(site, out)


class DispatchAblator(_Ablator):
    """A model run under the dispatch instrumenter, the selected site's output zeroed."""

    method = "dispatch"

    def __init__(self, module: Any, axes: dict[str, int], static: Any) -> None:
        super().__init__(axes)
        self.static = static
        # the batch context names a text site once for every sequence length, as the scan does
        self.context = BatchContext()
        self.probe = DispatchInstrument(module, self.context, hook=_AblationHook(self.state))
        self._named = 0

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        # TorchScript's profiling executor would fuse the ops the mode must see: one by one
        with torch.jit.optimized_execution(False), self.probe.active():
            out = self.probe.forward(*args, **kwargs)
        self._name_sites()
        return out

    def _name_sites(self) -> None:
        """Sites new in this pass get the scan's names (the unselected baseline pass of a batch
        runs first, so a site is named before it can be selected)."""
        found = self.probe.sites(self.static)
        if len(found) != self._named:
            for spec, holder in found:
                holder[0] = spec.name
            self._named = len(found)

    def start(self, step: Any) -> None:
        self.context.mask = step.mask
        self.probe.start_forward()
