"""The textbook dying ReLU: a dead unit held down by an extreme negative bias (or BatchNorm beta)
while its weighted input alone reaches what its alive neighbours' does, is `negative-bias`; a unit
dead because its input really is weak stays `weak-input` and gets no `negative-bias`.

The expectations come from the planted values and a plain torch forward pass (the weighted input
``scale * (w . x)`` of each unit, its max over the data), never from the report's own numbers.
Both orders of magnitude: -50 on a Linear bias, -1e4 on a BatchNorm beta in a torchvision ResNet.
"""

from __future__ import annotations

import io
import warnings
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn
from planted import he_init_, normal_data

import reludoctor
from reludoctor.core import rules
from reludoctor.core.evidence import ProducerEvidence
from reludoctor.report.model import CalibrationInfo, Histogram, SiteStats

EXTREME_BIAS = -50.0
EXTREME_UNIT = 5  # fc1.bias[5] = -50
WEAK_UNIT = 9  # fc1.weight[9] scaled by WEAK_FACTOR, fc1.bias[9] = WEAK_BIAS
WEAK_FACTOR = 0.03  # a weak input, yet 3x above the collapsed-weights threshold (1%)
WEAK_BIAS = -0.5  # slightly negative
BETA = -1e4
RESNET_PLANTS = {"bn1": ("relu", 7), "layer2.0.bn1": ("layer2.0.relu#1", 3)}  # bn -> (site, channel)


def quiet(_message: str) -> None:
    pass


class Mlp(nn.Module):
    """Linear(16 -> 32) -> ReLU -> Linear(32 -> 4), He init, zero biases."""

    def __init__(self, extreme: bool = True, weak: bool = True, seed: int = 11):
        super().__init__()
        self.fc1 = nn.Linear(16, 32)
        self.act = nn.ReLU()
        self.fc2 = nn.Linear(32, 4)
        he_init_(self, seed)
        with torch.no_grad():
            if extreme:
                self.fc1.bias[EXTREME_UNIT] = EXTREME_BIAS
            if weak:
                self.fc1.weight[WEAK_UNIT] *= WEAK_FACTOR
                self.fc1.bias[WEAK_UNIT] = WEAK_BIAS

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


def mlp_data() -> torch.Tensor:
    return normal_data((16,), seed=3)


