"""scan(): options -> backend and model -> calibration data -> observe -> statistics ->
evidence and gradients -> findings -> Report. Format-specific work is the backend's."""

from __future__ import annotations

import warnings
from dataclasses import replace
from typing import Any, Callable

from reludoctor import __version__, activations
from reludoctor.backends.base import Backend, LoadedModel, Observation, ScanRun
from reludoctor.core import certify, definitions, distributed, profile, slices
from reludoctor.core.batches import Progress, dtype_name, resolve_dtype
from reludoctor.core.observers import BatchContext
from reludoctor.core.rules import evaluate
from reludoctor.core.stats import site_stats, summarise
from reludoctor.core.timings import phase
from reludoctor.data.binding import parse_constants
from reludoctor.data.calibration import load_calibration
from reludoctor.data.input_range import parse_input_range
from reludoctor.data.slices import SampleSlices, load_ids
from reludoctor.errors import NoSitesError, ReludoctorWarning, UsageError  # noqa: F401 - re-exported
from reludoctor.options import DEFAULT_BATCH_SIZE, DEFAULT_MAX_LENGTH, ScanOptions
from reludoctor.report.model import CalibrationInfo, ModelInfo, Report, Thresholds, UnobservedSite


def trusted(trust_model: bool, unsafe_pickle: bool | None) -> bool:
    """``trust_model``, honouring the deprecated ``unsafe_pickle`` spelling (with a warning)."""
    if unsafe_pickle is not None:
        warnings.warn("unsafe_pickle is deprecated: use trust_model (it also covers TorchScript "
                      "and unverifiable .pt2 archives)", DeprecationWarning, stacklevel=3)
        return trust_model or bool(unsafe_pickle)
    return trust_model


def load_model(model: Any, options: ScanOptions | None = None, **settings: Any) -> tuple[Backend, LoadedModel]:
    """(backend, loaded model) for a path (routed by its content) or an in-memory model.

    ``settings``: ScanOptions fields that loading reads (arch, arch_kwargs, trust_model, imports)."""
    from reludoctor.backends import registry

    return registry.load(model, options or ScanOptions(**settings))


