"""Bad input and usage: exit 2 with one clear line on stderr naming the file, never a
traceback; untrusted pickles never execute; internal errors exit 3 (a traceback only with
--debug)."""

from __future__ import annotations

import os
import pickle
import shutil
import zipfile
from pathlib import Path

import numpy as np
import pytest
from reludoctor_cli_checks import assert_input_error, sha256

# --- model files -------------------------------------------------------------------------


def _missing(art, tmp):  # noqa: ANN001, ANN202
    return tmp / "nope.pt2", ["no such file"]


def _directory(art, tmp):  # noqa: ANN001, ANN202
    (tmp / "models").mkdir()
    return tmp / "models", ["directory"]


def _empty(art, tmp):  # noqa: ANN001, ANN202
    (tmp / "empty.pt2").write_bytes(b"")
    return tmp / "empty.pt2", ["empty"]


def _truncated_pt2(art, tmp):  # noqa: ANN001, ANN202
    data = art.pt2.read_bytes()
    (tmp / "cut.pt2").write_bytes(data[: len(data) // 2])
    return tmp / "cut.pt2", []


def _truncated_to_header(art, tmp):  # noqa: ANN001, ANN202
    (tmp / "cut.pt2").write_bytes(art.pt2.read_bytes()[:64])
    return tmp / "cut.pt2", []


def _pt2_garbled_inside(art, tmp):  # noqa: ANN001, ANN202
    # Central directory intact, every member's content replaced by junk: torch.export.load fails.
    with zipfile.ZipFile(art.pt2) as src, zipfile.ZipFile(tmp / "junk.pt2", "w") as dst:
        for info in src.infolist():
            dst.writestr(info, b"\x00garbage\xff" * 3)
    return tmp / "junk.pt2", []


def _torchscript_truncated(art, tmp):  # noqa: ANN001, ANN202
    data = art.torchscript.read_bytes()
    (tmp / "cut.ts").write_bytes(data[: len(data) - 200])
    return tmp / "cut.ts", []


def _random_bytes(seed: int, head: bytes = b""):  # noqa: ANN202
    def build(art, tmp):  # noqa: ANN001, ANN202
        payload = np.random.default_rng(seed).bytes(4096)
        if not head and payload[:1] in (b"\x80", b"\x08"):  # keep plain noise plain
            payload = b"\x17" + payload[1:]
        (tmp / "noise.pt").write_bytes(head + payload)
        return tmp / "noise.pt", []

    return build


def _text(art, tmp):  # noqa: ANN001, ANN202
    (tmp / "model.pt").write_text("this is not a model\n" * 20)
    return tmp / "model.pt", ["not a recognised model file"]


def _zip_of_text(art, tmp):  # noqa: ANN001, ANN202
    with zipfile.ZipFile(tmp / "model.pt", "w") as archive:
        archive.writestr("notes.txt", "hello")
    return tmp / "model.pt", ["zip"]


def _pickled_module(art, tmp):  # noqa: ANN001, ANN202
    return art.pickled_module, ["--trust-model"]


def _dict_of_non_tensors(art, tmp):  # noqa: ANN001, ANN202
    import torch

    torch.save({"epoch": 3, "lr": 0.1}, tmp / "ckpt.pt")
    return tmp / "ckpt.pt", ["state_dict"]


MODEL_CASES = {
    "missing": _missing,
    "directory": _directory,
    "empty": _empty,
    "truncated-pt2": _truncated_pt2,
    "truncated-pt2-to-header": _truncated_to_header,
    "truncated-torchscript": _torchscript_truncated,
    "random-bytes": _random_bytes(1),
    "random-bytes-2": _random_bytes(2),
    "random-bytes-pickle-magic": _random_bytes(3, b"\x80\x02"),
    "random-bytes-zip-magic": _random_bytes(4, b"PK\x03\x04"),
    "text-file": _text,
    "zip-of-text": _zip_of_text,
    "pickled-module-without-flag": _pickled_module,
    "checkpoint-without-tensors": _dict_of_non_tensors,
}


@pytest.mark.parametrize("case", list(MODEL_CASES))
def test_bad_model_file_is_one_line_exit_2(cli, art, tmp_path, case):
    path, mentions = MODEL_CASES[case](art, tmp_path)
    before = sha256(path) if path.is_file() else None
    extra = ["--arch", "reludoctor_cli_zoo:planted"] if case == "checkpoint-without-tensors" else []
    result = cli(path, "--data", art.npy, *extra)
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(path), *mentions)
    if before is not None:
        assert sha256(path) == before


def test_pt2_with_garbled_members_is_one_line_exit_2(cli, art, tmp_path):
    path, _ = _pt2_garbled_inside(art, tmp_path)
    result = cli(path, "--data", art.npy)
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(path))


