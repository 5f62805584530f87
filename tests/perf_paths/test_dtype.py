"""--dtype bf16|fp16: autocast on the forward pass, statistics still accumulated in float32/64.
On the CPU (bf16 autocast runs there too); the CUDA run is benchmarks/gpu_check.sh."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import reludoctor
from reludoctor.errors import UsageError
from reludoctor.report.model import Report


def _margin_model() -> torch.nn.Module:
    """Units either far below zero on every input (dead) or far above (always firing): no unit
    sits near the threshold, so reduced precision cannot flip a decision."""
    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 6, 3, padding=1)
    linear = torch.nn.Linear(6 * 4 * 4, 8)
    with torch.no_grad():
        conv.weight.mul_(0.1)
        conv.bias.copy_(torch.tensor([-20.0, 20.0, 20.0, -20.0, 20.0, 20.0]))
        linear.weight.mul_(0.01)
        linear.bias.copy_(torch.tensor([30.0, -30.0, 30.0, 30.0, -30.0, 30.0, 30.0, -30.0]))
    return torch.nn.Sequential(conv, torch.nn.ReLU(), torch.nn.Flatten(), linear, torch.nn.ReLU6()).eval()


def _data(n: int = 40) -> np.ndarray:
    return np.random.default_rng(0).uniform(-1, 1, (n, 3, 4, 4)).astype(np.float32)


@pytest.mark.parametrize("method", ["export", "dispatch"])
@pytest.mark.parametrize("dtype", ["bf16", "fp16"])
def test_reduced_precision_matches_fp32_with_clear_margins(method: str, dtype: str) -> None:
    model = _margin_model()
    full = reludoctor.scan(model, _data(), device="cpu", method=method, batch_size=16)
    reduced = reludoctor.scan(model, _data(), device="cpu", method=method, batch_size=16, dtype=dtype)
    assert full.dtype == "float32"
    assert reduced.dtype == {"bf16": "bfloat16", "fp16": "float16"}[dtype]
    assert [s.name for s in full.sites] == [s.name for s in reduced.sites]
    assert full.sites[0].dead_units == (0, 3)
    assert full.sites[1].dead_units == (1, 4, 7)
    for a, b in zip(full.sites, reduced.sites):
        assert a.dead_units == b.dead_units
        assert a.saturated_units == b.saturated_units
        np.testing.assert_array_equal(a.activation_rate, b.activation_rate)
        np.testing.assert_allclose(a.max_preactivation, b.max_preactivation, rtol=2e-2, atol=0.1)
        assert a.samples == b.samples == 40


def test_autocast_really_runs_in_bf16() -> None:
    """The observed values are the bf16 ones: their maxima are representable in bfloat16."""
    torch.manual_seed(1)
    model = torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.ReLU()).eval()
    data = np.random.default_rng(1).standard_normal((33, 5)).astype(np.float32)
    report = reludoctor.scan(model, data, device="cpu", dtype="bf16", batch_size=8)
    maxima = np.asarray(report.sites[0].max_preactivation)
    as_bf16 = torch.from_numpy(maxima).to(torch.bfloat16).double().numpy()
    np.testing.assert_array_equal(maxima, as_bf16)
    full = reludoctor.scan(model, data, device="cpu", batch_size=8)
    assert not np.array_equal(np.asarray(full.sites[0].max_preactivation), maxima)


def test_dtype_in_json_and_round_trip() -> None:
    report = reludoctor.scan(_margin_model(), _data(8), device="cpu", dtype="bf16")
    data = json.loads(report.to_json())
    assert data["dtype"] == "bfloat16"
    assert Report.from_dict(data).dtype == "bfloat16"
    del data["dtype"]  # a report written before the key existed
    assert Report.from_dict(data).dtype == "float32"


def test_fp32_is_the_default_and_accepted() -> None:
    assert reludoctor.scan(_margin_model(), _data(8), device="cpu", dtype="fp32").dtype == "float32"


def test_unknown_dtype_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="--dtype"):
        reludoctor.scan(_margin_model(), _data(8), device="cpu", dtype="int8")


def _relu_onnx(path) -> str:  # noqa: ANN001
    import onnx
    from onnx import TensorProto, helper

    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    target = path / "relu.onnx"
    onnx.save(model, str(target))
    return str(target)


def test_onnx_with_dtype_is_refused(tmp_path) -> None:
    path = _relu_onnx(tmp_path)
    data = np.ones((4, 4), np.float32)
    assert reludoctor.scan(path, data, device="cpu").dtype == "float32"
    with pytest.raises(UsageError, match="PyTorch models only"):
        reludoctor.scan(path, data, device="cpu", dtype="bf16")


def test_cli_dtype(tmp_path) -> None:
    from typer.testing import CliRunner

    from reludoctor.cli import app

    onnx_path = _relu_onnx(tmp_path)
    np.save(tmp_path / "x.npy", np.ones((4, 4), np.float32))
    result = CliRunner().invoke(app, ["scan", onnx_path, "--data", str(tmp_path / "x.npy"),
                                      "--dtype", "bf16", "--device", "cpu", "--json", "-"])
    assert result.exit_code == 2
    assert "--dtype" in result.output

    program = torch.export.export(_margin_model(), (torch.from_numpy(_data(2)),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "model.pt2")
    np.save(tmp_path / "d.npy", _data(16))
    result = CliRunner().invoke(app, ["scan", str(tmp_path / "model.pt2"), "--data",
                                      str(tmp_path / "d.npy"), "--dtype", "bf16", "--device",
                                      "cpu", "--json", "-", "-q"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["dtype"] == "bfloat16"
