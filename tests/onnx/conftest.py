"""Shared setup of the ONNX backend tests (tests/onnx).

``tests`` is a namespace package: the repository root goes on ``sys.path`` so the helpers
import as ``tests.onnx.onnx_kit`` under any pytest import mode.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")
