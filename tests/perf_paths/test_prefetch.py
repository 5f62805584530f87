"""The prefetching loader: order, errors, thread lifetime, remainder batches (CPU-side checks of
the code the CUDA path runs)."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import torch

from reludoctor.core.batches import Prefetcher, host_tensor, run, to_device
from reludoctor.core.observers import BatchContext
from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration
from reludoctor.errors import DataError


def _prefetch_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "reludoctor-prefetch"]


def _wait_no_threads(timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while _prefetch_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not _prefetch_threads(), "the prefetch thread outlived its loop"


@pytest.mark.parametrize("depth", [0, 1, 2, 5])
def test_order_preserved(depth: int) -> None:
    with Prefetcher(range(100), lambda i: i * 2, depth) as items:
        assert list(items) == [i * 2 for i in range(100)]
    _wait_no_threads()


def test_runs_ahead_in_another_thread() -> None:
    producers = []

    def prepare(item: int) -> int:
        producers.append(threading.current_thread().name)
        return item

    with Prefetcher(range(4), prepare, 2) as items:
        assert list(items) == [0, 1, 2, 3]
    assert set(producers) == {"reludoctor-prefetch"}


@pytest.mark.parametrize("where", ["source", "prepare"])
@pytest.mark.parametrize("depth", [0, 2])
def test_exception_propagates_after_the_items_before_it(where: str, depth: int) -> None:
    def source():
        for i in range(10):
            if where == "source" and i == 3:
                raise DataError("bad batch 3", "fix it")
            yield i

    def prepare(item: int) -> int:
        if where == "prepare" and item == 3:
            raise ValueError("cannot prepare 3")
        return item

    got = []
    with pytest.raises((DataError, ValueError)) as info:
        with Prefetcher(source(), prepare, depth) as items:
            for item in items:
                got.append(item)
    assert got == [0, 1, 2]
    assert ("bad batch 3" if where == "source" else "cannot prepare 3") in str(info.value)
    _wait_no_threads()


def test_thread_exits_when_the_consumer_stops_early() -> None:
    closed = threading.Event()

    def endless():
        try:
            i = 0
            while True:
                yield i
                i += 1
        finally:
            closed.set()

    with Prefetcher(endless(), depth=2) as items:
        for item in items:
            if item == 5:
                break
    _wait_no_threads()
    assert closed.wait(5), "the source was not closed"


def test_thread_exits_when_the_consumer_raises() -> None:
    with pytest.raises(RuntimeError, match="model failed"):
        with Prefetcher(range(1000), depth=2) as items:
            for item in items:
                if item == 2:
                    raise RuntimeError("model failed")
    _wait_no_threads()


def test_thread_exits_after_a_full_run() -> None:
    with Prefetcher(range(3), depth=2) as items:
        list(items)
    _wait_no_threads()


def test_slow_consumer_bounded_queue() -> None:
    prepared = []

    def prepare(item: int) -> int:
        prepared.append(item)
        return item

    with Prefetcher(range(50), prepare, 2) as items:
        iterator = iter(items)
        assert next(iterator) == 0
        time.sleep(0.2)
        # at most: the one delivered, `depth` queued, one prepared and waiting for room
        assert len(prepared) <= 1 + 2 + 1
        assert list(iterator) == list(range(1, 50))
    _wait_no_threads()


def _identity_forward(seen_rows: list, seen_values: list):
    def forward(x: torch.Tensor) -> torch.Tensor:
        seen_rows.append(int(x.shape[0]))
        seen_values.append(x.clone())
        return x
    return forward


@pytest.mark.parametrize("prefetch", [0, 2])
def test_runner_remainder_batches_in_order(prefetch: int) -> None:
    data = np.arange(50 * 3, dtype=np.float32).reshape(50, 3)
    calibration = load_calibration(data, [InputSpec("x", None, None)])
    rows: list = []
    values: list = []
    seen = run(_identity_forward(rows, values), calibration, batch_size=16,
               device=torch.device("cpu"), batch=BatchContext(), prefetch=prefetch)
    assert seen == 50
    assert rows == [16, 16, 16, 2]
    np.testing.assert_array_equal(torch.cat(values).numpy(), data)
    _wait_no_threads()


def test_runner_pads_the_remainder_of_a_fixed_batch() -> None:
    data = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    calibration = load_calibration(data, [InputSpec("x", None, None)])
    context = BatchContext()
    valid = []
    rows: list = []
    values: list = []
    forward = _identity_forward(rows, values)

    def recording(x: torch.Tensor) -> torch.Tensor:
        valid.append(context.valid)
        return forward(x)

    seen = run(recording, calibration, batch_size=4, device=torch.device("cpu"), batch=context,
               fixed_batch=4)
    assert seen == 10
    assert rows == [4, 4, 4] and valid == [None, None, 2]
    np.testing.assert_array_equal(values[-1][2:].numpy(), np.repeat(data[-1:], 2, 0))
    assert context.valid is None


def test_runner_iterable_source_and_data_error_position() -> None:
    good = np.ones((8, 3), np.float32)
    bad = good.copy()
    bad[1, 0] = np.nan
    calibration = load_calibration([good, good, bad, good], [InputSpec("x", None, None)])
    rows: list = []
    with pytest.raises(DataError, match="NaN"):
        run(_identity_forward(rows, []), calibration, batch_size=8, device=torch.device("cpu"),
            batch=BatchContext())
    assert rows == [8, 8]  # the batches before the bad one ran
    _wait_no_threads()


def test_model_error_stops_the_thread() -> None:
    data = np.zeros((64, 3), np.float32)
    calibration = load_calibration(data, [InputSpec("x", None, None)])

    def failing(x: torch.Tensor) -> None:
        raise RuntimeError("shape mismatch")

    with pytest.raises(DataError, match="samples 0-7"):
        run(failing, calibration, batch_size=8, device=torch.device("cpu"), batch=BatchContext())
    _wait_no_threads()


def test_host_tensor_and_device_copy_on_cpu() -> None:
    array = np.arange(6, dtype=np.float32).reshape(2, 3)
    tensor = host_tensor(array, torch.device("cpu"))
    assert not tensor.is_pinned()  # pinned memory only for a CUDA target
    assert to_device(tensor, torch.device("cpu")) is tensor


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_host_tensor_is_pinned_for_cuda() -> None:
    tensor = host_tensor(np.ones((2, 3), np.float32), torch.device("cuda"))
    assert tensor.is_pinned()
    moved = to_device(tensor, torch.device("cuda"))
    assert moved.device.type == "cuda"
    assert torch.equal(moved.cpu(), tensor)


def test_batch_loop_numpy_path_pads_counts_and_reports_progress() -> None:
    """The loop without torch conversion (what an ONNX backend feeds): numpy in, numpy out."""
    from reludoctor.core.batches import NUMPY, BatchLoop, padded_arrays

    data = np.arange(10 * 2, dtype=np.float32).reshape(10, 2)
    calibration = load_calibration(data, [InputSpec("x", None, None)])
    calls: list = []
    with BatchLoop(calibration, 3, fixed_batch=4, transfer=NUMPY, progress=lambda *a: calls.append(a)) as steps:
        got = [(step.start, step.rows, step.valid, step.inputs[0]) for step in steps]
    assert steps.seen == 10 and calls == [(4, 10), (8, 10), (10, 10)]
    assert [g[:3] for g in got] == [(0, 4, None), (4, 4, None), (8, 2, 2)]
    assert all(isinstance(g[3], np.ndarray) and g[3].shape == (4, 2) for g in got)
    np.testing.assert_array_equal(got[-1][3][2:], np.repeat(data[-1:], 2, 0))
    padded = list(padded_arrays(calibration, 3, 4))
    np.testing.assert_array_equal(padded[-1][0], got[-1][3])
    _wait_no_threads()


def test_batch_loop_guard_names_the_samples() -> None:
    from reludoctor.core.batches import BatchLoop

    calibration = load_calibration(np.zeros((12, 3), np.float32), [InputSpec("x", None, None)])
    with pytest.raises(DataError, match="samples 5-9: ValueError: bad"):
        with BatchLoop(calibration, 5) as steps:
            for step in steps:
                with step.guard():
                    if step.start == 5:
                        raise ValueError("bad\nmore")
    _wait_no_threads()
