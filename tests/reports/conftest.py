"""Fixtures for the report tests: golden-file comparison (``--update-goldens`` rewrites them, as
torchinfo does), an in-process CLI runner with a pinned width, and reports built in code."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Callable

import pytest

HERE = Path(__file__).resolve().parent
GOLDEN = HERE / "golden"
if str(HERE) not in sys.path:  # fixed.py importable by name
    sys.path.insert(0, str(HERE))

WIDTH = "100"
TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR", "COLUMNS")


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--update-goldens", action="store_true", default=False,
                     help="rewrite tests/reports/golden/* from the current output")


@pytest.fixture
def golden(request: pytest.FixtureRequest) -> Callable[[str, str], None]:
    """``golden(name, text)``: compare with golden/NAME, or rewrite it with --update-goldens
    (also RELUDOCTOR_UPDATE_GOLDENS=1, for runs where this conftest's option is not registered)."""
    update = bool(request.config.getoption("--update-goldens", default=False)) \
        or os.environ.get("RELUDOCTOR_UPDATE_GOLDENS") == "1"

    def check(name: str, text: str) -> None:
        path = GOLDEN / name
        if update:
            path.write_text(text, encoding="utf-8", newline="\n")
            return
        assert path.exists(), f"no golden file {path}: run pytest tests/reports --update-goldens"
        expected = path.read_text(encoding="utf-8")
        assert text == expected, (f"{name} differs from its golden file; if the change is intended, "
                                  "run pytest tests/reports --update-goldens and review the diff")

    return check


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Callable:
    """``cli(*args, env=None)``: run ``reludoctor ARGS`` in-process from an empty folder (so no
    settings file is found unless a test writes one), stdout and stderr apart, width pinned."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)

    def invoke(*args: object, env: dict | None = None):
        full_env = {name: None for name in TERMINAL_ENV}
        full_env["COLUMNS"] = WIDTH
        full_env.update(env or {})
        return CliRunner().invoke(app, [str(a) for a in args], env=full_env)

    return invoke
