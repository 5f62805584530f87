"""Shared setup of the rules tests (tests/rules).

The repository root goes on ``sys.path`` so ``tests.models``, ``tests.engine.oracle`` and
``fixtures`` import under any pytest import mode. One intra-op thread (tiny models, a shared
2-core machine) and a fixed global seed, restored after each test.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch = pytest.importorskip("torch")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
