"""--sample/--seed/--limit: which samples are read, for every source, and how they combine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from datasource_kit import torch, write_image

from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration
from reludoctor.data.sampling import select
from reludoctor.errors import UsageError

SPEC = InputSpec("x", (None, 2, 3), "float32")


def _rows(calibration, batch_size: int = 7) -> np.ndarray:
    return np.concatenate([np.asarray(b[0]) for b in calibration.batches(batch_size)])


def test_selection_properties() -> None:
    chosen = select(1000, sample=100, seed=0)
    indices = chosen.indices
    assert chosen.count == 100 and indices.shape == (100,) and indices.dtype == np.int64
    assert len(set(indices.tolist())) == 100  # without replacement
    assert np.all(np.diff(indices) > 0)  # read in ascending order
    assert indices.min() >= 0 and indices.max() < 1000
    np.testing.assert_array_equal(select(1000, sample=100, seed=0).indices, indices)  # reproducible
    assert not np.array_equal(select(1000, sample=100, seed=1).indices, indices)  # seed matters
    assert select(1000, sample=100, seed=0).describe(0) == "random sample of 100 of 1000, seed 0"


def test_selection_is_roughly_uniform() -> None:
    # Every index is equally likely: over many seeds each decile of [0, 1000) gets ~10%.
    counts = np.zeros(10)
    for seed in range(200):
        counts += np.bincount(select(1000, sample=50, seed=seed).indices // 100, minlength=10)
    share = counts / counts.sum()
    assert np.all(np.abs(share - 0.1) < 0.02), share


def test_limit_and_sample_combine() -> None:
    limited = select(1000, limit=300)
    assert limited.indices is None and limited.count == 300  # --limit alone: the first N
    both = select(1000, limit=300, sample=40, seed=3)
    assert both.count == 40 and both.indices.max() < 300  # drawn from the first --limit
    assert both.describe(3) == "random sample of 40 of 300, seed 3"
    everything = select(50, sample=50)
    assert everything.indices is None and everything.note is None
    larger = select(50, limit=40, sample=60)
    assert larger.indices is None and larger.count == 40 and "using all 40" in larger.note
    for bad in ({"sample": 0}, {"limit": 0}, {"sample": 3, "seed": -1}):
        with pytest.raises(UsageError):
            select(10, **bad)


def _sources(tmp_path: Path, data: np.ndarray) -> dict:
    np.save(tmp_path / "x.npy", data)
    np.savez(tmp_path / "x.npz", x=data)
    torch.save(torch.from_numpy(data), tmp_path / "x.pt")
    return {"npy": tmp_path / "x.npy", "npz": tmp_path / "x.npz", "pt": tmp_path / "x.pt",
            "array": data, "tensor": torch.from_numpy(data.copy())}


@pytest.mark.parametrize("kind", ["npy", "npz", "pt", "array", "tensor"])
def test_every_array_source_reads_the_subset_in_order(tmp_path: Path, kind: str) -> None:
    data = np.arange(50 * 6, dtype=np.float32).reshape(50, 2, 3)
    source = _sources(tmp_path, data)[kind]
    calibration = load_calibration(source, [SPEC], sample=12, seed=5)
    indices = calibration._indices
    assert calibration.samples == 12 and np.all(np.diff(indices) > 0)
    got = _rows(calibration, 5)
    np.testing.assert_array_equal(got, data[indices])  # the rows at those indices, in order
    assert "random sample of 12 of 50, seed 5" in calibration.source
    again = load_calibration(source, [SPEC], sample=12, seed=5)
    np.testing.assert_array_equal(_rows(again, 12), got)
    first = load_calibration(source, [SPEC], limit=12)  # --limit keeps meaning the first N
    np.testing.assert_array_equal(_rows(first, 5), data[:12])


def test_npy_stays_memory_mapped_when_sampled(tmp_path: Path) -> None:
    data = np.random.default_rng(0).standard_normal((40, 2, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", data)
    calibration = load_calibration(tmp_path / "x.npy", [SPEC], sample=10, seed=2)
    assert isinstance(calibration._arrays[0], np.memmap)
    batch = next(calibration.batches(4))[0]
    assert not isinstance(batch, np.memmap) and batch.flags.owndata  # a private copy
    batch += 1  # never reaches the file
    np.testing.assert_array_equal(np.load(tmp_path / "x.npy"), data)


def test_image_folders_are_sampled_by_file(tmp_path: Path) -> None:
    for index in range(30):
        write_image(tmp_path / f"{index:02d}.png", np.full((2, 2), index * 8, dtype=np.uint8))
    spec = InputSpec("x", (None, 1, 2, 2), "float32")
    calibration = load_calibration(tmp_path, [spec], sample=7, seed=11, limit=20)
    indices = calibration._indices
    assert calibration.samples == 7 and indices.max() < 20 and np.all(np.diff(indices) > 0)
    values = _rows(calibration, 3)[:, 0, 0, 0]
    np.testing.assert_array_equal(values, (indices * 8).astype(np.float32) / np.float32(255))
    assert "random sample of 7 of 20, seed 11" in calibration.source


def test_sampling_refused_where_it_cannot_apply() -> None:
    with pytest.raises(UsageError, match="--sample picks from calibration data"):
        load_calibration(None, [InputSpec("x", (None, 4), "float32")], sample=3)
    with pytest.raises(UsageError, match="known length"):
        load_calibration(iter([np.zeros((2, 4), np.float32)]), [SPEC], sample=1)


def test_seed_seeds_synthetic_data() -> None:
    spec = InputSpec("x", (None, 4), "float32")
    a = _rows(load_calibration(None, [spec], limit=8, seed=0))
    b = _rows(load_calibration(None, [spec], limit=8, seed=1))
    assert a.shape == (8, 4) and not np.array_equal(a, b)
    np.testing.assert_array_equal(a, _rows(load_calibration(None, [spec], limit=8)))  # default 0


@pytest.mark.parametrize("kind", ["npy", "pt"])
def test_non_finite_values_are_named_by_their_index_in_the_data(tmp_path: Path, kind: str) -> None:
    from reludoctor.errors import DataError

    data = np.zeros((40, 2, 3), dtype=np.float32)
    data[30:] = np.nan
    source = _sources(tmp_path, data)[kind]
    calibration = load_calibration(source, [SPEC], sample=20, seed=0)
    first_bad = min(int(i) for i in calibration._indices if i >= 30)
    with pytest.raises(DataError, match=rf"NaN or infinite values in sample {first_bad}$"):
        _rows(calibration, 8)


def test_every_input_of_a_multi_input_source_gets_the_same_samples(tmp_path: Path) -> None:
    a = np.arange(30, dtype=np.float32)[:, None].repeat(4, axis=1)
    b = np.arange(30, dtype=np.int64) * 10
    np.savez(tmp_path / "two.npz", a=a, b=b)
    specs = [InputSpec("a", (None, 4), "float32"), InputSpec("b", (None,), "int64")]
    calibration = load_calibration(tmp_path / "two.npz", specs, sample=9, seed=7)
    batches = list(calibration.batches(4))
    got_a = np.concatenate([x for x, _ in batches])
    got_b = np.concatenate([y for _, y in batches])
    np.testing.assert_array_equal(got_a[:, 0].astype(np.int64) * 10, got_b)
    np.testing.assert_array_equal(got_b // 10, calibration._indices)
