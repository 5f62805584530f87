"""Per-slice liveness and dead points, derived from a site's ``UnitCounts`` (docs/diagnosis.md).

A unit is dead on slice s when it never fired on any observed position of a sample of s
(``slice_positive[s, u] == 0``); the slices a site saw no sample of do not count. Every sample
is in one slice, so "dead on every slice" is "dead" over the whole data; a unit dead on some
slices and alive on others is *specialised*: it serves those slices, and pruning it would hurt
them. A dead point is a sample none of whose positions fired on any unit of the site.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Sequence

import numpy as np

from reludoctor.core.counts import UnitCounts
from reludoctor.report.model import DeadPoints, SiteSlices, SiteStats, SlicesSummary, SpecialisedUnit


def site_slices(counts: UnitCounts, ids: Sequence[int]) -> SiteSlices | None:
    """A site's per-slice liveness; None when the state has no slice fields."""
    positive, samples = counts.slice_positive, counts.slice_samples
    if positive is None or samples is None:
        return None
    units = counts.units
    seen = samples > 0
    dead = (positive == 0) & seen[:, None]  # [slice, unit]
    dead_count = dead.sum(1)
    alive = positive > 0
    everywhere = ~alive.any(0) if seen.any() else np.zeros(units, bool)
    specialised = alive.any(0) & dead.any(0)
    return SiteSlices(
        ids=tuple(int(i) for i in ids),
        samples=tuple(int(v) for v in samples),
        positions=tuple(int(v) for v in counts.slice_positions),
        dead_units=tuple(int(v) for v in dead_count),
        dead_ratio=tuple(float(d) / units if s and units else None for d, s in zip(dead_count, seen)),
        dead_on_every_slice=tuple(int(u) for u in np.flatnonzero(everywhere)),
        specialised_units=tuple(SpecialisedUnit(int(u), tuple(int(ids[s]) for s in np.flatnonzero(alive[:, u])))
                                for u in np.flatnonzero(specialised)),
        positive_count=tuple(tuple(int(v) for v in row) for row in positive),
    )


def dead_points(counts: UnitCounts) -> DeadPoints | None:
    """A site's dead points; None when they were not tracked."""
    if counts.dead_points is None:
        return None
    return DeadPoints(int(counts.dead_points), int(counts.samples),
                      counts.dead_points / counts.samples if counts.samples else 0.0)


def summary(sites: Sequence[SiteStats], source: str) -> SlicesSummary | None:
    """The scan-wide per-slice liveness; None without slices."""
    per_site = [site.slices for site in sites if site.slices is not None]
    if not per_site:
        return None
    ids = per_site[0].ids
    samples = np.zeros(len(ids), np.int64)
    dead = np.zeros(len(ids), np.int64)
    units = np.zeros(len(ids), np.int64)
    for site, slices in ((s, s.slices) for s in sites if s.slices is not None):
        seen = np.asarray(slices.samples) > 0
        samples = np.maximum(samples, slices.samples)
        dead += np.asarray(slices.dead_units)
        units += seen * site.units
    return SlicesSummary(
        source=source,
        ids=ids,
        samples=tuple(int(v) for v in samples),
        dead_units=tuple(int(v) for v in dead),
        dead_ratio=tuple(float(d) / int(u) if u else 0.0 for d, u in zip(dead, units)),
        dead_on_every_slice=sum(len(s.dead_on_every_slice) for s in per_site),
        specialised_units=sum(len(s.specialised_units) for s in per_site),
    )


def aligned(counts: UnitCounts, ids: Sequence[int], union: Sequence[int]) -> UnitCounts:
    """``counts`` over slice ids ``ids`` re-laid over the sorted ``union`` of several scans' ids
    (slices it did not see: zeros), so that the states of scans with other slice sets merge."""
    if counts.slice_positive is None or list(ids) == list(union):
        return counts
    rows = np.searchsorted(np.asarray(union), np.asarray(ids))
    values = {}
    for name in (name for name, spec in UnitCounts.fields() if spec.needs == "slices"):
        value = getattr(counts, name)
        wide = np.zeros((len(union), *value.shape[1:]), value.dtype)
        wide[rows] = value
        values[name] = wide
    return replace(counts, **values)
