"""The activation catalogue (reludoctor/activations.py) agrees with both backends: every op a
backend reports as a site is a catalogue entry that claims the backend's op, every entry a backend
claims is reached by a real model, and the properties other modules read are consistent."""

from __future__ import annotations

import numpy as np
import pytest

from reludoctor import activations
from reludoctor.activations import BY_OP, CATALOGUE

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper  # noqa: E402


def test_entries_are_consistent():
    assert len(BY_OP) == len(CATALOGUE), "two entries share an op name"
    for entry in CATALOGUE:
        assert entry.torch_ops or entry.onnx_ops, f"{entry.op}: no backend recognises it"
        assert entry.label, entry.op
        if entry.leaky_form:  # fix --leaky swaps it for LeakyReLU: unbounded, rectifying at 0
            assert entry.upper is None and entry.zero_below and entry.lower == 0.0, entry.op
        if entry.prunable:  # a dead unit outputs a constant (0 with a lower bound of 0)
            assert entry.grad_mask, entry.op
        if not entry.grad_mask:  # no mask: it never outputs exactly 0 below the bound either
            assert not entry.zero_below and not entry.prunable, entry.op
        for name in entry.torch_modules:
            assert hasattr(torch.nn, name), f"{entry.op}: torch.nn.{name} does not exist"
        for name in entry.torch_ops:
            assert hasattr(torch.ops.aten, name), f"{entry.op}: aten.{name} does not exist"
    assert set(activations.onnx_fused().values()) <= set(BY_OP)


# Every call the PyTorch classifier accepts, with the op it must report.
TORCH_CALLS = [
    ("relu", (), "relu"), ("relu_", (), "relu"), ("relu6", (), "relu6"), ("relu6_", (), "relu6"),
    ("hardtanh", (0.0, 6.0), "relu6"), ("hardtanh", (-1.0, 1.0), "hardtanh"),
    ("hardtanh_", (-2.0, 2.0), "hardtanh"), ("clamp", (0.0,), "clamp"), ("clamp", (0.0, 3.0), "clamp"),
    ("clamp_", (0.0,), "clamp"), ("clamp_min", (0.0,), "clamp"), ("clamp_min_", (0.0,), "clamp"),
    ("threshold", (0.0, 0.0), "threshold"), ("threshold_", (0.0, 0.0), "threshold"),
]


def test_torch_classifier_reports_only_catalogue_ops():
    from reludoctor.backends.torch.sites import classify

    reached = set()
    for name, extra, expected in TORCH_CALLS:
        packet = getattr(torch.ops.aten, name)
        overload = packet.default if "default" in packet.overloads() else getattr(packet, packet.overloads()[0])
        found = classify(overload, (torch.zeros(2), *extra), {})
        assert found is not None and found.op == expected, (name, extra, found)
        # hardtanh(0, 6) is what nn.ReLU6 lowers to: reported as relu6, claimed by hardtanh
        claimant = "hardtanh" if name.startswith("hardtanh") else found.op
        assert name in BY_OP[claimant].torch_ops, f"aten.{name} reports {found.op}, no entry claims it"
        reached.add(name)
    claimed = {name for entry in CATALOGUE for name in entry.torch_ops}
    assert claimed == reached, f"claimed but never classified: {claimed - reached}"
    # Everything else aten has that sounds like an activation is not a site.
    for name in ("leaky_relu", "prelu", "gelu", "silu", "elu", "hardswish", "rrelu", "celu", "selu"):
        packet = getattr(torch.ops.aten, name)
        overload = getattr(packet, packet.overloads()[0])
        assert classify(overload, (torch.zeros(2),), {}) is None, name
        assert all(name not in entry.torch_ops for entry in CATALOGUE)


