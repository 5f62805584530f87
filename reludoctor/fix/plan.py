"""Which units of which sites a strategy targets, chosen from a scan Report (no model access).

The backends' fixers (``backends.torch.fix``, ``backends.onnx.fix``) then apply the plan where
the model's structure allows and turn the rest into skips with a reason; ``SiteFix`` records the
outcome per site.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass, replace
from enum import Enum
from typing import Sequence

from reludoctor import activations
from reludoctor.report.model import Report, SiteStats


class Strategy(str, Enum):
    PRUNE_DEAD = "prune-dead"
    LEAKY = "leaky"
    REINIT = "reinit"
    PRUNE_NEAR_DEAD = "prune-near-dead"  # dead units plus the near-dead ones whose measured removal fits

    def __str__(self) -> str:
        return self.value


PRUNING = (Strategy.PRUNE_DEAD, Strategy.PRUNE_NEAR_DEAD)

# Activations --leaky can replace: unbounded, rectifying at 0 (ReLU6/hardtanh/clip keep their cap).
LEAKY_OPS = activations.ops_where("leaky_form")


@dataclass(frozen=True)
class SiteFix:
    """The plan, then the outcome, for one site."""

    site: str
    op: str
    units: int  # units at the site before the fix
    action: str  # planned: prune-dead | leaky | reinit; done: pruned | leaky | reinit; or
    #              skipped (with a reason) | unchanged (nothing to do at this site)
    targets: tuple[int, ...] = ()  # unit indices acted on (prune/reinit); () for leaky/skip
    layer: str | None = None  # the producing Conv/Linear (prune/reinit)
    reason: str | None = None  # why skipped, or a remark
    units_after: int | None = None

    def skipped(self, reason: str) -> SiteFix:
        return replace(self, action="skipped", reason=reason, units_after=self.units)

    def to_dict(self) -> dict:
        return {"site": self.site, "op": self.op, "action": self.action, "units": self.units,
                "units_after": self.units_after, "targets": list(self.targets),
                "layer": self.layer, "reason": self.reason}


def matches(name: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


def _prunable(op: str) -> bool:
    entry = activations.get(op)
    return entry is None or entry.prunable


def _targets(site: SiteStats, strategy: Strategy, certified_only: bool) -> tuple[int, ...]:
    if strategy is Strategy.PRUNE_DEAD:
        return tuple(site.certified_dead_units or ()) if certified_only else tuple(site.dead_units)
    return tuple(sorted(set(site.dead_units) | set(site.dormant_units)))  # reinit: ReDo's set


def _near_dead(site: SiteStats, report: Report, limit: float | None) -> tuple[tuple[int, ...], str | None]:
    """--prune-near-dead: the dead units plus the ablation candidates (alive dormant or near-dead
    units) when zeroing those together changed the outputs by at most ``limit``; and a remark."""
    found = None if report.ablation is None else report.ablation.joint(site.name)
    dead = tuple(site.dead_units)
    if found is None:
        return dead, None
    change = found.joint.output_change
    if limit is not None and change <= limit:
        return tuple(sorted(set(dead) | set(found.candidates))), (
            f"{len(found.candidates)} near-dead unit(s) with measured output change {change:.3g} <= {limit:g}")
    return dead, (f"{len(found.candidates)} near-dead unit(s) kept: zeroing them changes the outputs "
                  f"by {change:.3g} > {limit:g}")


def plan(report: Report, strategy: Strategy, patterns: Sequence[str] = (),
         certified_only: bool = False, max_output_change: float | None = None) -> list[SiteFix]:
    """One SiteFix per scanned site selected by ``patterns`` (globs on site names; all when
    empty): the units to act on, or a skip with its reason. Sites not selected are left out.
    ``certified_only``: prune only the certified dead units (a report of a scan with an input
    range); a site that could not be bounded is skipped with the reason."""
    out = []
    uncertified = _not_certifiable(report) if certified_only else {}
    for site in report.sites:
        if not matches(site.name, patterns):
            continue
        entry = SiteFix(site.name, site.op, site.units, strategy.value)
        if strategy is Strategy.LEAKY:
            if site.op not in LEAKY_OPS or site.upper_bound is not None:
                out.append(entry.skipped(f"{site.op} is bounded or not a plain ReLU; --leaky "
                                         "replaces unbounded ReLU sites only"))
            else:
                out.append(replace(entry, units_after=site.units))
            continue
        if certified_only and site.certified_dead_units is None:
            out.append(entry.skipped(uncertified.get(site.name, "not certifiable")))
            continue
        remark = None
        if strategy is Strategy.PRUNE_NEAR_DEAD:
            targets, remark = _near_dead(site, report, max_output_change)
        else:
            targets = _targets(site, strategy, certified_only)
        if not targets:
            nothing = "no certified dead units" if certified_only else "no dead units"
            if strategy is Strategy.PRUNE_NEAR_DEAD:
                nothing = "no dead units" + (f"; {remark}" if remark else "")
            out.append(replace(entry, action="unchanged", reason=nothing if strategy in PRUNING
                               else "no dead or dormant units", units_after=site.units))
            continue
        entry = replace(entry, targets=targets, reason=remark)
        if strategy in PRUNING and len(targets) == site.units:
            which = "dead or near-dead" if strategy is Strategy.PRUNE_NEAR_DEAD else "dead"
            out.append(entry.skipped(f"all {site.units} units are {which}: the whole layer is "
                                     "inert; remove it from the architecture instead"))
            continue
        if strategy in PRUNING and not _prunable(site.op):
            out.append(entry.skipped(f"{site.op}: a dead unit's output is not a constant (its "
                                     "negative slope passes the input), so it cannot be removed"))
            continue
        if strategy in PRUNING and site.lower_bound != 0.0:
            out.append(entry.skipped(f"{site.op} with lower bound {site.lower_bound}: a dead "
                                     "unit's output is not 0"))
            continue
        out.append(entry)
    return out


def _not_certifiable(report: Report) -> dict[str, str]:
    """Why each site without certified units could not be bounded (the report's certification)."""
    c = report.certification
    if c is None:
        return {}
    reasons = {n.site: f"not certifiable: {n.reason}" for n in c.not_certifiable}
    return {s.name: reasons.get(s.name, f"not certifiable: {c.note}") for s in report.sites
            if s.certified_dead_units is None}


def selected_nothing(report: Report, patterns: Sequence[str]) -> bool:
    return bool(patterns) and not any(matches(s.name, patterns) for s in report.sites)
