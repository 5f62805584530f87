"""Tiny language models for the profile and export tests (see profile_kit)."""

from __future__ import annotations

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # profile_kit importable in-process (torch.load of its modules)
    sys.path.insert(0, str(HERE))
