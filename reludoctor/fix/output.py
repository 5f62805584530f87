"""Where the fixed model goes: refusals (same file as an input, existing without --force, wrong
suffix) and atomic writes (a temporary file in the same folder, then ``os.replace``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Sequence

from reludoctor.errors import UsageError
from reludoctor.safeio import atomic_path  # noqa: F401 - the fix backends' (and reports') one write path

TORCH_PROGRAM = "torch-export"
TORCH_STATE_DICT = "state-dict"
ONNX = "onnx"
SUFFIXES = {".pt2": TORCH_PROGRAM, ".pt": TORCH_STATE_DICT, ".pth": TORCH_STATE_DICT, ".onnx": ONNX}


def same_file(a: Path, b: Path) -> bool:
    """The same file, through symlinks and hard links too (or the same resolved path)."""
    try:
        if a.exists() and b.exists() and os.path.samefile(a, b):
            return True
    except OSError:
        pass
    try:
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop is no file at all
        return a.absolute() == b.absolute()


def output_format(out: Path, backend: Any, loaded: Any) -> str:
    """The format OUT's suffix asks for, checked by the model's backend (``Backend.fix_output``).
    Called once the model is loaded, before the scan: OUT may not be a file the load read (the
    input ledger knows an ONNX model's external-data files by now), whatever --force says."""
    from reludoctor.safeio import refuse_input

    refuse_input(out, "-o")
    kind = SUFFIXES.get(out.suffix.lower())
    if kind is None:
        raise UsageError(f"-o {out}: unknown suffix {out.suffix or '(none)'!r}", f"use {backend.fix_suffixes}")
    backend.fix_output(out, kind, loaded)
    return kind


def check_destination(out: Path, inputs: Sequence[Path], force: bool, option: str = "-o") -> None:
    """Refuse writing over an input, into a missing folder, onto a folder, or over an existing
    file without --force."""
    for source in inputs:
        if same_file(out, source):
            raise UsageError(f"{option} {out} is the input file {source}: reludoctor never "
                             "overwrites its input", "choose another output path")
    if out.is_dir():
        raise UsageError(f"{option} {out} is a directory", "give a file path")
    from reludoctor.safeio import resolve_path

    if not resolve_path(out.parent, f"{option} {out}: folder", UsageError).is_dir():
        raise UsageError(f"{option} {out}: folder {out.parent} does not exist")
    if out.exists() and not force:
        raise UsageError(f"{option} {out} already exists", "pass --force to replace it")
