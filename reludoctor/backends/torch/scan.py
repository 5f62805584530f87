"""The PyTorch backend's scan phases: capture the model with torch.export (or fall back to
TorchDispatchMode), observe its sites over the calibration data, and hand the evidence and
gradient passes what they reuse."""

from __future__ import annotations

import contextlib
import warnings
from typing import Any, Iterator

from reludoctor.backends.base import LoadedModel, Observation, ScanRun
from reludoctor.core.timings import phase
from reludoctor.errors import UsageError, first_line
from reludoctor.options import Method, ModelFormat


def export_for_scan(module: Any, calibration: Any, device: Any) -> Any:
    """torch.export with a dynamic batch, bound to the calibration data's inputs."""
    import torch
    from torch.export import Dim

    example = tuple(torch.as_tensor(a).to(device) for a in calibration.example(2))
    if example[0].shape[0] < 2:  # a batch of 1 would be specialised as a constant
        example = tuple(torch.cat([t, t]) for t in example)
    batch = Dim("batch")
    binding = calibration.binding  # positional/keyword arguments, constants, batch axes
    args, kwargs = binding.arguments(example, device)
    with quiet_export():
        return torch.export.export(module, tuple(args), kwargs=kwargs or None,
                                   dynamic_shapes=binding.dynamic_shapes(args, kwargs, batch),
                                   strict=False)


@contextlib.contextmanager
def quiet_export() -> Iterator[None]:
    """Keep torch quiet while it tries to export: a failed capture prints its partial graph to
    stderr (1,700 lines for a large model) and logs warnings through torch's own handlers. The
    scan says what matters in one warning (the fallback to TorchDispatchMode)."""
    import io
    import logging

    names = ["torch", *(name for name in list(logging.root.manager.loggerDict) if name.startswith("torch."))]
    loggers = [(logger, logger.level) for logger in map(logging.getLogger, names)]
    sink = io.StringIO()
    try:
        for logger, _ in loggers:
            logger.setLevel(logging.CRITICAL + 1)
        with warnings.catch_warnings(), contextlib.redirect_stderr(sink), contextlib.redirect_stdout(sink):
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in loggers:
            logger.setLevel(level)


def placed_by_accelerate(module: Any) -> bool:
    """Whether accelerate's big-model inference placed the model (``device_map``: layers on
    several devices, or offloaded to CPU or disk, with hooks that bring each layer's weights in
    for its forward). Such a model stays where it is, and is observed with dispatch: the hooks
    are Python code torch.export cannot trace, and the observers then live on each layer's
    device, as they allocate where the activation is."""
    if getattr(module, "hf_device_map", None):
        return True
    return any(hasattr(m, "_hf_hook") for m in getattr(module, "modules", lambda: ())())


@contextlib.contextmanager
def preserved(module: Any, device: Any, set_mode: bool) -> Iterator[None]:
    """Eval mode and the target device during the scan; training flags and device restored.

    Exported programs have no train/eval switch (their graph is fixed): ``set_mode`` is False.
    A model placed by accelerate keeps its placement (its inputs are moved by its hooks).
    """
    import torch

    modes = [(m, m.training) for m in module.modules() if hasattr(m, "training")] if set_mode else []
    params = list(module.parameters()) if hasattr(module, "parameters") and not placed_by_accelerate(module) else []
    original = params[0].device if params else None
    try:
        if set_mode and isinstance(module, torch.nn.Module):
            module.eval()
            if original is not None and original != device:
                module.to(device)
        yield
    finally:
        if original is not None and original != device:
            module.to(original)
        for submodule, training in modes:
            submodule.train(training)


def _capture(loaded: LoadedModel, calibration: Any, run: ScanRun) -> tuple[Any, Any]:
    """(program, graph module) to instrument, or (None, None) to observe with dispatch."""
    method = run.options.method
    if method == Method.DISPATCH:
        return None, None
    if loaded.exported is not None:
        return loaded.exported, loaded.module
    if loaded.format in (ModelFormat.TORCHSCRIPT, ModelFormat.HUGGINGFACE):
        return None, None  # HF: padded text batches vary in length (docs/language-models.md)
    if placed_by_accelerate(loaded.module):
        if method == Method.EXPORT:
            raise UsageError("torch.export cannot capture a model placed by accelerate (device_map, "
                             "offload)", "use --method dispatch (the default for such models)")
        return None, None
    try:
        with phase("torch.export"):
            program = export_for_scan(loaded.module, calibration, run.device)
    except Exception as exc:  # export fails in many ways (control flow, ops)
        if method == Method.EXPORT:
            raise UsageError(f"torch.export could not capture the model: "
                             f"{type(exc).__name__}: {first_line(exc)}",
                             "use --method dispatch") from exc
        run.warn("torch.export could not capture the model "
                 f"({type(exc).__name__}); observing with TorchDispatchMode instead")
        return None, None
    from reludoctor.backends.torch.precheck import check_program

    with phase("precheck the program"):
        check_program(program, loaded.path or "model")  # before the calibration pass
    with phase("ExportedProgram.module()"):
        return program, program.module()


