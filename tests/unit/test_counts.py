"""UnitCounts' declared fields against a numpy oracle: merge, pack/unpack, the report round trip.

The data are multiples of 1/8, so every float sum is exact whatever its order and every
comparison below is exact.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from reludoctor.core import counts
from reludoctor.core.counts import BINS, CHANNELS, HIST_EDGES, Spec, UnitCounts
from reludoctor.core.stats import site_stats, unit_counts


def oracle(x: np.ndarray, lower: float, upper: float | None) -> UnitCounts:
    """The state of x ([samples, positions, units]) by plain numpy, every value in the histogram."""
    units = x.reshape(-1, x.shape[-1])
    return UnitCounts(
        positions=units.shape[0],
        samples=x.shape[0],
        positive=(units > lower).sum(0).astype(np.int64),
        max=units.max(0),
        min=units.min(0) if upper is not None else None,
        abs_output_sum=np.abs(np.clip(units, lower, upper)).sum(0),
        hist=np.bincount(np.searchsorted(HIST_EDGES, units.ravel(), side="right"),
                         minlength=BINS).astype(np.int64),
    )


def data(rng: np.random.Generator, samples: int, units: int = 5) -> np.ndarray:
    return rng.integers(-48, 48, size=(samples, 3, units)).astype(np.float64) / 8


def assert_same(got: UnitCounts, want: UnitCounts) -> None:
    for name, spec in UnitCounts.fields():
        mine, theirs = getattr(got, name), getattr(want, name)
        if theirs is None:
            assert mine is None, name
        elif spec.extent == "site":
            assert type(mine) is int and mine == theirs, name
        else:
            assert mine.dtype == np.dtype(spec.dtype), name
            np.testing.assert_array_equal(mine, theirs, err_msg=name)


BOUNDS = [(0.0, None), (0.0, 6.0), (-1.0, 1.0)]  # relu, relu6, hardtanh


@pytest.mark.parametrize(("lower", "upper"), BOUNDS)
def test_merging_split_data_gives_the_counts_of_the_whole(lower, upper):
    x = data(np.random.default_rng(0), 9)
    whole = oracle(x, lower, upper)
    for cut in (1, 4, 8):
        assert_same(oracle(x[:cut], lower, upper).merge(oracle(x[cut:], lower, upper)), whole)
    empty = UnitCounts.empty(5, bounded=upper is not None)
    assert_same(empty.merge(whole), whole)  # the empty state is the identity
    assert_same(whole.merge(empty), whole)


@pytest.mark.parametrize(("lower", "upper"), BOUNDS)
def test_merge_is_associative(lower, upper):
    x = data(np.random.default_rng(1), 12)
    a, b, c = (oracle(part, lower, upper) for part in (x[:3], x[3:7], x[7:]))
    assert_same(a.merge(b).merge(c), a.merge(b.merge(c)))
    assert_same(a.merge(b).merge(c), oracle(x, lower, upper))


def test_pack_unpack_round_trips():
    rng = np.random.default_rng(2)
    states = [oracle(data(rng, 4, units), 0.0, upper)
              for units, upper in ((5, None), (3, 6.0), (1, None), (2, 1.0))]
    buffers = counts.pack(states)
    assert list(buffers) == list(CHANNELS)
    for (_, dtype), buffer in buffers.items():
        assert buffer.dtype == np.dtype(dtype) and buffer.ndim == 1
    back = counts.unpack(buffers, [(s.units, s.bounded) for s in states])
    for got, want in zip(back, states):
        assert_same(got, want)
    # The minimum travels negated in the max channel, so one max all-reduce combines both.
    assert -states[1].min[0] in buffers[("max", "float64")]


def test_pack_of_no_states_is_empty_buffers():
    buffers = counts.pack([])
    assert all(buffer.size == 0 for buffer in buffers.values())
    assert counts.unpack(buffers, []) == []


@pytest.mark.parametrize(("lower", "upper"), BOUNDS)
def test_the_report_round_trip_keeps_every_field(lower, upper):
    state = oracle(data(np.random.default_rng(3), 6), lower, upper)
    site = site_stats(name="s", op="relu", module="m", unit_axis=1, shape=(3, 5), lower=lower,
                      upper=upper, counts=state, near_dead=0.01, dormant_tau=0.1)
    assert_same(unit_counts(site), state)


def test_every_field_declares_its_reduction():
    """A new statistic cannot be added without saying how shards of it combine."""
    declared = UnitCounts.fields()
    assert [name for name, _ in declared] == [f.name for f in dataclasses.fields(UnitCounts)]
    for field in dataclasses.fields(UnitCounts):
        spec = field.metadata.get("spec")
        assert isinstance(spec, Spec), field.name
        assert spec.reduce in ("sum", "max", "min"), field.name
        assert spec.extent in ("site", "unit", "bins", "slice", "slice_unit"), field.name
        assert spec.dtype in ("int64", "float64"), field.name
        assert spec.channel in CHANNELS, field.name


def test_merge_refuses_a_bounded_and_an_unbounded_site():
    with pytest.raises(ValueError):
        UnitCounts.empty(3, bounded=True).merge(UnitCounts.empty(3, bounded=False))

