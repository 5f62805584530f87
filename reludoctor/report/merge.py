"""Reports of separate scans over disjoint data -> the report of one scan over their union.

Each site's raw state (positions, samples, positive counts, max and min pre-activation, sums of
|output|, histogram counts: ``SiteStats`` plus its ``accumulators``) is added up across the
reports (``UnitCounts.merge``: sums, maxima, minima), then everything derived from it (dead,
near-dead, dormant and saturated units, rates, scores, the summary, the findings) is recomputed
with ``stats.site_stats`` and ``rules.evaluate``, never merged.

Refused (``MergeError``, exit 2): fewer than two reports, the same file twice, reports of
different models (sha256, format, inputs) or of an in-memory model (no digest), scanned with
different methods, unit axes or precisions (``--dtype``), sites that disagree (op, units, shape,
bounds) or that a report neither observed nor listed as unobserved (TorchDispatchMode scans list
only the sites they saw: there a missing site is accepted), a mix of synthetic and real
calibration data, reports written before the accumulators existed, and a mix of reports with
and without ``--slices`` or ``--dead-points`` (per-slice counts of parts with different slice ids
are laid over the union of the ids first). Taken from the first report, with a warning:
the near-dead and dormant thresholds (derived statistics are recomputed with them) and the
batch size. Dropped, with a warning: gradient statistics (they cannot be merged exactly; re-run
``scan --gradients`` over the union), baseline comparisons and gate outcomes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from reludoctor import __version__
from reludoctor.errors import MergeError  # noqa: F401 - re-exported
from reludoctor.report.model import (
    NOT_REQUESTED,
    CalibrationInfo,
    GradientInfo,
    Report,
    SiteStats,
    UnobservedSite,
)

GRADIENTS_DROPPED = ("not merged: gradient statistics of separate scans cannot be combined exactly "
                     "(re-run scan --gradients over the whole data)")


@dataclass
class _Site:
    first: SiteStats  # as the first report that observed it has it
    where: str  # that report's name
    parts: list[SiteStats] = field(default_factory=list)


def merge_files(paths: Sequence[str | Path], warn: Callable[[str], None] | None = None) -> Report:
    """Load JSON reports (``scan --json``) and merge them; errors name the file."""
    from reludoctor.report.baseline import load_report

    if len(paths) < 2:
        raise MergeError(f"merge needs at least two reports, got {len(paths)}",
                         "give the JSON reports of every part")
    from reludoctor.safeio import resolve_path

    seen: dict[Path, str] = {}
    for path in paths:
        resolved = resolve_path(path, "report", MergeError)
        if resolved in seen:
            raise MergeError(f"report {path} is given twice", "each part must be counted once")
        seen[resolved] = str(path)
    reports = [load_report(path) for path in paths]
    return merge_reports(reports, [str(p) for p in paths], warn)


def merge_reports(reports: Sequence[Report], names: Sequence[str] | None = None,
                  warn: Callable[[str], None] | None = None) -> Report:
    """The report of one scan over the union of the reports' (disjoint) calibration data."""
    from reludoctor.core import profile, slices
    from reludoctor.core.rules import evaluate
    from reludoctor.core.stats import site_stats, summarise, unit_counts

    names = list(names) if names is not None else [f"report {i + 1}" for i in range(len(reports))]
    if len(reports) < 2:
        raise MergeError(f"merge needs at least two reports, got {len(reports)}",
                         "give the reports of every part")
    notes: list[str] = []

    def note(message: str) -> None:
        notes.append(message)
        if warn is not None:
            warn(message)

    first = reports[0]
    _check_compatible(reports, names, note)
    sites, unobserved = _sites(reports, names)
    near_dead, dormant_tau = first.thresholds.near_dead, first.thresholds.dormant_tau
    # slice ids: the union of the parts' (a slice a part did not see counts zero there)
    ids = None if first.slices is None else sorted({i for r in reports for i in r.slices.ids})
    stats = []
    for entry in sites:
        parts = [unit_counts(part) if ids is None else slices.aligned(unit_counts(part), part.slices.ids, ids)
                 for part in entry.parts]
        counts = parts[0]
        for part in parts[1:]:
            counts = counts.merge(part)
        site = entry.first
        stats.append(site_stats(
            name=site.name, op=site.op, module=site.module, unit_axis=site.unit_axis,
            shape=site.shape, lower=site.lower_bound, upper=site.upper_bound, counts=counts,
            near_dead=near_dead, dormant_tau=dormant_tau, unit_axis_reason=site.unit_axis_reason,
            slice_ids=ids))
    samples = sum(r.calibration.samples for r in reports)
    calibration = CalibrationInfo(
        " + ".join(_unique(r.calibration.source for r in reports)), samples,
        first.calibration.synthetic, first.calibration.batch_size)
    gradients = GradientInfo(False, reason=NOT_REQUESTED)
    if any(r.gradients.computed or any(s.gradient is not None for s in r.sites) for r in reports):
        gradients = GradientInfo(False, reason=GRADIENTS_DROPPED)
        note("gradient statistics are dropped: those of separate scans cannot be combined exactly "
             "(re-run scan --gradients over the whole data)")
    if any(r.baseline is not None or r.gates is not None for r in reports):
        note("baseline comparisons and gate outcomes of the parts are dropped "
             "(apply them to the merged report: reludoctor report MERGED.json --fail-over ...)")
    stale = {_unobserved_note(u) for r in reports for u in r.unobserved_sites}
    carried = [w for w in _unique(w for r in reports for w in r.warnings) if w not in stale]
    warnings = carried + [_unobserved_note(u) for u in unobserved] + notes
    precision = {"dtype": first.dtype} if hasattr(first, "dtype") else {}  # the parts' (checked)
    return Report(
        **precision,
        tool={"name": "reludoctor", "version": __version__},
        model=first.model,
        calibration=calibration,
        device=", ".join(_unique(r.device for r in reports)),
        thresholds=first.thresholds,
        summary=summarise(stats, samples, len(unobserved)),
        sites=tuple(stats),
        unobserved_sites=tuple(unobserved),
        findings=evaluate(stats, calibration, gradients=gradients),
        warnings=tuple(warnings),
        gradients=gradients,
        ignored_ops=tuple(_unique(op for r in reports for op in r.ignored_ops)),
        profile=profile.build(stats, samples),
        slices=None if ids is None else slices.summary(
            stats, " + ".join(_unique(r.slices.source for r in reports))),
    )