def test_pickled_module_loads_with_trust_model(cli, art):
    result = cli(art.pickled_module, "--data", art.npy, "--trust-model")
    assert result.exit_code == 0, result.stderr
    assert "pickled-module" in result.stdout
    deprecated = cli(art.pickled_module, "--data", art.npy, "--unsafe-pickle")
    assert deprecated.exit_code == 0, deprecated.stderr
    assert "--unsafe-pickle is deprecated" in deprecated.stderr


@pytest.mark.parametrize("name, content", [
    ("model.onnx", b"not an onnx model at all\n"),
    ("model.bin", b"\x08\x07" + bytes(range(64))),
])
def test_bad_onnx_file_is_one_line_exit_2(cli, art, tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    result = cli(path, "--data", art.npy)
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(path))


# --- malicious pickles -------------------------------------------------------------------


class _OpenFile:
    """Unpickling calls open(marker, 'w'): the marker exists iff the pickle executed."""

    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.marker, "w"))


class _System:
    def __init__(self, marker: Path):
        self.marker = str(marker)

    def __reduce__(self):  # noqa: ANN204
        return (os.system, (f"touch '{self.marker}'",))


def _save_malicious(payload: object, path: Path, how: str) -> None:
    if how == "torch.save":
        import torch

        torch.save(payload, path)
    elif how == "torch.save-in-state-dict":
        import torch

        torch.save({"fc1.weight": torch.zeros(2), "evil": payload}, path)
    else:
        with path.open("wb") as handle:
            pickle.dump(payload, handle, protocol=int(how.rsplit("-", 1)[1]))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol:UserWarning")
@pytest.mark.parametrize("gadget", [_OpenFile, _System])
@pytest.mark.parametrize("how", ["torch.save", "torch.save-in-state-dict", "pickle-2", "pickle-4"])
def test_malicious_model_pickle_never_executes(cli, tmp_path, gadget, how):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _save_malicious(gadget(marker), path, how)
    result = cli(path, "--arch", "reludoctor_cli_zoo:planted", "--input-shape", "8")
    assert not marker.exists(), "the pickle was executed"
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(path))


@pytest.mark.parametrize("gadget", [_OpenFile, _System])
@pytest.mark.parametrize("how", ["torch.save", "npy-object-array", "npz-object-array", "pickle-2"])
def test_malicious_data_pickle_never_executes(cli, art, tmp_path, gadget, how):
    marker = tmp_path / "pwned"
    if how == "npy-object-array":
        path = tmp_path / "evil.npy"
        np.save(path, np.array([gadget(marker)], dtype=object), allow_pickle=True)
    elif how == "npz-object-array":
        path = tmp_path / "evil.npz"
        np.savez(path, x=np.array([gadget(marker)], dtype=object))
    else:
        path = tmp_path / "evil.pt"
        _save_malicious(gadget(marker), path, how)
    result = cli(art.pt2, "--data", path)
    assert not marker.exists(), "the pickle was executed"
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(path))


