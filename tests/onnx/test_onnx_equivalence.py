"""Same model, two backends: the PyTorch module in memory vs its ONNX export (both exporters).

Identical dead sets site by site, the same number of sites in the same order, the same ops and
unit axes. BatchNorm is folded into Conv by the export, so a unit whose max pre-activation lies
within float rounding of 0 could land on either side: such units are set aside (and counted).
Also: scikit-learn's MLPClassifier through skl2onnx against a numpy forward of its weights.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn
F = torch.nn.functional

from tests.onnx.onnx_kit import Expected, assert_site, scan  # noqa: E402


class ReusedRelu(nn.Module):
    """One nn.ReLU called three times (two sites in a conv map, one on features)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, 6)
        self.act = nn.ReLU()

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.act(self.conv1(x))
        x = self.act(self.conv2(x))
        return self.act(self.fc(x.mean((2, 3))))


class Relu6Net(nn.Module):
    """Conv + BatchNorm + ReLU6 (exported as Clip(0, 6); BatchNorm folded), then ReLU6 on features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.bn = nn.BatchNorm2d(8)
        self.act6 = nn.ReLU6()
        self.fc = nn.Linear(8, 5)
        self.out6 = nn.ReLU6()

    def forward(self, x):  # noqa: ANN001, ANN201
        x = self.act6(self.bn(self.conv(x)))
        return self.out6(self.fc(x.amax((2, 3))) * 4.0)


class Functional(nn.Module):
    """F.relu and Tensor.relu, no activation modules at all."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 6, 3)
        self.fc = nn.Linear(6 * 4 * 4, 7)

    def forward(self, x):  # noqa: ANN001, ANN201
        x = F.relu(self.conv(x) - 0.1)
        return self.fc(x.flatten(1)).relu()


