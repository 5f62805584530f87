"""One exception family: the CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations


class ReludoctorError(Exception):
    """Bad input or usage. ``hint`` says how to fix it; exit code 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return " ".join(text.split())


class ModelLoadError(ReludoctorError):
    """The model file is missing, unreadable, corrupt, unsupported or refused."""


class UnsafeModelError(ModelLoadError):
    """Loading the file would execute pickled code."""


class DataError(ReludoctorError):
    """Calibration data is missing, unreadable, empty, non-finite or does not fit the model."""


class UsageError(ReludoctorError):
    """Options that contradict each other or have invalid values."""


class NoSitesError(ReludoctorError):
    """The model has no ReLU-family activation to observe."""


class ObserverFailure(Exception):
    """An observer (our code) failed inside the model's forward: an internal error (exit 3)."""
