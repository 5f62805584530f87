"""ONNX: graphs built with onnx.helper, fixed models checked with onnx.checker and onnxruntime
against the original model and independent numpy computations."""

from __future__ import annotations

import math

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

RNG = np.random.default_rng(7)


def _w(*shape, rng=None):
    fan_in = int(np.prod(shape[1:])) if len(shape) > 1 else 1
    return ((rng or RNG).standard_normal(shape) / math.sqrt(fan_in)).astype(np.float32)


def _model(nodes, inits, in_shape, out_shape, path):
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", *in_shape])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", *out_shape])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _inits(path):
    return {t.name: numpy_helper.to_array(t) for t in onnx.load(str(path)).graph.initializer}


def _fix(path, x, out, strategy, **kwargs):
    from reludoctor.fix import fix

    return fix(str(path), x, str(out), strategy=strategy, **kwargs)


def _cnn(tmp_path):
    """Conv(2->4, 3x3, pad 1) -> BatchNormalization -> Relu 'act' (unit 1 dead: beta -100)
    -> Flatten (unit u owns 16 features of the 4x4 map) -> Gemm(transB=1, 64->3)."""
    rng = np.random.default_rng(5)

    def _w(*shape):
        return globals()["_w"](*shape, rng=rng)

    bn_b = _w(4)
    bn_b[1] = -100.0
    inits = {"W": _w(4, 2, 3, 3), "B": _w(4), "g": np.ones(4, np.float32), "b": bn_b,
             "m": np.zeros(4, np.float32), "v": np.ones(4, np.float32), "F": _w(3, 64), "C": _w(3)}
    nodes = [helper.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c", "g", "b", "m", "v"], ["n"], name="bn"),
             helper.make_node("Relu", ["n"], ["r"], name="act"),
             helper.make_node("Flatten", ["r"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "F", "C"], ["y"], name="fc", transB=1)]
    return _model(nodes, inits, [2, 4, 4], [3], tmp_path / "cnn.onnx")


def _mlp(tmp_path):
    """MatMul(6->8)+Add -> Relu 'act1' (dead 0, 6) -> Gemm(transB=0, 8->5) -> Relu 'act2'
    (dead 2) -> MatMul(5->3) 'out'."""
    rng = np.random.default_rng(11)

    def _w(*shape):
        return globals()["_w"](*shape, rng=rng)

    b1 = _w(8)
    b1[[0, 6]] = -100.0
    c2 = _w(5)
    c2[2] = -100.0
    inits = {"W1": _w(8, 6).T.copy(), "B1": b1, "W2": _w(5, 8).T.copy(), "C2": c2, "W3": _w(3, 5).T.copy()}
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "B1"], ["p1"], name="add1"),
             helper.make_node("Relu", ["p1"], ["a1"], name="act1"),
             helper.make_node("Gemm", ["a1", "W2", "C2"], ["p2"], name="fc2"),
             helper.make_node("Relu", ["p2"], ["a2"], name="act2"),
             helper.make_node("MatMul", ["a2", "W3"], ["y"], name="out")]
    return _model(nodes, inits, [6], [3], tmp_path / "mlp.onnx")


def _relu(v):
    return np.maximum(v, 0)


def test_onnx_prune_cnn_through_flatten(tmp_path):
    path = _cnn(tmp_path)
    x = np.random.default_rng(1).standard_normal((24, 2, 4, 4)).astype(np.float32)
    out = tmp_path / "cnn_pruned.onnx"
    summary = _fix(path, x, out, "prune-dead")
    assert [(s.site, s.action, s.targets) for s in summary.sites] == [("act", "pruned", (1,))]
    before = 4 * 2 * 9 + 4 + 4 * 4 + 3 * 64 + 3
    after = 3 * 2 * 9 + 3 + 3 * 4 + 3 * 48 + 3
    assert (summary.params_before, summary.params_after) == (before, after)
    assert summary.macs_before == 16 * 4 * 18 + 3 * 64
    assert summary.macs_after == 16 * 3 * 18 + 3 * 48
    onnx.checker.check_model(str(out), full_check=True)
    np.testing.assert_allclose(_run(out, x), _run(path, x), rtol=1e-5, atol=1e-5)
    inits = _inits(out)
    assert inits["W"].shape == (3, 2, 3, 3) and inits["F"].shape == (3, 48)
    np.testing.assert_array_equal(inits["F"], np.delete(_inits(path)["F"], range(16, 32), axis=1))
    assert summary.verification.equal and summary.rescan["fixed_sites"] == {"act": []}


