"""--ablate: every statistic against an independent oracle (plain torch on a deepcopy, units
zeroed by a forward hook, metrics computed here on the whole data at once)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from ablation_models import CNN, MLP, change, cnn_data, mlp_data, scores

import reludoctor
from reludoctor.core.ablation import candidates

NEAR = 0.1  # near-dead threshold that catches the planted rarely-firing units


def _close(measured, expected: dict) -> None:
    assert measured.output_change == pytest.approx(expected["output_change"], rel=1e-4, abs=1e-7)
    assert measured.max_abs_change == pytest.approx(expected["max_abs_change"], rel=1e-4, abs=1e-6)
    assert measured.loss_change == pytest.approx(expected["loss_change"], rel=1e-3, abs=2e-5)
    assert measured.argmax_flips == pytest.approx(expected["argmax_flips"])


@pytest.mark.parametrize("make, data, batch", [(MLP, mlp_data, 7), (CNN, cnn_data, 8)])
@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_joint_and_single_changes_match_the_oracle(make, data, batch, method):
    model, x = make(), data()
    report = reludoctor.scan(model, x, ablate=True, ablate_top=3, near_dead=NEAR, batch_size=batch,
                             method=method)
    ablation = report.ablation
    assert ablation.computed and ablation.method == method and ablation.samples == len(x)
    assert ablation.loss == "cross-entropy-argmax"
    checked = 0
    for site, measured in zip(report.sites, ablation.sites):
        assert measured.site == site.name
        assert measured.candidates == candidates(site)
        assert not set(measured.candidates) & set(site.dead_units)
        if not measured.candidates:
            assert measured.joint is None and measured.units == ()
            continue
        _close(measured.joint, change(model, x, site.name, list(measured.candidates)))
        oracle = scores(model, x, site.name)
        expected_top = sorted(measured.candidates, key=lambda u: (-oracle[u], u))[:3]
        assert [u.unit for u in measured.units] == expected_top
        for unit in measured.units:
            assert unit.score == pytest.approx(oracle[unit.unit], rel=1e-4, abs=1e-9)
            _close(unit, change(model, x, site.name, [unit.unit]))
            checked += 1
    assert checked >= 2
    assert ablation.sites_ablated == sum(1 for s in ablation.sites if s.candidates)
    ablated = [s for s in ablation.sites if s.candidates]
    assert ablation.forwards_per_batch == 2 + len(ablated) + sum(min(3, len(s.candidates)) for s in ablated)


def test_planted_units_are_the_candidates():
    report = reludoctor.scan(MLP(), mlp_data(), ablate=True, near_dead=NEAR)
    act1 = report.ablation.sites[0]
    assert act1.site == "act1" and act1.candidates == (0, 1, 3, 4)  # 2 is dead: not a candidate
    assert act1.joint.argmax_flips > 0 and act1.joint.output_change > 0.1
    tiny = {u.unit: u for u in act1.units}
    assert tiny[3].output_change < 1e-3 and tiny[4].output_change < 1e-3


def test_labels_make_the_loss_cross_entropy_against_them():
    model, x = MLP(), mlp_data()
    labels = np.random.default_rng(3).integers(0, 5, len(x))
    report = reludoctor.scan(model, x, ablate=True, near_dead=NEAR, labels=labels, ablate_top=1)
    assert report.ablation.loss == "cross-entropy-labels"
    site = report.ablation.sites[0]
    _close(site.joint, change(model, x, "act1", list(site.candidates), labels=labels))


def test_top_zero_and_site_patterns():
    report = reludoctor.scan(CNN(), cnn_data(), ablate=True, near_dead=NEAR, ablate_top=0,
                             ablate_sites=["act2"])
    ablation = report.ablation
    assert [s.site for s in ablation.sites] == ["act2"]
    assert ablation.sites[0].units == () and ablation.sites[0].joint is not None
    assert ablation.forwards_per_batch == 2  # the baseline and act2's joint: no second pass
    assert ablation.sites[0].joint == reludoctor.scan(CNN(), cnn_data(), ablate=True, near_dead=NEAR,
                                                     ablate_top=2).ablation.sites[1].joint


def test_site_patterns_that_match_nothing_say_so():
    report = reludoctor.scan(CNN(), cnn_data(), ablate=True, near_dead=NEAR, ablate_sites=["layer9.*"])
    assert report.ablation.sites == () and "--ablate-sites layer9.* matches no site (sites: act1, act2)" \
        in report.ablation.note


def test_fixed_batch_program_counts_only_real_rows(tmp_path):
    model, x = CNN(), cnn_data(19)  # batches of 8: the last one padded with 5 copies
    program = torch.export.export(model, (torch.from_numpy(x[:8]),))
    path = tmp_path / "fixed.pt2"
    torch.export.save(program, path)
    report = reludoctor.scan(str(path), x, ablate=True, near_dead=NEAR, ablate_top=2)
    assert report.calibration.batch_size == 8 and report.ablation.samples == 19
    for measured in report.ablation.sites:
        if measured.joint is not None:
            _close(measured.joint, change(model, x, measured.site, list(measured.candidates)))
            for unit in measured.units:
                _close(unit, change(model, x, measured.site, [unit.unit]))


def test_half_squared_loss_for_outputs_that_are_not_class_scores():
    class Regressor(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.mlp = MLP()

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.mlp(x)[:, 0]

    model, x = Regressor(), mlp_data()
    report = reludoctor.scan(model, x, ablate=True, near_dead=NEAR, ablate_top=0)
    assert report.ablation.loss == "half-squared-norm"
    joint = report.ablation.sites[0].joint
    assert joint.argmax_flips is None
    y = torch.from_numpy(np.asarray(model(torch.from_numpy(x)).detach(), dtype=np.float64))
    kept = model.mlp.act1.register_forward_hook(
        lambda _m, _i, out: out.index_fill(1, torch.tensor(report.ablation.sites[0].candidates), 0.0))
    with torch.no_grad():
        z = model(torch.from_numpy(x)).double()
    kept.remove()
    assert joint.output_change == pytest.approx(float((z - y).norm() / y.norm()), rel=1e-4)
    assert joint.loss_change == pytest.approx(float(0.5 * (z.pow(2).sum() - y.pow(2).sum()) / len(x)),
                                              rel=1e-3, abs=1e-5)


def test_nothing_to_ablate_says_so():
    model = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 2))
    x = np.random.default_rng(0).standard_normal((40, 4)).astype(np.float32)
    report = reludoctor.scan(model, x, ablate=True, dormant_tau=0.0, near_dead=1e-6)
    assert report.ablation.computed and report.ablation.sites_ablated == 0
    assert "nothing to ablate" in report.ablation.note


def test_the_model_is_not_changed():
    model, x = MLP(), mlp_data()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    reludoctor.scan(model, x, ablate=True, near_dead=NEAR, method="dispatch")
    reludoctor.scan(model, x, ablate=True, near_dead=NEAR)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


@pytest.mark.parametrize("method", ["export", "dispatch"])
def test_tokens_flattened_to_rows_score_per_sample(method):
    from ablation_models import TokenFFN, token_data, token_scores

    model, x = TokenFFN(), token_data()
    report = reludoctor.scan(model, x, ablate=True, near_dead=NEAR, ablate_top=4, batch_size=10, method=method)
    (site,) = report.ablation.sites
    assert site.site == "act" and {0, 1} <= set(site.candidates)
    _close(site.joint, change(model, x, "act", list(site.candidates)))
    oracle = token_scores(model, x)
    for unit in site.units:
        assert unit.score == pytest.approx(oracle[unit.unit], rel=1e-4, abs=1e-9)
        _close(unit, change(model, x, "act", [unit.unit]))


def test_torchscript_archive_goes_through_dispatch_with_the_scans_names(tmp_path):
    import warnings

    model, x = MLP(), mlp_data()
    path = tmp_path / "mlp.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, (torch.from_numpy(x[:2]),)), path)
    report = reludoctor.scan(str(path), x, ablate=True, near_dead=NEAR, ablate_top=2, trust_model=True)
    assert report.model.method == "dispatch" and report.ablation.method == "dispatch"
    assert [s.site for s in report.ablation.sites] == [s.name for s in report.sites] == ["act1", "act2"]
    act1 = report.ablation.sites[0]
    _close(act1.joint, change(model, x, "act1", list(act1.candidates)))
    for unit in act1.units:
        _close(unit, change(model, x, "act1", [unit.unit]))
