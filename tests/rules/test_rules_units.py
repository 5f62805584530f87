"""Each rule as a unit, on statistics and producer evidence built in code (no model, no scan)."""

from __future__ import annotations

import re

import numpy as np
import pytest

from reludoctor.core import rules
from reludoctor.core.evidence import ProducerEvidence
from reludoctor.report.model import CalibrationInfo, Finding, GradientInfo, Histogram, SiteGradient, SiteStats

CALIB = CalibrationInfo("calib.npy", 500, False, 32)
LEGACY = ("dead-units", "dead-site", "dormant-units", "saturated-units", "synthetic-data", "few-samples")


def site(name: str = "layer1.relu", units: int = 8, dead: tuple[int, ...] = (), *,
         rates: list[float] | None = None, peak: list[float] | None = None, op: str = "relu",
         lower: float = 0.0, upper: float | None = None, saturated: tuple[int, ...] | None = None,
         dormant: tuple[int, ...] = (), shape: tuple[int, ...] | None = None,
         gradient: SiteGradient | None = None, samples: int = 500) -> SiteStats:
    rates = rates if rates is not None else [0.0 if u in dead else 0.5 for u in range(units)]
    peak = peak if peak is not None else [-1.0 if u in dead else 2.0 for u in range(units)]
    return SiteStats(
        name=name, op=op, module=name.rsplit(".", 1)[0], unit_axis=1, units=units,
        shape=shape or (units,), lower_bound=lower, upper_bound=upper, samples=samples,
        positions=samples, dead_units=tuple(dead), dead_ratio=len(dead) / units,
        activation_rate=tuple(rates), max_preactivation=tuple(peak), near_dead_units=(),
        dormant_units=tuple(sorted(set(dead) | set(dormant))),
        dormant_score=tuple(0.0 if u in dead else 1.0 for u in range(units)),
        saturated_units=saturated, min_preactivation=None if upper is None else tuple([0.0] * units),
        histogram=Histogram((0.0,), (0, 0)), gradient=gradient)


def producer(site_name: str = "layer1.relu", units: int = 8, *, norms: list[float] | None = None,
             shift: list[float] | None = None, bn: bool = False, layer: str = "layer1.fc"
             ) -> ProducerEvidence:
    norms_ = np.asarray(norms if norms is not None else [1.0] * units, dtype=np.float64)
    shift_ = np.asarray(shift if shift is not None else [0.0] * units, dtype=np.float64)
    return ProducerEvidence(
        site=site_name, layer=layer, kind="linear", weight=f"{layer}.weight", fan_in=16,
        weight_norm=norms_, bias=None if bn else shift_.copy(), norm_layer="layer1.bn" if bn else None,
        gamma=np.ones(units) if bn else None, beta=shift_.copy() if bn else None,
        running_mean=np.zeros(units) if bn else None, running_var=np.ones(units) if bn else None,
        scale=np.ones(units), shift=shift_)


def run(sites: list[SiteStats], evidence: dict | None = None, calibration: CalibrationInfo = CALIB,
        gradients: GradientInfo | None = None) -> list[Finding]:
    return list(rules.evaluate(sites, calibration, evidence=evidence, gradients=gradients))


def ids(findings: list[Finding]) -> list[str]:
    return [f.rule for f in findings]


# --- the registry ------------------------------------------------------------------------------


def test_registry_ids_are_stable_unique_and_kebab_case():
    assert len(set(rules.RULE_IDS)) == len(rules.RULE_IDS)
    assert set(LEGACY) <= set(rules.RULE_IDS)  # ids other tools rely on
    for entry in rules.RULES:
        assert re.fullmatch(r"[a-z0-9]+(-[a-z0-9]+)*", entry.id)
        assert entry.severity in rules.SEVERITIES and entry.scope in ("site", "scan")
        assert entry.basis and entry.title
    assert rules.rule("dead-site").severity == "error"
    with pytest.raises(KeyError):
        rules.rule("no-such-rule")


def test_evaluate_keeps_its_old_call_and_order():
    sites = [site("a", dead=(1,)), site("b", dead=tuple(range(8)))]
    findings = rules.evaluate(sites, CalibrationInfo("x", 100, True, 8))
    assert ids(findings)[0] == "synthetic-data" and "few-samples" not in ids(findings)
    assert [(f.rule, f.site) for f in findings if f.site] == [
        ("dead-units", "a"), ("prunable-units", "a"), ("dead-site", "b")]


def test_every_finding_has_the_contract_fields():
    sites = [site("a", dead=(0, 1), saturated=(3,), upper=6.0, op="relu6", dormant=(5,))]
    for f in run(sites, {"a": producer("a", shift=[-9, -9, 0, 0, 0, 0, 0, 0])},
                 CalibrationInfo("x", 50, False, 8)):
        assert f.rule in rules.RULE_IDS and f.severity in rules.SEVERITIES
        assert f.message and f.suggestion and isinstance(f.evidence, dict)


