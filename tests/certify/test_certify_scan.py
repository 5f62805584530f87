"""Certified dead units through reludoctor.scan: the unit provably dead on the box is certified,
the unit dead on the data but alive elsewhere in the box is not (the input that makes it fire is
built here and checked with a plain forward), methods and formats without a graph say so, and a
scan without an input range writes exactly the report it wrote before."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from cert_models import SmallCNN, TwoUnits, WithErf, calibration_for_two_units

from reludoctor import scan
from reludoctor.errors import UsageError
from reludoctor.report.schema import validate

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"


def test_negative_weights_and_bias_on_a_non_negative_domain_are_certified():
    report = scan(TwoUnits(), calibration_for_two_units(), input_range="0,1", device="cpu")
    site = report.sites[0]
    assert site.dead_units == (0, 1)
    assert site.certified_dead_units == (0,)
    assert report.certification.status == "complete"
    assert (report.certification.certified_dead_units, report.certification.dead_units) == (1, 2)
    validate(report.to_dict())


def test_dead_on_the_data_but_firing_inside_the_domain_is_not_certified():
    model = TwoUnits().eval()
    report = scan(model, calibration_for_two_units(), input_range=(0.0, 1.0), device="cpu")
    assert 1 in report.sites[0].dead_units
    assert 1 not in report.sites[0].certified_dead_units
    unseen = torch.tensor([[0.9, 0.0, 0.0, 0.0]])  # inside [0, 1]^4, not like the calibration data
    with torch.no_grad():
        pre = model.fc(unseen)
    assert float(pre[0, 1]) > 0  # unit 1 fires on it: "did not fire" was not "cannot fire"
    assert float(pre[0, 0]) <= 0


def test_per_channel_range_and_batchnorm_certify_the_pushed_down_channels():
    data = torch.rand(32, 3, 8, 8)
    report = scan(SmallCNN(), data, input_range="imagenet", device="cpu")
    stem = report.site("stem.2")
    assert set(stem.certified_dead_units) >= {0, 1}  # BN bias -30: cannot fire
    assert set(stem.certified_dead_units) <= set(stem.dead_units)
    assert report.certification.input_range.spec == "imagenet"
    assert len(report.certification.input_range.low) == 3
    validate(report.to_dict())


def test_a_site_after_an_unsupported_op_is_listed_as_not_certifiable():
    report = scan(WithErf(), torch.rand(16, 4), input_range="0,1", device="cpu")
    first, second = report.sites
    assert first.certified_dead_units == (0, 1, 2, 3)
    assert second.certified_dead_units is None
    assert report.certification.status == "partial"
    (entry,) = report.certification.not_certifiable
    assert entry.site == second.name and "erf" in entry.reason
    data = report.to_dict()
    assert data["sites"][1]["certified_dead_units"] is None
    validate(data)


def test_dispatch_is_a_note_not_an_error():
    report = scan(TwoUnits(), calibration_for_two_units(), input_range="0,1", method="dispatch", device="cpu")
    assert report.certification.status == "unsupported"
    assert "torch.export graph" in report.certification.note
    assert report.sites[0].certified_dead_units is None
    validate(report.to_dict())


def test_onnx_is_a_note_not_an_error():
    pytest.importorskip("onnxruntime")
    report = scan(str(FIXTURES / "models" / "digits_mlp_dead.onnx"), str(FIXTURES / "data" / "digits_calib_flat.npy"),
                  input_range="0,16", limit=32)
    assert report.certification.status == "unsupported"
    assert "onnx" in report.certification.note
    validate(report.to_dict())


def test_without_an_input_range_the_report_has_no_certification_keys():
    data = report_json = scan(TwoUnits(), calibration_for_two_units(), device="cpu").to_dict()
    assert "certification" not in data
    assert all("certified_dead_units" not in site for site in data["sites"])
    assert json.loads(json.dumps(report_json)) == data


def test_round_trip_keeps_the_certification():
    from reludoctor.report.model import Report

    report = scan(TwoUnits(), calibration_for_two_units(), input_range="0,1", device="cpu")
    again = Report.from_dict(json.loads(report.to_json()))
    assert again.to_dict() == report.to_dict()


@pytest.mark.parametrize("bad", ["1,0", "a,b", "0,1,2", "nan,1", ""])
def test_bad_ranges_are_refused_before_the_model_loads(bad):
    with pytest.raises(UsageError):
        scan("does-not-exist.pt2", None, input_range=bad)


def test_several_floating_inputs_are_ambiguous():
    class Two(torch.nn.Module):
        def forward(self, a, b):
            return torch.relu(a + b)

    with pytest.raises(UsageError, match="floating-point inputs"):
        scan(Two(), {"a": torch.rand(8, 4), "b": torch.rand(8, 4)}, input_range="0,1", device="cpu")
