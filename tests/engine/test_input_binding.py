"""Calibration data bound to any forward signature (issue 11, section 1): optional and keyword
parameters, constants (``--const``), a batch axis per input (``--batch-axis``, ONNX declared
shapes), ONNX batch sizes written as ``dim_value: -1`` or 0, list-of-tensor inputs, and errors
that name the inputs.

Oracles: plain numpy/torch computations of the pre-activations of the tiny models built here
(their per-unit max over every sample decides "dead"), never the scanner's own code.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")

import reludoctor  # noqa: E402
from reludoctor.errors import DataError, NoSitesError, UsageError  # noqa: E402


def _cli(*args: object):
    from typer.testing import CliRunner

    from reludoctor.cli import app

    return CliRunner().invoke(app, ["scan", *map(str, args)], env={"COLUMNS": "200"})


def _dead(pre: torch.Tensor) -> list[int]:
    """Units (last axis) never > 0 over every other axis."""
    flat = pre.reshape(-1, pre.shape[-1])
    return [int(i) for i in torch.nonzero(flat.amax(0) <= 0).flatten()]


def _sites(report) -> dict[str, list[int]]:
    return {site.name: list(site.dead_units) for site in report.sites}


# ---------------------------------------------------------------- PyTorch: optional, keyword, const


class Masked(torch.nn.Module):
    """forward(x, mask=None, *, scale: float = 1.0, offset: int = 0): the pre-activation of
    ``fc`` depends on every argument, so binding any of them wrongly changes the dead set."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(6, 10)
        with torch.no_grad():
            self.fc.bias[:3] = -50.0
            self.fc.bias[3] = 3.0  # alive unless the mask/scale/offset push it down
        self.act = torch.nn.ReLU()

    def pre(self, x, mask=None, *, scale: float = 1.0, offset: int = 0):
        h = self.fc(x) * scale - offset
        if mask is not None:
            h = h - 100.0 * (1 - mask[:, None])
        return h

    def forward(self, x, mask=None, *, scale: float = 1.0, offset: int = 0):
        return self.act(self.pre(x, mask, scale=scale, offset=offset))


def test_optional_parameters_stay_at_their_defaults(tmp_path: Path) -> None:
    model = Masked().eval()
    x = torch.randn(40, 6)
    np.save(tmp_path / "x.npy", x.numpy())
    report = reludoctor.scan(model, str(tmp_path / "x.npy"), device="cpu", on_warning=lambda m: None)
    with torch.no_grad():
        expected = _dead(model.pre(x))
    assert _sites(report) == {"act": expected}
    assert expected[:3] == [0, 1, 2]


def test_named_arrays_bind_by_name_and_constants_fill_keyword_parameters(tmp_path: Path) -> None:
    model = Masked().eval()
    x = torch.randn(40, 6)
    mask = (torch.arange(40) % 2).float()  # half the samples masked out entirely
    np.savez(tmp_path / "d.npz", mask=mask.numpy(), x=x.numpy())  # not in signature order
    for constants, cli_args in (({"scale": 0.5, "offset": 2}, ["--const", "scale=0.5", "--const", "offset=2"]),
                                ({}, [])):
        report = reludoctor.scan(model, str(tmp_path / "d.npz"), device="cpu", constants=constants,
                                 on_warning=lambda m: None)
        with torch.no_grad():
            expected = _dead(model.pre(x, mask, **constants))
        assert _sites(report) == {"act": expected}
        if constants:
            assert expected != _dead(model.pre(x, mask))  # the constants made a difference
        # The same through a dict of in-memory batches (an iterable) and through the CLI (.pt2 is
        # not needed: an in-memory model is the Python API's; the CLI gets an ONNX model below).
        batches = [{"x": x[i:i + 16], "mask": mask[i:i + 16]} for i in range(0, 40, 16)]
        report = reludoctor.scan(model, batches, device="cpu", constants=constants,
                                 on_warning=lambda m: None)
        assert _sites(report) == {"act": expected}


def test_binding_errors_name_the_inputs(tmp_path: Path) -> None:
    model = Masked().eval()
    x = np.random.default_rng(0).standard_normal((8, 6)).astype(np.float32)
    with pytest.raises(UsageError, match=r"--const sr: the model has no input of that name.*"
                                          r"required: x; optional: mask, scale, offset"):
        reludoctor.scan(model, x, device="cpu", constants={"sr": 16000})
    with pytest.raises(UsageError, match="--batch-axis state"):
        reludoctor.scan(model, x, device="cpu", batch_axes={"state": 1})
    np.savez(tmp_path / "wrong.npz", inputs=x, mask=np.ones(8, np.float32))
    with pytest.raises(DataError, match=r"no array for input\(s\) x, required by the model \(required: x; "
                                        r"optional: mask, scale, offset; bound: mask\)"):
        reludoctor.scan(model, str(tmp_path / "wrong.npz"), device="cpu")
    warnings: list[str] = []
    np.savez(tmp_path / "extra.npz", x=x, labels=np.zeros(8, np.int64))
    reludoctor.scan(model, str(tmp_path / "extra.npz"), device="cpu", on_warning=warnings.append)
    assert any("'labels' feed no input of the model" in w for w in warnings)


