"""The streaming state of one activation site, each field declaring how it combines.

``UnitCounts`` is what every backend's observer accumulates (numpy on the host) and everything
downstream derives from: report statistics, ``reludoctor merge`` of separate scans, the
all-reduce of a multi-process scan. Each field's ``Spec`` says how two states combine (sum,
max, min), its extent (one per site, per unit or per histogram bin), its dtype and where the
report keeps it, so merging, packing into all-reduce buffers and the report round trip are
written once, as loops over the fields (as torch.ao's observers accumulate, then derive). A
new statistic is one more field with its ``Spec``; a field without one fails at import.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from dataclasses import dataclass
from typing import Any, Callable, NamedTuple, Protocol, Sequence

import numpy as np

# Fixed histogram edges (symmetric log scale) so histograms from separate runs add up.
_MAGNITUDES = 10.0 ** np.arange(-3.0, 3.0001, 0.25)
HIST_EDGES: np.ndarray = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])
BINS = len(HIST_EDGES) + 1  # (-inf, e0), [e0, e1), ..., [e_last, inf)

# How two values of a field combine; the identity is the value of a site that saw nothing.
_COMBINE: dict[str, Callable[[Any, Any], Any]] = {"sum": operator.add, "max": np.maximum,
                                                   "min": np.minimum}
_IDENTITY = {"sum": 0, "max": -np.inf, "min": np.inf}

# An all-reduce buffer: (collective op, dtype). A minimum travels negated in the max buffer
# (exact), so a scan needs only these three collectives, in this order.
Channel = tuple[str, str]
CHANNELS: tuple[Channel, ...] = (("sum", "int64"), ("sum", "float64"), ("max", "float64"))


class Layout(NamedTuple):
    """Which fields a site's state tracks and how big they are: ``bounded`` adds the minimum
    (ReLU6, hardtanh, Clip), ``slices`` (> 0) the per-slice fields (``--slices``), ``points``
    the dead points (``--dead-points``, ``--slices``)."""

    units: int
    bounded: bool = False
    slices: int = 0
    points: bool = False


@dataclass(frozen=True)
class Spec:
    """How one ``UnitCounts`` field combines, how big it is and where the report keeps it."""

    reduce: str  # "sum" | "max" | "min"
    # "site": one scalar; "unit": one per unit; "bins": one per histogram bin; "slice": one per
    # slice; "slice_unit": [slices, units]
    extent: str
    dtype: str  # "int64" | "float64"
    report: str  # attribute path in report.model.SiteStats, e.g. "accumulators.positive_count"
    needs: str | None = None  # the Layout flag it is tracked under; None (the field) otherwise

    @property
    def channel(self) -> Channel:
        return ("max" if self.reduce == "min" else self.reduce, self.dtype)

    @property
    def sign(self) -> int:
        return -1 if self.reduce == "min" else 1

    def tracked(self, layout: Layout) -> bool:
        return self.needs is None or bool(getattr(layout, self.needs))

    def shape(self, layout: Layout) -> tuple[int, ...]:
        return {"site": (), "unit": (layout.units,), "bins": (BINS,), "slice": (layout.slices,),
                "slice_unit": (layout.slices, layout.units)}[self.extent]


def _field(reduce: str, extent: str, dtype: str, report: str, needs: str | None = None) -> Any:
    return dataclasses.field(default=None if needs else dataclasses.MISSING,
                             metadata={"spec": Spec(reduce, extent, dtype, report, needs)})


@dataclass
class UnitCounts:
    """Raw per-unit counts of one site. Per-site fields are Python ints, the rest numpy arrays."""

    positions: int = _field("sum", "site", "int64", "positions")  # samples x positions per sample
    samples: int = _field("sum", "site", "int64", "samples")
    # positions where the pre-activation > lower bound
    positive: np.ndarray = _field("sum", "unit", "int64", "accumulators.positive_count")
    max: np.ndarray = _field("max", "unit", "float64", "max_preactivation")  # max pre-activation
    # sum of |activation output|
    abs_output_sum: np.ndarray = _field("sum", "unit", "float64", "accumulators.abs_output_sum")
    hist: np.ndarray = _field("sum", "bins", "int64", "histogram.counts")  # BINS bins, HIST_EDGES
    # The fields below are tracked only where their Layout flag is set (None otherwise).
    # min pre-activation (bounded activations only)
    min: np.ndarray | None = _field("min", "unit", "float64", "min_preactivation", needs="bounded")
    # samples none of whose positions fired on any unit (--dead-points, --slices)
    dead_points: int | None = _field("sum", "site", "int64", "dead_points.count", needs="points")
    # per slice (--slices): samples, observed positions, positions where each unit fired
    slice_samples: np.ndarray | None = _field("sum", "slice", "int64", "slices.samples", needs="slices")
    slice_positions: np.ndarray | None = _field("sum", "slice", "int64", "slices.positions", needs="slices")
    slice_positive: np.ndarray | None = _field("sum", "slice_unit", "int64", "slices.positive_count",
                                               needs="slices")

    @classmethod
    def fields(cls) -> tuple[tuple[str, Spec], ...]:
        """(name, Spec) of every field, in declaration order (the order of packed buffers)."""
        return _SPECS

    @classmethod
    def empty(cls, units: int, bounded: bool = False, slices: int = 0, points: bool = False) -> UnitCounts:
        """The state of a site that saw nothing (of this ``Layout``): each field at its
        reduction's identity."""
        layout = Layout(units, bounded, slices, points)
        values: dict[str, Any] = {}
        for name, spec in _SPECS:
            identity = _IDENTITY[spec.reduce]
            if not spec.tracked(layout):
                values[name] = None
            elif spec.extent == "site":
                values[name] = identity
            else:
                values[name] = np.full(spec.shape(layout), identity, np.dtype(spec.dtype))
        return cls(**values)

    @property
    def units(self) -> int:
        return int(self.positive.shape[0])

    @property
    def bounded(self) -> bool:
        """Whether the minimum is tracked."""
        return self.min is not None

    @property
    def layout(self) -> Layout:
        return Layout(self.units, self.bounded,
                      0 if self.slice_samples is None else int(self.slice_samples.shape[0]),
                      self.dead_points is not None)

    def merge(self, other: UnitCounts) -> UnitCounts:
        """The state of one scan over both states' data (associative, commutative)."""
        if other.layout != self.layout:
            raise ValueError("cannot merge statistics of differently shaped sites")
        values = {}
        for name, spec in _SPECS:
            mine, theirs = getattr(self, name), getattr(other, name)
            values[name] = None if mine is None else _COMBINE[spec.reduce](mine, theirs)
        return UnitCounts(**values)

    def to_report(self) -> dict[str, Any]:
        """Every field as the report keeps it, by its ``Spec.report`` path: per-site fields as
        they are, arrays as tuples of Python ints or floats, an untracked field as None."""
        out: dict[str, Any] = {}
        for name, spec in _SPECS:
            value = getattr(self, name)
            if value is not None and spec.extent != "site":
                value = _tuples(value, int if spec.dtype == "int64" else float)
            out[spec.report] = value
        return out

    @classmethod
    def from_report(cls, site: Any) -> UnitCounts:
        """The state back from a report's ``SiteStats`` (``to_report`` inverted)."""
        values: dict[str, Any] = {}
        for name, spec in _SPECS:
            value = site
            for part in spec.report.split("."):
                value = getattr(value, part, None)  # an untracked section (None) has no parts
            if value is not None and spec.extent != "site":
                value = np.asarray(value, dtype=np.dtype(spec.dtype))
                if spec.extent == "slice_unit":  # [slices, units]; positive is read before it
                    value = value.reshape(-1, len(values["positive"]))
            values[name] = value
        return cls(**values)


