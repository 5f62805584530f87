"""Shared setup of the calibration-source tests (image folders, --sample/--seed/--limit).

Image folders are written into tmp_path with numpy and Pillow; oracles are independent of
reludoctor: Pillow and numpy by hand, or torchvision.transforms when it imports. Helpers live in
``datasource_kit`` (importable from the tests: this folder is put on ``sys.path``).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
for path in (str(HERE), str(ROOT)):
    if path not in sys.path:
        sys.path.insert(0, path)

from datasource_kit import DIGITS_NPY, torch, write_image  # noqa: E402


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny models on a shared 2-core machine: one intra-op thread, restored afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def digits_folder(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, np.ndarray]:
    """fixtures/data/digits_calib.npy written as 8-bit grayscale PNGs (pixel x 15, 0..240), and
    the same images as a float32 .npy scaled the way --normalize none reads them (/255)."""
    root = tmp_path_factory.mktemp("digits")
    x = np.load(DIGITS_NPY)  # [360, 1, 8, 8], pixel / 16
    pixels = np.round(x[:, 0] * 16 * 15).astype(np.uint8)
    folder = root / "images"
    for index, image in enumerate(pixels):
        write_image(folder / f"{index // 100}" / f"{index:04d}.png", image)
    scaled = (pixels.astype(np.float32) / np.float32(255))[:, None]
    np.save(root / "scaled.npy", scaled)
    return folder, root / "scaled.npy", scaled


@pytest.fixture
def cli(monkeypatch: pytest.MonkeyPatch) -> Callable:
    """``reludoctor scan ARGS`` in-process (typer's CliRunner, stdout and stderr apart)."""
    from typer.testing import CliRunner

    from reludoctor.cli import app

    def invoke(*args: object):
        env = {name: None for name in ("TTY_COMPATIBLE", "TTY_INTERACTIVE", "FORCE_COLOR", "NO_COLOR")}
        env["COLUMNS"] = "200"
        return CliRunner().invoke(app, ["scan", *map(str, args)], env=env)

    return invoke
