"""Only activations are sites (reludoctor/core/sites.py, the one documented rule), and the
site list does not depend on the batch size.

Box clipping in detection models (``boxes[..., 0::2].clamp(min=0, max=width)`` per image in
torchvision, ``Max(x, 0)``/``Clip`` on box coordinates in ONNX), clamps of integers and clamps
of constants look like ReLUs by op and bounds but are not activations: they are listed in
``ignored_ops`` with the reason. The oracles are plain torch (module forward hooks, a forward
pass) and numpy.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reludoctor
from reludoctor.backends.torch.sites import decide
from reludoctor.core.sites import Ignored

aten = torch.ops.aten


# ------------------------------------------------------------------------------ the rule itself


def test_decide_passes_over_integers_and_data_dependent_bounds() -> None:
    floats = torch.randn(4, 3)
    relu = decide(aten.relu.default, (floats,), {}, None, True)
    assert not isinstance(relu, Ignored) and relu.op == "relu"
    ints = decide(aten.clamp.default, (floats.long(), 0), {}, None, False)
    assert isinstance(ints, Ignored) and "integer" in ints.reason
    bound = decide(aten.clamp.Tensor, (floats, 0, torch.tensor(5.0)), {}, None, True)
    assert isinstance(bound, Ignored) and "upper bound is not a constant" in bound.reason
    # not ReLU-family at all: not mentioned
    assert decide(aten.clamp.default, (floats, -1.0), {}, None, True) is None


class BoxHead(nn.Module):
    """A layer's ReLU (a site) next to box clipping, a clamp of integers and a clamp of a
    constant (none of them a site)."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(6, 8)
        self.box = nn.Linear(8, 8)

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        h = F.relu(self.fc(x))
        boxes = self.box(h).reshape(-1, 2, 4)
        xs = boxes[..., 0::2].clamp(min=0, max=32)  # clip x coordinates to the image width
        ys = boxes[..., 1].clamp(min=0)  # one coordinate picked out of the last axis
        idx = (h * 10).long().clamp(min=0)  # integers
        ramp = torch.arange(4, dtype=torch.float32, device=x.device).clamp(min=0)  # a constant
        return h, xs, ys, idx, h.sum(1, keepdim=True) + ramp.sum()


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_box_clipping_integers_and_constants_are_not_sites(method: str) -> None:
    torch.manual_seed(0)
    model = BoxHead().eval()
    report = reludoctor.scan(model, torch.randn(10, 6), batch_size=4, method=method)
    assert report.model.method == method
    assert [s.name for s in report.sites] == ["relu()"]
    by_reason = sorted(op.reason.split(" (")[0] for op in report.ignored_ops)
    assert len(report.ignored_ops) == 4, report.ignored_ops
    assert all(op.op == "clamp" and op.name == "clamp()" and op.module == "" for op in report.ignored_ops)
    assert by_reason == sorted([
        "its input comes from indexing", "its input comes from indexing",
        "integer tensor", "its input does not depend on the model's input"])
    texts = " | ".join(op.reason for op in report.ignored_ops)
    assert "slice with step 2 on the last axis" in texts and "select on the last axis" in texts
    # the JSON report carries them and reads back
    data = report.to_dict()
    assert data["ignored_ops"][0].keys() == {"op", "name", "module", "reason"}
    assert reludoctor.Report.from_dict(data).ignored_ops == report.ignored_ops


def test_a_model_rectifying_its_own_input_keeps_that_site() -> None:
    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return F.relu(self.fc(x.clamp(min=0)))

    report = reludoctor.scan(Net().eval(), torch.randn(8, 4), method="dispatch")
    assert [s.name for s in report.sites] == ["clamp()", "relu()"]
    assert report.ignored_ops == ()


# ---------------------------------------------------------------------- a real detection model


