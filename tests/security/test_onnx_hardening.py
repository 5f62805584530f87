"""ONNX model files are untrusted input (issue 10): only regular files are read, sizes declared by
the file are bounded before anything is allocated, and external data never leaves the model's
folder, whichever graph, function or subgraph holds the tensor.

Fuzzing found: a FIFO as the model blocked forever; a symlink loop as the model was exit 3; an
input dimension of 2**62 was exit 3; a fixed batch of 10**7 padded every batch to 10**7 rows (past
6 GB); external-data locations inside subgraphs of local functions were not checked.

Models are built in code with ``onnx.helper``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from reludoctor import safeio
from reludoctor.backends.detect import detect_format
from reludoctor.backends.onnx import loader as onnx_loader
from reludoctor.data.calibration import MAX_FIXED_BATCH, MAX_PADDED_BATCH_BYTES, MAX_SAMPLE_BYTES, load_calibration
from reludoctor.errors import DataError, ModelLoadError
from tests.security.kit import CALIB, CNN_ONNX, cli, one_line_error, returns, run_cli

FLOAT = TensorProto.FLOAT


# ----------------------------------------------------------------------------------- helpers

def relu_model(shape: list, path: Path) -> Path:
    """x -> Relu -> y, x declared with ``shape`` (ints, or strings for symbolic dimensions)."""
    x = helper.make_tensor_value_info("x", FLOAT, shape)
    y = helper.make_tensor_value_info("y", FLOAT, shape)
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"], name="relu")], "g", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    path.write_bytes(model.SerializeToString())
    return path


def external_tensor(name: str, location: str, dims: tuple[int, ...] = (1,)) -> TensorProto:
    tensor = TensorProto(name=name, data_type=FLOAT, dims=list(dims))
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def function_model(location: str, *, in_branch: bool) -> onnx.ModelProto:
    """main: x -> local.F -> Relu -> y. F's body holds a Constant whose value is external data at
    ``location``: inside an If branch of the body (``in_branch``) or as a node of the body."""
    constant = helper.make_node("Constant", [], ["c"], value=external_tensor("evil", location))
    if in_branch:
        then_graph = helper.make_graph([constant], "then", [],
                                       [helper.make_tensor_value_info("c", FLOAT, [1])])
        zero = helper.make_node("Constant", [], ["z"], value=numpy_helper.from_array(
            np.zeros(1, np.float32), "zero"))
        else_graph = helper.make_graph([zero], "else", [],
                                       [helper.make_tensor_value_info("z", FLOAT, [1])])
        body = [
            helper.make_node("Constant", [], ["cond"], value=numpy_helper.from_array(
                np.array(True), "cond")),
            helper.make_node("If", ["cond"], ["b"], then_branch=then_graph, else_branch=else_graph),
            helper.make_node("Add", ["x", "b"], ["y"]),
        ]
    else:
        body = [constant, helper.make_node("Add", ["x", "c"], ["y"])]
    function = helper.make_function("local", "F", ["x"], ["y"], body,
                                    opset_imports=[helper.make_opsetid("", 17)])
    graph = helper.make_graph(
        [helper.make_node("F", ["x"], ["f"], domain="local", name="call"),
         helper.make_node("Relu", ["f"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", FLOAT, ["N", 4])])
    model = helper.make_model(graph, functions=[function], opset_imports=[
        helper.make_opsetid("", 17), helper.make_opsetid("local", 1)])
    model.ir_version = 10
    return model


@pytest.fixture
def no_external_read(monkeypatch: pytest.MonkeyPatch) -> list:
    """Fail if onnx's external-data loader is ever reached (the check must refuse first)."""
    import onnx.external_data_helper as helper_module

    calls: list = []

    def refuse(*args: Any, **kwargs: Any) -> None:
        calls.append(args)
        raise AssertionError("external data was read before the location check")

    monkeypatch.setattr(helper_module, "load_external_data_for_model", refuse)
    return calls


