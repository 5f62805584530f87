"""Raw per-unit counts -> the derived statistics of the report (dead, near-dead, dormant, ...)."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reludoctor.core import slices
from reludoctor.core.counts import HIST_EDGES, UnitCounts
from reludoctor.errors import DataError
from reludoctor.report.model import Histogram, SiteAccumulators, SiteStats, Summary


def _indices(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask))


def _floats(values: np.ndarray) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


def unit_masks(positive, positions, abs_output_sum, near_dead: float, dormant_tau: float) -> tuple:
    """(dead, near-dead, dormant, activation rate, dormant score) per unit from the counts over
    ``positions`` (> 0) observed positions. NumPy arrays or torch tensors alike: the scan
    derives them on the host, ``reludoctor.watching`` on the device for each window."""
    rate = positive / positions
    dead = positive == 0  # never above the lower bound: max pre-activation <= lower
    near = (~dead) & (rate < near_dead)
    mean_abs = abs_output_sum / positions
    layer_mean = mean_abs.mean() if mean_abs.shape[0] else mean_abs.sum()
    score = mean_abs / (layer_mean + (layer_mean == 0))  # a silent layer: every score 0
    return dead, near, score <= dormant_tau, rate, score


def site_stats(
    *,
    name: str,
    op: str,
    module: str,
    unit_axis: int,
    shape: tuple[int, ...],
    lower: float,
    upper: float | None,
    counts: UnitCounts,
    near_dead: float,
    dormant_tau: float,
    unit_axis_reason: str | None = None,
    slice_ids: Sequence[int] | None = None,
) -> SiteStats:
    positions = max(counts.positions, 1)
    layer_mean = float((counts.abs_output_sum / positions).mean()) if counts.units else 0.0
    if not np.isfinite(layer_mean):
        raise DataError(f"activations at {name} overflow to infinity on the calibration data",
                        "check the data's scale (normalisation) and the model's weights")
    dead, near, dormant, rate, score = unit_masks(counts.positive, positions, counts.abs_output_sum,
                                                  near_dead, dormant_tau)
    raw = counts.to_report()  # the state as the report keeps it, so unit_counts() can invert it
    saturated = None
    minimum = None
    if upper is not None and counts.min is not None:
        saturated = _indices(counts.min >= upper)
        minimum = raw["min_preactivation"]
    units = counts.units
    return SiteStats(
        name=name,
        op=op,
        module=module,
        unit_axis=unit_axis,
        units=units,
        shape=tuple(int(d) for d in shape),
        lower_bound=float(lower),
        upper_bound=None if upper is None else float(upper),
        samples=raw["samples"],
        positions=raw["positions"],
        dead_units=_indices(dead),
        dead_ratio=float(dead.sum()) / units if units else 0.0,
        activation_rate=_floats(rate),
        max_preactivation=raw["max_preactivation"],
        near_dead_units=_indices(near),
        dormant_units=_indices(dormant),
        dormant_score=_floats(score),
        saturated_units=saturated,
        min_preactivation=minimum,
        histogram=Histogram(_floats(HIST_EDGES), raw["histogram.counts"]),
        accumulators=SiteAccumulators(raw["accumulators.positive_count"],
                                      raw["accumulators.abs_output_sum"]),
        unit_axis_reason=unit_axis_reason,
        slices=None if slice_ids is None else slices.site_slices(counts, slice_ids),
        dead_points=slices.dead_points(counts),
    )


def unit_counts(site: SiteStats) -> UnitCounts:
    """The raw state of a site back from its report entry (``site_stats`` inverted): what
    ``reludoctor merge`` adds up. The site must carry ``accumulators``."""
    if site.accumulators is None:
        raise ValueError(f"site {site.name} has no accumulators")
    return UnitCounts.from_report(site)


def summarise(sites: tuple[SiteStats, ...] | list[SiteStats], samples: int,
              unobserved: int = 0) -> Summary:
    units = sum(s.units for s in sites)
    dead = sum(len(s.dead_units) for s in sites)
    worst = max(sites, key=lambda s: s.dead_ratio, default=None)  # first of equals wins
    return Summary(
        sites=len(sites),
        units=units,
        dead_units=dead,
        dead_ratio=dead / units if units else 0.0,
        worst_site=worst.name if worst is not None else None,
        worst_site_dead_ratio=worst.dead_ratio if worst is not None else 0.0,
        near_dead_units=sum(len(s.near_dead_units) for s in sites),
        dormant_units=sum(len(s.dormant_units) for s in sites),
        saturated_units=sum(len(s.saturated_units or ()) for s in sites),
        fully_dead_sites=tuple(s.name for s in sites if s.units and s.dead_ratio == 1.0),
        firing_rate_bound_95=3.0 / samples if samples else 1.0,
        unobserved_sites=unobserved,
    )
