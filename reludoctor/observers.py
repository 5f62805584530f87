"""Streaming, mergeable per-unit statistics of one activation site.

``UnitCounts`` is the backend-neutral state (numpy, merged associatively, so shards of a
calibration set scanned apart combine into the state of one scan over the union).
``TorchUnitObserver`` accumulates the same state on the model's device, batch by batch, with
no host synchronisation; ``state()`` reads it back once.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from reludoctor.errors import ObserverFailure

if TYPE_CHECKING:  # pragma: no cover
    import torch

# Fixed histogram edges (symmetric log scale) so histograms from separate runs add up.
_MAGNITUDES = 10.0 ** np.arange(-3.0, 3.0001, 0.25)
HIST_EDGES: np.ndarray = np.concatenate([-_MAGNITUDES[::-1], [0.0], _MAGNITUDES])
# Values per batch fed to the histogram: a strided subsample keeps its cost flat.
HIST_SAMPLE = 4096


@dataclass
class UnitCounts:
    """Raw per-unit counts of one site. Arrays have one entry per unit."""

    positions: int  # observed positions per unit (samples x positions per sample)
    samples: int
    positive: np.ndarray  # int64: positions where the pre-activation > lower bound
    max: np.ndarray  # float64: max pre-activation
    min: np.ndarray | None  # float64: min pre-activation (bounded activations only)
    abs_output_sum: np.ndarray  # float64: sum of |activation output|
    hist: np.ndarray  # int64, len(HIST_EDGES) + 1 bins: (-inf, e0), [e0, e1), ..., [e_last, inf)

    @classmethod
    def empty(cls, units: int, bounded: bool) -> UnitCounts:
        return cls(
            positions=0,
            samples=0,
            positive=np.zeros(units, np.int64),
            max=np.full(units, -np.inf),
            min=np.full(units, np.inf) if bounded else None,
            abs_output_sum=np.zeros(units, np.float64),
            hist=np.zeros(len(HIST_EDGES) + 1, np.int64),
        )

    @property
    def units(self) -> int:
        return int(self.positive.shape[0])

    def merge(self, other: UnitCounts) -> UnitCounts:
        if other.units != self.units or (other.min is None) != (self.min is None):
            raise ValueError("cannot merge statistics of differently shaped sites")
        return UnitCounts(
            positions=self.positions + other.positions,
            samples=self.samples + other.samples,
            positive=self.positive + other.positive,
            max=np.maximum(self.max, other.max),
            min=None if self.min is None else np.minimum(self.min, other.min),
            abs_output_sum=self.abs_output_sum + other.abs_output_sum,
            hist=self.hist + other.hist,
        )


def resolve_unit_axis(ndim: int, axis: int) -> int:
    """Normalise a possibly negative unit axis; the batch axis 0 cannot hold units."""
    resolved = axis + ndim if axis < 0 else axis
    if not 1 <= resolved < ndim:
        raise ValueError(f"unit axis {axis} does not fit an activation with {ndim} dimensions")
    return resolved


class TorchUnitObserver:
    """Accumulates ``UnitCounts`` on the activation's device, one batch at a time.

    ``valid`` (set by the runner through ``batch``) limits observation to the first rows of
    a padded batch, so a fixed-batch model's remainder batch counts only real samples.
    """

    def __init__(self, unit_axis: int, lower: float, upper: float | None, batch: BatchContext):
        self.unit_axis = unit_axis
        self.lower = lower
        self.upper = upper
        self.batch = batch
        self.shape: tuple[int, ...] | None = None  # activation shape seen first, batch excluded
        self._positions = 0
        self._samples = 0
        self._positive = None
        self._max = None
        self._min = None
        self._abs_sum = None
        self._hist = None
        self._edges = None

    def __call__(self, x: torch.Tensor) -> None:
        import torch

        try:
            with torch.no_grad():
                self._update(x.detach())
        except Exception as exc:
            raise ObserverFailure(f"observing an activation failed: {exc}") from exc

    def _update(self, x: torch.Tensor) -> None:
        import torch

        valid = self.batch.valid
        if valid is not None and x.ndim > 0 and valid < x.shape[0]:
            x = x[:valid]
        if x.numel() == 0:
            return
        if x.ndim == 1:  # [N]: one unit
            x = x.unsqueeze(1)
        axis = resolve_unit_axis(x.ndim, self.unit_axis)
        inner = tuple(d for d in range(1, x.ndim) if d != axis)
        units = x.shape[axis]
        if self.shape is None:
            self.shape = tuple(x.shape[1:])
            self._allocate(units, x.device)
        elif units != self._positive.shape[0]:
            raise ValueError(f"unit count changed between batches ({self._positive.shape[0]} -> {units})")

        # Reduce the inner (spatial/sequence) axes first, then the batch axis: ~8x faster
        # than one reduction over (0, 2, 3) on CPU for the positive count.
        per_sample_max = x.amax(dim=inner) if inner else x
        torch.maximum(self._max, per_sample_max.amax(0).to(torch.float64), out=self._max)
        fired = x > self.lower
        positive = fired.sum(dim=inner, dtype=torch.int32) if inner else fired.to(torch.int32)
        self._positive += positive.sum(0, dtype=torch.int64)
        out = x.clamp(min=self.lower, max=self.upper)
        if self.lower < 0:
            out = out.abs()
        out_sum = out.sum(dim=inner, dtype=torch.float32) if inner else out.to(torch.float32)
        self._abs_sum += out_sum.sum(0).to(torch.float64)
        if self._min is not None:
            per_sample_min = x.amin(dim=inner) if inner else x
            torch.minimum(self._min, per_sample_min.amin(0).to(torch.float64), out=self._min)
        flat = x.reshape(-1)
        step = max(1, flat.numel() // HIST_SAMPLE)
        sample = flat[::step].to(torch.float32).contiguous()
        bins = torch.bucketize(sample, self._edges, right=True)
        self._hist += torch.bincount(bins, minlength=self._hist.shape[0])
        self._positions += x.numel() // units
        self._samples += x.shape[0]

    def _allocate(self, units: int, device: torch.device) -> None:
        import torch

        self._positive = torch.zeros(units, dtype=torch.int64, device=device)
        self._max = torch.full((units,), float("-inf"), dtype=torch.float64, device=device)
        if self.upper is not None:
            self._min = torch.full((units,), float("inf"), dtype=torch.float64, device=device)
        self._abs_sum = torch.zeros(units, dtype=torch.float64, device=device)
        self._hist = torch.zeros(len(HIST_EDGES) + 1, dtype=torch.int64, device=device)
        self._edges = torch.as_tensor(HIST_EDGES, dtype=torch.float32, device=device)

    @property
    def observed(self) -> bool:
        return self._positive is not None

    def state(self) -> UnitCounts:
        """Read the device state back to the host (the one synchronisation of a scan)."""
        if self._positive is None:
            raise RuntimeError("site was never executed")
        return UnitCounts(
            positions=self._positions,
            samples=self._samples,
            positive=self._positive.cpu().numpy(),
            max=self._max.cpu().numpy(),
            min=None if self._min is None else self._min.cpu().numpy(),
            abs_output_sum=self._abs_sum.cpu().numpy(),
            hist=self._hist.cpu().numpy(),
        )


@dataclass
class BatchContext:
    """Shared by the runner and every observer of one scan."""

    valid: int | None = None  # real rows in the current batch when it was padded
