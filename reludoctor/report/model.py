"""The typed, frozen Report every scan yields; ``to_dict()`` is the JSON contract (schema 1)."""

from __future__ import annotations

import dataclasses
import json
import math
import types
import typing
from dataclasses import asdict, dataclass, field
from typing import Any

from reludoctor.errors import ReportFormatError  # noqa: F401 - re-exported

SCHEMA_VERSION = 1
SUPPORTED_SCHEMA_VERSIONS = (1,)  # schema_version 1 is the only one so far
NOT_REQUESTED = "not requested (scan with gradients=True, --gradients)"
# Keys written only where they apply, so other reports stay byte-identical to what they were:
# a scan with an input range (Report.certification, SiteStats.certified_dead_units), a model
# with language-model FFN sites (Report.profile), a scan with definitions=True (Report.definitions,
# SiteStats.definitions), a scan with slices (Report.slices, SiteStats.slices), a scan with dead
# points (SiteStats.dead_points: --dead-points, --slices), a scan with ablate=True (Report.ablation).
CONDITIONAL_KEYS = frozenset({"certification", "certified_dead_units", "profile", "definitions", "slices",
                              "dead_points", "ablation"})


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]  # bin i covers [edges[i-1], edges[i]); first and last are open
    counts: tuple[int, ...]  # len(edges) + 1


@dataclass(frozen=True)
class SiteGradient:
    """Gradient flow at one site over the calibration set (``scan(gradients=True)``).

    Fractions are over every element of the activation (samples x positions x units). When
    gradients could not be computed (an ONNX model without onnx2torch), only ``pass_through``
    is given, estimated from the activation rates; the other values are None.
    """

    pass_through: float  # fraction of elements where the activation passes gradient (its mask)
    rms_output: float | None = None  # RMS of dL/d(output)
    rms_preactivation: float | None = None  # RMS of dL/d(pre-activation)
    zero_fraction: float | None = None  # dL/d(pre-activation) == 0: zero_by_mask + zero_downstream
    zero_by_mask: float | None = None  # ... where the activation's own mask blocks it
    zero_downstream: float | None = None  # ... where the mask passes but dL/d(output) was already 0
    output_zero_fraction: float | None = None  # dL/d(output) == 0
    attenuation: float | None = None  # rms_preactivation / that of the next site (None: last site)
    producer: str | None = None  # the Conv/Linear feeding the site (through BatchNorm)
    weight_grad_norm: float | None = None  # ||dL/dW|| of the producer's weight
    weight_norm: float | None = None  # ||W|| of the producer's weight
    # Per unit: mean |dL/d(output)| over its elements. Not part of the JSON (never written, not
    # compared): the GraMa definition (core/definitions.py) reads it and reports its own scores.
    unit_abs_output: tuple[float, ...] | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class SiteDefinition:
    """The units of one site that one definition from the literature flags (core/definitions.py)."""

    threshold: float  # the definition's tau or threshold
    units: tuple[int, ...]  # sorted unit indices it flags
    per_unit: tuple[float, ...] | None = None  # its per-unit score when the report has no other key for it


@dataclass(frozen=True)
class SiteDefinitions:
    """Per site, each definition side by side (``scan(definitions=True)``, ``--definitions``)."""

    redo_tau_dormant: SiteDefinition  # Sokar et al. 2023; scores are the site's dormant_score
    dohare_rarely_active: SiteDefinition  # Dohare et al. 2024; rates are the site's activation_rate
    apoz: SiteDefinition  # Hu et al. 2016; per_unit: the average percentage of zeros
    grama: SiteDefinition | None  # Liu et al. 2025; per_unit: the GraMa score; None: no gradients here


@dataclass(frozen=True)
class DefinitionCount:
    units: int  # units flagged over every site
    ratio: float  # units / all units of the scan


@dataclass(frozen=True)
class Definitions:
    """The scan-wide counts of each definition; ``grama`` is None with ``grama_reason``."""

    redo_tau_dormant: DefinitionCount
    dohare_rarely_active: DefinitionCount
    apoz: DefinitionCount
    grama: DefinitionCount | None
    grama_reason: str | None = None  # why grama is null ("needs --gradients", ...)


