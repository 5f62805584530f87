"""Findings from a scan: a small rules engine with stable rule ids.

Each rule is one small function, registered in ``RULES`` with its id, default severity, scope
and the basis of its suggestion (see docs/findings.md). Site rules take
``(site, context)``, scan rules ``(context)``; both yield ``Finding``s with a message, the
evidence (numbers), and a concrete suggestion naming the site and the code to change.

Rules read the statistics (``SiteStats``, including ``SiteStats.gradient`` when the gradient
pass ran) and, where the scan extracted it while the model was loaded, per-site producer
evidence (``reludoctor.core.evidence.ProducerEvidence``: the Conv/Linear feeding the site, its
per-unit weight norms, biases, BatchNorm gamma/beta). Without evidence (a saved report) the
rules that need it stay silent and the others still run.

Rule ids are a contract (``--fail-on RULE``, SARIF rule ids): never rename one.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping

import numpy as np

from reludoctor import activations
from reludoctor.report.model import Ablation, CalibrationInfo, Finding, GradientInfo, SiteAblation, SiteStats

LEAKY = "nn.LeakyReLU(0.01)"
RELU_LIKE_OPS = activations.ops_where("zero_below")  # output 0 below the bound

# Thresholds (kept here so tests and docs/findings.md can name them).
BIAS_REACH = 0.1  # "negligible": below 10% of the layer's typical reach (or of the unit's shift)
BIAS_OUTLIER_MAD = 3.0  # a bias is an outlier this many MADs below the median of the layer's shifts
WEAK_SIGNAL = 0.1  # a weak input: signal scale below 10% of the alive units' median
COLLAPSED = 0.01  # incoming weight norm below 1% of the alive units' median norm
HE_ROW_NORM = math.sqrt(2.0)  # expected row norm under kaiming_normal_(fan_in, relu)
DEPTH_MIN_SITES = 3
DEPTH_RISE = 0.2  # dead ratio of the deepest third minus the shallowest third
DEPTH_MIN_LAST = 0.25
DEPTH_MIN_RANK_CORRELATION = 0.3
STUCK_RATE = 0.95  # an alive unit firing on >= 95% of positions (or <= 5%) barely sees the input
INSENSITIVE_SHARE = 0.9  # a site where >= 90% of the alive units are stuck no longer sees its input
VANISHING = 0.01  # gradient RMS shrinks by more than 100x from the deepest to the shallowest site
VANISHING_MIN_STEPS = 2


@dataclass(frozen=True)
class Context:
    """What every rule may read."""

    sites: tuple[SiteStats, ...]
    calibration: CalibrationInfo
    evidence: Mapping[str, Any] = field(default_factory=dict)  # site -> ProducerEvidence
    gradients: GradientInfo | None = None
    ablation: Ablation | None = None  # scan(ablate=True): the measured cost of removing units

    def ablated(self, site: SiteStats) -> SiteAblation | None:
        """The site's measured joint ablation, when the scan ran one with candidates there."""
        return None if self.ablation is None else self.ablation.joint(site.name)

    def producer(self, site: SiteStats) -> Any:
        """The site's producer evidence when its units line up with the site's."""
        evidence = self.evidence.get(site.name)
        if evidence is None or evidence.units != site.units:
            return None
        return evidence


@dataclass(frozen=True)
class Rule:
    id: str
    severity: str  # info | warning | error
    scope: str  # site | scan
    title: str
    basis: str  # what the suggestion rests on (docs/findings.md)
    check: Callable[..., Iterable[Finding]]


# ----------------------------------------------------------------------------- helpers


def preview(units: Iterable[int], limit: int = 8) -> str:
    units = tuple(units)
    shown = ", ".join(map(str, units[:limit]))
    return shown + (f", ... ({len(units)} in all)" if len(units) > limit else "")


def _dead(count: int, singular: str, plural: str) -> str:
    """'1 dead unit is' / '3 dead units are'."""
    return f"1 dead unit {singular}" if count == 1 else f"{count} dead units {plural}"


def _activation_fix(site: SiteStats) -> str:
    """The code that replaces the activation at a site with a leaky one."""
    functional = site.name.split("#")[0].endswith("()")
    return "F.leaky_relu(x, 0.01)" if functional else LEAKY


def _he(layer: str) -> str:
    return f'torch.nn.init.kaiming_normal_({layer}.weight, mode="fan_in", nonlinearity="relu")'


