"""Report outputs. Each format turns a Report into text; ``emit`` writes it atomically."""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path


def emit(text: str, destination: str) -> None:
    """Write to stdout for '-', else atomically (temp file in the same folder, then rename)."""
    if destination == "-":
        sys.stdout.write(text)
        sys.stdout.flush()
        return
    path = Path(destination)
    folder = path.parent if str(path.parent) else Path(".")
    fd, temp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(temp, path)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
