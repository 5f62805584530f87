"""Shared setup of the slices tests (tests/slices): one intra-op thread and a fixed global seed
for each test (tests/conftest.py)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _deterministic_torch(one_thread_seeded):
    """One intra-op thread and a fixed seed for every test here (tests/conftest.py)."""
