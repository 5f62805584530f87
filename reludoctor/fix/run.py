"""``fix()``: turn a scan's diagnosis into a repaired model file plus a summary of what changed.

Strategies (exactly one): ``prune-dead`` (remove dead units, lossless on the calibration data),
``prune-near-dead`` (also the near-dead units whose measured removal, ``core/ablation.py``, keeps
the output change within ``max_output_change``),
``leaky`` (ReLU -> LeakyReLU(alpha), not lossless), ``reinit`` (ReDo: dead and tau-dormant units get
fresh incoming weights and zero outgoing weights). Pipeline::

    scan (Report) -> plan.plan (units per site) -> the backend's fixer (apply, skip with reasons)
        -> write to a temporary file beside OUT -> reload it -> verify.compare on the calibration
        data -> os.replace onto OUT -> rescan (prune, reinit)

Nothing is written when a check fails or with ``dry_run``. Importing this package does not
import torch or onnx.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

from reludoctor.errors import ReludoctorError, UsageError
from reludoctor.fix.plan import SiteFix, Strategy
from reludoctor.fix.verify import FixVerificationError, Verification
from reludoctor.options import DEFAULT_BATCH_SIZE, FixOptions, ScanOptions

__all__ = ["fix", "FixSummary", "FixVerificationError", "SiteFix", "Strategy", "Verification",
           "SUMMARY_SCHEMA_VERSION"]

SUMMARY_SCHEMA_VERSION = 1


@dataclass(frozen=True)
class FileInfo:
    path: str | None
    format: str
    sha256: str | None


@dataclass(frozen=True)
class FixSummary:
    strategy: str
    alpha: float | None
    dry_run: bool
    model: FileInfo
    output: FileInfo | None  # None for a dry run
    calibration: dict
    sites: tuple[SiteFix, ...]
    params_before: int
    params_after: int
    macs_before: int  # multiply-accumulates per sample (Conv, Linear/Gemm/MatMul layers)
    macs_after: int
    verification: Verification | None  # None for a dry run
    rescan: dict | None  # dead units found by a scan of the output (prune, reinit)
    notes: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    tool: dict = field(default_factory=lambda: {"name": "reludoctor", "version": _version()})

    @property
    def changed_sites(self) -> tuple[SiteFix, ...]:
        return tuple(s for s in self.sites if s.action in ("pruned", "leaky", "reinit"))

    @property
    def units_changed(self) -> int:
        return sum(len(s.targets) for s in self.changed_sites) if self.strategy != "leaky" \
            else sum(s.units for s in self.changed_sites)

    def to_dict(self) -> dict:
        skipped = [s for s in self.sites if s.action == "skipped"]
        return {
            "schema_version": SUMMARY_SCHEMA_VERSION,
            "tool": dict(self.tool),
            "strategy": self.strategy,
            "alpha": self.alpha,
            "dry_run": self.dry_run,
            "model": asdict(self.model),
            "output": asdict(self.output) if self.output else None,
            "calibration": dict(self.calibration),
            "totals": {"sites_changed": len(self.changed_sites), "sites_skipped": len(skipped),
                       "units_changed": self.units_changed},
            "params": {"before": self.params_before, "after": self.params_after},
            "macs_per_sample": {"before": self.macs_before, "after": self.macs_after},
            "sites": [s.to_dict() for s in self.sites],
            "verification": _finite(self.verification.to_dict()) if self.verification else None,
            "rescan": self.rescan,
            "notes": list(self.notes),
            "warnings": list(self.warnings),
        }

    def to_json(self) -> str:
        import json

        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"


def _finite(data: dict) -> dict:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in data.items()}


def _version() -> str:
    from reludoctor import __version__

    return __version__


def check_options(strategy: Strategy | str | None, alpha: float | None,
                  max_output_change: float | None = None) -> Strategy:
    if strategy is None:
        raise UsageError("choose a strategy", "--prune-dead, --prune-near-dead, --leaky ALPHA or --reinit")
    try:
        chosen = Strategy(strategy)
    except ValueError:
        raise UsageError(f"unknown strategy {strategy!r}",
                         f"one of {', '.join(s.value for s in Strategy)}") from None
    if chosen is Strategy.LEAKY:
        if alpha is None or not (math.isfinite(alpha) and 0.0 < alpha < 1.0):
            raise UsageError(f"--leaky {alpha}: the negative slope must be in (0, 1)", "e.g. --leaky 0.01")
    elif alpha is not None:
        raise UsageError("alpha is only for the leaky strategy")
    if chosen is Strategy.PRUNE_NEAR_DEAD:
        if max_output_change is None:
            raise UsageError("--prune-near-dead needs --max-output-change EPS",
                             "the largest relative L2 change of the outputs allowed, e.g. 0.01")
        if not (math.isfinite(max_output_change) and max_output_change > 0):
            raise UsageError(f"--max-output-change {max_output_change} must be a finite number > 0",
                             "e.g. --max-output-change 0.01")
    elif max_output_change is not None:
        raise UsageError("--max-output-change is only for --prune-near-dead")
    return chosen


def _reusable(data: Any) -> Any:
    """A one-shot iterable of batches becomes a list (the data is read several times)."""
    if data is None or isinstance(data, (str, Path, dict, list, tuple)):
        return data
    if type(data).__name__ in ("ndarray", "Tensor"):
        return data
    if isinstance(data, Iterable):
        return list(data)
    return data


def fix(model: Any, data: Any, out: str | Path | None = None, options: FixOptions | None = None, *,
        on_warning: Callable[[str], None] | None = None, unsafe_pickle: bool | None = None,
        **settings: Any) -> FixSummary:
    """Scan ``model`` on ``data``, apply ``strategy`` and write the repaired model to ``out``.

    ``model``: a path (.pt2, state_dict with ``arch``, .onnx), an nn.Module, ExportedProgram or
    onnx.ModelProto (never modified). Settings (``reludoctor.options.FixOptions``, where every
    default is) come as keywords (``strategy="prune-dead"``), as ``options``, or both.
    ``sites``: glob patterns on site names (default: all). ``certified_only`` (with
    ``strategy="prune-dead"`` and ``input_range``): prune only units proven dead on that input
    range (docs/diagnosis.md#certified-dead-units).
    Returns the FixSummary; raises ReludoctorError (nothing written) on bad input, a structure it
    cannot handle at all, or a failed verification. ``imports``: modules imported before the model
    loads (op libraries, ``--import``).
    """
    from reludoctor.engine import load_model, scan, trusted
    from reludoctor.fix import output
    from reludoctor.fix.plan import plan, selected_nothing

    options = FixOptions.merged(options, settings, "fix")
    chosen = check_options(options.strategy, options.alpha, options.max_output_change)
    if data is None:
        raise UsageError("reludoctor fix needs calibration data (--data)",
                         "the fix is verified on it; synthetic inputs prove nothing")
    if out is None and not options.dry_run:
        raise UsageError("no output path", "pass -o OUT, or --dry-run to only see the plan")
    if options.certified_only and (chosen is not Strategy.PRUNE_DEAD or options.input_range is None):
        raise UsageError("--certified-only is for --prune-dead with --input-range",
                         "e.g. --prune-dead --certified-only --input-range 0,1")
    sites = tuple(options.sites or ())
    data = _reusable(data)
    warnings: list[str] = []

    def warn(message: str) -> None:
        warnings.append(message)
        if on_warning is not None:
            on_warning(message)

    out_path = Path(out) if out is not None else None
    inputs = [Path(p) for p in (model, data) if isinstance(p, (str, Path))]
    if out_path is not None:
        output.check_destination(out_path, inputs, options.force)

    backend, loaded = load_model(model, arch=options.arch, arch_kwargs=options.arch_kwargs,
                                 trust_model=trusted(options.trust_model, unsafe_pickle),
                                 imports=options.imports)
    out_format = output.output_format(out_path, backend, loaded) if out_path is not None else None
    if out_format == output.TORCH_STATE_DICT and chosen is not Strategy.REINIT:
        raise UsageError(f"-o {out_path}: --{chosen.value} changes the architecture, which a "
                         "state_dict cannot describe", "write a .pt2 file")
    fixer, work, scan_target = backend.fix_prepare(loaded, model, data, options.limit, chosen)
    scan_options = ScanOptions(batch_size=options.batch_size, device=options.device, limit=options.limit,
                               dormant_tau=options.dormant_tau, method=backend.fix_scan_method,
                               input_range=options.input_range)
    near_dead = chosen is Strategy.PRUNE_NEAR_DEAD
    # --prune-near-dead: the joint ablation of each site decides (no single-unit passes needed)
    report = scan(scan_target, data, replace(scan_options, ablate=True, ablate_top=0, ablate_sites=sites)
                  if near_dead else scan_options, on_warning=warn)
    if near_dead and not report.ablation.computed:
        raise UsageError(f"--prune-near-dead: {report.ablation.note}", "use --prune-dead")
    if selected_nothing(report, sites):
        raise UsageError(f"--sites {', '.join(sites)} matches no site",
                         f"sites are: {', '.join(s.name for s in report.sites[:8])}"
                         f"{', ...' if len(report.sites) > 8 else ''}")
    entries = plan(report, chosen, sites, certified_only=options.certified_only,
                   max_output_change=options.max_output_change)

    from reludoctor.fix.result import Request

    request = Request(chosen, options.alpha, options.seed, data, options.limit,
                      options.batch_size or DEFAULT_BATCH_SIZE, out_path, out_format, options.dry_run,
                      {s.name: set(s.dead_units) for s in report.sites}, warn, options.max_output_change,
                      _measured(report))
    result = fixer.run(loaded, work, entries, request)
    changed = [s for s in result.sites if s.action in ("pruned", "reinit")]
    rescanned = None
    if options.rescan and not options.dry_run and changed and result.fixed_object is not None:
        rescanned = _rescan(scan, result.fixed_object, data, scan_options, changed, warn)
    notes = _notes(chosen, result, changed, options.dry_run, report.calibration.synthetic)
    return FixSummary(
        strategy=chosen.value, alpha=options.alpha, dry_run=options.dry_run,
        model=FileInfo(loaded.path, loaded.format, loaded.sha256),
        output=(FileInfo(str(out_path), out_format, result.out_sha256)
                if out_path is not None and not options.dry_run else None),
        calibration={"source": report.calibration.source, "samples": report.calibration.samples},
        sites=tuple(result.sites),
        params_before=result.params_before, params_after=result.params_after,
        macs_before=result.macs_before, macs_after=result.macs_after,
        verification=result.verification, rescan=rescanned, notes=tuple(notes),
        warnings=tuple(warnings),
    )


def _measured(report: Any) -> dict[str, float]:
    """Per site, the scan's measured output change of zeroing its candidates together."""
    if report.ablation is None:
        return {}
    return {a.site: a.joint.output_change for a in report.ablation.sites if a.joint is not None}


def _rescan(scan: Callable, fixed: Any, data: Any, options: ScanOptions, changed: list,
            warn: Callable[[str], None]) -> dict | None:
    """The written model scanned again: how many of the fixed sites' units are still dead."""
    try:
        after = scan(fixed, data, options, on_warning=lambda m: None)
    except ReludoctorError as exc:  # the model is written and verified; the rescan is extra
        warn(f"the rescan of the output failed: {exc.one_line()}")
        return None
    per_site = {s.name: list(s.dead_units) for s in after.sites}
    return {
        "dead_units": after.summary.dead_units,
        "units": after.summary.units,
        "fixed_sites": {s.site: per_site.get(s.site) for s in changed},
    }


def _notes(chosen: Strategy, result: Any, changed: list, dry_run: bool, synthetic: bool) -> list[str]:
    """What the user should know about the written model, beyond its table."""
    notes = list(result.notes)
    v = result.verification
    if chosen is Strategy.REINIT and changed:
        notes.append("reset the optimizer state (e.g. Adam moments) of the re-initialised units' "
                     "incoming and outgoing weights before resuming training")
        if v is not None and not v.lossless_expected:
            notes.append("some re-initialised units were dormant, not dead: their small outputs are "
                         f"dropped (outputs changed by max abs {v.max_abs_diff:.3g}, relative "
                         f"{v.max_rel_diff:.3g})")
    if chosen is Strategy.PRUNE_NEAR_DEAD and v is not None and v.output_change is not None:
        notes.append(f"not lossless: outputs changed by {v.output_change:.3g} (relative L2) <= "
                     f"--max-output-change {v.max_output_change:g} on the calibration data"
                     + (f", argmax flips {v.argmax_flips:.2%}" if v.argmax_flips is not None else ""))
    if not changed and chosen is not Strategy.LEAKY and not dry_run:
        notes.append("no unit was changed: the output computes the same function as the input")
    if chosen is Strategy.LEAKY and v is not None:
        notes.append(f"not lossless: LeakyReLU changes outputs (max abs {v.max_abs_diff:.3g}, "
                     f"relative {v.max_rel_diff:.3g} on the calibration data); fine-tune afterwards")
    if synthetic:
        notes.append("calibration data was synthetic")
    return notes