def _unobserved_note(site: UnobservedSite) -> str:
    return f"site {site.name} ({site.op}) was not observed: {site.reason}"  # as engine.scan says it


def _unique(items) -> list:  # noqa: ANN001
    out: list = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _check_compatible(reports: Sequence[Report], names: Sequence[str],
                      note: Callable[[str], None]) -> None:
    first, where = reports[0], names[0]
    for report, name in zip(reports, names):
        if report.model.sha256 is None:
            raise MergeError(f"report {name} is of an in-memory model (no sha256): cannot check "
                             "that the parts scanned the same model", "scan a model file")
        missing = [s.name for s in report.sites if s.accumulators is None]
        if missing:
            raise MergeError(f"report {name} has no accumulators (site {missing[0]}): it was written "
                             "by an older reludoctor", "re-scan that part with this version")
    for report, name in zip(reports[1:], names[1:]):
        if report.model.sha256 != first.model.sha256:
            raise MergeError(f"reports {where} and {name} are of different models (sha256 "
                             f"{first.model.sha256[:12]}... and {report.model.sha256[:12]}...)",
                             "merge only scans of the same model file")
        for label, mine, theirs in (("format", first.model.format, report.model.format),
                                    ("inputs", first.model.inputs, report.model.inputs),
                                    ("method", first.model.method, report.model.method),
                                    ("precision (--dtype)", getattr(first, "dtype", None),
                                     getattr(report, "dtype", None)),
                                    ("unit axis", first.thresholds.unit_axis, report.thresholds.unit_axis)):
            if mine != theirs:
                raise MergeError(f"reports {where} and {name} were scanned with different {label} "
                                 f"({mine} and {theirs})", "scan every part with the same options")
        for label, mine, theirs in (("--slices", first.slices is not None, report.slices is not None),
                                    ("--dead-points", _points(first), _points(report))):
            if mine != theirs:
                raise MergeError(f"reports {where} and {name}: one was scanned with {label}, the other "
                                 "not", f"scan every part with {label}, or none")
        if report.calibration.synthetic != first.calibration.synthetic:
            synthetic = where if first.calibration.synthetic else name
            raise MergeError(f"report {synthetic} used synthetic data and the other parts real data",
                             "merge only scans of real calibration data (pass --data to every part)")
        if (report.thresholds.near_dead, report.thresholds.dormant_tau) != \
                (first.thresholds.near_dead, first.thresholds.dormant_tau):
            note(f"{name} was scanned with --near-dead {report.thresholds.near_dead} --dormant-tau "
                 f"{report.thresholds.dormant_tau}; the merged report uses {where}'s "
                 f"{first.thresholds.near_dead} and {first.thresholds.dormant_tau}")
        if report.calibration.batch_size != first.calibration.batch_size:
            note(f"{name} was scanned in batches of {report.calibration.batch_size}, {where} in "
                 f"batches of {first.calibration.batch_size}: histograms (a subsample of each "
                 "batch) may differ slightly from one scan's")
    if first.calibration.synthetic:
        note("every part used synthetic data: parts scanned with the same --seed saw the same "
             "samples, so the merged counts are not those of disjoint data")


