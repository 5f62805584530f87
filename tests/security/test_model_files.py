"""Untrusted model files never run code: .pt2 verification, TorchScript refusal, --trust-model.

Each attack is a small edit of the bundled ``digits_mlp_dead.pt2`` (or ``digits_cnn.ts``). A
payload that runs creates a marker file: every test asserts the marker is absent and the scan
ends with exit 2 and one line naming the entry, and that the positive control (the unedited
file, or --trust-model where that is the point) still scans.
"""

from __future__ import annotations

import io
import json
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch

from reludoctor.backends.torch import pt2_verify
from reludoctor.errors import ModelLoadError, UnsafeModelError

ROOT = Path(__file__).resolve().parents[2]
PT2 = ROOT / "fixtures" / "models" / "digits_mlp_dead.pt2"
TS = ROOT / "fixtures" / "models" / "digits_cnn.ts"
FLAT = ROOT / "fixtures" / "data" / "digits_calib_flat.npy"
IMAGES = ROOT / "fixtures" / "data" / "digits_calib.npy"
PREFIX = "digits_mlp_dead/"


class _Payload:
    """Unpickling it creates ``marker`` (and nothing else)."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def _entries(path: Path = PT2) -> dict[str, bytes]:
    with zipfile.ZipFile(path) as archive:
        return {info.filename: archive.read(info.filename) for info in archive.infolist()}


def _write(entries: dict[str, bytes], path: Path) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return path


def _torch_payload(marker: Path) -> bytes:
    buffer = io.BytesIO()
    torch.save({"x": _Payload(marker)}, buffer)
    return buffer.getvalue()


def _edit_json(entries: dict[str, bytes], name: str, edit) -> None:  # noqa: ANN001
    document = json.loads(entries[PREFIX + name])
    edit(document)
    entries[PREFIX + name] = json.dumps(document).encode()


def _scan(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "reludoctor", "scan", *args, "-q"],
                          capture_output=True, text=True, cwd=cwd or ROOT, timeout=300)


def _assert_refused(result: subprocess.CompletedProcess, *words: str) -> None:
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1 and "Traceback" not in result.stderr, result.stderr
    for word in words:
        assert word in lines[0], lines[0]


# --- Crafted archives: each edit, the marker it would create, the words of the refusal ---------

def _sample_inputs_pickle(entries, marker):  # noqa: ANN001, ANN202
    entries[PREFIX + "data/sample_inputs/model.pt"] = _torch_payload(marker)
    return "sample_inputs"


def _use_pickle_weight(entries, marker):  # noqa: ANN001, ANN202
    def edit(config):  # noqa: ANN001, ANN202
        first = next(iter(config["config"].values()))
        first["use_pickle"] = True
    _edit_json(entries, "data/weights/model_weights_config.json", edit)
    entries[PREFIX + "data/weights/weight_0"] = _torch_payload(marker)
    return "use_pickle"


def _pickled_constant_entry(path_name: str, payload, words: str):  # noqa: ANN001, ANN202
    """A constant stored as a pickle under ``path_name`` (a tensor constant or an opaque object)."""
    def craft(entries, marker):  # noqa: ANN001, ANN202
        def edit(config):  # noqa: ANN001, ANN202
            config["config"]["c"] = {"path_name": path_name, "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}
        _edit_json(entries, "data/constants/model_constants_config.json", edit)
        entries[PREFIX + "data/constants/" + path_name] = payload(marker)
        return words
    return craft


def _legacy_weights(entries, marker):  # noqa: ANN001, ANN202
    entries[PREFIX + "data/weights/model.pt"] = _torch_payload(marker)
    return "legacy"


def _aoti_library(entries, marker):  # noqa: ANN001, ANN202
    entries[PREFIX + "data/aotinductor/model/model.so"] = b"\x7fELF" + b"\0" * 64
    return "native code"


def _graph_op(target: str, args: list):  # noqa: ANN202
    def craft(entries, marker):  # noqa: ANN001, ANN202
        def edit(program):  # noqa: ANN001, ANN202
            node = program["graph_module"]["graph"]["nodes"][0]
            node["target"] = target
            node["inputs"] = [{"name": "filename", "arg": {"as_string": str(marker)}, "kind": 1},
                              *args]
        _edit_json(entries, "models/model.json", edit)
        return target
    return craft


def _huge_weight(entries, marker):  # noqa: ANN001, ANN202
    def edit(config):  # noqa: ANN001, ANN202
        meta = config["config"]["layers.0.weight"]["tensor_meta"]
        meta["sizes"] = [{"as_int": 40000}, {"as_int": 40000}]
        meta["strides"] = [{"as_int": 40000}, {"as_int": 1}]
    _edit_json(entries, "data/weights/model_weights_config.json", edit)
    entries[PREFIX + "data/weights/weight_0"] = b""
    return "but its record holds 0"


def _sympy_code(entries, marker):  # noqa: ANN001, ANN202
    def edit(program):  # noqa: ANN001, ANN202
        for meta in program["graph_module"]["graph"]["tensor_values"].values():
            for size in meta["sizes"]:
                if "as_expr" in size:
                    size["as_expr"]["expr_str"] = f"__import__('os').system('touch {marker}')"
    _edit_json(entries, "models/model.json", edit)
    return "symbolic expression"


def _guard_code(entries, marker):  # noqa: ANN001, ANN202
    def edit(program):  # noqa: ANN001, ANN202
        program["guards_code"] = [f"__import__('os').system('touch {marker}') == 0"]
    _edit_json(entries, "models/model.json", edit)
    return "guard"


def _argument_name_code(entries, marker):  # noqa: ANN001, ANN202
    def edit(program):  # noqa: ANN001, ANN202
        signature = program["graph_module"]["module_call_graph"][0]["signature"]
        signature["forward_arg_names"] = [f"x=__import__('os').system('touch {marker}')"]
    _edit_json(entries, "models/model.json", edit)
    return "forward argument names"


ATTACKS = {
    "sample-inputs-pickle": _sample_inputs_pickle,
    "use-pickle-weight": _use_pickle_weight,
    "pickled-tensor-constant": _pickled_constant_entry("tensor_0", _torch_payload, "use_pickle"),
    "opaque-object-constant": _pickled_constant_entry(
        "opaque_obj_0", lambda marker: pickle.dumps(_Payload(marker)), "opaque_obj_0"),
    "legacy-weights-pickle": _legacy_weights,
    "aoti-shared-library": _aoti_library,
    "graph-from-file": _graph_op("torch.ops.aten.from_file.default", []),
    "graph-torch-save": _graph_op("torch.save", []),
    "graph-custom-namespace": _graph_op("torch.ops.myns.write.default", []),
    "huge-weight-empty-record": _huge_weight,
    "sympy-expression-code": _sympy_code,
    "guard-code": _guard_code,
    "argument-name-code": _argument_name_code,
}


@pytest.fixture(params=sorted(ATTACKS))
def attack(request, tmp_path):  # noqa: ANN001, ANN201
    entries = _entries()
    marker = tmp_path / "MARKER"
    words = ATTACKS[request.param](entries, marker)
    return _write(entries, tmp_path / "model.pt2"), marker, words


def test_verifier_refuses_each_attack_without_running_it(attack):  # noqa: ANN001
    path, marker, words = attack
    with pytest.raises(UnsafeModelError) as caught:
        pt2_verify.verify(path.read_bytes(), str(path))
    assert words in caught.value.message
    assert "--trust-model" in caught.value.one_line()
    assert not marker.exists()


@pytest.mark.slow
@pytest.mark.parametrize("name", ["sample-inputs-pickle", "use-pickle-weight", "graph-from-file",
                                  "huge-weight-empty-record", "sympy-expression-code"])
def test_scan_and_fix_refuse_crafted_archives(name, tmp_path):  # noqa: ANN001
    entries = _entries()
    marker = tmp_path / "MARKER"
    ATTACKS[name](entries, marker)
    path = _write(entries, tmp_path / "model.pt2")
    before = path.read_bytes()
    _assert_refused(_scan(str(path), "--data", str(FLAT)), str(path), "--trust-model")
    fixed = subprocess.run([sys.executable, "-m", "reludoctor", "fix", str(path), "--data", str(FLAT),
                            "--leaky", "0.1", "--dry-run"], capture_output=True, text=True,
                           cwd=ROOT, timeout=300)
    _assert_refused(fixed, "--trust-model")
    assert not marker.exists()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.pt2"]


def test_bundled_and_rewritten_archives_verify(tmp_path):
    """Positive controls: the bundled .pt2 files and a plain re-zip of one pass verification."""
    for path in sorted((ROOT / "fixtures" / "models").glob("*.pt2")):
        pt2_verify.verify(path.read_bytes(), str(path))
    copy = _write(_entries(), tmp_path / "copy.pt2")
    pt2_verify.verify(copy.read_bytes(), str(copy))


def test_declared_sizes_checked_against_record_bytes(tmp_path):
    """One byte short of the declared [128, 64] float32 weight is refused; exactly enough is not."""
    entries = _entries()
    name = PREFIX + "data/weights/weight_0"
    assert len(entries[name]) == 128 * 64 * 4
    entries[name] = entries[name][:-4]
    short = _write(entries, tmp_path / "short.pt2")
    with pytest.raises(UnsafeModelError, match="needing 32,768 bytes, but its record holds 32,764"):
        pt2_verify.verify(short.read_bytes(), str(short))


@pytest.mark.parametrize("expression, ok", [
    ("Symbol('s77', positive=True, integer=True)", True),
    ("Add(Mul(Integer(2), Symbol('s0', integer=True)), Integer(-1))", True),
    ("FloorDiv(Symbol('s0'), Integer(2))", True),
    ("Pow(Symbol('s0'), Integer(2))", True),
    ("Pow(Integer(9), Integer(999999999))", False),
    ("9**9**9", False),
    ("Symbol('s0').__class__", False),
    ("Symbol('a\"); import os')", False),
    ("lambdify('x', 'x')", False),
    ("[x for x in ()]", False),
])
def test_symbolic_expressions(expression, ok):  # noqa: ANN001
    if ok:
        pt2_verify._check_expression(expression, "e")
    else:
        with pytest.raises(UnsafeModelError):
            pt2_verify._check_expression(expression, "e")


@pytest.mark.parametrize("target, ok", [
    ("torch.ops.aten.relu.default", True),
    ("torch.ops.aten.relu_.default", True),
    ("torch.ops.aten.hardtanh.default", True),
    ("_operator.getitem", True),
    ("torch.sym_max", True),
    ("torch.ops.higher_order.cond", True),
    ("torch.ops.aten.from_file.default", False),
    ("torch.ops.aten.save.default", False),
    ("torch.ops.aten._print.default", False),
    ("torch.save", False),
    ("torch.hub.load", False),
    ("torch.ops.myns.op.default", False),
    ("torch.ops.higher_order.triton_kernel_wrapper_functional", False),
    ("os.system", False),
    ("#extension", False),
])
def test_operator_allow_list(target, ok):  # noqa: ANN001
    assert pt2_verify.allowed_target(target) is ok


# --- TorchScript ----------------------------------------------------------------------------

@pytest.mark.slow
def test_torchscript_refused_by_default_and_scans_when_trusted(tmp_path):
    refused = _scan(str(TS), "--data", str(IMAGES))
    _assert_refused(refused, "TorchScript", "--trust-model")
    trusted = _scan(str(TS), "--data", str(IMAGES), "--trust-model", "--json", str(tmp_path / "r.json"))
    assert trusted.returncode == 0, trusted.stderr
    report = json.loads((tmp_path / "r.json").read_text())
    expected = json.loads((ROOT / "fixtures" / "expected.json").read_text())["models"]["digits_cnn"]
    assert [(s["units"], s["dead_units"]) for s in report["sites"]] == \
        [(site["units"], site["dead_units"]) for site in expected["sites"].values()]


@pytest.mark.slow
def test_deprecated_unsafe_pickle_still_trusts_with_a_warning(tmp_path):
    result = _scan(str(TS), "--data", str(IMAGES), "--unsafe-pickle")
    assert result.returncode == 0, result.stderr
    assert "--unsafe-pickle is deprecated" in result.stderr and "--trust-model" in result.stderr


def _emptied_record(tmp_path: Path, record: str) -> Path:
    entries = _entries(TS)
    entries[f"digits_cnn/data/{record}"] = b""
    return _write(entries, tmp_path / "damaged.ts")


@pytest.mark.slow
def test_damaged_trusted_torchscript_is_an_error_not_a_crash(tmp_path):
    """An emptied storage record loads in torch and then segfaults in the first linear layer
    (record 27: the classifier's bias); the storage check refuses it first."""
    path = _emptied_record(tmp_path, "27")
    _assert_refused(_scan(str(path), "--data", str(IMAGES), "--trust-model"), "data/27",
                    "holds 0 bytes but declares 40")


def test_storage_check_reads_declared_sizes_without_running_the_pickle(tmp_path):
    from reludoctor.backends.torch.torchscript_check import check_storages

    check_storages(TS)
    with pytest.raises(ModelLoadError, match="data/6 holds 0 bytes but declares 18,432"):
        check_storages(_emptied_record(tmp_path, "6"))


def test_child_probe_turns_a_crash_into_an_error(tmp_path, monkeypatch):
    """probe_load reports a child killed by a signal (here: the probe itself segfaults)."""
    from reludoctor.backends.torch import torchscript_check

    monkeypatch.setattr(torchscript_check, "_PROBE", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)")
    with pytest.raises(ModelLoadError, match="crashed the loader \\(SIGSEGV\\)"):
        torchscript_check.probe_load(TS)


# --- --arch imports ----------------------------------------------------------------------------

@pytest.mark.slow
def test_arch_does_not_let_the_current_directory_shadow_installed_packages(tmp_path):
    """A torchvision/ folder in the current directory must not replace the installed package."""
    marker = tmp_path / "MARKER"
    shadow = tmp_path / "torchvision"
    shadow.mkdir()
    (shadow / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\n")
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    torch.save(model.state_dict(), tmp_path / "state.pt")
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 4)).astype(np.float32))
    (tmp_path / "local_arch.py").write_text(
        "import torch, torchvision\n"
        "def make():\n    return torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", "import sys; sys.path.pop(0); "
                             "from reludoctor.cli import main; sys.argv[0] = 'reludoctor'; main()",
                             "scan", "state.pt", "--arch", "local_arch:make", "--data", "x.npy", "-q"],
                            capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert result.returncode == 0, result.stderr
    assert not marker.exists()  # local_arch imported the installed torchvision