@dataclass(frozen=True)
class SpecialisedUnit:
    """A unit alive on some slices only (``--slices``): not dead, so not to be pruned."""

    unit: int
    alive_on: tuple[int, ...]  # the slice ids where it fired


@dataclass(frozen=True)
class SiteSlices:
    """One site's liveness per slice (``--slices``); per-slice tuples follow ``ids``."""

    ids: tuple[int, ...]  # the scan's slice ids, sorted
    samples: tuple[int, ...]  # samples of each slice the site saw
    positions: tuple[int, ...]  # observed positions per unit on each slice
    dead_units: tuple[int, ...]  # per slice: units that never fired on it
    dead_ratio: tuple[float | None, ...]  # per slice: dead_units / units; null: no sample of it here
    dead_on_every_slice: tuple[int, ...]  # units dead on every slice the site saw (= dead_units)
    specialised_units: tuple[SpecialisedUnit, ...]  # alive on some slices, dead on others
    positive_count: tuple[tuple[int, ...], ...]  # [slice][unit] positions that fired (for merging)


@dataclass(frozen=True)
class DeadPoints:
    """Samples whose whole activation at the site is zero (no unit fired at any position)."""

    count: int
    samples: int
    fraction: float  # count / samples


@dataclass(frozen=True)
class SlicesSummary:
    """Per-slice liveness over every site (``--slices``); per-slice tuples follow ``ids``."""

    source: str  # the slice ids' file
    ids: tuple[int, ...]
    samples: tuple[int, ...]  # samples of each slice (the most any site saw)
    dead_units: tuple[int, ...]  # per slice: dead units summed over the sites that saw it
    dead_ratio: tuple[float, ...]  # per slice: dead_units / the units of those sites
    dead_on_every_slice: int  # units, over every site
    specialised_units: int  # units alive on some slices only, over every site


@dataclass(frozen=True)
class GradientInfo:
    """How gradient statistics were computed for this report, or why not."""

    computed: bool
    loss: str | None = None  # cross-entropy-labels | cross-entropy-argmax | half-squared-norm
    reason: str | None = None  # why not computed (not requested, unavailable for this model)
    method: str | None = None  # export | dispatch | onnx2torch
    samples: int = 0


@dataclass(frozen=True)
class SiteAccumulators:
    """The raw per-unit sums of a site that its derived statistics do not keep exactly.

    With ``positions``, ``samples``, ``max_preactivation``, ``min_preactivation`` and the
    histogram counts of the site they are the scan's whole state, so reports of scans over
    disjoint data merge exactly (``reludoctor merge``). Added to schema_version 1 later: a
    report without them reads back as None and cannot be merged.
    """

    positive_count: tuple[int, ...]  # positions where the pre-activation > lower bound
    abs_output_sum: tuple[float, ...]  # sum of |activation output| over the observed positions


@dataclass(frozen=True)
class SiteStats:
    name: str
    op: str
    module: str
    unit_axis: int
    units: int
    shape: tuple[int, ...]  # activation shape without the batch axis
    lower_bound: float
    upper_bound: float | None
    samples: int
    positions: int  # observed positions per unit
    dead_units: tuple[int, ...]
    dead_ratio: float
    activation_rate: tuple[float, ...]
    max_preactivation: tuple[float, ...]
    near_dead_units: tuple[int, ...]  # alive, but firing rate below the near-dead threshold
    dormant_units: tuple[int, ...]  # tau-dormant (with lower bound 0, dead units are dormant too)
    dormant_score: tuple[float, ...]  # unit mean |output| / layer mean of that
    saturated_units: tuple[int, ...] | None  # bounded activations only
    min_preactivation: tuple[float, ...] | None  # bounded activations only
    histogram: Histogram
    gradient: SiteGradient | None = None  # scan(gradients=True) only; null otherwise
    accumulators: SiteAccumulators | None = None  # raw sums for merging; None in older reports
    # Why ``unit_axis`` holds the units: "producer conv", "consumer conv", "linear on last axis",
    # "features of [N, F]", "--unit-axis", ... (None in older reports).
    unit_axis_reason: str | None = None
    # Dead units proven dead for every input in --input-range (a subset of dead_units); None:
    # the site could not be bounded. The key is in the JSON only when the scan had an input range.
    certified_dead_units: tuple[int, ...] | None = None
    # Definitions from the literature (scan(definitions=True)); the key is in the JSON only then.
    definitions: SiteDefinitions | None = None
    # Per-slice liveness (--slices) and dead points (--dead-points, --slices): keys only then.
    slices: SiteSlices | None = None
    dead_points: DeadPoints | None = None


