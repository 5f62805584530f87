"""Producer evidence (reludoctor.core.evidence): the layer feeding each site, per unit, found the same
way from an exported graph, from the ATen calls of a forward pass, and from an ONNX graph."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pytest
import torch
from planted import NegativeBeta, normal_data

from reludoctor.backends.onnx import evidence as onnx_evidence
from reludoctor.backends.torch import evidence
from tests import models as Z


def expected_shift(model: NegativeBeta) -> np.ndarray:
    bn = model.bn
    gamma, beta = bn.weight.detach().double(), bn.bias.detach().double()
    scale = gamma / torch.sqrt(bn.running_var.double() + bn.eps)
    return (beta - scale * bn.running_mean.double()).numpy()


def test_from_graph_and_from_dispatch_agree_with_the_weights():
    model = NegativeBeta().eval()
    with torch.no_grad():
        model.bn.running_mean.uniform_(-0.5, 0.5)
        model.bn.running_var.uniform_(0.5, 2.0)
    x = normal_data((3, 6, 6), samples=4)
    program = torch.export.export(model, (x,), strict=False)
    found = {"graph": evidence.from_graph(program.module()),
             "dispatch": evidence.from_dispatch(model, (x,))}
    norms = model.conv.weight.detach().double().flatten(1).norm(dim=1).numpy()
    for how, by_site in found.items():
        ev = by_site["relu"]
        assert (ev.layer, ev.kind, ev.weight, ev.norm_layer, ev.fan_in) == \
            ("conv", "conv", "conv.weight", "bn", 27), how
        np.testing.assert_allclose(ev.weight_norm, norms, rtol=1e-12)
        np.testing.assert_allclose(ev.shift, expected_shift(model), rtol=1e-9, atol=1e-12)
        assert ev.bias is None and ev.beta[1] == -10.0


def test_sites_without_a_single_producer_have_no_evidence():
    model = Z.Conv1dNet("residual_left").eval()  # relu(conv(x) + x): a residual sum
    x = torch.randn(3, 3, 7)
    program = torch.export.export(model, (x,), strict=False)
    assert evidence.from_graph(program.module()) == {}
    assert evidence.from_dispatch(model, (x,)) == {}
    scaled = Z.SmallConvNet().eval()  # act2 = relu6(conv2(h) * 4.0): a scaling in between
    found = evidence.from_dispatch(scaled, (Z.images(),))
    assert set(found) == {"act1", "relu()"} and found["relu()"].layer == "fc1"


def test_reused_module_sites_get_their_own_producers():
    model = Z.ReusedReLU().eval()
    x = torch.randn(4, 6)
    program = torch.export.export(model, (x,), strict=False)
    for found in (evidence.from_graph(program.module()), evidence.from_dispatch(model, (x,))):
        assert {k: v.layer for k, v in found.items()} == {"act#1": "fc1", "act#2": "fc2"}
        np.testing.assert_allclose(found["act#2"].shift, model.fc2.bias.detach().double().numpy())


def test_from_onnx_folded_batch_norm_gives_the_same_effective_bias():
    onnx = pytest.importorskip("onnx")
    model = NegativeBeta().eval()
    x = normal_data((3, 6, 6), samples=2)
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x,), buffer, dynamo=False, opset_version=17, input_names=["x"])
    proto = onnx.load_from_string(buffer.getvalue())
    relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    found = onnx_evidence.from_onnx(proto, [relu.name])
    ev = found[relu.name]
    assert ev.kind == "conv" and ev.units == 8
    np.testing.assert_allclose(ev.shift, expected_shift(model), rtol=1e-5, atol=1e-5)
