"""Recognise a model file from its content, not its extension."""

from __future__ import annotations

import json
import os
import re
import struct
import zipfile
from pathlib import Path
from typing import BinaryIO

from reludoctor import safeio
from reludoctor.errors import ModelLoadError

TORCH_EXPORT = "torch-export"
TORCHSCRIPT = "torchscript"
TORCH_SAVE = "torch-save"  # a torch.save pickle: a state_dict, or a whole pickled module
SAFETENSORS = "safetensors"
ONNX = "onnx"
HUGGINGFACE = "huggingface"  # a save_pretrained folder (config.json inside), or a cached model id
# org/name: a Hugging Face model id, when no such path exists here
MODEL_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_model_id(path: Path) -> bool:
    return bool(MODEL_ID.match(str(path))) and not path.exists()


def _zip_kind(path: Path | BinaryIO) -> str | None:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, NotImplementedError, RuntimeError,
            OverflowError, MemoryError, struct.error):
        return None
    tails = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "archive_format" in tails or any(t.startswith("models/") and t.endswith(".json") for t in tails):
        return TORCH_EXPORT
    if any(t.startswith("code/") for t in tails) and "constants.pkl" in tails:
        return TORCHSCRIPT
    if "data.pkl" in tails:
        return TORCH_SAVE
    return "zip"


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    (header_len,) = struct.unpack("<Q", head[:8])
    return 0 < header_len <= size - 8 and head[8:9] == b"{"


# ModelProto fields -> protobuf wire type (0 varint, 2 length-delimited).
_ONNX_MODEL_FIELDS = {1: 0, 2: 2, 3: 2, 4: 2, 5: 0, 6: 2, 7: 2, 8: 2, 14: 2, 20: 2, 25: 2}


def _varint(data: bytes, pos: int) -> tuple[int, int] | None:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        value |= (byte & 0x7F) << shift
        pos += 1
        if not byte & 0x80:
            return value, pos
        shift += 7
    return None


def _looks_like_onnx(head: bytes, size: int | None = None) -> bool:
    """The first protobuf fields read as an ONNX ModelProto (exporters write ir_version first).

    Only the file's head is walked: up to four fields, each a known ModelProto field with its
    wire type, lengths within the file.
    """
    if len(head) > 2 and head[0] == 0x08 and 0 < head[1] < 32:
        return True
    size = len(head) if size is None else size
    pos, fields = 0, 0
    while pos < len(head) and fields < 4:
        tag = _varint(head, pos)
        if tag is None:
            return fields >= 2
        number, wire = tag[0] >> 3, tag[0] & 7
        if _ONNX_MODEL_FIELDS.get(number) != wire:
            return False
        pos = tag[1]
        value = _varint(head, pos)
        if value is None:
            return fields >= 2
        pos = value[1] + (value[0] if wire == 2 else 0)
        if pos > size:
            return False
        fields += 1
    return fields >= 2


def detect_format(path: Path) -> str:
    """The model file's kind, from its content. Only a regular file is read (a FIFO, a device or
    a symlink loop is a ModelLoadError at once, never a blocked read), and it is noted in the
    input ledger (``reludoctor.safeio``) so no output of the run can overwrite it."""
    path = Path(path)
    if path.is_dir():
        if (path / "config.json").is_file():
            return HUGGINGFACE
        raise ModelLoadError(f"{path}: is a directory, not a model file",
                             "pass the model file, or a Hugging Face checkpoint folder (config.json, *.safetensors)")
    if is_model_id(path):
        return HUGGINGFACE
    with safeio.open_regular(path, "model", ModelLoadError) as handle:
        safeio.note_read(path)
        try:
            size = os.fstat(handle.fileno()).st_size
            head = handle.read(4096)
        except OSError as exc:
            raise ModelLoadError(f"{path}: cannot read ({safeio.os_reason(exc)})",
                                 "check file permissions") from exc
        if size == 0:
            raise ModelLoadError(f"{path}: empty file", "the model file is truncated")
        if head[:4] == b"PK\x03\x04":
            kind = _zip_kind(handle)
            if kind in (TORCH_EXPORT, TORCHSCRIPT, TORCH_SAVE):
                return kind
            raise ModelLoadError(
                f"{path}: a zip archive that is not a PyTorch model (or is truncated)",
                "expected torch.export.save, torch.jit.save or torch.save output",
            )
        if _is_safetensors(head, size):
            try:
                (header_len,) = struct.unpack("<Q", head[:8])
                handle.seek(8)
                json.loads(handle.read(header_len))
            except (ValueError, OSError, RecursionError, MemoryError) as exc:
                raise ModelLoadError(f"{path}: corrupt safetensors header", "re-save the file") from exc
            return SAFETENSORS
    if head[:1] == b"\x80":  # legacy (non-zip) torch.save pickle
        return TORCH_SAVE
    if path.suffix.lower() == ".onnx" or _looks_like_onnx(head, size):
        return ONNX
    raise ModelLoadError(
        f"{path}: not a recognised model file",
        "supported: torch.export .pt2, TorchScript, state_dict (.pt/.pth/.safetensors), ONNX",
    )
