"""Shared setup of the multi-process and merge tests (tests/distributed).

``tests`` is a namespace package: the repository root goes on ``sys.path`` so the helpers
import as ``tests.distributed.compare`` under any pytest import mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

DATA = ROOT / "fixtures" / "data"


@pytest.fixture(scope="session")
def images() -> np.ndarray:
    """357 digit images [357, 1, 8, 8]: odd, and not a multiple of any batch size used here."""
    return np.load(DATA / "digits_calib.npy")[:357]


@pytest.fixture(scope="session")
def flat(images: np.ndarray) -> np.ndarray:
    """The same images flattened [357, 64], for the MLPs."""
    return np.ascontiguousarray(images.reshape(len(images), -1))