def _layer_of(site: SiteStats, context: Context) -> str | None:
    evidence = context.producer(site)
    if evidence is not None:
        return evidence.layer
    if site.gradient is not None and site.gradient.producer:
        return site.gradient.producer
    return None


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if values.size else None


def _r(value: float | None, digits: int = 6) -> float | None:
    if value is None or not math.isfinite(value):
        return None
    return float(f"{value:.{digits}g}")


def _split(site: SiteStats) -> tuple[np.ndarray, np.ndarray]:
    dead = np.zeros(site.units, dtype=bool)
    dead[list(site.dead_units)] = True
    return dead, ~dead


def dead_vs_alive(site: SiteStats, evidence: Any) -> dict[str, Any]:
    """Medians of the producer's per-unit quantities, dead units against alive ones."""
    dead, alive = _split(site)
    out: dict[str, Any] = {"layer": evidence.layer, "kind": evidence.kind, "fan_in": evidence.fan_in}
    if evidence.norm_layer:
        out["norm_layer"] = evidence.norm_layer
    columns = {"weight_norm": evidence.weight_norm, "bias": evidence.bias, "bn_gamma": evidence.gamma,
               "bn_beta": evidence.beta, "effective_bias": evidence.shift}
    for key, values in columns.items():
        if values is None:
            continue
        out[key] = {"dead_median": _r(_median(values[dead])), "alive_median": _r(_median(values[alive]))}
    return out


def _gradient_evidence(site: SiteStats) -> dict[str, Any]:
    g = site.gradient
    if g is None or g.rms_output is None:
        return {}
    return {"gradient": {"zero_fraction": _r(g.zero_fraction), "zero_by_mask": _r(g.zero_by_mask),
                         "rms_preactivation": _r(g.rms_preactivation)}}


# ----------------------------------------------------------------------------- site rules


def dead_units(site: SiteStats, context: Context) -> Iterable[Finding]:
    count = len(site.dead_units)
    if count == 0 or count == site.units:
        return
    evidence: dict[str, Any] = {"dead_units": list(site.dead_units), "dead_ratio": site.dead_ratio,
                                "samples": site.samples}
    producer = context.producer(site)
    layer = _layer_of(site, context)
    if producer is not None:
        evidence["dead_vs_alive"] = dead_vs_alive(site, producer)
        if site.lower_bound == 0.0:
            evidence["causes"] = _cause_counts(dead_causes(site, producer))
    evidence.update(_gradient_evidence(site))
    init = f", or re-initialise {layer}'s dead rows with {_he(layer)} (He et al. 2015)" if layer else (
        ', or re-initialise their incoming weights with torch.nn.init.kaiming_normal_(w, mode="fan_in", '
        'nonlinearity="relu") (He et al. 2015)')
    yield Finding(
        rule="dead-units",
        severity="warning",
        site=site.name,
        message=f"{count} of {site.units} units at {site.name} never fired ({site.dead_ratio:.1%})",
        evidence=evidence,
        suggestion=(f"use {_activation_fix(site)} at {site.name} so dead units keep a gradient "
                    f"(Maas et al. 2013){init}; dead units: {preview(site.dead_units)}"),
    )


def dead_site(site: SiteStats, context: Context) -> Iterable[Finding]:
    if site.units == 0 or len(site.dead_units) != site.units:
        return
    layer = _layer_of(site, context)
    evidence: dict[str, Any] = {"units": site.units, "samples": site.samples}
    producer = context.producer(site)
    if producer is not None:
        evidence["producer"] = {"layer": producer.layer,
                                "effective_bias_median": _r(float(np.median(producer.shift))),
                                "weight_norm_median": _r(float(np.median(producer.weight_norm)))}
    evidence.update(_gradient_evidence(site))
    feeding = f"{layer}" if layer else f"the layer feeding {site.name}"
    yield Finding(
        rule="dead-site",
        severity="error",
        site=site.name,
        message=f"every unit at {site.name} is dead: it outputs a constant and blocks all gradient below it",
        evidence=evidence,
        suggestion=(f"check {feeding} (a strongly negative bias or collapsed weights); re-initialise it"
                    + (f" with {_he(layer)}" if layer else "")
                    + f" and use {_activation_fix(site)} at {site.name} before retraining"),
    )


CAUSES = ("collapsed-weights", "negative-bias", "input-never-positive", "weak-input", "unexplained")


