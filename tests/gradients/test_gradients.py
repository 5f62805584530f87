"""Gradient flow (scan(gradients=True)) against an independent autograd computation, and the
promises around it: the model is left bit-identical, .grad never leaks, names match the
dead-unit sites, the loss is chosen and recorded, and the JSON report validates."""

from __future__ import annotations

import copy
import io
import json
import math
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from grad_oracle import Branchy, InplaceReused, PoolNet, Regressor, oracle

import reludoctor
from reludoctor.errors import DataError, UsageError
from reludoctor.report.model import Report
from reludoctor.report.schema import validate
from tests import models as Z
from tests.engine.oracle import assert_same_snapshot, snapshot

ROOT = Path(__file__).resolve().parents[2]
FIXTURES = ROOT / "fixtures"
METHODS = ("export", "dispatch")
REL = 2e-4


def quiet(_message: str) -> None:
    pass


def data(shape: tuple[int, ...], samples: int = 37, seed: int = 0) -> torch.Tensor:
    return torch.randn(samples, *shape, generator=torch.Generator().manual_seed(seed))


def check_against_oracle(report: Report, expected: dict, weights: dict, producers: dict) -> None:
    assert [s.name for s in report.sites] == list(expected)
    for site in report.sites:
        got, want = site.gradient, expected[site.name]
        assert got is not None, site.name
        one = 1.0 / want.elements  # exact zeros may differ by a rounding at most
        assert got.rms_output == pytest.approx(want.rms_output, rel=REL, abs=1e-12), site.name
        assert got.rms_preactivation == pytest.approx(want.rms_preactivation, rel=REL, abs=1e-12), site.name
        for key in ("zero_fraction", "zero_by_mask", "zero_downstream", "output_zero_fraction",
                    "pass_through"):
            assert abs(getattr(got, key) - getattr(want, key)) <= one + 1e-12, (site.name, key)
        assert got.zero_fraction == pytest.approx(got.zero_by_mask + got.zero_downstream, abs=1e-12)
        if site.name in producers:
            layer = producers[site.name]
            assert got.producer == layer
            assert got.weight_grad_norm == pytest.approx(weights[f"{layer}.weight"], rel=REL)
    names = [s.name for s in report.sites]
    for here, after in zip(report.sites, report.sites[1:]):
        expected_ratio = expected[here.name].rms_preactivation / expected[after.name].rms_preactivation
        assert here.gradient.attenuation == pytest.approx(expected_ratio, rel=1e-3), names
    assert report.sites[-1].gradient.attenuation is None


@pytest.mark.parametrize("method", METHODS)
def test_inplace_and_reused_module_match_autograd(method):
    model = InplaceReused().eval()
    x = data((6,))
    labels = torch.arange(37) % 5
    expected, weights = oracle(model, x, labels=labels, loss="labels")
    report = reludoctor.scan(model, x, batch_size=8, method=method, gradients=True, labels=labels,
                             on_warning=quiet)
    assert report.model.method == method
    assert report.gradients.computed and report.gradients.loss == "cross-entropy-labels"
    assert report.gradients.method == method and report.gradients.samples == 37
    check_against_oracle(report, expected, weights, {"act#1": "fc1", "act#2": "fc2", "six": "fc3"})
    act1, six = report.site("act#1").gradient, report.site("six").gradient
    assert act1.zero_by_mask >= 1 / 12  # the dead unit 0: blocked everywhere
    assert six.zero_by_mask >= 1 / 8  # the saturated unit 1: blocked at the upper bound


@pytest.mark.parametrize("method", METHODS)
def test_maxpool_zeros_are_downstream_not_mask(method):
    model = PoolNet().eval()
    x = data((3, 8, 8), samples=20)
    expected, weights = oracle(model, x, loss="argmax")
    report = reludoctor.scan(model, x, batch_size=6, method=method, gradients=True, on_warning=quiet)
    assert report.gradients.loss == "cross-entropy-argmax"
    check_against_oracle(report, expected, weights, {"stem": "conv1", "act": "conv2"})
    stem = report.site("stem").gradient
    assert stem.output_zero_fraction == pytest.approx(0.75, abs=0.01)  # MaxPool2d(2) keeps 1 of 4
    assert stem.zero_downstream > 0.2
    assert report.site("act").gradient.zero_downstream == 0.0


