"""Gradient plans for PyTorch models: probes inserted in the exported graph, or hooks on the tensors a dispatch pass sees."""

from __future__ import annotations

from typing import Any

from reludoctor.backends.torch.export import activation_nodes
from reludoctor.core.gradients import (ACTIVATION_BACKWARD, GradientPass, PassContext,
                                       SiteAccumulator, unique_params)


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
    context = PassContext()
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


def dispatch_plan(module: Any, unit_axis: int | None, static: Any, evidence: dict[str, Any]) -> GradientPass:
    """Sites named by the dispatch instrumenter's own logic; per call, the mask is taken from the
    pre-activation the mode sees, and the gradients from the activation's autograd node."""
    from reludoctor.backends.torch.dispatch import DispatchInstrument
    from reludoctor.core.observers import BatchContext

    context = PassContext()

    class _Probe(DispatchInstrument):
        def __init__(self) -> None:
            super().__init__(module, BatchContext(), unit_axis)
            self.calls: list[tuple[SiteAccumulator, Any]] = []

        def observe(self, func: Any, args: tuple, kwargs: dict, producers: Any) -> Any:
            call = self.site_call(func, args, kwargs)
            if call is None:
                return None
            key, activation, path = call
            accumulator = self._observers.get(key)
            if accumulator is None:
                accumulator = SiteAccumulator(key[0], activation.op, activation.lower, activation.upper,
                                              context)
                self._observers[key] = accumulator
                self._specs[key] = (activation, path, 0)
                self._keys.append(key)
            accumulator.forward(args[0])
            return accumulator

        def after_call(self, func: Any, args: tuple, kwargs: dict, out: Any, observed: Any,
                       producers: Any) -> None:
            if observed is not None:
                self.calls.append((observed, out))

        def start(self) -> None:
            self.calls.clear()
            self.start_forward()

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

    probe = _Probe()

    def forward(*args: Any) -> Any:
        import torch

        # TorchScript's profiling executor would fuse ops (and their autograd nodes) after a
        # few runs: run them one by one.
        with torch.jit.optimized_execution(False), probe.active():
            return probe.forward(*args)

    plan = GradientPass(forward, [], unique_params(getattr(module, "parameters", lambda: [])()),
                 before_forward=probe.start, after_forward=probe.hook_nodes, context=context)
    params = dict(getattr(module, "named_parameters", lambda: [])())
    plan.producers = {name: params.get(ev.weight) for name, ev in evidence.items()}
    plan.probe = probe  # type: ignore[attr-defined]
    plan.static = static  # type: ignore[attr-defined]
    return plan


def _finish_dispatch(plan: GradientPass) -> None:
    """Names of the dispatch sites (the same as the dead-unit pass), onto the accumulators."""
    probe = plan.probe  # type: ignore[attr-defined]
    ordered = []
    for spec, accumulator in probe.sites(plan.static):  # type: ignore[attr-defined]
        accumulator.name = spec.name
        ordered.append(accumulator)
    plan.accumulators = ordered
