"""Findings from a scan: each rule is a small function with a stable id.

Rules read the statistics only (never the model), so they run on saved reports too.
"""

from __future__ import annotations

from typing import Callable, Iterable

from reludoctor.report import CalibrationInfo, Finding, SiteStats

SiteRule = Callable[[SiteStats], Iterable[Finding]]
ScanRule = Callable[[list[SiteStats], CalibrationInfo], Iterable[Finding]]

LEAKY = "nn.LeakyReLU(0.01)"


def _preview(units: tuple[int, ...], limit: int = 8) -> str:
    shown = ", ".join(map(str, units[:limit]))
    return shown + (f", ... ({len(units)} in all)" if len(units) > limit else "")


def dead_units(site: SiteStats) -> Iterable[Finding]:
    count = len(site.dead_units)
    if count == 0 or count == site.units:
        return
    yield Finding(
        rule="dead-units",
        severity="warning",
        site=site.name,
        message=f"{count} of {site.units} units at {site.name} never fired ({site.dead_ratio:.1%})",
        evidence={"dead_units": list(site.dead_units), "dead_ratio": site.dead_ratio,
                  "samples": site.samples},
        suggestion=(f"use {LEAKY} at {site.name} so dead units keep a gradient, or re-initialise "
                    f"their incoming weights with torch.nn.init.kaiming_normal_(w, "
                    f'nonlinearity="relu"); dead units {_preview(site.dead_units)} can also be '
                    "pruned without changing the outputs"),
    )


def dead_site(site: SiteStats) -> Iterable[Finding]:
    if site.units == 0 or len(site.dead_units) != site.units:
        return
    yield Finding(
        rule="dead-site",
        severity="error",
        site=site.name,
        message=f"every unit at {site.name} is dead: it outputs a constant and blocks all gradient below it",
        evidence={"units": site.units, "samples": site.samples},
        suggestion=(f"check the layer feeding {site.name} (a strongly negative bias or collapsed "
                    f"weights); re-initialise it and use {LEAKY} there before retraining"),
    )


def dormant_units(site: SiteStats) -> Iterable[Finding]:
    dead = set(site.dead_units)
    dormant = tuple(u for u in site.dormant_units if u not in dead)
    if not dormant:
        return
    yield Finding(
        rule="dormant-units",
        severity="info",
        site=site.name,
        message=f"{len(dormant)} alive units at {site.name} are tau-dormant (tiny mean output)",
        evidence={"dormant_units": list(dormant)},
        suggestion=(f"ReDo (Sokar et al. 2023): re-initialise the incoming weights of units "
                    f"{_preview(dormant)} at {site.name} and zero their outgoing weights"),
    )


def saturated_units(site: SiteStats) -> Iterable[Finding]:
    if not site.saturated_units:
        return
    yield Finding(
        rule="saturated-units",
        severity="warning",
        site=site.name,
        message=(f"{len(site.saturated_units)} units at {site.name} always sit at the upper bound "
                 f"{site.upper_bound:g}: constant output, zero gradient"),
        evidence={"saturated_units": list(site.saturated_units), "upper_bound": site.upper_bound},
        suggestion=f"use an unbounded nn.ReLU at {site.name}, or lower the scale of the layer feeding it",
    )


def synthetic_data(sites: list[SiteStats], calibration: CalibrationInfo) -> Iterable[Finding]:
    if calibration.synthetic:
        yield Finding(
            rule="synthetic-data",
            severity="warning",
            site=None,
            message="calibrated on synthetic standard-normal inputs: dead units may differ on real data",
            evidence={"samples": calibration.samples},
            suggestion="pass real calibration data with --data (a few hundred samples of the training set)",
        )


def few_samples(sites: list[SiteStats], calibration: CalibrationInfo) -> Iterable[Finding]:
    n = calibration.samples
    if n >= 300 or calibration.synthetic:
        return
    yield Finding(
        rule="few-samples",
        severity="info",
        site=None,
        message=(f"only {n} samples: a unit that never fired still fires on up to {3 / n:.1%} of "
                 "inputs (95% confidence)"),
        evidence={"samples": n, "firing_rate_bound_95": 3 / n},
        suggestion="use more calibration samples (--limit, or a larger --data file) to tighten the bound",
    )


SITE_RULES: tuple[SiteRule, ...] = (dead_site, dead_units, saturated_units, dormant_units)
SCAN_RULES: tuple[ScanRule, ...] = (synthetic_data, few_samples)


def evaluate(sites: list[SiteStats], calibration: CalibrationInfo) -> tuple[Finding, ...]:
    findings: list[Finding] = []
    for rule in SCAN_RULES:
        findings.extend(rule(sites, calibration))
    for site in sites:
        for site_rule in SITE_RULES:
            findings.extend(site_rule(site))
    return tuple(findings)
