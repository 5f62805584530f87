"""Real architectures from torchvision (random init, a few 3x64x64 samples).

Expected site counts are computed independently twice: by counting ReLU-family ATen calls of
one eager forward with a TorchDispatchMode of our own, and from the module structure. Per-unit
statistics are compared with forward pre-hooks on the activation modules of a deep copy
(tests/engine/oracle.HookOracle). Some channels are made dead (BatchNorm bias -100) or
saturated (+100) on purpose so the dead sets are not only those of the random init.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import reludoctor
from tests.engine.oracle import HookOracle, assert_reports_agree, assert_site_matches, count_activation_calls

tvm = pytest.importorskip("torchvision.models")

pytestmark = pytest.mark.slow

SAMPLES = 5
BATCH = 2  # 2 + 2 + 1


def _resnet18() -> tuple[nn.Module, int, dict, dict]:
    model = tvm.resnet18(weights=None)
    with torch.no_grad():
        model.bn1.bias[:3] = -100.0
        model.layer2[0].bn2.bias[5] = -100.0  # pre-activation of layer2.0.relu#2 (+ downsample)
    blocks = [m for m in model.modules() if isinstance(m, tvm.resnet.BasicBlock)]
    structural = 1 + 2 * len(blocks)  # the stem, then each block calls its ReLU twice
    assert structural == 17
    return model, structural, {}, {"relu": {0, 1, 2}, "layer2.0.relu#2": {5}}


def _mobilenet_v2() -> tuple[nn.Module, int, dict, dict]:
    model = tvm.mobilenet_v2(weights=None)
    with torch.no_grad():
        model.features[0][1].bias[:2] = -100.0
        model.features[0][1].bias[2:4] = 100.0  # saturated ReLU6 channels
    structural = sum(isinstance(m, nn.ReLU6) for m in model.modules())  # each called once
    assert structural == 35
    return model, structural, {}, {"features.0.2": {0, 1}}


def _densenet121() -> tuple[nn.Module, int, dict, dict]:
    model = tvm.densenet121(weights=None)
    with torch.no_grad():
        model.features.norm0.bias[:2] = -100.0
        model.features.norm5.bias[:3] = -100.0  # pre-activation of the functional F.relu
    # every nn.ReLU once, plus F.relu(features) in DenseNet.forward
    structural = sum(isinstance(m, nn.ReLU) for m in model.modules()) + 1
    assert structural == 121
    extra = {"relu()": ("features", "relu", 0.0, None)}
    return model, structural, extra, {"features.relu0": {0, 1}, "relu()": {0, 1, 2}}


@pytest.mark.parametrize("build", [_resnet18, _mobilenet_v2, _densenet121],
                         ids=["resnet18", "mobilenet_v2", "densenet121"])
def test_torchvision_model(build) -> None:
    model, structural, extra, injected = build()
    model.eval()
    x = torch.randn(SAMPLES, 3, 64, 64, generator=torch.Generator().manual_seed(0))

    assert count_activation_calls(model, x[:1]) == structural
    oracle = HookOracle(model, extra=extra).run(x, BATCH)
    assert len(oracle) == structural

    reports = {m: reludoctor.scan(model, x, method=m, batch_size=BATCH) for m in ("export", "dispatch")}
    for method, report in reports.items():
        assert report.summary.sites == len(report.sites) == structural, method
        assert [s.name for s in report.sites] == [o.name for o in oracle], method
        ambiguous = 0
        for site, expected in zip(report.sites, oracle):
            ambiguous += assert_site_matches(site, expected, max_ambiguous=None, rtol=1e-4, atol=1e-6)
        assert ambiguous <= 0.01 * report.summary.units, f"{method}: {ambiguous} ambiguous units"
        assert report.summary.dead_units == sum(len(s.dead_units) for s in report.sites)
        for name, units in injected.items():
            assert units <= set(report.site(name).dead_units), (method, name)
    if "features.0.2" in injected:  # mobilenet: the +100 channels saturate ReLU6
        assert {2, 3} <= set(reports["export"].site("features.0.2").saturated_units)
    assert_reports_agree(reports["export"], reports["dispatch"], exact=False)
