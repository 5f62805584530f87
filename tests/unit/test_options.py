"""ScanOptions and FixOptions: one place for every setting and its default, merged with keywords
without touching the caller's object, strings checked into enums at the boundary."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from reludoctor.errors import UsageError
from reludoctor.options import DType, FixOptions, Method, ModelFormat, ScanOptions


def test_keywords_merge_into_a_copy():
    mine = ScanOptions(batch_size=8)
    merged = ScanOptions.merged(mine, {"limit": 5}, "scan")
    assert (merged.batch_size, merged.limit) == (8, 5)
    assert mine.limit is None, "the caller's options must not change"
    assert ScanOptions.merged(None, {}, "scan") == ScanOptions()
    with pytest.raises(TypeError, match="scan\\(\\) got unexpected keyword argument\\(s\\): bogus"):
        ScanOptions.merged(None, {"bogus": 1}, "scan")
    assert FixOptions.merged(None, {"strategy": "leaky", "alpha": 0.1}, "fix").alpha == 0.1


def test_check_turns_strings_into_enums_and_refuses_bad_values():
    checked = ScanOptions(method="dispatch", dtype="bfloat16").check()
    assert checked.method is Method.DISPATCH and checked.dtype is DType.BF16
    for bad, option in (({"method": "trace"}, "--method"), ({"dtype": "fp8"}, "--dtype"),
                        ({"batch_size": 0}, "--batch-size"), ({"near_dead": float("nan")}, "--near-dead"),
                        ({"dormant_tau": -1.0}, "--dormant-tau"), ({"labels": "x.npy"}, "--labels")):
        with pytest.raises(UsageError, match=option):
            ScanOptions(**bad).check()


def test_enums_serialise_as_their_values():
    import json

    assert json.dumps({"f": ModelFormat.ONNX, "m": Method.EXPORT}) == '{"f": "onnx", "m": "export"}'
    assert f"{DType.FP16}" == "fp16" and ModelFormat.STATE_DICT == "state-dict"


def test_the_command_line_shows_the_options_defaults():
    """typer reads its defaults from ScanOptions: the two cannot drift apart."""
    from reludoctor import cli

    params = inspect.signature(cli.scan).parameters
    defaults = ScanOptions()
    for name in ("device", "near_dead", "dormant_tau", "seed", "method"):
        assert params[name].default.default == getattr(defaults, name), name


def test_an_options_object_and_keywords_give_the_same_report(one_thread_seeded):
    import torch

    import reludoctor

    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2))
    data = np.random.default_rng(0).standard_normal((40, 4)).astype("float32")
    by_keywords = reludoctor.scan(model, data, batch_size=16, near_dead=0.05, method="dispatch")
    options = ScanOptions(batch_size=16, near_dead=0.05, method=Method.DISPATCH)
    by_object = reludoctor.scan(model, data, options)
    assert by_object.to_json() == by_keywords.to_json()
    assert options.method is Method.DISPATCH and options.trust_model is False  # not changed
