"""Project settings: ``[tool.reludoctor]`` in pyproject.toml, or a ``reludoctor.toml``.

The file is found by searching the current directory and then its parents: in each folder a
``reludoctor.toml`` wins over a ``pyproject.toml``, and a pyproject.toml without a
``[tool.reludoctor]`` table is passed over. A settings file on that path that cannot be read or
parsed (a TOML syntax error anywhere in a pyproject.toml, nesting too deep, more than
``safeio.MAX_SETTINGS_BYTES``, not a regular file) is an error naming the file and the line,
never skipped: skipping it would silently drop the gates it may hold. ``--config FILE`` names the file instead. Command-line
options override the file (``merge``). Unknown keys and bad values are refused (exit 2) naming the
file and the key. Keys may be written with hyphens or underscores (``fail-over``, ``fail_over``).

    [tool.reludoctor]
    fail-over = 0.25                 # any site with more than 25% dead units fails
    fail-on = ["error", "saturated-units"]
    baseline = "reports/baseline.json"   # relative to the file's folder
    top = 20
    tolerance = 0.01                 # reludoctor diff

    [tool.reludoctor.sites]          # per-site dead-ratio limits, glob patterns on site names
    "layer4.*" = 0.2
    "fc*" = 0.5
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reludoctor.errors import ConfigError  # noqa: F401 - re-exported

CONFIG_FILE = "reludoctor.toml"
PYPROJECT = "pyproject.toml"
SEVERITIES = ("info", "warning", "error")
RULE_ID = re.compile(r"^[a-z0-9]+(-[a-z0-9]+)*$")
KEYS = ("baseline", "fail-on", "fail-over", "sites", "tolerance", "top")


@dataclass(frozen=True)
class Settings:
    """Gates and report options, from a file and/or the command line.

    site_limits: (glob pattern, max dead ratio) in precedence order: the first pattern matching
    a site's name sets its limit; sites no pattern matches are held to ``fail_over``.
    """

    fail_over: float | None = None
    fail_on: tuple[str, ...] = ()
    site_limits: tuple[tuple[str, float], ...] = ()
    baseline: str | None = None
    top: int | None = None
    tolerance: float | None = None
    source: str | None = None  # the settings file used, if any

    @property
    def has_gates(self) -> bool:
        return self.fail_over is not None or bool(self.fail_on) or bool(self.site_limits) \
            or self.baseline is not None


@dataclass(frozen=True)
class Overrides:
    """What the command line gave (None / empty: not given)."""

    fail_over: float | None = None
    fail_on: tuple[str, ...] = ()
    site_limits: tuple[tuple[str, float], ...] = ()
    baseline: str | None = None
    top: int | None = None
    tolerance: float | None = None


def find_config(start: Path | None = None) -> Path | None:
    """The settings file for ``start`` (default: the current directory), searching upwards.

    A reludoctor.toml or pyproject.toml that exists there but cannot be read or parsed is a
    ConfigError (exit 2): a broken pyproject.toml may hold the [tool.reludoctor] gates."""
    folder = (start or Path.cwd()).resolve()
    for candidate in (folder, *folder.parents):
        own = candidate / CONFIG_FILE
        if _present(own):
            return own
        pyproject = candidate / PYPROJECT
        if _present(pyproject) and _has_tool_table(pyproject):
            return pyproject
    return None


def _present(path: Path) -> bool:
    """Whether something is at ``path`` (a dangling symlink or a FIFO too: reading it then
    says what is wrong, instead of passing it over)."""
    try:
        return path.is_symlink() or path.exists()
    except OSError:
        return True  # e.g. a symlink loop: reading it names the problem


def _has_tool_table(path: Path) -> bool:
    data = _read_toml(path)  # a broken pyproject.toml is an error, never "not ours"
    tool = data.get("tool")
    return isinstance(tool, dict) and "reludoctor" in tool


def _read_toml(path: Path) -> dict[str, Any]:
    """A settings file parsed: a regular file of at most MAX_SETTINGS_BYTES (safeio: a FIFO or a
    device never blocks), UTF-8, valid TOML, nesting within Python's limits; else ConfigError
    naming the file (and the line, for syntax errors)."""
    try:
        import tomllib
    except ImportError:  # Python 3.10
        import tomli as tomllib
    from reludoctor import safeio

    raw = safeio.read_limited(path, safeio.MAX_SETTINGS_BYTES, "settings file", ConfigError)
    safeio.note_read(path)  # outputs never overwrite it
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[:exc.start].count(b"\n") + 1
        raise ConfigError(f"settings file {path}, line {line}: not UTF-8 text "
                          f"(byte 0x{raw[exc.start]:02x})", "TOML files are UTF-8") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        line = getattr(exc, "lineno", None) or _line_of(str(exc))
        if line is None and "end of document" in str(exc):
            line = max(1, len(text.splitlines()))
        where = f", line {line}" if line else ""
        raise ConfigError(f"settings file {path}{where} is not valid TOML: {exc}",
                          "fix the syntax: reludoctor reads this file for its gates") from None
    except RecursionError:
        raise ConfigError(f"settings file {path} is not valid TOML for reludoctor: "
                          "arrays or tables nested too deeply") from None
    except ValueError as exc:  # e.g. an integer beyond Python's digit limit
        raise ConfigError(f"settings file {path} is not valid TOML for reludoctor: {exc}") from None


def _line_of(message: str) -> int | None:
    match = re.search(r"at line (\d+)", message)
    return int(match.group(1)) if match else None


def load_config(path: Path) -> Settings:
    """Settings from a reludoctor.toml (top-level keys) or a pyproject.toml ([tool.reludoctor])."""
    path = Path(path)
    if not _present(path):
        raise ConfigError(f"settings file {path} not found", "check the --config path")
    data = _read_toml(path)
    where = path.name
    if path.name == PYPROJECT:
        table = data.get("tool", {}).get("reludoctor") if isinstance(data.get("tool"), dict) else None
        if table is None:
            raise ConfigError(f"{path} has no [tool.reludoctor] table")
        where = "[tool.reludoctor]"
        data = table
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: {where} must be a table")
    return _parse(data, path, where)


def _parse(data: dict[str, Any], path: Path, where: str) -> Settings:
    values: dict[str, Any] = {}
    for raw_key, value in data.items():
        key = raw_key.replace("_", "-")
        if key not in KEYS:
            raise ConfigError(f"{path}: unknown key {raw_key!r:.80} in {where}",
                              f"known keys: {', '.join(KEYS)}")
        label = f"{path}: {raw_key}"
        if key == "fail-over":
            values["fail_over"] = ratio(value, label)
        elif key == "fail-on":
            items = [value] if isinstance(value, str) else value
            if not isinstance(items, list) or not all(isinstance(v, str) for v in items):
                raise ConfigError(f"{label} must be a severity or rule id, or a list of them")
            values["fail_on"] = tuple(fail_on_value(v, label) for v in items)
        elif key == "sites":
            if not isinstance(value, dict):
                raise ConfigError(f"{label} must be a table of \"glob pattern\" = max dead ratio")
            values["site_limits"] = tuple(
                (pattern, ratio(limit, f"{label}.{pattern!r:.80}")) for pattern, limit in value.items())
        elif key == "baseline":
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{label} must be the path of a JSON report")
            baseline = Path(value)
            values["baseline"] = str(baseline if baseline.is_absolute() else path.parent / baseline)
        elif key == "top":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{label} must be a whole number >= 1")
            values["top"] = value
        elif key == "tolerance":
            values["tolerance"] = ratio(value, label)
    return Settings(**values, source=str(path))


def ratio(value: Any, label: str) -> float:
    """A dead-ratio limit: a number in [0, 1] (NaN refused)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) \
            or not math.isfinite(value) or not 0 <= value <= 1:
        raise ConfigError(f"{label} = {value!r:.80} must be a ratio between 0 and 1")
    return float(value)


