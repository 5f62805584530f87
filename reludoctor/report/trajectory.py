"""Dead units across checkpoints: scan reports of one model at several training steps -> a
Trajectory (per site the dead-ratio curve, per unit when it died and whether it came back).

Sites are matched between consecutive checkpoints by ``baseline.compare`` (the ``--baseline``
rules): same name; a site whose unit count changed (``resized``), or that appears (``added``),
starts a new track, because its unit indices are not comparable with the earlier ones. Unit
states are tracked from the first checkpoint of the site's current track (``tracked_from``) to
the last checkpoint where it is present.

Per site and checkpoint: the dead ratio and the dead units (null where the site is absent).
Per unit, with checkpoints indexed from 0:
- ``first_dead``: the first tracked checkpoint where it is dead; null if never.
- ``died_at``: the first checkpoint of its current dead streak (dead there and at every later
  checkpoint of the track); null if alive at the track's last checkpoint.
- ``revived``: dead at some tracked checkpoint and alive at a later one (listed by index).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any, Sequence

from reludoctor.report.baseline import compare
from reludoctor.report.model import CalibrationInfo, Report, _build, _jsonable  # the report's own JSON rules

KIND = "trajectory"
SCHEMA_VERSION = 1


@dataclass(frozen=True)
class Checkpoint:
    path: str | None
    sha256: str | None
    label: str


@dataclass(frozen=True)
class SiteEvent:
    """A site's change at ``checkpoint`` against the one before (``baseline.compare``'s status)."""

    checkpoint: int
    change: str  # added | removed | resized


@dataclass(frozen=True)
class SiteTrajectory:
    name: str
    op: str
    units: int  # at the last checkpoint where the site is present
    tracked_from: int  # unit indices are comparable from this checkpoint on
    dead_ratio: tuple[float | None, ...]  # per checkpoint; null where the site is absent
    dead_units: tuple[tuple[int, ...] | None, ...]  # per checkpoint, as its report lists them
    first_dead: tuple[int | None, ...]  # per unit: a checkpoint index or null
    died_at: tuple[int | None, ...]
    revived: tuple[int, ...]  # unit indices
    events: tuple[SiteEvent, ...] = ()

    @property
    def died(self) -> int:
        """Units that were alive at the track's first checkpoint and are dead at its end."""
        return sum(1 for at in self.died_at if at is not None and at > self.tracked_from)

    @property
    def dead_at_end(self) -> int:
        return sum(1 for at in self.died_at if at is not None)


@dataclass(frozen=True)
class Trajectory:
    tool: dict[str, str]
    checkpoints: tuple[Checkpoint, ...]
    data: CalibrationInfo
    sites: tuple[SiteTrajectory, ...]
    warnings: tuple[str, ...] = ()
    kind: str = KIND
    schema_version: int = SCHEMA_VERSION

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        ordered = {"schema_version": data.pop("schema_version"), "kind": data.pop("kind")}
        ordered.update(data)
        return _jsonable(ordered)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False) + "\n"

    @classmethod
    def from_dict(cls, data: Any) -> Trajectory:
        """The typed Trajectory back from ``to_dict()`` (ReportFormatError when malformed)."""
        return _build(cls, data, "")


class _Track:
    """One site's unit states over its current track, advanced by ``compare``'s changes."""

    def __init__(self, start: int, units: int, dead: Sequence[int]):
        self.start = start
        self.first_dead: list[int | None] = [None] * units
        self.died_at: list[int | None] = [None] * units
        self.revived: set[int] = set()
        self.step(start, dead, ())

    def step(self, checkpoint: int, newly_dead: Sequence[int], revived: Sequence[int]) -> None:
        for unit in newly_dead:
            self.died_at[unit] = checkpoint
            if self.first_dead[unit] is None:
                self.first_dead[unit] = checkpoint
        for unit in revived:
            self.died_at[unit] = None
            self.revived.add(unit)


def build(reports: Sequence[Report], checkpoints: Sequence[Checkpoint],
          warnings: Sequence[str] = ()) -> Trajectory:
    """The trajectory of ``reports`` (one per checkpoint, in step order, over the same data)."""
    if len(reports) != len(checkpoints) or len(reports) < 2:
        raise ValueError("a trajectory needs one report per checkpoint, and at least two")
    n = len(reports)
    tracks: dict[str, _Track] = {}
    events: dict[str, list[SiteEvent]] = {}
    ratios: dict[str, list[float | None]] = {}
    dead: dict[str, list[tuple[int, ...] | None]] = {}
    latest: dict[str, Any] = {}  # name -> the SiteStats of the last checkpoint holding it
    order: list[str] = []

    def start(site: Any, checkpoint: int) -> None:
        tracks[site.name] = _Track(checkpoint, site.units, site.dead_units)

    for index, report in enumerate(reports):
        if index == 0:
            for site in report.sites:
                start(site, 0)
        else:
            previous = reports[index - 1]
            for change in compare(previous, report, checkpoints[index - 1].label).sites:
                if change.status == "matched":
                    tracks[change.name].step(index, change.newly_dead, change.revived)
                    continue
                events.setdefault(change.name, []).append(SiteEvent(index, change.status))
                if change.status in ("added", "resized"):
                    start(report.site(change.name), index)
        for site in report.sites:
            if site.name not in ratios:
                ratios[site.name] = [None] * n
                dead[site.name] = [None] * n
                order.append(site.name)
            ratios[site.name][index] = site.dead_ratio
            dead[site.name][index] = tuple(site.dead_units)
            latest[site.name] = site
    final = [s.name for s in reports[-1].sites]
    names = final + [name for name in order if name not in set(final)]  # today's model first
    sites = []
    for name in names:
        track, site = tracks[name], latest[name]
        sites.append(SiteTrajectory(
            name=name, op=site.op, units=site.units, tracked_from=track.start,
            dead_ratio=tuple(ratios[name]), dead_units=tuple(dead[name]), first_dead=tuple(track.first_dead),
            died_at=tuple(track.died_at), revived=tuple(sorted(track.revived)),
            events=tuple(events.get(name, ()))))
    first = reports[0]
    return Trajectory(tool=dict(first.tool), checkpoints=tuple(checkpoints), data=first.calibration,
                      sites=tuple(sites), warnings=tuple(warnings))
