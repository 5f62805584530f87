"""Calibration data is untrusted input (issue 10): only regular files are read, byte order is
never misread, and a malformed data file is exit 2 with one line, never exit 3 or a hang.

Fuzzing found: a FIFO as ``--data`` (or as an image of a ``--data`` folder) blocked forever; a
symlink loop as ``--data`` or inside an image folder was exit 3; a big-endian ``>f4`` ``.npy`` fed
to an ONNX model gave a silently wrong report (and exit 3 for ``.pt2``/TorchScript); a corrupt
``.npz`` (BadZipFile, EINVAL, MemoryError) and a bf16 or sparse ``.pt`` were exit 3.

Oracles: ``fixtures/expected.json`` (dead units computed by the fixture builder with PyTorch) and
the same data in native byte order; numpy for the values read back.
"""

from __future__ import annotations

import io
import json
import os
import struct
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from reludoctor import safeio
from reludoctor.data.binding import InputSpec
from reludoctor.data.calibration import load_calibration
from reludoctor.errors import DataError
from tests.security.kit import (
    CALIB,
    CALIB_FLAT,
    CNN_ONNX,
    CNN_TS,
    MLP_ONNX,
    MLP_PT2,
    ROOT,
    cli,
    one_line_error,
    returns,
    run_cli,
)

EXPECTED = json.loads((ROOT / "fixtures" / "expected.json").read_text())
GRAY = InputSpec("input", (None, 1, 8, 8), "float32")
FLAT = InputSpec("input", (None, 64), "float32")

needs_fifo = pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this platform")


# ----------------------------------------------------------------------------------- helpers

def read_all(calibration: Any, batch_size: int = 64) -> list[np.ndarray]:
    return [np.concatenate(parts) for parts in zip(*calibration.batches(batch_size))]


def scan(model: Any, data: Any) -> Any:
    import reludoctor

    return reludoctor.scan(model, data, device="cpu", on_warning=lambda message: None)


def dead_sets(report: Any) -> list[tuple[int, ...]]:
    return [tuple(site.dead_units) for site in report.sites]


def expected_dead(model: str) -> list[tuple[int, ...]]:
    return [tuple(site["dead_units"]) for site in EXPECTED["models"][model]["sites"].values()]


def write_gray_png(path: Path, seed: int) -> Path:
    from PIL import Image

    pixels = np.random.default_rng(seed).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(pixels, mode="L").save(path)
    return path


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    if not hasattr(os, "mkfifo"):
        pytest.skip("no FIFOs on this platform")
    path = tmp_path / "pipe.npy"
    os.mkfifo(path)
    return path


@pytest.fixture
def loop(tmp_path: Path) -> Path:
    path = tmp_path / "loop.npy"
    os.symlink(path.name, path)  # points at itself
    return path


# ------------------------------------------------------------------ 1. regular files only


def test_fifo_as_data_is_refused_at_once(fifo: Path) -> None:
    with pytest.raises(DataError, match="FIFO"):
        returns(lambda: load_calibration(fifo, [GRAY]))


@needs_fifo
def test_fifo_as_data_is_exit_2_on_the_command_line(fifo: Path) -> None:
    done = run_cli("scan", CNN_ONNX, "--data", fifo)
    one_line_error(done.returncode, done.stderr, str(fifo), "FIFO")


def test_symlink_loop_as_data_is_exit_2(loop: Path) -> None:
    with pytest.raises(DataError, match="symlink loop"):
        load_calibration(loop, [GRAY])
    result = cli("scan", CNN_ONNX, "--data", loop)
    one_line_error(result.exit_code, result.stderr, str(loop), "symlink loop")


def test_a_device_as_data_is_refused() -> None:
    if not os.path.exists("/dev/zero"):
        pytest.skip("no /dev/zero")
    with pytest.raises(DataError, match="device"):
        returns(lambda: load_calibration("/dev/zero", [GRAY]))


def _image_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    for index, name in enumerate(["a.png", "b.png", "sub/c.png"]):
        write_gray_png(folder / name, index)
    return folder