@dataclass(frozen=True)
class InputRangeInfo:
    spec: str  # as given: "0,1", "imagenet"
    low: tuple[float, ...]  # one bound for every input element, or one per channel (axis 1)
    high: tuple[float, ...]


@dataclass(frozen=True)
class NotCertifiable:
    site: str
    reason: str


@dataclass(frozen=True)
class Certification:
    """Which dead units are dead for every input in the input box (``--input-range``), not only
    on the calibration data: interval bound propagation (docs/diagnosis.md)."""

    input_range: InputRangeInfo
    status: str  # complete (every site bounded) | partial | unsupported (no site bounded)
    certified_dead_units: int
    dead_units: int  # of the sites that were bounded
    not_certifiable: tuple[NotCertifiable, ...] = ()
    note: str | None = None  # why nothing was certified (a format or method without a graph)


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # info | warning | error
    site: str | None
    message: str
    evidence: dict[str, Any]
    suggestion: str


@dataclass(frozen=True)
class UnobservedSite:
    """A ReLU-family site the scan could not measure, and why (never a silent omission)."""

    name: str
    op: str
    reason: str


@dataclass(frozen=True)
class IgnoredOp:
    """A ReLU-like op that is not an activation, so not a site (box clipping of detection
    models, a clamp of integers or to a data-dependent bound), and why. One entry per call site
    and reason, whatever the number of calls (so the list does not depend on the batch size)."""

    op: str
    name: str  # PyTorch: module path plus the op, as a site would be named; ONNX: the node name
    module: str  # PyTorch: the module path issuing the call ('' for the root); ONNX: its scope
    reason: str


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    format: str
    sha256: str | None
    method: str  # export | dispatch: how call sites were observed
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class CalibrationInfo:
    source: str
    samples: int
    synthetic: bool
    batch_size: int


@dataclass(frozen=True)
class Thresholds:
    near_dead: float
    dormant_tau: float
    unit_axis: int | None


@dataclass(frozen=True)
class Summary:
    sites: int
    units: int
    dead_units: int
    dead_ratio: float
    worst_site: str | None
    worst_site_dead_ratio: float
    near_dead_units: int
    dormant_units: int
    saturated_units: int
    fully_dead_sites: tuple[str, ...]
    firing_rate_bound_95: float
    unobserved_sites: int  # 0 firings in N samples: rate < 3/N at 95% confidence


@dataclass(frozen=True)
class SiteChange:
    """One site compared with a baseline report (matched by name).

    status: ``matched`` (in both, same unit count), ``added`` (only in this report: all its dead
    units count as newly dead), ``removed`` (only in the baseline), ``resized`` (in both, with a
    different unit count: unit indices are not comparable, so only the ratios are).
    """

    name: str
    status: str  # matched | added | removed | resized
    units_before: int | None
    units_after: int | None
    dead_ratio_before: float | None
    dead_ratio_after: float | None
    dormant_before: int | None
    dormant_after: int | None
    still_dead: tuple[int, ...]
    newly_dead: tuple[int, ...]
    revived: tuple[int, ...]


@dataclass(frozen=True)
class FindingRef:
    rule: str
    site: str | None


@dataclass(frozen=True)
class BaselineComparison:
    """This report against an older one: what got worse, what got better (``--baseline``)."""

    source: str  # the baseline report's path
    model_sha256: str | None  # the baseline's model digest
    still_dead_units: int
    newly_dead_units: int
    revived_units: int
    added_sites: tuple[str, ...]
    removed_sites: tuple[str, ...]
    resized_sites: tuple[str, ...]
    sites: tuple[SiteChange, ...]  # this report's sites in order, then the removed ones
    findings_before: tuple[FindingRef, ...]  # the baseline's findings (rule, site)

    def site(self, name: str) -> SiteChange | None:
        for change in self.sites:
            if change.name == name:
                return change
        return None


