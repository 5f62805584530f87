"""ONNX graphs built in code: which nodes are sites, and their statistics against numpy.

Expected values come from onnxruntime with the pre-activation exposed as a graph output
(optimisations off), or a numpy forward, reduced per unit in numpy (tests/onnx/onnx_kit.py).
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from reludoctor.errors import DataError, NoSitesError, UsageError
from tests.onnx.onnx_kit import Expected, assert_site, const, intermediate, model, save, scan, value

RNG = np.random.default_rng(0)


def _conv_model(act_nodes: list, initializers: list = (), *, opset: int = 17, channels: int = 6,
                batch: int | str | None = "N", spatial=(6, 6)) -> onnx.ModelProto:
    """x [N, 3, 6, 6] -> Conv (some channels biased dead, one saturating) -> activation -> y."""
    weight = RNG.standard_normal((channels, 3, 3, 3)).astype(np.float32) * 0.5
    bias = RNG.standard_normal(channels).astype(np.float32)
    bias[1] = -60.0  # never fires
    bias[2] = 60.0  # always fires (saturates a ReLU6)
    conv = helper.make_node("Conv", ["x", "w", "b"], ["pre"], name="conv")
    return model([conv, *act_nodes], [value("x", [batch, 3, *spatial])], [value("y", None)],
                 [const("w", weight), const("b", bias), *initializers], opset=opset)


def _data(samples: int = 37, shape=(3, 6, 6)) -> np.ndarray:
    return RNG.standard_normal((samples, *shape)).astype(np.float32)


def _pre(proto: onnx.ModelProto, data: np.ndarray, name: str = "pre") -> np.ndarray:
    return intermediate(proto, {"x": data}, [name])[0]


ACTIVATIONS = [
    # (id, nodes, initializers, opset, op, upper, negative slope)
    ("relu", [helper.make_node("Relu", ["pre"], ["y"], name="act")], [], 17, "relu", None, None),
    ("clip-inputs-relu6", [helper.make_node("Clip", ["pre", "lo", "hi"], ["y"], name="act")],
     [const("lo", np.float32(0)), const("hi", np.float32(6))], 13, "relu6", 6.0, None),
    ("clip-inputs-min-only", [helper.make_node("Clip", ["pre", "lo"], ["y"], name="act")],
     [const("lo", np.float32(0))], 13, "clip", None, None),
    ("clip-inputs-empty-max", [helper.make_node("Clip", ["pre", "lo", ""], ["y"], name="act")],
     [const("lo", np.float32(0))], 18, "clip", None, None),
    ("clip-inputs-other-max", [helper.make_node("Clip", ["pre", "lo", "hi"], ["y"], name="act")],
     [const("lo", np.float32(0)), const("hi", np.float32(2.5))], 13, "clip", 2.5, None),
    ("clip-constant-nodes", [
        helper.make_node("Constant", [], ["lo"], value=const("lo", np.float32(0))),
        helper.make_node("Constant", [], ["hi"], value_float=6.0),
        helper.make_node("Clip", ["pre", "lo", "hi"], ["y"], name="act")], [], 12, "relu6", 6.0, None),
    ("clip-attributes-relu6", [helper.make_node("Clip", ["pre"], ["y"], name="act", min=0.0, max=6.0)],
     [], 10, "relu6", 6.0, None),
    ("clip-attributes-min-only", [helper.make_node("Clip", ["pre"], ["y"], name="act", min=0.0)],
     [], 9, "clip", None, None),
    ("max-x-0", [helper.make_node("Max", ["pre", "zero"], ["y"], name="act")],
     [const("zero", np.float32(0))], 17, "relu", None, None),
    ("max-0-x", [helper.make_node("Max", ["zero", "pre"], ["y"], name="act")],
     [const("zero", np.zeros((1,), np.float32))], 17, "relu", None, None),
    ("leaky-relu", [helper.make_node("LeakyRelu", ["pre"], ["y"], name="act", alpha=0.1)],
     [], 17, "leaky_relu", None, 0.1),
    ("prelu", [helper.make_node("PRelu", ["pre", "slope"], ["y"], name="act")],
     [const("slope", np.linspace(0.05, 0.3, 6, dtype=np.float32).reshape(6, 1, 1))], 17, "prelu",
     None, np.linspace(0.05, 0.3, 6).reshape(6, 1, 1)),
]


@pytest.mark.parametrize(("nodes", "inits", "opset", "op", "upper", "slope"),
                         [a[1:] for a in ACTIVATIONS], ids=[a[0] for a in ACTIVATIONS])
def test_activation_sites_match_numpy(nodes, inits, opset, op, upper, slope) -> None:  # noqa: ANN001
    proto = _conv_model(nodes, inits, opset=opset)
    data = _data()
    report = scan(proto, data, batch_size=8)
    assert [(s.name, s.op) for s in report.sites] == [("act", op)]
    site = report.sites[0]
    assert site.upper_bound == upper and site.lower_bound == 0.0
    expected = Expected(axis=1, upper=upper, negative_slope=slope).add(_pre(proto, data))
    assert_site(site, expected)
    assert 1 in site.dead_units and 2 not in site.dead_units
    if upper == 6.0:
        assert 2 in site.saturated_units
    assert report.model.format == "onnx" and report.model.method == "onnxruntime"


NOT_SITES = [
    ("clip-min-negative", [helper.make_node("Clip", ["pre", "lo", "hi"], ["y"])],
     [const("lo", np.float32(-1)), const("hi", np.float32(6))], 13),
    ("clip-no-min", [helper.make_node("Clip", ["pre", "", "hi"], ["y"])], [const("hi", np.float32(6))], 13),
    ("clip-attr-default-min", [helper.make_node("Clip", ["pre"], ["y"], max=6.0)], [], 10),
    ("max-x-1", [helper.make_node("Max", ["pre", "one"], ["y"])], [const("one", np.float32(1))], 17),
    ("max-three-inputs", [helper.make_node("Max", ["pre", "zero", "pre"], ["y"])],
     [const("zero", np.float32(0))], 17),
    ("softmax-named-relu", [helper.make_node("Softmax", ["pre"], ["y"], name="Relu2")], [], 17),
    ("sigmoid", [helper.make_node("Sigmoid", ["pre"], ["y"], name="Relu")], [], 17),
]


@pytest.mark.parametrize(("nodes", "inits", "opset"), [a[1:] for a in NOT_SITES],
                         ids=[a[0] for a in NOT_SITES])
def test_not_relu_family(nodes, inits, opset) -> None:  # noqa: ANN001
    proto = _conv_model(nodes, inits, opset=opset)
    with pytest.raises(NoSitesError) as info:
        scan(proto, _data(4))
    assert "no ReLU-family node" in str(info.value)


def test_clip_min_from_a_graph_input_is_not_a_site() -> None:
    conv = _conv_model([helper.make_node("Clip", ["pre", "lo"], ["y"])], opset=13)
    conv.graph.input.append(value("lo", [], TensorProto.FLOAT))
    from reludoctor.backends.onnx.discover import _discover

    assert _discover(conv, 13).sites == []


def _hard_swish_model() -> onnx.ModelProto:
    nodes = [
        # x * Clip(x + 3, 0, 6) / 6, as PaddleOCR-style exports write it
        helper.make_node("Add", ["pre", "three"], ["p3"]),
        helper.make_node("Clip", ["p3", "zero", "six"], ["gate"], name="hswish_clip"),
        helper.make_node("Mul", ["pre", "gate"], ["prod"]),
        helper.make_node("Div", ["prod", "six"], ["hs1"]),
        # (3 + x) first, and a hard-sigmoid gate Clip(x + 3, 0, 6) * (1/6) on another tensor
        helper.make_node("Add", ["three", "hs1"], ["q3"]),
        helper.make_node("Clip", ["q3", "zero", "six"], ["gate2"], name="hsigmoid_clip"),
        helper.make_node("Mul", ["gate2", "sixth"], ["hsig"]),
        helper.make_node("Mul", ["hs1", "hsig"], ["hs2"]),
        helper.make_node("HardSwish", ["hs2"], ["hs3"]),
        helper.make_node("Relu", ["hs3"], ["y"], name="real_relu"),
    ]
    inits = [const("three", np.float32(3)), const("zero", np.float32(0)), const("six", np.float32(6)),
             const("sixth", np.float32(1 / 6))]
    return _conv_model(nodes, inits, opset=14)


def test_hard_swish_is_not_a_relu6_site() -> None:
    proto = _hard_swish_model()
    data = _data(20)
    report = scan(proto, data, batch_size=8)
    assert [s.name for s in report.sites] == ["real_relu"]
    assert not report.unobserved_sites
    notes = [w for w in report.warnings if "hard-swish" in w]
    assert len(notes) == 1 and notes[0].startswith("3 hard-swish/hard-sigmoid gate(s)")
    expected = Expected(axis=1).add(_pre(proto, data, "hs3"))
    assert_site(report.sites[0], expected)


def test_site_names_unnamed_and_duplicates() -> None:
    nodes = [
        helper.make_node("Relu", ["pre"], ["first_out"]),  # unnamed: named after its output
        helper.make_node("Relu", ["first_out"], ["act"]),  # unnamed, its output is called "act"
        helper.make_node("Relu", ["act"], ["c"], name="act"),  # and a node named "act"
        helper.make_node("Softmax", ["c"], ["y"], name="Relu2"),  # skl2onnx-style name: not a site
    ]
    report = scan(_conv_model(nodes), _data(5))
    assert [s.name for s in report.sites] == ["first_out", "act#1", "act#2"]
    assert len({s.name for s in report.sites}) == 3


def _mlp_sequence_model() -> tuple[onnx.ModelProto, dict]:
    """ids int64 [N, 5] and feat float [N, 5, 3] -> Gather + Add -> MatMul -> Relu ([N, T, F])."""
    table = RNG.standard_normal((11, 3)).astype(np.float32)
    weight = RNG.standard_normal((3, 4)).astype(np.float32)
    bias = np.array([0.1, -50.0, 0.3, 0.0], np.float32)
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"]),
        helper.make_node("Add", ["emb", "feat"], ["h"]),
        helper.make_node("MatMul", ["h", "w"], ["mm"]),
        helper.make_node("Add", ["mm", "b"], ["pre"]),
        helper.make_node("Relu", ["pre"], ["y"], name="seq_relu"),
    ]
    proto = model(nodes, [value("ids", ["N", 5], TensorProto.INT64), value("feat", ["N", 5, 3])],
                  [value("y", None)], [const("table", table), const("w", weight), const("b", bias)])
    return proto, {"table": table, "w": weight, "b": bias}


def test_several_inputs_npz_integer_tokens_sequence_axis(tmp_path) -> None:  # noqa: ANN001
    proto, weights = _mlp_sequence_model()
    path = save(proto, tmp_path / "seq.onnx")
    ids = RNG.integers(0, 11, (23, 5)).astype(np.int64)
    feat = RNG.standard_normal((23, 5, 3)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", feat=feat, ids=ids)
    report = scan(path, tmp_path / "calib.npz", batch_size=6)
    assert report.model.inputs == ("ids", "feat")
    pre = (weights["table"][ids].astype(np.float64) + feat) @ weights["w"] + weights["b"]
    expected = Expected(axis=2).add(pre)
    assert_site(report.site("seq_relu"), expected)
    assert report.site("seq_relu").dead_units == (1,)
    # the same with int32 token ids: cast to the model's int64
    np.savez(tmp_path / "calib32.npz", feat=feat, ids=ids.astype(np.int32))
    assert scan(path, tmp_path / "calib32.npz").site("seq_relu").dead_units == (1,)


def test_input_shape_and_dtype_mismatch_name_the_input(tmp_path) -> None:  # noqa: ANN001
    proto, _ = _mlp_sequence_model()
    path = save(proto, tmp_path / "seq.onnx")
    ids = RNG.integers(0, 11, (8, 5)).astype(np.int64)
    with pytest.raises(DataError, match=r"input 'feat' has shape \[N, 5, 2\] but the model expects \[N, 5, 3\]"):
        scan(path, {"ids": ids, "feat": np.zeros((8, 5, 2), np.float32)})
    with pytest.raises(DataError, match=r"input 'ids' is float32 but the model expects int64"):
        scan(path, {"ids": ids.astype(np.float32), "feat": np.zeros((8, 5, 3), np.float32)})
    batches = [{"ids": ids, "feat": np.zeros((8, 4, 3), np.float32)}]  # an iterable: checked per batch
    with pytest.raises(DataError, match=r"input 'feat' has shape \[N, 4, 3\] but the model expects \[N, 5, 3\]"):
        scan(path, batches)


def test_fixed_batch_remainder_counts_only_real_samples() -> None:
    weight = np.eye(6, 5, dtype=np.float32)
    bias = np.array([-5.0, 0.0, -100.0, 0.5, 0.0], np.float32)
    nodes = [helper.make_node("Gemm", ["x", "w", "b"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["y"], name="fc_relu")]
    proto = model(nodes, [value("x", [4, 6])], [value("y", [4, 5])], [const("w", weight), const("b", bias)])
    data = RNG.standard_normal((10, 6)).astype(np.float32)
    data[:, 0] = -1.0
    data[9, 0] = 10.0  # unit 0 fires on the last sample only: padding repeats it
    report = scan(proto, data, batch_size=32)
    assert report.calibration.batch_size == 4 and report.calibration.samples == 10
    assert any("fixed batch of 4" in w for w in report.warnings)
    site = report.site("fc_relu")
    expected = Expected(axis=1).add(data.astype(np.float64) @ weight + bias)
    assert expected.positive[0] == 1
    assert_site(site, expected)
    assert site.dead_units == (2,)


def test_if_branches_are_observed() -> None:
    w_then = RNG.standard_normal((4, 5)).astype(np.float32)
    w_else = RNG.standard_normal((4, 5)).astype(np.float32)
    then_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_then"], ["then_pre"]),
         helper.make_node("Relu", ["then_pre"], ["then_y"], name="then_relu")],
        "then", [], [value("then_y", ["N", 5])])
    else_graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_else"], ["else_pre"]),
         helper.make_node("Add", ["else_pre", "minus"], ["else_shift"]),
         helper.make_node("LeakyRelu", ["else_shift"], ["else_y"], name="else_leaky", alpha=0.2)],
        "else", [], [value("else_y", ["N", 5])])
    nodes = [
        helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
        helper.make_node("Greater", ["total", "zero"], ["cond"]),
        helper.make_node("If", ["cond"], ["branch"], name="if", then_branch=then_graph,
                         else_branch=else_graph),
        helper.make_node("Relu", ["branch"], ["y"], name="after_if"),
    ]
    proto = model(nodes, [value("x", ["N", 4])], [value("y", ["N", 5])],
                  [const("w_then", w_then), const("w_else", w_else), const("zero", np.float32(0)),
                   const("minus", np.array([0, -80, 0, 0, 0], np.float32))], opset=11)
    onnx.checker.check_model(proto)
    data = RNG.standard_normal((40, 4)).astype(np.float32)
    for index in range(5):  # batches of 8: even batches sum > 0 (then), odd ones < 0 (else)
        data[index * 8:(index + 1) * 8] += 1.5 if index % 2 == 0 else -1.5
    report = scan(proto, data, batch_size=8)
    assert [s.name for s in report.sites] == ["then_relu", "else_leaky", "after_if"]
    then_rows = np.concatenate([data[i * 8:(i + 1) * 8] for i in (0, 2, 4)]).astype(np.float64)
    else_rows = np.concatenate([data[i * 8:(i + 1) * 8] for i in (1, 3)]).astype(np.float64)
    assert_site(report.site("then_relu"), Expected(axis=1).add(then_rows @ w_then))
    else_pre = else_rows @ w_else + np.array([0, -80, 0, 0, 0])
    assert_site(report.site("else_leaky"), Expected(axis=1, negative_slope=0.2).add(else_pre))
    assert report.site("else_leaky").dead_units == (1,)
    outputs = []
    for index in range(5):
        rows = data[index * 8:(index + 1) * 8].astype(np.float64)
        if index % 2 == 0:
            outputs.append(np.maximum(rows @ w_then, 0))
        else:
            shifted = rows @ w_else + np.array([0, -80, 0, 0, 0])
            outputs.append(np.where(shifted > 0, shifted, 0.2 * shifted))
    assert_site(report.site("after_if"), Expected(axis=1).add(np.concatenate(outputs)))
    assert report.summary.unobserved_sites == 0


def test_if_branch_never_taken_is_reported_unobserved() -> None:
    then_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["t"], name="then_relu")],
                                   "then", [], [value("t", ["N", 4])])
    else_graph = helper.make_graph([helper.make_node("Relu", ["x"], ["e"], name="else_relu")],
                                   "else", [], [value("e", ["N", 4])])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["y"], then_branch=then_graph, else_branch=else_graph)]
    proto = model(nodes, [value("x", ["N", 4])], [value("y", ["N", 4])], [const("zero", np.float32(0))])
    data = np.abs(RNG.standard_normal((12, 4))).astype(np.float32)  # every batch: then
    report = scan(proto, data, batch_size=4)
    assert [s.name for s in report.sites] == ["then_relu"]
    assert [(u.name, u.op) for u in report.unobserved_sites] == [("else_relu", "relu")]
    assert "never executed" in report.unobserved_sites[0].reason
    assert report.summary.unobserved_sites == 1
    assert any("else_relu" in w and "not observed" in w for w in report.warnings)


def test_loop_body_sites_are_reported_not_silently_dropped() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"]),
         helper.make_node("Add", ["v_in", "step"], ["v_pre"]),
         helper.make_node("Relu", ["v_pre"], ["v_out"], name="loop_relu")],
        "body", [value("i", [], TensorProto.INT64), value("cond_in", [], TensorProto.BOOL),
                 value("v_in", ["N", 3])],
        [value("cond_out", [], TensorProto.BOOL), value("v_out", ["N", 3])])
    nodes = [helper.make_node("Loop", ["trips", "keep", "x"], ["looped"], name="loop", body=body),
             helper.make_node("Relu", ["looped"], ["y"], name="after_loop")]
    proto = model(nodes, [value("x", ["N", 3])], [value("y", ["N", 3])],
                  [const("trips", np.int64(2)), const("keep", np.bool_(True)),
                   const("step", np.float32(-0.5))], opset=13)
    data = RNG.standard_normal((9, 3)).astype(np.float32)
    report = scan(proto, data, batch_size=4)
    assert [s.name for s in report.sites] == ["after_loop"]
    assert [(u.name, u.op) for u in report.unobserved_sites] == [("loop_relu", "relu")]
    assert "Loop" in report.unobserved_sites[0].reason
    assert report.summary.unobserved_sites == 1
    looped = np.maximum(np.maximum(data.astype(np.float64) - 0.5, 0) - 0.5, 0)
    assert_site(report.sites[0], Expected(axis=1).add(looped))


def test_fused_activation_of_an_optimised_model_is_reported() -> None:
    weight = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("FusedConv", ["x", "w"], ["fused"], name="fused_conv", domain="com.microsoft",
                              activation="Relu"),
             helper.make_node("Relu", ["fused"], ["y"], name="after")]
    proto = model(nodes, [value("x", ["N", 3, 6, 6])], [value("y", None)], [const("w", weight)])
    proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report = scan(proto, _data(6), batch_size=4)
    assert [s.name for s in report.sites] == ["after"]
    assert [(u.name, u.op) for u in report.unobserved_sites] == [("fused_conv", "relu")]
    assert "FusedConv" in report.unobserved_sites[0].reason


def test_unit_axis_override_and_dynamic_spatial_dims() -> None:
    proto = _conv_model([helper.make_node("Relu", ["pre"], ["y"], name="act")], spatial=("H", "W"))
    data = _data(11, (3, 7, 5))
    pre = _pre(proto, data)
    report = scan(proto, data, batch_size=4)
    assert_site(report.sites[0], Expected(axis=1).add(pre))
    assert report.sites[0].shape == (6, 5, 3)
    last = scan(proto, data, batch_size=4, unit_axis=-1)
    assert last.thresholds.unit_axis == -1
    assert_site(last.sites[0], Expected(axis=3).add(pre))
    with pytest.raises(UsageError, match="--unit-axis 7"):
        scan(proto, data, unit_axis=7)


def test_shapes_unknown_to_inference_are_probed(monkeypatch: pytest.MonkeyPatch) -> None:
    from reludoctor.backends.onnx import discover

    monkeypatch.setattr(discover, "_value_types", lambda proto: {})
    proto = _conv_model([helper.make_node("Clip", ["pre", "lo", "hi"], ["y"], name="act")],
                        [const("lo", np.float32(0)), const("hi", np.float32(6))])
    data = _data(9)
    report = scan(proto, data, batch_size=4)
    assert_site(report.sites[0], Expected(axis=1, upper=6.0).add(_pre(proto, data)))


def test_float16_and_float64_activations() -> None:
    for elem, dtype in ((TensorProto.FLOAT16, np.float16), (TensorProto.DOUBLE, np.float64)):
        weight = RNG.standard_normal((4, 5)).astype(dtype)
        nodes = [helper.make_node("MatMul", ["x", "w"], ["pre"]),
                 helper.make_node("Relu", ["pre"], ["y"], name="act")]
        proto = model(nodes, [value("x", ["N", 4], elem)], [value("y", None, elem)], [const("w", weight)])
        data = RNG.standard_normal((13, 4)).astype(np.float32)  # float32 data, cast to the model's type
        report = scan(proto, data, batch_size=4)
        pre = intermediate(proto, {"x": data.astype(dtype)}, ["pre"])[0]
        assert_site(report.sites[0], Expected(axis=1).add(pre), rtol=1e-3)


def test_in_memory_model_is_not_modified_and_large_model_path(monkeypatch: pytest.MonkeyPatch) -> None:
    from reludoctor.backends.onnx import session, shapes

    proto = _conv_model([helper.make_node("Relu", ["pre"], ["y"], name="act")])
    before = proto.SerializeToString()
    data = _data(10)
    small = scan(proto, data, batch_size=4)
    assert proto.SerializeToString() == before
    monkeypatch.setattr(session, "MAX_PROTO_BYTES", 0)  # as if over protobuf's 2 GiB limit
    monkeypatch.setattr(shapes, "STRIP_FOR_INFERENCE_BYTES", 0)  # weights aside for inference
    large = scan(proto, data, batch_size=4)
    assert proto.SerializeToString() == before
    assert small.sites[0].activation_rate == large.sites[0].activation_rate
    assert small.sites[0].max_preactivation == large.sites[0].max_preactivation


def test_no_relu_at_all_is_an_input_error() -> None:
    proto = _conv_model([helper.make_node("Tanh", ["pre"], ["y"])])
    with pytest.raises(NoSitesError) as info:
        scan(proto, _data(3))
    assert info.value.exit_code == 2


def test_nested_if_and_local_function_sites_are_observed() -> None:
    inner_then = helper.make_graph([helper.make_node("Relu", ["x"], ["it"], name="inner_relu")],
                                   "inner_then", [], [value("it", ["N", 4])])
    inner_else = helper.make_graph([helper.make_node("Neg", ["x"], ["ie"])], "inner_else", [],
                                   [value("ie", ["N", 4])])
    outer_then = helper.make_graph(
        [helper.make_node("If", ["cond"], ["ot"], then_branch=inner_then, else_branch=inner_else)],
        "outer_then", [], [value("ot", ["N", 4])])
    outer_else = helper.make_graph([helper.make_node("Identity", ["x"], ["oe"])], "outer_else", [],
                                   [value("oe", ["N", 4])])
    function = helper.make_function(
        "custom", "Block", ["a"], ["b"],
        [helper.make_node("Add", ["a", "a"], ["a2"]), helper.make_node("Relu", ["a2"], ["b"], name="fn_relu")],
        opset_imports=[helper.make_opsetid("", 17)])
    nodes = [helper.make_node("ReduceSum", ["x"], ["total"], keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"]),
             helper.make_node("If", ["cond"], ["branch"], then_branch=outer_then, else_branch=outer_else),
             helper.make_node("Block", ["branch"], ["y"], domain="custom")]
    proto = model(nodes, [value("x", ["N", 4])], [value("y", ["N", 4])], [const("zero", np.float32(0))])
    proto.opset_import.append(helper.make_opsetid("custom", 1))
    proto.functions.append(function)
    data = RNG.standard_normal((16, 4)).astype(np.float32)
    data[8:] -= 2.0  # second batch: outer else
    data[:8] += 2.0
    report = scan(proto, data, batch_size=8)
    assert [s.name for s in report.sites][0] == "inner_relu"
    assert len(report.sites) == 2 and "fn_relu" in report.sites[1].name
    assert_site(report.sites[0], Expected(axis=1).add(data[:8]))
    branch = np.concatenate([np.maximum(data[:8], 0), data[8:]]).astype(np.float64)
    assert_site(report.sites[1], Expected(axis=1).add(2 * branch))


def test_hard_sigmoid_clip_variant_and_constant_relu_are_not_sites() -> None:
    nodes = [
        helper.make_node("Mul", ["pre", "sixth"], ["scaled"]),
        helper.make_node("Add", ["scaled", "half"], ["shifted"]),
        helper.make_node("Clip", ["shifted", "zero", "one"], ["gate"], name="hsig"),  # Clip(x/6 + .5, 0, 1)
        helper.make_node("Mul", ["pre", "gate"], ["hs"]),
        helper.make_node("Relu", ["sixth"], ["const_relu"], name="relu_of_a_constant"),
        helper.make_node("Add", ["hs", "const_relu"], ["pre2"]),
        helper.make_node("Relu", ["pre2"], ["y"], name="real"),
    ]
    inits = [const("sixth", np.float32(1 / 6)), const("half", np.float32(0.5)),
             const("zero", np.float32(0)), const("one", np.float32(1))]
    report = scan(_conv_model(nodes, inits, opset=13), _data(6))
    assert [s.name for s in report.sites] == ["real"]
    assert any(w.startswith("1 hard-swish/hard-sigmoid gate(s)") for w in report.warnings)


def test_evidence_and_fix_read_the_discovery_s_site_names() -> None:
    """Two Relu nodes with the same name (onnxruntime refuses that in one graph; a main graph and
    an If branch may) and a Clip to -1 (no site) with it too: discovery names the Relus 'act#1',
    'act#2'; the evidence and the fixer find each under that name, with its producer."""
    from reludoctor.backends.onnx.discover import discover_model, site_nodes
    from reludoctor.backends.onnx.evidence import from_onnx

    w2 = RNG.standard_normal((4, 6, 1, 1)).astype(np.float32)
    proto = _conv_model([
        helper.make_node("Clip", ["pre", "minus_one"], ["clipped"], name="act"),
        helper.make_node("Relu", ["pre"], ["a"], name="act"),
        helper.make_node("Conv", ["a", "w2"], ["pre2"], name="conv2"),
        helper.make_node("Relu", ["pre2"], ["y"], name="act"),
    ], [const("minus_one", np.float32(-1)), const("w2", w2)])
    names = [site.name for site in discover_model(proto).discovery.sites]
    assert names == ["act#1", "act#2"]
    assert {name: node.output[0] for name, (_, node) in site_nodes(proto).items()} == {
        "act#1": "a", "act#2": "y"}
    evidence = from_onnx(proto, names)
    assert {name: found.layer for name, found in evidence.items()} == {"act#1": "conv", "act#2": "conv2"}
