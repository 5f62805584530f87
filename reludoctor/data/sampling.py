"""Which samples of a calibration source are read: the first ``limit``, or a seeded random subset.

One small piece shared by every source (``.npy``, ``.npz``, ``.pt``, arrays, image folders): a
source says how many samples it holds, this module says which of them to read, and the source
reads them in ascending index order (so a memory-mapped file or a folder is read front to back).

``--limit L`` keeps meaning "the first L samples". ``--sample N`` draws N distinct samples,
uniformly without replacement, with ``numpy.random.default_rng(seed)``; with both, the N are
drawn from the first L (the limit makes the pool, the sample thins it).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reludoctor.errors import UsageError


@dataclass(frozen=True)
class Selection:
    """``indices``: sorted, distinct sample indices to read, or None for the first ``count``."""

    count: int
    indices: np.ndarray | None = None
    pool: int = 0  # how many samples the subset was drawn from (after --limit)
    note: str | None = None  # something the user should be told (a sample larger than the data)

    def describe(self, seed: int) -> str | None:
        """How the subset was chosen, for the report's calibration source, or None for all."""
        if self.indices is None:
            return None
        return f"random sample of {self.count} of {self.pool}, seed {seed}"


def check_options(*, limit: int | None, sample: int | None, seed: int) -> None:
    """Refuse impossible values before any data is read."""
    if limit is not None and limit < 1:
        raise UsageError(f"--limit {limit} must be at least 1")
    if sample is not None and sample < 1:
        raise UsageError(f"--sample {sample} must be at least 1")
    if seed < 0:
        raise UsageError(f"--seed {seed} must be 0 or more")


def select(total: int, *, limit: int | None = None, sample: int | None = None,
           seed: int = 0) -> Selection:
    """Choose the samples to read out of ``total`` (see the module docstring)."""
    check_options(limit=limit, sample=sample, seed=seed)
    pool = total if limit is None else min(total, limit)
    if sample is None or sample == pool:
        return Selection(pool, None, pool)
    if sample > pool:
        what = f"the first {pool} samples (--limit)" if limit is not None and limit < total \
            else f"the {pool} samples of the data"
        return Selection(pool, None, pool,
                         note=f"--sample {sample} is more than {what}: using all {pool}")
    indices = sample_indices(pool, sample, seed)
    return Selection(sample, indices, pool)


def sample_indices(pool: int, count: int, seed: int) -> np.ndarray:
    """``count`` distinct indices in ``[0, pool)``, uniformly at random, sorted (int64)."""
    rng = np.random.default_rng(seed)
    chosen = rng.choice(pool, size=count, replace=False, shuffle=False)
    return np.sort(chosen.astype(np.int64, copy=False))