def test_half_squared_norm_for_non_classifier_outputs():
    model = Regressor().eval()
    x = data((4,))
    expected, weights = oracle(model, x, loss="half")
    report = reludoctor.scan(model, x, batch_size=10, gradients=True, on_warning=quiet)
    assert report.gradients.loss == "half-squared-norm"
    check_against_oracle(report, expected, weights, {"act": "fc1"})


def test_dispatch_fallback_for_control_flow_matches_autograd():
    model = Branchy().eval()
    x = data((5,))
    expected, weights = oracle(model, x, loss="argmax")
    report = reludoctor.scan(model, x, batch_size=8, gradients=True, on_warning=quiet)
    assert report.model.method == "dispatch" and report.gradients.method == "dispatch"
    check_against_oracle(report, expected, weights, {"act": "fc1"})


def test_weights_buffers_grads_and_outputs_untouched():
    model = InplaceReused().train()  # a training-mode model: eval for the scan, then restored
    model.fc2.weight.grad = torch.full_like(model.fc2.weight, 7.0)  # a pending .grad stays as is
    pending = model.fc2.weight.grad
    model.fc3.bias.requires_grad_(False)
    x = data((6,))
    with torch.no_grad():
        before_out = copy.deepcopy(model).eval()(x)
    before = snapshot(model)
    for method in METHODS:
        reludoctor.scan(model, x, batch_size=8, method=method, gradients=True, on_warning=quiet)
        assert_same_snapshot(before, snapshot(model))
        for name, param in model.named_parameters():
            if name == "fc2.weight":
                assert param.grad is pending and torch.equal(param.grad, torch.full_like(param, 7.0))
            else:
                assert param.grad is None, name
    assert model.training and all(m.training for m in model.modules())
    with torch.no_grad():
        assert torch.equal(model.eval()(x), before_out)


def test_exported_program_unchanged_and_same_numbers_as_module():
    model = PoolNet().eval()
    x = data((3, 8, 8), samples=12)
    program = torch.export.export(model, (x[:2],), dynamic_shapes=({0: torch.export.Dim("b")},),
                                  strict=False)
    state = {k: v.clone() for k, v in program.state_dict.items()}
    from_program = reludoctor.scan(program, x, batch_size=5, gradients=True, on_warning=quiet)
    from_module = reludoctor.scan(model, x, batch_size=5, gradients=True, on_warning=quiet)
    for key, value in program.state_dict.items():
        assert torch.equal(value, state[key]) and value.grad is None
    for a, b in zip(from_program.sites, from_module.sites):
        assert a.name == b.name
        assert a.gradient.rms_output == pytest.approx(b.gradient.rms_output, rel=1e-5)
        assert a.gradient.zero_fraction == b.gradient.zero_fraction


def test_site_names_match_dead_unit_sites_for_every_path():
    """The gradient object is attached to every observed site, for export, dispatch, and
    TorchScript (its numbers equal the exported program's)."""
    calib = FIXTURES / "data" / "digits_calib.npy"
    exported = reludoctor.scan(FIXTURES / "models" / "digits_cnn.pt2", calib, limit=64,
                               gradients=True, on_warning=quiet)
    scripted = reludoctor.scan(FIXTURES / "models" / "digits_cnn.ts", calib, limit=64,
                               gradients=True, on_warning=quiet, trust_model=True)
    fixed = reludoctor.scan(FIXTURES / "models" / "digits_cnn_fixed16.pt2", calib, limit=40,
                            gradients=True, on_warning=quiet)
    dynamic40 = reludoctor.scan(FIXTURES / "models" / "digits_cnn.pt2", calib, limit=40,
                                gradients=True, on_warning=quiet)
    assert [s.name for s in exported.sites] == ["block1.2", "block2.2", "act#1", "relu()", "act#2"]
    assert scripted.gradients.method == "dispatch" and exported.gradients.method == "export"
    for a, b in zip(exported.sites, scripted.sites):
        assert a.name == b.name and b.gradient is not None
        assert b.gradient.rms_preactivation == pytest.approx(a.gradient.rms_preactivation, rel=1e-4)
        assert b.gradient.zero_fraction == pytest.approx(a.gradient.zero_fraction, abs=1e-6)
        assert b.gradient.producer == a.gradient.producer
    assert exported.site("block1.2").gradient.producer == "block1.0"
    assert exported.site("relu()").gradient.producer is None  # a residual sum: no single producer
    # a fixed batch of 16 with 40 samples: the padded rows of the last batch are not counted
    for a, b in zip(dynamic40.sites, fixed.sites):
        assert b.gradient.rms_output == pytest.approx(a.gradient.rms_output, rel=1e-4)
        assert b.gradient.pass_through == a.gradient.pass_through


