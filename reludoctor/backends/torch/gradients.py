"""Gradient plans for PyTorch models: probes inserted in the exported graph, or hooks on the tensors a dispatch pass sees.

How: tensor hooks (``register_hook``) on each activation's input and output, never module
backward hooks (those raise with inplace ReLU). A hook registered on a tensor before an inplace
op receives the gradient with respect to its value before that op, so an inplace ``relu_``'s
pre-activation gradient is exact. Sites are found as the dead-unit pass finds them, so names and
order match: probes inserted before and after each activation node of a fresh copy of the
exported graph (``ExportedProgram.module()``), or, for models observed with TorchDispatchMode
(TorchScript, data-dependent control flow), the activation's autograd node, found from the
tensor the mode saw. ONNX models go through onnx2torch when it is installed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from reludoctor import activations
from reludoctor.backends.torch.dispatch import DispatchHook, DispatchInstrument
from reludoctor.backends.torch.export import activation_nodes
from reludoctor.core.gradients import GradientPass, SiteAccumulator, unique_params
from reludoctor.core.observers import BatchContext

# Autograd nodes of ReLU-family ops (dispatch path): the node's hook sees both gradients.
ACTIVATION_BACKWARD = activations.torch_backward()


def insert_probes(graph: Any, node: Any, accumulator: SiteAccumulator, index: int) -> None:
    """Probe calls around an activation node: before it, on its input (the forward statistics
    and a tensor hook for dL/d(pre-activation)); after it, a tensor hook on its output."""

    def before(x: Any, _acc: SiteAccumulator = accumulator) -> None:
        _acc.forward(x)
        if getattr(x, "requires_grad", False):
            x.register_hook(_acc.backward_pre)
            _acc.hooked = True

    def after(y: Any, _acc: SiteAccumulator = accumulator) -> None:
        if getattr(y, "requires_grad", False):
            y.register_hook(_acc.backward_out)

    before.__name__ = f"reludoctor_grad_in_{index}"
    after.__name__ = f"reludoctor_grad_out_{index}"
    with graph.inserting_before(node):
        graph.call_function(before, (node.args[0],))
    with graph.inserting_after(node):
        graph.call_function(after, (node,))


def graph_plan(graph_module: Any, evidence: dict[str, Any]) -> GradientPass:
    """Probes before and after every activation node, named as instrument_graph_module does."""
    context = BatchContext()
    graph = graph_module.graph
    accumulators = []
    for index, (node, activation, _, name) in enumerate(activation_nodes(graph_module)):
        accumulator = SiteAccumulator(name, activation.op, activation.lower, activation.upper, context)
        insert_probes(graph, node, accumulator, index)
        accumulators.append(accumulator)
    graph_module.recompile()
    params = dict(graph_module.named_parameters())
    producers = {name: params.get(ev.weight) for name, ev in evidence.items()}
    return GradientPass(graph_module, accumulators, unique_params(graph_module.parameters()), producers,
                        context=context)


class _GradientHook(DispatchHook):
    """Per site a SiteAccumulator: the mask from the pre-activation the mode sees; after the
    forward pass, hooks on each call's autograd node for both gradients."""

    def __init__(self, context: BatchContext) -> None:
        self.context = context
        self.calls: list[tuple[SiteAccumulator, Any]] = []  # this forward's (site, output)

    def on_site(self, name: str, activation: Any, pre: Any) -> SiteAccumulator:
        return SiteAccumulator(name, activation.op, activation.lower, activation.upper, self.context)

    def on_call(self, site: SiteAccumulator, pre: Any) -> None:
        site.forward(pre)

    def on_result(self, func: Any, args: tuple, kwargs: dict, out: Any, site: Any) -> None:
        if site is not None:
            self.calls.append((site, out))

    def hook_nodes(self) -> None:
        for accumulator, out in self.calls:
            node = getattr(out, "grad_fn", None)
            if node is None:
                continue
            if not type(node).__name__.startswith(ACTIVATION_BACKWARD):
                accumulator.failure = (f"its output was changed in place afterwards "
                                       f"({type(node).__name__})")
                continue

            def hook(grad_inputs: Any, grad_outputs: Any, _acc: SiteAccumulator = accumulator) -> None:
                _acc.backward_out(grad_outputs[0])
                _acc.backward_pre(grad_inputs[0] if grad_inputs else None)

            node.register_hook(hook)
            accumulator.hooked = True
        self.calls.clear()


@dataclass
class DispatchPass(GradientPass):
    """A gradient pass through a DispatchInstrument: its sites are named after the pass."""

    probe: Any = None
    static: Any = None  # TorchScript call sites (``torchscript_names``) that name the sites


def dispatch_plan(module: Any, unit_axis: int | None, static: Any, evidence: dict[str, Any]) -> GradientPass:
    """Sites named by the dispatch instrumenter's own logic; per call, the mask is taken from the
    pre-activation the mode sees, and the gradients from the activation's autograd node."""
    context = BatchContext()
    hook = _GradientHook(context)
    probe = DispatchInstrument(module, unit_axis=unit_axis, hook=hook)

    def start() -> None:
        hook.calls.clear()
        probe.start_forward()

    def forward(*args: Any) -> Any:
        # TorchScript's profiling executor would fuse ops (and their autograd nodes) after a
        # few runs: run them one by one.
        with torch.jit.optimized_execution(False), probe.active():
            return probe.forward(*args)

    params = dict(getattr(module, "named_parameters", lambda: [])())
    return DispatchPass(forward, [], unique_params(getattr(module, "parameters", lambda: [])()),
                        {name: params.get(ev.weight) for name, ev in evidence.items()},
                        before_forward=start, after_forward=hook.hook_nodes, context=context,
                        probe=probe, static=static)


def _finish_dispatch(plan: DispatchPass) -> None:
    """Names of the dispatch sites (the same as the dead-unit pass), onto the accumulators."""
    ordered = []
    for spec, accumulator in plan.probe.sites(plan.static):
        accumulator.name = spec.name
        ordered.append(accumulator)
    plan.accumulators = ordered
