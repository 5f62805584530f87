"""The JSON Schema of the report (reludoctor/report/report.schema.json).

Real scans of tiny models built here must validate; mutated reports must not (so the schema is
not vacuous); and what a schema cannot say (sorted index arrays, per-unit lengths, dead <=>
rate 0, summary totals) is checked directly.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from reludoctor.report import model as report_module
from reludoctor.report.schema import ReportValidationError, load_schema, validate

REPO = Path(__file__).resolve().parents[1]

try:
    import jsonschema  # noqa: F401

    VALIDATORS = [True, False]  # the jsonschema package, and the built-in fallback checker
except ImportError:  # pragma: no cover
    VALIDATORS = [False]


# --- tiny models ---------------------------------------------------------------------------


def _torch():  # noqa: ANN202
    import torch

    return torch


def _mlp(seed: int = 0):  # noqa: ANN202
    torch = _torch()
    from torch import nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc1, self.act, self.fc2 = nn.Linear(6, 10), nn.ReLU(), nn.Linear(10, 7)
            self.fc3, self.out = nn.Linear(7, 5), nn.ReLU6()

        def forward(self, x):  # noqa: ANN001, ANN202
            h = self.act(self.fc1(x))
            h = torch.nn.functional.relu(self.fc2(h))
            return self.out(self.act(self.fc3(h)) * 4)  # self.act reused

    torch.manual_seed(seed)
    model = MLP().eval()
    with torch.no_grad():
        model.fc1.bias[[1, 4]] = -1e3  # planted dead
        model.fc3.bias[2] = 1e3  # ReLU6 input always >= 6: saturated
    return model


def _cnn():  # noqa: ANN202
    torch = _torch()
    from torch import nn

    torch.manual_seed(1)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True),
        nn.MaxPool2d(2), nn.Conv2d(8, 6, 3), nn.Hardtanh(-1.0, 1.0),
        nn.Conv2d(6, 4, 1), nn.ReLU(),
    ).eval()
    with torch.no_grad():
        model[4].bias[3] = -1e3  # hardtanh channel 3 never above its lower bound -1
        model[6].bias[:] = -1e3  # a fully dead site
    return model


def _sequence():  # noqa: ANN202
    torch = _torch()
    from torch import nn

    class Seq(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.proj, self.act = nn.Linear(5, 9), nn.ReLU()

        def forward(self, x):  # noqa: ANN001, ANN202
            return self.act(self.proj(x))  # [N, T, F]: units on the last axis

    torch.manual_seed(2)
    model = Seq().eval()
    with torch.no_grad():
        model.proj.bias[8] = -1e3
    return model


def _data(shape: tuple[int, ...], n: int = 48, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float32)


def _scan(model, data=None, **kwargs):  # noqa: ANN001, ANN003, ANN202
    from reludoctor import scan

    return scan(model, data, on_warning=lambda message: None, **kwargs)


def _pt2(tmp_path: Path) -> Path:
    torch = _torch()
    program = torch.export.export(_mlp(), (torch.randn(2, 6),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, tmp_path / "mlp.pt2")
    return tmp_path / "mlp.pt2"


SCANS = {
    "mlp-export": lambda tmp: _scan(_mlp(), _data((6,)), method="export"),
    "mlp-dispatch": lambda tmp: _scan(_mlp(), _data((6,)), method="dispatch", batch_size=7),
    "cnn": lambda tmp: _scan(_cnn(), _data((3, 8, 8), n=20)),
    "sequence": lambda tmp: _scan(_sequence(), _data((4, 5), n=30)),
    "sequence-unit-axis-1": lambda tmp: _scan(_sequence(), _data((4, 5), n=30), unit_axis=1),
    "synthetic": lambda tmp: _scan(_mlp(), None, input_shape=(6,), limit=64),
    "pt2-file": lambda tmp: _scan(_pt2(tmp), _data((6,)), near_dead=0.05, dormant_tau=0.1),
}


@pytest.fixture(scope="module")
def reports(tmp_path_factory: pytest.TempPathFactory) -> dict:
    tmp = tmp_path_factory.mktemp("schema")
    return {name: build(tmp) for name, build in SCANS.items()}


# --- what the schema cannot express --------------------------------------------------------


def _sorted_unique(values: list[int], units: int) -> None:
    assert values == sorted(set(values)), values
    assert all(isinstance(v, int) and 0 <= v < units for v in values), values


def check_semantics(d: dict) -> None:
    thresholds = d["thresholds"]
    for site in d["sites"]:
        units = site["units"]
        for key in ("activation_rate", "max_preactivation", "dormant_score"):
            assert len(site[key]) == units, key
        for key in ("dead_units", "near_dead_units", "dormant_units"):
            _sorted_unique(site[key], units)
        dead = set(site["dead_units"])
        rates = site["activation_rate"]
        assert dead == {u for u, r in enumerate(rates) if r == 0}  # dead <=> rate 0
        for unit, peak in enumerate(site["max_preactivation"]):
            if peak is not None:  # dead <=> max pre-activation <= lower bound
                assert (unit in dead) == (peak <= site["lower_bound"]), (site["name"], unit, peak)
        assert site["dead_ratio"] == pytest.approx(len(dead) / units)
        near = set(site["near_dead_units"])
        assert near == {u for u, r in enumerate(rates) if 0 < r < thresholds["near_dead"]}
        assert not near & dead
        if site["lower_bound"] == 0:  # a dead unit outputs 0: dormant includes dead (Sokar et al.)
            assert dead <= set(site["dormant_units"])
        for rate in rates:  # rate = positive positions / observed positions
            assert rate * site["positions"] == pytest.approx(round(rate * site["positions"]), abs=1e-6)
        raw = site["accumulators"]  # the raw sums behind the rates and scores (reludoctor merge)
        assert rates == [count / site["positions"] for count in raw["positive_count"]]
        means = [total / site["positions"] for total in raw["abs_output_sum"]]
        layer = sum(means) / len(means)
        if layer > 0:
            assert site["dormant_score"] == pytest.approx([m / layer for m in means], rel=1e-9)
        assert site["positions"] % site["samples"] == 0
        bounded = site["upper_bound"] is not None
        assert (site["saturated_units"] is not None) == bounded
        assert (site["min_preactivation"] is not None) == bounded
        if bounded:
            _sorted_unique(site["saturated_units"], units)
            assert len(site["min_preactivation"]) == units
            assert set(site["saturated_units"]) == {
                u for u, low in enumerate(site["min_preactivation"]) if low >= site["upper_bound"]}
        axis = site["unit_axis"]
        assert site["shape"][axis - 1 if axis > 0 else axis] == units
        hist = site["histogram"]
        assert len(hist["counts"]) == len(hist["edges"]) + 1
        assert all(a < b for a, b in zip(hist["edges"], hist["edges"][1:]))
        assert sum(hist["counts"]) > 0
        assert site["samples"] == d["calibration"]["samples"]

    sites, summary = d["sites"], d["summary"]
    names = [s["name"] for s in sites]
    assert len(names) == len(set(names)), names
    assert summary["sites"] == len(sites)
    assert summary["units"] == sum(s["units"] for s in sites)
    assert summary["dead_units"] == sum(len(s["dead_units"]) for s in sites)
    assert summary["dead_ratio"] == pytest.approx(summary["dead_units"] / summary["units"])
    worst = max(sites, key=lambda s: s["dead_ratio"])
    assert (summary["worst_site"], summary["worst_site_dead_ratio"]) == (worst["name"], worst["dead_ratio"])
    assert summary["near_dead_units"] == sum(len(s["near_dead_units"]) for s in sites)
    assert summary["dormant_units"] == sum(len(s["dormant_units"]) for s in sites)
    assert summary["saturated_units"] == sum(len(s["saturated_units"] or []) for s in sites)
    assert summary["fully_dead_sites"] == [s["name"] for s in sites if s["dead_ratio"] == 1.0]
    assert summary["firing_rate_bound_95"] == pytest.approx(3 / d["calibration"]["samples"])
    assert summary["unobserved_sites"] == len(d["unobserved_sites"])
    for finding in d["findings"]:
        assert finding["site"] is None or finding["site"] in names


# --- real scans validate -------------------------------------------------------------------


@pytest.mark.parametrize("name", list(SCANS))
@pytest.mark.parametrize("use_jsonschema", VALIDATORS)
def test_real_reports_validate(reports, name, use_jsonschema):
    d = reports[name].to_dict()
    validate(d, use_jsonschema=use_jsonschema)
    validate(json.loads(reports[name].to_json()), use_jsonschema=use_jsonschema)  # as written


@pytest.mark.parametrize("name", list(SCANS))
def test_real_reports_are_consistent(reports, name):
    d = reports[name].to_dict()
    check_semantics(d)
    assert json.loads(reports[name].to_json()) == d


def test_the_scans_exercise_what_the_schema_describes(reports):
    mlp = reports["mlp-export"].to_dict()
    assert [s["name"] for s in mlp["sites"]] == ["act#1", "relu()", "act#2", "out"]
    assert mlp["sites"][0]["dead_units"] == [1, 4]
    assert mlp["sites"][3]["saturated_units"] == [2]
    assert mlp["model"]["format"] == "module" and mlp["model"]["path"] is None
    assert mlp["model"]["sha256"] is None
    dispatch = reports["mlp-dispatch"].to_dict()
    assert dispatch["model"]["method"] == "dispatch"
    assert [s["dead_units"] for s in dispatch["sites"]] == [s["dead_units"] for s in mlp["sites"]]
    cnn = reports["cnn"].to_dict()
    assert [s["op"] for s in cnn["sites"]][:2] in (["relu_", "hardtanh"], ["relu", "hardtanh"])
    hardtanh = cnn["sites"][1]
    assert hardtanh["lower_bound"] == -1.0 and hardtanh["upper_bound"] == 1.0
    assert 3 in hardtanh["dead_units"]
    assert cnn["summary"]["fully_dead_sites"] == [cnn["sites"][2]["name"]]
    assert any(f["rule"] == "dead-site" for f in cnn["findings"])
    sequence = reports["sequence"].to_dict()["sites"][0]
    assert sequence["units"] == 9 and sequence["dead_units"] == [8]
    across_time = reports["sequence-unit-axis-1"].to_dict()
    assert across_time["thresholds"]["unit_axis"] == 1
    assert across_time["sites"][0]["units"] == 4
    synthetic = reports["synthetic"].to_dict()
    assert synthetic["calibration"]["synthetic"] is True and synthetic["warnings"]
    assert any(f["rule"] == "synthetic-data" for f in synthetic["findings"])
    pt2 = reports["pt2-file"].to_dict()
    assert pt2["model"]["format"] == "torch-export"
    assert pt2["model"]["sha256"] == hashlib.sha256(Path(pt2["model"]["path"]).read_bytes()).hexdigest()


@pytest.mark.filterwarnings("error::RuntimeWarning")
def test_overflowing_activations_give_a_valid_report_or_a_clear_error():
    from reludoctor.errors import ReludoctorError

    torch = _torch()
    model = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU())
    with torch.no_grad():
        model[0].weight.fill_(3e38)  # finite weights and data, inf pre-activations
        model[0].bias.zero_()
    x = np.abs(_data((4,), n=8)) + 1
    try:
        report = _scan(model, x)
    except ReludoctorError:
        return  # refusing the model with a clear error is fine too
    validate(report.to_dict())


# --- the schema is not vacuous: mutated reports fail ---------------------------------------


def _set(path: str, value):  # noqa: ANN001, ANN202
    def mutate(d: dict) -> None:
        *parents, last = _steps(path)
        node = d
        for step in parents:
            node = node[step]
        node[last] = value

    return mutate


def _delete(path: str):  # noqa: ANN202
    def mutate(d: dict) -> None:
        *parents, last = _steps(path)
        node = d
        for step in parents:
            node = node[step]
        del node[last]

    return mutate


def _steps(path: str) -> list:
    return [int(p) if p.isdigit() else p for p in path.replace("[", ".").replace("]", "").split(".")]


TOP_LEVEL = ["schema_version", "tool", "model", "calibration", "device", "thresholds", "summary",
             "sites", "findings", "unobserved_sites", "warnings"]

MUTATIONS = {
    **{f"missing {key}": (_delete(key), "") for key in TOP_LEVEL},
    "missing model.format": (_delete("model.format"), "model"),
    "missing model.sha256": (_delete("model.sha256"), "model"),
    "missing calibration.samples": (_delete("calibration.samples"), "calibration"),
    "missing summary.dead_ratio": (_delete("summary.dead_ratio"), "summary"),
    "missing site histogram": (_delete("sites[0].histogram"), "sites[0]"),
    "missing site dead_units": (_delete("sites[0].dead_units"), "sites[0]"),
    "missing site activation_rate": (_delete("sites[0].activation_rate"), "sites[0]"),
    "missing site saturated_units": (_delete("sites[0].saturated_units"), "sites[0]"),
    "missing histogram counts": (_delete("sites[0].histogram.counts"), "sites[0].histogram"),
    "missing finding suggestion": (_delete("findings[0].suggestion"), "findings[0]"),
    "schema_version 2": (_set("schema_version", 2), "schema_version"),
    "schema_version as string": (_set("schema_version", "1"), "schema_version"),
    "tool name": (_set("tool.name", "other"), "tool.name"),
    "unknown model format": (_set("model.format", "pickle"), "model.format"),
    "sha256 not hex": (_set("model.sha256", "abc123"), "model.sha256"),
    "unknown method": (_set("model.method", "magic"), "model.method"),
    "inputs not a list": (_set("model.inputs", "x"), "model.inputs"),
    "samples float": (_set("calibration.samples", 48.5), "calibration.samples"),
    "samples negative": (_set("calibration.samples", -1), "calibration.samples"),
    "samples as string": (_set("calibration.samples", "48"), "calibration.samples"),
    "synthetic not bool": (_set("calibration.synthetic", 0), "calibration.synthetic"),
    "batch_size 0": (_set("calibration.batch_size", 0), "calibration.batch_size"),
    "near_dead 0": (_set("thresholds.near_dead", 0), "thresholds.near_dead"),
    "dormant_tau null": (_set("thresholds.dormant_tau", None), "thresholds.dormant_tau"),
    "unit_axis float": (_set("thresholds.unit_axis", 1.5), "thresholds.unit_axis"),
    "summary dead_units bool": (_set("summary.dead_units", True), "summary.dead_units"),
    "summary dead_ratio > 1": (_set("summary.dead_ratio", 1.5), "summary.dead_ratio"),
    "summary worst_site number": (_set("summary.worst_site", 3), "summary.worst_site"),
    "sites an object": (_set("sites", {}), "sites"),
    "site units string": (_set("sites[0].units", "10"), "sites[0].units"),
    "site units float": (_set("sites[0].units", 10.5), "sites[0].units"),
    "site name empty": (_set("sites[0].name", ""), "sites[0].name"),
    "dead_units strings": (_set("sites[0].dead_units", ["1"]), "sites[0].dead_units[0]"),
    "dead_units float": (_set("sites[0].dead_units", [1.5]), "sites[0].dead_units[0]"),
    "dead_units negative": (_set("sites[0].dead_units", [-1]), "sites[0].dead_units[0]"),
    "dead_units repeated": (_set("sites[0].dead_units", [1, 1]), "sites[0].dead_units"),
    "dead_units null": (_set("sites[0].dead_units", None), "sites[0].dead_units"),
    "dead_ratio negative": (_set("sites[0].dead_ratio", -0.1), "sites[0].dead_ratio"),
    "dead_ratio null": (_set("sites[0].dead_ratio", None), "sites[0].dead_ratio"),
    "activation_rate > 1": (_set("sites[0].activation_rate[0]", 1.5), "sites[0].activation_rate[0]"),
    "activation_rate string": (_set("sites[0].activation_rate[0]", "0.5"), "sites[0].activation_rate[0]"),
    "activation_rate null": (_set("sites[0].activation_rate[0]", None), "sites[0].activation_rate[0]"),
    "max_preactivation string": (_set("sites[0].max_preactivation[0]", "1"), "sites[0].max_preactivation[0]"),
    "dormant_score negative": (_set("sites[0].dormant_score[0]", -1.0), "sites[0].dormant_score[0]"),
    "saturated_units string": (_set("sites[0].saturated_units", "none"), "sites[0].saturated_units"),
    "saturated_units bools": (_set("sites[3].saturated_units", [True]), "sites[3].saturated_units"),
    "min_preactivation strings": (_set("sites[3].min_preactivation", ["0"]), "sites[3].min_preactivation"),
    "shape floats": (_set("sites[0].shape", [10.5]), "sites[0].shape[0]"),
    "histogram counts float": (_set("sites[0].histogram.counts[0]", 0.5), "sites[0].histogram.counts[0]"),
    "histogram counts negative": (_set("sites[0].histogram.counts[0]", -1), "sites[0].histogram.counts[0]"),
    "histogram a list": (_set("sites[0].histogram", []), "sites[0].histogram"),
    "finding severity": (_set("findings[0].severity", "fatal"), "findings[0].severity"),
    "finding evidence list": (_set("findings[0].evidence", []), "findings[0].evidence"),
    "finding site number": (_set("findings[0].site", 0), "findings[0].site"),
    "finding rule with spaces": (_set("findings[0].rule", "Dead Units"), "findings[0].rule"),
    "unobserved entry without reason": (_set("unobserved_sites", [{"name": "a", "op": "relu"}]),
                                        "unobserved_sites[0]"),
    "warnings numbers": (_set("warnings", [1]), "warnings[0]"),
    "report a list": (lambda d: None, None),  # replaced below: the whole report is not an object
}


@pytest.fixture(scope="module")
def base(reports) -> dict:
    d = reports["mlp-export"].to_dict()
    assert d["findings"] and d["sites"][3]["upper_bound"] is not None
    validate(d)
    return d


@pytest.mark.parametrize("use_jsonschema", VALIDATORS)
@pytest.mark.parametrize("name", list(MUTATIONS))
def test_mutated_reports_fail(base, name, use_jsonschema):
    mutate, where = MUTATIONS[name]
    d = copy.deepcopy(base)
    if name == "report a list":
        d = [d]
    else:
        mutate(d)
    with pytest.raises(ReportValidationError) as caught:
        validate(d, use_jsonschema=use_jsonschema)
    error = caught.value
    assert str(error).startswith("report does not match the reludoctor report schema: ")
    assert error.errors and error.path
    if where:
        assert error.path == where, str(error)
    elif name.startswith("missing "):
        assert error.path == "(root)" and repr(name.split()[1]) in str(error)


@pytest.mark.parametrize("use_jsonschema", VALIDATORS)
def test_additive_changes_keep_validating(base, use_jsonschema):
    d = copy.deepcopy(base)
    d["timings"] = {"seconds": 1.5}
    d["model"]["framework_version"] = "2.14.1"
    d["sites"][0]["gradient_rate"] = [0.5] * d["sites"][0]["units"]
    d["summary"]["new_total"] = 3
    d["findings"][0]["links"] = ["https://example.org"]
    validate(d, use_jsonschema=use_jsonschema)


@pytest.mark.parametrize("use_jsonschema", VALIDATORS)
def test_nulls_the_producer_may_write_are_accepted(base, use_jsonschema):
    d = copy.deepcopy(base)
    d["sites"][0]["max_preactivation"][0] = None  # a non-finite extreme has no JSON form
    d["sites"][3]["min_preactivation"][0] = None
    d["summary"]["worst_site"] = None
    d["thresholds"]["unit_axis"] = 2
    d["unobserved_sites"] = [{"name": "branch", "op": "relu", "reason": "never executed"}]
    d["summary"]["unobserved_sites"] = 1
    validate(d, use_jsonschema=use_jsonschema)


def test_every_error_is_reported(base):
    d = copy.deepcopy(base)
    d["sites"][0]["units"] = "10"
    d["calibration"]["synthetic"] = "no"
    for use_jsonschema in VALIDATORS:
        with pytest.raises(ReportValidationError) as caught:
            validate(d, use_jsonschema=use_jsonschema)
        assert len(caught.value.errors) == 2
        assert "(and 1 more)" in str(caught.value)


# --- the schema itself ----------------------------------------------------------------------


def test_schema_is_a_valid_draft_2020_12_schema():
    schema = load_schema()
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    jsonschema = pytest.importorskip("jsonschema")
    jsonschema.Draft202012Validator.check_schema(schema)


def test_load_schema_returns_a_fresh_copy():
    schema = load_schema()
    schema["properties"].clear()
    assert load_schema()["properties"]


def test_schema_file_is_package_data():
    from importlib import resources

    text = resources.files("reludoctor.report").joinpath("report.schema.json").read_text("utf-8")
    assert json.loads(text) == load_schema()


def _fields(cls) -> set[str]:  # noqa: ANN001
    return {f.name for f in dataclasses.fields(cls)}


@pytest.mark.parametrize("pointer, cls", [
    ("", report_module.Report),
    ("properties/model", report_module.ModelInfo),
    ("properties/calibration", report_module.CalibrationInfo),
    ("properties/thresholds", report_module.Thresholds),
    ("properties/summary", report_module.Summary),
    ("$defs/site", report_module.SiteStats),
    ("$defs/histogram", report_module.Histogram),
    ("$defs/site_accumulators", report_module.SiteAccumulators),
    ("$defs/finding", report_module.Finding),
    ("$defs/unobserved_site", report_module.UnobservedSite),
    ("$defs/profile", report_module.ActivationProfile),
    ("$defs/layer_profile", report_module.LayerProfile),
    ("$defs/hot_set", report_module.HotSet),
    ("$defs/ablation", report_module.Ablation),
    ("$defs/ablation_change", report_module.AblationChange),
    ("$defs/site_ablation", report_module.SiteAblation),
    ("$defs/site_ablation/properties/units/items", report_module.AblatedUnit),
    ("$defs/slices", report_module.SlicesSummary),
    ("$defs/site_slices", report_module.SiteSlices),
    ("$defs/specialised_unit", report_module.SpecialisedUnit),
    ("$defs/dead_points", report_module.DeadPoints),
])
def test_schema_requires_exactly_the_report_fields(pointer, cls):
    """The schema and report.py stay in step: every field is described and required (a v1
    report always has every key, except the conditional ones (report.model.CONDITIONAL_KEYS);
    removing one bumps the version)."""
    node = load_schema()
    for part in filter(None, pointer.split("/")):
        node = node[part]
    assert set(node["required"]) == _fields(cls) - report_module.CONDITIONAL_KEYS
    assert set(node["properties"]) == _fields(cls)


def test_schema_version_matches_the_report_module():
    assert load_schema()["properties"]["schema_version"] == {"const": report_module.SCHEMA_VERSION}


def test_fallback_checker_refuses_keywords_it_does_not_know(monkeypatch, base):
    import reludoctor.report.schema as schema_module

    schema = load_schema()
    schema["properties"]["device"] = {"type": "string", "if": {"const": "cpu"}}
    monkeypatch.setattr(schema_module, "load_schema", lambda name=None: schema)
    with pytest.raises(NotImplementedError, match="'if'"):
        validate(copy.deepcopy(base), use_jsonschema=False)


def test_validating_does_not_import_torch(tmp_path, base):
    path = tmp_path / "report.json"
    path.write_text(json.dumps(base))
    code = ("import json, sys; from reludoctor.report.schema import validate; "
            f"validate(json.load(open({str(path)!r}))); validate(json.load(open({str(path)!r})), "
            "use_jsonschema=False); assert 'torch' not in sys.modules")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr


def test_schema_ships_in_the_wheel(tmp_path):
    pytest.importorskip("setuptools")
    source = tmp_path / "src"
    source.mkdir()
    shutil.copy(REPO / "pyproject.toml", source)
    shutil.copytree(REPO / "reludoctor", source / "reludoctor",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
         "-q", "-w", str(tmp_path / "dist")],
        capture_output=True, text=True, timeout=120)
    if proc.returncode != 0:
        pytest.skip(f"cannot build a wheel here: {proc.stderr.strip().splitlines()[-1:]}")
    (wheel,) = (tmp_path / "dist").glob("reludoctor-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        assert "reludoctor/report/report.schema.json" in names
        assert "reludoctor/report/schema.py" in names
        shipped = json.loads(archive.read("reludoctor/report/report.schema.json"))
    assert shipped == load_schema()


def test_float_fields_are_finite_in_real_reports(reports):
    """Only pre-activation extremes may be null (non-finite); every other float is finite."""
    for name, report in reports.items():
        d = report.to_dict()
        for site in d["sites"]:
            for key in ("dead_ratio", "lower_bound"):
                assert math.isfinite(site[key]), (name, key)
            assert all(math.isfinite(v) for v in site["activation_rate"] + site["dormant_score"])
