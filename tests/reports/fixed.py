"""Reports built in code (no scan): deterministic inputs for the golden files, gates and baselines.

``make_site`` derives every per-unit array from a few choices (which units are dead, near-dead,
dormant, saturated) so that a test states its expectation independently of reludoctor's code.
"""

from __future__ import annotations

import math
from dataclasses import replace

from reludoctor.report.model import (
    CalibrationInfo,
    Finding,
    Histogram,
    ModelInfo,
    Report,
    SiteStats,
    Summary,
    Thresholds,
    UnobservedSite,
)

# Symmetric-log edges as the observers use: +-10^-3 ... +-10^3, four per decade, and 0.
_POSITIVE = tuple(10 ** (k / 4) for k in range(-12, 13))
EDGES = tuple(-e for e in reversed(_POSITIVE)) + (0.0,) + _POSITIVE
SAMPLES = 200
NASTY = '<script>alert("x")</script>|*$a$_`b`&amp;'


def _histogram(seed: int, dead_share: float) -> Histogram:
    """A deterministic bell over the bins, shifted left as the dead share grows."""
    n = len(EDGES) + 1
    centre = n / 2 + 8 * (0.5 - dead_share)
    counts = [int(round(1000 * math.exp(-((i - centre) / (4 + seed % 3)) ** 2 / 2))) for i in range(n)]
    if dead_share == 1.0:  # a fully dead site has nothing above 0 (bins after the edge 0)
        zero = EDGES.index(0.0)
        counts = counts[: zero + 1] + [0] * (n - zero - 1)
    return Histogram(EDGES, tuple(counts))


def make_site(name: str, units: int, dead: tuple[int, ...] = (), *, near: tuple[int, ...] = (),
              dormant: tuple[int, ...] = (), saturated: tuple[int, ...] | None = None,
              op: str = "relu", seed: int = 0, samples: int = SAMPLES,
              upper: float | None = None) -> SiteStats:
    dead_set = set(dead)
    rates = []
    for u in range(units):
        if u in dead_set:
            rates.append(0.0)
        elif u in near:
            rates.append(0.0005)
        else:
            rates.append(round(0.15 + 0.7 * ((u * 37 + seed * 11) % 97) / 97, 4))
    maxima = tuple(-0.5 - (u % 5) * 0.25 if u in dead_set else round(0.5 + (u % 7) * 0.75, 3)
                   for u in range(units))
    dormant_all = tuple(sorted(dead_set | set(dormant)))
    score = tuple(0.0 if u in dead_set else (0.01 if u in dormant else round(0.6 + (u % 4) * 0.2, 3))
                  for u in range(units))
    bounded = upper is not None or saturated is not None
    return SiteStats(
        name=name, op=op, module=name.split("#")[0], unit_axis=1, units=units, shape=(units,),
        lower_bound=0.0, upper_bound=(upper if upper is not None else 6.0) if bounded else None,
        samples=samples, positions=samples, dead_units=tuple(sorted(dead_set)),
        dead_ratio=len(dead_set) / units if units else 0.0, activation_rate=tuple(rates),
        max_preactivation=maxima, near_dead_units=tuple(sorted(near)), dormant_units=dormant_all,
        dormant_score=score, saturated_units=tuple(saturated or ()) if bounded else None,
        min_preactivation=tuple(-1.0 for _ in range(units)) if bounded else None,
        histogram=_histogram(seed, len(dead_set) / units if units else 0.0),
    )


def summarise(sites: tuple[SiteStats, ...], samples: int = SAMPLES, unobserved: int = 0) -> Summary:
    """An independent summary (not reludoctor.core.stats.summarise)."""
    units = sum(s.units for s in sites)
    dead = sum(len(s.dead_units) for s in sites)
    worst = None
    for s in sites:
        if worst is None or s.dead_ratio > worst.dead_ratio:
            worst = s
    return Summary(
        sites=len(sites), units=units, dead_units=dead, dead_ratio=dead / units if units else 0.0,
        worst_site=worst.name if worst else None,
        worst_site_dead_ratio=worst.dead_ratio if worst else 0.0,
        near_dead_units=sum(len(s.near_dead_units) for s in sites),
        dormant_units=sum(len(s.dormant_units) for s in sites),
        saturated_units=sum(len(s.saturated_units or ()) for s in sites),
        fully_dead_sites=tuple(s.name for s in sites if s.units and len(s.dead_units) == s.units),
        firing_rate_bound_95=3.0 / samples, unobserved_sites=unobserved)


def make_report(sites: tuple[SiteStats, ...], findings: tuple[Finding, ...] = (), *,
                path: str | None = "models/net.pt2", synthetic: bool = False,
                unobserved: tuple[UnobservedSite, ...] = (), warnings: tuple[str, ...] = ()) -> Report:
    return Report(
        tool={"name": "reludoctor", "version": "0.1.0"},
        model=ModelInfo(path, "torch-export", "ab" * 32 if path else None, "export", ("x",)),
        calibration=CalibrationInfo("synthetic" if synthetic else "data/calib.npy", SAMPLES,
                                    synthetic, 32),
        device="cpu",
        thresholds=Thresholds(1e-3, 0.025, None),
        summary=summarise(sites, unobserved=len(unobserved)),
        sites=sites,
        findings=findings,
        unobserved_sites=unobserved,
        warnings=warnings,
    )