def scan(model: Any, data: Any = None, options: ScanOptions | None = None, *,
         progress: Progress | None = None, on_warning: Callable[[str], None] | None = None,
         unsafe_pickle: bool | None = None, **settings: Any) -> Report:
    """Observe every ReLU-family call site of ``model`` over ``data`` and return a Report.

    Settings come as keywords (``batch_size=64, gradients=True``), as ``options``
    (``reludoctor.options.ScanOptions``, where every default is), or both (keywords win).

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

    ``definitions=True`` adds, per site and scan-wide, the dormant/dead units of each definition
    from the literature side by side (ReDo tau-dormant, Dohare et al.'s rarely active, APoZ above
    ``apoz_threshold``, and with ``gradients=True`` GraMa at ``grama_tau``): docs/diagnosis.md.

    ``ablate=True`` measures, on the calibration data, what zeroing each site's dormant and
    near-dead units (alive) changes: the loss, the outputs (relative L2, max abs) and the argmax,
    all of a site's together and the ``ablate_top`` (default 5) with the largest first-order
    score one at a time (``Report.ablation``; ``ablate_sites``: glob patterns on site names; the
    loss is the gradient pass's, ``labels`` included). ONNX models go through onnx2torch, as the
    gradient pass does. Formulas and cost: docs/diagnosis.md.

    ``input_range`` ("0,1", "imagenet", or (low, high) with numbers or per-channel sequences):
    the domain of the model's one floating-point input, in the units the model sees; dead units
    whose pre-activation cannot exceed the activation's lower bound anywhere in it are listed as
    ``certified_dead_units`` (interval bound propagation over the torch.export graph).

    ``slices`` (a .npy/.npz/.pt path, array or tensor of integers, one per calibration sample in
    data order: a class, task or domain): per site, the units dead on each slice, those alive on
    some slices only (specialised) and the dead ratio per slice (``SiteStats.slices``,
    ``Report.slices``). ``dead_points=True`` (implied by ``slices``): per site, the samples whose
    whole activation is zero (``SiteStats.dead_points``). docs/diagnosis.md.
    """
    options = ScanOptions.merged(options, settings, "scan")
    options.trust_model = trusted(options.trust_model, unsafe_pickle)
    options.check()
    box = parse_input_range(options.input_range)  # a bad range fails before the model loads
    slice_ids = None if options.slices is None else load_ids(options.slices)  # so does a bad --slices
    notes: list[str] = []

    def warn(message: str) -> None:
        notes.append(message)
        if on_warning is not None:
            on_warning(message)
        else:
            warnings.warn(message, ReludoctorWarning, stacklevel=3)

    autocast = resolve_dtype(options.dtype)
    with phase("load model"):
        backend, loaded = load_model(model, options)
    try:
        with phase("check"):
            backend.check(loaded, options)  # options that do not apply, no candidate site: before the data
        with phase("calibration data"):
            calibration = load_calibration(data, loaded.inputs, limit=options.limit, input_shape=options.input_shape,
                                           seed=options.seed, sample=options.sample, resize=options.resize,
                                           center_crop=options.center_crop, normalize=options.normalize,
                                           batch_axes=options.batch_axes,
                                           constants={**loaded.constants, **parse_constants(options.constants)},
                                           **_text_settings(options, loaded, data, warn))
        for note in calibration.notes:
            warn(note)
        sample_slices = None if slice_ids is None else \
            SampleSlices(slice_ids, calibration.samples, calibration.sample_indices)
        labels = options.labels
        if labels is not None and calibration.sample_indices is not None:
            labels = _sampled_labels(labels, calibration.sample_indices)
        target = backend.device(loaded, options)
        if calibration.synthetic:
            warn(f"no calibration data: using {calibration.samples} synthetic standard-normal samples; "
                 "dead units on real data may differ (pass --data)")
        batch_size = _batch_size(loaded, options.batch_size, warn)
        world = distributed.join(target)  # None in a single process; under torchrun, this rank
        if world is not None:
            if options.gradients:
                raise UsageError("--gradients is not supported in a multi-process scan (torchrun)",
                                 "run the gradient pass in a single process")
            if options.ablate:
                raise UsageError("--ablate is not supported in a multi-process scan (torchrun)",
                                 "run the ablation in a single process")
            target = world.device
            if sample_slices is not None:
                sample_slices.shard(batch_size, world.rank, world.size, calibration.indexable)
            calibration = world.shard(calibration, batch_size)
        context = BatchContext(points=options.dead_points or sample_slices is not None, slices=sample_slices)
        run = ScanRun(options, target, batch_size, autocast, context, progress, warn)
        with backend.session(loaded, target):
            # A multi-process scan observes this rank's shard, then combines every rank's statistics.
            with phase("observe"):
                observation = backend.observe(loaded, calibration, run) if world is None \
                    else _observe_world(world, backend, loaded, calibration, run)
            stats = _site_stats(observation, options, sample_slices)
            for site in observation.unobserved:
                warn(f"site {site.name} ({site.op}) was not observed: {site.reason}")
            _refuse_unobserved(stats, observation, loaded, backend, calibration)
            with phase("evidence"):
                evidence = _evidence(backend, loaded, observation, calibration, run, [s.name for s in stats])
            with phase("gradients"):
                gradient_info, stats = _gradients(backend, loaded, observation, calibration, stats, evidence,
                                                  run, labels)
            definition_counts = None
            if options.definitions:
                stats, definition_counts = definitions.apply(
                    stats, apoz_threshold=options.apoz_threshold, grama_tau=options.grama_tau,
                    dormant_tau=options.dormant_tau, gradients_requested=options.gradients,
                    gradients=gradient_info)
            ablation = None
            if options.ablate:
                with phase("ablate"):
                    ablation = _ablation(backend, loaded, observation, calibration, stats, run, labels)
            certification = None
            if box is not None:
                with phase("certify"):
                    stats, certification = certify.apply(
                        stats, backend.certify(loaded, observation, calibration, box, run), box)
    finally:
        loaded.release()  # a loader's scratch space (accelerate's offload folder)
    calibration_info = CalibrationInfo(calibration.source, observation.samples, calibration.synthetic,
                                       batch_size)
    return Report(
        tool={"name": "reludoctor", "version": __version__},
        model=ModelInfo(loaded.path, loaded.format, loaded.sha256, observation.method,
                        tuple(spec.name for spec in loaded.inputs)),
        calibration=calibration_info,
        device=str(target),
        dtype=dtype_name(autocast),
        thresholds=Thresholds(options.near_dead, options.dormant_tau, options.unit_axis),
        summary=summarise(stats, observation.samples, len(observation.unobserved)),
        sites=tuple(stats),
        unobserved_sites=tuple(observation.unobserved),
        findings=evaluate(stats, calibration_info, evidence=evidence, gradients=gradient_info,
                          ablation=ablation, suggest=backend.suggestion),
        warnings=tuple(notes),
        gradients=gradient_info,
        ignored_ops=tuple(observation.ignored_ops),
        profile=profile.build(stats, observation.samples),
        certification=certification,
        definitions=definition_counts,
        ablation=ablation,
        slices=None if sample_slices is None else slices.summary(stats, sample_slices.source),
    )


