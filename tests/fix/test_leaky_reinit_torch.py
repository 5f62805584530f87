"""--leaky against an independent F.leaky_relu computation; --reinit (ReDo) on outputs and
weights (Kaiming std sqrt(2 / fan_in), zero outgoing columns, BatchNorm reset)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from fix_models import PlantedCNN, PlantedMLP, WithReLU6, images, vectors


def _run(strategy, model, x, out, **kwargs):
    from reludoctor.fix import fix

    return fix(model, x, out, strategy=strategy, **kwargs)


def _site(summary, name):
    return next(s for s in summary.sites if s.site == name)


def test_leaky_matches_functional_leaky_relu(tmp_path):
    model = PlantedCNN()
    x = images(samples=20)
    out = tmp_path / "leaky.pt2"
    summary = _run("leaky", model, x, out, alpha=0.05)
    assert [s.action for s in summary.sites] == ["leaky", "leaky"]
    fixed = torch.export.load(str(out)).module()
    t = torch.from_numpy(x)
    with torch.no_grad():  # the oracle: the same layers with F.leaky_relu written out
        h = F.leaky_relu(model.bn1(model.conv1(t)), 0.05)
        h = F.leaky_relu(model.conv2(h), 0.05)
        expected = model.fc(torch.flatten(model.pool(h), 1))
        got = fixed(t)
        original = model(t)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    v = summary.verification
    assert not v.lossless_expected
    assert v.max_abs_diff == pytest.approx(float((expected - original).abs().max()), rel=1e-4)
    assert any("not lossless" in note for note in summary.notes)
    assert summary.params_before == summary.params_after


def test_leaky_sites_glob_and_bounded_skip(tmp_path):
    model = WithReLU6()
    x = vectors(features=6)
    summary = _run("leaky", model, x, tmp_path / "a.pt2", alpha=0.1)
    assert _site(summary, "act").action == "leaky"
    relu6 = _site(summary, "act6")
    assert relu6.action == "skipped" and "bounded" in relu6.reason

    model = PlantedMLP()
    x = vectors()
    out = tmp_path / "b.pt2"
    summary = _run("leaky", model, x, out, alpha=0.2, sites=["layers.3"])
    assert [(s.site, s.action) for s in summary.sites] == [("layers.3", "leaky")]
    fixed = torch.export.load(str(out)).module()
    t = torch.from_numpy(x)
    layers = model.layers
    with torch.no_grad():
        expected = layers[4](F.leaky_relu(layers[2](F.relu(layers[0](t))), 0.2))
        torch.testing.assert_close(fixed(t), expected, rtol=1e-5, atol=1e-6)


def test_reinit_keeps_outputs_and_reinitialises_weights(tmp_path):
    model = PlantedCNN()
    x = images(samples=24)
    out = tmp_path / "reinit.pt2"
    summary = _run("reinit", model, x, out, seed=3)
    site = _site(summary, "act1")
    assert site.action == "reinit" and set(site.targets) >= {1, 5}
    program = torch.export.load(str(out))
    state = program.state_dict
    t = torch.from_numpy(x)
    with torch.no_grad():
        np.testing.assert_allclose(program.module()(t).numpy(), model(t).numpy(), rtol=1e-5, atol=1e-6)
    units = list(site.targets)
    # incoming: Kaiming normal, std sqrt(2 / fan_in), fan_in = 3 * 3 * 3; bias 0; BN fresh
    incoming = state["conv1.weight"][units]
    assert incoming.abs().sum() > 0
    assert not torch.equal(incoming, model.conv1.weight.detach()[units])
    assert torch.all(state["conv1.bias"][units] == 0)
    assert torch.all(state["bn1.weight"][units] == 1) and torch.all(state["bn1.bias"][units] == 0)
    assert torch.all(state["bn1.running_mean"][units] == 0)
    assert torch.all(state["bn1.running_var"][units] == 1)
    # outgoing: conv2's input columns for those units are zero, the others untouched (rows of
    # conv2's own re-initialised units are fresh Kaiming rows: ReDo resets all their inputs)
    second = _site(summary, "relu()")
    assert second.action == "reinit" and 2 in second.targets
    kept_rows = [r for r in range(6) if r not in second.targets]
    assert torch.all(state["conv2.weight"][kept_rows][:, units] == 0)
    others = [u for u in range(8) if u not in units]
    torch.testing.assert_close(state["conv2.weight"][kept_rows][:, others],
                               model.conv2.weight.detach()[kept_rows][:, others])
    # the second site's outgoing weights run through pooling + flatten into fc: 4 columns per unit
    for unit in second.targets:
        assert torch.all(state["fc.weight"][:, unit * 4:(unit + 1) * 4] == 0)
    assert summary.params_before == summary.params_after
    assert any("optimizer state" in note for note in summary.notes)
    assert summary.verification.equal and summary.verification.lossless_expected


def test_reinit_kaiming_std(tmp_path):
    """Many re-initialised units: the sample std of their incoming weights is sqrt(2/fan_in)."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(50, 200), torch.nn.ReLU(), torch.nn.Linear(200, 3)).eval()
    with torch.no_grad():
        model[0].bias[:150] = -100.0
    x = vectors(samples=32, features=50)
    out = tmp_path / "k.pt2"
    summary = _run("reinit", model, x, out)
    site = summary.sites[0]
    assert set(range(150)) <= set(site.targets)
    state = torch.export.load(str(out)).state_dict
    incoming = state["0.weight"].detach()[list(range(150))]
    assert float(incoming.std()) == pytest.approx(math.sqrt(2 / 50), rel=0.05)
    assert abs(float(incoming.mean())) < 0.01
    assert torch.all(state["2.weight"][:, list(range(150))] == 0)


def test_reinit_state_dict_output_for_arch(tmp_path, files):
    out = tmp_path / "reinit_state.pt"
    summary = _run("reinit", str(files.mlp_state), str(files.x_npy), out,
                   arch="fix_models:PlantedMLP")
    assert summary.output.format == "state-dict"
    state = torch.load(out, weights_only=True)
    fresh = PlantedMLP()
    fresh.load_state_dict(state)  # the --arch factory still fits
    x = np.load(files.x_npy)
    t = torch.from_numpy(x)
    with torch.no_grad():
        np.testing.assert_allclose(fresh(t).numpy(), PlantedMLP()(t).numpy(), rtol=1e-5, atol=1e-6)
    rows = [r for r in range(12) if r != 5]  # row 5 is layers.3's own re-initialised unit
    assert torch.all(state["layers.2.weight"][rows][:, [0, 3, 7]] == 0)
    assert torch.all(state["layers.0.bias"][[0, 3, 7]] == 0)
