"""Slice ids (``--slices``): one integer per calibration sample (a class, a task, a domain),
read as untrusted input, and which slice each observed sample belongs to.

A scan reads samples in its own order: the first ``--limit``, a ``--sample`` subset (the data's
sample indices), and under torchrun only this rank's batches. ``SampleSlices.of(start, rows)``
gives the slices of a batch from the position of its first sample in that order, so the ids
follow the samples in every case: position -> global position (the shard's batch k is the
single-process batch k * size + rank) -> data index (the --sample subset) -> slice.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from reludoctor.errors import DataError, UsageError

MAX_SLICES = 1024  # per-slice state is units x slices per site: a cap keeps it small
_HINT = "save one integer per calibration sample, in data order, e.g. np.save('slices.npy', labels)"


def load_ids(slices: Any) -> tuple[np.ndarray, str]:
    """(int64 [N] slice ids, the source's name) from a path (.npy, .npz with one array, .pt
    tensor), an array or a tensor. Integers only (floats holding integers too); 1-D."""
    if isinstance(slices, (str, Path)):
        from reludoctor.data.arrays import load_file

        source = str(slices)
        loaded = load_file(Path(slices), [], option="--slices")
        arrays = list(loaded.values()) if isinstance(loaded, dict) else list(loaded)
        if len(arrays) != 1 or arrays[0] is None:
            raise DataError(f"{source}: holds {len(arrays)} arrays, --slices needs one", _HINT)
        value = arrays[0]
    else:
        source, value = f"in-memory {type(slices).__name__}", slices
    if hasattr(value, "detach"):  # a tensor
        value = value.detach().cpu().numpy()
    array = np.asarray(value)
    if array.ndim != 1:
        raise DataError(f"{source}: slice ids of shape {list(array.shape)}, expected one per sample [N]",
                        _HINT)
    if array.dtype.kind == "b" or array.dtype.kind not in "iuf":
        raise DataError(f"{source}: slice ids are {array.dtype}, not integers", _HINT)
    if array.dtype.kind == "f":
        if not (np.isfinite(array).all() and (array == np.round(array)).all()):
            raise DataError(f"{source}: slice ids are fractional or not finite, not integers", _HINT)
    if array.size and (array.min() < -(2 ** 62) or array.max() > 2 ** 62):
        raise DataError(f"{source}: slice ids beyond +-2**62", "use small integers (class, task, domain)")
    return array.astype(np.int64), source


class SampleSlices:
    """The slice of every sample a scan observes. ``ids``: the distinct slice ids of the
    scanned samples, sorted (the report's order); ``index``: per data sample, its slice's
    position in ``ids`` (-1: not scanned)."""

    def __init__(self, ids: tuple[np.ndarray, str], samples: int | None, sample_indices: Any = None):
        raw, self.source = ids  # load_ids()
        needed = samples if sample_indices is None else (int(sample_indices[-1]) + 1 if len(sample_indices) else 0)
        if needed is not None and raw.shape[0] < needed:
            raise DataError(f"{self.source}: {raw.shape[0]} slice ids, but the scan reads "
                            f"{needed} samples", "pass one slice id per calibration sample, in order")
        scanned = raw if needed is None else (raw[:needed] if sample_indices is None
                                              else raw[np.asarray(sample_indices, np.int64)])
        self.ids = np.unique(scanned)
        if self.ids.size > MAX_SLICES:
            raise DataError(f"{self.source}: {self.ids.size} distinct slice ids, at most {MAX_SLICES}",
                            "group them into fewer slices (classes, tasks, domains)")
        self.index = np.searchsorted(self.ids, raw)
        self._indices = None if sample_indices is None else np.asarray(sample_indices, np.int64)
        self._shard: tuple[int, int, int] | None = None  # (batch size, rank, size) under torchrun

    @property
    def count(self) -> int:
        return int(self.ids.size)

    def shard(self, batch_size: int, rank: int, size: int, indexable: bool) -> None:
        """Follow this rank's shard of a multi-process scan from now on (data.shard: batch k ->
        rank k mod size). Data read by position only: an iterable's batches may be of any size."""
        if not indexable:
            raise UsageError("--slices under torchrun needs data read by position (a file or an array)",
                             "pass --data as a file, or scan in one process")
        self._shard = (batch_size, rank, size)

    def of(self, start: int, rows: int) -> np.ndarray:
        """The slice positions (int64, in ``ids``) of the samples ``start .. start + rows - 1`` in
        the scan's (this rank's) order."""
        positions = np.arange(start, start + rows, dtype=np.int64)
        if self._shard is not None:
            from reludoctor.data.shard import global_positions

            positions = global_positions(positions, *self._shard)
        if self._indices is not None:
            positions = self._indices[positions]
        if positions.size and positions.max() >= self.index.shape[0]:
            raise DataError(f"{self.source}: {self.index.shape[0]} slice ids, but the data has more "
                            "samples", "pass one slice id per calibration sample, in order")
        return self.index[positions]
