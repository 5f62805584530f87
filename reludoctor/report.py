"""The typed, frozen Report every scan yields; ``to_dict()`` is the JSON contract (schema 1)."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Histogram:
    edges: tuple[float, ...]  # bin i covers [edges[i-1], edges[i]); first and last are open
    counts: tuple[int, ...]  # len(edges) + 1


@dataclass(frozen=True)
class SiteStats:
    name: str
    op: str
    module: str
    unit_axis: int
    units: int
    shape: tuple[int, ...]  # activation shape without the batch axis
    lower_bound: float
    upper_bound: float | None
    samples: int
    positions: int  # observed positions per unit
    dead_units: tuple[int, ...]
    dead_ratio: float
    activation_rate: tuple[float, ...]
    max_preactivation: tuple[float, ...]
    near_dead_units: tuple[int, ...]  # alive, but firing rate below the near-dead threshold
    dormant_units: tuple[int, ...]  # tau-dormant (with lower bound 0, dead units are dormant too)
    dormant_score: tuple[float, ...]  # unit mean |output| / layer mean of that
    saturated_units: tuple[int, ...] | None  # bounded activations only
    min_preactivation: tuple[float, ...] | None  # bounded activations only
    histogram: Histogram


@dataclass(frozen=True)
class Finding:
    rule: str
    severity: str  # info | warning | error
    site: str | None
    message: str
    evidence: dict[str, Any]
    suggestion: str


@dataclass(frozen=True)
class UnobservedSite:
    """A ReLU-family site the scan could not measure, and why (never a silent omission)."""

    name: str
    op: str
    reason: str


@dataclass(frozen=True)
class ModelInfo:
    path: str | None
    format: str
    sha256: str | None
    method: str  # export | dispatch: how call sites were observed
    inputs: tuple[str, ...]


@dataclass(frozen=True)
class CalibrationInfo:
    source: str
    samples: int
    synthetic: bool
    batch_size: int


@dataclass(frozen=True)
class Thresholds:
    near_dead: float
    dormant_tau: float
    unit_axis: int | None


@dataclass(frozen=True)
class Summary:
    sites: int
    units: int
    dead_units: int
    dead_ratio: float
    worst_site: str | None
    worst_site_dead_ratio: float
    near_dead_units: int
    dormant_units: int
    saturated_units: int
    fully_dead_sites: tuple[str, ...]
    firing_rate_bound_95: float
    unobserved_sites: int  # 0 firings in N samples: rate < 3/N at 95% confidence


@dataclass(frozen=True)
class Report:
    tool: dict[str, str]
    model: ModelInfo
    calibration: CalibrationInfo
    device: str
    thresholds: Thresholds
    summary: Summary
    sites: tuple[SiteStats, ...]
    findings: tuple[Finding, ...] = ()
    unobserved_sites: tuple[UnobservedSite, ...] = ()
    warnings: tuple[str, ...] = ()
    schema_version: int = field(default=SCHEMA_VERSION)

    def site(self, name: str) -> SiteStats:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        ordered = {"schema_version": data.pop("schema_version")}
        ordered.update(data)
        return _jsonable(ordered)

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and value != value:  # NaN has no JSON form
        return None
    if isinstance(value, float) and value in (float("inf"), float("-inf")):
        return None
    return value
