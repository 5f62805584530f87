"""Every model format and every calibration-data source gives the oracle's statistics.

Model formats (files written to tmp_path, and in-memory objects): torch.export .pt2 with a
dynamic batch, a fixed-batch .pt2, TorchScript (jit.save), state_dict .pt and .safetensors
with ``arch="tests.models:small_convnet"`` and ``arch_kwargs``, nn.Module, ExportedProgram,
ScriptModule. Data: numpy arrays, tensors, .npy, .npz, .pt, DataLoaders and generators.

Oracle: tests.engine.oracle.oracle_small_convnet, a float64 numpy forward of SmallConvNet.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import reludoctor
from reludoctor.errors import UnsafeModelError, UsageError
from tests import models as zoo
from tests.engine.oracle import (
    Captured,
    assert_report_matches,
    assert_reports_agree,
    np_conv2d,
    np_linear,
    oracle_small_convnet,
    reduce_site,
    to_numpy,
    weights,
)

ARCH = "tests.models:small_convnet"
ARCH_KWARGS = {"channels": 5, "hidden": 7}
BATCH = 8
SAMPLES = 23  # 8 + 8 + 7


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def trained() -> zoo.SmallConvNet:
    """SmallConvNet with other weights than the factory makes (seed 21, not 9), so a state_dict
    that was not loaded cannot pass."""
    return zoo.SmallConvNet(**ARCH_KWARGS, seed=21).eval()


@pytest.fixture(scope="module")
def data() -> torch.Tensor:
    return zoo.images(SAMPLES, 5)


@pytest.fixture(scope="module")
def oracle(trained, data):
    return oracle_small_convnet(trained, data)


@pytest.fixture(scope="module")
def files(trained, data, tmp_path_factory) -> dict[str, Path]:
    from torch.export import Dim

    root = tmp_path_factory.mktemp("model-files")
    out = {}
    program = torch.export.export(trained, (data[:4],), dynamic_shapes=({0: Dim("batch")},))
    out["pt2"] = root / "model.pt2"
    torch.export.save(program, str(out["pt2"]))
    out["torchscript"] = root / "model.torchscript.pt"
    torch.jit.save(torch.jit.script(trained), str(out["torchscript"]))
    out["state_dict_pt"] = root / "weights.pt"
    torch.save(trained.state_dict(), str(out["state_dict_pt"]))
    out["checkpoint_pt"] = root / "checkpoint.pth"
    torch.save({"epoch": 3, "state_dict": trained.state_dict()}, str(out["checkpoint_pt"]))
    out["safetensors"] = root / "weights.safetensors"
    pytest.importorskip("safetensors")
    from safetensors.torch import save_file

    save_file({k: v.contiguous() for k, v in trained.state_dict().items()}, str(out["safetensors"]))
    return out


def _check_names(report) -> None:
    assert [s.name for s in report.sites] == ["act1", "act2", "relu()"]
    assert [s.module for s in report.sites] == ["act1", "act2", ""]


# ---------------------------------------------------------------------------------------------
# model formats
# ---------------------------------------------------------------------------------------------
FILE_CASES = [
    ("pt2", {}, "torch-export"),
    ("state_dict_pt", {"arch": ARCH, "arch_kwargs": ARCH_KWARGS}, "state-dict"),
    ("state_dict_pt", {"arch": ARCH, "arch_kwargs": json.dumps(ARCH_KWARGS)}, "state-dict"),
    ("checkpoint_pt", {"arch": ARCH, "arch_kwargs": ARCH_KWARGS}, "state-dict"),
    ("safetensors", {"arch": ARCH, "arch_kwargs": ARCH_KWARGS}, "state-dict"),
    ("safetensors", {"arch": ARCH, "arch_kwargs": json.dumps(ARCH_KWARGS)}, "state-dict"),
]


@pytest.mark.parametrize("name, kwargs, fmt", FILE_CASES,
                         ids=["pt2", "pt-dict-kwargs", "pt-json-kwargs", "checkpoint", "st-dict-kwargs",
                              "st-json-kwargs"])
def test_model_files(files, data, oracle, method, name, kwargs, fmt) -> None:
    path = files[name]
    before = _sha256(path)
    report = reludoctor.scan(str(path), data, method=method, batch_size=BATCH, **kwargs)
    assert_report_matches(report, oracle, check_name=True)
    _check_names(report)
    assert report.model.format == fmt
    assert report.model.method == method
    assert report.model.path == str(path)
    assert report.model.sha256 == before
    assert _sha256(path) == before  # the input file is never modified
    assert report.calibration.samples == SAMPLES


def test_torchscript_file(files, data, oracle) -> None:
    path = files["torchscript"]
    before = _sha256(path)
    with pytest.raises(UnsafeModelError) as refused:  # TorchScript is code
        reludoctor.scan(path, data, batch_size=BATCH)
    assert "--trust-model" in refused.value.one_line()
    report = reludoctor.scan(path, data, batch_size=BATCH, trust_model=True)  # a Path, not a str
    assert report.model.method == "dispatch"
    assert report.model.format == "torchscript"
    assert report.model.sha256 == before == _sha256(path)
    # named by module path like the nn.Module (read from the archive's graphs)
    assert_report_matches(report, oracle)
    _check_names(report)
    with pytest.raises(UsageError):
        reludoctor.scan(path, data, method="export", trust_model=True)


def test_in_memory_objects(trained, data, oracle, method) -> None:
    from torch.export import Dim

    report = reludoctor.scan(trained, data, method=method, batch_size=BATCH)
    assert_report_matches(report, oracle)
    assert report.model.format == "module" and report.model.path is None and report.model.sha256 is None

    program = torch.export.export(trained, (data[:4],), dynamic_shapes=({0: Dim("batch")},))
    graph_before = str(program.graph)
    report = reludoctor.scan(program, data, method=method, batch_size=BATCH)
    assert_report_matches(report, oracle, check_name=method == "export")
    assert report.model.format == "torch-export" and report.calibration.batch_size == BATCH
    assert str(program.graph) == graph_before  # the caller's program is not instrumented

    scripted = torch.jit.script(trained)
    if method == "export":
        with pytest.raises(UsageError):
            reludoctor.scan(scripted, data, method=method)
    else:
        report = reludoctor.scan(scripted, data, method=method, batch_size=BATCH)
        assert_report_matches(report, oracle)
        assert report.model.format == "torchscript"


def test_all_formats_agree(files, trained, data) -> None:
    """Same model, same batches: every format reports the same sites and statistics."""
    reference = reludoctor.scan(trained, data, method="dispatch", batch_size=BATCH)
    for path, kwargs in [(files["pt2"], {}), (files["torchscript"], {"trust_model": True}),
                         (files["state_dict_pt"], {"arch": ARCH, "arch_kwargs": ARCH_KWARGS}),
                         (files["safetensors"], {"arch": ARCH, "arch_kwargs": ARCH_KWARGS})]:
        for method in ("export", "dispatch"):
            if "torchscript" in path.name and method == "export":
                continue
            report = reludoctor.scan(path, data, method=method, batch_size=BATCH, **kwargs)
            # float tolerance only: TorchScript may pick other kernels than eager
            assert_reports_agree(reference, report, names=True, exact=False)


def test_exported_program_site_names_agree_across_methods(files, data) -> None:
    reports = [reludoctor.scan(files["pt2"], data, method=m, batch_size=BATCH) for m in ("export", "dispatch")]
    assert [s.name for s in reports[0].sites] == ["act1", "act2", "relu()"]
    assert [s.name for s in reports[1].sites] == [s.name for s in reports[0].sites]


def test_frozen_torchscript(trained, data, oracle, tmp_path) -> None:
    frozen = torch.jit.freeze(torch.jit.script(trained))
    path = tmp_path / "frozen.pt"
    torch.jit.save(frozen, str(path))
    report = reludoctor.scan(path, data, batch_size=BATCH, trust_model=True)
    # freezing folds bn1 into conv1: the values move by float rounding only
    assert_report_matches(report, oracle, check_name=False, max_ambiguous=None)


# ---------------------------------------------------------------------------------------------
# fixed-batch exports
# ---------------------------------------------------------------------------------------------
FIXED = 16


@pytest.mark.parametrize("samples", [37, 5, 32])
def test_fixed_batch_export_file_counts_real_samples_only(tmp_path, method, samples) -> None:
    """Exported without dynamic dims (batch 16), saved, scanned from the file. The remainder
    batch is padded by repeating the last sample, which is the only one that makes
    DETECTOR_UNIT fire: counting the padding would give it a rate of 12/37, not 1/37."""
    model = zoo.LinearAct("nn.ReLU").eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(FIXED, 6),)), str(path))
    x = zoo.detector_data(samples, 6)
    p = weights(model)
    oracle = reduce_site(np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"]), name="act", op="relu")

    notes = Captured()
    report = reludoctor.scan(path, x, method=method, on_warning=notes, near_dead=0.05)
    assert_report_matches(report, [oracle], near_dead=0.05,
                          check_name=method == "export")
    site = report.sites[0]
    assert site.activation_rate[zoo.DETECTOR_UNIT] == 1 / samples
    assert site.samples == site.positions == report.calibration.samples == samples
    assert report.calibration.batch_size == FIXED
    assert notes.messages == []  # no batch size asked for: the fixed one is simply used
    assert report.model.format == "torch-export"

    # asking for another batch size: the fixed one is used anyway, with a warning
    again = reludoctor.scan(path, x, method=method, batch_size=7, on_warning=notes, near_dead=0.05)
    assert any(f"fixed batch of {FIXED}" in m for m in notes.messages), notes.messages
    assert again.calibration.batch_size == FIXED
    assert_reports_agree(report, again)


def test_fixed_batch_export_with_small_iterable_batches(tmp_path, method) -> None:
    """DataLoader batches of 7 into a batch-16 export: every batch is padded, every padding
    is excluded."""
    model = zoo.LinearAct("nn.ReLU6").eval()
    path = tmp_path / "fixed.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(FIXED, 6),)), str(path))
    x = zoo.detector_data(37, 6)
    p = weights(model)
    oracle = reduce_site(np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"]), name="act",
                         op="relu6", upper=6.0)
    loader = DataLoader(TensorDataset(x), batch_size=7)
    report = reludoctor.scan(path, loader, method=method)
    assert_report_matches(report, [oracle], check_name=method == "export")
    assert report.sites[0].activation_rate[zoo.DETECTOR_UNIT] == 1 / 37
    limited = reludoctor.scan(path, loader, method=method, limit=20)
    expected = reduce_site(np_linear(to_numpy(x[:20]), p["fc.weight"], p["fc.bias"]), name="act",
                           op="relu6", upper=6.0)
    assert_report_matches(limited, [expected], check_name=method == "export")


def test_fixed_batch_export_conv(tmp_path, method) -> None:
    samples, size = 37, 3
    model = zoo.OneHotConv().eval()
    path = tmp_path / "fixed-conv.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(FIXED, 2, size, size),)), str(path))
    x = zoo.one_hot_images(samples, size)
    p = weights(model)
    oracle = reduce_site(np_conv2d(to_numpy(x), p["conv.weight"], p["conv.bias"]), name="act", op="relu")
    report = reludoctor.scan(path, x, method=method, batch_size=FIXED)
    assert_report_matches(report, [oracle], check_name=method == "export")
    assert report.sites[0].activation_rate[0] == 1 / (samples * size * size)
    assert report.warnings == ()


# ---------------------------------------------------------------------------------------------
# calibration data sources
# ---------------------------------------------------------------------------------------------
def _sources(data: torch.Tensor, root: Path) -> dict[str, object]:
    array = data.numpy()
    np.save(root / "x.npy", array)
    np.savez(root / "named.npz", x=array)
    np.savez(root / "unnamed.npz", array)
    torch.save(data.clone(), str(root / "x.pt"))
    torch.save({"x": data.clone()}, str(root / "dict.pt"))

    def generator():
        for start in range(0, len(array), BATCH):
            yield array[start:start + BATCH]

    return {
        "numpy": array.copy(),
        "numpy-float64": array.astype(np.float64),
        "tensor": data.clone(),
        "npy": str(root / "x.npy"),
        "npy-path": root / "x.npy",
        "npz-named": str(root / "named.npz"),
        "npz-unnamed": str(root / "unnamed.npz"),
        "pt-tensor": str(root / "x.pt"),
        "pt-dict": str(root / "dict.pt"),
        "dict": {"x": array.copy()},
        "dataloader-tensordataset": DataLoader(TensorDataset(data.clone()), batch_size=BATCH),
        "dataloader-tensor": DataLoader(data.clone(), batch_size=BATCH),
        "generator": generator(),
        "list-of-batches": [data[i:i + BATCH].clone() for i in range(0, SAMPLES, BATCH)],
    }


SOURCES = ["numpy", "numpy-float64", "tensor", "npy", "npy-path", "npz-named", "npz-unnamed",
           "pt-tensor", "pt-dict", "dict", "dataloader-tensordataset", "dataloader-tensor",
           "generator", "list-of-batches"]


def test_data_sources_give_identical_reports(trained, data, oracle, method, tmp_path) -> None:
    sources = _sources(data, tmp_path)
    assert sorted(sources) == sorted(SOURCES)
    reference = None
    for name in SOURCES:
        report = reludoctor.scan(trained, sources[name], method=method, batch_size=BATCH)
        assert report.calibration.samples == SAMPLES, name
        assert report.calibration.synthetic is False
        if reference is None:
            assert_report_matches(report, oracle)
            reference = report
        else:
            try:
                assert_reports_agree(reference, report)  # same batches: bit-identical
            except AssertionError as exc:
                raise AssertionError(f"data source {name!r}: {exc}") from exc


def test_iterable_regrouped_into_other_batches(trained, data, oracle, method) -> None:
    """DataLoader batches of 7 scanned with batch_size 5: still every sample exactly once."""
    loader = DataLoader(TensorDataset(data.clone()), batch_size=7)
    report = reludoctor.scan(trained, loader, method=method, batch_size=5)
    assert_report_matches(report, oracle)
    assert report.calibration.samples == SAMPLES


def test_limit_uses_the_first_samples(trained, data, method) -> None:
    limit = 13
    expected = oracle_small_convnet(trained, data[:limit])
    for source in (data.clone(), DataLoader(TensorDataset(data.clone()), batch_size=BATCH)):
        report = reludoctor.scan(trained, source, method=method, batch_size=BATCH, limit=limit)
        assert_report_matches(report, expected)
        assert report.calibration.samples == limit


def test_two_input_model_data_sources(method, tmp_path) -> None:
    """Several inputs: matched by name (dict, .npz, .pt dict) or position (batches of tuples)."""
    model = zoo.TwoInputs().eval()
    gen = torch.Generator().manual_seed(6)
    a, b = torch.randn(19, 4, generator=gen), torch.randn(19, 3, generator=gen)
    p = weights(model)
    pre = np_linear(to_numpy(a), p["fc_a.weight"], p["fc_a.bias"]) + \
        np_linear(to_numpy(b), p["fc_b.weight"], p["fc_b.bias"])
    oracle = [reduce_site(pre, name="relu()", op="relu")]
    np.savez(tmp_path / "ab.npz", b=b.numpy(), a=a.numpy())  # not in argument order
    torch.save({"b": b.clone(), "a": a.clone()}, str(tmp_path / "ab.pt"))
    sources = {
        "dict": {"a": a.numpy(), "b": b.numpy()},
        "npz": str(tmp_path / "ab.npz"),
        "pt": str(tmp_path / "ab.pt"),
        "dataloader": DataLoader(TensorDataset(a, b), batch_size=BATCH),
        "dict-batches": [{"a": a[i:i + BATCH], "b": b[i:i + BATCH]} for i in range(0, 19, BATCH)],
    }
    reports = {}
    for name, source in sources.items():
        reports[name] = reludoctor.scan(model, source, method=method, batch_size=BATCH)
        assert_report_matches(reports[name], oracle)
        assert reports[name].model.inputs == ("a", "b")
        assert_reports_agree(reports["dict"], reports[name])