class ImagesAsList(nn.Module):
    """forward(x [N, 3, H, W]) -> the tensors of ``model(list(x))`` (until list-of-images input
    binding exists, the test binds the images itself)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        return tuple(t for d in self.model(list(x)) for t in d.values())


def _relu_module_calls(model: nn.Module, x: torch.Tensor) -> dict[str, int]:
    """Oracle: nn.ReLU modules and how often each ran, by forward hooks (plain torch)."""
    calls: dict[str, int] = {}
    handles = []
    for name, module in model.named_modules():
        if isinstance(module, nn.ReLU):
            handles.append(module.register_forward_hook(
                lambda m, i, o, name=name: calls.__setitem__(name, calls.get(name, 0) + 1)))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return calls


@pytest.mark.slow
def test_fasterrcnn_sites_do_not_depend_on_the_batch_size() -> None:
    detection = pytest.importorskip("torchvision.models.detection")
    torch.manual_seed(0)
    model = ImagesAsList(detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None)).eval()
    images = torch.rand(3, 3, 128, 128)
    reports = {b: reludoctor.scan(model, images[:b], batch_size=b, method="dispatch")
               for b in (1, 2, 3)}

    layouts = {b: [(s.name, s.op, s.units, s.unit_axis) for s in r.sites] for b, r in reports.items()}
    assert layouts[1] == layouts[2] == layouts[3]
    assert reports[1].ignored_ops == reports[2].ignored_ops == reports[3].ignored_ops

    # box clipping (clip_boxes_to_image, per image, in the RPN and in the box head) is passed
    # over, with its reason
    ignored = {op.name: op for op in reports[3].ignored_ops}
    assert set(ignored) == {"model.rpn.clamp()", "model.roi_heads.clamp()"}
    for op in ignored.values():
        assert op.op == "clamp"
        assert op.reason.startswith("its input comes from indexing (slice with step 2")
    assert not any("clamp" in s.name for s in reports[3].sites)

    # every nn.ReLU call of the model (backbone, including the squeeze-excitation ReLUs next to
    # hard-swish, and the RPN head's, once per FPN level) is a site, named by its module path
    calls = _relu_module_calls(model, images[:2])
    expected = sorted(name if count == 1 else f"{name}#{k}"
                      for name, count in calls.items() for k in range(1, count + 1))
    names = [s.name for s in reports[3].sites]
    assert sorted(n for n in names if not n.endswith(("relu()#1", "relu()#2"))) == expected
    assert any(n.startswith("model.backbone.body.") for n in expected)
    assert "model.rpn.head.conv.0.1#3" in expected
    # the box head's functional ReLUs (fc6, fc7: 1024 features each)
    head = [s for s in reports[3].sites if s.name.startswith("model.roi_heads.box_head.relu()")]
    assert [(s.name, s.units, s.unit_axis) for s in head] == [
        ("model.roi_heads.box_head.relu()#1", 1024, 1), ("model.roi_heads.box_head.relu()#2", 1024, 1)]
    assert reports[3].summary.sites == len(expected) + 2


# ----------------------------------------------------------------------------------------- ONNX


def _box_graph():  # noqa: ANN202
    """X [N, 3, 4, 4] -> 1x1 Conv -> Relu (a site, channel 2 planted dead); a box branch:
    Gemm -> boxes [N, 2, 4] -> Slice(step 2, last axis) -> Max(x, 0) (box clipping),
    Gather(index 1, last axis) -> Clip(0, 6); Clip(gemm, 0, width from Shape) (a data-dependent
    bound); Cast to int64 -> Max(x, 0) (integers)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 1, 1)).astype(np.float32)
    b = np.zeros(4, np.float32)
    b[2] = -1e3
    g = rng.standard_normal((8, 64)).astype(np.float32)

    def const(name: str, value: np.ndarray):  # noqa: ANN202
        return numpy_helper.from_array(np.asarray(value), name)

    nodes = [
        helper.make_node("Conv", ["X", "W", "B"], ["conv"], name="conv"),
        helper.make_node("Relu", ["conv"], ["act"], name="relu_conv"),
        helper.make_node("Flatten", ["act"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "G"], ["gemm"], name="gemm", transB=1),
        helper.make_node("Reshape", ["gemm", "box_shape"], ["boxes"], name="reshape"),
        helper.make_node("Slice", ["boxes", "s0", "s_end", "s_axis", "s_step"], ["xs"], name="slice"),
        helper.make_node("Max", ["xs", "zero"], ["xs_clipped"], name="box_max"),
        helper.make_node("Gather", ["boxes", "one"], ["ys"], name="gather", axis=2),
        helper.make_node("Clip", ["ys", "zero", "six"], ["ys_clipped"], name="box_clip"),
        helper.make_node("Shape", ["X"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "three"], ["width_i"], name="width", axis=0),
        helper.make_node("Cast", ["width_i"], ["width"], name="width_f", to=TensorProto.FLOAT),
        helper.make_node("Clip", ["gemm", "zero", "width"], ["gemm_clipped"], name="size_clip"),
        helper.make_node("Cast", ["gemm"], ["gemm_i"], name="to_int", to=TensorProto.INT64),
        helper.make_node("Max", ["gemm_i", "zero_i"], ["gemm_i_clipped"], name="int_max"),
    ]
    graph = helper.make_graph(
        nodes, "boxes",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, ["N", 3, 4, 4])],
        [helper.make_tensor_value_info(name, elem, None) for name, elem in [
            ("act", TensorProto.FLOAT), ("xs_clipped", TensorProto.FLOAT),
            ("ys_clipped", TensorProto.FLOAT), ("gemm_clipped", TensorProto.FLOAT),
            ("gemm_i_clipped", TensorProto.INT64)]],
        [const("W", w), const("B", b), const("G", g),
         const("box_shape", np.array([-1, 2, 4], np.int64)),
         const("s0", np.array([0], np.int64)), const("s_end", np.array([4], np.int64)),
         const("s_axis", np.array([-1], np.int64)), const("s_step", np.array([2], np.int64)),
         const("zero", np.array(0.0, np.float32)), const("six", np.array(6.0, np.float32)),
         const("one", np.array(1, np.int64)), const("three", np.array(3, np.int64)),
         const("zero_i", np.array(0, np.int64))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model, w, b


def test_onnx_box_clipping_and_integers_are_not_sites() -> None:
    pytest.importorskip("onnxruntime")
    model, w, b = _box_graph()
    x = np.random.default_rng(1).standard_normal((9, 3, 4, 4)).astype(np.float32)
    report = reludoctor.scan(model, x, batch_size=4)
    assert [(s.name, s.units, s.unit_axis) for s in report.sites] == [("relu_conv", 4, 1)]
    pre = np.einsum("oc,nchw->nohw", w[:, :, 0, 0], x) + b[None, :, None, None]  # numpy oracle
    assert list(report.sites[0].dead_units) == np.flatnonzero(pre.max(axis=(0, 2, 3)) <= 0).tolist()
    assert report.sites[0].unit_axis_reason == "channels of [N, C, ...]"
    reasons = {op.name: (op.op, op.reason) for op in report.ignored_ops}
    assert set(reasons) == {"box_max", "box_clip", "size_clip", "int_max"}
    assert reasons["box_max"][0] == "relu"
    assert reasons["box_max"][1].startswith("its input comes from indexing (Slice with step 2")
    assert reasons["box_clip"][1].startswith("its input comes from indexing (Gather on the last axis")
    assert reasons["size_clip"] == ("clip", "its upper bound is not a constant (a tensor computed "
                                            "by the model, e.g. an image size)")
    assert reasons["int_max"][1].startswith("integer tensor")


def test_scan_verbose_prints_the_ignored_ops_on_stderr(tmp_path, monkeypatch) -> None:  # noqa: ANN001
    pytest.importorskip("onnxruntime")
    from typer.testing import CliRunner

    from reludoctor.cli import app

    model, _, _ = _box_graph()
    (tmp_path / "boxes.onnx").write_bytes(model.SerializeToString())
    np.save(tmp_path / "x.npy", np.random.default_rng(1).standard_normal((9, 3, 4, 4)).astype(np.float32))
    monkeypatch.chdir(tmp_path)
    env = {"COLUMNS": "200", "NO_COLOR": "1", "TTY_COMPATIBLE": None, "TTY_INTERACTIVE": None,
           "FORCE_COLOR": None}
    quiet = CliRunner().invoke(app, ["scan", "boxes.onnx", "--data", "x.npy", "-q", "--format", "json"], env=env)
    assert quiet.exit_code == 0, quiet.output
    assert "not a site" not in quiet.stderr
    loud = CliRunner().invoke(app, ["scan", "boxes.onnx", "--data", "x.npy", "-q", "-v", "--format", "json"],
                              env=env)
    assert loud.exit_code == 0, loud.output
    lines = [line for line in loud.stderr.splitlines() if line.startswith("not a site:")]
    assert [line.split(" ")[3] for line in lines] == ["box_max", "box_clip", "size_clip", "int_max"]
    assert "size_clip (clip): its upper bound is not a constant" in loud.stderr
    import json

    assert [op["name"] for op in json.loads(loud.stdout)["ignored_ops"]] == [  # stdout: the report
        "box_max", "box_clip", "size_clip", "int_max"]


@pytest.mark.slow
def test_fasterrcnn_exported_to_onnx_has_the_same_sites_and_its_box_clips_are_ignored() -> None:
    """torchvision's traced box clipping is ``Max(boxes[..., 0::2], 0)`` (then Min with the image
    size): in ONNX those Max nodes are ignored; the Relu nodes are the PyTorch model's sites."""
    detection = pytest.importorskip("torchvision.models.detection")
    import io
    import warnings

    import onnx

    from reludoctor.backends.onnx.discover import _discover
    from reludoctor.backends.onnx.shapes import _value_types

    torch.manual_seed(0)
    model = detection.fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None).eval()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, ([torch.rand(3, 128, 128)],), buffer, dynamo=False, opset_version=17)
    proto = onnx.load_from_string(buffer.getvalue())
    found = _discover(proto, 17, _value_types(proto))
    assert {op.name for op in found.ignored} == {"/rpn/Max", "/rpn/Max_1", "/roi_heads/Max",
                                                 "/roi_heads/Max_1"}
    assert all(op.reason.startswith("its input comes from indexing (Slice with step 2")
               for op in found.ignored)
    assert all(site.op == "relu" and "/Relu" in site.name for site in found.sites)
    torch_sites = reludoctor.scan(ImagesAsList(model), torch.rand(2, 3, 128, 128),
                                  method="dispatch").summary.sites
    assert len(found.sites) == torch_sites
