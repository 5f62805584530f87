"""Fixture paths, and report comparison for the multi-process and merge tests: everything
exact, except the float sums of |output| and what is divided by them (dormant scores), which
depend on the order in which per-batch partial sums were added."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "fixtures" / "models"
DATA = ROOT / "fixtures" / "data"

FLOAT_SUMS = {"dormant_score"}
# The same batches summed in another order agree to ~1e-12; but ranks of a torchrun scan run with
# another thread count than one process, so their activations (GEMMs) differ in the last bits
# and the sums of |output| by ~1e-7: 1e-6 holds for both.
SUM_TOLERANCE = 1e-6
# Per-unit extremes are exact for the same arithmetic, but a GEMM's last bits depend on its
# shape and thread count (oneDNN/MKL pick kernels by both): another batching, or ranks running
# one thread each, may move a float32 maximum by an ulp or two. Dead sets and counts stay exact.
EXTREMES = {"max_preactivation", "min_preactivation"}
EXTREME_TOLERANCE = 1e-6


def _same_floats(a: list | None, b: list | None, where: str, rel: float = SUM_TOLERANCE) -> None:
    if a is None or b is None:
        assert a is b, where
        return
    assert len(a) == len(b), where
    for x, y in zip(a, b):
        if x is None or y is None:
            assert x is y, where
        else:
            assert x == pytest.approx(y, rel=rel, abs=1e-12), where


def assert_same_sites(got: dict, want: dict, rel: float = SUM_TOLERANCE) -> None:
    """Two report dicts have the same sites: names, order, dead sets, counts, rates and histograms
    exactly; maxima and minima within EXTREME_TOLERANCE (float32 GEMM rounding); sums of |output|
    and dormant scores within ``rel`` (SUM_TOLERANCE; other batches, whose float32 partial sums
    differ: 1e-5)."""
    assert [s["name"] for s in got["sites"]] == [s["name"] for s in want["sites"]]
    for mine, theirs in zip(got["sites"], want["sites"]):
        name = mine["name"]
        assert set(mine) == set(theirs), name
        for key in mine:
            if key in FLOAT_SUMS:
                _same_floats(mine[key], theirs[key], f"{name}.{key}", rel)
            elif key in EXTREMES:
                _same_floats(mine[key], theirs[key], f"{name}.{key}", max(rel, EXTREME_TOLERANCE))
            elif key == "accumulators":
                assert mine[key]["positive_count"] == theirs[key]["positive_count"], name
                _same_floats(mine[key]["abs_output_sum"], theirs[key]["abs_output_sum"],
                             f"{name}.abs_output_sum", rel)
            else:
                assert mine[key] == theirs[key], f"{name}.{key}"
    assert [(u["name"], u["op"]) for u in got["unobserved_sites"]] == \
        [(u["name"], u["op"]) for u in want["unobserved_sites"]]


def assert_same_scan(got: dict, want: dict) -> None:
    """A whole report equals another one (a multi-process scan vs one process): sites, summary,
    findings, calibration, model, thresholds."""
    assert_same_sites(got, want)
    for key in ("model", "calibration", "thresholds", "summary", "device"):
        assert got[key] == want[key], key
    assert _findings(got) == _findings(want)


def _findings(report: dict) -> list[tuple[Any, ...]]:
    return [(f["rule"], f["severity"], f["site"], f["message"], f["suggestion"],
             _rounded(f["evidence"])) for f in report["findings"]]


def _rounded(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _rounded(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_rounded(v) for v in value]
    if isinstance(value, float) and math.isfinite(value):
        return round(value, 4)
    return value
