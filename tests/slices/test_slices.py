"""Per-slice liveness and dead points (scan --slices, --dead-points) against an independent
oracle: the pre-activations captured by forward pre-hooks over one unbatched forward, reduced
per sample and slice with numpy (tests/slices/slices_oracle.py)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from torch import nn

from reludoctor import scan
from reludoctor.data.sampling import select
from reludoctor.errors import DataError, UsageError
from reludoctor.report.model import Report
from reludoctor.report.schema import validate
from tests.slices.slices_oracle import check_points, check_site, expected, preactivations

N = 61


def designed_mlp() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    """fc1's units 0-3 copy the inputs, unit 4 is dead (bias -100), unit 5 = x0 + x1; slice -3
    has x0 <= 0 (unit 0 specialised: alive on the other slices only); samples 5-9 are negative
    everywhere (dead points at the first site)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.ReLU(), nn.Linear(6, 5), nn.ReLU())
    with torch.no_grad():
        weight = torch.zeros(6, 4)
        weight[:4] = torch.eye(4)
        weight[5, :2] = 1.0
        model[0].weight.copy_(weight)
        model[0].bias.copy_(torch.tensor([0, 0, 0, 0, -100.0, 0]))
        model[2].bias[4] = -50.0  # dead at the second site too
    rng = np.random.default_rng(1)
    x = rng.normal(size=(N, 4)).astype(np.float32)
    labels = (rng.integers(0, 4, N) * 7 - 3).astype(np.int64)  # ids -3, 4, 11, 18
    x[labels == -3, 0] = -np.abs(x[labels == -3, 0])
    x[5:10] = -np.abs(x[5:10])
    return model.eval(), x, labels


def cnn() -> tuple[nn.Module, np.ndarray, np.ndarray]:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 5, 3), nn.ReLU())
    with torch.no_grad():
        model[0].bias[1] = -40.0  # dead
        model[2].bias.sub_(0.6)  # sparse: some slices without firing, some dead points
    rng = np.random.default_rng(3)
    x = rng.normal(size=(N, 3, 8, 8)).astype(np.float32)
    x[:6] *= 0.01  # near-zero images: dead points at the second site
    labels = rng.integers(0, 3, N).astype(np.int64)
    return model.eval(), x, labels


def check(report, model, x, labels, axes) -> None:  # noqa: ANN001
    captured = preactivations(model, torch.from_numpy(x))
    assert len(report.sites) == len(captured) == len(axes)
    for site, pre, axis in zip(report.sites, captured, axes):
        check_site(site, expected(pre, labels, axis))
    ids = sorted(set(labels.tolist()))
    assert list(report.slices.ids) == ids
    assert list(report.slices.samples) == [int((labels == i).sum()) for i in ids]


@pytest.mark.parametrize("method", ["export", "dispatch"])
@pytest.mark.parametrize("batch_size", [7, 64])
def test_mlp_slices_equal_the_oracle(method, batch_size):
    model, x, labels = designed_mlp()
    report = scan(model, x, slices=labels, batch_size=batch_size, method=method)
    check(report, model, x, labels, [1, 1])
    first = report.sites[0]
    assert 4 in first.dead_units and first.dead_points.count >= 5
    assert {u.unit: u.alive_on for u in first.slices.specialised_units}[0] == (4, 11, 18)


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_cnn_slices_equal_the_oracle(method):
    model, x, labels = cnn()
    report = scan(model, x, slices=labels, batch_size=8, method=method)
    check(report, model, x, labels, [1, 1])
    assert report.sites[1].dead_points.count >= 1