@needs_fifo
def test_fifo_inside_an_image_folder_is_refused_at_discovery(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    os.mkfifo(folder / "sub" / "pipe.png")
    with pytest.raises(DataError, match=r"pipe\.png.*FIFO"):
        returns(lambda: load_calibration(folder, [GRAY]))
    done = run_cli("scan", CNN_ONNX, "--data", folder)
    one_line_error(done.returncode, done.stderr, "pipe.png", "FIFO")


def test_symlink_loop_inside_an_image_folder_is_exit_2(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    os.symlink("loop.png", folder / "loop.png")
    with pytest.raises(DataError, match=r"loop\.png.*symlink loop"):
        load_calibration(folder, [GRAY])
    result = cli("scan", CNN_ONNX, "--data", folder)
    one_line_error(result.exit_code, result.stderr, "loop.png", "symlink loop")


def test_other_non_images_in_a_folder_are_still_skipped(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    os.symlink("notes", folder / "notes")  # a loop, but not named as an image: never read
    (folder / "readme.txt").write_text("not an image")
    os.symlink(str(folder / "sub"), folder / "linked.png")  # a symlinked folder: not followed
    calibration = load_calibration(folder, [GRAY])
    assert calibration.samples == 3


# -------------------------------------------------------------------------- 2. byte order


def _big_endian(tmp_path: Path, source: Path) -> tuple[np.ndarray, Path, Path]:
    native = np.load(source)
    swapped = native.astype(native.dtype.newbyteorder(">"))
    assert swapped.dtype.str == ">f4" and np.array_equal(swapped, native)
    npy = tmp_path / "big.npy"
    np.save(npy, swapped)
    npz = tmp_path / "big.npz"
    np.savez_compressed(npz, swapped)
    assert np.load(npy, mmap_mode="r").dtype.str == ">f4"
    return native, npy, npz


@pytest.mark.parametrize("order", [">f4", ">f8", "<f4", ">i8"])
def test_batches_are_read_in_native_byte_order(tmp_path: Path, order: str) -> None:
    values = np.random.default_rng(1).standard_normal((10, 64)) * 100
    stored = values.astype(order)
    np.save(tmp_path / "x.npy", stored)
    np.savez(tmp_path / "x.npz", stored)
    want = stored.astype(np.dtype(order).newbyteorder("="))
    if want.dtype == np.float64:
        want = want.astype(np.float32)  # doubles become float32, as before
    spec = InputSpec("input", (None, 64), None)
    for path in (tmp_path / "x.npy", tmp_path / "x.npz"):
        (got,) = read_all(load_calibration(path, [spec]), batch_size=3)
        assert got.dtype.isnative and got.dtype == want.dtype
        np.testing.assert_array_equal(got, want)


def test_big_endian_data_gives_the_right_onnx_report(tmp_path: Path) -> None:
    _, npy, npz = _big_endian(tmp_path, CALIB_FLAT)
    expected = expected_dead("digits_mlp_dead")
    assert sum(map(len, expected)) > 0
    native = dead_sets(scan(MLP_ONNX, CALIB_FLAT))
    assert native == expected
    assert dead_sets(scan(MLP_ONNX, npy)) == native
    assert dead_sets(scan(MLP_ONNX, npz)) == native


def test_big_endian_data_on_the_command_line(tmp_path: Path) -> None:
    _, npy, _ = _big_endian(tmp_path, CALIB_FLAT)
    result = cli("scan", MLP_ONNX, "--data", npy, "--json", "-")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    got = [tuple(site["dead_units"]) for site in report["sites"]]
    assert got == expected_dead("digits_mlp_dead")
    assert report["summary"]["dead_units"] == sum(map(len, got))


def test_big_endian_data_with_pt2(tmp_path: Path) -> None:
    _, npy, npz = _big_endian(tmp_path, CALIB_FLAT)
    native = dead_sets(scan(MLP_PT2, CALIB_FLAT))
    assert native == expected_dead("digits_mlp_dead")
    assert dead_sets(scan(MLP_PT2, npy)) == native
    assert dead_sets(scan(MLP_PT2, npz)) == native


def test_big_endian_data_with_torchscript(tmp_path: Path) -> None:
    import warnings

    import torch

    _, npy, _ = _big_endian(tmp_path, CALIB)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        module = torch.jit.load(str(CNN_TS), map_location="cpu")  # our own fixture: trusted
    native = dead_sets(scan(module, CALIB))
    assert sum(map(len, native)) == sum(map(len, expected_dead("digits_cnn")))
    assert dead_sets(scan(module, npy)) == native


# -------------------------------------------------------------- 3. malformed data files


def _npy_bytes(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array)
    return buffer.getvalue()


def _npy_header_bytes(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    header = repr({"descr": descr, "fortran_order": False, "shape": shape}).encode()
    header += b" " * (63 - (10 + len(header)) % 64) + b"\n"
    return b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header


def test_npz_member_declaring_more_than_it_holds_is_refused_before_allocating(tmp_path: Path) -> None:
    path = tmp_path / "huge.npz"
    with zipfile.ZipFile(path, "w") as archive:
        # 2**40 float64 (8 TiB) declared, 16 bytes present: refused from the header, not by
        # numpy failing to allocate (that message would not name the declared shape)
        archive.writestr("arr_0.npy", _npy_header_bytes((2 ** 37, 8)) + b"\x00" * 16)
    with pytest.raises(DataError, match=r"declares \[137438953472, 8\] float64.*holds 16 bytes"):
        load_calibration(path, [FLAT])
    result = cli("scan", MLP_ONNX, "--data", path)
    one_line_error(result.exit_code, result.stderr, str(path), "declares")


def test_npz_member_whose_directory_size_is_forged_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "forged.npz"
    data = _npy_bytes(np.zeros((4, 64), np.float32))
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("arr_0.npy", data)
    raw = bytearray(path.read_bytes())
    # the central directory's uncompressed size (offset 24 in each entry): claim 1 TB
    central = raw.rindex(b"PK\x01\x02")
    raw[central + 24: central + 28] = struct.pack("<I", 0xFFFFFFF0)
    path.write_bytes(bytes(raw))
    with pytest.raises(DataError):
        load_calibration(path, [FLAT])


def test_npy_declaring_more_than_the_file_holds_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "short.npy"
    path.write_bytes(_npy_header_bytes((2 ** 50, 64), "<f4") + b"\x00" * 256)
    with pytest.raises(DataError, match="declares"):
        load_calibration(path, [FLAT])


@pytest.mark.parametrize("payload", [
    b"PK\x03\x04" + b"\x00" * 60,  # a local header and nothing else: BadZipFile
    b"PK\x03\x04garbage" + b"PK\x05\x06" + b"\x00" * 4 + struct.pack("<HHII", 1, 1, 0xFFFF, 0xFFFFFF) + b"\x00\x00",
], ids=["badzip", "directory-out-of-range"])
def test_corrupt_npz_is_a_data_error(tmp_path: Path, payload: bytes) -> None:
    path = tmp_path / "bad.npz"
    path.write_bytes(payload)
    with pytest.raises(DataError):
        load_calibration(path, [FLAT])
    result = cli("scan", MLP_ONNX, "--data", path)
    one_line_error(result.exit_code, result.stderr, str(path))


def test_compressed_npz_inflating_past_the_limit_is_refused_before_inflating(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A deflate bomb (zeros inflate ~1000:1): the members' declared sizes are summed and checked
    against MAX_NPZ_INFLATE_BYTES before anything is inflated (lowered here to keep the test small)."""
    from reludoctor.data import arrays as data

    assert data.MAX_NPZ_INFLATE_BYTES == 1 << 30
    monkeypatch.setattr(data, "MAX_NPZ_INFLATE_BYTES", 1 << 20)
    path = tmp_path / "bomb.npz"
    np.savez_compressed(path, np.zeros((8192, 64), np.float32))  # 2 MiB of zeros, ~2 KB on disk
    assert path.stat().st_size < 100_000
    with pytest.raises(DataError, match=r"inflate to 2,097,\d+ bytes.*limit of 1,048,576"):
        load_calibration(path, [FLAT])
    np.savez(tmp_path / "stored.npz", np.zeros((8192, 64), np.float32))  # stored: mapped, allowed
    assert load_calibration(tmp_path / "stored.npz", [FLAT]).samples == 8192


def test_stored_npz_members_are_memory_mapped_not_read_whole(tmp_path: Path) -> None:
    values = np.random.default_rng(3).standard_normal((50, 64)).astype(">f4")
    np.savez(tmp_path / "x.npz", input=values)
    calibration = load_calibration(tmp_path / "x.npz", [FLAT])
    assert isinstance(calibration._arrays[0], np.memmap)
    (got,) = read_all(calibration, batch_size=7)
    assert got.dtype.isnative
    np.testing.assert_array_equal(got, values.astype(np.float32))


@pytest.mark.parametrize("header", [b"{'descr': '<f4', 'shape': (", b"{'descr': os.system}", b"\xff\xfe"],
                         ids=["unterminated", "not-a-literal", "not-text"])
def test_garbage_npy_headers_are_data_errors(tmp_path: Path, header: bytes) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(b"\x93NUMPY\x01\x00" + struct.pack("<H", len(header)) + header)
    with pytest.raises(DataError, match="not a valid .npy header"):
        load_calibration(path, [FLAT])
    with zipfile.ZipFile(tmp_path / "x.npz", "w") as archive:
        archive.writestr("arr_0.npy", path.read_bytes())
    with pytest.raises(DataError, match="not a valid .npy header"):
        load_calibration(tmp_path / "x.npz", [FLAT])


def test_npz_with_pickled_objects_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "objects.npz"
    np.savez(path, np.array([{"a": 1}, None], dtype=object))
    with pytest.raises(DataError, match="object"):
        load_calibration(path, [FLAT])


def test_mutated_npz_files_are_loaded_or_refused_never_crash(tmp_path: Path) -> None:
    """A seeded, bounded mutation run over a valid .npz (stored and deflated): every mutant either
    loads or raises DataError; nothing else escapes (BadZipFile, EINVAL, MemoryError, zlib)."""
    rng = np.random.default_rng(10)
    values = rng.standard_normal((6, 64)).astype(np.float32)
    outcomes = {"loaded": 0, "refused": 0}
    for compression in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED):
        buffer = io.BytesIO()
        with zipfile.ZipFile(buffer, "w", compression=compression) as archive:
            archive.writestr("input.npy", _npy_bytes(values))
        original = buffer.getvalue()
        for case in range(150):
            mutant = bytearray(original)
            for _ in range(int(rng.integers(1, 4))):
                position = int(rng.integers(0, len(mutant)))
                mutant[position] = int(rng.integers(0, 256)) if case % 3 else 0xFF
            if case % 10 == 9:
                mutant = mutant[: int(rng.integers(4, len(mutant)))]  # truncated
            path = tmp_path / f"m{compression}_{case}.npz"
            path.write_bytes(bytes(mutant))
            try:
                read_all(load_calibration(path, [FLAT]))
                outcomes["loaded"] += 1
            except DataError:
                outcomes["refused"] += 1
    assert outcomes["refused"] > 0


@pytest.mark.parametrize("bad", ["badzip", "huge-member"])
def test_corrupt_npz_with_a_torch_model_is_exit_2(tmp_path: Path, bad: str) -> None:
    path = tmp_path / "bad.npz"
    if bad == "badzip":
        path.write_bytes(b"PK\x03\x04" + b"\x01" * 100)
    else:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("arr_0.npy", _npy_header_bytes((2 ** 40, 64)))
    result = cli("scan", MLP_PT2, "--data", path)
    one_line_error(result.exit_code, result.stderr, str(path))


def test_bfloat16_pt_data_is_widened_to_float32(tmp_path: Path) -> None:
    """Decision: a bfloat16 tensor saved as data is converted to float32 (exact: every bfloat16
    value is a float32) unless the model's input is declared bfloat16; the report equals the one
    for the same values saved as float32."""
    import torch

    x = torch.from_numpy(np.load(CALIB_FLAT)).to(torch.bfloat16)
    torch.save(x, tmp_path / "bf16.pt")
    torch.save(x.float(), tmp_path / "f32.pt")
    batches = list(load_calibration(tmp_path / "bf16.pt", [FLAT]).batches(100))
    assert all(batch[0].dtype == torch.float32 for batch in batches)
    got = torch.cat([batch[0] for batch in batches])
    np.testing.assert_array_equal(got.numpy(), x.float().numpy())
    want = dead_sets(scan(MLP_ONNX, tmp_path / "f32.pt"))
    assert dead_sets(scan(MLP_ONNX, tmp_path / "bf16.pt")) == want
    assert dead_sets(scan(MLP_PT2, tmp_path / "bf16.pt")) == dead_sets(scan(MLP_PT2, tmp_path / "f32.pt"))
    result = cli("scan", MLP_ONNX, "--data", tmp_path / "bf16.pt")
    assert result.exit_code == 0, result.stderr


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("layout", ["coo", "csr"])
def test_sparse_pt_data_is_refused(tmp_path: Path, layout: str) -> None:
    """Decision: sparse tensors are refused (exit 2, naming the layout and ``to_dense()``)."""
    import torch

    x = torch.from_numpy(np.load(CALIB_FLAT)[:20])
    sparse = x.to_sparse() if layout == "coo" else x.to_sparse_csr()
    path = tmp_path / "sparse.pt"
    torch.save(sparse, path)
    with pytest.raises(DataError, match="sparse"):
        load_calibration(path, [FLAT])
    for model in (MLP_ONNX, MLP_PT2):
        result = cli("scan", model, "--data", path)
        one_line_error(result.exit_code, result.stderr, str(path), "sparse", "to_dense")
    done = run_cli("scan", MLP_ONNX, "--data", path)  # a fresh process: torch's warnings too
    one_line_error(done.returncode, done.stderr, str(path), "sparse", "to_dense")


def test_synthetic_data_for_a_huge_declared_input_is_refused() -> None:
    from reludoctor.errors import UsageError

    with pytest.raises(UsageError, match="synthetic"):
        load_calibration(None, [InputSpec("x", (None, 2 ** 40), "float32")])


# ------------------------------------------------------------------ 6. the input ledger


def test_data_file_is_noted_in_the_ledger(tmp_path: Path) -> None:
    for name, save in (("x.npy", np.save), ("x.npz", np.savez)):
        path = tmp_path / name
        save(path, np.zeros((3, 64), np.float32))
        assert safeio.input_at(path) is None
        with safeio.ledger():
            load_calibration(path, [FLAT])
            assert safeio.input_at(path) is not None
            os.link(path, tmp_path / f"hard-{name}")
            assert safeio.input_at(tmp_path / f"hard-{name}") is not None  # the same file
        assert safeio.input_at(path) is None


def test_every_image_is_noted_at_discovery(tmp_path: Path) -> None:
    folder = _image_folder(tmp_path)
    with safeio.ledger():
        calibration = load_calibration(folder, [GRAY], limit=1)  # nothing decoded yet
        for name in ("a.png", "b.png", "sub/c.png"):
            assert safeio.input_at(folder / name) is not None, name
        assert safeio.input_at(folder / "new.png") is None
        assert calibration.samples == 1


def test_labels_reader_is_hardened_and_noted(tmp_path: Path) -> None:
    """``data.arrays.read_labels`` (for ``gradients.load_labels``): regular files only, byte order,
    the ledger."""
    from reludoctor.data.arrays import read_labels

    labels = np.arange(12, dtype=">i8") % 10
    path = tmp_path / "labels.npy"
    np.save(path, labels)
    with safeio.ledger():
        got = read_labels(path)
        assert safeio.input_at(path) is not None
    assert got.dtype.isnative and got.dtype == np.int64
    np.testing.assert_array_equal(got, np.arange(12) % 10)
    short = tmp_path / "short.npy"
    short.write_bytes(_npy_header_bytes((2 ** 40,), "<i8"))
    with pytest.raises(DataError, match="declares"):
        read_labels(short)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.npy")
        with pytest.raises(DataError, match="FIFO"):
            returns(lambda: read_labels(tmp_path / "pipe.npy"))
