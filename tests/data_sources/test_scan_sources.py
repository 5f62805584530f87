"""Scans over image folders and samples equal scans over the same data given as arrays."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from datasource_kit import DIGITS_CNN, DIGITS_NPY, FIXTURES

import reludoctor
from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration

PER_UNIT = ("dead_units", "activation_rate", "max_preactivation", "near_dead_units")


def _sites(report) -> list[dict]:
    return [{key: site[key] for key in ("name", *PER_UNIT)} for site in report.to_dict()["sites"]]


def test_digits_cnn_over_pngs_equals_the_same_array(digits_folder) -> None:
    folder, scaled_npy, scaled = digits_folder
    from_images = reludoctor.scan(DIGITS_CNN, folder, device="cpu", normalize="none")
    from_array = reludoctor.scan(DIGITS_CNN, scaled_npy, device="cpu")
    assert from_images.calibration.samples == from_array.calibration.samples == 360
    assert from_images.calibration.source == f"{folder} (images: grayscale, normalize none)"
    assert _sites(from_images) == _sites(from_array)
    assert any(site["dead_units"] for site in _sites(from_images))  # something to compare


def test_sample_equals_a_scan_of_the_extracted_subset(tmp_path: Path) -> None:
    x = np.load(DIGITS_NPY)
    spec = InputSpec("x", (None, 1, 8, 8), "float32")
    indices = load_calibration(DIGITS_NPY, [spec], sample=90, seed=4)._indices
    subset = np.ascontiguousarray(x[indices])
    np.save(tmp_path / "subset.npy", subset)
    sampled = reludoctor.scan(DIGITS_CNN, DIGITS_NPY, device="cpu", sample=90, seed=4, batch_size=16)
    explicit = reludoctor.scan(DIGITS_CNN, tmp_path / "subset.npy", device="cpu", batch_size=16)
    assert sampled.calibration.samples == 90
    assert sampled.calibration.source == f"{DIGITS_NPY} (random sample of 90 of 360, seed 4)"
    assert _sites(sampled) == _sites(explicit)
    other = reludoctor.scan(DIGITS_CNN, DIGITS_NPY, device="cpu", sample=90, seed=5, batch_size=16)
    assert [s["activation_rate"] for s in _sites(other)] != [s["activation_rate"] for s in _sites(sampled)]


def test_labels_follow_the_sample(tmp_path: Path) -> None:
    x = np.load(DIGITS_NPY)
    labels = np.load(FIXTURES / "data" / "digits_labels.npy")
    spec = InputSpec("x", (None, 1, 8, 8), "float32")
    indices = load_calibration(DIGITS_NPY, [spec], sample=40, limit=200, seed=1)._indices
    sampled = reludoctor.scan(DIGITS_CNN, DIGITS_NPY, device="cpu", sample=40, limit=200, seed=1,
                              gradients=True, labels=FIXTURES / "data" / "digits_labels.npy")
    explicit = reludoctor.scan(DIGITS_CNN, np.ascontiguousarray(x[indices]), device="cpu",
                               gradients=True, labels=labels[indices])
    a, b = sampled.to_dict(), explicit.to_dict()
    assert json.dumps(a["gradients"], sort_keys=True) == json.dumps(b["gradients"], sort_keys=True)
    assert [s.get("gradient") for s in a["sites"]] == [s.get("gradient") for s in b["sites"]]


def test_sample_larger_than_the_data_warns_and_uses_all() -> None:
    notes = []
    report = reludoctor.scan(DIGITS_CNN, DIGITS_NPY, device="cpu", sample=1000, on_warning=notes.append)
    assert report.calibration.samples == 360
    assert any("--sample 1000" in note and "using all 360" in note for note in notes)


def test_image_folder_sample_equals_the_copied_subset(digits_folder, tmp_path: Path) -> None:
    import shutil

    folder, _, _ = digits_folder
    files = sorted(folder.rglob("*.png"), key=lambda p: p.relative_to(folder).parts)
    spec = InputSpec("x", (None, 1, 8, 8), "float32")
    indices = load_calibration(folder, [spec], sample=50, seed=9)._indices
    copy = tmp_path / "subset"
    copy.mkdir()
    for position, index in enumerate(indices):  # the same files, renamed to keep their order
        shutil.copy(files[index], copy / f"{position:03d}.png")
    sampled = reludoctor.scan(DIGITS_CNN, folder, device="cpu", sample=50, seed=9)
    explicit = reludoctor.scan(DIGITS_CNN, copy, device="cpu")
    assert _sites(sampled) == _sites(explicit)


@pytest.mark.parametrize("option", [{"resize": 8}, {"center_crop": 8}, {"normalize": "none"}])
def test_image_options_refused_for_arrays(option: dict) -> None:
    from reludoctor.errors import UsageError

    with pytest.raises(UsageError, match="only for a folder of images"):
        reludoctor.scan(DIGITS_CNN, DIGITS_NPY, device="cpu", **option)


def test_onnx_model_over_an_image_folder(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    from datasource_kit import write_image
    from onnx import TensorProto, helper, numpy_helper

    shift = numpy_helper.from_array(np.full((1, 3, 1, 1), 0.9, dtype=np.float32), "shift")
    graph = helper.make_graph(
        [helper.make_node("Sub", ["x", "shift"], ["pre"], name="sub"),
         helper.make_node("Relu", ["pre"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 6, 6])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])], initializer=[shift])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(proto, tmp_path / "shift.onnx")
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 6, 6, 3), dtype=np.uint8)
    pixels[..., 0] = np.minimum(pixels[..., 0], 200)  # red never above 0.9 x 255
    pixels[..., 2] = 0  # blue dark
    folder = tmp_path / "images"
    for index, image in enumerate(pixels):
        write_image(folder / f"{index:02d}.png", image)
    indices = load_calibration(folder, [InputSpec("x", (None, 3, 6, 6), "float32")],
                               sample=8, seed=2)._indices
    for kwargs, rows in (({}, pixels), ({"sample": 8, "seed": 2}, pixels[indices])):
        report = reludoctor.scan(tmp_path / "shift.onnx", folder, device="cpu", normalize="none",
                                 **kwargs)
        peak = (rows.reshape(-1, 3).max(axis=0).astype(np.float32) / np.float32(255)) - np.float32(0.9)
        site = report.to_dict()["sites"][0]
        assert site["dead_units"] == [int(c) for c in np.flatnonzero(peak <= 0)] == [0, 2]
        np.testing.assert_allclose(site["max_preactivation"], peak, atol=1e-6)
        assert report.calibration.samples == len(rows)