@dataclass(frozen=True)
class _Layer:
    """Per-unit quantities of a site's producer and the layer-wide references the causes use."""

    peak: np.ndarray  # max pre-activation
    shift: np.ndarray
    reach: np.ndarray  # peak - shift: the largest value of the weighted input alone
    dead: np.ndarray
    alive: np.ndarray
    reach_ref: float | None  # median |reach| of the alive units (None: no alive unit)
    signal: np.ndarray  # ProducerEvidence.signal_scale
    signal_ref: float | None  # median signal scale of the alive units (else of all units)
    shift_centre: float  # median shift over all units
    shift_mad: float
    shift_floor: float  # a shift below it is an outlier of the layer
    alive_shift: float  # median shift of the alive units (else of all units)


def _layer(site: SiteStats, producer: Any) -> _Layer:
    peak = np.asarray(site.max_preactivation, dtype=np.float64)
    shift = np.asarray(producer.shift, dtype=np.float64)
    with np.errstate(invalid="ignore"):
        reach = peak - shift
    dead, alive = _split(site)
    reaches = np.abs(reach[alive & np.isfinite(reach)])
    reach_ref = float(np.median(reaches)) if reaches.size else None
    signal = np.asarray(producer.signal_scale, dtype=np.float64)
    pool = signal[alive & np.isfinite(signal) & (signal > 0)]
    if not pool.size:
        pool = signal[np.isfinite(signal) & (signal > 0)]
    signal_ref = float(np.median(pool)) if pool.size else None
    centre = float(np.median(shift))
    mad = float(np.median(np.abs(shift - centre)))
    floor = min(centre - BIAS_OUTLIER_MAD * max(mad, 1e-3 * max(1.0, abs(centre))), 0.0)
    alive_shift = float(np.median(shift[alive])) if alive.any() else centre
    return _Layer(peak, shift, reach, dead, alive, reach_ref, signal, signal_ref, centre, mad, floor,
                  alive_shift)


def dead_causes(site: SiteStats, producer: Any) -> dict[int, str]:
    """Why each dead unit is dead, from its producer (pre-activation = scale * w.x + shift).

    ``reach`` = max pre-activation - shift: the largest value the weighted input alone reached;
    ``reach_ref`` = the median |reach| of the alive units (the layer's typical input reach);
    ``signal`` = ``ProducerEvidence.signal_scale`` (``|gamma|`` through a BatchNorm, the weight
    norm otherwise), ``signal_ref`` its median over the alive units. In this order:

    - collapsed-weights: the unit's incoming weight norm is below COLLAPSED of the alive units'
      median (or of the He scale when none is alive);
    - weak-input: the whole site no longer sees its input (``input_insensitive``: a vanishing
      signal, not one unit's fault); or the weighted input is negligible next to the shift, the
      shift counting for no more than the layer's typical reach (``|reach| < BIAS_REACH *
      min(|shift|, reach_ref)``: an extreme shift does not make a normal input look
      negligible); or the unit's signal is weak: ``signal < WEAK_SIGNAL * signal_ref`` and
      ``reach < BIAS_REACH * reach_ref``;
    - negative-bias (the textbook dying ReLU): the weighted input alone fires like its
      neighbours' (``reach >= BIAS_REACH * reach_ref``), the shift is an outlier of the layer
      (BIAS_OUTLIER_MAD MADs below the median of all its units' shifts), and with the alive
      units' median shift the unit would fire (``reach + alive_shift > 0``);
    - input-never-positive: the weighted input itself is never > 0 on the data: the incoming
      weights point away from the data (typical after too large a learning rate);
    - unexplained: none of these (e.g. a marginal unit whose reach and shift nearly cancel).

    Without alive units (a dead site) the references fall back: no reach_ref (so ``|reach| <
    BIAS_REACH * |shift|`` and no reach condition on negative-bias), signal_ref over all units.
    """
    layer = _layer(site, producer)
    peak, shift, reach = layer.peak, layer.shift, layer.reach
    norms = producer.weight_norm
    healthy = norms[layer.alive & (norms > 0)]
    reference = float(np.median(healthy)) if healthy.size else HE_ROW_NORM
    insensitive = input_insensitive(site)
    reach_ref = layer.reach_ref
    causes = {}
    for u in map(int, np.flatnonzero(layer.dead)):
        if not math.isfinite(peak[u]) or not math.isfinite(shift[u]):
            causes[u] = "unexplained"
            continue
        cap = abs(shift[u]) if reach_ref is None else min(abs(shift[u]), reach_ref)
        weak_signal = (layer.signal_ref is not None and layer.signal[u] < WEAK_SIGNAL * layer.signal_ref
                       and (reach_ref is None or reach[u] < BIAS_REACH * reach_ref))
        fires_like_neighbours = reach_ref is None or reach[u] >= BIAS_REACH * reach_ref
        if norms[u] < COLLAPSED * reference:
            causes[u] = "collapsed-weights"
        elif insensitive or abs(reach[u]) < BIAS_REACH * cap or weak_signal:
            causes[u] = "weak-input"
        elif (reach[u] > 0 and fires_like_neighbours and shift[u] < layer.shift_floor
              and reach[u] + layer.alive_shift > 0):
            causes[u] = "negative-bias"
        elif reach[u] <= 0:
            causes[u] = "input-never-positive"
        else:
            causes[u] = "unexplained"
    return causes