# ---------------------------------------------------------------- 1. regular files only


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_as_the_model_is_exit_2_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "model.onnx"
    os.mkfifo(fifo)
    with pytest.raises(ModelLoadError, match="FIFO"):
        returns(lambda: detect_format(fifo))
    with pytest.raises(ModelLoadError, match="FIFO"):
        returns(lambda: onnx_loader.load_path(fifo))
    done = run_cli("scan", fifo, "--data", CALIB)
    one_line_error(done.returncode, done.stderr, str(fifo), "FIFO")


def test_symlink_loop_as_the_model_is_exit_2(tmp_path: Path) -> None:
    loop = tmp_path / "loop.onnx"
    os.symlink(loop.name, loop)
    with pytest.raises(ModelLoadError, match="symlink loop"):
        detect_format(loop)
    result = cli("scan", loop, "--data", CALIB)
    one_line_error(result.exit_code, result.stderr, str(loop), "symlink loop")


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")
def test_fifo_as_external_data_is_refused(tmp_path: Path) -> None:
    model = onnx.load(str(CNN_ONNX))
    name = model.graph.initializer[0].name
    model.graph.initializer[0].CopyFrom(external_tensor(name, "w.bin",
                                                        tuple(model.graph.initializer[0].dims)))
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    os.mkfifo(tmp_path / "w.bin")
    with pytest.raises(ModelLoadError, match="w.bin.*not a regular file"):
        returns(lambda: onnx_loader.load_path(path))


# ------------------------------------------------------------- 4. sizes from the file


@pytest.mark.parametrize("shape", [["N", 2 ** 62], [2 ** 62, 8], ["N", 2 ** 31, 2 ** 31]],
                         ids=["feature", "batch", "product"])
def test_huge_input_dimension_is_exit_2(tmp_path: Path, shape: list) -> None:
    path = relu_model(shape, tmp_path / "huge.onnx")
    with pytest.raises(ModelLoadError):
        onnx_loader.load_path(path)
    np.save(tmp_path / "x.npy", np.zeros((4, 8), np.float32))
    for extra in ([], ["--data", tmp_path / "x.npy"], ["--input-shape", "8"]):
        result = cli("scan", path, *extra)
        one_line_error(result.exit_code, result.stderr, str(path))


def test_per_sample_limit_is_documented() -> None:
    assert MAX_SAMPLE_BYTES == 2 ** 31
    assert MAX_FIXED_BATCH == 65_536
    assert MAX_PADDED_BATCH_BYTES == 2 ** 30


def test_fixed_batch_of_ten_million_is_refused_before_padding(tmp_path: Path) -> None:
    path = relu_model([10 ** 7, 1, 8, 8], tmp_path / "fixed.onnx")
    with pytest.raises(ModelLoadError, match=r"fixed batch of 10,000,000"):
        onnx_loader.load_path(path)
    result = cli("scan", path, "--data", CALIB)
    line = one_line_error(result.exit_code, result.stderr, str(path), "fixed batch of 10,000,000",
                          f"{MAX_FIXED_BATCH:,}", "dynamic batch")
    assert "padded" in line


def test_fixed_batch_at_the_limit_with_huge_declared_samples_is_refused(tmp_path: Path) -> None:
    # 4,096 rows x 1 MiB declared per sample = 4 GiB per padded batch: over the byte limit
    path = relu_model([4096, 262_144], tmp_path / "fixed.onnx")
    with pytest.raises(ModelLoadError, match="fixed batch of 4,096"):
        onnx_loader.load_path(path)


def test_padding_is_bounded_by_the_real_sample_size(tmp_path: Path) -> None:
    """A fixed batch under the row limit with symbolic feature dimensions: only the data shows the
    padded size; it is refused before padding, naming the limit (nothing allocated)."""
    import reludoctor

    path = relu_model([4096, "F"], tmp_path / "fixed.onnx")
    assert onnx_loader.load_path(path).fixed_batch == 4096
    features = MAX_PADDED_BATCH_BYTES // (4 * 4096) + 1  # one more float than the limit allows
    np.save(tmp_path / "x.npy", np.ones((2, features), np.float32))
    with pytest.raises(DataError, match=r"padding.*4,096.*limit"):
        reludoctor.scan(path, tmp_path / "x.npy", device="cpu", on_warning=lambda message: None)