def _text_settings(options: ScanOptions, loaded: LoadedModel, data: Any,
                   warn: Callable[[str], None]) -> dict[str, Any]:
    """tokenizer, max_length and pack for text data (the model's own tokenizer folder and
    position limit by default); the options are refused for other data."""
    from reludoctor.data import texts

    if not texts.is_text_file(data):
        given = [name for name, value in (("--tokenizer", options.tokenizer), ("--max-length", options.max_length),
                                          ("--pack", options.pack)) if value]
        if given:
            raise UsageError(f"{', '.join(given)}: only for text data (--data texts.jsonl or texts.txt)",
                             "drop the option, or pass a file of texts")
        return {}
    length = options.max_length or DEFAULT_MAX_LENGTH
    if loaded.max_length is not None and length > loaded.max_length:
        if options.max_length is not None:
            warn(f"--max-length {length}: the model takes at most {loaded.max_length} positions; "
                 f"using {loaded.max_length}")
        length = loaded.max_length
    return {"tokenizer": options.tokenizer or loaded.tokenizer, "max_length": length, "pack": options.pack}


def _batch_size(loaded: LoadedModel, requested: int | None, warn: Callable[[str], None]) -> int:
    """The batch the scan runs in: the model's fixed batch when it has one, else the request."""
    if loaded.fixed_batch is None:
        return requested or DEFAULT_BATCH_SIZE
    if requested is not None and requested != loaded.fixed_batch:
        warn(f"the model was exported with a fixed batch of {loaded.fixed_batch}: running in "
             f"batches of {loaded.fixed_batch} instead of {requested}, the last one padded")
    return loaded.fixed_batch


def _observe_world(world: Any, backend: Backend, loaded: LoadedModel, calibration: Any,
                   run: ScanRun) -> Observation:
    """This rank's observation, its statistics combined with every other rank's."""
    mine: list[Observation] = []

    def local() -> tuple:
        mine.append(backend.observe(loaded, calibration, run))
        return mine[0].method, mine[0].sites, mine[0].samples, mine[0].unobserved

    method, sites, samples, unobserved = world.observe(local)
    return replace(mine[0], sites=sites, samples=samples, unobserved=unobserved)


