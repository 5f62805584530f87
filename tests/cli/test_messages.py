"""Issue 11, section 4: messages a user can act on.

Each test builds its own model, runs the CLI (or the library) the way a user would, and checks
the message against what the test knows independently (the shapes it built, the ops it used)."""

from __future__ import annotations

import numpy as np
import pytest
from reludoctor_cli_checks import assert_input_error

# --- onnxruntime errors keep their decisive part ------------------------------------------


def _onnx(path, nodes, inputs, outputs, initializers=()):  # noqa: ANN001, ANN202
    import onnx
    from onnx import TensorProto, helper

    def info(name, shape):  # noqa: ANN001, ANN202
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)

    graph = helper.make_graph(nodes, "g", [info(n, s) for n, s in inputs],
                              [info(n, None) for n in outputs], list(initializers))
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_ort_message_keeps_the_lines_after_the_first():
    """The real onnxruntime exception for a wrong fixed dimension: the indices and sizes are on
    its second line; the C++ location of a kernel failure is dropped, its status message kept."""
    import onnxruntime
    from onnx import TensorProto, helper

    from reludoctor.instrument.onnx_graph import _ort_message

    graph = helper.make_graph(
        [helper.make_node("Relu", ["state"], ["r"]), helper.make_node("Reshape", ["r", "s"], ["y"])],
        "g", [helper.make_tensor_value_info("state", TensorProto.FLOAT, [2, "N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [helper.make_tensor("s", TensorProto.INT64, [2], [-1, 7])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    session = onnxruntime.InferenceSession(model.SerializeToString())
    quiet = onnxruntime.RunOptions()
    quiet.log_severity_level = 4
    with pytest.raises(Exception) as wrong_dim:
        session.run(None, {"state": np.zeros((32, 2, 4), np.float32)}, quiet)
    assert "\n" in str(wrong_dim.value)  # the premise: onnxruntime spreads it over lines
    message = _ort_message(wrong_dim.value)
    assert "\n" not in message
    assert "index: 0 Got: 32 Expected: 2" in message
    assert "state" in message
    with pytest.raises(Exception) as kernel:
        session.run(None, {"state": np.zeros((2, 3, 4), np.float32)}, quiet)
    message = _ort_message(kernel.value)
    assert "Input shape:{2,3,4}, requested shape:{-1,7}" in message
    assert "Reshape" in message
    assert "onnxruntime_src" not in message and "ReshapeHelper(" not in message


def test_onnx_wrong_fixed_dimension_names_index_got_expected(cli, tmp_path):
    """A second input with a fixed leading dimension (a recurrent state [2, 1, 4]) fed 32 rows:
    onnxruntime's decisive line ``index: 0 Got: 32 Expected: 2`` reaches the user."""
    from onnx import helper

    model = _onnx(tmp_path / "state.onnx",
                  [helper.make_node("Relu", ["x"], ["y"], name="relu"),
                   helper.make_node("Relu", ["state"], ["z"], name="relu_state")],
                  [("x", ["N", 4]), ("state", [2, 1, 4])], ["y", "z"])
    rng = np.random.default_rng(0)
    data = tmp_path / "chunks.npz"
    np.savez(data, x=rng.standard_normal((32, 4)).astype(np.float32),
             state=rng.standard_normal((32, 1, 4)).astype(np.float32))
    result = cli(model, "--data", data)
    line = assert_input_error(result.exit_code, result.stdout, result.stderr, str(data))
    assert "state" in line
    assert "Got: 32 Expected: 2" in line


def test_onnx_kernel_failure_is_one_line_without_onnxruntime_log(run_cli, tmp_path):
    """A node that fails at run time: one line naming the node and the shapes, and onnxruntime's
    own log line (written to the process's stderr by C++) does not appear next to it."""
    from onnx import TensorProto, helper

    model = _onnx(tmp_path / "reshape.onnx",
                  [helper.make_node("Relu", ["x"], ["r"], name="relu"),
                   helper.make_node("Reshape", ["r", "shape"], ["y"], name="bad_reshape")],
                  [("x", ["N", 4])], ["y"],
                  [helper.make_tensor("shape", TensorProto.INT64, [2], [-1, 7])])
    data = tmp_path / "x.npy"
    np.save(data, np.random.default_rng(0).standard_normal((32, 4)).astype(np.float32))
    result = run_cli("scan", model, "--data", data)
    line = assert_input_error(result.returncode, result.stdout, result.stderr, str(data), "bad_reshape")
    assert "Input shape:{32,4}, requested shape:{-1,7}" in line
    assert "onnxruntime_src" not in line
