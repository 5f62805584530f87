"""The ablation section (``--ablate``) as every format shows it: a headline, a site table (the
candidates zeroed together) and a unit table (the top-k zeroed alone, score beside measurement)."""

from __future__ import annotations

from dataclasses import dataclass

from reludoctor.report.model import AblationChange, Report
from reludoctor.reporters.common import SiteRows, human, percent

SITE_HEADERS = ["candidates", "output change", "max abs", "loss change", "argmax flips"]
UNIT_HEADERS = ["unit", "score", "output change", "loss change", "argmax flips"]


@dataclass(frozen=True)
class AblationView:
    headline: str  # what was measured, on how much data, at what cost; or why not
    tables: list[SiteRows]  # the sites with candidates zeroed together, then the top-k units alone
    legend: str  # the output-change and score formulas


def number(value: float | None) -> str:
    return "-" if value is None or value != value else f"{value:.3g}"


def _change(change: AblationChange) -> list[str]:
    return [number(change.output_change), number(change.max_abs_change), number(change.loss_change),
            "-" if change.argmax_flips is None else percent(change.argmax_flips)]


def ablation_view(report: Report) -> AblationView | None:
    """The section, or None when the scan was not asked to ablate."""
    a = report.ablation
    if a is None:
        return None
    if not a.computed or not a.sites_ablated:
        return AblationView(f"ablation: {a.note}", [], "")
    headline = (f"ablation ({a.method}, {human(a.samples)} samples, loss {a.loss}): "
                f"{a.sites_ablated} site(s) with dormant or near-dead units, zeroed together and the "
                f"top {a.top_k} by score one at a time ({a.forwards_per_batch} forward passes per batch)")
    sites, units = [], []
    for site in a.sites:
        if site.joint is None:
            continue
        sites.append((site.site, [human(len(site.candidates)), *_change(site.joint)]))
        for unit in site.units:
            units.append((site.site, [str(unit.unit), number(unit.score), number(unit.output_change),
                                      number(unit.loss_change),
                                      "-" if unit.argmax_flips is None else percent(unit.argmax_flips)]))
    legend = ("output change: ||y' - y|| / ||y|| over all outputs; score: mean |sum of activation x "
              "gradient| (first-order estimate); loss change: per sample")
    tables = [SiteRows("zeroed together", SITE_HEADERS, sites),
              SiteRows("zeroed one at a time (top by score)", UNIT_HEADERS, units)]
    return AblationView(headline, [table for table in tables if table.rows], legend)
