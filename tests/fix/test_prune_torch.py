"""--prune-dead on PyTorch models: planted dead units removed, outputs equal on the calibration
data, parameter counts equal to arithmetic on the layer shapes, coupled units skipped."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from fix_models import PlantedCNN, PlantedMLP, PlantedResidual, dead_units, images, vectors

pytest.importorskip("torch_pruning")


def _fix(model, x, out, **kwargs):
    from reludoctor.fix import fix

    return fix(model, x, out, strategy="prune-dead", **kwargs)


def _outputs(module, x: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return module(torch.from_numpy(x)).numpy()


def _site(summary, name):
    return next(s for s in summary.sites if s.site == name)


def test_cnn_prunes_planted_units_and_matches(tmp_path):
    model = PlantedCNN()
    x = images()
    # independent oracle: the dead units, from hooks on the pre-activations
    assert dead_units(model, model.bn1, torch.from_numpy(x)) == [1, 5]
    assert dead_units(model, model.conv2, torch.from_numpy(x)) == [2]
    out = tmp_path / "cnn.pt2"
    summary = _fix(model, x, out)

    assert _site(summary, "act1").action == "pruned" and _site(summary, "act1").targets == (1, 5)
    assert _site(summary, "relu()").action == "pruned" and _site(summary, "relu()").targets == (2,)
    # parameters by arithmetic: conv1 3->8 (3x3, bias), bn1 8, conv2 8->6 (3x3, bias), fc 24->5
    before = (3 * 8 * 9 + 8) + 2 * 8 + (8 * 6 * 9 + 6) + (24 * 5 + 5)
    after = (3 * 6 * 9 + 6) + 2 * 6 + (6 * 5 * 9 + 5) + (20 * 5 + 5)
    assert (summary.params_before, summary.params_after) == (before, after)
    # MACs per sample (6x6 maps): conv1, conv2, fc
    assert summary.macs_before == 36 * 8 * 27 + 36 * 6 * 72 + 5 * 24
    assert summary.macs_after == 36 * 6 * 27 + 36 * 5 * 54 + 5 * 20

    program = torch.export.load(str(out))
    fixed = program.module()
    np.testing.assert_allclose(_outputs(fixed, x), _outputs(model, x), rtol=1e-5, atol=1e-5)
    assert (_outputs(fixed, x).argmax(1) == _outputs(model, x).argmax(1)).all()
    state = program.state_dict
    assert tuple(state["conv1.weight"].shape) == (6, 3, 3, 3)
    assert tuple(state["bn1.running_mean"].shape) == (6,)
    assert tuple(state["conv2.weight"].shape) == (5, 6, 3, 3)
    assert tuple(state["fc.weight"].shape) == (5, 20)
    # the kept rows are the original ones
    keep = [u for u in range(8) if u not in (1, 5)]
    torch.testing.assert_close(state["conv1.weight"], model.conv1.weight.detach()[keep])
    v = summary.verification
    assert v.equal and v.lossless_expected and v.argmax_checked and v.argmax_mismatches == 0
    assert v.samples == len(x)
    assert summary.rescan["fixed_sites"] == {"act1": [], "relu()": []}
    data = summary.to_dict()
    assert data["params"] == {"before": before, "after": after}
    assert data["output"]["path"] == str(out)


def test_mlp_prunes_and_matches(tmp_path):
    model = PlantedMLP()
    x = vectors()
    assert dead_units(model, model.layers[0], torch.from_numpy(x)) == [0, 3, 7]
    assert dead_units(model, model.layers[2], torch.from_numpy(x)) == [5]
    out = tmp_path / "mlp.pt2"
    summary = _fix(model, x, out)
    before = (10 * 16 + 16) + (16 * 12 + 12) + (12 * 4 + 4)
    after = (10 * 13 + 13) + (13 * 11 + 11) + (11 * 4 + 4)
    assert (summary.params_before, summary.params_after) == (before, after)
    assert summary.macs_before == 10 * 16 + 16 * 12 + 12 * 4
    assert summary.macs_after == 10 * 13 + 13 * 11 + 11 * 4
    fixed = torch.export.load(str(out)).module()
    np.testing.assert_allclose(_outputs(fixed, x), _outputs(model, x), rtol=1e-5, atol=1e-6)
    assert [s.units_after for s in summary.sites] == [13, 11]


def test_residual_coupled_units_are_skipped_with_a_reason(tmp_path):
    model = PlantedResidual()
    x = images(samples=32)
    assert dead_units(model, model.stem_bn, torch.from_numpy(x)) == [0]
    assert dead_units(model, model.bn_a, torch.from_numpy(x)) == [2, 4]
    out = tmp_path / "res.pt2"
    summary = _fix(model, x, out)
    stem = _site(summary, "stem_act")
    assert stem.action == "skipped" and "coupled" in stem.reason and "conv_b" in stem.reason
    assert "not all dead" in stem.reason  # tried together with conv_b: relu(x + y) fires
    assert _site(summary, "act_a").action == "pruned"
    # conv_a loses 2 output rows (8*9 each) and bn_a 2 channels; conv_b loses 2 input columns
    removed = 2 * (8 * 9) + 2 * 2 + 2 * (8 * 9)
    assert summary.params_before - summary.params_after == removed
    fixed = torch.export.load(str(out)).module()
    np.testing.assert_allclose(_outputs(fixed, x), _outputs(model, x), rtol=1e-5, atol=1e-6)
    post_add = _site(summary, "relu()")  # after the residual sum: no dead units there
    assert post_add.action in ("unchanged", "skipped")


def test_sites_glob_limits_pruning(tmp_path):
    model = PlantedMLP()
    summary = _fix(model, vectors(), tmp_path / "m.pt2", sites=["layers.3"])
    assert [s.site for s in summary.sites] == ["layers.3"]
    assert summary.params_before - summary.params_after == 16 + 1 + 4  # fc2 row+bias, fc3 column


def test_dry_run_writes_nothing(tmp_path):
    out = tmp_path / "never.pt2"
    summary = _fix(PlantedMLP(), vectors(), out, dry_run=True)
    assert not out.exists() and list(tmp_path.iterdir()) == []
    assert summary.output is None and summary.verification is None
    assert summary.params_after < summary.params_before  # the plan was applied in memory


def test_input_module_is_not_modified(tmp_path):
    model = PlantedCNN()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.train()
    _fix(model, images(samples=16), tmp_path / "m.pt2")
    assert model.training
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.slow
def test_resnet18_prunes_conv1_sites(tmp_path):
    torchvision = pytest.importorskip("torchvision")
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=10).eval()
    planted = {"layer1.0": [3, 7], "layer3.1": [0, 1, 2, 3, 4], "layer4.0": [10]}
    with torch.no_grad():
        for block, units in planted.items():
            model.get_submodule(block).bn1.bias[units] = -100.0
    x = np.random.default_rng(0).standard_normal((4, 3, 32, 32)).astype(np.float32)
    # the oracle: dead units of every block's first ReLU (bn1 output), by hooks
    blocks = [f"layer{i}.{j}" for i in range(1, 5) for j in range(2)]
    dead = {b: dead_units(model, model.get_submodule(b).bn1, torch.from_numpy(x)) for b in blocks}
    for block, units in planted.items():
        assert set(units) <= set(dead[block])
    out = tmp_path / "resnet.pt2"
    summary = _fix(model, x, out)
    expected_removed = 0
    for block in blocks:
        units = dead[block]
        site = _site(summary, f"{block}.relu#1")
        if not units:
            continue
        assert site.action == "pruned" and list(site.targets) == units
        conv1 = model.get_submodule(block).conv1
        conv2 = model.get_submodule(block).conv2
        cin, k = conv1.in_channels, conv1.kernel_size[0] * conv1.kernel_size[1]
        expected_removed += len(units) * (cin * k + 2 + conv2.out_channels * k)
    assert summary.params_before == sum(p.numel() for p in model.parameters())
    assert summary.params_before - summary.params_after == expected_removed
    fixed = torch.export.load(str(out)).module()
    ref = _outputs(model, x)
    got = _outputs(fixed, x)
    assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max()
    assert (got.argmax(1) == ref.argmax(1)).all()
    for block in blocks:
        if dead[block]:
            assert summary.rescan["fixed_sites"][f"{block}.relu#1"] == []


class _Shifted(torch.nn.Module):
    """fc1+ReLU (``act1``, dead 0) -> ``+ 1`` -> fc2+ReLU (``act2``, dead 1) -> fc3: act1's dead
    unit is 1 (not 0) after the shift, so removing it would change outputs."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.fc1, self.act1 = torch.nn.Linear(5, 6), torch.nn.ReLU()
        self.fc2, self.act2 = torch.nn.Linear(6, 4), torch.nn.ReLU()
        self.fc3 = torch.nn.Linear(4, 2)
        with torch.no_grad():
            self.fc1.bias[0] = -100.0
            self.fc2.bias[1] = -100.0

    def forward(self, x):
        return self.fc3(self.act2(self.fc2(self.act1(self.fc1(x)) + 1.0)))


