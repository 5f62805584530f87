"""scan(): load -> calibration data -> instrument -> run -> statistics -> findings -> Report."""

from __future__ import annotations

import contextlib
import math
import warnings
from pathlib import Path
from typing import Any, Callable, Iterator

from reludoctor import __version__, activations
from reludoctor.core import distributed
from reludoctor.data.binding import parse_constants
from reludoctor.data.calibration import Calibration, load_calibration
from reludoctor.errors import NoSitesError, ReludoctorWarning, UsageError  # noqa: F401 - re-exported
from reludoctor.backends.base import LoadedModel
from reludoctor.core.observers import BatchContext
from reludoctor.report.model import CalibrationInfo, ModelInfo, Report, Thresholds, UnobservedSite
from reludoctor.core.rules import evaluate
from reludoctor.core.batches import Progress, dtype_name, resolve_device, resolve_dtype, run
from reludoctor.core.stats import site_stats, summarise

METHODS = ("auto", "export", "dispatch")
DEFAULT_BATCH_SIZE = 32


def trusted(trust_model: bool, unsafe_pickle: bool | None) -> bool:
    """``trust_model``, honouring the deprecated ``unsafe_pickle`` spelling (with a warning)."""
    if unsafe_pickle is not None:
        warnings.warn("unsafe_pickle is deprecated: use trust_model (it also covers TorchScript "
                      "and unverifiable .pt2 archives)", DeprecationWarning, stacklevel=3)
        return trust_model or bool(unsafe_pickle)
    return trust_model


def load_model(model: Any, *, arch: str | None, arch_kwargs: Any, trust_model: bool = False,
               imports: Any = ()) -> LoadedModel:
    """Route a path (by its content) or an in-memory model to the PyTorch or ONNX loader.

    ``imports``: modules imported first (``--import``), e.g. op libraries such as torchvision."""
    from reludoctor.backends import detect

    if imports:
        from reludoctor.backends.torch import loader as torch_loader

        imports = torch_loader.import_modules(imports)
    if isinstance(model, (str, Path)):
        path = Path(model)
        kind = detect.detect_format(path)
        if kind == detect.ONNX:
            if arch:
                raise UsageError("--arch is only for state_dict files, not ONNX models")
            from reludoctor.backends.onnx import loader as onnx_loader

            return onnx_loader.load_path(path)
        from reludoctor.backends.torch import loader as torch_loader

        return torch_loader.load_path(path, arch=arch, arch_kwargs=arch_kwargs,
                                      trust_model=trust_model, kind=kind, imports=imports)
    if arch:
        raise UsageError("arch is only for state_dict files, not in-memory models")
    if type(model).__name__ == "ModelProto":  # onnx.ModelProto, without importing onnx here
        from reludoctor.backends.onnx import loader as onnx_loader

        return onnx_loader.from_object(model)
    from reludoctor.backends.torch import loader as torch_loader

    return torch_loader.from_object(model)


def _export(module: Any, calibration: Calibration, device: Any) -> Any:
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


@contextlib.contextmanager
def _preserved(module: Any, device: Any, set_mode: bool) -> Iterator[None]:
    """Eval mode and the target device during the scan; training flags and device restored.

    Exported programs have no train/eval switch (their graph is fixed): ``set_mode`` is False.
    """
    import torch

    modes = [(m, m.training) for m in module.modules() if hasattr(m, "training")] if set_mode else []
    params = list(module.parameters()) if hasattr(module, "parameters") else []
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