def test_labels_from_a_file_and_the_mlp_fixture(tmp_path):
    report = reludoctor.scan(FIXTURES / "models" / "digits_mlp_dead.pt2",
                             FIXTURES / "data" / "digits_calib_flat.npy", gradients=True,
                             labels=FIXTURES / "data" / "digits_labels.npy", on_warning=quiet)
    assert report.gradients.loss == "cross-entropy-labels" and report.gradients.samples == 360
    first = report.site("layers.1")
    # a dead unit passes no gradient: the mask explains at least the dead share of zeros
    assert first.gradient.zero_by_mask >= first.dead_ratio
    assert first.gradient.weight_grad_norm > 0 and first.gradient.producer == "layers.0"
    data = report.to_dict()
    validate(data)
    validate(data, use_jsonschema=False)
    assert Report.from_dict(json.loads(report.to_json())).to_dict() == data


def test_label_and_option_errors(tmp_path):
    x = data((6,), samples=10)
    model = InplaceReused().eval()
    with pytest.raises(UsageError, match="--gradients"):
        reludoctor.scan(model, x, labels=np.zeros(10, dtype=np.int64), on_warning=quiet)
    with pytest.raises(DataError, match="labels"):
        reludoctor.scan(model, x, gradients=True, labels=np.zeros(7, dtype=np.int64), on_warning=quiet)
    with pytest.raises(DataError, match="labels"):
        reludoctor.scan(model, x, gradients=True, labels=np.zeros(12, dtype=np.int64), on_warning=quiet)
    with pytest.raises(DataError, match="labels"):
        reludoctor.scan(model, x, gradients=True, labels=np.full(10, 99), on_warning=quiet)
    with pytest.raises(DataError, match="--labels .*missing.npy: no such file"):
        reludoctor.scan(model, x, gradients=True, labels=tmp_path / "missing.npy", on_warning=quiet)
    # with --limit, the first `limit` labels are used
    report = reludoctor.scan(model, data((6,), samples=20), limit=10, gradients=True,
                             labels=np.arange(20) % 5, on_warning=quiet)
    assert report.gradients.computed and report.gradients.samples == 10


def test_not_requested_is_recorded_and_null_per_site():
    report = reludoctor.scan(InplaceReused().eval(), data((6,)), on_warning=quiet)
    assert not report.gradients.computed and "not requested" in report.gradients.reason
    assert all(site.gradient is None for site in report.sites)
    data_ = report.to_dict()
    assert data_["gradients"]["computed"] is False
    assert all(site["gradient"] is None for site in data_["sites"])
    validate(data_)


# --------------------------------------------------------------------------------- ONNX


def _onnx_model(model: torch.nn.Module, example: torch.Tensor, opset: int):
    import onnx

    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), buffer, dynamo=False, opset_version=opset,
                          input_names=["x"], dynamic_axes={"x": {0: "n"}})
    return onnx.load_from_string(buffer.getvalue())


class _OnnxNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.conv = torch.nn.Conv2d(3, 4, 3, padding=1)
        self.act = torch.nn.ReLU()
        self.fc = torch.nn.Linear(4 * 6 * 6, 6)
        self.six = torch.nn.ReLU6()
        self.out = torch.nn.Linear(6, 3)
        with torch.no_grad():
            self.conv.bias[1] = -50.0  # a dead channel

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act(self.conv(x)).flatten(1)
        return self.out(self.six(self.fc(h) * 4))