class Stateful(torch.nn.Module):
    """forward(x [N, 4], state [2, N, 3], sr: int): samples of ``state`` on axis 1."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fc = torch.nn.Linear(4, 8)
        self.mix = torch.nn.Linear(3, 8, bias=False)
        with torch.no_grad():
            self.fc.bias[:2] = -40.0

    def pre(self, x, state, sr: int):
        return self.fc(x) + self.mix(state[0] - state[1]) * (sr / 16000)

    def forward(self, x, state, sr: int):
        return torch.relu(self.pre(x, state, sr))


def test_batch_axis_and_a_constant_for_a_stateful_model() -> None:
    model = Stateful().eval()
    x = torch.randn(20, 4)
    state = torch.randn(2, 20, 3) * 10
    expected = _dead(model.pre(x, state, 16000).detach())
    for method in ("export", "dispatch"):
        report = reludoctor.scan(model, {"x": x, "state": state}, device="cpu", method=method,
                                 constants={"sr": 16000}, batch_axes={"state": 1}, batch_size=8,
                                 on_warning=lambda m: None)
        assert list(report.sites[0].dead_units) == expected, method
        assert report.calibration.samples == 20
    with pytest.raises(DataError, match=r"different sample counts: 'x' 20 \(axis 0\), 'state' 2 \(axis 0\)"):
        reludoctor.scan(model, {"x": x, "state": state}, device="cpu", constants={"sr": 16000})
    with pytest.raises(DataError, match=r"input\(s\) sr, required by the model \(required: x, state, sr") as info:
        reludoctor.scan(model, {"x": x, "state": state}, device="cpu", batch_axes={"state": 1})
    assert "pass --const sr=VALUE" in info.value.one_line()


# ---------------------------------------------------------------- lists of tensors


class ListInput(torch.nn.Module):
    """A detection-style forward(images: list[Tensor], targets=None)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(2)
        self.conv = torch.nn.Conv2d(3, 6, 3)
        with torch.no_grad():
            self.conv.bias[:2] = -30.0
        self.calls: list[int] = []

    def forward(self, images: list[torch.Tensor], targets: list[dict] | None = None):
        assert isinstance(images, list) and targets is None
        self.calls.append(len(images))
        return torch.relu(self.conv(torch.stack(images)))  # batched, as detection transforms do


def test_list_inputs_get_one_tensor_per_sample(tmp_path: Path) -> None:
    model = ListInput().eval()
    images = torch.rand(10, 3, 8, 8)
    np.save(tmp_path / "images.npy", images.numpy())
    report = reludoctor.scan(model, str(tmp_path / "images.npy"), device="cpu", batch_size=4,
                             on_warning=lambda m: None)
    with torch.no_grad():
        pre = model.conv(images).permute(0, 2, 3, 1)  # channels last for _dead
    assert [list(s.dead_units) for s in report.sites] == [_dead(pre)]
    assert report.calibration.samples == 10
    assert set(model.calls) <= {4, 2} and 4 in model.calls  # lists of one batch each


# ---------------------------------------------------------------- ONNX


def _export_onnx(module: torch.nn.Module, args: tuple, path: Path, names: list[str],
                 dynamic: dict) -> None:
    torch.onnx.export(module, args, str(path), input_names=names, output_names=["y"],
                      dynamic_axes=dynamic, dynamo=False)