def stuck_share(site: SiteStats) -> float | None:
    """Share of the alive units that fire on almost all (or almost no) positions."""
    dead = set(site.dead_units)
    rates = [r for u, r in enumerate(site.activation_rate) if u not in dead]
    if not rates:
        return None
    return sum(1 for r in rates if r >= STUCK_RATE or r <= 1 - STUCK_RATE) / len(rates)


def input_insensitive(site: SiteStats) -> bool:
    """Nearly every alive unit is stuck on (or off): the site's input hardly varies any more
    across the data, so which units are dead is decided by their biases, not by the data."""
    share = stuck_share(site)
    return share is not None and share >= INSENSITIVE_SHARE


def _cause_counts(causes: dict[int, str]) -> dict[str, int]:
    return {cause: sum(1 for c in causes.values() if c == cause) for cause in CAUSES
            if any(c == cause for c in causes.values())}


def negative_bias(site: SiteStats, context: Context) -> Iterable[Finding]:
    """Dead units whose weighted input alone would fire, held below zero by a strongly
    negative bias or BatchNorm beta (dying ReLU, Lu et al. 2019)."""
    producer = context.producer(site)
    if producer is None or not site.dead_units or site.lower_bound != 0.0:
        return
    causes = dead_causes(site, producer)
    explained = [u for u, cause in causes.items() if cause == "negative-bias"]
    if not explained:
        return
    layer = _layer(site, producer)
    shift, reach, alive = layer.shift, layer.reach, layer.alive
    via = "BatchNorm beta" if producer.norm_layer else "bias"
    param = (f"{producer.norm_layer}.bias" if producer.norm_layer else f"{producer.layer}.bias")
    worst = explained[int(np.argmin(shift[explained]))]
    yield Finding(
        rule="negative-bias",
        severity="warning",
        site=site.name,
        message=(f"at {site.name}, {_dead(len(explained), 'is', 'are')} held below zero by a strongly negative "
                 f"{via} (e.g. unit {worst}: effective bias {shift[worst]:.3g}, while its weighted input "
                 f"alone reaches {reach[worst]:.3g})"),
        evidence={"units": explained, "effective_bias": [_r(shift[u]) for u in explained],
                  "input_reach": [_r(reach[u]) for u in explained],
                  "alive_effective_bias_median": _r(_median(shift[alive])),
                  "effective_bias_median": _r(layer.shift_centre), "effective_bias_mad": _r(layer.shift_mad),
                  "outlier_below": _r(layer.shift_floor), "alive_input_reach_median": _r(layer.reach_ref),
                  "parameter": param,
                  "dead_vs_alive": dead_vs_alive(site, producer)},
        suggestion=(f"re-initialise {param} for units {preview(explained)} (e.g. to 0"
                    + (", and BatchNorm gamma to 1" if producer.norm_layer else "")
                    + f") and their rows of {producer.layer}.weight with {_he(producer.layer)}; "
                    f"train with a lower learning rate (a too large step drives biases negative: "
                    f"Lu et al. 2019), or use {_activation_fix(site)} at {site.name} (Maas et al. 2013)"),
    )