def test_device_route_on_the_cpu_equals_the_cpu_route():
    """where_masks sends the observers down the device route (the GPU's): same result."""
    from reludoctor.core.observers import BatchContext

    model, x, labels = designed_mlp()
    plain = scan(model, x, slices=labels, batch_size=7)
    original = BatchContext.__init__

    def device_like(self, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003
        original(self, *args, **kwargs)
        self.where_masks = True

    BatchContext.__init__ = device_like
    try:
        routed = scan(model, x, slices=labels, batch_size=7)
    finally:
        BatchContext.__init__ = original
    assert [s.slices for s in routed.sites] == [s.slices for s in plain.sites]


def test_dead_points_alone():
    model, x, labels = cnn()
    report = scan(model, x, dead_points=True, batch_size=8)
    assert report.slices is None and all(site.slices is None for site in report.sites)
    for site, pre in zip(report.sites, preactivations(model, torch.from_numpy(x))):
        check_points(site, expected(pre, labels, 1).dead_points)
    d = report.to_dict()
    assert "slices" not in d and all("slices" not in s and "dead_points" in s for s in d["sites"])


def test_a_default_scan_has_none_of_the_new_keys():
    model, x, _ = designed_mlp()
    d = scan(model, x).to_dict()
    assert "slices" not in d
    assert all("slices" not in s and "dead_points" not in s for s in d["sites"])


def test_slice_ids_follow_limit_and_sample():
    model, x, labels = designed_mlp()
    report = scan(model, x, slices=labels, limit=40, batch_size=9)
    check(report, model, x[:40], labels[:40], [1, 1])
    picked = select(N, sample=30, limit=50, seed=3).indices
    report = scan(model, x, slices=labels, sample=30, limit=50, seed=3, batch_size=9)
    check(report, model, x[picked], labels[picked], [1, 1])


def test_slice_ids_from_files(tmp_path):
    model, x, labels = designed_mlp()
    reference = scan(model, x, slices=labels, batch_size=16)
    np.save(tmp_path / "s.npy", labels)
    np.savez(tmp_path / "s.npz", ids=labels)
    torch.save(torch.from_numpy(labels), tmp_path / "s.pt")
    np.save(tmp_path / "f.npy", labels.astype(np.float64))  # floats holding integers
    for name in ("s.npy", "s.npz", "s.pt", "f.npy"):
        report = scan(model, x, slices=str(tmp_path / name), batch_size=16)
        assert [s.slices for s in report.sites] == [s.slices for s in reference.sites], name
        assert report.slices.source == str(tmp_path / name)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(N - 1, np.int64), "60 slice ids, but the scan reads 61"),
    (np.full(N, 0.5), "fractional"),
    (np.zeros((N, 2), np.int64), "shape"),
    (np.array([True] * N), "not integers"),
    (np.arange(2000), "2000 distinct slice ids"),
    (np.array(["a"] * N), "not integers"),
])
def test_bad_slices_are_refused(bad, message):
    model, x, _ = designed_mlp()
    data = np.concatenate([x] * 40)[:2000] if len(bad) == 2000 else x
    with pytest.raises(DataError, match=message):
        scan(model, data, slices=bad)


def test_pack_is_refused_with_slices():
    model, x, labels = designed_mlp()
    with pytest.raises(UsageError, match="--pack"):
        scan(model, x, slices=labels, pack=True)


@pytest.mark.parametrize("use_jsonschema", [True, False])
def test_reports_validate_and_round_trip(use_jsonschema):
    model, x, labels = designed_mlp()
    for report in (scan(model, x, slices=labels), scan(model, x, dead_points=True)):
        data = json.loads(report.to_json())
        validate(data, use_jsonschema=use_jsonschema)
        assert Report.from_dict(data) == report


def test_renderings_show_the_sections():
    from reludoctor.reporters import html, markdown, terminal

    model, x, labels = designed_mlp()
    report = scan(model, x, slices=labels)
    text = terminal.render(report)
    assert "dead on which data: 4 slices" in text and "special." in text and "dead points" in text
    md = markdown.render(report)
    assert "### Dead on which data: 4 slices" in md and "| **all sites** |" in md
    page = html.render(report)
    assert 'id="slices"' in page and 'id="plot-slices"' in page and "<svg" in page
    plain = scan(model, x)
    assert "dead on which data" not in terminal.render(plain)
    assert "Dead on which data" not in markdown.render(plain)
    assert 'id="plot-slices"' not in html.render(plain)
    points = scan(model, x, dead_points=True)
    assert "dead points" in terminal.render(points) and "### Dead points" in markdown.render(points)


def test_an_iterable_of_batches_takes_ids_in_order():
    model, x, labels = designed_mlp()
    batches = (x[i:i + 5] for i in range(0, N, 5))  # unknown length: the ids are read as they come
    report = scan(model, batches, slices=labels, batch_size=5)
    check(report, model, x, labels, [1, 1])
    with pytest.raises(DataError, match="slice ids, but the data has more samples"):
        scan(model, (x[i:i + 5] for i in range(0, N, 5)), slices=labels[:40], batch_size=5)


def test_a_default_scan_runs_no_per_sample_pass(monkeypatch):
    """Default scans pay nothing: the per-sample pass runs only for --slices / --dead-points."""
    from reludoctor.core.observers import TorchUnitObserver

    def refuse(*_args):  # noqa: ANN002, ANN202
        raise AssertionError("per-sample pass in a default scan")

    monkeypatch.setattr(TorchUnitObserver, "_per_sample", refuse)
    model, x, _ = designed_mlp()
    for method in ("export", "dispatch"):
        scan(model, x, method=method)


def test_an_activation_whose_rows_are_not_the_samples_is_a_usage_error():
    class Transposed(nn.Module):  # [T, N, F]: the first axis is not the batch
        def forward(self, x):  # noqa: ANN001, ANN202
            return torch.relu(x.reshape(x.shape[0], 3, 2).transpose(0, 1))

    x = np.random.default_rng(0).normal(size=(10, 6)).astype(np.float32)
    with pytest.raises(UsageError, match="cannot be told apart"):
        scan(Transposed(), x, dead_points=True, batch_size=4, method="dispatch")
    scan(Transposed(), x, batch_size=4, method="dispatch")  # a default scan still runs