# --- site rules --------------------------------------------------------------------------------


def test_dead_units():
    (f,) = [f for f in run([site(dead=(2, 5))]) if f.rule == "dead-units"]
    assert f.severity == "warning" and f.evidence["dead_units"] == [2, 5]
    assert "nn.LeakyReLU(0.01) at layer1.relu" in f.suggestion
    assert "dead-units" not in ids(run([site()]))
    assert "dead-units" not in ids(run([site(dead=tuple(range(8)))]))  # that is dead-site
    functional = [f for f in run([site("block.relu()#2", dead=(1,))]) if f.rule == "dead-units"][0]
    assert "F.leaky_relu(x, 0.01)" in functional.suggestion


def test_dead_units_names_the_producer_and_compares_dead_with_alive():
    ev = {"layer1.relu": producer(norms=[0.5, 2, 2, 2, 2, 2, 2, 0.5])}
    (f,) = [f for f in run([site(dead=(0, 7))], ev) if f.rule == "dead-units"]
    assert 'kaiming_normal_(layer1.fc.weight, mode="fan_in", nonlinearity="relu")' in f.suggestion
    assert f.evidence["dead_vs_alive"]["weight_norm"] == {"dead_median": 0.5, "alive_median": 2.0}
    assert f.evidence["dead_vs_alive"]["fan_in"] == 16


def test_dead_site():
    (f,) = [f for f in run([site(dead=tuple(range(8)))], {"layer1.relu": producer()})
            if f.rule == "dead-site"]
    assert f.severity == "error" and "blocks all gradient" in f.message
    assert "layer1.fc" in f.suggestion and "kaiming_normal_" in f.suggestion
    assert "dead-site" not in ids(run([site(dead=(1,))]))


def test_negative_bias_needs_an_outlying_shift_and_an_input_that_would_fire():
    shift = [-10.0, 0.0, 0.1, -0.1, 0.0, 0.05, -0.05, 0.0]
    peak = [-5.0] + [2.0] * 7  # unit 0: shift -10, the input alone reaches +5
    s = site(dead=(0,), peak=peak)
    (f,) = [f for f in run([s], {s.name: producer(shift=shift, bn=True)}) if f.rule == "negative-bias"]
    assert f.evidence["units"] == [0] and f.evidence["input_reach"] == [5.0]
    assert f.evidence["parameter"] == "layer1.bn.bias" and "BatchNorm beta" in f.message
    assert "lower learning rate" in f.suggestion and "nn.LeakyReLU(0.01)" in f.suggestion
    # a bias no lower than the layer's spread of biases is not "strongly negative"
    spread = [-0.3, 0.3, -0.2, 0.2, -0.1, 0.1, 0.25, -0.25]
    s2 = site(dead=(0,), peak=[-0.1] + [2.0] * 7)
    assert "negative-bias" not in ids(run([s2], {s2.name: producer(shift=spread)}))
    # a weighted input negligible next to the bias: a weak signal, not the bias' fault
    s3 = site(dead=(0,), peak=[-9.999] + [2.0] * 7)
    assert "negative-bias" not in ids(run([s3], {s3.name: producer(shift=shift)}))
    # no evidence (a saved report): silent
    assert "negative-bias" not in ids(run([s]))


def test_input_never_positive():
    peak = [-2.0, 2, 2, -1.5, 2, 2, 2, 2]
    s = site(dead=(0, 3), peak=peak)
    (f,) = [f for f in run([s], {s.name: producer(shift=[-0.1] * 8)})
            if f.rule == "input-never-positive"]
    assert f.evidence["units"] == [0, 3]
    assert f.evidence["input_reach"] == [pytest.approx(-1.9), pytest.approx(-1.4)]
    assert "lower learning rate" in f.suggestion and "layer1.fc.weight" in f.suggestion


def test_input_insensitive_sites_blame_the_signal_not_the_units():
    """Every alive unit always on: the layer no longer sees its input (a vanishing signal)."""
    rates = [0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0, 1.0]
    s = site(dead=(0, 3), rates=rates, peak=[-2.0, 2, 2, -1.5, 2, 2, 2, 2])
    assert rules.input_insensitive(s)
    found = ids(run([s], {s.name: producer(shift=[-0.1] * 8)}))
    assert "input-never-positive" not in found and "negative-bias" not in found
    assert rules.dead_causes(s, producer(shift=[-0.1] * 8)) == {0: "weak-input", 3: "weak-input"}


