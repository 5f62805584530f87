"""reludoctor: find dead ReLU units in trained models.

Importing this package does not import torch: ``scan``, ``watch`` and ``Report`` load lazily.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["scan", "watch", "ScanOptions", "Report", "ReludoctorError", "__version__"]

if TYPE_CHECKING:  # pragma: no cover
    from reludoctor.engine import scan
    from reludoctor.errors import ReludoctorError
    from reludoctor.options import ScanOptions
    from reludoctor.report.model import Report
    from reludoctor.watching import watch


def __getattr__(name: str) -> Any:
    if name == "scan":
        from reludoctor.engine import scan

        return scan
    if name == "watch":
        from reludoctor.watching import watch

        return watch
    if name == "Report":
        from reludoctor.report.model import Report

        return Report
    if name == "ScanOptions":
        from reludoctor.options import ScanOptions

        return ScanOptions
    if name == "ReludoctorError":
        from reludoctor.errors import ReludoctorError

        return ReludoctorError
    raise AttributeError(f"module 'reludoctor' has no attribute {name!r}")