@dataclass(frozen=True)
class GateFailure:
    gate: str  # fail-over | site-threshold | fail-on | baseline
    site: str | None  # None: a scan-wide failure
    message: str
    value: float | None = None  # the measured number (dead ratio, newly dead units)
    limit: float | None = None  # the threshold it was held to
    rule: str | None = None  # fail-on: the finding's rule


@dataclass(frozen=True)
class GateOutcome:
    """The CI gates evaluated on a report (``reludoctor.report.gates.evaluate``)."""

    passed: bool
    checks: tuple[str, ...]  # the gates evaluated, e.g. "fail-over 0.25", "site layer4.* 0.2"
    failures: tuple[GateFailure, ...]

    def for_site(self, name: str | None) -> tuple[GateFailure, ...]:
        return tuple(f for f in self.failures if f.site == name)


@dataclass(frozen=True)
class HotSet:
    coverage: float  # 0.8, 0.9, 0.99: the share of the layer's activations covered
    neurons: int  # the fewest neurons covering it (most active first)


@dataclass(frozen=True)
class LayerProfile:
    """One FFN site of a language model: how sparse it is, how concentrated its firing.

    Per-neuron frequencies are the site's ``activation_rate`` (not repeated here)."""

    site: str  # the site's name in ``sites``
    module: str
    layer: int | None  # the transformer block index parsed from ``module``; None: none found
    neurons: int
    tokens: int  # observed tokens (the site's positions)
    activations: int  # (token, neuron) pairs where the neuron fired
    sparsity: float  # 1 - activations / (tokens * neurons)
    mean_active_neurons: float  # activations / tokens
    mean_active_fraction: float  # activations / (tokens * neurons) = 1 - sparsity
    hot: tuple[HotSet, ...]  # coverage 0.8, 0.9, 0.99
    dead_neurons: int


@dataclass(frozen=True)
class ActivationProfile:
    """The neuron activation profile of every FFN (token) site; see core/profile.py."""

    layers: tuple[LayerProfile, ...]
    sparsity: float  # over every layer's (token, neuron) pairs


@dataclass(frozen=True)
class AblationChange:
    """What zeroing a set of units changed on the calibration data (core/ablation.py: formulas)."""

    loss_change: float  # (sum of ablated losses - sum of baseline losses) / samples
    output_change: float  # ||y' - y||_2 / ||y||_2 over every output element (inf: ||y|| = 0)
    max_abs_change: float  # max |y' - y|
    argmax_flips: float | None  # fraction of samples whose argmax changed; None: not [N, C>1]


@dataclass(frozen=True)
class AblatedUnit:
    """One candidate zeroed alone: its first-order score beside the measured change."""

    unit: int
    score: float | None  # mean over samples of |sum_positions a * dL/da|; None: no gradient reached it
    loss_change: float
    output_change: float
    max_abs_change: float
    argmax_flips: float | None


@dataclass(frozen=True)
class SiteAblation:
    site: str
    candidates: tuple[int, ...]  # dormant or near-dead units that are not dead (zeroed together)
    joint: AblationChange | None  # None: no candidates at this site
    units: tuple[AblatedUnit, ...]  # the top-k candidates by score, each zeroed alone


@dataclass(frozen=True)
class Ablation:
    """Measured ablation (``scan(ablate=True)``, ``--ablate``); ``note`` says why not computed."""

    computed: bool
    top_k: int
    forwards_per_batch: int  # 1 + S + (1 + sum over the S sites of min(k, candidates)) when k > 0
    method: str | None = None  # export | dispatch | onnx2torch
    loss: str | None = None  # the loss of loss_change (core/gradients.py)
    samples: int = 0
    sites_ablated: int = 0
    metrics: dict[str, str] = field(default_factory=dict)  # each metric's formula
    sites: tuple[SiteAblation, ...] = ()
    note: str | None = None

    def joint(self, site: str) -> SiteAblation | None:
        """The site's ablation when it had candidates (zeroed together), else None."""
        return next((a for a in self.sites if a.site == site and a.joint is not None), None)