class OnnxStateful(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.fc = torch.nn.Linear(4, 8)
        self.mix = torch.nn.Linear(3, 8, bias=False)
        with torch.no_grad():
            self.fc.bias[:3] = -40.0

    def pre(self, x, state, sr):
        return self.fc(x) + self.mix(state[0] - state[1]) * (sr.float() / 16000)

    def forward(self, x, state, sr):
        return torch.relu(self.pre(x, state, sr))


def test_onnx_declared_batch_axis_and_scalar_constant(tmp_path: Path) -> None:
    model = OnnxStateful().eval()
    path = tmp_path / "stateful.onnx"
    _export_onnx(model, (torch.randn(2, 4), torch.randn(2, 2, 3), torch.tensor(16000)), path,
                 ["x", "state", "sr"], {"x": {0: "batch"}, "state": {1: "batch"}, "y": {0: "batch"}})
    x = torch.randn(30, 4)
    state = torch.randn(2, 30, 3) * 10
    np.savez(tmp_path / "d.npz", x=x.numpy(), state=state.numpy())
    with torch.no_grad():
        expected = _dead(model.pre(x, state, torch.tensor(16000)))
    result = _cli(path, "--data", tmp_path / "d.npz", "--const", "sr=16000", "--json", "-", "-q")
    assert result.exit_code == 0, result.output
    sites = json.loads(result.stdout)["sites"]
    assert [s["dead_units"] for s in sites] == [expected]
    # The state in the wrong layout: the error names the input, its layout and what it got.
    np.savez(tmp_path / "bad.npz", x=x.numpy(), state=state.permute(1, 0, 2).numpy())
    result = _cli(path, "--data", tmp_path / "bad.npz", "--const", "sr=16000", "-q")
    assert result.exit_code == 2
    assert "input 'state': expected [2, N, 3] (batch on axis 1), got [30, 2, 3]" in result.output
    result = _cli(path, "--data", tmp_path / "d.npz", "-q")
    assert result.exit_code == 2
    assert "input(s) sr, required" in result.output and "--const sr=VALUE" in result.output


def _numeric_batch(model: "onnx.ModelProto", value: int) -> "onnx.ModelProto":
    """The same model with every symbolic size written as ``dim_value: value``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for info in [*out.graph.input, *out.graph.output, *out.graph.value_info]:
        for dim in info.type.tensor_type.shape.dim:
            if dim.HasField("dim_param"):
                dim.dim_value = value
    return out


class TwoLayer(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(4)
        self.a = torch.nn.Linear(8, 16)
        self.b = torch.nn.Linear(16, 12)
        with torch.no_grad():
            self.a.bias[:5] = -60.0
            self.b.bias[6:9] = -60.0

    def forward(self, x):
        return self.b(torch.relu(self.a(x))).relu()


@pytest.mark.parametrize("value", [-1, 0])
def test_onnx_numeric_dynamic_batch_scans_like_a_symbolic_one(tmp_path: Path, value: int) -> None:
    model = TwoLayer().eval()
    path = tmp_path / "sym.onnx"
    _export_onnx(model, (torch.randn(2, 8),), path, ["x"], {"x": {0: "N"}, "y": {0: "N"}})
    symbolic = onnx.load(str(path))
    numeric = _numeric_batch(symbolic, value)
    assert any(d.dim_value == value for d in numeric.graph.input[0].type.tensor_type.shape.dim)
    onnx.save(numeric, str(tmp_path / "numeric.onnx"))
    x = torch.randn(50, 8)  # 50: the last batch of 32 is partial
    np.save(tmp_path / "x.npy", x.numpy())
    with torch.no_grad():
        first = model.a(x)
        expected = [_dead(first), _dead(model.b(torch.relu(first)))]
    reports = [reludoctor.scan(m, str(tmp_path / "x.npy"), device="cpu", on_warning=lambda m: None)
               for m in (str(path), str(tmp_path / "numeric.onnx"), numeric)]
    for report in reports:
        assert [list(s.dead_units) for s in report.sites] == expected
        assert report.calibration.samples == 50 and report.calibration.batch_size == 32
        assert not report.unobserved_sites
    assert list(numeric.graph.input[0].type.tensor_type.shape.dim)[0].dim_value == value  # untouched


def test_onnx_sites_that_never_ran_are_explained(tmp_path: Path) -> None:
    """An If on a constant input whose taken branch has no Relu: the sites exist, none ran."""
    from onnx import TensorProto, helper

    relu_branch = helper.make_graph([helper.make_node("Relu", ["x"], ["r"], name="inner_relu")],
                                    "then", [], [helper.make_tensor_value_info("r", TensorProto.FLOAT, ["N", 4])])
    plain_branch = helper.make_graph([helper.make_node("Neg", ["x"], ["n"], name="neg")],
                                     "else", [], [helper.make_tensor_value_info("n", TensorProto.FLOAT, ["N", 4])])
    graph = helper.make_graph(
        [helper.make_node("If", ["flag"], ["y"], then_branch=relu_branch, else_branch=plain_branch,
                          name="branch")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4]),
         helper.make_tensor_value_info("flag", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    x = np.random.default_rng(0).standard_normal((6, 4)).astype(np.float32)
    report = reludoctor.scan(model, x, device="cpu", constants={"flag": True}, on_warning=lambda m: None)
    assert report.summary.sites == 1
    with pytest.raises(NoSitesError, match="1 ReLU-family site.*none observed") as info:
        reludoctor.scan(model, x, device="cpu", constants={"flag": False}, on_warning=lambda m: None)
    assert "never executed" in str(info.value) and "flag <- --const false" in info.value.hint


def test_exported_program_and_cli_batch_axis(tmp_path: Path) -> None:
    """A .pt2 exported with the state's batch on axis 1 binds it there by itself; ``--batch-axis``
    says the same for an ONNX input whose declared shape does not (its sizes symbolic, none named
    like the first input's batch)."""
    from torch.export import Dim

    model = Stateful().eval()
    x = torch.randn(20, 4)
    state = torch.randn(2, 20, 3) * 10
    expected = _dead(model.pre(x, state, 16000).detach())
    batch = Dim("batch")
    program = torch.export.export(model, (x[:4].clone(), state[:, :4].clone(), 16000),
                                  dynamic_shapes=({0: batch}, {1: batch}, None))
    torch.export.save(program, str(tmp_path / "stateful.pt2"))
    np.savez(tmp_path / "d.npz", x=x.numpy(), state=state.numpy())
    from reludoctor.engine import load_model

    _, loaded = load_model(str(tmp_path / "stateful.pt2"))
    # sr was fixed by the export: an input still (the program's module takes it), bound to 16000
    assert [(s.name, s.batch_axis, s.kind) for s in loaded.inputs] == \
        [("x", 0, "tensor"), ("state", 1, "tensor"), ("sr", 0, "value")]
    assert loaded.constants == {"sr": 16000}
    result = _cli(tmp_path / "stateful.pt2", "--data", tmp_path / "d.npz", "--json", "-", "-q",
                  "--batch-size", 8)
    assert result.exit_code == 0, result.output
    assert [s["dead_units"] for s in json.loads(result.stdout)["sites"]] == [expected]

    onnx_model = OnnxStateful().eval()
    path = tmp_path / "free.onnx"
    _export_onnx(onnx_model, (torch.randn(2, 4), torch.randn(3, 2, 3), torch.tensor(16000)), path,
                 ["x", "state", "sr"], {"x": {0: "batch"}, "state": {0: "layers", 1: "n"},
                                        "y": {0: "batch"}})
    with torch.no_grad():
        expected = _dead(onnx_model.pre(x, state, torch.tensor(16000)))
    args = [path, "--data", tmp_path / "d.npz", "--const", "sr=16000", "--json", "-", "-q"]
    refused = _cli(*args)  # axis 0 (the first dynamic size) holds 2, not 20 samples
    assert refused.exit_code == 2 and "different sample counts" in refused.output
    result = _cli(*args, "--batch-axis", "state=1")
    assert result.exit_code == 0, result.output
    assert [s["dead_units"] for s in json.loads(result.stdout)["sites"]] == [expected]


@pytest.mark.parametrize("declared, fixed, axes", [
    # silero_vad_16k_op15: the batch named like the first input's, wherever it lies
    ({"input": ["batch", "sequence"], "state": [2, "batch", 128], "sr": []}, None, [0, 1, None]),
    # unnamed sizes: the first dynamic one
    ({"input": ["", ""], "state": [2, "", 128], "sr": []}, None, [0, 1, None]),
    # a fixed-shape input next to dynamic ones is fed whole (silero_vad_16k_sequence's h, c)
    ({"input": ["n", 576], "h": [1, 1, 128]}, None, [0, None]),
    # all fixed: the first input's first size is the batch, found in the others (openvino)
    ({"input": [1, 576], "state": [2, 1, 128]}, 1, [0, 1]),
    # a fixed batch with symbolic features: the batch stays on axis 0
    ({"x": [4096, "F"]}, 4096, [0]),
    # sizes written as numbers <= 0 are dynamic
    ({"x": [-1, 8], "m": [0, 8]}, None, [0, 0]),
])
def test_onnx_declared_batch_axes(declared: dict, fixed, axes: list) -> None:
    from onnx import TensorProto, helper

    from reludoctor.backends.onnx.loader import _inputs

    def dim_list(dims):
        return [d if isinstance(d, int) else (d or None) for d in dims]

    inputs = []
    for name, dims in declared.items():
        info = helper.make_tensor_value_info(name, TensorProto.FLOAT, dim_list(dims))
        for dim, wanted in zip(info.type.tensor_type.shape.dim, dims):
            if isinstance(wanted, int) and wanted <= 0:
                dim.dim_value = wanted
        inputs.append(info)
    graph = helper.make_graph([], "g", inputs, [])
    specs, found = _inputs(helper.make_model(graph))
    assert found == fixed
    assert [spec.batch_axis for spec in specs] == axes