def input_never_positive(site: SiteStats, context: Context) -> Iterable[Finding]:
    """Dead units whose weighted input is never positive on the data: training pushed their
    incoming weights away from the data (dying ReLU after too large a step, Lu et al. 2019)."""
    producer = context.producer(site)
    if producer is None or not site.dead_units or site.lower_bound != 0.0:
        return
    causes = dead_causes(site, producer)
    units = [u for u, cause in causes.items() if cause == "input-never-positive"]
    if not units:
        return
    peak = np.asarray(site.max_preactivation, dtype=np.float64)
    reach = peak - producer.shift
    yield Finding(
        rule="input-never-positive",
        severity="warning",
        site=site.name,
        message=(f"at {site.name}, {_dead(len(units), 'has', 'have')} a weighted input that is never "
                 f"positive on the calibration data (median peak {float(np.median(reach[units])):.3g}): their "
                 f"incoming weights in {producer.layer} point away from the data"),
        evidence={"units": units, "input_reach": [_r(reach[u]) for u in units],
                  "causes": _cause_counts(causes), "dead_vs_alive": dead_vs_alive(site, producer)},
        suggestion=(f"train with a lower learning rate (or a warm-up, or gradient clipping): one too "
                    f"large step leaves a unit dead for good (dying ReLU, Lu et al. 2019); re-initialise "
                    f"rows {preview(units)} of {producer.layer}.weight with {_he(producer.layer)}, or use "
                    f"{_activation_fix(site)} at {site.name} so they can recover (Maas et al. 2013)"),
    )


def collapsed_weights(site: SiteStats, context: Context) -> Iterable[Finding]:
    """Units whose incoming weights have (nearly) vanished: they no longer see the input."""
    producer = context.producer(site)
    if producer is None:
        return
    norms = producer.weight_norm
    dead, alive = _split(site)
    healthy = norms[alive & (norms > 0)]
    reference = float(np.median(healthy)) if healthy.size else HE_ROW_NORM
    collapsed = [int(u) for u in np.flatnonzero(norms < COLLAPSED * reference)]
    if not collapsed:
        return
    dormant = set(site.dormant_units)
    affected = [u for u in collapsed if dead[u] or u in dormant]
    if not affected:
        return
    yield Finding(
        rule="collapsed-weights",
        severity="warning",
        site=site.name,
        message=(f"{len(collapsed)} units at {site.name} have collapsed incoming weights in "
                 f"{producer.layer} (norm below {COLLAPSED:.0%} of the alive units' median "
                 f"{reference:.3g}); {len(affected)} of them are dead or dormant"),
        evidence={"units": collapsed, "weight_norm": [_r(float(norms[u])) for u in collapsed],
                  "reference_norm": _r(reference), "fan_in": producer.fan_in,
                  "dead_or_dormant": affected, "dead_vs_alive": dead_vs_alive(site, producer)},
        suggestion=(f"re-initialise the rows {preview(collapsed)} of {producer.layer}.weight with "
                    f"{_he(producer.layer)} (He et al. 2015), and review the weight decay on "
                    f"{producer.layer} (too strong for the learning rate, it shrinks rows that get no "
                    "gradient to zero)"),
    )


def prunable_units(site: SiteStats, context: Context) -> Iterable[Finding]:
    """Dead units whose output is exactly 0: removing them changes nothing downstream."""
    count = len(site.dead_units)
    if count == 0 or count == site.units or site.lower_bound != 0.0 or site.op not in RELU_LIKE_OPS:
        return
    layer = _layer_of(site, context)
    producer = context.producer(site)
    rows = f"their rows of {layer}.weight and {layer}.bias" if layer else "their incoming weights"
    if producer is not None and producer.norm_layer:
        rows += f" (and their entries of {producer.norm_layer})"
    message = (f"at {site.name}, {_dead(count, 'outputs', 'output')} exactly 0 on every calibration "
               "sample: removable without changing the outputs")
    evidence = {"units": list(site.dead_units), "output": 0.0, "samples": site.samples,
                "firing_rate_bound_95": 3.0 / site.samples if site.samples else 1.0}
    suggestion = (f"prune units {preview(site.dead_units)} at {site.name}: delete {rows} and the "
                  f"matching input channels/columns of the layer that consumes {site.name} (if the "
                  "output joins a residual sum, remove the channel along the whole residual path)")
    certified = site.certified_dead_units
    if certified is not None:  # --input-range: which of them cannot fire anywhere in the domain
        evidence["certified_dead_units"] = list(certified)
        message += (f" on this data; {len(certified)} of them cannot fire for any input in the range "
                    "(certified), the others only did not fire on it")
        if len(certified) < count:
            suggestion += (f"; only the {len(certified)} certified are removable for every input in the "
                           "range (reludoctor fix --prune-dead --certified-only --input-range ...): prune "
                           "the others only if the model's inputs look like the calibration data")
    yield Finding(rule="prunable-units", severity="info", site=site.name, message=message, evidence=evidence,
                  suggestion=suggestion)


