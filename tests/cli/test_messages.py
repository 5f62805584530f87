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

    from reludoctor.backends.onnx.session import _ort_message

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


# --- TorchScript archives that call other libraries' operators ------------------------------

_OPS_MODULE = '''"""Registers rdtest::twice (x * 2): an op library that only exists once imported."""
import torch

_LIB = torch.library.Library("rdtest", "DEF")
_LIB.define("twice(Tensor x) -> Tensor")
_LIB.impl("twice", lambda x: x * 2, "CompositeExplicitAutograd")
'''

_SAVE_CUSTOM = '''import sys, warnings
import torch
sys.path.insert(0, sys.argv[2])
import rdtest_ops  # noqa: F401


class Net(torch.nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc = torch.nn.Linear(8, 8)
        with torch.no_grad():
            self.fc.bias[2] = -1e3

    def forward(self, x):
        return torch.relu(torch.ops.rdtest.twice(self.fc(x)))


with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    torch.jit.save(torch.jit.script(Net()), sys.argv[1])
'''


class _NmsNet:
    """A scripted module whose forward calls torchvision.ops.nms (torchvision::nms)."""

    @staticmethod
    def build():  # noqa: ANN205
        import torch
        import torchvision

        class Net(torch.nn.Module):
            def __init__(self) -> None:
                super().__init__()
                torch.manual_seed(0)
                self.fc = torch.nn.Linear(8, 8)
                with torch.no_grad():
                    self.fc.bias[5] = -1e3  # planted dead

            def forward(self, x: torch.Tensor) -> torch.Tensor:
                h = torch.relu(self.fc(x))
                boxes = torch.stack([h[:, 0], h[:, 1], h[:, 0] + h[:, 2] + 1, h[:, 1] + h[:, 3] + 1], 1)
                keep = torchvision.ops.nms(boxes, h[:, 4], 0.5)
                return h + keep.shape[0]

        return Net().eval()


def _dead_after_fc(fc, x: np.ndarray, scale: float = 1.0) -> list[int]:  # noqa: ANN001
    """The oracle: units of relu(scale * fc(x)) that are never positive on x."""
    import torch

    with torch.no_grad():
        pre = scale * fc(torch.from_numpy(x))
    return [int(u) for u in torch.nonzero((pre > 0).sum(0) == 0).flatten()]


@pytest.mark.slow
def test_torchscript_calling_torchvision_ops_loads_in_a_fresh_process(run_cli, tmp_path):
    """torchvision is imported by itself (the archive calls ops.torchvision.nms); the probe
    child and the scan both resolve the op; the dead set matches the oracle."""
    import json
    import warnings

    import torch

    pytest.importorskip("torchvision")
    model = _NmsNet.build()
    path = tmp_path / "nms.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.script(model), path)
    assert b"ops.torchvision.nms" in b"".join(  # the premise: the archive names the op
        __import__("zipfile").ZipFile(path).read(n) for n in __import__("zipfile").ZipFile(path).namelist()
        if n.endswith(".py"))
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = _dead_after_fc(model.fc, x)
    assert expected == [5]
    for extra in ([], ["--import", "torchvision"]):
        result = run_cli("scan", path, "--data", tmp_path / "x.npy", "--trust-model", "-q",
                         "--json", "-", *extra, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert [site["dead_units"] for site in report["sites"]] == [expected]


@pytest.mark.slow
def test_torchscript_with_unregistered_op_names_it_and_import_loads_it(run_cli, tmp_path):
    """An op whose library is not imported: one line naming the op and --import; with
    --import MODULE (a module in the current directory) it scans, dead set as the oracle."""
    import json
    import subprocess
    import sys

    (tmp_path / "rdtest_ops.py").write_text(_OPS_MODULE)
    path = tmp_path / "twice.ts"
    (tmp_path / "save_twice.py").write_text(_SAVE_CUSTOM)  # torch.jit.script reads the source
    saved = subprocess.run([sys.executable, str(tmp_path / "save_twice.py"), str(path), str(tmp_path)],
                           capture_output=True, text=True)
    assert saved.returncode == 0, saved.stderr
    x = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)

    refused = run_cli("scan", path, "--data", tmp_path / "x.npy", "--trust-model", "-q", cwd=tmp_path)
    line = assert_input_error(refused.returncode, refused.stdout, refused.stderr, str(path),
                              "rdtest::twice", "--import")

    result = run_cli("scan", path, "--data", tmp_path / "x.npy", "--trust-model", "-q",
                     "--import", "rdtest_ops", "--json", "-", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    import torch

    torch.manual_seed(0)
    fc = torch.nn.Linear(8, 8)  # the same initialisation as _SAVE_CUSTOM
    with torch.no_grad():
        fc.bias[2] = -1e3
    sites = json.loads(result.stdout)["sites"]
    assert [site["dead_units"] for site in sites] == [_dead_after_fc(fc, x, 2.0)]
    assert line  # the refusal above was one line


def test_import_of_a_missing_module_is_one_line_exit_2(cli, art, tmp_path):
    """--import on scan and fix: a module that does not exist is bad input (exit 2), named."""
    result = cli(art.pt2, "--data", art.npy, "--import", "no_such_module_rd11")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "no_such_module_rd11")
    result = cli(art.pt2, "--data", art.npy, "--prune-dead", "-o", tmp_path / "out.pt2",
                 "--import", "no_such_module_rd11", command="fix")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "no_such_module_rd11")
    assert not (tmp_path / "out.pt2").exists()


