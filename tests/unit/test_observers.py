"""TorchUnitObserver and UnitCounts against plain numpy reductions."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reludoctor.core.counts import HIST_EDGES, UnitCounts
from reludoctor.core.observers import HIST_SAMPLE, BatchContext, TorchUnitObserver


def numpy_counts(x: np.ndarray, axis: int, lower: float, upper: float | None) -> dict:
    """Oracle: move the unit axis last, flatten everything else to positions."""
    units = np.moveaxis(x, axis, -1).reshape(-1, x.shape[axis]).astype(np.float64)
    out = np.clip(units, lower, upper if upper is not None else np.inf)
    return {
        "positions": units.shape[0],
        "positive": (units > lower).sum(0),
        "max": units.max(0),
        "min": units.min(0),
        "abs_output_sum": np.abs(out).sum(0),
    }


def observe(batches: list[np.ndarray], axis: int, lower: float = 0.0, upper: float | None = None,
            valid: list[int | None] | None = None) -> UnitCounts:
    context = BatchContext()
    observer = TorchUnitObserver(axis, lower, upper, context)
    for index, batch in enumerate(batches):
        context.valid = valid[index] if valid else None
        observer(torch.from_numpy(batch))
    return observer.state()


@pytest.mark.parametrize(
    ("shape", "axis"),
    [((6, 5), 1), ((4, 3, 7, 5), 1), ((4, 9, 6), 2), ((4, 6, 9), 1), ((3, 2, 4, 5), 3)],
)
def test_counts_match_numpy(shape: tuple, axis: int) -> None:
    rng = np.random.default_rng(1)
    batches = [rng.standard_normal(shape).astype(np.float32) - 0.3 for _ in range(3)]
    state = observe(batches, axis)
    oracle = numpy_counts(np.concatenate(batches), axis, 0.0, None)
    assert state.positions == oracle["positions"]
    assert state.samples == 3 * shape[0]
    np.testing.assert_array_equal(state.positive, oracle["positive"])
    np.testing.assert_allclose(state.max, oracle["max"], rtol=0, atol=0)
    np.testing.assert_allclose(state.abs_output_sum, oracle["abs_output_sum"], rtol=1e-5)
    assert state.min is None


def test_bounded_min_and_negative_lower_bound() -> None:
    rng = np.random.default_rng(2)
    batches = [rng.standard_normal((5, 4)).astype(np.float32) * 3 for _ in range(2)]
    state = observe(batches, 1, lower=-1.0, upper=1.0)
    oracle = numpy_counts(np.concatenate(batches), 1, -1.0, 1.0)
    np.testing.assert_array_equal(state.positive, oracle["positive"])
    np.testing.assert_allclose(state.min, oracle["min"], rtol=0, atol=0)
    np.testing.assert_allclose(state.abs_output_sum, oracle["abs_output_sum"], rtol=1e-5)


def test_padded_rows_are_not_observed() -> None:
    rng = np.random.default_rng(3)
    real = rng.standard_normal((3, 4)).astype(np.float32)
    padded = np.concatenate([real, np.full((5, 4), 100.0, np.float32)])  # padding would fire
    state = observe([padded], 1, valid=[3])
    oracle = numpy_counts(real, 1, 0.0, None)
    assert state.samples == 3
    np.testing.assert_array_equal(state.positive, oracle["positive"])
    np.testing.assert_array_equal(state.max, oracle["max"])


def test_histogram_counts_every_value_of_small_batches() -> None:
    rng = np.random.default_rng(4)
    batch = (rng.standard_normal((8, 16)) * 10).astype(np.float32)
    assert batch.size <= HIST_SAMPLE
    state = observe([batch], 1)
    # bin i holds [edges[i-1], edges[i]): numpy's searchsorted(side="right") is the same rule
    expected = np.bincount(np.searchsorted(HIST_EDGES, batch.ravel(), side="right"),
                           minlength=len(HIST_EDGES) + 1)
    np.testing.assert_array_equal(state.hist, expected)
    assert state.hist.sum() == batch.size


def test_merge_equals_one_pass_over_the_union() -> None:
    rng = np.random.default_rng(5)
    parts = [rng.standard_normal((4, 3, 2, 2)).astype(np.float32) for _ in range(3)]
    whole = observe(parts, 1, upper=6.0)
    a, b, c = (observe([p], 1, upper=6.0) for p in parts)
    for merged in (a.merge(b).merge(c), a.merge(b.merge(c))):
        assert merged.positions == whole.positions and merged.samples == whole.samples
        np.testing.assert_array_equal(merged.positive, whole.positive)
        np.testing.assert_array_equal(merged.max, whole.max)
        np.testing.assert_array_equal(merged.min, whole.min)
        np.testing.assert_allclose(merged.abs_output_sum, whole.abs_output_sum, rtol=1e-6)
        np.testing.assert_array_equal(merged.hist, whole.hist)


def test_merge_refuses_mismatched_sites() -> None:
    with pytest.raises(ValueError):
        UnitCounts.empty(3, bounded=False).merge(UnitCounts.empty(4, bounded=False))


def test_unit_count_change_is_an_error() -> None:
    from reludoctor.errors import ObserverFailure

    observer = TorchUnitObserver(1, 0.0, None, BatchContext())
    observer(torch.zeros(2, 3))
    with pytest.raises(ObserverFailure):
        observer(torch.zeros(2, 4))