def dormant_units(site: SiteStats, context: Context) -> Iterable[Finding]:
    dead = set(site.dead_units)
    dormant = tuple(u for u in site.dormant_units if u not in dead)
    if not dormant:
        return
    layer = _layer_of(site, context)
    weights = f"rows {preview(dormant)} of {layer}.weight" if layer else \
        f"the incoming weights of units {preview(dormant)} at {site.name}"
    message = f"{len(dormant)} alive units at {site.name} are tau-dormant (tiny mean output)"
    evidence: dict[str, Any] = {"dormant_units": list(dormant),
                                "dormant_score": [_r(site.dormant_score[u]) for u in dormant]}
    suggestion = (f"ReDo (Sokar et al. 2023): re-initialise {weights} with {_he(layer) if layer else 'He init'} "
                  f"and zero the outgoing weights of those units after {site.name}")
    specialised = _specialised(site, dormant)
    if specialised:  # --slices: alive on some slices only, which a reset would take from them
        evidence["specialised"] = specialised
        message += f"; {len(specialised)} of them fire on some slices only"
        suggestion += f"; {_by_slices(specialised)}: a reset takes them from those slices"
    ablated = context.ablated(site)
    if ablated is not None:  # --ablate: what removing the candidates (dormant or near-dead) measured
        change = ablated.joint
        evidence["ablation_joint"] = {"units": list(ablated.candidates), "output_change": _r(change.output_change),
                                      "argmax_flips": _r(change.argmax_flips), "loss_change": _r(change.loss_change)}
        flips = "" if change.argmax_flips is None else f", {change.argmax_flips:.1%} of the predictions flipped"
        suggestion += (f"; measured: zeroing the {len(ablated.candidates)} dormant or near-dead units together "
                       f"changed the outputs by {change.output_change:.2%} (relative L2){flips}: "
                       f"reludoctor fix --prune-near-dead --max-output-change EPS prunes them when that is "
                       f"within EPS")
    yield Finding(rule="dormant-units", severity="info", site=site.name, message=message, evidence=evidence,
                  suggestion=suggestion)


def _specialised(site: SiteStats, units: Iterable[int]) -> dict[str, list[int]]:
    """Of ``units``, those alive on some slices only (--slices), each with its slices."""
    if site.slices is None:
        return {}
    wanted = set(units)
    return {str(u.unit): list(u.alive_on) for u in site.slices.specialised_units if u.unit in wanted}


def _by_slices(specialised: dict[str, list[int]]) -> str:
    """'units 1, 14 fire only on slice 1, units 18, 29 only on slices 0, 2', grouped by slices."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for unit, alive in specialised.items():
        groups.setdefault(tuple(alive), []).append(int(unit))
    parts = [f"units {preview(units)} {'fire ' if i == 0 else ''}only on slice{'s' if len(ids) > 1 else ''} "
             f"{', '.join(map(str, ids))}" for i, (ids, units) in enumerate(sorted(groups.items()))]
    return ", ".join(parts)


def saturated_units(site: SiteStats, context: Context) -> Iterable[Finding]:
    if not site.saturated_units:
        return
    layer = _layer_of(site, context)
    producer = context.producer(site)
    scale = (f"{producer.norm_layer}.weight (BatchNorm gamma)" if producer is not None and producer.norm_layer
             else f"{layer}.weight" if layer else "the layer feeding it")
    yield Finding(
        rule="saturated-units",
        severity="warning",
        site=site.name,
        message=(f"{len(site.saturated_units)} units at {site.name} always sit at the upper bound "
                 f"{site.upper_bound:g}: constant output, zero gradient"),
        evidence={"saturated_units": list(site.saturated_units), "upper_bound": site.upper_bound},
        suggestion=(f"use an unbounded nn.ReLU at {site.name}, or lower the scale of {scale} "
                    "(re-initialise it, or normalise its input)"),
    )


# ----------------------------------------------------------------------------- scan rules


def synthetic_data(context: Context) -> Iterable[Finding]:
    if context.calibration.synthetic:
        yield Finding(
            rule="synthetic-data",
            severity="warning",
            site=None,
            message="calibrated on synthetic standard-normal inputs: dead units may differ on real data",
            evidence={"samples": context.calibration.samples},
            suggestion="pass real calibration data with --data (a few hundred samples of the training set)",
        )


def few_samples(context: Context) -> Iterable[Finding]:
    n = context.calibration.samples
    if n >= 300 or context.calibration.synthetic or n <= 0:
        return
    yield Finding(
        rule="few-samples",
        severity="info",
        site=None,
        message=(f"only {n} samples: a unit that never fired still fires on up to {3 / n:.1%} of "
                 "inputs (95% confidence)" if 3 / n < 1 else
                 f"only {n} sample{'' if n == 1 else 's'}: too few to bound how often a unit that "
                 "never fired fires (the 95% bound 3/N is not below 100%)"),
        evidence={"samples": n, "firing_rate_bound_95": 3 / n},
        suggestion="use more calibration samples (--limit, or a larger --data file) to tighten the bound",
    )


def _rank_correlation(values: list[float]) -> float:
    """Spearman's rho of values against their position (ties get average ranks)."""
    n = len(values)
    if n < 2:
        return 0.0
    order = np.argsort(values, kind="stable")
    ranks = np.empty(n)
    array = np.asarray(values, dtype=np.float64)
    i = 0
    while i < n:
        j = i
        while j + 1 < n and array[order[j + 1]] == array[order[i]]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2.0
        i = j + 1
    position = np.arange(n, dtype=np.float64)
    if np.std(ranks) == 0:
        return 0.0
    return float(np.corrcoef(position, ranks)[0, 1])