@pytest.mark.slow
def test_malicious_pickle_in_a_real_process(run_cli, tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    _save_malicious(_System(marker), path, "torch.save")
    proc = run_cli("scan", path, "--arch", "reludoctor_cli_zoo:planted")
    assert not marker.exists()
    line = assert_input_error(proc.returncode, proc.stdout, proc.stderr, str(path))
    assert "--trust-model" in line


@pytest.mark.slow
def test_protocol_4_pickle_in_a_real_process_is_one_line(run_cli, tmp_path):
    path = tmp_path / "evil.pkl"
    _save_malicious(_System(tmp_path / "pwned"), path, "pickle-4")
    proc = run_cli("scan", path, "--input-shape", "8")
    assert_input_error(proc.returncode, proc.stdout, proc.stderr, str(path))


# --- state_dict and --arch -----------------------------------------------------------------


@pytest.mark.parametrize("args, mentions", [
    ([], ["--arch"]),
    (["--arch", "reludoctor_cli_zoo:planted", "--arch-kwargs", '{"hidden": 5}'], ["--arch", "does not fit"]),
    (["--arch", "reludoctor_cli_zoo:clean"], ["--arch", "does not fit"]),
    (["--arch", "reludoctor_cli_zoo_nonexistent:planted"], ["--arch", "cannot import"]),
    (["--arch", "reludoctor_cli_zoo:no_such_factory"], ["--arch"]),
    (["--arch", "reludoctor_cli_zoo"], ["--arch"]),
    (["--arch", "reludoctor_cli_zoo:planted", "--arch-kwargs", "{hidden: 5"], ["--arch-kwargs", "JSON"]),
    (["--arch", "reludoctor_cli_zoo:planted", "--arch-kwargs", "[16]"], ["--arch-kwargs"]),
    (["--arch", "reludoctor_cli_zoo:planted", "--arch-kwargs", '{"width": 3}'], ["--arch-kwargs"]),
    (["--arch", "reludoctor_cli_zoo:IN_FEATURES"], ["--arch"]),
    pytest.param(["--arch", "reludoctor_cli_zoo:broken"], ["--arch", "unsupported configuration"],
                 id="factory-raises"),
])
def test_state_dict_arch_errors(cli, art, args, mentions):
    result = cli(art.state_dict, "--data", art.npy, *args)
    assert_input_error(result.exit_code, result.stdout, result.stderr, *mentions)


def test_arch_on_a_non_state_dict_is_refused(cli, art):
    result = cli(art.pt2, "--data", art.npy, "--arch", "reludoctor_cli_zoo:planted")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--arch", str(art.pt2))


# --- calibration data --------------------------------------------------------------------


def _write_npy(array: np.ndarray):  # noqa: ANN202
    def build(tmp: Path) -> Path:
        np.save(tmp / "d.npy", array)
        return tmp / "d.npy"

    return build


def _nan() -> np.ndarray:
    x = np.ones((40, 8), np.float32)
    x[33, 2] = np.nan
    return x


def _inf() -> np.ndarray:
    x = np.ones((40, 8), np.float32)
    x[5, 0] = -np.inf
    return x


def _npz_wrong_keys(tmp: Path) -> Path:
    np.savez(tmp / "d.npz", a=np.ones((4, 8), np.float32), b=np.ones((4, 8), np.float32))
    return tmp / "d.npz"


def _not_data(tmp: Path) -> Path:
    (tmp / "d.npy").write_text("1,2,3\n")
    return tmp / "d.npy"


def _truncated_npy(tmp: Path) -> Path:
    np.save(tmp / "d.npy", np.ones((40, 8), np.float32))
    data = (tmp / "d.npy").read_bytes()
    (tmp / "d.npy").write_bytes(data[:-100])
    return tmp / "d.npy"


DATA_CASES = {
    "missing": (lambda tmp: tmp / "nope.npy", ["no such file"]),
    "directory": (lambda tmp: tmp, ["directory"]),
    "wrong-feature-count": (_write_npy(np.ones((10, 5), np.float32)), ["shape"]),
    "wrong-rank": (_write_npy(np.ones((10, 2, 4), np.float32)), ["shape"]),
    "zero-samples": (_write_npy(np.ones((0, 8), np.float32)), ["no samples"]),
    "scalar": (_write_npy(np.float32(1.0)), ["scalar"]),
    "nan": (_write_npy(_nan()), ["NaN", "32-39"]),
    "inf": (_write_npy(_inf()), ["NaN or infinite", "0-31"]),
    "object-array": (_write_npy(np.array([{"a": 1}, None], dtype=object)), ["pickled"]),
    "strings": (_write_npy(np.array([["a"] * 8] * 4)), ["not numbers"]),
    "int-for-float-model": (_write_npy(np.ones((10, 8), np.int64)), ["int64", "float32"]),
    "npz-missing-key": (_npz_wrong_keys, ["input(s) x", "a, b"]),
    "text-file": (_not_data, ["not a .npy"]),
    "truncated-npy": (_truncated_npy, []),
}


@pytest.mark.parametrize("case", list(DATA_CASES))
def test_bad_data_is_one_line_exit_2(cli, art, tmp_path, case):
    build, mentions = DATA_CASES[case]
    data = build(tmp_path)
    before = sha256(data) if data.is_file() else None
    result = cli(art.pt2, "--data", data)
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(data), *mentions)
    if before is not None:
        assert sha256(data) == before


