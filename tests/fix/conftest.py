"""Fixtures for the fix tests: model and data files built once per session, a CliRunner with a
pinned width, and checks of error output."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import fix_models  # noqa: E402
from fix_models import vectors  # noqa: E402

TERMINAL_ENV = ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")


@dataclass(frozen=True)
class Files:
    root: Path
    mlp_pt2: Path
    mlp_state: Path
    mlp_ts: Path
    x_npy: Path


@pytest.fixture(scope="session")
def files(tmp_path_factory: pytest.TempPathFactory) -> Files:
    import warnings

    import torch

    root = tmp_path_factory.mktemp("fix-files")
    model = fix_models.PlantedMLP()
    x = vectors()
    np.save(root / "x.npy", x)
    example = (torch.from_numpy(x[:2]),)
    program = torch.export.export(model, example, dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "mlp.pt2")
    torch.save(model.state_dict(), root / "mlp_state.pt")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example), root / "mlp.ts")
    return Files(root, root / "mlp.pt2", root / "mlp_state.pt", root / "mlp.ts", root / "x.npy")


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """``reludoctor fix ARGS`` in-process (stdout and stderr apart, width pinned)."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    monkeypatch.syspath_prepend(str(HERE))

    def invoke(*args: object):
        env = {name: None for name in TERMINAL_ENV}
        env["COLUMNS"] = "200"
        return CliRunner().invoke(app, ["fix", *map(str, args)], env=env)

    return invoke
