"""Helpers of the calibration-source tests: paths of the bundled fixtures, image writers, a
folder digest. A uniquely named module (``conftest`` names collide across test folders)."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
torch = pytest.importorskip("torch")
Image = pytest.importorskip("PIL.Image")

FIXTURES = ROOT / "fixtures"
DIGITS_CNN = FIXTURES / "models" / "digits_cnn.pt2"
DIGITS_MLP = FIXTURES / "models" / "digits_mlp_dead.pt2"
DIGITS_NPY = FIXTURES / "data" / "digits_calib.npy"


def random_rgb(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def write_image(path: Path, pixels: np.ndarray, mode: str | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(pixels) if mode is None else Image.fromarray(pixels).convert(mode)
    if path.suffix.lower() in (".jpg", ".jpeg"):
        image.save(path, quality=95)
    else:
        image.save(path)
    return path


def folder_digest(root: Path) -> dict[str, str]:
    """Every file's sha256, to check that nothing under a folder was modified."""
    if root.is_file():
        return {root.name: hashlib.sha256(root.read_bytes()).hexdigest()}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}
