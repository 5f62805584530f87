"""fix of a module torch.export cannot capture: one clear refusal, not torch's graph dump."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reludoctor.errors import ReludoctorError
from reludoctor.fix import fix


class DataDependent(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fc(x))
        if h.sum() > 0:  # data-dependent control flow: torch.export cannot capture it
            return h * 2
        return h


def test_fix_of_an_uncapturable_module_is_refused_without_a_graph_dump(capfd):
    data = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)
    with pytest.raises(ReludoctorError):
        fix(DataDependent().eval(), data, strategy="leaky", alpha=0.1, dry_run=True)
    out, err = capfd.readouterr()
    assert "graph():" not in out + err and "class GraphModule" not in out + err
    assert len((out + err).splitlines()) <= 2, out + err
