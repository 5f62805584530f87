"""Certified dead units: which dead units cannot fire for any input in the input box.

A backend's ``certify`` phase bounds each site's pre-activation over the box (``SiteBounds``);
this module turns the bounds into the report: a dead unit is certified when the upper bound of
its pre-activation, over every position, is at most the activation's lower bound."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

from reludoctor.report.model import Certification, InputRangeInfo, NotCertifiable, SiteStats


@dataclass
class SiteBounds:
    """A backend's bounds: per site name, each unit's largest possible pre-activation over the
    input box; per site it could not bound, why; ``note``: why no site could be bounded."""

    upper: dict[str, tuple[float, ...]] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    note: str | None = None


def certified(site: SiteStats, upper: tuple[float, ...]) -> tuple[int, ...]:
    """The dead units whose pre-activation upper bound is <= the activation's lower bound."""
    return tuple(u for u in site.dead_units if upper[u] <= site.lower_bound)


def apply(stats: list[SiteStats], bounds: SiteBounds, box: Any) -> tuple[list[SiteStats], Certification]:
    """(stats with ``certified_dead_units`` filled in where bounded, the scan's Certification)."""
    out, failures, dead, proven = [], [], 0, 0
    for site in stats:
        upper = bounds.upper.get(site.name)
        if upper is None or len(upper) != site.units:
            reason = bounds.failed.get(site.name) or bounds.note or "no bounds for this site"
            if upper is not None:
                reason = f"bounds of {len(upper)} units for a site of {site.units}"
            failures.append(NotCertifiable(site.name, reason))
            out.append(site)
            continue
        units = certified(site, upper)
        dead, proven = dead + len(site.dead_units), proven + len(units)
        out.append(replace(site, certified_dead_units=units))
    bounded = len(stats) - len(failures)
    status = "complete" if not failures else "unsupported" if bounded == 0 else "partial"
    info = InputRangeInfo(box.spec, tuple(box.low), tuple(box.high))
    # a scan-wide note says it once, not per site
    listed = () if bounds.note and bounded == 0 else tuple(failures)
    return out, Certification(info, status, proven, dead, listed, bounds.note)