# --- sizes a model or labels file declares --------------------------------------------------

def test_a_pt2_fixed_batch_above_the_limit_is_refused_at_load(tmp_path):
    """A program exported with a static batch of 70,000 rows would pad every batch to it."""
    from reludoctor.data.calibration import MAX_FIXED_BATCH

    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    rows = MAX_FIXED_BATCH + 4464
    program = torch.export.export(model, (torch.zeros(rows, 4),))
    torch.export.save(program, tmp_path / "fixed.pt2")
    with pytest.raises(ModelLoadError, match="fixed batch of 70,000"):
        import reludoctor

        reludoctor.scan(tmp_path / "fixed.pt2", np.zeros((8, 4), np.float32))


@pytest.mark.slow
def test_labels_fifo_does_not_block_and_labels_are_protected_outputs(tmp_path):
    fifo = tmp_path / "labels.npy"
    os.mkfifo(fifo)
    result = _scan(str(PT2), "--data", str(FLAT), "--gradients", "--labels", str(fifo))
    _assert_refused(result, "--labels", "FIFO")
    labels = tmp_path / "labels2.npy"
    np.save(labels, np.zeros(360, np.int64))
    before = labels.read_bytes()
    result = _scan(str(PT2), "--data", str(FLAT), "--gradients", "--labels", str(labels),
                   "--json", str(labels))
    _assert_refused(result, "--json")
    assert labels.read_bytes() == before
