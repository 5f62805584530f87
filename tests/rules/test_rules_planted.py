"""Models with a planted cause trigger the intended rule, and not the unrelated ones.

Each model is scanned once (with the gradient pass) and the findings compared with what the
planted cause should produce. Related rules may fire too (a dead unit is always a dead-units
finding, and prunable when its output is 0); the unrelated diagnoses must stay silent.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import pytest
import torch
from planted import CollapsedRows, NegativeBeta, deep_narrow, healthy, normal_data

import reludoctor
from reludoctor.core.rules import RULE_IDS

ROOT = Path(__file__).resolve().parents[2]
CAUSES = {"negative-bias", "input-never-positive", "collapsed-weights", "dead-with-depth",
          "vanishing-gradient"}


def quiet(_message: str) -> None:
    pass


@lru_cache(maxsize=None)
def scanned(name: str):  # noqa: ANN201
    torch.set_num_threads(1)
    if name == "negative-beta":
        return reludoctor.scan(NegativeBeta().eval(), normal_data((3, 6, 6)), gradients=True,
                               on_warning=quiet)
    if name == "collapsed":
        return reludoctor.scan(CollapsedRows().eval(), normal_data((16,)), gradients=True,
                               on_warning=quiet)
    if name == "deep-narrow":
        return reludoctor.scan(deep_narrow(), normal_data((8,)), gradients=True, on_warning=quiet)
    if name == "healthy":
        return reludoctor.scan(healthy(), normal_data((32,)), gradients=True, on_warning=quiet)
    if name == "digits-high-lr":
        return reludoctor.scan(ROOT / "fixtures" / "models" / "digits_mlp_dead.pt2",
                               ROOT / "fixtures" / "data" / "digits_calib_flat.npy", gradients=True,
                               labels=ROOT / "fixtures" / "data" / "digits_labels.npy",
                               on_warning=quiet)
    raise KeyError(name)


def rules_of(report) -> set[str]:  # noqa: ANN001
    return {f.rule for f in report.findings}


def finding(report, rule: str, site: str | None = None):  # noqa: ANN001, ANN201
    matches = [f for f in report.findings if f.rule == rule and (site is None or f.site == site)]
    assert matches, f"no {rule} finding at {site}: {[(f.rule, f.site) for f in report.findings]}"
    return matches[0]


@pytest.mark.parametrize("name, intended, related", [
    ("negative-beta", {"negative-bias"}, {"dead-units", "prunable-units", "dormant-units"}),
    ("collapsed", {"collapsed-weights"}, {"dead-units", "prunable-units", "dormant-units"}),
    ("deep-narrow", {"dead-with-depth", "vanishing-gradient"},
     {"dead-units", "prunable-units", "dormant-units"}),
    # too high a learning rate: weights pushed away from the data (and biases down: related)
    ("digits-high-lr", {"input-never-positive"},
     {"dead-units", "prunable-units", "dormant-units", "negative-bias"}),
])
def test_planted_cause_triggers_its_rule_only(name, intended, related):
    report = scanned(name)
    found = rules_of(report)
    assert intended <= found, found
    unexpected = found - intended - related
    assert not unexpected, f"{name}: unrelated findings {unexpected}"
    assert not (found & CAUSES) - intended - related
    assert "dead-site" not in found and "saturated-units" not in found
    assert found <= set(RULE_IDS)


def test_healthy_he_network_has_no_warnings():
    report = scanned("healthy")
    assert report.summary.dead_units == 0
    assert {f.severity for f in report.findings} <= {"info"}, \
        [(f.rule, f.severity) for f in report.findings]
    assert report.gradients.computed


def test_negative_beta_evidence_and_suggestion():
    report = scanned("negative-beta")
    f = finding(report, "negative-bias", "relu")
    assert f.evidence["units"] == list(NegativeBeta.NEGATIVE_UNITS)
    assert f.evidence["parameter"] == "bn.bias"
    assert all(b == pytest.approx(-10.0) for b in f.evidence["effective_bias"])
    assert all(r > 1.0 for r in f.evidence["input_reach"])  # the conv alone would fire
    assert f.evidence["dead_vs_alive"]["bn_beta"] == {"dead_median": -10.0, "alive_median": 0.0}
    assert "bn.bias" in f.suggestion and "kaiming_normal_(conv.weight" in f.suggestion
    assert "lower learning rate" in f.suggestion and "nn.LeakyReLU(0.01) at relu" in f.suggestion
    dead = finding(report, "dead-units", "relu")
    assert dead.evidence["causes"] == {"negative-bias": 2}


def test_collapsed_rows_evidence_and_suggestion():
    report = scanned("collapsed")
    f = finding(report, "collapsed-weights", "act")
    assert f.evidence["units"] == list(CollapsedRows.COLLAPSED)
    assert f.evidence["dead_or_dormant"] == list(CollapsedRows.COLLAPSED)
    assert f.evidence["fan_in"] == 16
    assert "fc1.weight" in f.suggestion and "weight decay" in f.suggestion
    assert 'kaiming_normal_(fc1.weight, mode="fan_in", nonlinearity="relu")' in f.suggestion


def test_deep_narrow_names_sites_and_fixes():
    report = scanned("deep-narrow")
    depth = finding(report, "dead-with-depth")
    assert depth.evidence["last_third"] > depth.evidence["first_third"] + 0.2
    assert depth.evidence["input_insensitive_sites"]  # deep units stuck on or off
    vanishing = finding(report, "vanishing-gradient")
    assert vanishing.site == report.sites[0].name
    assert vanishing.evidence["attenuation"] < 1e-2
    for f in (depth, vanishing):
        assert "kaiming_normal_(" in f.suggestion and "residual" in f.suggestion
        assert "BatchNorm" in f.suggestion


def test_digits_high_lr_points_at_the_learning_rate():
    report = scanned("digits-high-lr")
    f = finding(report, "input-never-positive", "layers.1")
    assert len(f.evidence["units"]) > 30  # most of the 66 dead units of layers.1
    assert "lower learning rate" in f.suggestion and "layers.0.weight" in f.suggestion
    assert "nn.LeakyReLU(0.01) at layers.1" in f.suggestion
    dead = finding(report, "dead-units", "layers.1")
    assert dead.evidence["dead_vs_alive"]["weight_norm"]["dead_median"] < \
        dead.evidence["dead_vs_alive"]["weight_norm"]["alive_median"]
    prune = finding(report, "prunable-units", "layers.1")
    assert prune.evidence["units"] == list(report.site("layers.1").dead_units)