def mlp_truth(model: Mlp, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Plain forward pass: each unit's pre-activation peak and its weighted input's peak."""
    with torch.no_grad():
        weighted = (x.double() @ model.fc1.weight.double().T)
        pre = weighted + model.fc1.bias.double()
    return {"peak": pre.max(0).values.numpy(), "reach": weighted.max(0).values.numpy(),
            "bias": model.fc1.bias.detach().double().numpy(),
            "norm": model.fc1.weight.detach().double().norm(dim=1).numpy()}


@lru_cache(maxsize=None)
def mlp_scan(extreme: bool, weak: bool):  # noqa: ANN201
    torch.set_num_threads(1)
    model = Mlp(extreme, weak).eval()
    x = mlp_data()
    return model, x, reludoctor.scan(model, x, on_warning=quiet)


def onnx_scan(extreme: bool, weak: bool, folder: Path):  # noqa: ANN201
    """The same model exported to ONNX (dynamic batch) and scanned from files."""
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    model = Mlp(extreme, weak).eval()
    x = mlp_data()
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (x[:2],), buffer, dynamo=False, opset_version=17, input_names=["x"],
                          dynamic_axes={"x": {0: "n"}})
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    (folder / "mlp.onnx").write_bytes(buffer.getvalue())
    np.save(folder / "x.npy", x.numpy())
    return model, x, reludoctor.scan(folder / "mlp.onnx", folder / "x.npy", on_warning=quiet)


def findings(report, rule: str, site: str | None = None) -> list:  # noqa: ANN001
    return [f for f in report.findings if f.rule == rule and (site is None or f.site == site)]


def causes(report, site: str) -> dict[str, int]:  # noqa: ANN001
    (dead,) = findings(report, "dead-units", site)
    return dead.evidence["causes"]


# --- the premises, from the planted values alone ----------------------------------------------------


def test_mlp_premises_hold_in_a_plain_forward_pass():
    model = Mlp().eval()
    truth = mlp_truth(model, mlp_data())
    alive = truth["peak"] > 0
    typical = float(np.median(truth["reach"][alive]))
    # -50 unit: dead, although its weighted input alone reaches what its neighbours' does
    assert truth["peak"][EXTREME_UNIT] <= 0 and truth["bias"][EXTREME_UNIT] == EXTREME_BIAS
    assert truth["reach"][EXTREME_UNIT] > 0.5 * typical
    # weak unit: dead with a slightly negative bias, its input a few % of its neighbours'
    assert truth["peak"][WEAK_UNIT] <= 0 and truth["bias"][WEAK_UNIT] == WEAK_BIAS
    assert 0 < truth["reach"][WEAK_UNIT] < 0.1 * typical
    # ... and not collapsed: its weight norm is above 1% of the alive units' median
    assert truth["norm"][WEAK_UNIT] > rules.COLLAPSED * float(np.median(truth["norm"][alive]))
    assert set(np.flatnonzero(~alive)) == {EXTREME_UNIT, WEAK_UNIT}


# --- -50 on a Linear bias -----------------------------------------------------------------------------


@pytest.mark.parametrize("onnx", [False, True], ids=["module", "onnx"])
def test_extreme_linear_bias_is_negative_bias(onnx, tmp_path):
    model, x, report = onnx_scan(True, False, tmp_path) if onnx else mlp_scan(True, False)
    truth = mlp_truth(model, x)
    site = report.sites[0]
    assert site.dead_units == (EXTREME_UNIT,)
    assert causes(report, site.name) == {"negative-bias": 1}
    (f,) = findings(report, "negative-bias", site.name)
    assert f.evidence["units"] == [EXTREME_UNIT]
    assert f.evidence["effective_bias"] == [pytest.approx(EXTREME_BIAS)]
    assert f.evidence["input_reach"] == [pytest.approx(truth["reach"][EXTREME_UNIT], rel=1e-4, abs=1e-4)]
    assert "bias" in f.message and "BatchNorm" not in f.message
    if not onnx:
        assert f.evidence["parameter"] == "fc1.bias"
        assert "fc1.bias" in f.suggestion and "kaiming_normal_(fc1.weight" in f.suggestion
    assert not findings(report, "input-never-positive", site.name)


# --- a really weak input -------------------------------------------------------------------------------


def test_weak_input_stays_weak_input_without_negative_bias():
    model, x, report = mlp_scan(False, True)
    site = report.sites[0]
    assert site.dead_units == (WEAK_UNIT,)
    assert causes(report, site.name) == {"weak-input": 1}
    assert not findings(report, "negative-bias")
    assert not findings(report, "collapsed-weights") and not findings(report, "input-never-positive")


def test_extreme_bias_and_weak_input_in_one_layer_are_told_apart():
    model, x, report = mlp_scan(True, True)
    site = report.sites[0]
    assert site.dead_units == tuple(sorted((EXTREME_UNIT, WEAK_UNIT)))
    assert causes(report, site.name) == {"negative-bias": 1, "weak-input": 1}
    (f,) = findings(report, "negative-bias", site.name)
    assert f.evidence["units"] == [EXTREME_UNIT]


# --- -1e4 on a BatchNorm beta in a torchvision ResNet ----------------------------------------------------


def resnet():  # noqa: ANN201
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    with torch.no_grad():
        for bn, (_, channel) in RESNET_PLANTS.items():
            model.get_submodule(bn).bias[channel] = BETA
    return model


def resnet_truth(model: nn.Module, x: torch.Tensor) -> dict[str, dict[str, np.ndarray]]:
    """Per planted BatchNorm: its output's per-channel peak (the ReLU's pre-activation) and the
    peak of ``scale * conv(x)`` (BatchNorm's affine scale, its shift left out)."""
    seen: dict[str, dict[str, np.ndarray]] = {}
    handles = []
    for name in RESNET_PLANTS:
        bn = model.get_submodule(name)

        def hook(module, inputs, output, name=name):  # noqa: ANN001, ANN202
            scale = module.weight.double() / torch.sqrt(module.running_var.double() + module.eps)
            weighted = inputs[0].double() * scale[None, :, None, None]
            seen[name] = {"peak": output.double().amax((0, 2, 3)).numpy(),
                          "reach": weighted.amax((0, 2, 3)).numpy()}
        handles.append(bn.register_forward_hook(hook))
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return seen


@lru_cache(maxsize=None)
def resnet_scan(method: str):  # noqa: ANN201
    torch.set_num_threads(1)
    model = resnet()
    x = normal_data((3, 64, 64), samples=8, seed=5)
    return model, x, reludoctor.scan(model, x, method=method, on_warning=quiet)


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_extreme_batchnorm_beta_in_resnet18_is_negative_bias(method):
    model, x, report = resnet_scan(method)
    truth = resnet_truth(model, x)
    for bn, (site_name, channel) in RESNET_PLANTS.items():
        seen = truth[bn]
        alive = seen["peak"] > 0
        # premises: dead only through the beta; the conv alone fires like its alive neighbours
        assert seen["peak"][channel] <= 0 < seen["reach"][channel]
        assert seen["reach"][channel] > 0.25 * float(np.median(seen["reach"][alive]))
        site = report.site(site_name)
        assert set(site.dead_units) == set(np.flatnonzero(~alive))  # the scan agrees on the dead set
        (f,) = findings(report, "negative-bias", site_name)
        assert f.evidence["units"] == [channel]  # the other dead channels have beta 0
        assert f.evidence["parameter"] == f"{bn}.bias" and "BatchNorm beta" in f.message
        assert f.evidence["effective_bias"] == [pytest.approx(BETA, rel=1e-6)]
        # float32 at 1e4 keeps ~3 decimals
        assert f.evidence["input_reach"] == [pytest.approx(seen["reach"][channel], abs=5e-3)]
        assert causes(report, site_name).get("negative-bias") == 1
        assert causes(report, site_name).get("weak-input") is None
    assert causes(report, "relu") == {"negative-bias": 1}


# --- the criteria as units (statistics and evidence built in code) -------------------------------------


def stats(peak: list[float], dead: tuple[int, ...], rates: list[float] | None = None) -> SiteStats:
    units = len(peak)
    rates = rates if rates is not None else [0.0 if u in dead else 0.5 for u in range(units)]
    return SiteStats(
        name="s", op="relu", module="s", unit_axis=1, units=units, shape=(units,), lower_bound=0.0,
        upper_bound=None, samples=500, positions=500, dead_units=dead, dead_ratio=len(dead) / units,
        activation_rate=tuple(rates), max_preactivation=tuple(peak), near_dead_units=(),
        dormant_units=dead, dormant_score=tuple(0.0 if u in dead else 1.0 for u in range(units)),
        saturated_units=None, min_preactivation=None, histogram=Histogram((0.0,), (0, 0)))


def evidence(shift: list[float], norms: list[float] | None = None, gamma: list[float] | None = None
             ) -> ProducerEvidence:
    units = len(shift)
    shift_ = np.asarray(shift, dtype=np.float64)
    norms_ = np.asarray(norms if norms is not None else [1.0] * units, dtype=np.float64)
    bn = gamma is not None
    gamma_ = np.asarray(gamma, dtype=np.float64) if bn else None
    return ProducerEvidence(
        site="s", layer="fc", kind="linear", weight="fc.weight", fan_in=16, weight_norm=norms_,
        bias=None if bn else shift_.copy(), norm_layer="bn" if bn else None, gamma=gamma_,
        beta=shift_.copy() if bn else None, running_mean=np.zeros(units) if bn else None,
        running_var=np.ones(units) if bn else None, scale=gamma_ if bn else np.ones(units),
        shift=shift_)


ALIVE_SHIFT = [0.1, -0.1, 0.05, -0.05, 0.0, 0.02, -0.02]


@pytest.mark.parametrize("bias", [-50.0, -1e4, -1e6])
def test_an_extreme_shift_does_not_make_a_normal_input_look_negligible(bias):
    reach = 3.0  # the alive units' weighted inputs reach about 3 too
    shift = [bias] + ALIVE_SHIFT
    peak = [bias + reach] + [3.0 + s for s in ALIVE_SHIFT]
    assert rules.dead_causes(stats(peak, (0,)), evidence(shift)) == {0: "negative-bias"}
    assert rules.dead_causes(stats(peak, (0,)), evidence(shift, gamma=[1.0] * 8)) == {0: "negative-bias"}


def test_a_weak_signal_is_weak_input_even_below_an_outlying_bias():
    shift = [-0.5] + ALIVE_SHIFT  # an outlier of the layer's shifts (all near 0)
    peak = [-0.5 + 0.06] + [3.0 + s for s in ALIVE_SHIFT]  # reach 0.06: 2% of its neighbours'
    by_norm = evidence(shift, norms=[0.03] + [1.0] * 7)
    by_gamma = evidence(shift, gamma=[0.03] + [1.0] * 7)  # BatchNorm gamma scaled down
    for ev in (by_norm, by_gamma):
        assert rules.dead_causes(stats(peak, (0,)), ev) == {0: "weak-input"}
        s = stats(peak, (0,))
        assert not list(rules.negative_bias(s, rules.Context((s,), CalibrationInfo("x", 500, False, 8),
                                                             {"s": ev})))


def test_a_weighted_input_that_barely_stays_negative_is_not_weak():
    """Normal weights pointing away from the data: a peak just below 0 says nothing of its size."""
    shift = [0.0] * 8
    peak = [-0.01] + [3.0] * 7
    assert rules.dead_causes(stats(peak, (0,)), evidence(shift)) == {0: "input-never-positive"}


def test_negative_bias_needs_an_input_that_reaches_like_its_neighbours():
    shift = [-50.0] + ALIVE_SHIFT
    marginal = [-50.0 + 0.06] + [3.0 + s for s in ALIVE_SHIFT]  # fires alone, but only 2% as far
    assert rules.dead_causes(stats(marginal, (0,)), evidence(shift)) != {0: "negative-bias"}


def test_negative_bias_needs_the_unit_to_fire_with_a_typical_shift():
    """Every bias of the layer is negative: the outlier's input would not fire with theirs either."""
    alive_shift = [-5.0, -5.2, -4.8, -5.1, -4.9, -5.05, -4.95]
    shift = [-20.0] + alive_shift
    peak = [-20.0 + 3.0] + [8.0 + s for s in alive_shift]  # alive reach about 8, this one 3
    assert rules.dead_causes(stats(peak, (0,)), evidence(shift)) == {0: "unexplained"}
    peak_far = [-20.0 + 6.0] + peak[1:]  # reaching 6 > 5, the typical shift would let it fire
    assert rules.dead_causes(stats(peak_far, (0,)), evidence(shift)) == {0: "negative-bias"}


def test_a_bias_within_the_layer_spread_is_not_an_outlier():
    spread = [-2.0, 2.0, -1.5, 1.5, -1.0, 1.0, 1.8, -1.8]
    peak = [-0.5] + [3.0 + s for s in spread[1:]]  # reach 1.5: fires alone, like a neighbour
    assert rules.dead_causes(stats(peak, (0,)), evidence(spread)) == {0: "unexplained"}
