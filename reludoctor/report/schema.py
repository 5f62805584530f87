"""The JSON Schemas of the report (``report.schema.json``) and of a trajectory
(``trajectory.schema.json``, ``reludoctor trajectory --json``), shipped in the package.

``load_schema()`` returns one as a dict; ``validate(report_dict)`` checks a report against it and
raises ``ReportValidationError`` naming the first offending location. ``validate`` uses the
``jsonschema`` package when it is installed (imported lazily) and otherwise a small built-in
checker for exactly the keywords this schema uses. Neither imports torch.
"""

from __future__ import annotations

import json
import math
import re
from functools import lru_cache
from importlib import resources
from typing import Any, Iterator

__all__ = ["SCHEMA_FILE", "TRAJECTORY_SCHEMA_FILE", "ReportValidationError", "load_schema", "validate"]

SCHEMA_FILE = "report.schema.json"
TRAJECTORY_SCHEMA_FILE = "trajectory.schema.json"
_TITLES = {SCHEMA_FILE: "the reludoctor report schema", TRAJECTORY_SCHEMA_FILE: "the reludoctor trajectory schema"}


class ReportValidationError(ValueError):
    """A report does not match the schema. ``path`` locates the first error, e.g. ``sites[0].units``."""

    def __init__(self, message: str, path: str = "", errors: list[str] | None = None):
        super().__init__(message)
        self.path = path
        self.errors = errors or [message]


@lru_cache(maxsize=2)
def _schema_text(name: str) -> str:
    return resources.files("reludoctor.report").joinpath(name).read_text(encoding="utf-8")


def load_schema(name: str = SCHEMA_FILE) -> dict[str, Any]:
    """The report schema, or another of ``_TITLES`` (draft 2020-12), as a fresh dict."""
    return json.loads(_schema_text(name))


def validate(report: Any, *, use_jsonschema: bool | None = None, schema_file: str = SCHEMA_FILE) -> None:
    """Raise ``ReportValidationError`` unless ``report`` (``Report.to_dict()``, or the parsed
    JSON report) matches the schema (``schema_file``: the trajectory's). ``use_jsonschema``:
    None = when installed; False = the built-in checker; True = require the jsonschema package."""
    schema = load_schema(schema_file)
    title = _TITLES[schema_file]
    if use_jsonschema is None or use_jsonschema:
        try:
            import jsonschema
        except ImportError:
            if use_jsonschema:
                raise
            jsonschema = None
        if jsonschema is not None:
            validator = jsonschema.Draft202012Validator(schema)
            errors = sorted(validator.iter_errors(report),
                            key=lambda e: (len(e.absolute_path), list(map(str, e.absolute_path))))
            if errors:
                messages = [f"{_where(e.absolute_path)}: {e.message}" for e in errors]
                raise _error(messages, _where(errors[0].absolute_path), title)
            return
    messages = list(_Checker(schema).errors(report, schema, ()))
    if messages:
        raise _error([f"{_where(path)}: {text}" for path, text in messages], _where(messages[0][0]), title)


MESSAGE_CHARS = 300  # an offending value is quoted, never in full: reports are untrusted input


def _short(text: str, limit: int = MESSAGE_CHARS) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _error(messages: list[str], path: str, title: str) -> ReportValidationError:
    more = f" (and {len(messages) - 1} more)" if len(messages) > 1 else ""
    text = f"report does not match {title}: {_short(messages[0])}{more}"
    return ReportValidationError(text, path, messages)


def _where(path: Any) -> str:
    text = ""
    for part in path:
        text += f"[{part}]" if isinstance(part, int) else (f".{part}" if text else str(part))
    return text or "(root)"


