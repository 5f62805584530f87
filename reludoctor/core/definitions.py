"""Definitions of dormant / dead units from the literature, side by side (``scan(definitions=True)``).

Pure: each is derived from what a site's statistics already hold (SiteStats, and its
SiteGradient for GraMa), so no extra forward pass and no backend. docs/diagnosis.md
("Definitions from the literature") gives each formula and its source.

- ``redo_tau_dormant`` (Sokar et al. 2023): the site's own ``dormant_units`` / ``dormant_score``.
- ``dohare_rarely_active`` (Dohare et al. 2024): activation rate < 0.01.
- ``apoz`` (Hu et al. 2016): average percentage of zeros of the output, > threshold. The output
  equals the lower bound exactly where the pre-activation is <= it (ReLU, ReLU6, clamp, Clip),
  so APoZ = 1 - activation_rate.
- ``grama`` (Liu et al. 2025): mean |dL/d(output)| of a unit over the layer's mean of that, <= tau.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from reludoctor.report.model import (
    DefinitionCount,
    Definitions,
    GradientInfo,
    SiteDefinition,
    SiteDefinitions,
    SiteStats,
)

DOHARE_THRESHOLD = 0.01  # Dohare et al. 2024: "active on fewer than 1% of the inputs"
NEEDS_GRADIENTS = "needs --gradients"
NAMES = ("redo_tau_dormant", "dohare_rarely_active", "apoz", "grama")


def _indices(mask: np.ndarray) -> tuple[int, ...]:
    return tuple(int(i) for i in np.flatnonzero(mask))


def normalised_scores(per_unit: np.ndarray) -> np.ndarray:
    """Each unit's value over the layer's mean (ReDo's and GraMa's normalisation); a layer whose
    mean is 0 scores 0 everywhere (every unit flagged, as ``stats.unit_masks`` does)."""
    mean = per_unit.mean() if per_unit.size else 0.0
    return per_unit / mean if mean > 0 else np.zeros_like(per_unit)


def grama(site: SiteStats, tau: float) -> SiteDefinition | None:
    """GraMa at one site, or None where the gradient pass kept no per-unit values for it."""
    gradient = site.gradient
    values = None if gradient is None else gradient.unit_abs_output
    if values is None or len(values) != site.units:
        return None
    scores = normalised_scores(np.asarray(values, dtype=np.float64))
    return SiteDefinition(tau, _indices(scores <= tau), tuple(float(v) for v in scores))


def site_definitions(site: SiteStats, *, apoz_threshold: float, grama_tau: float | None,
                     dormant_tau: float) -> SiteDefinitions:
    """Every definition at one site; ``grama_tau`` None: GraMa not computed (no gradient pass)."""
    rate = np.asarray(site.activation_rate, dtype=np.float64)
    if site.accumulators is not None and site.positions:  # zero positions counted: no 1 - rate rounding
        positive = np.asarray(site.accumulators.positive_count, dtype=np.float64)
        apoz = (site.positions - positive) / site.positions
    else:
        apoz = 1.0 - rate
    return SiteDefinitions(
        redo_tau_dormant=SiteDefinition(dormant_tau, tuple(site.dormant_units)),
        dohare_rarely_active=SiteDefinition(DOHARE_THRESHOLD, _indices(rate < DOHARE_THRESHOLD)),
        apoz=SiteDefinition(apoz_threshold, _indices(apoz > apoz_threshold), tuple(float(v) for v in apoz)),
        grama=None if grama_tau is None else grama(site, grama_tau),
    )


def apply(sites: list[SiteStats], *, apoz_threshold: float, grama_tau: float, dormant_tau: float,
          gradients_requested: bool, gradients: GradientInfo) -> tuple[list[SiteStats], Definitions]:
    """The sites with their ``definitions`` filled in, and the scan-wide counts."""
    tau = grama_tau if gradients.computed else None
    out = [replace(site, definitions=site_definitions(site, apoz_threshold=apoz_threshold, grama_tau=tau,
                                                      dormant_tau=dormant_tau)) for site in sites]
    return out, summarise(out, grama_reason(gradients_requested, gradients))


def grama_reason(requested: bool, gradients: GradientInfo) -> str:
    """Why GraMa is null where it is."""
    if not requested:
        return NEEDS_GRADIENTS
    if not gradients.computed:
        return f"gradients unavailable: {gradients.reason}"
    return "no per-unit gradients at this site (see the warnings)"


def summarise(sites: list[SiteStats], reason: str) -> Definitions:
    """Count and ratio over every unit of the scan, per definition. GraMa counts the units of the
    sites it could score, over those sites' units (null when none)."""

    def count(name: str) -> DefinitionCount | None:
        scored = [(getattr(s.definitions, name), s.units) for s in sites if s.definitions is not None]
        scored = [(d, units) for d, units in scored if d is not None]
        if not scored:
            return None
        flagged = sum(len(d.units) for d, _ in scored)
        total = sum(units for _, units in scored)
        return DefinitionCount(flagged, flagged / total if total else 0.0)

    grama_count = count("grama")
    return Definitions(
        redo_tau_dormant=count("redo_tau_dormant") or DefinitionCount(0, 0.0),
        dohare_rarely_active=count("dohare_rarely_active") or DefinitionCount(0, 0.0),
        apoz=count("apoz") or DefinitionCount(0, 0.0),
        grama=grama_count,
        grama_reason=reason if grama_count is None else None,
    )
