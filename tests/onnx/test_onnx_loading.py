"""Loading .onnx files: inputs, fixed batch, external data (and its refusal), corrupt files, CLI."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from reludoctor.backends import detect
from reludoctor.backends.onnx import loader as onnx_loader
from reludoctor.errors import ModelLoadError, UsageError
from tests.onnx.onnx_kit import Expected, assert_site, const, model, save, scan, value

ROOT = Path(__file__).resolve().parents[2]
RNG = np.random.default_rng(1)


def _mlp(batch: int | str = "N") -> onnx.ModelProto:
    weight = RNG.standard_normal((8, 16)).astype(np.float32)
    bias = RNG.standard_normal(16).astype(np.float32)
    bias[3] = -100.0
    nodes = [helper.make_node("MatMul", ["x", "w"], ["mm"]), helper.make_node("Add", ["mm", "b"], ["pre"]),
             helper.make_node("Relu", ["pre"], ["y"], name="relu")]
    return model(nodes, [value("x", [batch, 8])], [value("y", [batch, 16])],
                 [const("w", weight), const("b", bias)])


def _weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}


def _cli(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "reludoctor", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_input_specs_and_fixed_batch(tmp_path: Path) -> None:
    proto = _mlp()
    proto.graph.input.append(value("ids", ["N", 5], TensorProto.INT64))  # unused, but an input
    proto.graph.input.append(value("w", [8, 16]))  # IR 3 style: an initializer listed as input
    loaded = onnx_loader.load_path(save(proto, tmp_path / "m.onnx"))
    assert loaded.format == "onnx"
    assert [(s.name, s.shape, s.dtype) for s in loaded.inputs] == [
        ("x", (None, 8), "float32"), ("ids", (None, 5), "int64")]
    assert loaded.fixed_batch is None
    assert loaded.path == str(tmp_path / "m.onnx") and len(loaded.sha256) == 64
    fixed = onnx_loader.load_path(save(_mlp(batch=16), tmp_path / "f.onnx"))
    assert fixed.fixed_batch == 16 and fixed.inputs[0].shape == (16, 8)
    from_proto = onnx_loader.from_object(proto)
    assert from_proto.path is None and from_proto.sha256 is None


def test_onnx_detected_by_content_not_extension(tmp_path: Path) -> None:
    path = save(_mlp(), tmp_path / "model.bin")
    assert detect.detect_format(path) == detect.ONNX
    report = scan(path, RNG.standard_normal((9, 8)).astype(np.float32))
    assert report.model.format == "onnx" and report.model.path == str(path)
    assert report.model.sha256 == onnx_loader.sha256_of(path)
    # a writer that puts producer_name before ir_version still reads as ONNX
    head = onnx.ModelProto(producer_name="someone").SerializeToString()
    (tmp_path / "other.bin").write_bytes(head + _mlp().SerializeToString())
    assert detect.detect_format(tmp_path / "other.bin") == detect.ONNX


def test_external_data_beside_the_model_is_loaded(tmp_path: Path) -> None:
    proto = _mlp()
    weights = _weights(proto)
    folder = tmp_path / "model"
    (folder / "weights").mkdir(parents=True)
    onnx.save_model(proto, str(folder / "m.onnx"), save_as_external_data=True,
                    all_tensors_to_one_file=True, location="weights/m.data", size_threshold=0)
    assert (folder / "weights" / "m.data").exists()
    data = RNG.standard_normal((12, 8)).astype(np.float32)
    report = scan(folder / "m.onnx", data, batch_size=5)
    expected = Expected(axis=1).add(data.astype(np.float64) @ weights["w"] + weights["b"])
    assert_site(report.site("relu"), expected)


def _external_to(tmp_path: Path, location: str) -> Path:
    """A model whose weight claims external data at ``location`` (nothing is written there)."""
    proto = _mlp()
    folder = tmp_path / "model"
    folder.mkdir(exist_ok=True)
    tensor = next(t for t in proto.graph.initializer if t.name == "w")
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    for key, text in (("location", location), ("offset", "0"), ("length", "512")):
        entry = tensor.external_data.add()
        entry.key, entry.value = key, text
    path = folder / "m.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _escaping_symlink(tmp_path: Path) -> str:
    outside = tmp_path / "secret.bin"
    outside.write_bytes(b"\0" * 512)
    (tmp_path / "model").mkdir(exist_ok=True)
    os.symlink(outside, tmp_path / "model" / "w.bin")
    return "w.bin"


ESCAPES = {
    "parent-traversal": lambda tmp: "../../etc/hostname",
    "absolute": lambda tmp: "/etc/hostname",
    "hidden-traversal": lambda tmp: "sub/../../secret.bin",
    "symlink-out": _escaping_symlink,
}


@pytest.mark.parametrize("case", sorted(ESCAPES))
def test_external_data_outside_the_folder_is_refused_before_reading(
        case: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import onnx.external_data_helper as helper_module

    location = ESCAPES[case](tmp_path)
    path = _external_to(tmp_path, location)
    read = []
    monkeypatch.setattr(helper_module, "load_external_data_for_model",
                        lambda *a, **k: read.append(a))
    with pytest.raises(ModelLoadError) as info:
        onnx_loader.load_path(path)
    assert read == []  # refused before any external data was read
    assert "model's folder" in info.value.one_line() and info.value.exit_code == 2


def test_external_data_traversal_cli_exit_2_one_line(tmp_path: Path) -> None:
    path = _external_to(tmp_path, "../../etc/hostname")
    np.save(tmp_path / "x.npy", RNG.standard_normal((4, 8)).astype(np.float32))
    result = _cli("scan", path, "--data", tmp_path / "x.npy", cwd=tmp_path)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith("reludoctor: error:") and "../../etc/hostname" in lines[0]
    assert result.stdout == ""


def test_missing_external_data_file(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="is missing"):
        onnx_loader.load_path(_external_to(tmp_path, "absent.bin"))


def test_in_memory_model_with_external_data_is_refused(tmp_path: Path) -> None:
    proto = onnx.load_model(str(_external_to(tmp_path, "w.bin")), load_external_data=False)
    with pytest.raises(ModelLoadError, match="external data"):
        onnx_loader.from_object(proto)


@pytest.mark.parametrize("content", ["random", "truncated", "text", "empty-graph"])
def test_corrupt_or_not_onnx_is_a_load_error(content: str, tmp_path: Path) -> None:
    good = _mlp().SerializeToString()
    raw = {
        "random": bytes(RNG.integers(0, 256, 3000, dtype=np.uint8)),
        "truncated": good[: len(good) // 2],
        "text": b"this is not a model\n" * 10,
        "empty-graph": onnx.ModelProto(ir_version=8).SerializeToString() + b"\x08\x08",
    }[content]
    path = tmp_path / "bad.onnx"
    path.write_bytes(raw)
    with pytest.raises(ModelLoadError) as info:
        scan(path, RNG.standard_normal((4, 8)).astype(np.float32))
    assert info.value.exit_code == 2
    assert str(path) in str(info.value)


def test_model_onnxruntime_rejects_and_too_old_opset(tmp_path: Path) -> None:
    broken = _mlp()
    del broken.graph.initializer[0]  # parses, but "w" is defined nowhere
    with pytest.raises(ModelLoadError, match="onnxruntime cannot load the model") as info:
        scan(save(broken, tmp_path / "broken.onnx"), RNG.standard_normal((4, 8)).astype(np.float32))
    assert info.value.exit_code == 2
    old = _mlp()
    old.opset_import[0].version = 6
    with pytest.raises(ModelLoadError, match="opset 6 is too old"):
        onnx_loader.load_path(save(old, tmp_path / "old.onnx"))


def test_corrupt_onnx_cli_exit_2(tmp_path: Path) -> None:
    good = _mlp().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(good[: len(good) * 2 // 3])
    np.save(tmp_path / "x.npy", RNG.standard_normal((4, 8)).astype(np.float32))
    result = _cli("scan", "cut.onnx", "--data", "x.npy", cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_cli_scan_onnx_json(tmp_path: Path) -> None:
    save(_mlp(), tmp_path / "m.onnx")
    np.save(tmp_path / "x.npy", RNG.standard_normal((20, 8)).astype(np.float32))
    result = _cli("scan", "m.onnx", "--data", "x.npy", "--json", "-", "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import json

    report = json.loads(result.stdout)
    assert report["model"]["format"] == "onnx" and report["model"]["method"] == "onnxruntime"
    assert report["sites"][0]["name"] == "relu" and 3 in report["sites"][0]["dead_units"]
    try:
        from reludoctor.report.schema import validate
    except ImportError:  # pragma: no cover
        return
    validate(report)


def test_cuda_without_the_provider_is_a_usage_error(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime
    import torch

    from reludoctor.backends.onnx import observer, session
    from reludoctor.data.calibration import load_calibration

    loaded = onnx_loader.from_object(_mlp())
    calibration = load_calibration(RNG.standard_normal((4, 8)).astype(np.float32), loaded.inputs)
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    with pytest.raises(UsageError, match="no CUDA execution provider"):
        observer.observe_onnx(loaded, calibration, device=torch.device("cuda"), batch_size=4,
                              unit_axis=None, progress=None, warn=lambda m: None)
    monkeypatch.setattr(onnxruntime, "get_available_providers",
                        lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert session._providers(torch.device("cuda:1")) == [
        ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]


def test_device_auto_uses_cpu_when_onnxruntime_lacks_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    import onnxruntime
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # a GPU box ...
    monkeypatch.setattr(onnxruntime, "get_available_providers", lambda: ["CPUExecutionProvider"])
    report = scan(_mlp(), RNG.standard_normal((6, 8)).astype(np.float32), device="auto")
    assert report.device == "cpu"  # ... with a CPU-only onnxruntime: auto means CPU here
