"""Interval bound propagation against an independent oracle: plain forward hooks on the model
at thousands of random inputs inside the box and at its corners. Every sampled pre-activation
must lie within the propagated bounds (soundness)."""

from __future__ import annotations

import itertools

import pytest
import torch
from cert_models import MLP, SmallCNN, WithErf

from reludoctor.backends.torch import bounds
from reludoctor.backends.torch.export import activation_nodes


def _graph(model: torch.nn.Module, example: torch.Tensor, core_aten: bool = False):
    from torch.export import Dim

    program = torch.export.export(model, (example,), dynamic_shapes=({0: Dim("batch")},), strict=False)
    if core_aten:  # the ops of a decomposed .pt2: convolution, native batch norm, max pool with indices, addmm
        program = program.run_decompositions()
    return program.module()


def _propagate(graph_module, low, high):
    placeholder = next(n for n in graph_module.graph.nodes if n.op == "placeholder")
    box = bounds.Interval(low.double(), high.double())
    with torch.no_grad():
        env = bounds.propagate(graph_module, {placeholder.name: box})
    return [(name, bounds.as_interval(env[node.args[0]])) for node, _, _, name in activation_nodes(graph_module)]


def _preactivations(model: torch.nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Oracle: the input of every ReLU-family call in call order, by wrapping the functionals
    that nn.ReLU, nn.ReLU6, nn.Hardtanh and the models' own functional calls go through."""
    import torch.nn.functional as F

    seen: list[torch.Tensor] = []
    originals = {name: getattr(F, name) for name in ("relu", "hardtanh", "relu6")}

    def wrap(fn):
        def hooked(t, *args, **kwargs):
            seen.append(t.detach().clone())
            return fn(t, *args, **kwargs)
        return hooked

    try:
        for name, fn in originals.items():
            setattr(F, name, wrap(fn))
        with torch.no_grad():
            model(x)
    finally:
        for name, fn in originals.items():
            setattr(F, name, fn)
    return seen


def _check_sound(model, low, high, samples=2000, core_aten=False):
    model.eval()
    gen = torch.Generator().manual_seed(3)
    shape = low.shape[1:]
    x = low + (high - low) * torch.rand((samples, *shape), generator=gen)
    corners = [low + (high - low) * torch.tensor(c, dtype=low.dtype).reshape(low.shape[1:]) for c in
               itertools.islice(itertools.product((0.0, 1.0), repeat=low[0].numel()), 256)]
    x = torch.cat([x, torch.cat(corners)]) if corners else x
    propagated = _propagate(_graph(model, x[:2], core_aten), low, high)
    observed = _preactivations(model, x)
    assert len(observed) == len(propagated)
    for (name, interval), pre in zip(propagated, observed):
        assert isinstance(interval, bounds.Interval), (name, interval)
        assert interval.lo.shape[1:] == pre.shape[1:], name
        lo, hi = interval.lo.float(), interval.hi.float()
        assert bool((pre >= lo).all()), f"{name}: a sample below the lower bound"
        assert bool((pre <= hi).all()), f"{name}: a sample above the upper bound"
        assert bool((lo <= hi).all())
    return propagated, observed


@pytest.mark.parametrize("core_aten", [False, True], ids=["export", "core-aten"])
def test_cnn_with_batchnorm_maxpool_and_residual_is_sound(core_aten):
    low, high = torch.full((1, 3, 8, 8), -1.0), torch.full((1, 3, 8, 8), 2.0)
    _check_sound(SmallCNN(), low, high, samples=3000, core_aten=core_aten)


def test_mlp_is_sound_and_tight_enough_to_be_useful():
    low, high = torch.full((1, 10), -1.0), torch.full((1, 10), 1.0)
    model = MLP()
    propagated, _ = _check_sound(model, low, high, samples=4000)
    # the first layer's bounds on [-1, 1]^10 are b +- |W| 1, exactly, up to the widening
    layer = model.net[0]
    exact = layer.bias.detach().double() + layer.weight.detach().double().abs().sum(1)
    assert torch.allclose(propagated[0][1].hi[0], exact, rtol=1e-4, atol=1e-5)


def test_point_box_is_the_forward_pass():
    model = SmallCNN().eval()
    x = torch.rand(1, 3, 8, 8)
    propagated = _propagate(_graph(model, torch.cat([x, x])), x, x)
    for (_, interval), pre in zip(propagated, _preactivations(model, x)):
        assert torch.allclose(interval.lo.float(), pre, atol=1e-3)
        assert torch.allclose(interval.hi.float(), pre, atol=1e-3)


def test_unsupported_op_makes_downstream_sites_not_certifiable_naming_the_op():
    model = WithErf().eval()
    (first, before), (second, after) = _propagate(_graph(model, torch.rand(2, 4)), torch.zeros(1, 4),
                                                  torch.ones(1, 4))
    assert isinstance(before, bounds.Interval)
    assert isinstance(after, bounds.Unsupported)
    assert "erf" in after.reason


@pytest.mark.parametrize("op", [torch.nn.functional.hardswish, torch.sigmoid, torch.tanh])
def test_elementwise_rules_bound_a_dense_grid(op):
    grid = torch.linspace(-5, 5, 201)
    for lo, hi in itertools.combinations(grid[::20].tolist(), 2):
        class Op(torch.nn.Module):
            def forward(self, x):
                return torch.relu(op(x))

        inside = torch.linspace(lo, hi, 101).reshape(-1, 1)
        (_, interval), = _propagate(_graph(Op(), inside[:2]), torch.tensor([[lo]]), torch.tensor([[hi]]))
        values = op(inside)
        assert float(interval.lo) <= float(values.min()) and float(values.max()) <= float(interval.hi)


def test_a_view_read_after_an_inplace_op_is_not_bounded():
    class Aliased(torch.nn.Module):
        """v is a view of y taken before relu_ changes y: v's graph node shows the old value."""

        def forward(self, x):
            y = x * 2 - 1
            v = y.view(-1, 4)
            torch.relu_(y)
            return torch.relu(v - 0.5)

    (_, first), (_, second) = _propagate(_graph(Aliased(), torch.rand(2, 4)), torch.zeros(1, 4), torch.ones(1, 4))
    assert isinstance(first, bounds.Interval)
    assert isinstance(second, bounds.Unsupported) and "in-place" in second.reason


def test_casts_to_half_precision_are_widened_and_to_integers_unsupported():
    class Half(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu(x.to(torch.float16).to(torch.float32) * 1000 - 500)

    class Integer(torch.nn.Module):
        def forward(self, x):
            return torch.nn.functional.relu(x.to(torch.int64).to(torch.float32))

    # float16 rounds 0.9999 up to 1: without the widening the top corner would exceed the bound
    low, high = torch.zeros(1, 4), torch.full((1, 4), 0.9999)
    x = torch.cat([high, torch.rand(4095, 4) * 0.9999])
    ((_, interval),) = _propagate(_graph(Half(), x[:2]), low, high)
    (pre,) = _preactivations(Half(), x)
    assert bool((pre <= interval.hi.float()).all()) and bool((pre >= interval.lo.float()).all())
    ((_, integer),) = _propagate(_graph(Integer(), x[:2]), low, high)
    assert isinstance(integer, bounds.Unsupported)