def observe(loaded: LoadedModel, calibration: Any, run: ScanRun) -> Observation:
    """Observe every site: in the exported graph when torch.export captures the model, else
    with TorchDispatchMode (TorchScript archives, models export cannot trace)."""
    from reludoctor.backends.torch import gates
    from reludoctor.core.batches import run as run_batches

    ignored: list = []
    program, graph_module = _capture(loaded, calibration, run)
    if graph_module is not None:
        from reludoctor.backends.torch.export import instrument_graph_module

        if gate_count := gates.count_graph(graph_module):  # as the ONNX path says it
            run.warn(gates.message(gate_count))
        graph_module.to(run.device)
        with phase("instrument"):
            sites = instrument_graph_module(graph_module, run.context, run.options.unit_axis, ignored=ignored)
        with phase("data pass"):
            samples = run_batches(graph_module, calibration, batch_size=run.batch_size, device=run.device,
                                  batch=run.context, fixed_batch=loaded.fixed_batch,
                                  progress=run.progress, dtype=run.autocast)
        return Observation("export", sites, samples, ignored_ops=ignored,
                           artifacts={"program": program, "graph_module": graph_module})
    from reludoctor.backends.torch.dispatch import DispatchInstrument

    module = loaded.module
    instrument = DispatchInstrument(module, run.context, run.options.unit_axis)
    gate_counter = gates.GateCounter()  # hard-swish/hard-sigmoid calls of the first forward
    with instrument.active(), phase("data pass (dispatch)"):
        samples = run_batches(gate_counter.wrap(instrument.forward), calibration,
                              batch_size=run.batch_size, device=run.device, batch=run.context,
                              fixed_batch=loaded.fixed_batch, before_forward=instrument.start_forward,
                              progress=run.progress, dtype=run.autocast)
    if gate_counter.count:
        run.warn(gates.message(gate_counter.count))
    ignored.extend(instrument.ignored_ops())
    static = static_sites(loaded)  # the evidence and gradient passes name their sites with it too
    return Observation("dispatch", instrument.sites(static), samples, ignored_ops=ignored,
                       artifacts={"static": static})


def static_sites(loaded: LoadedModel) -> Any:
    """A TorchScript archive's call sites in source order (names dispatch cannot see), or None."""
    if loaded.format != ModelFormat.TORCHSCRIPT:
        return None
    from reludoctor.backends.torch.torchscript_names import static_call_sites

    return static_call_sites(loaded.module)


def evidence(loaded: LoadedModel, observation: Observation, calibration: Any, run: ScanRun) -> dict:
    """Producer evidence: from the instrumented graph, or by tracking tensors under dispatch."""
    from reludoctor.backends.torch.evidence import from_dispatch, from_graph

    graph_module = observation.artifacts.get("graph_module")
    if observation.method == "export" and graph_module is not None:
        return from_graph(graph_module)
    import torch

    example = tuple(torch.as_tensor(a).to(run.device) for a in calibration.example(2))
    return from_dispatch(loaded.module, example, run.options.unit_axis, observation.artifacts.get("static"),
                         calibration.binding)


def fresh_graph(observation: Observation, run: ScanRun, missing: Exception) -> Any:
    """A fresh copy of the scan's exported graph on the scan's device, for a pass that inserts
    its own calls (the observed copy keeps its observers); ``missing`` is raised without one."""
    program = observation.artifacts.get("program")
    if program is None:
        raise missing
    graph_module = program.module()
    graph_module.to(run.device)
    return graph_module


def gradient_plan(loaded: LoadedModel, observation: Observation, evidence: dict, run: ScanRun) -> Any:
    """Probes in a fresh copy of the exported graph, or autograd hooks under dispatch."""
    from reludoctor.backends.torch.gradients import _finish_dispatch, dispatch_plan, graph_plan
    from reludoctor.core.gradients import GradientsUnavailable

    if observation.method == "export":
        plan = graph_plan(fresh_graph(observation, run, GradientsUnavailable("no exported program to differentiate")),
                          evidence)
        plan.method = "export"
        return plan
    plan = dispatch_plan(loaded.module, run.options.unit_axis, observation.artifacts.get("static"), evidence)
    plan.method, plan.finish = "dispatch", _finish_dispatch  # names its sites as the scan did
    return plan


def ablator(loaded: LoadedModel, observation: Observation, axes: dict[str, int], run: ScanRun) -> Any:
    """Zeroing calls in a fresh copy of the exported graph, or the dispatch instrumenter's hook."""
    from reludoctor.backends.torch.ablation import DispatchAblator, GraphAblator
    from reludoctor.core.ablation import AblationUnavailable

    if observation.method == "export":
        return GraphAblator(fresh_graph(observation, run, AblationUnavailable("no exported program to ablate")), axes)
    return DispatchAblator(loaded.module, axes, observation.artifacts.get("static"))