def scan(
    model: Any,
    data: Any = None,
    *,
    batch_size: int | None = None,
    device: str = "auto",
    dtype: str | None = None,
    limit: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    unit_axis: int | None = None,
    near_dead: float = 1e-3,
    dormant_tau: float = 0.025,
    method: str = "auto",
    arch: str | None = None,
    arch_kwargs: str | dict | None = None,
    trust_model: bool = False,
    unsafe_pickle: bool | None = None,
    progress: Progress | None = None,
    on_warning: Callable[[str], None] | None = None,
    gradients: bool = False,
    labels: Any = None,
    sample: int | None = None,
    seed: int = 0,
    resize: int | None = None,
    center_crop: int | None = None,
    normalize: str | None = None,
    imports: Any = (),
    constants: Any = None,
    batch_axes: Any = None,
) -> Report:
    """Observe every ReLU-family call site of ``model`` over ``data`` and return a Report.

    ``model``: a file path (torch.export .pt2, TorchScript, state_dict with ``arch``), an
    ``nn.Module``, ``ExportedProgram`` or ``ScriptModule``. ``data``: a path (.npy, .npz,
    .pt), an array or tensor, a dict keyed by input name, an iterable of batches, or None
    for synthetic standard-normal inputs (flagged in the report).

    ``trust_model=True`` allows code from the model file (TorchScript archives, pickled modules,
    ``.pt2`` archives that fail verification): only for files from a source you trust.
    ``unsafe_pickle`` is its deprecated former name. ``imports``: modules to import before the
    model loads (``--import``), e.g. ``["torchvision"]`` for a TorchScript archive that calls
    ``torchvision::nms`` (torchvision is imported by itself when installed).

    ``gradients=True`` adds a second pass with autograd: gradient flow per site
    (``SiteStats.gradient``, ``Report.gradients``); ``labels`` (a .npy path, array or tensor of
    class indices, one per sample in order) makes its loss cross-entropy against them.

    ``dtype`` ("bf16" or "fp16"; default full precision) runs the observed forward pass of a
    PyTorch model under ``torch.autocast``; statistics still accumulate in float32/float64, but
    activations are computed in reduced precision, so units within rounding of the threshold
    may be classified differently than in float32 (the report's ``dtype`` records it). ONNX
    models run in the precision they were exported in: ``dtype`` is refused for them. The
    gradient pass (``gradients=True``) always runs in float32.

    ``limit``: the first N samples; ``sample``: N samples drawn at random without replacement
    (seeded by ``seed``, which also seeds synthetic data), from the first ``limit`` when both are
    given; labels follow the samples. ``data`` may be a folder of PNG/JPEG images:
    ``resize`` (shorter side), ``center_crop`` and ``normalize`` ("imagenet" or "none"; default
    imagenet for RGB inputs, none for 1-channel ones) preprocess them like torchvision.

    Data binds to the model's inputs by name (``.npz`` keys, dict keys) or, unnamed, to its
    required inputs in order; inputs with a default that the data does not give stay at their
    default. ``constants`` ({"sr": 16000}, or ``["sr=16000"]`` as ``--const`` writes them): values
    for inputs that are not per-sample. ``batch_axes`` ({"state": 1}): the axis of an input's
    samples when it is not 0 (ONNX inputs: where the declared shape has its dynamic dimension).
    """
    if batch_size is not None and batch_size < 1:
        raise UsageError(f"--batch-size {batch_size} must be at least 1")
    if not 0 < near_dead <= 1:  # also refuses NaN
        raise UsageError(f"--near-dead {near_dead} must be in (0, 1]")
    if not (math.isfinite(dormant_tau) and dormant_tau >= 0):
        raise UsageError(f"--dormant-tau {dormant_tau} must be a finite number >= 0")
    if method not in METHODS:
        raise UsageError(f"--method {method!r} is not one of {', '.join(METHODS)}")
    if labels is not None and not gradients:
        raise UsageError("--labels is only used by the gradient pass (--gradients)", "add --gradients")
    notes: list[str] = []

    def warn(message: str) -> None:
        notes.append(message)
        if on_warning is not None:
            on_warning(message)
        else:
            warnings.warn(message, ReludoctorWarning, stacklevel=3)

    autocast = resolve_dtype(dtype)
    loaded = load_model(model, arch=arch, arch_kwargs=arch_kwargs,
                        trust_model=trusted(trust_model, unsafe_pickle), imports=imports)
    if autocast is not None and loaded.format == "onnx":
        raise UsageError(f"--dtype {dtype} applies to PyTorch models only: an ONNX model runs in "
                         "the precision it was exported in",
                         "drop --dtype (or convert the ONNX model to float16 yourself)")
    from reludoctor.backends.precheck import refuse_without_candidates

    refuse_without_candidates(loaded)  # a known graph without any ReLU-family op: before the data
    calibration = load_calibration(data, loaded.inputs, limit=limit, input_shape=input_shape,
                                   seed=seed, sample=sample, resize=resize, center_crop=center_crop,
                                   normalize=normalize, batch_axes=batch_axes,
                                   constants={**loaded.constants, **parse_constants(constants)})
    for note in calibration.notes:
        warn(note)
    if labels is not None and calibration.sample_indices is not None:
        labels = _sampled_labels(labels, calibration.sample_indices)
    target = resolve_device(device)
    if loaded.format == "onnx" and device == "auto" and target.type == "cuda":
        from reludoctor.backends.onnx.session import cuda_provider_available

        if not cuda_provider_available():  # a CPU-only onnxruntime on a GPU machine
            target = resolve_device("cpu")
    if calibration.synthetic:
        warn(f"no calibration data: using {calibration.samples} synthetic standard-normal samples; "
             "dead units on real data may differ (pass --data)")
    if loaded.fixed_batch is not None:
        if batch_size is not None and batch_size != loaded.fixed_batch:
            warn(f"the model was exported with a fixed batch of {loaded.fixed_batch}: running in "
                 f"batches of {loaded.fixed_batch} instead of {batch_size}, the last one padded")
        batch_size = loaded.fixed_batch
    elif batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE

    world = distributed.join(target)  # None in a single process; under torchrun, this rank
    if world is not None:
        if gradients:
            raise UsageError("--gradients is not supported in a multi-process scan (torchrun)",
                             "run the gradient pass in a single process")
        target = world.device
        calibration = world.shard(calibration, batch_size)
    context = BatchContext()
    kept: dict[str, Any] = {}  # the export path's program and instrumented graph

    def observe() -> tuple:
        return _observe(loaded, calibration, method, target, batch_size, context, unit_axis,
                        progress, warn, keep=kept, dtype=autocast)

    # A multi-process scan observes this rank's shard, then combines every rank's statistics.
    used_method, sites, samples, unobserved = observe() if world is None else world.observe(observe)
    stats = []
    for spec, observer in sites:
        if not observer.observed:
            unobserved.append(UnobservedSite(spec.name, spec.op, "never executed on the calibration data"))
            continue
        stats.append(site_stats(
            name=spec.name, op=spec.op, module=spec.module, unit_axis=spec.unit_axis,
            shape=observer.shape or (), lower=spec.lower, upper=spec.upper,
            counts=observer.state(), near_dead=near_dead, dormant_tau=dormant_tau,
            unit_axis_reason=spec.unit_axis_reason or None,
        ))
    for site in unobserved:
        warn(f"site {site.name} ({site.op}) was not observed: {site.reason}")
    if not stats and unobserved:  # sites exist, none ran: say why
        reasons = sorted({site.reason for site in unobserved})
        raise NoSitesError(f"{loaded.path or 'model'}: {len(unobserved)} ReLU-family site(s) found, "
                           f"none observed on the calibration data ({'; '.join(reasons)[:300]})",
                           "check that the data reaches them: the inputs bound "
                           f"({calibration.binding.describe()}), their shapes and any branch "
                           "(If) the data decides")
    if not stats:
        raise NoSitesError(f"{loaded.path or 'model'}: no ReLU-family activation ran",
                           activations.describe("torch"))
    calibration_info = CalibrationInfo(calibration.source, samples, calibration.synthetic, batch_size)
    evidence, gradient_info, stats = _diagnose(loaded, used_method, kept, calibration, stats, target,
                                               batch_size, unit_axis, limit, gradients, labels, warn)
    return Report(
        tool={"name": "reludoctor", "version": __version__},
        model=ModelInfo(loaded.path, loaded.format, loaded.sha256, used_method,
                        tuple(spec.name for spec in loaded.inputs)),
        calibration=calibration_info,
        device=str(target),
        dtype=dtype_name(autocast),
        thresholds=Thresholds(near_dead, dormant_tau, unit_axis),
        summary=summarise(stats, samples, len(unobserved)),
        sites=tuple(stats),
        unobserved_sites=tuple(unobserved),
        findings=evaluate(stats, calibration_info, evidence=evidence, gradients=gradient_info,
                          model_format=loaded.format),
        warnings=tuple(notes),
        gradients=gradient_info,
        ignored_ops=tuple(kept.get("ignored_ops", ())),
    )


