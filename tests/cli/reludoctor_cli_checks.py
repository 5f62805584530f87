"""Assertions shared by the CLI tests (importable by name: conftest puts this folder on sys.path)."""

from __future__ import annotations

import hashlib
from pathlib import Path


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


def assert_input_error(exit_code: int, stdout: str, stderr: str, *mentions: str) -> str:
    """Exit 2, nothing on stdout, exactly one line on stderr (the error) naming ``mentions``,
    and no traceback anywhere. Returns the error line."""
    assert "Traceback" not in stdout + stderr, stderr
    lines = stderr.strip().splitlines()
    assert exit_code == 2, f"exit {exit_code}: {stderr}"
    assert stdout == "", stdout
    assert len(lines) == 1, f"expected one line on stderr, got:\n{stderr}"
    assert lines[0].startswith("reludoctor: error:"), lines[0]
    for text in mentions:
        assert str(text) in lines[0], f"{text!r} not named in: {lines[0]}"
    return lines[0]
