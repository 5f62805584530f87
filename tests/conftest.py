"""Shared by every test folder. ``tests`` is a namespace package (no ``__init__.py``): the
repository root goes on ``sys.path`` so ``tests.models``, ``tests.engine.oracle`` and
``fixtures`` import under any pytest import mode, and ``arch="tests.models:..."`` resolves."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))


@pytest.fixture
def one_thread_seeded():
    """Same global RNG state for every test (the models are seeded anyway), and one intra-op
    thread: the models are tiny, and on a shared 2-core machine torch's thread pool spinning
    against other processes made the suite 5-20x slower. Restored after the test."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
