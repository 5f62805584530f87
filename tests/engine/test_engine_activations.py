"""Every ReLU-family spelling is a site, observed on its pre-activation, named as designed.

Oracle: the pre-activation computed by hand (numpy, float64) from the weights, reduced per
unit with numpy (tests/engine/oracle.py). Each model is scanned with both instrumentation
methods ("export" and "dispatch"); both must match the oracle and agree with each other.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reludoctor
from tests import models as zoo
from tests.engine.oracle import (
    assert_report_matches,
    assert_reports_agree,
    np_linear,
    reduce_site,
    to_numpy,
    weights,
)

SAMPLES = 37
BATCH = 8  # 37 = 4 x 8 + 5: the last batch is partial


def scan_both(model, data, **kwargs):
    reports = {}
    for method in ("export", "dispatch"):
        reports[method] = reludoctor.scan(model, data, method=method, **kwargs)
        assert reports[method].model.method == method
    return reports


@pytest.mark.parametrize("kind", list(zoo.ACTIVATIONS))
def test_every_spelling_matches_the_oracle(kind: str) -> None:
    spec = zoo.ACTIVATIONS[kind]
    model = zoo.LinearAct(kind).eval()
    x = zoo.detector_data(SAMPLES, 6)
    p = weights(model)
    pre = np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"])
    oracle = reduce_site(pre, name=spec.site, op=spec.op, lower=spec.lower, upper=spec.upper)

    reports = scan_both(model, x, batch_size=BATCH, near_dead=0.05)
    for method, report in reports.items():
        assert_report_matches(report, [oracle], near_dead=0.05)
        site = report.sites[0]
        assert site.module == ("act" if spec.module is not None else "")
        # the designed units, stated directly
        assert zoo.DEAD_UNIT in site.dead_units
        assert zoo.ALWAYS_UNIT not in site.dead_units
        assert site.activation_rate[zoo.ALWAYS_UNIT] == 1.0
        assert site.activation_rate[zoo.DETECTOR_UNIT] == 1 / SAMPLES
        assert zoo.DETECTOR_UNIT in site.near_dead_units  # 1/37 < 0.05
        assert zoo.DORMANT_UNIT in site.dormant_units and zoo.DORMANT_UNIT not in site.dead_units
        assert site.activation_rate[zoo.DORMANT_UNIT] == 1.0
        # the pre-activation is observed, not the activation's (possibly inplace) output
        assert site.max_preactivation[zoo.DEAD_UNIT] < -50
        assert site.max_preactivation[zoo.DETECTOR_UNIT] == pytest.approx(zoo.HOT_VALUE - 10)
        if spec.upper is not None:
            assert zoo.ALWAYS_UNIT in site.saturated_units
            assert site.min_preactivation[zoo.ALWAYS_UNIT] > 50
            assert site.min_preactivation[zoo.DEAD_UNIT] < -50
    assert_reports_agree(reports["export"], reports["dispatch"])


@pytest.mark.parametrize("kind", ["nn.ReLU(inplace)", "Tensor.relu_", "F.relu6(inplace)",
                                  "F.hardtanh(inplace)", "clamp_(min=0)"])
def test_inplace_activation_sees_the_raw_preactivation(kind: str) -> None:
    """If an instrument observed after the inplace op (or a module hook saw its rectified
    input), every max would be >= the lower bound and no unit could show a negative max."""
    model = zoo.LinearAct(kind).eval()
    x = zoo.detector_data(SAMPLES, 6)
    with torch.no_grad():
        expected = model.fc(x).amax(0)
    for method, report in scan_both(model, x, batch_size=BATCH).items():
        got = torch.tensor(report.sites[0].max_preactivation, dtype=torch.float32)
        assert torch.allclose(got, expected, atol=1e-5), method
        assert (got < zoo.ACTIVATIONS[kind].lower).any(), method


def test_inplace_model_still_produces_its_outputs() -> None:
    """Observing must not change what an inplace activation computes, nor leave the model
    changed for later calls."""
    model = zoo.LinearAct("nn.ReLU(inplace)").eval()
    x = zoo.detector_data(SAMPLES, 6)
    with torch.no_grad():
        expected = model(x.clone())
    scan_both(model, x, batch_size=BATCH)
    with torch.no_grad():
        assert torch.equal(model(x.clone()), expected)


def test_reused_relu_module_is_two_sites_in_execution_order() -> None:
    model = zoo.ReusedReLU().eval()
    x = torch.randn(SAMPLES, 6, generator=torch.Generator().manual_seed(1))
    p = weights(model)
    pre1 = np_linear(to_numpy(x), p["fc1.weight"], p["fc1.bias"])
    pre2 = np_linear(np.maximum(pre1, 0), p["fc2.weight"], p["fc2.bias"])
    oracles = [reduce_site(pre1, name="act#1", op="relu"), reduce_site(pre2, name="act#2", op="relu")]
    reports = scan_both(model, x, batch_size=BATCH)
    for report in reports.values():
        assert [s.name for s in report.sites] == ["act#1", "act#2"]
        assert [s.units for s in report.sites] == [8, 5]  # execution order, not module order
        assert [s.module for s in report.sites] == ["act", "act"]
        assert_report_matches(report, oracles)
    assert_reports_agree(reports["export"], reports["dispatch"])


def test_reused_block_suffixes_the_inner_activation() -> None:
    model = zoo.ReusedBlock().eval()
    x = torch.randn(SAMPLES, 6, generator=torch.Generator().manual_seed(2))
    p = weights(model)
    pre1 = np_linear(to_numpy(x), p["block.0.weight"], p["block.0.bias"])
    pre2 = np_linear(np.maximum(pre1, 0), p["block.0.weight"], p["block.0.bias"])
    oracles = [reduce_site(pre1, name="block.1#1", op="relu"),
               reduce_site(pre2, name="block.1#2", op="relu")]
    reports = scan_both(model, x, batch_size=BATCH)
    for report in reports.values():
        assert_report_matches(report, oracles)
    assert_reports_agree(reports["export"], reports["dispatch"])


def test_functional_relu_in_two_submodules_is_named_by_module_path() -> None:
    model = zoo.TwoFunctional().eval()
    x = torch.randn(SAMPLES, 6, generator=torch.Generator().manual_seed(3))
    p = weights(model)
    pre1 = np_linear(to_numpy(x), p["a.fc.weight"], p["a.fc.bias"])
    pre2 = np_linear(np.maximum(pre1, 0), p["b.fc.weight"], p["b.fc.bias"])
    oracles = [reduce_site(pre1, name="a.relu()", op="relu"),
               reduce_site(pre2, name="b.relu()", op="relu")]
    reports = scan_both(model, x, batch_size=BATCH)
    for report in reports.values():
        assert_report_matches(report, oracles)
        assert [s.module for s in report.sites] == ["a", "b"]
    assert_reports_agree(reports["export"], reports["dispatch"])


@pytest.mark.parametrize("near_dead, tau", [(1e-3, 0.025), (0.05, 0.5), (1.0, 0.0)])
def test_thresholds_are_applied_as_given(near_dead: float, tau: float) -> None:
    model = zoo.LinearAct("nn.ReLU6").eval()
    x = zoo.detector_data(SAMPLES, 6)
    p = weights(model)
    pre = np_linear(to_numpy(x), p["fc.weight"], p["fc.bias"])
    oracle = reduce_site(pre, name="act", op="relu6", upper=6.0)
    reports = scan_both(model, x, batch_size=BATCH, near_dead=near_dead, dormant_tau=tau)
    for report in reports.values():
        assert_report_matches(report, [oracle], near_dead=near_dead, dormant_tau=tau)
        assert report.thresholds.near_dead == near_dead
        assert report.thresholds.dormant_tau == tau


def _shared_oracles(model: zoo.SharedActivation, x: torch.Tensor) -> list:
    p = weights(model)
    pre1 = np_linear(to_numpy(x), p["a.fc.weight"], p["a.fc.bias"])
    pre2 = np_linear(np.maximum(pre1, 0), p["b.fc.weight"], p["b.fc.bias"])
    return [reduce_site(pre1, op="relu"), reduce_site(pre2, op="relu")]


def test_shared_activation_instance_is_two_sites() -> None:
    """One nn.ReLU object registered as a.act and b.act: two calls, two sites, in order."""
    model = zoo.SharedActivation().eval()
    x = torch.randn(SAMPLES, 6, generator=torch.Generator().manual_seed(4))
    oracles = _shared_oracles(model, x)
    reports = scan_both(model, x, batch_size=BATCH)
    for report in reports.values():
        assert_report_matches(report, oracles)
        assert len({s.name for s in report.sites}) == 2
    assert_reports_agree(reports["export"], reports["dispatch"], names=False)


def test_shared_activation_instance_names_agree_across_methods() -> None:
    model = zoo.SharedActivation().eval()
    x = torch.randn(SAMPLES, 6, generator=torch.Generator().manual_seed(4))
    reports = scan_both(model, x, batch_size=BATCH)
    assert [s.name for s in reports["export"].sites] == [s.name for s in reports["dispatch"].sites]
