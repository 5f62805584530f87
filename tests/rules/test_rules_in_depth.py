"""The findings take the in-depth diagnosis into account when the scan has it: prunable-units
names the certified dead units (--input-range), dormant-units the specialised ones (--slices)
and the measured cost of removing them (--ablate). A constructed layer whose every unit's fate
is known by hand: unit 0 cannot fire on [0, 1]^2, unit 1 only did not fire on the data, unit 2
fires on slice 1 only with a tiny output (dormant), unit 3 is healthy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reludoctor

RULE_OPTIONS = {"device": "cpu", "on_warning": lambda message: None}


@pytest.fixture
def case():
    model = torch.nn.Sequential(torch.nn.Linear(2, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[-1.0, -1.0], [2.0, -1.0], [0.0, 1.0], [5.0, 5.0]]))
        model[0].bias.copy_(torch.tensor([-0.5, -1.5, -0.9, 1.0]))
        model[2].weight.copy_(torch.tensor([[1.0, 1.0, 1.0, 1.0], [0.5, -0.5, 2.0, -1.0]]))
        model[2].bias.zero_()
    rng = np.random.default_rng(0)
    x = np.stack([rng.uniform(0, 0.5, 400), rng.uniform(0, 1, 400)], 1).astype(np.float32)
    slices = (x[:, 1] > 0.9).astype(np.int64)
    return model.eval(), x, slices


def _finding(report, rule):
    return next(f for f in report.findings if f.rule == rule)


def test_without_the_options_the_findings_say_nothing_of_them(case):
    model, x, _ = case
    report = reludoctor.scan(model, x, **RULE_OPTIONS)
    prunable, dormant = _finding(report, "prunable-units"), _finding(report, "dormant-units")
    assert prunable.evidence["units"] == [0, 1]
    assert "certified_dead_units" not in prunable.evidence and "certified" not in prunable.message
    assert dormant.evidence["dormant_units"] == [2]
    assert "specialised" not in dormant.evidence and "ablation_joint" not in dormant.evidence


def test_findings_name_certified_specialised_and_measured_units(case):
    model, x, slices = case
    report = reludoctor.scan(model, x, slices=slices, input_range="0,1", ablate=True, **RULE_OPTIONS)
    prunable = _finding(report, "prunable-units")
    # by hand: unit 0's pre-activation is at most -0.5 on the box; unit 1 reaches 0.5 at (1, 0)
    assert prunable.evidence["certified_dead_units"] == [0]
    assert "1 of them cannot fire for any input in the range" in prunable.message
    assert "--certified-only" in prunable.suggestion

    dormant = _finding(report, "dormant-units")
    fires = x[:, 1] > 0.9  # unit 2's pre-activation x1 - 0.9 > 0: the samples of slice 1
    assert set(slices[fires]) == {1}
    assert dormant.evidence["specialised"] == {"2": [1]}
    assert "units 2 fire only on slice 1" in dormant.suggestion

    # zeroing unit 2 by hand: its output times its outgoing weights leaves the outputs
    with torch.no_grad():
        hidden = torch.relu(model[0](torch.from_numpy(x)))
        y = model[2](hidden)
        hidden[:, 2] = 0
        change = float((model[2](hidden) - y).double().norm() / y.double().norm())
    joint = dormant.evidence["ablation_joint"]
    assert joint["units"] == [2]
    assert joint["output_change"] == pytest.approx(change, rel=1e-5)
    assert f"{change:.2%}" in dormant.suggestion and "--prune-near-dead" in dormant.suggestion
