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
import operator
from dataclasses import dataclass
from typing import Any, Callable, Protocol, Sequence

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


@dataclass(frozen=True)
class Spec:
    """How one ``UnitCounts`` field combines, how big it is and where the report keeps it."""

    reduce: str  # "sum" | "max" | "min"
    extent: str  # "site": one scalar; "unit": one per unit; "bins": one per histogram bin
    dtype: str  # "int64" | "float64"
    report: str  # attribute path in report.model.SiteStats, e.g. "accumulators.positive_count"
    optional: bool = False  # None for sites that do not track it (min: unbounded activations)

    @property
    def channel(self) -> Channel:
        return ("max" if self.reduce == "min" else self.reduce, self.dtype)

    @property
    def sign(self) -> int:
        return -1 if self.reduce == "min" else 1

    def size(self, units: int) -> int:
        return {"site": 1, "unit": units, "bins": BINS}[self.extent]


def _field(reduce: str, extent: str, dtype: str, report: str, optional: bool = False) -> Any:
    return dataclasses.field(metadata={"spec": Spec(reduce, extent, dtype, report, optional)})


@dataclass
class UnitCounts:
    """Raw per-unit counts of one site. Per-site fields are Python ints, the rest numpy arrays."""

    positions: int = _field("sum", "site", "int64", "positions")  # samples x positions per sample
    samples: int = _field("sum", "site", "int64", "samples")
    # positions where the pre-activation > lower bound
    positive: np.ndarray = _field("sum", "unit", "int64", "accumulators.positive_count")
    max: np.ndarray = _field("max", "unit", "float64", "max_preactivation")  # max pre-activation
    # min pre-activation (bounded activations only)
    min: np.ndarray | None = _field("min", "unit", "float64", "min_preactivation", optional=True)
    # sum of |activation output|
    abs_output_sum: np.ndarray = _field("sum", "unit", "float64", "accumulators.abs_output_sum")
    hist: np.ndarray = _field("sum", "bins", "int64", "histogram.counts")  # BINS bins, HIST_EDGES

    @classmethod
    def fields(cls) -> tuple[tuple[str, Spec], ...]:
        """(name, Spec) of every field, in declaration order (the order of packed buffers)."""
        return _SPECS

    @classmethod
    def empty(cls, units: int, bounded: bool) -> UnitCounts:
        """The state of a site that saw nothing: each field at its reduction's identity."""
        values: dict[str, Any] = {}
        for name, spec in _SPECS:
            identity = _IDENTITY[spec.reduce]
            if spec.optional and not bounded:
                values[name] = None
            elif spec.extent == "site":
                values[name] = identity
            else:
                values[name] = np.full(spec.size(units), identity, np.dtype(spec.dtype))
        return cls(**values)

    @property
    def units(self) -> int:
        return int(self.positive.shape[0])

    @property
    def bounded(self) -> bool:
        """Whether the optional fields (the minimum) are tracked."""
        return all(getattr(self, name) is not None for name, spec in _SPECS if spec.optional)

    def merge(self, other: UnitCounts) -> UnitCounts:
        """The state of one scan over both states' data (associative, commutative)."""
        if other.units != self.units or other.bounded != self.bounded:
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
                cast = int if spec.dtype == "int64" else float
                value = tuple(cast(v) for v in value)
            out[spec.report] = value
        return out

    @classmethod
    def from_report(cls, site: Any) -> UnitCounts:
        """The state back from a report's ``SiteStats`` (``to_report`` inverted)."""
        values: dict[str, Any] = {}
        for name, spec in _SPECS:
            value = site
            for part in spec.report.split("."):
                value = getattr(value, part)
            if value is not None and spec.extent != "site":
                value = np.asarray(value, dtype=np.dtype(spec.dtype)).reshape(-1)
            values[name] = value
        return cls(**values)


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


def unpack(buffers: dict[Channel, np.ndarray], shapes: Sequence[tuple[int, bool]]) -> list[UnitCounts]:
    """``pack`` inverted, for states of the given (units, bounded): fresh arrays, per-site
    fields as Python ints."""
    offsets = dict.fromkeys(CHANNELS, 0)
    states = []
    for units, bounded in shapes:
        values: dict[str, Any] = {}
        for name, spec in _SPECS:
            if spec.optional and not bounded:
                values[name] = None
                continue
            start, size = offsets[spec.channel], spec.size(units)
            offsets[spec.channel] += size
            piece = buffers[spec.channel][start:start + size]
            if spec.extent == "site":
                values[name] = int(piece[0]) if spec.dtype == "int64" else float(piece[0])
            else:
                values[name] = -piece if spec.sign < 0 else piece.copy()
        states.append(UnitCounts(**values))
    return states


class SiteObserver(Protocol):
    """What the engine reads from every backend's observer of one site (type-level only)."""

    @property
    def observed(self) -> bool: ...  # whether the site ran at least once

    @property
    def shape(self) -> tuple[int, ...] | None: ...  # activation shape without the batch axis

    def state(self) -> UnitCounts: ...
