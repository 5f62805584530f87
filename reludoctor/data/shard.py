"""Sharding calibration data over the ranks of a multi-process scan (``reludoctor.core.distributed``):
batch ``k`` of the single-process scan (same batch size) goes to rank ``k mod size``. The shards
are disjoint, cover the data, depend only on the rank, and every rank's batches are exactly
batches of the single-process scan."""

from __future__ import annotations

from typing import Any, Iterator

import numpy as np


def shard_batches(total: int, batch_size: int, rank: int, size: int) -> np.ndarray:
    """Sample positions of rank ``rank``'s batches: batch k (rows k*batch_size ...) goes to
    rank k mod size. Ascending; every batch but possibly the last is full, so re-batching
    them by ``batch_size`` gives back exactly those batches."""
    starts = np.arange(rank * batch_size, total, size * batch_size, dtype=np.int64)
    if not starts.size:
        return np.zeros(0, np.int64)
    rows = (starts[:, None] + np.arange(batch_size, dtype=np.int64)[None, :]).reshape(-1)
    return rows[rows < total]


def global_positions(local: np.ndarray, batch_size: int, rank: int, size: int) -> np.ndarray:
    """Positions in the single-process order of this rank's samples at ``local`` positions of
    its shard (``shard_batches`` as a formula, so it needs no sample count)."""
    batch, row = np.divmod(np.asarray(local, np.int64), batch_size)
    return (batch * size + rank) * batch_size + row


def shard(calibration: Any, batch_size: int, rank: int, size: int) -> Shard:
    """This rank's part of a calibration set (see ``shard_batches``).

    Sources of known length (arrays, memory-mapped files, image folders, synthetic data) read
    only this rank's samples; an iterable of batches is read by every rank, each keeping its
    own batches. ``example()`` (tracing, shape probes) still gives the first samples of the
    whole set, so a rank with no batch at all traces the model like the others.
    """
    if calibration.samples is not None and calibration.indexable:
        positions = shard_batches(int(calibration.samples), batch_size, rank, size)
        return Shard(calibration, rank, size, calibration.at_positions(positions))
    return Shard(calibration, rank, size, None)


class Shard:
    """One rank's batches of a calibration set: batch k goes to rank k mod size. Everything but
    ``batches`` and ``samples`` is the whole set's."""

    def __init__(self, calibration: Any, rank: int, size: int, own: Any):
        self._base = calibration
        self._rank = rank
        self._size = size
        self._own = own  # the same source reading only this rank's samples; None: deal batches

    def __getattr__(self, name: str) -> Any:
        return getattr(self._base, name)

    @property
    def samples(self) -> int | None:
        """This rank's samples (None for an iterable until it is read)."""
        return self._own.samples if self._own is not None else None

    def batches(self, batch_size: int) -> Iterator[Any]:
        if self._own is not None:
            yield from self._own.batches(batch_size)
            return
        for index, batch in enumerate(self._base.batches(batch_size)):
            if index % self._size == self._rank:
                yield batch