def test_data_that_does_not_fit_a_model_without_input_specs(cli, art, tmp_path):
    # TorchScript carries no input shapes: the mismatch surfaces when the model runs.
    np.save(tmp_path / "d.npy", np.ones((10, 5), np.float32))
    result = cli(art.torchscript, "--data", tmp_path / "d.npy", "--trust-model")
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(tmp_path / "d.npy"),
                       "samples 0-9")


def test_int_data_for_a_float_state_dict_model(cli, art, tmp_path):
    np.save(tmp_path / "d.npy", np.ones((10, 8), np.int64))
    result = cli(art.state_dict, "--data", tmp_path / "d.npy", "--arch", "reludoctor_cli_zoo:planted",
                 "--method", "dispatch")
    assert_input_error(result.exit_code, result.stdout, result.stderr, str(tmp_path / "d.npy"))


# --- options -----------------------------------------------------------------------------


@pytest.mark.parametrize("args, mentions", [
    (["--device", "tpu"], ["--device", "tpu"]),
    (["--device", "banana"], ["--device", "banana"]),
    (["--device", "cpu:x"], ["--device"]),
    (["--input-shape", "abc"], ["--input-shape"]),
    (["--input-shape", "8,-1"], ["--input-shape"]),
    (["--input-shape", "0"], ["--input-shape"]),
    (["--limit", "0"], ["--limit"]),
    (["--limit", "-3"], ["--limit"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--batch-size", "-1"], ["--batch-size"]),
    (["--near-dead", "0"], ["--near-dead"]),
    (["--near-dead", "2"], ["--near-dead"]),
    (["--dormant-tau", "-1"], ["--dormant-tau"]),
    pytest.param(["--dormant-tau", "nan"], ["--dormant-tau"], id="dormant-tau-nan"),
    pytest.param(["--dormant-tau", "inf"], ["--dormant-tau"], id="dormant-tau-inf"),
    (["--unit-axis", "0"], ["--unit-axis"]),
    (["--unit-axis", "5"], ["--unit-axis"]),
    (["--method", "magic"], ["--method"]),
    (["--method", "export", "--data", "{npy}", "--trust-model", "--model", "{torchscript}"], ["--method"]),
])
def test_bad_option_values_are_one_line_exit_2(cli, art, args, mentions):
    model = art.pt2
    if "--model" in args:
        index = args.index("--model")
        model = Path(args[index + 1].format(torchscript=art.torchscript))
        args = args[:index] + args[index + 2:]
    args = [a.format(npy=art.npy) for a in args]
    if "--data" not in args:
        args += ["--data", str(art.npy)]
    result = cli(model, *args)
    assert_input_error(result.exit_code, result.stdout, result.stderr, *mentions)


def test_device_cuda_without_cuda(cli, art):
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    for device in ("cuda", "cuda:0"):
        result = cli(art.pt2, "--data", art.npy, "--device", device)
        assert_input_error(result.exit_code, result.stdout, result.stderr, "--device", "CUDA")


def test_synthetic_data_needs_a_shape_for_a_model_without_specs(cli, art):
    result = cli(art.torchscript, "--trust-model")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--input-shape")


# --- outputs -----------------------------------------------------------------------------


@pytest.mark.parametrize("target", ["pt2", "npy"])
def test_json_onto_an_input_file_is_refused(cli, art, tmp_path, target):
    model, data = tmp_path / "m.pt2", tmp_path / "x.npy"
    shutil.copy(art.pt2, model)
    shutil.copy(art.npy, data)
    hashes = (sha256(model), sha256(data))
    victim = model if target == "pt2" else data
    for spelling in (victim, Path(os.path.relpath(victim))):  # also when spelled differently
        result = cli(model, "--data", data, "--json", spelling)
        assert_input_error(result.exit_code, result.stdout, result.stderr, "--json", "input")
    assert (sha256(model), sha256(data)) == hashes
    assert sorted(os.listdir(tmp_path)) == ["m.pt2", "x.npy"]


def test_json_onto_an_input_file_through_a_symlink_is_refused(cli, art, tmp_path):
    model = tmp_path / "m.pt2"
    shutil.copy(art.pt2, model)
    link = tmp_path / "link.json"
    link.symlink_to(model)
    digest = sha256(model)
    result = cli(model, "--data", art.npy, "--json", link)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--json")
    assert sha256(model) == digest


def test_json_in_a_missing_folder(cli, art, tmp_path):
    out = tmp_path / "no" / "such" / "r.json"
    result = cli(art.pt2, "--data", art.npy, "--json", out)
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--json", str(out.parent))
    assert not (tmp_path / "no").exists()


def test_json_onto_a_directory(cli, art, tmp_path):
    (tmp_path / "out").mkdir()
    result = cli(art.pt2, "--data", art.npy, "--json", tmp_path / "out")
    assert_input_error(result.exit_code, result.stdout, result.stderr, "--json", str(tmp_path / "out"))
    assert os.listdir(tmp_path / "out") == []


# --- one-line errors in a real process (no torch needed before they fail) ------------------


@pytest.mark.parametrize("case", ["missing", "text-file"])
def test_model_errors_in_a_real_process(run_cli, art, tmp_path, case):
    path, mentions = MODEL_CASES[case](art, tmp_path)
    proc = run_cli("scan", path, "--data", art.npy)
    assert_input_error(proc.returncode, proc.stdout, proc.stderr, str(path), *mentions)


def test_usage_error_in_a_real_process_json_stdout_stays_empty(run_cli, art, tmp_path):
    proc = run_cli("scan", art.pt2, "--json", "-", "--input-shape", "x")
    assert_input_error(proc.returncode, proc.stdout, proc.stderr, "--input-shape")


# --- internal errors: exit 3 ---------------------------------------------------------------


def _boom(**_: object) -> None:
    raise RuntimeError("boom: observer state is inconsistent\nsecond line")


def test_internal_error_is_one_line_exit_3(cli, art, monkeypatch):
    # engine.py does `from reludoctor.core.stats import site_stats`: patch the name it calls.
    monkeypatch.setattr("reludoctor.engine.site_stats", _boom)
    result = cli(art.pt2, "--data", art.npy)
    assert result.exit_code == 3
    assert result.stdout == ""
    assert "Traceback" not in result.stdout + result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("reludoctor: internal error: RuntimeError: boom")
    assert "--debug" in lines[0]


def test_debug_shows_the_traceback_of_an_internal_error(cli, art, monkeypatch):
    monkeypatch.setattr("reludoctor.engine.site_stats", _boom)
    result = cli(art.pt2, "--data", art.npy, "--debug")
    assert result.exit_code == 3
    assert "Traceback (most recent call last)" in result.stderr
    assert "_boom" in result.stderr and "RuntimeError: boom" in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("reludoctor: internal error:")
    assert result.stdout == ""


def test_internal_error_with_json_dash_leaves_stdout_empty(cli, art, monkeypatch):
    monkeypatch.setattr("reludoctor.engine.site_stats", _boom)
    result = cli(art.pt2, "--data", art.npy, "--json", "-")
    assert result.exit_code == 3
    assert result.stdout == ""


def test_debug_on_an_input_error_keeps_exit_2(cli, art, tmp_path):
    result = cli(tmp_path / "nope.pt2", "--debug")
    assert result.exit_code == 2
    assert "Traceback" in result.stderr  # --debug shows where it was raised
    assert result.stderr.strip().splitlines()[-1].startswith("reludoctor: error:")
