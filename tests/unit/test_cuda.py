"""The CUDA path: same report as on the CPU. Skipped cleanly where no GPU is present."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import reludoctor

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3), torch.nn.BatchNorm2d(8), torch.nn.ReLU(inplace=True),
        torch.nn.Flatten(), torch.nn.Linear(8 * 6 * 6, 16), torch.nn.ReLU(),
    ).eval()


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_cuda_matches_cpu(method: str) -> None:
    model = _model()
    data = np.random.default_rng(0).standard_normal((50, 3, 8, 8)).astype(np.float32)
    cpu = reludoctor.scan(model, data, device="cpu", method=method, batch_size=16)
    gpu = reludoctor.scan(model, data, device="cuda", method=method, batch_size=16)
    assert gpu.device.startswith("cuda")
    assert next(model.parameters()).device.type == "cpu"  # the model is moved back
    for a, b in zip(cpu.sites, gpu.sites):
        assert a.name == b.name
        assert a.dead_units == b.dead_units
        np.testing.assert_allclose(a.activation_rate, b.activation_rate, atol=1e-6)
        np.testing.assert_allclose(a.max_preactivation, b.max_preactivation, rtol=1e-4, atol=1e-5)