class _Checker:
    """A minimal draft 2020-12 checker covering the keywords report.schema.json uses.

    An unknown keyword raises NotImplementedError, so a schema change can never be silently
    ignored by this fallback.
    """

    ANNOTATIONS = {"$schema", "$id", "$defs", "title", "description", "$comment"}
    TYPES = {
        "object": lambda v: isinstance(v, dict),
        "array": lambda v: isinstance(v, list),
        "string": lambda v: isinstance(v, str),
        "boolean": lambda v: isinstance(v, bool),
        "null": lambda v: v is None,
        "number": lambda v: isinstance(v, (int, float)) and not isinstance(v, bool),
        # as in draft 2020-12 (and jsonschema): 1.0 is an integer, True is not
        "integer": lambda v: (isinstance(v, int) and not isinstance(v, bool))
        or (isinstance(v, float) and math.isfinite(v) and v.is_integer()),
    }

    def __init__(self, root: dict[str, Any]):
        self.root = root

    def _resolve(self, ref: str) -> dict[str, Any]:
        if not ref.startswith("#/"):
            raise NotImplementedError(f"only local $ref are supported, not {ref}")
        node: Any = self.root
        for part in ref[2:].split("/"):
            node = node[part]
        return node

    def errors(self, value: Any, schema: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
        if schema is True:
            return
        if schema is False:
            yield path, "no value is allowed here"
            return
        for key, arg in schema.items():
            if key in self.ANNOTATIONS:
                continue
            check = getattr(self, "_" + key.lstrip("$"), None)
            if check is None:
                raise NotImplementedError(f"schema keyword {key!r} is not supported by the fallback "
                                          "checker: install jsonschema")
            yield from check(value, arg, path, schema)

    def _ref(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        yield from self.errors(value, self._resolve(arg), path)

    def _type(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        names = [arg] if isinstance(arg, str) else arg
        if not any(self.TYPES[name](value) for name in names):
            yield path, f"{value!r:.60} is not of type {' or '.join(map(repr, names))}"

    def _const(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if not _equal(value, arg):
            yield path, f"{arg!r} was expected"

    def _enum(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if not any(_equal(value, option) for option in arg):
            yield path, f"{value!r:.60} is not one of {arg!r}"

    def _required(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if isinstance(value, dict):
            for key in arg:
                if key not in value:
                    yield path, f"{key!r} is a required property"

    def _properties(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if isinstance(value, dict):
            for key, sub in arg.items():
                if key in value:
                    yield from self.errors(value[key], sub, (*path, key))

    def _additionalProperties(self, value, arg, path, schema):  # noqa: ANN001, ANN202, N802
        if isinstance(value, dict) and arg is not True:
            known = schema.get("properties", {})
            for key in value:
                if key not in known:
                    yield from self.errors(value[key], arg, (*path, key))

    def _items(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from self.errors(item, arg, (*path, index))

    def _minItems(self, value, arg, path, schema):  # noqa: ANN001, ANN202, N802
        if isinstance(value, list) and len(value) < arg:
            yield path, f"should have at least {arg} items"

    def _uniqueItems(self, value, arg, path, schema):  # noqa: ANN001, ANN202, N802
        if arg and isinstance(value, list):
            seen = [json.dumps(v, sort_keys=True) for v in value]
            if len(set(seen)) != len(seen):
                yield path, "has non-unique elements"

    def _minLength(self, value, arg, path, schema):  # noqa: ANN001, ANN202, N802
        if isinstance(value, str) and len(value) < arg:
            yield path, f"{value!r} is too short"

    def _pattern(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if isinstance(value, str) and not re.search(arg, value):
            yield path, f"{value!r:.60} does not match {arg!r}"

    def _minimum(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if self.TYPES["number"](value) and value < arg:
            yield path, f"{value!r} is less than the minimum of {arg}"

    def _exclusiveMinimum(self, value, arg, path, schema):  # noqa: ANN001, ANN202, N802
        if self.TYPES["number"](value) and value <= arg:
            yield path, f"{value!r} is less than or equal to the minimum of {arg}"

    def _maximum(self, value, arg, path, schema):  # noqa: ANN001, ANN202
        if self.TYPES["number"](value) and value > arg:
            yield path, f"{value!r} is greater than the maximum of {arg}"

    def _oneOf(self, value, arg, path, schema):  # noqa: ANN001, ANN202, N802
        matches = sum(1 for sub in arg if not any(True for _ in self.errors(value, sub, path)))
        if matches != 1:
            yield path, (f"{value!r:.60} is not valid under any of the given schemas" if matches == 0
                         else f"{value!r:.60} is valid under several of the given schemas")


def _equal(a: Any, b: Any) -> bool:
    """JSON equality: booleans are not numbers."""
    if isinstance(a, bool) or isinstance(b, bool):
        return type(a) is type(b) and a == b
    return a == b
