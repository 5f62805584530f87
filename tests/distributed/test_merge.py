"""`reludoctor merge`: reports of scans over disjoint parts of the data against one scan over
their union (the independent oracle), for torch.export, TorchDispatchMode and ONNX models; and
the refusals, each one line on stderr with exit code 2."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from reludoctor import scan
from reludoctor.cli import app
from reludoctor.core.rules import evaluate
from reludoctor.report.baseline import load_report
from reludoctor.report.merge import GRADIENTS_DROPPED, MergeError, merge_files, merge_reports
from reludoctor.report.schema import validate
from tests.distributed.compare import MODELS, assert_same_sites

CASES = {  # model, data, batch size, part boundaries (multiples of the batch size), scan options
    "export": ("digits_cnn.pt2", "images", 25, (100, 200), {}),
    "dispatch": ("digits_cnn.pt2", "images", 32, (160,), {"method": "dispatch"}),
    "onnx": ("digits_mlp_dead.onnx", "flat", 32, (64, 288), {}),
}


def _save(tmp: Path, name: str, array: np.ndarray) -> str:
    path = tmp / f"{name}.npy"
    np.save(path, array)
    return str(path)


def _scan_parts(tmp: Path, model: str, data: np.ndarray, batch: int, cuts: tuple[int, ...],
                **options) -> list[str]:  # noqa: ANN003
    """Scan each part of ``data`` (split at ``cuts``) on its own; the paths of their reports."""
    paths = []
    for index, part in enumerate(np.split(data, list(cuts))):
        report = scan(str(MODELS / model), _save(tmp, f"part{index}", part), batch_size=batch,
                      device="cpu", **options)
        path = tmp / f"part{index}.json"
        path.write_text(report.to_json())
        paths.append(str(path))
    return paths


def _merge_cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["merge", *args], env={"COLUMNS": "120"})
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def parts(tmp_path_factory: pytest.TempPathFactory, images: np.ndarray, flat: np.ndarray) -> dict:
    """For each case: the part reports' paths, and the scan over the union."""
    out = {}
    arrays = {"images": images, "flat": flat}
    for name, (model, data, batch, cuts, options) in CASES.items():
        tmp = tmp_path_factory.mktemp(f"merge-{name}")
        union = scan(str(MODELS / model), _save(tmp, "union", arrays[data]), batch_size=batch,
                     device="cpu", **options)
        out[name] = (_scan_parts(tmp, model, arrays[data], batch, cuts, **options), union)
    return out


def _assert_merged_is_the_union(merged: dict, union) -> None:  # noqa: ANN001
    """Sites exactly (histograms included), summary, and the findings the rules give on the
    union's statistics (a merged report has no producer evidence: those rules stay silent)."""
    want = union.to_dict()
    validate(merged)
    assert_same_sites(merged, want)
    assert merged["summary"] == want["summary"]
    assert merged["calibration"]["samples"] == want["calibration"]["samples"] == 357
    assert merged["model"] == want["model"] and merged["thresholds"] == want["thresholds"]
    oracle = evaluate(union.sites, union.calibration, gradients=union.gradients)
    assert [(f.rule, f.site, f.message, f.suggestion) for f in oracle] == \
        [(f["rule"], f["site"], f["message"], f["suggestion"]) for f in merged["findings"]]


@pytest.mark.parametrize("case", list(CASES))
def test_merged_parts_equal_one_scan_over_the_union(parts, case, tmp_path):
    paths, union = parts[case]
    out = tmp_path / "merged.json"
    code, stdout, stderr = _merge_cli(*paths, "--json", str(out), "--format", "table")
    assert code == 0, stderr
    assert stderr == ""
    assert stdout.startswith(f"reludoctor {union.model.path}")  # the table, on stdout
    merged = json.loads(out.read_text())
    _assert_merged_is_the_union(merged, union)
    assert merged["calibration"]["source"] == " + ".join(
        json.loads(Path(p).read_text())["calibration"]["source"] for p in paths)
    assert load_report(out).summary == union.summary  # it reads back as a report


def test_merging_is_associative(parts, tmp_path):
    """A merged report merges again: (p0 + p1) + p2 == p0 + p1 + p2."""
    paths, union = parts["export"]
    first = tmp_path / "first.json"
    first.write_text(merge_files(paths[:2]).to_json())
    again = merge_files([str(first), paths[2]]).to_dict()
    _assert_merged_is_the_union(again, union)


def test_parts_not_split_on_batch_boundaries_merge_exactly_but_for_histograms(parts, images,
                                                                             tmp_path):
    """Parts of 160 and 197 samples in batches of 25: the batches differ from one scan's, so the
    histograms (a strided subsample of each batch) may differ, and the sums of |output| (float32
    per batch) differ in the last digits; the counts, extremes and dead sets are exact."""
    _, union = parts["export"]
    paths = _scan_parts(tmp_path, "digits_cnn.pt2", images, 25, (160,))
    merged = merge_files(paths).to_dict()
    want = union.to_dict()
    for site in merged["sites"] + want["sites"]:
        site.pop("histogram")
    assert_same_sites(merged, want, rel=1e-5)  # per-batch float32 partial sums differ
    assert merged["summary"] == want["summary"]