class Sequence(nn.Module):
    """Activations [N, T, F]: the unit is the last axis."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 9)
        self.fc2 = nn.Linear(9, 4)

    def forward(self, x):  # noqa: ANN001, ANN201
        return F.relu(self.fc2(F.relu(self.fc1(x))))


def _with_dead_units(module: nn.Module) -> nn.Module:
    """Make some units dead by construction (large negative biases), and BN statistics non-trivial."""
    torch.manual_seed(0)
    module.eval()
    with torch.no_grad():
        for child in module.modules():
            if isinstance(child, (nn.Conv2d, nn.Linear)) and child.bias is not None:
                child.bias[1::3] = -40.0
            if isinstance(child, nn.BatchNorm2d):
                child.running_mean.uniform_(-0.5, 0.5)
                child.running_var.uniform_(0.5, 2.0)
                child.bias.uniform_(-0.2, 0.2)
                child.bias[2] = -30.0
    return module


def _export(module: nn.Module, example: torch.Tensor, path: Path, dynamo: bool) -> Path:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            pytest.importorskip("onnxscript")
            batch = torch.export.Dim("batch")
            program = torch.onnx.export(module, (example,), dynamo=True, verbose=False,
                                        dynamic_shapes=({0: batch},))
            program.save(str(path))
        else:
            torch.onnx.export(module, (example,), str(path), dynamo=False, input_names=["x"],
                              dynamic_axes={"x": {0: "batch"}})
    return path


def _compare(torch_report, onnx_report) -> None:  # noqa: ANN001
    assert len(onnx_report.sites) == len(torch_report.sites)
    ambiguous = 0
    for a, b in zip(torch_report.sites, onnx_report.sites):
        assert (a.op, a.unit_axis, a.units, a.samples, a.positions) == (b.op, b.unit_axis, b.units,
                                                                          b.samples, b.positions), (a.name, b.name)
        maxima = np.asarray(a.max_preactivation)
        scale = max(1e-30, float(np.abs(maxima).max()))
        near_zero = np.abs(maxima) <= 1e-5 * scale
        ambiguous += int((near_zero & (maxima != 0)).sum())
        keep = ~near_zero | (maxima == 0)
        dead_a = set(np.flatnonzero(np.isin(np.arange(a.units), a.dead_units) & keep))
        dead_b = set(np.flatnonzero(np.isin(np.arange(b.units), b.dead_units) & keep))
        assert dead_a == dead_b, (a.name, b.name)
        np.testing.assert_allclose(b.activation_rate, a.activation_rate, atol=2.5 / max(a.positions, 1))
        np.testing.assert_allclose(b.max_preactivation, a.max_preactivation, rtol=1e-3, atol=1e-4 * scale)
    assert ambiguous <= 2
    assert onnx_report.summary.dead_units == torch_report.summary.dead_units or ambiguous


SMALL = [
    (ReusedRelu, (3, 8, 8)),
    (Relu6Net, (3, 8, 8)),
    (Functional, (3, 6, 6)),
    (Sequence, (5, 6)),
]


@pytest.mark.parametrize("dynamo", [False, True], ids=["torchscript-export", "dynamo-export"])
@pytest.mark.parametrize(("factory", "shape"), SMALL, ids=[f.__name__ for f, _ in SMALL])
def test_small_models_same_report(factory, shape, dynamo: bool, tmp_path: Path) -> None:  # noqa: ANN001
    module = _with_dead_units(factory())
    data = np.random.default_rng(0).standard_normal((29, *shape)).astype(np.float32)
    path = _export(module, torch.from_numpy(data[:2]), tmp_path / f"{factory.__name__}.onnx", dynamo)
    torch_report = scan(module, data, batch_size=8)
    onnx_report = scan(path, data, batch_size=8)
    _compare(torch_report, onnx_report)
    assert torch_report.summary.dead_units > 0
    if dynamo:  # module paths come from the exporter's name scopes
        assert [s.module for s in onnx_report.sites] == [s.module for s in torch_report.sites]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2"])
def test_torchvision_models_same_report(name: str, tmp_path: Path) -> None:
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    module = getattr(torchvision.models, name)().eval()
    data = np.random.default_rng(0).standard_normal((12, 3, 32, 32)).astype(np.float32)
    torch_report = scan(module, data, batch_size=8, method="dispatch")
    assert torch_report.summary.dead_units > 0
    for dynamo in (False, True):
        path = _export(module, torch.from_numpy(data[:2]), tmp_path / f"{name}_{dynamo}.onnx", dynamo)
        _compare(torch_report, scan(path, data, batch_size=8))


def test_sklearn_mlp_through_skl2onnx(tmp_path: Path) -> None:
    sklearn_datasets = pytest.importorskip("sklearn.datasets")
    neural_network = pytest.importorskip("sklearn.neural_network")
    skl2onnx = pytest.importorskip("skl2onnx")
    from skl2onnx.common.data_types import FloatTensorType

    digits = sklearn_datasets.load_digits()
    features = (digits.data / 16.0).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning: a short training is enough here
        clf = neural_network.MLPClassifier(hidden_layer_sizes=(32, 16), activation="relu",
                                           max_iter=40, random_state=0).fit(features, digits.target)
    clf.intercepts_[0][:4] -= 100.0  # four hidden units of the first layer are dead by construction
    proto = skl2onnx.convert_sklearn(clf, initial_types=[("input", FloatTensorType([None, 64]))],
                                     options={id(clf): {"zipmap": False}}, target_opset=17)
    names = [(n.op_type, n.name) for n in proto.graph.node]
    assert ("Softmax", "Relu2") in names or any(t == "Softmax" for t, _ in names)
    path = tmp_path / "mlp.onnx"
    path.write_bytes(proto.SerializeToString())
    data = features[:300]
    report = scan(path, data, batch_size=64)
    assert [s.op for s in report.sites] == ["relu", "relu"]  # the Softmax is not a site

    hidden = data.astype(np.float64)
    for site, weight, bias in zip(report.sites, clf.coefs_, clf.intercepts_):
        pre = hidden @ weight + bias
        expected = Expected(axis=1).add(pre)
        assert_site(site, expected, rtol=1e-4, atol=1e-4)
        hidden = np.maximum(pre, 0)
    assert {0, 1, 2, 3} <= set(report.sites[0].dead_units)