def _sampled_labels(labels: Any, indices: Any) -> Any:
    """The labels of a --sample subset (the data's sample indices), as a tensor."""
    import torch

    from reludoctor.errors import DataError
    from reludoctor.core.gradients import load_labels

    tensor = load_labels(labels)
    needed = int(indices[-1]) + 1
    if tensor.shape[0] < needed:
        raise DataError(f"labels: {tensor.shape[0]} labels, but the sample includes sample "
                        f"{needed - 1}", "pass one label per calibration sample, in order")
    return tensor[torch.from_numpy(indices)]


def _diagnose(loaded: LoadedModel, method: str, kept: dict[str, Any], calibration: Calibration,
              stats: list, device: Any, batch_size: int, unit_axis: int | None, limit: int | None,
              gradients: bool, labels: Any, warn: Callable[[str], None]) -> tuple[dict, Any, list]:
    """While the model is loaded: per-site producer evidence for the rules, and (when asked)
    the gradient pass. Returns (evidence, GradientInfo, stats with their gradient filled in)."""
    from dataclasses import replace

    from reludoctor.core import evidence as producer_evidence
    from reludoctor.core import gradients as gradient_flow
    from reludoctor.report.model import GradientInfo, NOT_REQUESTED

    names = [site.name for site in stats]
    module = loaded.module
    torch_model = loaded.format != "onnx"
    mode = _preserved(module, device, set_mode=loaded.exported is None) if torch_model \
        else contextlib.nullcontext()
    with mode:
        evidence = producer_evidence.collect(loaded, method, kept.get("graph_module"), calibration,
                                             device, unit_axis, names)
        if not gradients:
            return evidence, GradientInfo(False, reason=NOT_REQUESTED), stats
        info, per_site = gradient_flow.compute(
            loaded, calibration, stats, method=method, program=kept.get("program"), device=device,
            batch_size=batch_size, unit_axis=unit_axis, labels=labels, limit=limit,
            evidence=evidence, warn=warn)
    return evidence, info, [replace(site, gradient=per_site.get(site.name)) for site in stats]


