"""Issue 11, section 4: ``fix --summary`` of an ONNX model counts its MatMul layers.

A sequence model (Linear layers on [N, T, F]) exported to ONNX with a symbolic sequence length
is written as MatMul(x, W) + Add; static shape inference leaves T open, so those layers dropped
out of the MAC count while the ``.pt2`` of the same model counted them. The oracle: MACs from the
layer shapes by hand, T * sum(in_features * out_features), before and after pruning."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

T, F, H = 5, 8, 16


def _sequence_model():  # noqa: ANN202
    import torch
    from torch import nn

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(F, H)
            self.act = nn.ReLU()
            self.fc2 = nn.Linear(H, F)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.act(self.fc1(x)))

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.blocks = nn.ModuleList([Block(), Block()])
            with torch.no_grad():
                self.blocks[0].fc1.bias[[2, 5]] = -50.0  # planted dead
                self.blocks[1].fc1.bias[[1, 3, 9]] = -50.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for block in self.blocks:
                x = block(x)
            return x

    return Net().eval()


def _hand_macs(hidden: list[int]) -> int:
    """Per sample: each position runs fc1 (F x h) and fc2 (h x F) of every block."""
    return T * sum(F * h + h * F for h in hidden)


@pytest.mark.slow
def test_onnx_and_pt2_of_one_model_count_the_same_macs(cli, tmp_path):
    import onnx
    import torch

    model = _sequence_model()
    example = (torch.randn(4, T, F),)
    onnx_path = tmp_path / "seq.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, example, onnx_path, input_names=["x"],
                          dynamic_axes={"x": {0: "N", 1: "T"}}, dynamo=False)
    ops = [n.op_type for n in onnx.load(str(onnx_path)).graph.node]
    assert ops.count("MatMul") == 4 and "Gemm" not in ops  # the premise: MatMul layers
    pt2_path = tmp_path / "seq.pt2"
    torch.export.save(torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("b")},)),
                      pt2_path)
    x = np.random.default_rng(0).standard_normal((64, T, F)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    with torch.no_grad():  # the oracle's dead units: fc1 outputs never positive anywhere
        h = torch.from_numpy(x)
        alive = []
        for block in model.blocks:
            pre = block.fc1(h)
            alive.append(int(((pre > 0).flatten(0, 1).any(0)).sum()))
            h = block(h)
    before, after = _hand_macs([H, H]), _hand_macs(alive)
    assert after < before

    summaries = {}
    for path in (onnx_path, pt2_path):
        out = tmp_path / f"fixed{path.suffix}"
        result = cli(path, "--data", tmp_path / "x.npy", "--prune-dead", "-o", out, "--summary", "-")
        assert result.exit_code == 0, result.stderr
        summaries[path.suffix] = json.loads(result.stdout)
    for suffix, summary in summaries.items():
        assert summary["macs_per_sample"] == {"before": before, "after": after}, suffix


def test_macs_counts_a_weight_on_the_left_of_matmul():
    """MatMul(W, x): each output element sums over W's last axis (here 3)."""
    from onnx import TensorProto, helper, numpy_helper

    from reludoctor.backends.onnx.fix import macs

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "W")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["W", "x"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert macs(model) == 4 * 6 * 3
