"""Alerts: a site's dead ratio jumping between two consecutive observed steps.

One alert per site per run (a run that keeps killing units would otherwise warn at every
flush), as a ``ReludoctorWarning``, an ``alert`` record and the ``on_alert`` callback. The
rule id is the scan's ``dead-units``, so CI and dashboards key both on one id.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass

from reludoctor.core.rules import LEAKY, rule
from reludoctor.errors import ReludoctorWarning

RULE = rule("dead-units").id  # KeyError here if the rule were ever renamed
SUGGESTION = (f"lower the learning rate or add a warm-up; use {LEAKY} so dead units keep a gradient "
              "(Maas et al. 2013); initialise with torch.nn.init.kaiming_normal_(w, nonlinearity=\"relu\") "
              "(He et al. 2015)")
_EPS = 1e-12  # 3/30 - 0 must count as a rise of 0.1


@dataclass(frozen=True)
class Alert:
    step: int
    site: str
    dead_ratio: float
    previous_dead_ratio: float
    lr: float | None
    rule: str = RULE
    suggestion: str = SUGGESTION

    @property
    def message(self) -> str:
        lr = "" if self.lr is None else f" (learning rate {self.lr:g})"
        return (f"[{self.rule}] dead units at {self.site} rose from {self.previous_dead_ratio:.1%} to "
                f"{self.dead_ratio:.1%} at step {self.step}{lr}: {self.suggestion}")

    def record(self) -> dict:
        return {"type": "alert", **asdict(self), "message": self.message}


class AlertPolicy:
    """Remembers each site's previous dead ratio and which sites already drew their alert."""

    def __init__(self, jump: float):
        self.jump = jump
        self._previous: dict[str, float] = {}
        self._alerted: set[str] = set()

    def check(self, step: int, site: str, dead_ratio: float, lr: float | None) -> Alert | None:
        previous = self._previous.get(site)
        self._previous[site] = dead_ratio
        if previous is None or site in self._alerted or dead_ratio - previous < self.jump - _EPS:
            return None
        self._alerted.add(site)
        return Alert(step, site, dead_ratio, previous, lr)


def warn(alert: Alert) -> None:
    warnings.warn(alert.message, ReludoctorWarning, stacklevel=2)
