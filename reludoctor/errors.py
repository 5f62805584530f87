"""One exception family: the CLI turns each into one line on stderr and an exit code."""

from __future__ import annotations

import re

# Characters a terminal (or a Markdown viewer) would act on instead of showing: C0 controls
# (tab and newline too), DEL, C1 controls, and the Unicode line separators and bidirectional
# overrides. Names come from model files and saved reports: they are shown, never obeyed.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


_SPACES = re.compile("[ \t\n\r\f\v]+")


def _visible(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def first_line(exc: BaseException, default: str = "") -> str:
    """The first line of an exception's message (a one-line error quotes it), or ``default``."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else default


def printable(text: object) -> str:
    """``text`` with every control character written as visible escape text (ESC -> ``\\x1b``,
    BEL -> ``\\x07``, U+202E -> ``\\u202e``): safe to print on a terminal or into Markdown."""
    return _CONTROL.sub(_visible, str(text))


class ReludoctorError(Exception):
    """Bad input or usage. ``hint`` says how to fix it; exit code 2."""

    exit_code = 2

    def __init__(self, message: str, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def one_line(self) -> str:
        text = self.message if not self.hint else f"{self.message} ({self.hint})"
        return printable(_SPACES.sub(" ", text).strip(" "))


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


class Interrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM arrived (the CLI's handler raises it): temporary files are removed on
    the way out and the process exits 128 + the signal number (130, 143)."""

    def __init__(self, signum: int):
        import signal

        try:
            name = signal.Signals(signum).name
        except ValueError:
            name = f"signal {signum}"
        super().__init__(name)
        self.signum = signum
        self.name = name
        self.exit_code = 128 + signum


class ObserverFailure(Exception):
    """An observer (our code) failed inside the model's forward: an internal error (exit 3)."""


class ConfigError(ReludoctorError):
    """A settings file that cannot be used (exit 2)."""


class ReportFormatError(ReludoctorError):
    """A saved report that cannot be read back (exit 2)."""


class MergeError(ReludoctorError):
    """Reports that cannot be merged into one (exit 2)."""


class MissingDependencyError(ReludoctorError):
    """An optional package a strategy needs is not installed."""


class DistributedError(ReludoctorError):
    """Another rank of a multi-process scan failed (exit code: that rank's)."""


class FixVerificationError(ReludoctorError):
    """The fixed model does not reproduce the original where the strategy promises it: the
    tool's promise broke, not the input (exit 3)."""

    exit_code = 3


class ReludoctorWarning(UserWarning):
    """Something the user should know about a scan that still completed."""