def test_onnx_through_onnx2torch_matches_pytorch():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx2torch")
    model = _OnnxNet().eval()
    x = data((3, 6, 6), samples=16)
    proto = _onnx_model(model, x[:2], opset=17)
    onnx_report = reludoctor.scan(proto, x.numpy(), batch_size=5, gradients=True, on_warning=quiet)
    torch_report = reludoctor.scan(model, x, batch_size=5, gradients=True, on_warning=quiet)
    assert onnx_report.gradients.computed and onnx_report.gradients.method == "onnx2torch"
    assert len(onnx_report.sites) == len(torch_report.sites) == 2
    for o, t in zip(onnx_report.sites, torch_report.sites):
        assert o.gradient.rms_output == pytest.approx(t.gradient.rms_output, rel=1e-3)
        assert o.gradient.rms_preactivation == pytest.approx(t.gradient.rms_preactivation, rel=1e-3)
        assert o.gradient.zero_by_mask == pytest.approx(t.gradient.zero_by_mask, abs=1e-3)
        # None where no producer layer is known (compared as such: pytest >= 9.2 refuses
        # approx(None), which once made this test pass or fail with the pytest version)
        assert (o.gradient.weight_grad_norm is None) == (t.gradient.weight_grad_norm is None)
        if t.gradient.weight_grad_norm is not None:
            assert o.gradient.weight_grad_norm == pytest.approx(t.gradient.weight_grad_norm, rel=1e-3)
    assert torch_report.sites[0].gradient.weight_grad_norm is not None  # act: straight after conv
    validate(onnx_report.to_dict())


def _assert_unavailable(report: Report, why: str) -> None:
    assert not report.gradients.computed and why in report.gradients.reason
    for site in report.sites:
        g = site.gradient
        assert g is not None and g.rms_output is None and g.zero_fraction is None
        rates = list(site.activation_rate)
        for unit in site.saturated_units or ():
            rates[unit] = 0.0
        assert g.pass_through == pytest.approx(float(np.mean(rates)))
    validate(report.to_dict())
    validate(report.to_dict(), use_jsonschema=False)
    assert Report.from_dict(json.loads(report.to_json())) == report


def test_reports_written_before_gradients_read_back_as_not_computed():
    data_ = reludoctor.scan(Regressor().eval(), data((4,)), on_warning=quiet).to_dict()
    del data_["gradients"]
    for site in data_["sites"]:
        del site["gradient"]
    old = Report.from_dict(data_)
    assert not old.gradients.computed and all(s.gradient is None for s in old.sites)


def test_onnx_without_onnx2torch_reports_why_and_pass_through(monkeypatch):
    pytest.importorskip("onnxruntime")
    model = _OnnxNet().eval()
    x = data((3, 6, 6), samples=16)
    proto = _onnx_model(model, x[:2], opset=17)
    monkeypatch.setitem(sys.modules, "onnx2torch", None)  # import fails: not installed
    messages: list[str] = []
    report = reludoctor.scan(proto, x.numpy(), gradients=True, on_warning=messages.append)
    _assert_unavailable(report, "onnx2torch is not installed")
    assert report.site(report.sites[0].name).gradient.pass_through < 1.0  # the dead channel
    assert any("gradient statistics are unavailable" in m for m in messages)


def test_onnx_that_onnx2torch_cannot_convert_reports_why():
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx2torch")
    proto = _onnx_model(_OnnxNet().eval(), data((3, 6, 6), samples=2), opset=19)  # too new for it
    report = reludoctor.scan(proto, data((3, 6, 6), samples=8).numpy(), gradients=True,
                             on_warning=quiet)
    _assert_unavailable(report, "onnx2torch cannot convert")


def test_attenuation_is_the_ratio_to_the_next_site():
    report = reludoctor.scan(InplaceReused().eval(), data((6,)), gradients=True, on_warning=quiet)
    grads = [s.gradient for s in report.sites]
    for here, after in zip(grads, grads[1:]):
        assert here.attenuation == pytest.approx(here.rms_preactivation / after.rms_preactivation)
    assert all(math.isfinite(g.rms_output) for g in grads)


# --------------------------------------------------------------------------------- the zoo