@dataclass(frozen=True)
class Report:
    tool: dict[str, str]
    model: ModelInfo
    calibration: CalibrationInfo
    device: str
    thresholds: Thresholds
    summary: Summary
    sites: tuple[SiteStats, ...]
    findings: tuple[Finding, ...] = ()
    unobserved_sites: tuple[UnobservedSite, ...] = ()
    warnings: tuple[str, ...] = ()
    schema_version: int = field(default=SCHEMA_VERSION)
    baseline: BaselineComparison | None = None  # with --baseline; None (null) otherwise
    gates: GateOutcome | None = None  # when gates were configured; None (null) otherwise
    gradients: GradientInfo = field(default_factory=lambda: GradientInfo(False, reason=NOT_REQUESTED))
    dtype: str = "float32"  # the forward pass's precision: float32, or bfloat16/float16 autocast
    ignored_ops: tuple[IgnoredOp, ...] = ()  # ReLU-like ops that are not activations, and why
    # Language models only: None (and no ``profile`` key) when the model has no token site,
    # so reports of CNNs and MLPs stay as they were.
    profile: ActivationProfile | None = None
    certification: Certification | None = None  # with --input-range only (absent from the JSON otherwise)
    definitions: Definitions | None = None  # with --definitions only (absent from the JSON otherwise)
    ablation: Ablation | None = None  # with --ablate only (absent from the JSON otherwise)
    slices: SlicesSummary | None = None  # with --slices only (absent from the JSON otherwise)

    def site(self, name: str) -> SiteStats:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        if data["certification"] is None:  # CONDITIONAL_KEYS
            del data["certification"]
            for site in data["sites"]:
                del site["certified_dead_units"]
        if data["profile"] is None:  # CONDITIONAL_KEYS
            del data["profile"]
        if data["definitions"] is None:  # CONDITIONAL_KEYS
            del data["definitions"]
            for site in data["sites"]:
                del site["definitions"]
        if data["ablation"] is None:  # CONDITIONAL_KEYS
            del data["ablation"]
        if data["slices"] is None:  # CONDITIONAL_KEYS
            del data["slices"]
            for site in data["sites"]:
                del site["slices"]
        if all(site["dead_points"] is None for site in data["sites"]):  # CONDITIONAL_KEYS
            for site in data["sites"]:
                del site["dead_points"]
        for site in data["sites"]:  # per-unit gradients live on in definitions.grama only
            if site["gradient"] is not None:
                del site["gradient"]["unit_abs_output"]
        ordered = {"schema_version": data.pop("schema_version")}
        ordered.update(data)
        return _jsonable(ordered)

    @classmethod
    def from_dict(cls, data: Any) -> Report:
        """The typed Report back from ``to_dict()`` output (or a parsed JSON report).

        Refuses other schema versions (1 is the only one so far) and malformed content with
        ``ReportFormatError``. Keys this version does not know are ignored (additive changes
        keep the version), keys added to the version after a report was written take their
        defaults (see ``with_defaults``); null per-unit extremes come back as NaN.
        """
        check_schema_version(data)
        return _build(cls, data, "")

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"


def check_schema_version(data: Any) -> None:
    """Refuse anything but a JSON object with a schema_version this reludoctor reads."""
    if not isinstance(data, dict):
        raise ReportFormatError(f"a report is a JSON object, not {_kind(data)}")
    if "schema_version" not in data:
        raise ReportFormatError("not a reludoctor report: it has no schema_version")
    version = data["schema_version"]
    if isinstance(version, bool) or not isinstance(version, int):
        raise ReportFormatError(f"schema_version {version!r:.60} is not an integer")
    if version not in SUPPORTED_SCHEMA_VERSIONS:
        raise ReportFormatError(
            f"schema_version {version} is not supported: this reludoctor reads schema_version "
            f"{', '.join(map(str, SUPPORTED_SCHEMA_VERSIONS))} only (the only version so far)",
            "re-run the scan with this version of reludoctor")