def test_a_site_only_some_parts_executed_is_merged_from_those(parts):
    """A site one part lists as unobserved takes the other parts' counts, in its place."""
    paths, union = parts["export"]
    reports = [load_report(p) for p in paths]
    skipped = reports[0].sites[2]
    first = replace(reports[0], sites=tuple(s for s in reports[0].sites if s is not skipped),
                    unobserved_sites=(replace_unobserved(skipped.name, skipped.op),))
    merged = merge_reports([first, *reports[1:]])
    assert [s.name for s in merged.sites] == [s.name for s in union.sites]
    alone = merge_reports(reports[1:]).site(skipped.name)
    assert merged.site(skipped.name).accumulators == alone.accumulators
    assert merged.site(skipped.name).max_preactivation == alone.max_preactivation
    assert merged.unobserved_sites == ()
    # unobserved everywhere: it stays unobserved, with one warning
    never = replace(reports[1], sites=tuple(s for s in reports[1].sites if s.name != skipped.name),
                    unobserved_sites=first.unobserved_sites)
    both = merge_reports([first, never])
    assert [u.name for u in both.unobserved_sites] == [skipped.name]
    assert sum(skipped.name in w for w in both.warnings) == 1
    assert both.summary.unobserved_sites == 1


def replace_unobserved(name: str, op: str):  # noqa: ANN201
    from reludoctor.report.model import UnobservedSite

    return UnobservedSite(name, op, "never executed on the calibration data")


def test_thresholds_come_from_the_first_report_with_a_warning(flat, tmp_path):
    model = str(MODELS / "digits_mlp_dead.pt2")
    first = scan(model, _save(tmp_path, "a", flat[:96]), batch_size=32, device="cpu")
    second = scan(model, _save(tmp_path, "b", flat[96:]), batch_size=32, device="cpu",
                  near_dead=0.05, dormant_tau=0.1)
    union = scan(model, _save(tmp_path, "u", flat), batch_size=32, device="cpu")
    warned: list[str] = []
    merged = merge_reports([first, second], ["a.json", "b.json"], warned.append)
    assert merged.thresholds == first.thresholds
    assert len(warned) == 1 and "--near-dead 0.05" in warned[0] and warned[0] in merged.warnings
    assert_same_sites(merged.to_dict(), union.to_dict())


def test_gradient_statistics_are_dropped_with_a_warning(flat, tmp_path):
    model = str(MODELS / "digits_mlp_dead.pt2")
    first = scan(model, _save(tmp_path, "a", flat[:96]), batch_size=32, device="cpu", gradients=True)
    second = scan(model, _save(tmp_path, "b", flat[96:]), batch_size=32, device="cpu")
    assert first.gradients.computed
    warned: list[str] = []
    merged = merge_reports([first, second], warn=warned.append)
    assert not merged.gradients.computed and merged.gradients.reason == GRADIENTS_DROPPED
    assert all(site.gradient is None for site in merged.sites)
    assert any("gradient statistics are dropped" in w for w in warned)
    validate(merged.to_dict())


# ----------------------------------------------------------------------------- refusals


def _edited(path: str, tmp: Path, edit) -> str:  # noqa: ANN001
    data = json.loads(Path(path).read_text())
    edit(data)
    out = tmp / f"edited-{Path(path).name}"
    out.write_text(json.dumps(data))
    return str(out)


def _refused(*args: str) -> str:
    code, stdout, stderr = _merge_cli(*args)
    assert code == 2, (code, stderr)
    assert stdout == ""
    assert len(stderr.strip().splitlines()) == 1, stderr
    assert stderr.startswith("reludoctor: error: ") and "Traceback" not in stderr
    return stderr


def test_refusals_are_one_line_with_exit_code_2(parts, tmp_path):
    cnn, _ = parts["export"]
    mlp, _ = parts["onnx"]
    a, b = cnn[0], cnn[1]
    assert "at least two reports, got 1" in _refused(a, "--json", str(tmp_path / "m.json"))
    assert "is given twice" in _refused(a, a)
    assert "not found" in _refused(a, str(tmp_path / "missing.json"))
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    assert "is not valid JSON" in _refused(a, str(bad))
    assert "different models" in _refused(a, mlp[0])

    def resize(data: dict) -> None:
        data["sites"][0]["units"] += 1

    assert "has units 16 in" in _refused(a, _edited(b, tmp_path, resize))

    def rename(data: dict) -> None:
        data["sites"][0]["name"] = "elsewhere"

    assert "is missing from" in _refused(a, _edited(b, tmp_path, rename))

    def older(data: dict) -> None:
        for site in data["sites"]:
            del site["accumulators"]

    assert "older reludoctor" in _refused(a, _edited(b, tmp_path, older))

    def other_axis(data: dict) -> None:
        data["thresholds"]["unit_axis"] = 1

    assert "different unit axis" in _refused(a, _edited(b, tmp_path, other_axis))

    def half(data: dict) -> None:
        data["dtype"] = "bfloat16"

    assert "different precision (--dtype)" in _refused(a, _edited(b, tmp_path, half))

    def in_memory(data: dict) -> None:
        data["model"]["sha256"] = None

    assert "in-memory model" in _refused(a, _edited(b, tmp_path, in_memory))


def test_synthetic_and_real_parts_are_refused(flat, tmp_path):
    model = str(MODELS / "digits_mlp_dead.pt2")
    real = tmp_path / "real.json"
    real.write_text(scan(model, _save(tmp_path, "a", flat[:64]), batch_size=32, device="cpu").to_json())
    synthetic = tmp_path / "synthetic.json"
    synthetic.write_text(scan(model, None, limit=64, device="cpu", on_warning=lambda _: None).to_json())
    assert "synthetic data" in _refused(str(real), str(synthetic))
    with pytest.raises(MergeError, match="at least two"):
        merge_reports([load_report(real)])


def test_merging_does_not_import_torch(parts):
    """merge reads JSON and adds numbers: no torch, onnx or onnxruntime import."""
    import subprocess
    import sys

    paths, _ = parts["onnx"]
    code = ("import sys; from reludoctor.report.merge import merge_files; "
            f"merge_files({paths!r}); "
            "assert not {'torch', 'onnx', 'onnxruntime'} & set(sys.modules), 'heavy import'")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