def test_collapsed_weights():
    norms = [1e-6, 1.0, 1.1, 0.9, 1.0, 1.2, 0.0, 1.0]
    s = site(dead=(0, 6))
    (f,) = [f for f in run([s], {s.name: producer(norms=norms)}) if f.rule == "collapsed-weights"]
    assert f.evidence["units"] == [0, 6] and f.evidence["reference_norm"] == 1.0
    assert "weight decay" in f.suggestion and "rows 0, 6 of layer1.fc.weight" in f.suggestion
    # small but not collapsed (10% of the median): silent
    s2 = site(dead=(0,))
    assert "collapsed-weights" not in ids(run([s2], {s2.name: producer(norms=[0.1] + [1.0] * 7)}))
    # collapsed rows of units that still work (not dead, not dormant): silent
    assert "collapsed-weights" not in ids(run([site()], {"layer1.relu": producer(norms=norms)}))
    assert rules.dead_causes(s, producer(norms=norms)) == {0: "collapsed-weights", 6: "collapsed-weights"}


def test_prunable_units_only_where_the_output_is_exactly_zero():
    (f,) = [f for f in run([site(dead=(1, 2))]) if f.rule == "prunable-units"]
    assert f.severity == "info" and f.evidence["units"] == [1, 2] and f.evidence["output"] == 0.0
    assert "prune units 1, 2 at layer1.relu" in f.suggestion
    for op, lower in (("hardtanh", -1.0), ("leaky_relu", 0.0)):
        assert "prunable-units" not in ids(run([site(dead=(1,), op=op, lower=lower)]))
    assert "prunable-units" in ids(run([site(dead=(1,), op="relu6", upper=6.0)]))
    assert "prunable-units" not in ids(run([site(dead=tuple(range(8)))]))


def test_dormant_units():
    (f,) = [f for f in run([site(dead=(0,), dormant=(4,))]) if f.rule == "dormant-units"]
    assert f.severity == "info" and f.evidence["dormant_units"] == [4]  # dead ones excluded
    assert "Sokar et al. 2023" in f.suggestion
    assert "dormant-units" not in ids(run([site(dead=(0,))]))


def test_saturated_units():
    s = site(op="relu6", upper=6.0, saturated=(3,))
    (f,) = [f for f in run([s], {s.name: producer(bn=True)}) if f.rule == "saturated-units"]
    assert f.evidence["saturated_units"] == [3] and "layer1.bn.weight" in f.suggestion
    assert "saturated-units" not in ids(run([site(op="relu6", upper=6.0, saturated=())]))


# --- scan rules --------------------------------------------------------------------------------


def test_synthetic_data_and_few_samples():
    assert ids(run([site()], calibration=CalibrationInfo("synthetic", 256, True, 32))) == ["synthetic-data"]
    (f,) = run([site()], calibration=CalibrationInfo("x.npy", 100, False, 32))
    assert f.rule == "few-samples" and f.evidence["firing_rate_bound_95"] == pytest.approx(0.03)
    assert run([site()]) == []


def test_dead_with_depth():
    ratios = [0, 0, 0.125, 0.25, 0.5, 0.5, 0.625, 0.75, 0.75]
    sites = [site(f"l{i}", dead=tuple(range(round(r * 8)))) for i, r in enumerate(ratios)]
    (f,) = [f for f in run(sites) if f.rule == "dead-with-depth"]
    assert f.site in ("l7", "l8") and f.evidence["rank_correlation"] > 0.9
    assert "residual" in f.suggestion and "kaiming_normal_" in f.suggestion
    flat = [site(f"l{i}", dead=(1, 2)) for i in range(9)]
    assert "dead-with-depth" not in ids(run(flat))
    falling = list(reversed(sites))
    assert "dead-with-depth" not in ids(run(falling))
    assert "dead-with-depth" not in ids(run(sites[-2:]))  # too few sites


def _g(rms: float) -> SiteGradient:
    return SiteGradient(pass_through=0.5, rms_output=rms, rms_preactivation=rms / 2,
                        zero_fraction=0.5, zero_by_mask=0.5, zero_downstream=0.0,
                        output_zero_fraction=0.0)


def test_vanishing_gradient():
    info = GradientInfo(True, "cross-entropy-argmax", None, "export", 500)
    chain = [site(f"l{i}", gradient=_g(10.0 ** (i - 4))) for i in range(5)]  # 1e-4 ... 1
    (f,) = [f for f in run(chain, gradients=info) if f.rule == "vanishing-gradient"]
    assert f.site == "l0" and f.evidence["attenuation"] == pytest.approx(1e-4)
    assert f.evidence["steps"] == 4 and f.evidence["loss"] == "cross-entropy-argmax"
    steady = [site(f"l{i}", gradient=_g(1.0 + 0.1 * i)) for i in range(5)]
    assert "vanishing-gradient" not in ids(run(steady, gradients=info))
    # steps between sites of different size (pooling, strides) are not compared
    resized = [site(f"l{i}", units=8, shape=(8, 2 ** (5 - i)), gradient=_g(10.0 ** (i - 4)))
               for i in range(5)]
    assert "vanishing-gradient" not in ids(run(resized, gradients=info))
    # without the gradient pass: silent
    assert "vanishing-gradient" not in ids(run([site(f"l{i}") for i in range(5)]))