def _tuples(value: np.ndarray, cast: Callable[[Any], Any]) -> tuple:
    """An array as (nested) tuples of Python numbers."""
    return tuple(_tuples(v, cast) if np.ndim(v) else cast(v) for v in value)


_SPECS: tuple[tuple[str, Spec], ...] = tuple(
    (f.name, f.metadata["spec"]) for f in dataclasses.fields(UnitCounts) if "spec" in f.metadata)
_UNDECLARED = [f.name for f in dataclasses.fields(UnitCounts) if "spec" not in f.metadata]
if _UNDECLARED:  # pragma: no cover - a programming error, caught on import
    raise TypeError(f"UnitCounts fields without a Spec (reduction): {', '.join(_UNDECLARED)}")


def pack(states: Sequence[UnitCounts]) -> dict[Channel, np.ndarray]:
    """The states' fields as one flat buffer per channel (state by state, field by field),
    for one all-reduce each; ``unpack`` reads them back."""
    pieces: dict[Channel, list[np.ndarray]] = {channel: [] for channel in CHANNELS}
    for state in states:
        for name, spec in _SPECS:
            value = getattr(state, name)
            if value is None:
                continue
            piece = np.asarray(value, np.dtype(spec.dtype)).reshape(-1)
            pieces[spec.channel].append(-piece if spec.sign < 0 else piece)
    return {channel: np.concatenate(parts) if parts else np.zeros(0, np.dtype(channel[1]))
            for channel, parts in pieces.items()}


def unpack(buffers: dict[Channel, np.ndarray], layouts: Sequence[Layout]) -> list[UnitCounts]:
    """``pack`` inverted, for states of the given layouts: fresh arrays, per-site fields as
    Python ints."""
    offsets = dict.fromkeys(CHANNELS, 0)
    states = []
    for layout in layouts:
        layout = Layout(*layout)  # also a plain (units, bounded)
        values: dict[str, Any] = {}
        for name, spec in _SPECS:
            if not spec.tracked(layout):
                values[name] = None
                continue
            shape = spec.shape(layout)
            start, size = offsets[spec.channel], math.prod(shape)
            offsets[spec.channel] += size
            piece = buffers[spec.channel][start:start + size]
            if spec.extent == "site":
                values[name] = int(piece[0]) if spec.dtype == "int64" else float(piece[0])
            else:
                values[name] = (-piece if spec.sign < 0 else piece.copy()).reshape(shape)
        states.append(UnitCounts(**values))
    return states


class SiteObserver(Protocol):
    """What the engine reads from every backend's observer of one site (type-level only)."""

    @property
    def observed(self) -> bool: ...  # whether the site ran at least once

    @property
    def shape(self) -> tuple[int, ...] | None: ...  # activation shape without the batch axis

    def state(self) -> UnitCounts: ...
