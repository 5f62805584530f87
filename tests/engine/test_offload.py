"""Models placed by accelerate's big-model inference (``device_map`` / CPU and disk offload):
scanned where they are, with dispatch, statistics equal to the same model held in memory and to
a hand-computed oracle; the placement is left as it was."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import torch.nn as nn

import reludoctor
from reludoctor.errors import UsageError

accelerate = pytest.importorskip("accelerate")


def _model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 48), nn.ReLU(), nn.Linear(48, 32), nn.ReLU(), nn.Linear(32, 3))
    with torch.no_grad():
        model[0].bias[:10] -= 5.0  # a few units that never fire
    return model.eval()


def _oracle(model: nn.Module, x: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """(max pre-activation, positive count) per unit of both ReLUs: plain float64 numpy."""
    w = [(layer.weight.detach().double().numpy(), layer.bias.detach().double().numpy())
         for layer in (model[0], model[2])]
    pre1 = x.astype(np.float64) @ w[0][0].T + w[0][1]
    pre2 = np.maximum(pre1, 0) @ w[1][0].T + w[1][1]
    return [(pre.max(0), (pre > 0).sum(0)) for pre in (pre1, pre2)]


@pytest.mark.parametrize("placement", ["disk", "cpu"])
def test_an_offloaded_model_scans_like_the_same_model_in_memory(tmp_path, placement):
    model = _model()
    x = np.random.default_rng(0).standard_normal((64, 12)).astype(np.float32)
    in_memory = reludoctor.scan(copy.deepcopy(model), x, batch_size=16)
    placed = copy.deepcopy(model)
    if placement == "disk":  # every weight on the meta device until its layer runs
        accelerate.disk_offload(placed, str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    else:
        accelerate.cpu_offload(placed, execution_device=torch.device("cpu"))
    before = {name: p.device.type for name, p in placed.named_parameters()}
    assert "meta" in before.values()  # really offloaded: weights come in per forward

    report = reludoctor.scan(placed, x, batch_size=16)  # method auto: dispatch, no export attempt

    assert report.model.method == "dispatch"
    assert {name: p.device.type for name, p in placed.named_parameters()} == before  # not moved
    for site, reference, (oracle_max, oracle_positive) in zip(report.sites, in_memory.sites, _oracle(model, x)):
        assert site.name == reference.name and site.dead_units == reference.dead_units
        assert site.accumulators.positive_count == reference.accumulators.positive_count
        np.testing.assert_array_equal(site.accumulators.positive_count, oracle_positive)
        np.testing.assert_allclose(site.max_preactivation, oracle_max, rtol=1e-5, atol=1e-5)
        assert list(site.dead_units) == np.flatnonzero(oracle_max <= 0).tolist()
    assert report.sites[0].dead_units  # the designed dead units are found


def test_export_is_refused_for_an_offloaded_model(tmp_path):
    placed = _model()
    accelerate.disk_offload(placed, str(tmp_path / "offload"), execution_device=torch.device("cpu"))
    with pytest.raises(UsageError, match="accelerate"):
        reludoctor.scan(placed, np.zeros((4, 12), np.float32), method="export")