def _depth_fix(first: SiteStats, layer: str | None) -> str:
    init = _he(layer) if layer else 'torch.nn.init.kaiming_normal_(w, mode="fan_in", nonlinearity="relu")'
    return (f"initialise every Conv/Linear with {init} (He et al. 2015), add residual connections "
            f"around the layers from {first.name} on, and normalise before each activation "
            "(nn.BatchNorm2d / nn.BatchNorm1d / nn.LayerNorm)")


def dead_with_depth(context: Context) -> Iterable[Finding]:
    """The dead ratio grows with depth: deep layers receive a signal too small or too shifted."""
    sites = [s for s in context.sites if s.units]
    if len(sites) < DEPTH_MIN_SITES:
        return
    ratios = [s.dead_ratio for s in sites]
    third = max(1, len(sites) // 3)
    first, last = float(np.mean(ratios[:third])), float(np.mean(ratios[-third:]))
    rho = _rank_correlation(ratios)
    if last - first < DEPTH_RISE or last < DEPTH_MIN_LAST or rho < DEPTH_MIN_RANK_CORRELATION:
        return
    onset = next((s for s in sites if s.dead_ratio >= first + DEPTH_RISE / 2), sites[-third])
    deep = sites[-third:]
    worst = max(deep, key=lambda s: s.dead_ratio)
    insensitive = [s.name for s in sites if input_insensitive(s)]
    stuck = (f"; in {len(insensitive)} sites (from {insensitive[0]}) nearly every alive unit fires "
             "always: the input no longer reaches them" if insensitive else "")
    yield Finding(
        rule="dead-with-depth",
        severity="warning",
        site=worst.name,
        message=(f"the dead ratio rises with depth: {first:.1%} in the first {third} sites, "
                 f"{last:.1%} in the last {third} (from {onset.name} on; worst {worst.name}){stuck}"),
        evidence={"dead_ratio_by_site": [[s.name, _r(s.dead_ratio)] for s in sites],
                  "first_third": _r(first), "last_third": _r(last), "rank_correlation": _r(rho),
                  "stuck_share_by_site": [[s.name, _r(stuck_share(s))] for s in sites],
                  "input_insensitive_sites": insensitive},
        suggestion=_depth_fix(onset, _layer_of(onset, context)),
    )


def vanishing_gradient(context: Context) -> Iterable[Finding]:
    """The gradient reaching the sites shrinks by orders of magnitude towards the input.

    Compared between consecutive sites of equal size only (pooling and strides change the RMS
    per element for reasons unrelated to vanishing)."""
    chain = [s for s in context.sites
             if s.gradient is not None and s.gradient.rms_output is not None and s.units]
    product, steps, worst = 1.0, 0, None
    for shallow, deep in zip(chain, chain[1:]):
        if math.prod(shallow.shape) != math.prod(deep.shape) or not deep.gradient.rms_output:
            continue
        ratio = shallow.gradient.rms_output / deep.gradient.rms_output
        product *= ratio
        steps += 1
        if worst is None or ratio < worst[1]:
            worst = (shallow, ratio)
    if steps < VANISHING_MIN_STEPS or product >= VANISHING or not chain:
        return
    first = chain[0]
    yield Finding(
        rule="vanishing-gradient",
        severity="warning",
        site=first.name,
        message=(f"the gradient vanishes towards the input: its RMS shrinks {1 / product:.3g}x over "
                 f"{steps} steps between sites of equal size, down to {first.gradient.rms_output:.3g} "
                 f"at {first.name}"),
        evidence={"rms_output_by_site": [[s.name, _r(s.gradient.rms_output)] for s in chain],
                  "attenuation": _r(product), "steps": steps,
                  "weakest_step": [worst[0].name, _r(worst[1])] if worst else None,
                  "loss": context.gradients.loss if context.gradients else None},
        suggestion=_depth_fix(first, _layer_of(first, context)),
    )



# ----------------------------------------------------------------------------- the registry


RULES: tuple[Rule, ...] = (
    Rule("synthetic-data", "warning", "scan", "calibrated on synthetic inputs",
         "dead units depend on the input distribution", synthetic_data),
    Rule("few-samples", "info", "scan", "too few calibration samples",
         "rule of three: 0 events in N trials bounds the rate below 3/N at 95%", few_samples),
    Rule("dead-site", "error", "site", "every unit of a site is dead",
         "He et al. 2015 (initialisation); Maas et al. 2013 (Leaky ReLU)", dead_site),
    Rule("dead-units", "warning", "site", "units that never fire",
         "Lu et al. 2019 (dying ReLU); Maas et al. 2013 (Leaky ReLU); He et al. 2015", dead_units),
    Rule("negative-bias", "warning", "site", "dead units held down by a negative bias or BatchNorm beta",
         "Lu et al. 2019 (dying ReLU); Maas et al. 2013 (Leaky ReLU)", negative_bias),
    Rule("input-never-positive", "warning", "site", "dead units whose weighted input is never positive",
         "Lu et al. 2019 (dying ReLU); Maas et al. 2013 (Leaky ReLU); He et al. 2015", input_never_positive),
    Rule("collapsed-weights", "warning", "site", "units whose incoming weights vanished",
         "He et al. 2015 (initialisation)", collapsed_weights),
    Rule("prunable-units", "info", "site", "dead units that can be removed losslessly",
         "a ReLU unit whose pre-activation never exceeds 0 outputs exactly 0", prunable_units),
    Rule("saturated-units", "warning", "site", "bounded units stuck at the upper bound",
         "a saturated unit has zero gradient", saturated_units),
    Rule("dormant-units", "info", "site", "alive units with a tiny mean output",
         "Sokar et al. 2023 (dormant neurons, ReDo)", dormant_units),
    Rule("dead-with-depth", "warning", "scan", "dead ratio rising with depth",
         "He et al. 2015 (initialisation); residual connections; normalisation", dead_with_depth),
    Rule("vanishing-gradient", "warning", "scan", "gradient shrinking towards the input",
         "He et al. 2015 (initialisation); residual connections; normalisation", vanishing_gradient),
)
RULE_IDS: tuple[str, ...] = tuple(rule.id for rule in RULES)
SEVERITIES = ("info", "warning", "error")


def rule(rule_id: str) -> Rule:
    for entry in RULES:
        if entry.id == rule_id:
            return entry
    raise KeyError(rule_id)


def evaluate(sites: list[SiteStats] | tuple[SiteStats, ...], calibration: CalibrationInfo, *,
             evidence: Mapping[str, Any] | None = None, gradients: GradientInfo | None = None,
             ablation: Ablation | None = None,
             suggest: Callable[[Finding, Context], Finding] | None = None) -> tuple[Finding, ...]:
    """Every rule on a scan: scan-wide input checks first, then per site in execution order
    (rules in registry order), then the depth rules. ``suggest``: the backend's rewording of
    a suggestion in its format's vocabulary (``Backend.suggestion``; ONNX names nodes and initializers)."""
    context = Context(tuple(sites), calibration, evidence or {}, gradients, ablation)
    leading = [r for r in RULES if r.scope == "scan" and r.id in ("synthetic-data", "few-samples")]
    trailing = [r for r in RULES if r.scope == "scan" and r not in leading]
    findings: list[Finding] = []
    for entry in leading:
        findings.extend(entry.check(context))
    for site in context.sites:
        for entry in RULES:
            if entry.scope == "site":
                findings.extend(entry.check(site, context))
    for entry in trailing:
        findings.extend(entry.check(context))
    if suggest is not None:
        findings = [suggest(finding, context) for finding in findings]
    return tuple(findings)