def test_units_through_a_shift_are_skipped_after_a_failed_probe(tmp_path):
    model = _Shifted().eval()
    x = vectors(features=5)
    out = tmp_path / "shift.pt2"
    summary = _fix(model, x, out)
    first = _site(summary, "act1")
    assert first.action == "skipped" and "changed the outputs" in first.reason
    second = _site(summary, "act2")
    assert second.action == "pruned" and 1 in second.targets
    fixed = torch.export.load(str(out)).module()
    np.testing.assert_allclose(_outputs(fixed, x), _outputs(model, x), rtol=1e-5, atol=1e-6)
    # per unit: an fc2 row (6) and bias (1), an fc3 column (2)
    assert summary.params_before - summary.params_after == len(second.targets) * (6 + 1 + 2)


def test_residual_coupled_units_dead_everywhere_are_pruned_together(tmp_path):
    """The stem's unit 0 is dead and so is the block's output channel 0 (bn_b planted too):
    channel 0 of the residual stream is dead at both sites, so it goes as a whole."""
    model = PlantedResidual()
    with torch.no_grad():
        model.bn_b.bias[0] = -100.0
    x = images(samples=32)
    t = torch.from_numpy(x)
    with torch.no_grad():  # the oracle: relu(x + y) at channel 0 never fires
        h = model.stem_act(model.stem_bn(model.stem(t)))
        s = h + model.bn_b(model.conv_b(model.act_a(model.bn_a(model.conv_a(h)))))
    assert float(s[:, 0].max()) <= 0
    out = tmp_path / "res_together.pt2"
    summary = _fix(model, x, out)
    stem = _site(summary, "stem_act")
    assert stem.action == "pruned" and stem.targets == (0,) and "together" in stem.reason
    # stem row (3*9) + stem_bn (2) + conv_a input column (8*9) + conv_b row (8*9) + bn_b (2)
    # + fc column (3), plus act_a's two dead units as in the test above
    removed = (27 + 2 + 72 + 72 + 2 + 3) + 2 * (7 * 9) + 2 * 2 + 2 * (7 * 9)
    assert summary.params_before - summary.params_after == removed
    fixed = torch.export.load(str(out)).module()
    np.testing.assert_allclose(_outputs(fixed, x), _outputs(model, x), rtol=1e-5, atol=1e-6)
