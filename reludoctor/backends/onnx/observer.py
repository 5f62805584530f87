"""Observe every ReLU-family node of an ONNX model, with the statistics computed in the graph.

Three phases, as onnxruntime's quantisation calibrator does it:

1. **Find sites** by op type (``discover``): which nodes are activations, and their names.
2. **Augment a copy of the graph** (``augment``): nodes computing per-sample, per-unit
   statistics of each site, exposed as small session outputs.
3. **Collect** over the calibration batches (here): numpy folds the [N, U] outputs (valid rows
   only) into ``UnitCounts``. A unit whose max exceeds 0 counts as having fired at least once
   even if its only positive values were denormals the in-graph indicator rounds down; the
   histogram's subsample is binned with the fixed HIST_EDGES, padded rows dropped first.

Unit axis: 1 after a convolution (through normalisation, Add, Mul, ...) or before one (a
[N, A, B] that feeds a Conv), the last axis after MatMul/Gemm, else as for PyTorch (1 for
[N, C, ...] and [N, F], last for [N, T, F]); ``unit_axis`` overrides. Each site states why
(``unit_axis_reason``). Shapes come from ONNX shape inference (``shapes``); when it cannot tell,
one batch is run with the pre-activations exposed to learn them.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from reludoctor import activations
from reludoctor.backends.base import LoadedModel
from reludoctor.backends.onnx.augment import _augmented_model, _Names, _Plan
from reludoctor.backends.onnx.discover import Scanned, Warn, _Found, discover_model
from reludoctor.backends.onnx.session import (
    _feed,
    _open_session,
    _ort_message,
    _providers,
    _quiet_run_options,
    _with_extra,
)
from reludoctor.backends.onnx.shapes import _unit_axis
from reludoctor.core.counts import HIST_EDGES, UnitCounts
from reludoctor.core.observers import HIST_SAMPLE, BatchContext
from reludoctor.core.sites import SiteSpec
from reludoctor.core.timings import phase
from reludoctor.errors import DataError, NoSitesError, ObserverFailure, UsageError
from reludoctor.report.model import UnobservedSite

Progress = Callable[[int, "int | None"], None]


class OnnxSiteObserver:
    """Folds one site's per-sample, per-unit session outputs into ``UnitCounts`` (numpy)."""

    def __init__(self, site: _Found, plan: _Plan, context: BatchContext | None = None):
        self.site = site
        self.plan = plan
        self.context = context or BatchContext()  # per-sample observation (--dead-points, --slices)
        self.lower = site.lower
        self.upper = site.upper
        self.shape: tuple[int, ...] | None = None
        self.padding_counted = False  # set when a padded batch could not be cut to real rows
        self._positions = 0
        self._samples = 0
        self._positive: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._min: np.ndarray | None = None
        self._abs_sum: np.ndarray | None = None
        self._hist = np.zeros(len(HIST_EDGES) + 1, np.int64)
        self._edges = HIST_EDGES.astype(np.float32)
        self._dead_points = 0
        self._slice_samples: np.ndarray | None = None
        self._slice_positions: np.ndarray | None = None
        self._slice_positive: np.ndarray | None = None

    @property
    def observed(self) -> bool:
        return self._positive is not None

    def output_names(self) -> list[str]:
        return list(self.plan.outputs.values())

    def update(self, results: dict[str, np.ndarray], rows: int, valid: int) -> None:
        try:
            self._update(results, rows, valid)
        except (ObserverFailure, UsageError):
            raise
        except Exception as exc:
            raise ObserverFailure(f"observing ONNX site {self.site.name} failed: {exc}") from exc

    def _update(self, results: dict[str, np.ndarray], rows: int, valid: int) -> None:
        out = {stat: results[name] for stat, name in self.plan.outputs.items()}
        lead = out["x" if self.plan.mode == "raw" else "max"]
        if lead.ndim < 2 or lead.shape[0] == 0:
            return  # an If branch that did not run for this batch
        used = valid if lead.shape[0] == rows else lead.shape[0]
        if lead.shape[0] != rows and valid < rows:
            self.padding_counted = True
        units = lead.shape[1]
        if "shape" in out:
            dims = tuple(int(d) for d in out["shape"])
            shape = dims[1:] if len(dims) > 1 else (1,)
        else:
            shape = self.plan.static_shape if self.plan.static_shape else (1,)
        per_unit = (int(np.prod(shape, dtype=np.int64)) // units) if units else 0
        if self.plan.mode == "raw":
            per_unit = 1
        if self._positive is None:
            self.shape = tuple(int(d) for d in shape)
            self._positive = np.zeros(units, np.int64)
            self._max = np.full(units, -np.inf)
            self._abs_sum = np.zeros(units, np.float64)
            if self.upper is not None:
                self._min = np.full(units, np.inf)
        elif units != self._positive.shape[0]:
            raise ObserverFailure(f"site {self.site.name}: unit count changed between batches "
                                  f"({self._positive.shape[0]} -> {units})")
        if self.plan.mode == "raw":
            x = out["x"][:used]
            y = out["y"][:used]
            np.maximum(self._max, x.max(0), out=self._max)
            self._positive += (x > self.lower).sum(0, dtype=np.int64)
            self._abs_sum += y.sum(0, dtype=np.float64)
            if self._min is not None:
                np.minimum(self._min, x.min(0), out=self._min)
            sample = x
        else:
            scale = per_unit if self.plan.mode == "pool" else 1
            np.maximum(self._max, out["max"][:used].max(0), out=self._max)
            counts = np.rint(out["count"][:used].astype(np.float64) * scale)
            self._positive += np.nan_to_num(counts).sum(0).astype(np.int64)
            self._abs_sum += (out["sum"][:used].astype(np.float64) * scale).sum(0)
            if self._min is not None:
                if "negmin" in out:
                    np.minimum(self._min, -out["negmin"][:used].max(0), out=self._min)
                else:
                    np.minimum(self._min, out["min"][:used].min(0), out=self._min)
            sample = out["hist"][:used] if "hist" in out else None
        if sample is not None:
            flat = sample.reshape(-1)
            step = max(1, flat.size // HIST_SAMPLE)
            # The bins of searchsorted(edges, values, side="right"), from the values sorted:
            # count below each edge, differenced (NaN sorts last, into the last bin, as there).
            # ~2x faster than searching every value and bincount.
            values = np.sort(flat[::step])
            below = np.searchsorted(values, self._edges, side="left")
            self._hist += np.diff(below, prepend=0, append=values.size)
        self._positions += used * per_unit
        self._samples += valid
        if self.context.points:
            if lead.shape[0] != rows:
                raise UsageError(f"site {self.site.name}: its first axis is not the batch, so its samples "
                                 "cannot be told apart (--slices, --dead-points)",
                                 "scan without --slices and --dead-points")
            self._per_sample(self._fired(out, used, per_unit), per_unit)

    def _fired(self, out: dict[str, np.ndarray], used: int, per_unit: int) -> np.ndarray:
        """[samples, units] positions that fired, from the session's per-sample outputs. A unit
        whose max is above the bound fired at least once (as ``state()`` says per unit)."""
        if self.plan.mode == "raw":
            return (out["x"][:used] > self.lower).astype(np.int64)
        scale = per_unit if self.plan.mode == "pool" else 1  # pool: the fraction of positions
        fired = np.nan_to_num(np.rint(out["count"][:used].astype(np.float64) * scale)).astype(np.int64)
        fired[(fired == 0) & (out["max"][:used] > self.lower)] = 1
        return fired

    def _per_sample(self, fired: np.ndarray, per_unit: int) -> None:
        """Dead points and per-slice counts from the per-sample, per-unit firing counts."""
        self._dead_points += int((fired.max(1) == 0).sum()) if fired.shape[1] else fired.shape[0]
        slices = self.context.slices
        if slices is None:
            return
        if self._slice_positive is None:
            self._slice_samples = np.zeros(slices.count, np.int64)
            self._slice_positions = np.zeros(slices.count, np.int64)
            self._slice_positive = np.zeros((slices.count, fired.shape[1]), np.int64)
        index = self.context.slice_index
        np.add.at(self._slice_samples, index, 1)
        np.add.at(self._slice_positions, index, per_unit)
        np.add.at(self._slice_positive, index, fired)

    def state(self) -> UnitCounts:
        if self._positive is None:
            raise RuntimeError("site was never executed")
        positive = self._positive.copy()
        # A unit whose max pre-activation is above the bound fired at least once, even when its
        # only firing was a denormal the in-graph indicator rounded away.
        positive[(positive == 0) & (self._max > self.lower)] = 1
        return UnitCounts(
            positions=self._positions,
            samples=self._samples,
            positive=positive,
            max=self._max.copy(),
            min=None if self._min is None else self._min.copy(),
            abs_output_sum=self._abs_sum.copy(),
            hist=self._hist.copy(),
            dead_points=self._dead_points if self.context.points else None,
            slice_samples=self._slice_samples,
            slice_positions=self._slice_positions,
            slice_positive=self._slice_positive,
        )


def _probe_shapes(model: Any, sites: list[_Found], feed: dict[str, np.ndarray],
                  providers: list[Any], where: str) -> None:
    """Run one batch with the unknown pre-activations exposed, to learn their ranks and types."""
    import onnx
    from onnx import helper

    extra = onnx.ModelProto()
    fresh = _Names(model)
    names = []
    for site in sites:
        name = fresh.fresh("probe")
        extra.graph.node.append(helper.make_node("Identity", [site.x], [name], name=name))
        extra.graph.output.append(onnx.ValueInfoProto(name=name))  # type unknown: name only
        names.append(name)
    session = _open_session(_with_extra(model, extra), model, providers, where)
    try:
        values = session.run(names, feed, _quiet_run_options())
    except Exception as exc:
        raise DataError(f"{where}: the model failed on the first batch: {_ort_message(exc)}",
                        "check that the data matches the model's inputs (shape, dtype, count)") from exc
    for site, value in zip(sites, values):
        dims = list(value.shape)
        site.dims = tuple([None] + dims[1:]) if dims else ()
        site.elem_type = helper.np_dtype_to_tensor_dtype(value.dtype)


class OnnxInstrument:
    """An instrumented onnxruntime session and its observers (built once, run over batches)."""

    def __init__(self, loaded: LoadedModel, calibration: Any, *, device: Any, batch_size: int,
                 unit_axis: int | None, warn: Warn, threads: int | None = None,
                 context: BatchContext | None = None):
        self.loaded = loaded
        self.context = context or BatchContext()
        self.where = loaded.path or "in-memory ONNX model"
        self.fixed = loaded.fixed_batch
        self.rows = self.fixed or batch_size
        providers = _providers(device)
        with phase("discover sites"):
            scanned = discover_model(loaded.module, warn)
        self.scanned = scanned  # evidence and the gradient plan name sites from it too
        model, opset, types, discovery = scanned.model, scanned.opset, scanned.types, scanned.discovery
        self.ignored = list(discovery.ignored)
        if discovery.gates:
            warn(f"{discovery.gates} hard-swish/hard-sigmoid gate(s) (HardSwish, HardSigmoid or "
                 "x * Clip(x + 3, 0, 6) / 6) are smooth gates, not ReLUs: not reported as sites")
        self.unobserved = [UnobservedSite(s.name, s.op, s.unobserved)
                           for s in discovery.sites if s.unobserved]
        sites = [s for s in discovery.sites if not s.unobserved]
        if not sites:
            if self.unobserved:
                raise NoSitesError(f"{self.where}: {len(self.unobserved)} ReLU-family site(s), none "
                                   f"observable: {self.unobserved[0].reason}")
            raise NoSitesError(f"{self.where}: no ReLU-family node in the ONNX graph",
                               activations.describe("onnx"))
        unknown = []
        for site in sites:
            elem_type, dims = types.get(site.x, (0, None))
            site.elem_type = elem_type
            site.dims = dims
            if dims is None or elem_type == 0:
                unknown.append(site)
        nested_unknown = {id(s) for s in unknown if s.path}  # a branch tensor cannot be probed
        for site in unknown:
            if id(site) in nested_unknown:
                self.unobserved.append(UnobservedSite(
                    site.name, site.op, "inside an If branch, and the shape of its input could not be inferred"))
        sites = [s for s in sites if id(s) not in nested_unknown]
        unknown = [s for s in unknown if id(s) not in nested_unknown]
        if unknown:
            first, _ = _feed(loaded, calibration.example(self.rows), calibration.source, 0, self.fixed,
                             calibration.binding)
            _probe_shapes(model, unknown, first, providers, self.where)
        for site in [s for s in sites if not s.dims]:
            self.unobserved.append(UnobservedSite(site.name, site.op,
                                                  "its input is a scalar: no batch, no units"))
        sites = [s for s in sites if s.dims]
        if not sites:
            raise NoSitesError(f"{self.where}: no ReLU-family site could be observed "
                               f"({self.unobserved[0].reason})")
        for site in sites:
            site.axis, site.axis_reason = _unit_axis(len(site.dims or ()), site.producer, unit_axis,
                                                     site.consumer)
        with phase("augment the graph"):
            augmented, plans = _augmented_model(model, sites, opset, self.rows)
        with phase("build the session"):
            self.session = _open_session(augmented, model, providers, self.where, threads)
        del augmented
        self.observers = [OnnxSiteObserver(site, plan, self.context) for site, plan in zip(sites, plans)
                          if plan is not None]
        self.output_names = [name for observer in self.observers for name in observer.output_names()]

    def run(self, calibration: Any, progress: Progress | None = None) -> int:
        """Every calibration batch through the session (the one batch loop, numpy arrays
        padded to a fixed batch there); returns the number of samples seen."""
        from reludoctor.core.batches import NUMPY, BatchLoop

        with BatchLoop(calibration, self.rows, fixed_batch=self.fixed, transfer=NUMPY,
                       progress=progress) as steps:
            for step in steps:
                if step.rows == 0:
                    continue
                self.context.begin(step)
                with step.guard(_ort_message):
                    feed, _ = _feed(self.loaded, step.inputs, calibration.source, step.start, None,
                                    step.binding)
                    values = self.session.run(self.output_names, feed, _quiet_run_options())
                results = dict(zip(self.output_names, values))
                for observer in self.observers:
                    observer.update(results, len(step.inputs[0]), step.rows)
            return steps.seen

    def sites(self) -> list[tuple[SiteSpec, OnnxSiteObserver]]:
        return [(SiteSpec(o.site.name, o.site.op, o.site.module, o.site.lower, o.site.upper,
                          o.site.axis, False, o.site.axis_reason), o) for o in self.observers]


def observe_onnx(
    loaded: LoadedModel,
    calibration: Any,
    *,
    device: Any,
    batch_size: int,
    unit_axis: int | None,
    progress: Progress | None,
    warn: Warn,
    ignored: list | None = None,
    context: BatchContext | None = None,
) -> tuple[list[tuple[SiteSpec, OnnxSiteObserver]], int, list[UnobservedSite], Scanned]:
    """Instrument ``loaded`` (an ONNX model) in-graph and run the calibration data through it.
    ``ignored`` receives the ReLU-like nodes that are not activations (``report.IgnoredOp``);
    the discovery comes back last (``discover.site_nodes`` reuses it)."""
    instrument = OnnxInstrument(loaded, calibration, device=device, batch_size=batch_size,
                                unit_axis=unit_axis, warn=warn, context=context)
    if ignored is not None:
        ignored.extend(instrument.ignored)
    with phase("data pass"):
        samples = instrument.run(calibration, progress)
    for observer in instrument.observers:
        if observer.padding_counted:
            warn(f"site {observer.site.name}: its first axis is not the batch, so the padded rows of "
                 "the last (fixed-size) batch are counted too")
    return instrument.sites(), samples, list(instrument.unobserved), instrument.scanned