def _site_stats(observation: Observation, options: ScanOptions, sample_slices: Any) -> list:
    """Statistics of every observed site; a site that never ran becomes an unobserved one."""
    stats = []
    for spec, observer in observation.sites:
        if not observer.observed:
            observation.unobserved.append(UnobservedSite(spec.name, spec.op, "never executed on the calibration data"))
            continue
        stats.append(site_stats(
            name=spec.name, op=spec.op, module=spec.module, unit_axis=spec.unit_axis,
            shape=observer.shape or (), lower=spec.lower, upper=spec.upper,
            counts=observer.state(), near_dead=options.near_dead, dormant_tau=options.dormant_tau,
            unit_axis_reason=spec.unit_axis_reason or None,
            slice_ids=None if sample_slices is None else sample_slices.ids,
        ))
    return stats


def _refuse_unobserved(stats: list, observation: Observation, loaded: LoadedModel, backend: Backend,
                       calibration: Any) -> None:
    """No statistics at all: say why (sites that never ran, or no activation ran)."""
    unobserved = observation.unobserved
    if not stats and unobserved:  # sites exist, none ran: say why
        reasons = sorted({site.reason for site in unobserved})
        raise NoSitesError(f"{loaded.path or 'model'}: {len(unobserved)} ReLU-family site(s) found, "
                           f"none observed on the calibration data ({'; '.join(reasons)[:300]})",
                           "check that the data reaches them: the inputs bound "
                           f"({calibration.binding.describe()}), their shapes and any branch "
                           "(If) the data decides")
    if not stats:
        raise NoSitesError(f"{loaded.path or 'model'}: no ReLU-family activation ran",
                           activations.describe(backend.name))


def _evidence(backend: Backend, loaded: LoadedModel, observation: Observation, calibration: Any,
              run: ScanRun, names: list[str]) -> dict:
    """Producer evidence for the rules, for the observed sites. Best effort: never fails a scan."""
    try:
        found = backend.evidence(loaded, observation, calibration, run)
    except Exception:  # noqa: BLE001 - evidence never fails a scan
        return {}
    return {name: found[name] for name in names if name in found}


def _gradients(backend: Backend, loaded: LoadedModel, observation: Observation, calibration: Any,
               stats: list, evidence: dict, run: ScanRun, labels: Any) -> tuple[Any, list]:
    """The gradient pass when asked: (GradientInfo, stats with their gradient filled in)."""
    from reludoctor.report.model import NOT_REQUESTED, GradientInfo

    if not run.options.gradients:
        return GradientInfo(False, reason=NOT_REQUESTED), stats
    from reludoctor.core import gradients

    info, per_site = gradients.compute(
        lambda: backend.gradient_plan(loaded, observation, stats, evidence, run), calibration, stats,
        device=run.device, batch_size=run.batch_size, fixed_batch=loaded.fixed_batch, labels=labels,
        limit=run.options.limit, evidence=evidence, warn=run.warn, unit_gradients=run.options.definitions)
    return info, [replace(site, gradient=per_site.get(site.name)) for site in stats]


def _ablation(backend: Backend, loaded: LoadedModel, observation: Observation, calibration: Any,
              stats: list, run: ScanRun, labels: Any) -> Any:
    """The measured cost of zeroing each site's dormant and near-dead units (core/ablation.py)."""
    from reludoctor.core import ablation

    options = run.options
    return ablation.compute(lambda axes: backend.ablator(loaded, observation, axes, run), calibration, stats,
                            device=run.device, batch_size=run.batch_size, fixed_batch=loaded.fixed_batch,
                            labels=labels, top=options.ablate_top, patterns=tuple(options.ablate_sites or ()),
                            warn=run.warn)


def _sampled_labels(labels: Any, indices: Any) -> Any:
    """The labels of a --sample subset (the data's sample indices), as a tensor."""
    import torch

    from reludoctor.core.gradients import load_labels
    from reludoctor.errors import DataError

    tensor = load_labels(labels)
    needed = int(indices[-1]) + 1
    if tensor.shape[0] < needed:
        raise DataError(f"labels: {tensor.shape[0]} labels, but the sample includes sample "
                        f"{needed - 1}", "pass one label per calibration sample, in order")
    return tensor[torch.from_numpy(indices)]