def fail_on_value(value: str, label: str) -> str:
    """A severity (info, warning, error: that severity or worse) or a rule id (dead-site)."""
    text = value.strip().lower()
    if text in SEVERITIES or RULE_ID.match(text):
        return text
    raise ConfigError(f"{label}: {value!r:.80} is neither a severity ({', '.join(SEVERITIES)}) "
                      "nor a rule id such as dead-site")


def site_limit(text: str, label: str = "--fail-over-site") -> tuple[str, float]:
    """'layer4.*=0.2' -> ('layer4.*', 0.2)."""
    pattern, sep, number = text.rpartition("=")
    if not sep or not pattern:
        raise ConfigError(f"{label} {text!r:.80} is not PATTERN=RATIO", "e.g. --fail-over-site 'layer4.*=0.2'")
    try:
        limit = float(number)
    except ValueError:
        raise ConfigError(f"{label} {text!r:.80}: {number!r:.40} is not a number") from None
    return pattern, ratio(limit, f"{label} {pattern}")


def resolve(config: str | None, overrides: Overrides, *, discover: bool = True) -> Settings:
    """The file's settings (``config`` or the one found from the current directory) with the
    command line's on top: given options replace the file's; site patterns from the command line
    come first (they win over the file's for the sites they match)."""
    if config is not None:
        base = load_config(Path(config))
    else:
        found = find_config() if discover else None
        base = load_config(found) if found is not None else Settings()
    return replace(
        base,
        fail_over=overrides.fail_over if overrides.fail_over is not None else base.fail_over,
        fail_on=overrides.fail_on or base.fail_on,
        site_limits=tuple(overrides.site_limits) + tuple(
            (p, r) for p, r in base.site_limits if p not in {q for q, _ in overrides.site_limits}),
        baseline=overrides.baseline if overrides.baseline is not None else base.baseline,
        top=overrides.top if overrides.top is not None else base.top,
        tolerance=overrides.tolerance if overrides.tolerance is not None else base.tolerance,
    )