def _points(report: Report) -> bool:
    return any(site.dead_points is not None for site in report.sites)


def _sites(reports: Sequence[Report], names: Sequence[str]) -> tuple[list[_Site], list[UnobservedSite]]:
    """The observed sites of all reports in one order (the first report's; a site only later
    reports observed goes right after the site preceding it there), with the parts of each;
    and the sites no report observed."""
    order: list[str] = []
    found: dict[str, _Site] = {}
    for report, name in zip(reports, names):
        previous = None
        for site in report.sites:
            entry = found.get(site.name)
            if entry is None:
                entry = found[site.name] = _Site(site, name)
                order.insert(order.index(previous) + 1 if previous is not None else 0, site.name)
            else:
                _check_site(entry, site, name)
            entry.parts.append(site)
            previous = site.name
    for report, name in zip(reports, names):
        known = {s.name for s in report.sites} | {u.name for u in report.unobserved_sites}
        for entry_name in order:
            if entry_name not in known and report.model.method != "dispatch":
                raise MergeError(f"site {entry_name} of {found[entry_name].where} is missing from "
                                 f"{name} (neither observed nor listed as unobserved)",
                                 "the reports list different sites: merge only scans of the same model")
    unobserved: list[UnobservedSite] = []
    for report in reports:
        for site in report.unobserved_sites:
            if site.name not in found and all(u.name != site.name for u in unobserved):
                unobserved.append(site)
    return [found[name] for name in order], unobserved


def _check_site(entry: _Site, site: SiteStats, name: str) -> None:
    first = entry.first
    for label, mine, theirs in (("op", first.op, site.op), ("units", first.units, site.units),
                                ("unit axis", first.unit_axis, site.unit_axis),
                                ("shape", tuple(first.shape), tuple(site.shape)),
                                ("lower bound", first.lower_bound, site.lower_bound),
                                ("upper bound", first.upper_bound, site.upper_bound)):
        if mine != theirs:
            raise MergeError(f"site {site.name} has {label} {_show(mine)} in {entry.where} but "
                             f"{_show(theirs)} in {name}", "merge only scans of the same model")


def _show(value: object) -> str:
    if isinstance(value, tuple):
        return "[" + ", ".join(map(str, value)) + "]"
    return str(value)