class _Every(torch.nn.Module):
    """One call of each kind the PyTorch backend observes, and one it does not (leaky_relu)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 4)
        self.acts = torch.nn.ModuleList([torch.nn.ReLU(), torch.nn.ReLU6(), torch.nn.Hardtanh(-1.0, 1.0),
                                         torch.nn.Threshold(0.0, 0.0)])

    def forward(self, x):  # noqa: ANN001, ANN201
        h = self.fc(x)
        outs = [act(h) for act in self.acts]
        outs.append(torch.clamp(h, min=0.0))
        outs.append(torch.nn.functional.leaky_relu(h, 0.1))
        return torch.stack(outs).sum(0)


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_torch_scan_ops_are_catalogue_entries(method, one_thread_seeded):
    import reludoctor

    report = reludoctor.scan(_Every(), np.random.default_rng(0).standard_normal((16, 4)).astype("float32"),
                             method=method)
    ops = [site.op for site in report.sites]
    assert ops == ["relu", "relu6", "hardtanh", "threshold", "clamp"], ops
    for op in ops:
        assert BY_OP[op].torch_ops, op


def _onnx_model(node: onnx.NodeProto, *initializers: onnx.TensorProto) -> onnx.ModelProto:
    graph = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["pre"], name="mm"), node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor("w", TensorProto.FLOAT, [4, 4],
                                                  np.eye(4, dtype=np.float32).ravel().tolist()),
                               *initializers])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _scalar(name: str, value: float) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.FLOAT, [], [value])


ONNX_NODES = [
    ("Relu", lambda: _onnx_model(helper.make_node("Relu", ["pre"], ["y"], name="act")), "relu"),
    ("Max", lambda: _onnx_model(helper.make_node("Max", ["pre", "zero"], ["y"], name="act"), _scalar("zero", 0.0)), "relu"),
    ("Clip", lambda: _onnx_model(helper.make_node("Clip", ["pre", "lo", "hi"], ["y"], name="act"),
                                 _scalar("lo", 0.0), _scalar("hi", 6.0)), "relu6"),
    ("Clip", lambda: _onnx_model(helper.make_node("Clip", ["pre", "lo"], ["y"], name="act"), _scalar("lo", 0.0)), "clip"),
    ("LeakyRelu", lambda: _onnx_model(helper.make_node("LeakyRelu", ["pre"], ["y"], name="act", alpha=0.1)), "leaky_relu"),
    ("PRelu", lambda: _onnx_model(helper.make_node("PRelu", ["pre", "slope"], ["y"], name="act"),
                                  helper.make_tensor("slope", TensorProto.FLOAT, [4], [0.1] * 4)), "prelu"),
]


def test_onnx_scan_ops_are_catalogue_entries():
    import reludoctor

    data = np.random.default_rng(0).standard_normal((8, 4)).astype("float32")
    reached = set()
    for op_type, build, expected in ONNX_NODES:
        report = reludoctor.scan(build(), data)
        assert [site.op for site in report.sites] == [expected], op_type
        assert op_type in BY_OP[expected].onnx_ops, f"{op_type} reports {expected}, whose entry does not claim it"
        reached.add(op_type)
    assert activations.onnx_ops() == reached, "an ONNX op type the catalogue claims was never reported"


@pytest.mark.parametrize("op_type", ["Sigmoid", "Elu", "ThresholdedRelu", "Selu", "HardSigmoid"])
def test_onnx_ops_outside_the_catalogue_are_no_sites(op_type):
    import reludoctor
    from reludoctor.errors import NoSitesError

    with pytest.raises(NoSitesError):
        reludoctor.scan(_onnx_model(helper.make_node(op_type, ["pre"], ["y"], name="act")),
                        np.ones((4, 4), dtype="float32"))


def test_messages_name_what_each_backend_observes():
    torch_text, onnx_text = activations.describe("torch"), activations.describe("onnx")
    for entry in CATALOGUE:
        if entry.torch_ops:
            assert entry.label in torch_text, entry.op
        if entry.onnx_ops and entry.op not in ("relu", "relu6", "clip"):
            assert entry.label in onnx_text, entry.op
    assert "Clip(min=0)" in onnx_text and "Max(x, 0)" in onnx_text