def with_defaults(cls: type, data: Any) -> Any:
    """``data`` (a dict for dataclass ``cls``) with the keys added to schema_version 1 after it
    was written filled in from the fields' defaults, at every level (e.g. ``baseline``, ``gates``
    at the top, ``gradient`` per site). Anything else is returned as it is."""
    if not (dataclasses.is_dataclass(cls) and isinstance(data, dict)):
        return data
    hints = typing.get_type_hints(cls)
    filled = dict(data)
    for spec in dataclasses.fields(cls):
        if spec.name not in filled:
            if spec.default is not dataclasses.MISSING:
                filled[spec.name] = _jsonable(_plain(spec.default))
            elif spec.default_factory is not dataclasses.MISSING:
                filled[spec.name] = _jsonable(_plain(spec.default_factory()))
            continue
        filled[spec.name] = _fill(hints[spec.name], filled[spec.name])
    return filled


def _fill(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        classes = [a for a in args if dataclasses.is_dataclass(a)]
        return with_defaults(classes[0], value) if len(classes) == 1 else value
    if dataclasses.is_dataclass(hint):
        return with_defaults(hint, value)
    if origin is tuple and args and isinstance(value, list):
        item = args[0] if len(args) == 2 and args[1] is Ellipsis else None
        if item is not None:
            return [_fill(item, v) for v in value]
    return value


def _plain(value: Any) -> Any:
    return asdict(value) if dataclasses.is_dataclass(value) and not isinstance(value, type) else value


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "a boolean",
            int: "a number", float: "a number", type(None): "null"}.get(type(value), type(value).__name__)


def _at(path: str) -> str:
    return path or "(root)"


def _build(cls: type, data: Any, path: str) -> Any:
    if not isinstance(data, dict):
        raise ReportFormatError(f"{_at(path)}: expected an object, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    values = {}
    for spec in dataclasses.fields(cls):
        if not spec.init:
            continue
        where = f"{path}.{spec.name}" if path else spec.name
        if spec.name not in data:
            if spec.default is not dataclasses.MISSING or spec.default_factory is not dataclasses.MISSING:
                continue
            raise ReportFormatError(f"{_at(path)}: the required key {spec.name!r} is missing")
        values[spec.name] = _convert(hints[spec.name], data[spec.name], where)
    return cls(**values)


def _convert(hint: Any, value: Any, path: str) -> Any:  # noqa: C901, PLR0911, PLR0912
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if hint is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if value is None:
            if type(None) in args:
                return None
            if float in options:
                return math.nan
        errors = []
        for option in options:
            try:
                return _convert(option, value, path)
            except ReportFormatError as exc:
                errors.append(exc)
        raise errors[0] if errors else ReportFormatError(f"{path}: unexpected {_kind(value)}")
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, path)
    if origin is tuple or origin is list:
        if not isinstance(value, list):
            raise ReportFormatError(f"{path}: expected an array, got {_kind(value)}")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis):
            if len(value) != len(args):
                raise ReportFormatError(f"{path}: expected {len(args)} items, got {len(value)}")
            return tuple(_convert(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [_convert(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or hint is dict:
        if not isinstance(value, dict):
            raise ReportFormatError(f"{path}: expected an object, got {_kind(value)}")
        value_hint = args[1] if len(args) == 2 else Any
        return {str(k): _convert(value_hint, v, f"{path}.{k}") for k, v in value.items()}
    if hint is bool:
        if not isinstance(value, bool):
            raise ReportFormatError(f"{path}: expected true or false, got {_kind(value)}")
        return value
    if hint is int:
        if isinstance(value, float) and value.is_integer():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ReportFormatError(f"{path}: expected an integer, got {_kind(value)}")
        return value
    if hint is float:
        if value is None:
            return math.nan
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ReportFormatError(f"{path}: expected a number, got {_kind(value)}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ReportFormatError(f"{path}: expected a string, got {_kind(value)}")
        return value
    return value  # a type this reader does not check


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value
