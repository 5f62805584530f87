"""Shared setup of the scan-engine correctness tests (tests/engine).

The tests compare ``reludoctor.scan`` with independent oracles (tests/engine/oracle.py) on the
tiny models of tests/models.py. ``tests`` is a namespace package (no ``__init__.py``): the
repository root is put on ``sys.path`` here so ``tests.models`` and ``tests.engine.oracle``
import under any pytest import mode, and so ``arch="tests.models:..."`` resolves.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

torch = pytest.importorskip("torch")

METHODS = ("export", "dispatch")


@pytest.fixture(autouse=True)
def _deterministic_torch():
    """Same global RNG state for every test (the models are seeded anyway), and one intra-op
    thread: these models are tiny, and on a shared 2-core machine torch's thread pool spinning
    against other processes made the suite 5-20x slower. Restored after each test."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Both instrumentation methods of the PyTorch backend."""
    return request.param