def finding(rule: str, severity: str, site: str | None, message: str, suggestion: str = "",
            **evidence) -> Finding:  # noqa: ANN003
    return Finding(rule, severity, site, message, evidence, suggestion or f"fix {rule} at {site}")


def fixed_report() -> Report:
    """The golden files' report: a small CNN-like model with every kind of site and finding,
    and one site whose name is hostile to every output format."""
    sites = (
        make_site("stem.relu", 16, dead=(3, 9), near=(5,), dormant=(12,), seed=1),
        make_site("layer1.0.relu", 32, dead=(0, 1, 2, 4, 8, 16, 31), dormant=(7, 11), seed=2),
        make_site("layer1.0.relu#2", 32, seed=3),
        make_site("layer2.0.relu", 8, dead=tuple(range(8)), seed=4),
        make_site("head.act", 6, saturated=(2,), op="relu6", upper=6.0, seed=5),
        make_site(NASTY, 4, dead=(1,), seed=6),
    )
    findings = (
        finding("few-samples", "info", None, "only 200 samples: a unit that never fired still fires "
                "on up to 1.5% of inputs (95% confidence)", "use more calibration samples",
                samples=200),
        finding("dead-units", "warning", "stem.relu", "2 of 16 units at stem.relu never fired (12.5%)",
                "use nn.LeakyReLU(0.01) at stem.relu", dead_units=[3, 9]),
        finding("dead-units", "warning", "layer1.0.relu", "7 of 32 units at layer1.0.relu never fired "
                "(21.9%)", "use nn.LeakyReLU(0.01) at layer1.0.relu", dead_units=[0, 1, 2, 4, 8, 16, 31]),
        finding("dead-site", "error", "layer2.0.relu", "every unit at layer2.0.relu is dead: it outputs "
                "a constant and blocks all gradient below it", "re-initialise the layer feeding "
                "layer2.0.relu", units=8),
        finding("saturated-units", "warning", "head.act", "1 units at head.act always sit at the upper "
                "bound 6: constant output, zero gradient", "use an unbounded nn.ReLU at head.act",
                saturated_units=[2]),
        finding("dead-units", "warning", NASTY, f"1 of 4 units at {NASTY} never fired (25.0%)",
                f"prune unit 1 of {NASTY}", dead_units=[1]),
        finding("dormant-units", "info", "layer1.0.relu", "2 alive units at layer1.0.relu are "
                "tau-dormant (tiny mean output)", "ReDo: re-initialise units 7, 11", dormant_units=[7, 11]),
    )
    unobserved = (UnobservedSite("tail.relu", "relu", "never executed on the calibration data"),)
    return make_report(sites, findings, unobserved=unobserved,
                       warnings=("site tail.relu (relu) was not observed: never executed on the "
                                 "calibration data",))


def with_sites(report: Report, sites: tuple[SiteStats, ...], **changes) -> Report:  # noqa: ANN003
    return replace(report, sites=sites, summary=summarise(sites), **changes)


def baseline_report() -> Report:
    """An older scan of the fixed report's model: what ``judged_report`` is compared with.

    Against it: at stem.relu unit 9 is newly dead, 5 revived, 3 still dead; layer1.0.relu is
    unchanged; layer2.0.relu had units 0-3 dead (4-7 newly dead); head.act had 8 units (resized);
    the hostile-name site is new (its unit 1 counts as newly dead); old.relu was removed.
    """
    current = fixed_report()
    sites = (
        make_site("stem.relu", 16, dead=(3, 5), dormant=(12,), seed=1),
        current.sites[1],
        current.sites[2],
        make_site("layer2.0.relu", 8, dead=(0, 1, 2, 3), seed=4),
        make_site("head.act", 8, dead=(7,), op="relu6", upper=6.0, seed=5),
        make_site("old.relu", 10, dead=(0,), seed=7),
    )
    findings = tuple(f for f in current.findings if f.site in ("stem.relu", "layer1.0.relu", None))
    return make_report(sites, findings)


def judged_report() -> Report:
    """The fixed report with a baseline comparison and gates attached, as ``scan`` would."""
    from reludoctor.report import gates
    from reludoctor.report.baseline import compare
    from reludoctor.report.config import Settings

    report = fixed_report()
    report = replace(report, baseline=compare(baseline_report(), report, "reports/baseline.json"))
    settings = Settings(fail_over=0.2, fail_on=("error",), site_limits=(("layer1.*", 0.3),),
                        baseline="reports/baseline.json")
    return replace(report, gates=gates.evaluate(report, settings))


def with_gradients(report: Report) -> Report:
    """``report`` with gradient statistics on every site, decaying along depth."""
    from reludoctor.report.model import GradientInfo, SiteGradient

    values = [{"pass_through": 0.5, "rms_output": 0.2 / (i + 1) ** 2, "rms_preactivation": 0.1 / (i + 1) ** 2,
               "zero_fraction": min(1.0, 0.15 * i + 0.05), "zero_by_mask": min(0.95, 0.15 * i),
               "zero_downstream": 0.05, "weight_grad_norm": 0.5 / (i + 1)}
              for i in range(len(report.sites))]
    sites = tuple(replace(s, gradient=SiteGradient(**v)) for s, v in zip(report.sites, values))
    info = GradientInfo(True, loss="cross-entropy-argmax", method="export", samples=report.calibration.samples)
    return replace(report, sites=sites, gradients=info)