def _observe(loaded: LoadedModel, calibration: Calibration, method: str, device: Any,
             batch_size: int, context: BatchContext, unit_axis: int | None,
             progress: Progress | None, warn: Callable[[str], None],
             keep: dict[str, Any] | None = None, dtype: Any = None,
             ) -> tuple[str, list, int, list[UnobservedSite]]:
    """Run the calibration data through the instrumented model.

    Returns (method, [(SiteSpec, observer)], samples, sites that could not be observed).
    Observers expose ``observed``, ``shape`` and ``state() -> UnitCounts``. ``keep`` receives
    the export path's ``program`` and instrumented ``graph_module`` (for evidence and gradients),
    and ``ignored_ops``: the ReLU-like ops that are not activations (``report.IgnoredOp``).
    """
    ignored: list = keep.setdefault("ignored_ops", []) if keep is not None else []
    if loaded.format == "onnx":
        from reludoctor.backends.onnx.observer import observe_onnx

        sites, samples, unobserved = observe_onnx(
            loaded, calibration, device=device, batch_size=batch_size, unit_axis=unit_axis,
            progress=progress, warn=warn, ignored=ignored)
        return "onnxruntime", sites, samples, unobserved

    from reludoctor.backends.torch.dispatch import DispatchInstrument
    from reludoctor.backends.torch.export import instrument_graph_module

    if method == "export" and loaded.format == "torchscript":
        raise UsageError("--method export cannot trace a TorchScript archive",
                         "use --method dispatch (the default for TorchScript)")
    module = loaded.module
    with _preserved(module, device, set_mode=loaded.exported is None):
        graph_module = None
        keep = keep if keep is not None else {}
        if method != "dispatch":
            if loaded.exported is not None:
                graph_module = module
                keep["program"] = loaded.exported
            elif loaded.format != "torchscript":
                try:
                    keep["program"] = _export(module, calibration, device)
                    graph_module = keep["program"].module()
                except Exception as exc:  # export fails in many ways (control flow, ops)
                    if method == "export":
                        raise UsageError(f"torch.export could not capture the model: "
                                         f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}",
                                         "use --method dispatch") from exc
                    warn("torch.export could not capture the model "
                         f"({type(exc).__name__}); observing with TorchDispatchMode instead")
        if graph_module is not None:
            if loaded.exported is None:  # just exported (a loaded program was checked at load)
                from reludoctor.backends.precheck import check_program

                check_program(keep["program"], loaded.path or "model")  # before the calibration pass
            from reludoctor.backends.torch import gates

            if gate_count := gates.count_graph(graph_module):  # as the ONNX path says it
                warn(gates.message(gate_count))
            graph_module.to(device)
            sites = instrument_graph_module(graph_module, context, unit_axis, ignored=ignored)
            keep["graph_module"] = graph_module
            samples = run(graph_module, calibration, batch_size=batch_size, device=device,
                          batch=context, fixed_batch=loaded.fixed_batch, progress=progress,
                          dtype=dtype)
            return "export", sites, samples, []
        instrument = DispatchInstrument(module, context, unit_axis)
        from reludoctor.backends.torch.gates import GateCounter, message

        gate_counter = GateCounter()  # hard-swish/hard-sigmoid calls of the first forward
        with instrument.active():
            samples = run(gate_counter.wrap(instrument.forward), calibration, batch_size=batch_size,
                          device=device,
                          batch=context, fixed_batch=loaded.fixed_batch,
                          before_forward=instrument.start_forward, progress=progress, dtype=dtype)
        if gate_counter.count:
            warn(message(gate_counter.count))
        static = None
        if loaded.format == "torchscript":
            from reludoctor.backends.torch.torchscript_names import static_call_sites

            static = static_call_sites(module)
        ignored.extend(instrument.ignored_ops())
        return "dispatch", instrument.sites(static), samples, []
