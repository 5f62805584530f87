"""Shared setup of the scan-engine correctness tests (tests/engine).

The tests compare ``reludoctor.scan`` with independent oracles (tests/engine/oracle.py) on the
tiny models of tests/models.py (importable as ``tests.models``: tests/conftest.py).
"""

from __future__ import annotations

import pytest

torch = pytest.importorskip("torch")

METHODS = ("export", "dispatch")


@pytest.fixture(autouse=True)
def _deterministic_torch(one_thread_seeded):
    """One intra-op thread and a fixed seed for every test here (tests/conftest.py)."""


@pytest.fixture(params=METHODS)
def method(request: pytest.FixtureRequest) -> str:
    """Both instrumentation methods of the PyTorch backend."""
    return request.param