ZOO = {
    "inplace relu_ on a linear": (lambda: Z.LinearAct("torch.relu_"), lambda: Z.detector_data()),
    "clamp_(min=0)": (lambda: Z.LinearAct("clamp_(min=0)"), lambda: Z.detector_data()),
    "inplace hardtanh": (lambda: Z.LinearAct("F.hardtanh(inplace)"), lambda: Z.detector_data()),
    "threshold": (lambda: Z.LinearAct("nn.Threshold(0,0)"), lambda: Z.detector_data()),
    "reused module": (lambda: Z.ReusedReLU(), lambda: data((6,), 20)),
    "reused block": (lambda: Z.ReusedBlock(), lambda: data((6,), 20)),
    "shared activation": (lambda: Z.SharedActivation(), lambda: data((6,), 20)),
    "input rectified in place": (lambda: Z.InputInplace(), lambda: data((4,), 20)),
    "token ids": (lambda: Z.TokenSeq(), lambda: torch.randint(0, 10, (12, 7))),
    "residual conv1d": (lambda: Z.Conv1dNet("residual_left"), lambda: data((3, 7), 12)),
    "small convnet": (lambda: Z.SmallConvNet(), lambda: Z.images()),
}


@pytest.mark.parametrize("case", list(ZOO))
def test_export_and_dispatch_agree_on_the_zoo(case):
    make, inputs = ZOO[case]
    model, x = make().eval(), inputs()
    reports = [reludoctor.scan(model, x, batch_size=5, method=m, gradients=True, on_warning=quiet)
               for m in METHODS]
    for report in reports:
        assert report.gradients.computed
        assert all(s.gradient is not None and s.gradient.rms_output is not None for s in report.sites)
        validate(report.to_dict(), use_jsonschema=False)
    exported, dispatched = reports
    assert [s.name for s in exported.sites] == [s.name for s in dispatched.sites]
    for a, b in zip(exported.sites, dispatched.sites):
        assert b.gradient.rms_output == pytest.approx(a.gradient.rms_output, rel=1e-4, abs=1e-12)
        assert b.gradient.rms_preactivation == pytest.approx(a.gradient.rms_preactivation, rel=1e-4,
                                                             abs=1e-12)
        assert b.gradient.zero_fraction == pytest.approx(a.gradient.zero_fraction, abs=1e-6)
        assert b.gradient.pass_through == a.gradient.pass_through
        assert b.gradient.producer == a.gradient.producer
        assert b.gradient.weight_grad_norm == pytest.approx(a.gradient.weight_grad_norm, rel=1e-4) \
            if a.gradient.weight_grad_norm is not None else b.gradient.weight_grad_norm is None


def test_gradients_even_when_called_under_inference_mode():
    model, x = Regressor().eval(), data((4,))
    expected, _ = oracle(model, x, loss="half")
    with torch.inference_mode():
        report = reludoctor.scan(model, x, gradients=True, on_warning=quiet)
    assert report.gradients.computed
    assert report.site("act").gradient.rms_output == pytest.approx(expected["act"].rms_output, rel=REL)


class _FrozenFront(torch.nn.Module):
    """A frozen embedding of token ids -> act1 -> fc -> act2 -> out: no gradient ever reaches
    act1 (nothing before it requires grad); act2 has one."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(5)
        self.emb = torch.nn.Embedding(10, 6)
        self.emb.weight.requires_grad_(False)
        self.act1, self.fc, self.act2 = torch.nn.ReLU(), torch.nn.Linear(6, 5), torch.nn.ReLU()
        self.out = torch.nn.Linear(5, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.out(self.act2(self.fc(self.act1(self.emb(ids)))).mean(1))


@pytest.mark.parametrize("method", METHODS)
def test_a_site_no_gradient_reaches_is_reported_as_not_computed(method):
    messages: list[str] = []
    ids = torch.randint(0, 10, (12, 4), generator=torch.Generator().manual_seed(0))
    report = reludoctor.scan(_FrozenFront().eval(), ids, batch_size=5, method=method, gradients=True,
                             on_warning=messages.append)
    assert report.gradients.computed
    act1, act2 = report.site("act1").gradient, report.site("act2").gradient
    assert act1.rms_output is None and act1.pass_through == pytest.approx(
        float(np.mean(report.site("act1").activation_rate)))
    assert act2.rms_output > 0 and act2.producer == "fc"
    assert any("act1" in m and "requires grad" in m for m in messages)
