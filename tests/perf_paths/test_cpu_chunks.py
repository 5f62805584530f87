"""The CPU fast paths (_reduce_cpu: unit-major chunks; _reduce_rows: units on the last axis)
give exactly what the device route (_reduce) gives: chunk boundaries, units silent in a batch,
NaN fallback, half precision."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reludoctor.core.observers import BatchContext, TorchUnitObserver


def _state(batches, lower, upper, *, chunk_bytes, monkeypatch, device_route=False, axis=1):  # noqa: ANN001
    with monkeypatch.context() as patch:
        patch.setattr(TorchUnitObserver, "_CHUNK_BYTES", chunk_bytes)
        if device_route:
            patch.setattr(TorchUnitObserver, "_reduce_cpu", lambda self, x, axis, units: None)
        observer = TorchUnitObserver(axis, lower, upper, BatchContext())
        for batch in batches:
            observer(batch)
        return observer.state()


def _assert_same(fast, reference) -> None:  # noqa: ANN001
    np.testing.assert_array_equal(fast.positive, reference.positive)
    np.testing.assert_array_equal(fast.max, reference.max)
    if reference.min is not None:
        np.testing.assert_array_equal(fast.min, reference.min)
    np.testing.assert_allclose(fast.abs_output_sum, reference.abs_output_sum, rtol=1e-5)
    np.testing.assert_array_equal(fast.hist, reference.hist)
    assert fast.positions == reference.positions and fast.samples == reference.samples


@pytest.mark.parametrize(("lower", "upper"), [(0.0, None), (0.0, 6.0), (-1.0, 1.0)])
@pytest.mark.parametrize("shape", [(13, 5, 7, 3), (9, 6, 11), (7, 3, 2, 2, 2), (13, 5, 1, 1)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_small_chunks_match_the_device_route(monkeypatch, lower, upper, shape, dtype) -> None:
    generator = torch.Generator().manual_seed(7)
    batches = []
    for index in range(3):
        x = torch.randn(shape, generator=generator) * 2
        x[:, 1] = -torch.rand(x[:, 1].shape, generator=generator) - 0.5  # unit 1 never fires
        if index == 1:
            x[:, 2] = -3.0  # unit 2 silent in this batch only
        batches.append(x.to(dtype))
    for chunk_bytes in (1, 64, 1 << 20):  # one sample per chunk, a few, one chunk
        fast = _state(batches, lower, upper, chunk_bytes=chunk_bytes, monkeypatch=monkeypatch)
        reference = _state(batches, lower, upper, chunk_bytes=chunk_bytes,
                           monkeypatch=monkeypatch, device_route=True)
        _assert_same(fast, reference)
    if lower == 0.0:
        assert fast.positive[1] == 0 and fast.max[1] < 0


def test_nan_batch_falls_back_exactly(monkeypatch) -> None:
    x = torch.randn(6, 4, 5, 5, generator=torch.Generator().manual_seed(3))
    x[2, 1, 3, 3] = float("nan")
    fast = _state([x], 0.0, None, chunk_bytes=64, monkeypatch=monkeypatch)
    reference = _state([x], 0.0, None, chunk_bytes=64, monkeypatch=monkeypatch, device_route=True)
    np.testing.assert_array_equal(fast.positive, reference.positive)
    np.testing.assert_array_equal(fast.max, reference.max)


@pytest.mark.parametrize(("lower", "upper"), [(0.0, None), (0.0, 6.0), (-1.0, 1.0)])
@pytest.mark.parametrize("shape", [(13, 5), (9, 6, 11), (4, 3, 2, 7)])
@pytest.mark.parametrize("layout", ["contiguous", "transposed"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_units_on_the_last_axis_match_the_device_route(monkeypatch, lower, upper, shape, layout, dtype):
    """Units on the last axis ([N, F], [N, T, F]) take _reduce_rows when contiguous, the
    unit-major copy when not: both exactly the device route, and a numpy oracle."""
    generator = torch.Generator().manual_seed(11)
    batches = []
    for index in range(3):
        x = torch.randn(shape, generator=generator) * 2
        x[..., 1] = -torch.rand(x[..., 1].shape, generator=generator) - 0.5  # unit 1 never fires
        if index == 1:
            x[..., 2] = -3.0  # unit 2 silent in this batch only
        if layout == "transposed":  # the same values, the last axis not contiguous
            x = x.transpose(-1, -2).contiguous().transpose(-1, -2) if x.ndim > 2 else x.t().contiguous().t()
        batches.append(x.to(dtype))
    fast = _state(batches, lower, upper, chunk_bytes=64, monkeypatch=monkeypatch, axis=-1)
    reference = _state(batches, lower, upper, chunk_bytes=64, monkeypatch=monkeypatch,
                       device_route=True, axis=-1)
    _assert_same(fast, reference)
    values = np.concatenate([b.float().numpy().reshape(-1, shape[-1]) for b in batches])
    np.testing.assert_array_equal(fast.positive, (values > lower).sum(0))
    np.testing.assert_array_equal(fast.max, values.max(0))
    if lower == 0.0:
        assert fast.positive[1] == 0 and fast.max[1] < 0


def test_nan_on_the_last_axis_falls_back_exactly(monkeypatch) -> None:
    x = torch.randn(6, 5, 4, generator=torch.Generator().manual_seed(3))
    x[2, 3, 1] = float("nan")
    fast = _state([x], 0.0, None, chunk_bytes=64, monkeypatch=monkeypatch, axis=-1)
    reference = _state([x], 0.0, None, chunk_bytes=64, monkeypatch=monkeypatch,
                       device_route=True, axis=-1)
    np.testing.assert_array_equal(fast.positive, reference.positive)
    np.testing.assert_array_equal(fast.max, reference.max)
