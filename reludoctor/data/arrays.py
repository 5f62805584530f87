"""Reading calibration array files safely: ``.npy`` (memory-mapped), ``.npz`` (one array per
input, matched by name; stored members memory-mapped, deflated ones inflated within a limit) and
``.pt`` (a tensor, a sequence or dict of tensors, loaded with ``weights_only=True``), and the
``--labels`` ``.npy`` file. Every file is untrusted: a regular file only, noted in the input
ledger, each header checked against the bytes the file holds before anything is mapped or
allocated, nothing unpickled; every malformed file is a DataError (docs/security.md).
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import struct
import warnings
import zipfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO, Iterator, Sequence

import numpy as np

from reludoctor import safeio
from reludoctor.data.binding import InputSpec
from reludoctor.errors import DataError, first_line

# An .npz member is read whole. Its .npy header's declared size is checked against the member's
# size in the zip directory, and that size against what the compressed bytes can justify: deflate
# expands at most ~1032:1, so a member claiming more than this ratio is refused before anything is
# allocated (a zip bomb or a forged directory entry). Only stored and deflated members are read
# (np.savez / np.savez_compressed write nothing else).
MAX_DEFLATE_RATIO = 1032
MAX_NPY_HEADER_BYTES = 10_000  # numpy's own default max_header_size, checked before reading
# Stored (np.savez) members are memory-mapped like a .npy; deflated (np.savez_compressed) members
# are inflated into memory whole, at most this many bytes per file (the sum of the members read):
# a 9 MB file of zeros may legitimately inflate to 2 GiB. Larger data: np.save or np.savez.
MAX_NPZ_INFLATE_BYTES = 1 << 30


def native_dtype(dtype: np.dtype) -> np.dtype:
    """``dtype`` in this machine's byte order (unchanged when it already is, or has none)."""
    if dtype.isnative or dtype.fields is not None:
        return dtype
    return dtype.newbyteorder("=")


def _wanted_keys(keys: Sequence[str], specs: Sequence[InputSpec]) -> list[str]:
    """The arrays of a named file to read: those named after an input; a lone array whatever its
    name (it feeds the model's one required input, ``reludoctor.data.binding``)."""
    names = {spec.name for spec in specs}
    matched = [k for k in keys if k in names]
    return matched or (list(keys) if len(keys) == 1 else [])


@contextlib.contextmanager
def _opened(path: Path, option: str, what: str = "") -> Iterator[tuple[BinaryIO, bytes]]:
    """An untrusted file: a regular file only, opened once, noted in the input ledger; with its
    first bytes (the format's magic)."""
    with safeio.open_regular(path, option, DataError) as handle:
        safeio.note_read(path)
        try:
            head = handle.read(8)
            handle.seek(0)
        except OSError as exc:
            raise DataError(f"{path}: cannot read{what} ({safeio.os_reason(exc)})") from exc
        yield handle, head


def load_file(path: Path, specs: Sequence[InputSpec], option: str = "--data") -> dict[str, Any] | list[Any]:
    """Read a data file: a regular file only (a FIFO never blocks, a symlink loop or a device is
    an input error), noted in the input ledger; every malformed file is a DataError. Returns the
    arrays by name (.npz, a dict in a .pt; None for those no input needs, left unread) or in order."""
    with _opened(path, option) as (handle, head):
        if head.startswith(b"\x93NUMPY"):
            return [_load_npy(handle, path)]
        if head.startswith(b"PK\x03\x04"):
            try:
                with zipfile.ZipFile(handle) as archive:
                    entries = archive.namelist()
            except _ZIP_ERRORS as exc:
                raise DataError(f"{path}: corrupt archive ({_reason(exc)})",
                                "re-save it with np.savez or torch.save") from exc
            handle.seek(0)
            if entries and all(e.endswith(".npy") for e in entries):
                return _load_npz(handle, path, specs)
            return _load_pt(handle, path, specs)
        if head[:1] == b"\x80":
            return _load_pt(handle, path, specs)
    raise DataError(f"{path}: not a .npy, .npz or .pt file", "save data with np.save or torch.save")


# What a malformed zip, .npy header or compressed member can raise while being read (a corrupt
# file is bad input, exit 2, whatever the library's exception).
_ZIP_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError, zlib.error,
               NotImplementedError, RuntimeError, KeyError, OverflowError, MemoryError,
               SyntaxError, TypeError, IndexError, struct.error)


