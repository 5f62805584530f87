"""The CUDA route reads nothing back per batch. Checked on the CPU: the observer's device route
(the one a CUDA activation takes; the CPU fast path is switched off) and the runner's loop run
with every host read-back of a tensor made to raise."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest
import torch

from reludoctor.backends.torch.export import instrument_graph_module
from reludoctor.backends.torch.scan import export_for_scan as _export
from reludoctor.core.batches import run
from reludoctor.core.observers import BatchContext, TorchUnitObserver
from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration

READ_BACKS = ("item", "tolist", "numpy", "cpu", "__bool__", "__int__", "__float__", "__index__")


@contextlib.contextmanager
def no_read_back(monkeypatch: pytest.MonkeyPatch):
    """Any host read-back of a tensor value (a sync on CUDA) raises inside the block."""
    calls: list[str] = []

    def forbidden(name: str):
        def method(self, *args, **kwargs):  # noqa: ANN001, ANN202
            calls.append(name)
            raise AssertionError(f"Tensor.{name}() read a value back to the host")
        return method

    with monkeypatch.context() as patch:
        for name in READ_BACKS:
            patch.setattr(torch.Tensor, name, forbidden(name))
        patch.setattr(torch, "nonzero", forbidden("nonzero"))
        patch.setattr(TorchUnitObserver, "_reduce_cpu", lambda self, x, axis, units: None)
        yield calls


@pytest.mark.parametrize(("lower", "upper"), [(0.0, None), (0.0, 6.0), (-1.0, 1.0)])
@pytest.mark.parametrize("shape", [(8, 4, 5, 5), (8, 6), (8, 7, 4)])
def test_observer_device_route_has_no_read_back(monkeypatch, lower, upper, shape) -> None:
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    context = BatchContext()
    observer = TorchUnitObserver(1, lower, upper, context)
    with no_read_back(monkeypatch) as calls:
        observer(x)
        context.valid = 5  # a padded remainder batch
        observer(x)
        context.valid = None
    assert calls == []
    counts = observer.state()  # the one read-back, after the loop
    reference = TorchUnitObserver(1, lower, upper, BatchContext())
    reference(x)
    reference(x[:5])
    expected = reference.state()  # the CPU fast path
    np.testing.assert_array_equal(counts.positive, expected.positive)
    np.testing.assert_array_equal(counts.max, expected.max)
    np.testing.assert_array_equal(counts.hist, expected.hist)
    assert counts.samples == expected.samples == 13


def test_runner_loop_has_no_read_back(monkeypatch) -> None:
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.ReLU(), torch.nn.Flatten(),
                                torch.nn.Linear(4 * 6 * 6, 5), torch.nn.ReLU6()).eval()
    data = np.random.default_rng(0).standard_normal((37, 3, 8, 8)).astype(np.float32)
    calibration = load_calibration(data, [InputSpec("x", None, None)])
    graph_module = _export(model, calibration, torch.device("cpu")).module()
    context = BatchContext()
    sites = instrument_graph_module(graph_module, context)
    with no_read_back(monkeypatch) as calls:
        seen = run(graph_module, calibration, batch_size=8, device=torch.device("cpu"),
                   batch=context, fixed_batch=8)
    assert calls == [] and seen == 37
    assert [observer.state().samples for _, observer in sites] == [37, 37]


def test_dispatch_route_has_no_read_back(monkeypatch) -> None:
    from reludoctor.backends.torch.dispatch import DispatchInstrument

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 5), torch.nn.ReLU(), torch.nn.Linear(5, 4),
                                torch.nn.Hardtanh(0.0, 1.0)).eval()
    data = np.random.default_rng(0).standard_normal((21, 6)).astype(np.float32)
    calibration = load_calibration(data, [InputSpec("x", None, None)])
    context = BatchContext()
    instrument = DispatchInstrument(model, context)
    with instrument.active(), no_read_back(monkeypatch) as calls:
        seen = run(instrument.forward, calibration, batch_size=8, device=torch.device("cpu"),
                   batch=context, before_forward=instrument.start_forward)
    assert calls == [] and seen == 21
    assert [observer.state().samples for _, observer in instrument.sites()] == [21, 21]
