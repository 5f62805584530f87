"""An independent oracle for per-slice liveness and dead points: the pre-activations captured
with forward pre-hooks on the ReLU modules (the whole data in one forward, unbatched), reduced
per sample and per slice with numpy."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch


@dataclass
class Expected:
    ids: list[int]
    samples: np.ndarray  # [S]
    positions: np.ndarray  # [S]
    positive: np.ndarray  # [S, U]
    dead_points: int


def preactivations(model: torch.nn.Module, *inputs: torch.Tensor) -> list[np.ndarray]:
    """Every nn.ReLU/ReLU6 module's input, in call order, over one forward of all samples."""
    captured: list[np.ndarray] = []
    hooks = [m.register_forward_pre_hook(lambda _m, args: captured.append(args[0].detach().numpy().copy()))
             for m in model.modules() if isinstance(m, (torch.nn.ReLU, torch.nn.ReLU6))]
    try:
        with torch.no_grad():
            model(*inputs)
    finally:
        for hook in hooks:
            hook.remove()
    return captured


def per_sample_fired(pre: np.ndarray, unit_axis: int, lower: float = 0.0,
                     mask: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """([N, U] positions that fired per sample and unit, [N] observed positions per sample)."""
    moved = np.moveaxis(pre, unit_axis, -1)  # [N, ..., U]
    fired = moved > lower
    real = np.ones(moved.shape[:-1], bool) if mask is None else \
        np.broadcast_to(mask.reshape(mask.shape + (1,) * (moved.ndim - 1 - mask.ndim)), moved.shape[:-1])
    fired = fired & real[..., None]
    n = pre.shape[0]
    return fired.reshape(n, -1, moved.shape[-1]).sum(1), real.reshape(n, -1).sum(1)


def expected(pre: np.ndarray, labels: np.ndarray, unit_axis: int, lower: float = 0.0,
             mask: np.ndarray | None = None) -> Expected:
    counts, positions = per_sample_fired(pre, unit_axis, lower, mask)
    ids = sorted(set(int(v) for v in labels))
    S, U = len(ids), counts.shape[1]
    out = Expected(ids, np.zeros(S, np.int64), np.zeros(S, np.int64), np.zeros((S, U), np.int64),
                   int((counts.sum(1) == 0).sum()))
    for n, label in enumerate(labels):
        s = ids.index(int(label))
        out.samples[s] += 1
        out.positions[s] += positions[n]
        out.positive[s] += counts[n]
    return out


def check_site(site, want: Expected) -> None:  # noqa: ANN001
    """A report site's slices and dead points against the oracle, every derived key too."""
    got = site.slices
    assert list(got.ids) == want.ids, site.name
    np.testing.assert_array_equal(np.array(got.positive_count), want.positive, err_msg=site.name)
    np.testing.assert_array_equal(got.samples, want.samples, err_msg=site.name)
    np.testing.assert_array_equal(got.positions, want.positions, err_msg=site.name)
    dead = (want.positive == 0) & (want.samples > 0)[:, None]
    assert list(got.dead_units) == list(dead.sum(1)), site.name
    ratios = [d / want.positive.shape[1] if s else None for d, s in zip(dead.sum(1), want.samples)]
    assert list(got.dead_ratio) == ratios, site.name
    alive = want.positive > 0
    assert list(got.dead_on_every_slice) == [u for u in range(alive.shape[1]) if not alive[:, u].any()]
    assert list(got.dead_on_every_slice) == list(site.dead_units)  # every sample is in one slice
    special = {u: [want.ids[s] for s in np.flatnonzero(alive[:, u])]
               for u in range(alive.shape[1]) if alive[:, u].any() and dead[:, u].any()}
    assert {x.unit: list(x.alive_on) for x in got.specialised_units} == special, site.name
    check_points(site, want.dead_points)


def check_points(site, count: int) -> None:  # noqa: ANN001
    assert site.dead_points.count == count, site.name
    assert site.dead_points.samples == site.samples
    assert site.dead_points.fraction == count / site.samples