def _reason(exc: BaseException) -> str:
    if isinstance(exc, OSError):
        return safeio.os_reason(exc)
    if isinstance(exc, MemoryError):
        return "a size it declares is too large"
    text = first_line(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _npy_header(stream: Any, where: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    """The (shape, fortran order, dtype) of a .npy header; pickled object arrays refused."""
    from numpy.lib import format as npformat

    try:
        version = npformat.read_magic(stream)
        if version not in ((1, 0), (2, 0), (3, 0)):
            raise ValueError(f"unknown .npy format version {version}")
        # The header's length is checked before the header is read (numpy reads it, then checks).
        length_format = "<H" if version == (1, 0) else "<I"
        length_field = stream.read(struct.calcsize(length_format))
        (length,) = struct.unpack(length_format, length_field)
        if length > MAX_NPY_HEADER_BYTES:
            raise ValueError(f"a header of {length:,} bytes (the limit is {MAX_NPY_HEADER_BYTES:,})")
        header = stream.read(length)
        if len(header) < length:
            raise ValueError("the header is truncated")
        copy = io.BytesIO(length_field + header)
        if version == (1, 0):
            shape, fortran, dtype = npformat.read_array_header_1_0(copy)
        else:
            shape, fortran, dtype = npformat.read_array_header_2_0(copy)
    except Exception as exc:  # noqa: BLE001 - numpy parsing untrusted bytes (literal_eval: TokenError, ...)
        raise DataError(f"{where}: not a valid .npy header ({_reason(exc)})",
                        "re-save the data with np.save") from exc
    if dtype.hasobject:
        raise DataError(f"{where}: holds Python objects (a pickled object array), refused",
                        "save a numeric array; pickled object arrays are refused")
    if any(int(d) < 0 for d in shape):
        raise DataError(f"{where}: the .npy header declares a negative shape {shape}",
                        "the file is corrupt; re-save it with np.save")
    return tuple(int(d) for d in shape), bool(fortran), dtype


def _declared_bytes(shape: tuple[int, ...], dtype: np.dtype) -> int:
    return math.prod(shape) * dtype.itemsize  # Python integers: no overflow


def _load_npy(handle: Any, path: Path) -> Any:
    """A .npy, memory-mapped read-only from the open handle, its header checked against the
    file's size first (a header declaring more than the file holds is refused, not mapped)."""
    shape, fortran, dtype = _npy_header(handle, str(path))
    offset = handle.tell()
    size = os.fstat(handle.fileno()).st_size
    needed = _declared_bytes(shape, dtype)
    if needed > size - offset:
        raise DataError(f"{path}: its header declares {list(shape)} {dtype} ({needed:,} bytes) but "
                        f"the file holds {max(size - offset, 0):,} bytes of data",
                        "the file is truncated or corrupt; re-save it with np.save")
    if needed == 0:
        return np.zeros(shape, dtype=dtype)
    try:
        return np.memmap(handle, dtype=dtype, mode="r", shape=shape, offset=offset,
                         order="F" if fortran else "C")
    except (ValueError, OSError, OverflowError, MemoryError) as exc:
        raise DataError(f"{path}: cannot map the data ({_reason(exc)})",
                        "the file may be corrupt; re-save it with np.save") from exc


def _member_where(path: Path, info: zipfile.ZipInfo) -> str:
    return f"{path} (array {info.filename[:-4]!r})"


def _check_member(info: zipfile.ZipInfo, path: Path) -> None:
    """Refuse members reludoctor does not read (encrypted, other compressions) and directory
    sizes no compression can justify, before anything is read."""
    where = _member_where(path, info)
    if info.flag_bits & 0x1:
        raise DataError(f"{where}: the member is encrypted", "save the data with np.savez")
    if info.compress_type == zipfile.ZIP_STORED:
        justified = info.compress_size
    elif info.compress_type == zipfile.ZIP_DEFLATED:
        justified = max(info.compress_size, 1) * MAX_DEFLATE_RATIO + 1024
    else:
        raise DataError(f"{where}: compressed with zip method {info.compress_type}, not read",
                        "save the data with np.savez or np.savez_compressed")
    if info.file_size > justified:
        raise DataError(f"{where}: the zip directory declares {info.file_size:,} bytes from "
                        f"{info.compress_size:,} compressed bytes, more than compression allows",
                        "the archive is corrupt or forged; re-save it with np.savez")


def _stored_member(handle: Any, info: zipfile.ZipInfo, path: Path) -> Any:
    """A stored (uncompressed, np.savez) member, memory-mapped in place like a .npy: its local
    header and .npy header checked against the bytes the archive holds first."""
    where = _member_where(path, info)
    size = os.fstat(handle.fileno()).st_size
    handle.seek(info.header_offset)
    local = handle.read(30)
    if len(local) < 30 or local[:4] != b"PK\x03\x04":
        raise DataError(f"{where}: bad local zip header", "the archive is corrupt; re-save it with np.savez")
    name_length, extra_length = struct.unpack("<HH", local[26:30])
    start = info.header_offset + 30 + name_length + extra_length
    if start + info.file_size > size:
        raise DataError(f"{where}: the member runs past the end of the file ({size:,} bytes)",
                        "the archive is truncated; re-save it with np.savez")
    handle.seek(start)
    shape, fortran, dtype = _npy_header(handle, where)
    offset = handle.tell()
    needed = _declared_bytes(shape, dtype)
    if needed > start + info.file_size - offset:
        raise DataError(f"{where}: its header declares {list(shape)} {dtype} ({needed:,} bytes) "
                        f"but the member holds {max(start + info.file_size - offset, 0):,} bytes of data",
                        "the archive is truncated or corrupt; re-save it with np.savez")
    if needed == 0:
        return np.zeros(shape, dtype=dtype)
    return np.memmap(handle, dtype=dtype, mode="r", shape=shape, offset=offset,
                     order="F" if fortran else "C")


def _npz_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path) -> np.ndarray:
    """One deflated .npz member, inflated whole after its header is checked against the member's
    size (already checked against what its compressed bytes can hold), in native byte order."""
    where = _member_where(path, info)
    with archive.open(info) as member:
        shape, fortran, dtype = _npy_header(member, where)
        header = member.tell()
        needed = _declared_bytes(shape, dtype)
        if needed > info.file_size - header:
            raise DataError(f"{where}: its header declares {list(shape)} {dtype} ({needed:,} bytes) "
                            f"but the member holds {max(info.file_size - header, 0):,} bytes of data",
                            "the archive is truncated or corrupt; re-save it with np.savez")
        buffer = bytearray(needed)
        view = memoryview(buffer)
        filled = 0
        while filled < needed:
            count = member.readinto(view[filled:])
            if not count:
                break
            filled += count
        view.release()
        if filled < needed:
            raise DataError(f"{where}: truncated ({filled:,} of {needed:,} bytes of data)",
                            "the archive is truncated or corrupt; re-save it with np.savez")
    array = np.ndarray(shape, dtype=dtype, buffer=buffer, order="F" if fortran else "C")
    if not dtype.isnative and dtype.fields is None:
        array = array.byteswap(inplace=True).view(dtype.newbyteorder("="))
    return array


def _load_npz(handle: Any, path: Path, specs: Sequence[InputSpec]) -> dict[str, Any]:
    try:
        with zipfile.ZipFile(handle) as archive:
            members = {info.filename[:-4]: info for info in archive.infolist()
                       if info.filename.endswith(".npy")}
            keys = list(members)
            wanted = _wanted_keys(keys, specs)
            for key in wanted:
                _check_member(members[key], path)
            inflated = sum(members[key].file_size for key in wanted
                           if members[key].compress_type != zipfile.ZIP_STORED)
            if inflated > MAX_NPZ_INFLATE_BYTES:
                raise DataError(f"{path}: its compressed arrays inflate to {inflated:,} bytes, more "
                                f"than the limit of {MAX_NPZ_INFLATE_BYTES:,} for np.savez_compressed data",
                                "save large calibration data with np.save (memory-mapped) or np.savez")
            read = {key: _stored_member(handle, members[key], path)
                    if members[key].compress_type == zipfile.ZIP_STORED
                    else _npz_member(archive, members[key], path) for key in wanted}
            return {key: read.get(key) for key in keys}
    except DataError:
        raise
    except _ZIP_ERRORS as exc:
        raise DataError(f"{path}: corrupt archive ({_reason(exc)})",
                        "re-save it with np.savez") from exc


def _load_pt(handle: Any, path: Path, specs: Sequence[InputSpec]) -> dict[str, Any] | list[Any]:
    import pickle

    import torch

    try:
        with warnings.catch_warnings():  # e.g. torch's note on validating sparse tensors
            warnings.simplefilter("ignore")
            obj = torch.load(handle, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        raise DataError(f"{path}: contains pickled Python objects, refused",
                        "save a tensor or a dict of tensors") from exc
    except Exception as exc:
        raise DataError(f"{path}: cannot load ({type(exc).__name__})", "the file may be corrupt") from exc
    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, (tuple, list)) and obj and all(isinstance(t, torch.Tensor) for t in obj):
        return list(obj)
    if not isinstance(obj, dict):
        raise DataError(f"{path}: holds a {type(obj).__name__}", "save a tensor or a dict of tensors")
    return {str(k): v for k, v in obj.items()}


def read_labels(path: str | Path) -> np.ndarray:
    """A labels ``.npy`` file (``--labels``) read as untrusted input, like ``--data``: a regular
    file only (a FIFO never blocks), noted in the input ledger, its header checked against the
    file's size, no pickles, returned as an in-memory array in native byte order."""
    path = Path(path)
    with _opened(path, "--labels", " labels") as (handle, head):
        if not head.startswith(b"\x93NUMPY"):
            raise DataError(f"{path}: not a .npy file of labels", "save them with np.save")
        mapped = _load_npy(handle, path)
        return np.array(mapped, dtype=native_dtype(mapped.dtype), copy=True)
