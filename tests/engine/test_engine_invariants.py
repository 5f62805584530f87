"""What a scan must never do (change the model, its data or global torch state), how it falls
back when torch.export cannot capture a model, and that it is deterministic."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

import reludoctor
from reludoctor.engine import ReludoctorWarning
from reludoctor.errors import DataError, UsageError
from tests import models as zoo
from tests.engine.oracle import (
    assert_report_matches,
    assert_reports_agree,
    assert_same_snapshot,
    np_linear,
    oracle_small_convnet,
    reduce_site,
    snapshot,
    to_numpy,
    weights,
)

BATCH = 8


def _global_state() -> tuple:
    from torch.nn.modules import module as nn_module

    return (
        len(nn_module._global_forward_hooks),
        len(nn_module._global_forward_pre_hooks),
        len(nn_module._global_backward_hooks),
        torch._C._len_torch_dispatch_stack(),
        torch.is_grad_enabled(),
        torch.is_inference_mode_enabled(),
    )


def _training_model() -> zoo.SmallConvNet:
    """Train mode (BatchNorm would update its running stats, Dropout would drop), with one
    submodule in eval mode and one frozen parameter: every flag must come back as it was."""
    model = zoo.SmallConvNet(dropout=0.5, seed=31)
    model.train()
    model.fc2.eval()
    model.conv1.bias.requires_grad_(False)
    return model


@pytest.mark.parametrize("method", ["auto", "export", "dispatch"])
def test_scan_never_changes_the_model(method: str) -> None:
    model = _training_model()
    x = zoo.images(21, 5)
    pristine = copy.deepcopy(model)
    before = snapshot(model)
    state = _global_state()

    report = reludoctor.scan(model, x, method=method, batch_size=BATCH)

    assert_same_snapshot(before, snapshot(model))
    assert _global_state() == state
    assert model.training and not model.fc2.training and model.bn1.training
    assert model.bn1.num_batches_tracked.item() == 0  # never ran in train mode
    # the scan ran in eval mode: BatchNorm with running stats, Dropout off
    assert_report_matches(report, oracle_small_convnet(pristine.eval(), x))
    # outputs are identical before/after, in eval and in train mode (same dropout seed)
    with torch.no_grad():
        assert torch.equal(copy.deepcopy(model).eval()(x), pristine.eval()(x))
        pristine.train()
        pristine.fc2.eval()
        torch.manual_seed(5)
        expected = copy.deepcopy(pristine)(x)
        torch.manual_seed(5)
        assert torch.equal(copy.deepcopy(model)(x), expected)


class _FailsOnHugeInput(torch.nn.Module):
    """Raises inside forward (after an activation ran) when a sample is huge."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(4, 5)
        self.act = torch.nn.ReLU(inplace=True)
        self.bn = torch.nn.BatchNorm1d(5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.bn(self.act(self.fc(x)))
        if x.abs().max() > 100:
            raise ValueError("input out of range")
        return h


@pytest.mark.parametrize("method", ["auto", "dispatch"])
def test_a_failing_forward_still_undoes_everything(method: str) -> None:
    model = _FailsOnHugeInput()
    model.train()
    x = torch.randn(20, 4, generator=torch.Generator().manual_seed(0))
    x[13, 2] = 1000.0  # second batch
    before = snapshot(model)
    state = _global_state()
    with pytest.warns(ReludoctorWarning) if method == "auto" else _no_warning():
        with pytest.raises(DataError, match="samples 8-15"):
            reludoctor.scan(model, x, method=method, batch_size=BATCH)
    assert_same_snapshot(before, snapshot(model))
    assert _global_state() == state


class _no_warning:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_data_is_never_written(method: str) -> None:
    """InputInplace rectifies its own input in place; the caller's array/tensor stay intact,
    and the first site sees the raw input (negative values included)."""
    model = zoo.InputInplace().eval()
    array = np.random.default_rng(0).standard_normal((19, 4)).astype(np.float32)
    tensor = torch.from_numpy(array.copy())
    array_copy, tensor_copy = array.copy(), tensor.clone()
    p = weights(model)
    pre1 = array.astype(np.float64)
    pre2 = np_linear(np.maximum(pre1, 0), p["fc.weight"], p["fc.bias"])
    oracles = [reduce_site(pre1, name="relu()", op="relu"), reduce_site(pre2, name="act", op="relu")]
    for data in (array, tensor):
        report = reludoctor.scan(model, data, method=method, batch_size=BATCH)
        assert_report_matches(report, oracles)
    np.testing.assert_array_equal(array, array_copy)
    assert torch.equal(tensor, tensor_copy)


def test_memory_mapped_file_is_never_written(method: str, tmp_path) -> None:
    model = zoo.InputInplace().eval()
    array = np.random.default_rng(1).standard_normal((19, 4)).astype(np.float32)
    path = tmp_path / "calib.npy"
    np.save(path, array)
    raw = path.read_bytes()
    reludoctor.scan(model, str(path), method=method, batch_size=BATCH)
    assert path.read_bytes() == raw


# ---------------------------------------------------------------------------------------------
# data-dependent control flow
# ---------------------------------------------------------------------------------------------
def _branching_data() -> torch.Tensor:
    """Three batches of 8: means clearly positive, negative, positive."""
    x = torch.randn(24, 4, generator=torch.Generator().manual_seed(2)) * 0.5
    x[:8] += 2.0
    x[8:16] -= 2.0
    x[16:] += 2.0
    return x


def _branching_oracle(model: zoo.DataDependent, x: torch.Tensor) -> list:
    p = weights(model)
    xn = to_numpy(x)
    a_batches, b_batches = [], []
    for start in range(0, len(xn), BATCH):
        batch = xn[start:start + BATCH]
        assert abs(batch.mean()) > 1.0  # the branch is unambiguous in float32
        if batch.mean() > 0:
            a_batches.append(np_linear(batch, p["fc_a.weight"], p["fc_a.bias"]))
        else:
            b_batches.append(np_linear(batch, p["fc_b.weight"], p["fc_b.bias"]))
    return [reduce_site(np.concatenate(a_batches), name="act_a", op="relu"),
            reduce_site(np.concatenate(b_batches), name="act_b", op="relu")]


def test_data_dependent_control_flow_falls_back_to_dispatch() -> None:
    model = zoo.DataDependent().eval()
    x = _branching_data()
    oracles = _branching_oracle(model, x)
    with pytest.warns(ReludoctorWarning, match="torch.export could not capture"):
        report = reludoctor.scan(model, x, batch_size=BATCH)  # method="auto"
    assert report.model.method == "dispatch"
    assert any("torch.export could not capture" in w for w in report.warnings)
    assert_report_matches(report, oracles)
    assert [s.samples for s in report.sites] == [16, 8]
    assert report.calibration.samples == 24

    explicit = reludoctor.scan(model, x, method="dispatch", batch_size=BATCH)
    assert explicit.warnings == ()
    assert_reports_agree(report, explicit)

    with pytest.raises(UsageError, match="torch.export could not capture"):
        reludoctor.scan(model, x, method="export", batch_size=BATCH)


def test_functional_relus_in_two_branches_are_two_sites() -> None:
    model = zoo.BranchingFunctional().eval()
    x = _branching_data()
    p = weights(model)
    xn = to_numpy(x)
    a = [np_linear(xn[i:i + BATCH], p["fc_a.weight"], p["fc_a.bias"]) for i in (0, 16)]
    b = np_linear(xn[8:16], p["fc_b.weight"], p["fc_b.bias"])
    report = reludoctor.scan(model, x, method="dispatch", batch_size=BATCH)
    assert_report_matches(report, [reduce_site(np.concatenate(a), op="relu"), reduce_site(b, op="relu")])
    assert len({s.name for s in report.sites}) == 2


def test_fallback_warning_goes_to_on_warning() -> None:
    model = zoo.DataDependent().eval()
    messages: list[str] = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", ReludoctorWarning)  # nothing may reach warnings.warn
        report = reludoctor.scan(model, _branching_data(), batch_size=BATCH, on_warning=messages.append)
    assert len(messages) == 1 and "TorchDispatchMode" in messages[0]
    assert report.warnings == tuple(messages)


# ---------------------------------------------------------------------------------------------
# determinism
# ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["auto", "export", "dispatch"])
def test_two_scans_give_identical_reports(method: str) -> None:
    model = zoo.SmallConvNet(seed=41).eval()
    x = zoo.images(19, 6, seed=3)
    first = reludoctor.scan(model, x, method=method, batch_size=BATCH)
    second = reludoctor.scan(model, x.clone(), method=method, batch_size=BATCH)
    assert first.to_dict() == second.to_dict()
    assert first.to_json() == second.to_json()


def test_methods_give_identical_reports() -> None:
    """export and dispatch run the same kernels on the same batches: identical reports."""
    model = zoo.SmallConvNet(seed=41).eval()
    x = zoo.images(19, 6, seed=3)
    reports = [reludoctor.scan(model, x, method=m, batch_size=BATCH).to_dict() for m in ("export", "dispatch")]
    assert [r["model"].pop("method") for r in reports] == ["export", "dispatch"]
    assert reports[0] == reports[1]


def test_report_json_round_trips() -> None:
    import json

    model = zoo.LinearAct("nn.ReLU6").eval()
    report = reludoctor.scan(model, zoo.detector_data(37, 6), batch_size=BATCH)
    data = json.loads(report.to_json())
    assert data == json.loads(json.dumps(report.to_dict()))
    site = data["sites"][0]
    assert site["dead_units"] == list(report.sites[0].dead_units)
    assert site["activation_rate"] == list(report.sites[0].activation_rate)