def test_onnx_prune_mlp_matmul_gemm(tmp_path):
    path = _mlp(tmp_path)
    x = np.random.default_rng(1).standard_normal((40, 6)).astype(np.float32)
    out = tmp_path / "mlp_pruned.onnx"
    summary = _fix(path, x, out, "prune-dead")
    # independent numpy computation of the original model and its dead units
    w = _inits(path)
    p1 = x @ w["W1"] + w["B1"]
    p2 = _relu(p1) @ w["W2"] + w["C2"]
    dead1 = tuple(int(u) for u in np.flatnonzero(p1.max(0) <= 0))
    dead2 = tuple(int(u) for u in np.flatnonzero(p2.max(0) <= 0))
    assert {0, 6} <= set(dead1) and 2 in dead2
    assert [(s.site, s.action, s.targets) for s in summary.sites] == [
        ("act1", "pruned", dead1), ("act2", "pruned", dead2)]
    k1, k2 = 8 - len(dead1), 5 - len(dead2)
    before = 6 * 8 + 8 + 8 * 5 + 5 + 5 * 3
    after = 6 * k1 + k1 + k1 * k2 + k2 + k2 * 3
    assert (summary.params_before, summary.params_after) == (before, after)
    expected = _relu(p2) @ w["W3"]
    np.testing.assert_allclose(_run(out, x), expected, rtol=1e-5, atol=1e-5)


def test_onnx_residual_is_skipped_with_a_reason(tmp_path):
    """Conv -> Relu 'a' (unit 0 dead) -> Conv -> Add(with 'a') -> Relu 'b' -> GlobalAveragePool."""
    rng = np.random.default_rng(6)
    b = _w(3, rng=rng)
    b[0] = -100.0
    inits = {"W1": _w(3, 3, 1, 1, rng=rng), "B1": b, "W2": _w(3, 3, 1, 1, rng=rng)}
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c1"], name="conv1"),
             helper.make_node("Relu", ["c1"], ["a"], name="a"),
             helper.make_node("Conv", ["a", "W2"], ["c2"], name="conv2"),
             helper.make_node("Add", ["c2", "a"], ["s"], name="add"),
             helper.make_node("Relu", ["s"], ["r"], name="b"),
             helper.make_node("GlobalAveragePool", ["r"], ["y"], name="gap")]
    path = _model(nodes, inits, [3, 2, 2], [3, 1, 1], tmp_path / "res.onnx")
    x = np.random.default_rng(1).standard_normal((16, 3, 2, 2)).astype(np.float32)
    out = tmp_path / "res_pruned.onnx"
    summary = _fix(path, x, out, "prune-dead")
    site = next(s for s in summary.sites if s.site == "a")
    assert site.action == "skipped" and "Add" in site.reason
    np.testing.assert_allclose(_run(out, x), _run(path, x), rtol=1e-6)


def test_onnx_leaky_against_numpy(tmp_path):
    path = _mlp(tmp_path)
    x = np.random.default_rng(1).standard_normal((20, 6)).astype(np.float32)
    out = tmp_path / "mlp_leaky.onnx"
    summary = _fix(path, x, out, "leaky", alpha=0.1, sites=["act2"])
    assert [(s.site, s.action) for s in summary.sites] == [("act2", "leaky")]
    ops = [n.op_type for n in onnx.load(str(out)).graph.node]
    assert ops.count("LeakyRelu") == 1 and ops.count("Relu") == 1
    w = _inits(path)
    p2 = _relu(x @ w["W1"] + w["B1"]) @ w["W2"] + w["C2"]
    expected = np.where(p2 > 0, p2, 0.1 * p2) @ w["W3"]
    np.testing.assert_allclose(_run(out, x), expected, rtol=1e-5, atol=1e-5)
    assert not summary.verification.equal and not summary.verification.lossless_expected


def test_onnx_reinit(tmp_path):
    path = _cnn(tmp_path)
    x = np.random.default_rng(1).standard_normal((24, 2, 4, 4)).astype(np.float32)
    out = tmp_path / "cnn_reinit.onnx"
    summary = _fix(path, x, out, "reinit", dormant_tau=0.0)  # tau 0: dead units only
    site = summary.sites[0]
    assert site.action == "reinit" and site.targets == (1,)
    np.testing.assert_allclose(_run(out, x), _run(path, x), rtol=1e-5, atol=1e-6)
    before, after = _inits(path), _inits(out)
    units = list(site.targets)
    assert not np.array_equal(after["W"][units], before["W"][units])
    assert np.all(after["B"][units] == 0) and np.all(after["b"][units] == 0)
    assert np.all(after["g"][units] == 1) and np.all(after["v"][units] == 1)
    for u in units:
        assert np.all(after["F"][:, u * 16:(u + 1) * 16] == 0)
    assert summary.verification.equal


def test_onnx_output_must_be_onnx(tmp_path):
    from reludoctor.errors import UsageError

    path = _mlp(tmp_path)
    with pytest.raises(UsageError, match="written as .onnx"):
        _fix(path, np.zeros((4, 6), np.float32), tmp_path / "x.pt2", "prune-dead")