def test_python_api_imports_are_imported_before_loading(art, tmp_path, monkeypatch):
    """scan(imports=[...]) and fix(imports=[...]) import the modules (here one that records it)."""
    import sys

    from reludoctor.engine import scan
    from reludoctor.errors import UsageError
    from reludoctor.fix import fix

    (tmp_path / "rd11_marker_mod.py").write_text("import builtins\nbuiltins._rd11_imported = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "rd11_marker_mod", raising=False)
    report = scan(art.pt2, art.npy, imports=["rd11_marker_mod"], on_warning=lambda m: None)
    assert "rd11_marker_mod" in sys.modules
    assert {s.name: list(s.dead_units) for s in report.sites if s.dead_units} == \
        {k: list(v) for k, v in art.expected.items() if v}
    with pytest.raises(UsageError, match="no_such_module_rd11"):
        fix(art.pt2, art.npy, tmp_path / "o.pt2", strategy="prune-dead", imports=["no_such_module_rd11"])


# --- torch.export falls back to TorchDispatchMode: one line, no graph dump -------------------

_DATA_DEPENDENT = '''import torch
from torch import nn


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(8, 16)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        h = torch.relu(self.fc1(x))
        if h.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            h = h * 2
        return torch.relu(self.fc2(h))


def net():
    torch.manual_seed(0)
    model = Net()
    with torch.no_grad():
        model.fc1.bias[3] = -1e3  # planted dead
    return model
'''


@pytest.mark.slow
def test_export_fallback_is_one_warning_line_without_graph_dump(run_cli, tmp_path):
    """torch.export fails on data-dependent control flow and prints the partial graph on
    stderr; the user sees exactly one line saying the scan fell back, and the right report."""
    import importlib.util
    import json

    import torch

    (tmp_path / "ddflow_rd11.py").write_text(_DATA_DEPENDENT)
    spec = importlib.util.spec_from_file_location("ddflow_rd11", tmp_path / "ddflow_rd11.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    model = module.net()
    torch.save(model.state_dict(), tmp_path / "dd.pt")
    x = np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    expected = _dead_after_fc(model.fc1, x)
    assert 3 in expected

    for quiet in (["-q"], []):
        result = run_cli("scan", tmp_path / "dd.pt", "--arch", "ddflow_rd11:net", "--data",
                         tmp_path / "x.npy", "--json", "-", *quiet, cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr[:2000]
        assert "torch.export could not capture" in lines[0] and "TorchDispatchMode" in lines[0]
        assert lines[0].startswith("warning:")
        assert "def forward" not in result.stderr and "aten" not in result.stderr
        report = json.loads(result.stdout)
        assert report["model"]["method"] == "dispatch"
        assert report["sites"][0]["dead_units"] == expected


# --- no ReLU-family op: told before the calibration pass when the graph is known -------------


class _NeverIterate:
    """A data source that fails the test if anything reads a batch from it."""

    def __iter__(self):  # noqa: ANN204
        raise AssertionError("the calibration data was read before the no-ReLU check")


def _silu_module():  # noqa: ANN202
    import torch
    from torch import nn

    class SiluNet(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a = nn.Linear(8, 16)
            self.b = nn.Linear(16, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return nn.functional.silu(self.b(nn.functional.silu(self.a(x))))

    torch.manual_seed(0)
    return SiluNet().eval()


def _silu_onnx():  # noqa: ANN202
    """x -> Gemm -> x * Sigmoid(x) (SiLU as exporters write it), twice."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    nodes, inits, current = [], [], "x"
    for i, (k, n) in enumerate([(8, 16), (16, 4)]):
        inits += [numpy_helper.from_array(rng.standard_normal((k, n)).astype(np.float32), f"w{i}"),
                  numpy_helper.from_array(np.zeros(n, np.float32), f"b{i}")]
        nodes += [helper.make_node("Gemm", [current, f"w{i}", f"b{i}"], [f"g{i}"], name=f"fc{i}"),
                  helper.make_node("Sigmoid", [f"g{i}"], [f"s{i}"]),
                  helper.make_node("Mul", [f"g{i}", f"s{i}"], [f"y{i}"])]
        current = f"y{i}"
    graph = helper.make_graph(nodes, "silu", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8])],
                              [helper.make_tensor_value_info(current, TensorProto.FLOAT, ["N", 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_no_relu_exported_program_is_refused_before_any_batch(tmp_path):
    import torch

    from reludoctor.engine import scan
    from reludoctor.errors import NoSitesError

    program = torch.export.export(_silu_module(), (torch.randn(4, 8),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "silu.pt2")
    for target in (program, tmp_path / "silu.pt2"):
        with pytest.raises(NoSitesError) as info:
            scan(target, _NeverIterate())
        assert "no ReLU-family op in the exported graph" in str(info.value)
        assert "silu x2" in str(info.value)
        assert info.value.exit_code == 2


def test_no_relu_onnx_is_refused_before_any_batch():
    from reludoctor.engine import scan
    from reludoctor.errors import NoSitesError

    with pytest.raises(NoSitesError) as info:
        scan(_silu_onnx(), _NeverIterate())
    assert "no ReLU-family node in the ONNX graph" in str(info.value)
    assert "SiLU x2" in str(info.value)


def test_no_relu_module_is_refused_after_export_before_the_pass():
    """An nn.Module's graph is known once exported: the error comes from that check (it names the
    exported graph), not from the end of the calibration pass ("no ReLU-family activation ran")."""
    from reludoctor.engine import scan
    from reludoctor.errors import NoSitesError

    model = _silu_module()
    with pytest.raises(NoSitesError) as info:
        scan(model, np.random.default_rng(0).standard_normal((64, 8)).astype(np.float32))
    assert "no ReLU-family op in the exported graph" in str(info.value)
    assert "ran" not in str(info.value)


def test_no_relu_cli_is_one_line_exit_2(cli, tmp_path):
    import onnx

    onnx.save(_silu_onnx(), tmp_path / "silu.onnx")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((16, 8)).astype(np.float32))
    result = cli(tmp_path / "silu.onnx", "--data", tmp_path / "x.npy")
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(tmp_path / "silu.onnx"),
                       "no ReLU-family", "SiLU")


def test_a_relu_inside_an_unknown_library_op_is_not_refused_early():
    """The early check is loose: an op of another library may hide a ReLU, so it lets the scan
    go on (here an ONNX node of a custom domain; onnxruntime then refuses the unknown op)."""
    from onnx import helper

    from reludoctor.backends.onnx.precheck import _onnx_ops

    model = _silu_onnx()
    model.graph.node.append(helper.make_node("MyRelu", ["y1"], ["z"], domain="com.example"))
    assert _onnx_ops(model)[1] is True
    assert _onnx_ops(_silu_onnx())[1] is False


# --- --limit 1: no "below 3/1 = 300.00%" -----------------------------------------------------


def test_limit_1_confidence_is_not_a_bound_above_100_percent(cli, art):
    import json

    table = cli(art.pt2, "--data", art.npy, "--limit", "1")
    assert table.exit_code == 0, table.stderr
    assert "300.00%" not in table.stdout and "3/1 =" not in table.stdout, table.stdout
    assert "cannot bound" in table.stdout
    for fmt in ("markdown", "json"):
        result = cli(art.pt2, "--data", art.npy, "--limit", "1", "--format", fmt)
        assert result.exit_code == 0, result.stderr
        assert "300.0" not in result.stdout
    report = json.loads(result.stdout)
    few = [f for f in report["findings"] if f["rule"] == "few-samples"]
    assert len(few) == 1 and "too few" in few[0]["message"] and "1 sample:" in few[0]["message"]


# --- hard-swish / hard-sigmoid gates: the PyTorch paths say what the ONNX path says ----------


def _gated_module():  # noqa: ANN202
    """One ReLU site and three gates: nn.Hardswish, F.hardswish, F.hardsigmoid."""
    import torch
    from torch import nn

    class Gated(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.a = nn.Linear(8, 8)
            self.hs = nn.Hardswish()
            self.b = nn.Linear(8, 8)
            self.c = nn.Linear(8, 8)
            with torch.no_grad():
                self.a.bias[6] = -1e3  # planted dead

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            h = torch.relu(self.a(x))
            g = self.hs(self.b(h))
            g = nn.functional.hardswish(self.c(g))
            return nn.functional.hardsigmoid(g) * h

    return Gated().eval()


def _gate_counts(warnings_seen: list[str]) -> list[int]:
    return [int(w.split()[0]) for w in warnings_seen if "hard-swish/hard-sigmoid gate" in w]


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_torch_paths_count_hard_gates_like_onnx(tmp_path, method):
    import warnings

    import torch

    from reludoctor.engine import scan

    model = _gated_module()
    x = np.random.default_rng(0).standard_normal((32, 8)).astype(np.float32)
    seen: list[str] = []
    report = scan(model, x, method=method, on_warning=seen.append)
    assert _gate_counts(seen) == [3], seen  # the model's three gates, counted by construction
    assert [list(s.dead_units) for s in report.sites] == [_dead_after_fc(model.a, x)]
    assert all("hard" not in s.op for s in report.sites)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(4, 8),), tmp_path / "gated.onnx", input_names=["x"],
                          dynamic_axes={"x": {0: "N"}}, dynamo=False, opset_version=17)
    onnx_seen: list[str] = []
    scan(tmp_path / "gated.onnx", x, on_warning=onnx_seen.append)
    assert _gate_counts(onnx_seen) == _gate_counts(seen)


# --- ONNX suggestions: ONNX names and the training code, no PyTorch code on node names --------


def _decoder_module():  # noqa: ANN202
    """m.decoder.layers.{0,1}.fc1 -> ReLU -> fc2, two dead units planted in layers.0.fc1."""
    import torch
    from torch import nn

    class Layer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1 = nn.Linear(8, 16)
            self.activation_fn = nn.ReLU()
            self.fc2 = nn.Linear(16, 8)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc2(self.activation_fn(self.fc1(x)))

    class Decoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.layers = nn.ModuleList([Layer(), Layer()])

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            for layer in self.layers:
                x = layer(x)
            return x

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.decoder = Decoder()

    class Wrapper(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.m = Model()
            with torch.no_grad():
                self.m.decoder.layers[0].fc1.bias[[2, 5]] = -50.0

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.m.decoder(x)

    return Wrapper().eval()


def test_onnx_suggestions_name_onnx_initializers_not_pytorch_code(tmp_path):
    import warnings

    import onnx
    import torch

    from reludoctor.engine import scan

    model = _decoder_module()
    path = tmp_path / "decoder.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (torch.randn(4, 8),), path, input_names=["x"],
                          dynamic_axes={"x": {0: "N"}}, dynamo=False)
    proto = onnx.load(str(path))
    nodes = [n.name for n in proto.graph.node]
    # The oracle: the Gemm feeding the first Relu and its weight initializer, read from the file.
    first_relu = next(n for n in proto.graph.node if n.op_type == "Relu")
    gemm = next(n for n in proto.graph.node if first_relu.input[0] in n.output)
    initializers = {t.name for t in proto.graph.initializer}
    assert gemm.input[1] in initializers
    x = np.random.default_rng(0).standard_normal((256, 8)).astype(np.float32)

    report = scan(path, x, on_warning=lambda m: None)
    by_rule = {}
    for finding in report.findings:
        text = finding.suggestion
        assert "torch.nn.init" not in text and "kaiming_normal_(" not in text, text
        assert "nn.LeakyReLU" not in text and "F.leaky_relu" not in text, text
        assert not any(f"{node}.weight" in text or f"{node}.bias" in text for node in nodes), text
        by_rule.setdefault((finding.rule, finding.site), text)
    dead = by_rule[("dead-units", first_relu.name)]
    assert gemm.name in dead and gemm.input[1] in dead
    assert "training code" in dead and "reludoctor fix" in dead
    assert ("negative-bias", first_relu.name) in by_rule  # the planted -50 biases

    torch_report = scan(model, x, on_warning=lambda m: None)  # the PyTorch path keeps its code
    assert any("torch.nn.init.kaiming_normal_(m.decoder.layers.0.fc1.weight" in f.suggestion
               for f in torch_report.findings)


def test_onnx_suggestion_of_a_fully_dead_site():
    """dead-site's evidence holds a unit count, not a list: its ONNX suggestion still renders."""
    from onnx import TensorProto, helper, numpy_helper

    from reludoctor.engine import scan

    w = numpy_helper.from_array(np.ones((4, 3), np.float32), "w")
    b = numpy_helper.from_array(np.full((3,), -100.0, np.float32), "b")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["mm"], name="mm"),
         helper.make_node("Add", ["mm", "b"], ["pre"], name="add"),
         helper.make_node("Relu", ["pre"], ["y"], name="relu")],
        "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])], [w, b])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = np.random.default_rng(0).standard_normal((64, 4)).astype(np.float32)
    report = scan(model, x, on_warning=lambda m: None)
    dead_site = [f for f in report.findings if f.rule == "dead-site"]
    assert len(dead_site) == 1
    assert "ONNX node mm" in dead_site[0].suggestion and "initializer w" in dead_site[0].suggestion
    assert "torch.nn.init" not in dead_site[0].suggestion
