"""The pieces of a multi-process scan, in one process: sharding, the all-reduce of UnitCounts,
the site plan, and how a process learns its rank. No process group is started here."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from reludoctor.core import distributed
from reludoctor.core.counts import HIST_EDGES, Layout, UnitCounts
from reludoctor.core.sites import SiteSpec
from reludoctor.data import shard as sharding
from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration
from reludoctor.errors import UsageError

SPECS = [InputSpec("x", (None, 3), "float32")]


def _rows(batches) -> list[np.ndarray]:  # noqa: ANN001
    return [np.asarray(b[0]) for b in batches]


@pytest.mark.parametrize("total, batch, size", [(357, 25, 2), (357, 32, 3), (20, 32, 2), (64, 8, 4),
                                                (1, 1, 2), (7, 3, 5)])
def test_shard_batches_deal_out_whole_batches(total, batch, size):
    """Batch k of one process goes to rank k mod size: disjoint, complete, whole batches."""
    shards = [sharding.shard_batches(total, batch, rank, size) for rank in range(size)]
    joined = np.concatenate(shards)
    assert sorted(joined.tolist()) == list(range(total))  # disjoint and complete
    for rank, rows in enumerate(shards):
        assert np.all(np.diff(rows) > 0)
        for index, start in enumerate(range(0, len(rows), batch)):  # re-batched: global batches
            chunk = rows[start:start + batch]
            k = chunk[0] // batch
            assert k % size == rank
            assert chunk.tolist() == list(range(k * batch, min((k + 1) * batch, total)))


@pytest.mark.parametrize("options", [{}, {"limit": 50}, {"sample": 40, "seed": 3}])
def test_sharded_calibration_reads_exactly_the_single_process_batches(options):
    data = np.arange(3 * 61, dtype=np.float32).reshape(61, 3)
    single = _rows(load_calibration(data, SPECS, **options).batches(8))
    for size in (2, 3):
        per_rank = [_rows(sharding.shard(load_calibration(data, SPECS, **options), 8, rank, size)
                          .batches(8)) for rank in range(size)]
        dealt = [per_rank[k % size][k // size] for k in range(len(single))]
        assert sum(len(r) for r in per_rank) == len(single)
        for mine, theirs in zip(dealt, single):
            np.testing.assert_array_equal(mine, theirs)
    shard = sharding.shard(load_calibration(data, SPECS, **options), 8, 1, 2)
    assert shard.samples == sum(len(b) for b in _rows(shard.batches(8)))
    whole = load_calibration(data, SPECS, **options)
    np.testing.assert_array_equal(shard.example(2)[0], whole.example(2)[0])  # the set's first rows
    assert shard.source == whole.source and shard.synthetic == whole.synthetic


def test_an_iterable_of_batches_is_dealt_out_by_batch():
    data = np.arange(3 * 40, dtype=np.float32).reshape(40, 3)

    def source():  # noqa: ANN202 - chunks of 7 (each one batch of at most 8)
        return (data[i:i + 7] for i in range(0, 40, 7))

    single = _rows(load_calibration(source(), SPECS).batches(8))
    per_rank = [_rows(sharding.shard(load_calibration(source(), SPECS), 8, rank, 2).batches(8))
                for rank in range(2)]
    assert sharding.shard(load_calibration(source(), SPECS), 8, 0, 2).samples is None
    assert len(single) == 6 and len(per_rank[0]) == len(per_rank[1]) == 3  # chunks of <= 7 rows
    dealt = [per_rank[k % 2][k // 2] for k in range(len(single))]
    for mine, theirs in zip(dealt, single):
        np.testing.assert_array_equal(mine, theirs)


def _random_counts(rng: np.random.Generator, units: int, bounded: bool) -> UnitCounts:
    positions = int(rng.integers(1, 50))
    return UnitCounts(
        positions=positions, samples=positions // 2,
        positive=rng.integers(0, positions + 1, units).astype(np.int64),
        max=rng.normal(size=units), min=rng.normal(size=units) if bounded else None,
        abs_output_sum=rng.random(units) * 10,
        hist=rng.integers(0, 100, len(HIST_EDGES) + 1).astype(np.int64))


def _spec(name: str, upper: float | None = None) -> SiteSpec:
    return SiteSpec(name, "relu6" if upper else "relu", "", 0.0, upper, 1, False)


def test_reduce_counts_equals_merging_the_ranks_counts():
    """Three simulated ranks, three collectives: the same as UnitCounts.merge, also for a site
    one rank never executed and a bounded site (its minimum travels negated in the max)."""
    rng = np.random.default_rng(0)
    plan = [distributed.PlannedSite(_spec("a"), Layout(4), (4,)),
            distributed.PlannedSite(_spec("b", 6.0), Layout(3, bounded=True), (3, 2)),
            distributed.PlannedSite(_spec("c"), Layout(2), (2,)),
            distributed.PlannedSite(_spec("never"), None, None)]
    ranks = [{"a": _random_counts(rng, 4, False), "b": _random_counts(rng, 3, True),
              "c": _random_counts(rng, 2, False)} for _ in range(3)]
    del ranks[1]["c"]  # rank 1 never executed site c
    samples = [10, 7, 3]
    buffers: list[list] = [[] for _ in ranks]
    calls = []

    def recording(rank: int):  # noqa: ANN202
        def all_reduce(buffer: np.ndarray, op: str) -> np.ndarray:
            buffers[rank].append(buffer)
            calls.append(op)
            return buffer
        return all_reduce

    for rank, mine in enumerate(ranks):
        distributed.reduce_counts(plan, mine, samples[rank], recording(rank))
    assert calls == ["sum", "sum", "max"] * 3  # three collectives per rank, whatever the sites
    reduced = []
    for index, op in enumerate(["sum", "sum", "max"]):
        stacked = np.stack([buffers[rank][index] for rank in range(3)])
        reduced.append(stacked.sum(0) if op == "sum" else stacked.max(0))
    replay = iter(reduced)
    total, merged = distributed.reduce_counts(plan, ranks[0], samples[0], lambda b, op: next(replay))
    assert total == 20
    assert merged[3] is None
    for site, counts in zip("abc", merged):
        parts = [r[site] for r in ranks if site in r]
        want = functools.reduce(UnitCounts.merge, parts)
        assert counts.positions == want.positions and counts.samples == want.samples
        np.testing.assert_array_equal(counts.positive, want.positive)
        np.testing.assert_array_equal(counts.hist, want.hist)
        np.testing.assert_array_equal(counts.max, want.max)
        if want.min is None:
            assert counts.min is None
        else:
            np.testing.assert_array_equal(counts.min, want.min)
        np.testing.assert_allclose(counts.abs_output_sum, want.abs_output_sum, rtol=1e-12)


def test_the_plan_keeps_rank_0s_order_and_places_late_sites_after_their_predecessor():
    a, b, c, d = (_spec(n) for n in "abcd")
    rank0 = [(a, True, Layout(4), (4,)), (c, True, Layout(2), (2,)), (d, False, None, None)]
    rank1 = [(a, True, Layout(4), (4,)), (b, True, Layout(3), (3,)), (c, True, Layout(2), (2,))]
    plan = distributed._plan([rank0, rank1])
    assert [p.spec.name for p in plan] == ["a", "b", "c", "d"]
    assert [p.units for p in plan] == [4, 3, 2, None]
    with pytest.raises(UsageError, match="units on one rank"):
        distributed._plan([rank0, [(a, True, Layout(5), (5,))]])


def test_rank_and_writer_come_from_the_environment(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.rank() == 0 and distributed.is_writer()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert distributed.rank() == 1 and not distributed.is_writer()
    monkeypatch.setenv("WORLD_SIZE", "1")  # a single process, whatever RANK says
    assert distributed.is_writer()


def test_join_stays_out_of_a_single_process_and_refuses_a_partial_environment(monkeypatch):
    import torch

    for name in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    assert distributed.join(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert distributed.join(torch.device("cpu")) is None
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(UsageError, match="RANK, MASTER_ADDR, MASTER_PORT not set"):
        distributed.join(torch.device("cpu"))


def test_reludoctor_distributed_0_keeps_a_process_alone(monkeypatch):
    """A script that scans on one rank only opts out: no process group is joined."""
    import torch

    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RELUDOCTOR_DISTRIBUTED", "0")
    assert distributed.join(torch.device("cpu")) is None
