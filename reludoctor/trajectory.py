"""trajectory(): checkpoints of one model in step order -> one scan each over the same data ->
``report.trajectory.build``. The checkpoints are files (in the order given) or one folder.

A folder's entries are taken in natural order: names split into runs of digits and of other
characters, digit runs compared as numbers and the rest case-insensitively (``step_2`` before
``step_10``; ``epoch9`` before ``Epoch10``), ties broken by the exact name. Names starting with
``.`` are skipped; every other entry must be a model file ``scan`` recognises, so a stray file
or subfolder is refused rather than silently scanned or dropped.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path
from typing import Any, Callable, Sequence

from reludoctor.errors import ModelLoadError, ReludoctorWarning, UsageError
from reludoctor.options import ScanOptions
from reludoctor.report.model import Report
from reludoctor.report.trajectory import Checkpoint, Trajectory, build

MIN_CHECKPOINTS = 2

# After each scan: (checkpoints done, total, the checkpoint's label, its report).
Progress = Callable[[int, int, str, Report], None]


def natural_key(name: str) -> tuple:
    """Sort key: ``re.split`` with a group puts text at even and digits at odd positions, so
    keys always compare element by element (str with str, int with int)."""
    parts = re.split(r"(\d+)", name)
    return (tuple(int(p) if i % 2 else p.casefold() for i, p in enumerate(parts)), name)


def checkpoint_files(paths: Sequence[str | Path]) -> list[Path]:
    """The checkpoint files of ``paths`` (several files, or one folder), each checked to be a
    model file before any scan runs: a missing or unrecognised 5th file fails in a second,
    not after four scans."""
    from reludoctor.backends import detect

    paths = [Path(p) for p in paths]
    folders = [p for p in paths if p.is_dir()]
    if folders and len(paths) > 1:
        raise UsageError(f"{folders[0]} is a folder: give one folder of checkpoints, or model files",
                         "not both, and not several folders")
    if folders:
        folder = folders[0]
        try:
            entries = [e for e in folder.iterdir() if not e.name.startswith(".")]
        except OSError as exc:
            raise UsageError(f"cannot list folder {folder}: {exc.strerror or exc}") from None
        if not entries:
            raise UsageError(f"folder {folder} has no checkpoint files")
        files = sorted(entries, key=lambda e: natural_key(e.name))
        for entry in files:
            if entry.is_dir():
                raise UsageError(f"{entry} is a folder inside the checkpoint folder {folder}",
                                 "a checkpoint folder holds model files only; or pass the files themselves")
            try:
                detect.detect_format(entry)
            except ModelLoadError as exc:
                raise UsageError(f"{exc.message} (in the checkpoint folder {folder})",
                                 "a checkpoint folder holds model files only; or pass the files themselves") from None
    else:
        files = paths
        for path in files:
            detect.detect_format(path)  # missing, not a model: one line naming the file
    if len(files) < MIN_CHECKPOINTS:
        where = f"folder {folders[0]} holds" if folders else "got"
        raise UsageError(f"a trajectory needs at least {MIN_CHECKPOINTS} checkpoints; {where} {len(files)}",
                         "give several checkpoint files, or a folder of them")
    return files


def labels(files: Sequence[Path]) -> list[str]:
    """A short label per checkpoint: its file name, or the path as given when names repeat."""
    names = [f.name for f in files]
    return [f.name if names.count(f.name) == 1 else str(f) for f in files]


def trajectory(checkpoints: Sequence[str | Path], data: Any = None, options: ScanOptions | None = None, *,
               progress: Progress | None = None, on_warning: Callable[[str], None] | None = None,
               **settings: Any) -> Trajectory:
    """Scan each checkpoint (files in step order, or one folder) over ``data`` with the same
    options as ``reludoctor.scan`` (keywords or ``options``) and return their Trajectory.

    A warning that every scan repeats (synthetic data, a data note) is passed on once."""
    from reludoctor.engine import scan

    files = checkpoint_files(checkpoints)
    names = labels(files)
    seen: list[str] = []

    def warn(message: str) -> None:
        if message not in seen:
            seen.append(message)
            if on_warning is not None:
                on_warning(message)
            else:
                warnings.warn(message, ReludoctorWarning, stacklevel=3)

    reports = []
    for index, (path, label) in enumerate(zip(files, names)):
        report = scan(str(path), data, options, on_warning=warn, **settings)
        reports.append(report)
        if progress is not None:
            progress(index + 1, len(files), label, report)
    marks = [Checkpoint(str(path), report.model.sha256, label) for path, report, label in zip(files, reports, names)]
    return build(reports, marks, seen)