def test_padding_refuses_a_fixed_batch_over_the_row_limit_whatever_the_loader() -> None:
    """``check_padding`` (the ONNX feed and the PyTorch batch loop both call it before padding)
    also holds the row limit, for models whose loader did not check it."""
    import torch

    from reludoctor.data.calibration import check_padding

    with pytest.raises(DataError, match="fixed batch of 10,000,000"):
        check_padding((torch.zeros(3, 8),), 10 ** 7, "x.npy")
    check_padding((torch.zeros(3, 8), np.zeros((3, 2), np.int64)), MAX_FIXED_BATCH, "x.npy")


def test_a_small_fixed_batch_still_pads(tmp_path: Path) -> None:
    import reludoctor

    path = relu_model([4, 8], tmp_path / "fixed4.onnx")
    x = np.random.default_rng(0).standard_normal((10, 8)).astype(np.float32)
    x[:, 3] = -1.0  # unit 3 never fires: the oracle
    np.save(tmp_path / "x.npy", x)
    report = reludoctor.scan(path, tmp_path / "x.npy", device="cpu", on_warning=lambda m: None)
    assert report.calibration.samples == 10
    assert list(report.sites[0].dead_units) == [int(u) for u in np.flatnonzero(x.max(0) <= 0)]


def test_negative_dimension_reads_as_dynamic(tmp_path: Path) -> None:
    path = relu_model([-1, 8], tmp_path / "neg.onnx")
    loaded = onnx_loader.load_path(path)
    assert loaded.fixed_batch is None and loaded.inputs[0].shape == (None, 8)


# --------------------------------------------------- 5. external data in local functions


@pytest.mark.parametrize("in_branch", [True, False], ids=["if-branch-in-function", "function-node"])
def test_external_data_escaping_from_a_function_is_refused(tmp_path: Path, in_branch: bool,
                                                           no_external_read: list) -> None:
    folder = tmp_path / "models" / "inner"
    folder.mkdir(parents=True)
    path = folder / "f.onnx"
    path.write_bytes(function_model("../../etc/passwd", in_branch=in_branch).SerializeToString())
    with pytest.raises(ModelLoadError, match=r"'evil'.*\.\./\.\./etc/passwd.*leaves the model's folder"):
        onnx_loader.load_path(path)
    assert no_external_read == []
    result = cli("scan", path, "--data", CALIB)
    one_line_error(result.exit_code, result.stderr, "../../etc/passwd", "leaves the model's folder")


def test_absolute_external_data_in_a_function_branch_is_refused(tmp_path: Path,
                                                                no_external_read: list) -> None:
    path = tmp_path / "f.onnx"
    path.write_bytes(function_model("/etc/passwd", in_branch=True).SerializeToString())
    with pytest.raises(ModelLoadError, match="absolute path"):
        onnx_loader.load_path(path)


def test_in_memory_model_with_function_external_data_is_refused() -> None:
    with pytest.raises(ModelLoadError, match="external data"):
        onnx_loader.from_object(function_model("w.bin", in_branch=True))


def test_every_tensor_is_walked() -> None:
    model = function_model("x.bin", in_branch=True)
    names = {t.name for t in onnx_loader._tensors(model)}
    assert {"evil", "zero", "cond"} <= names


# ------------------------------------------------------------------ 6. the input ledger


def test_model_and_external_data_are_noted_in_the_ledger(tmp_path: Path) -> None:
    model = onnx.load(str(CNN_ONNX))
    path = tmp_path / "ext.onnx"
    onnx.save_model(model, str(path), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="ext.data", size_threshold=0)
    assert (tmp_path / "ext.data").is_file()
    with safeio.ledger():  # the model alone: every path through detect_format notes it
        assert detect_format(path) == "onnx"
        assert safeio.input_at(path) is not None
        assert safeio.input_at(tmp_path / "ext.data") is None
    with safeio.ledger():
        loaded = onnx_loader.load_path(path)
        assert loaded.format == "onnx"
        assert safeio.input_at(path) is not None
        assert safeio.input_at(tmp_path / "ext.data") is not None
        load_calibration(CALIB, loaded.inputs)
        assert safeio.input_at(CALIB) is not None
        assert safeio.input_at(tmp_path / "report.json") is None
