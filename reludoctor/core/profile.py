"""Neuron activation profiles of a language model's FFN sites (hot and cold neurons).

A token site is a site whose units are the features of a sequence of tokens: an activation
[N, T, F] with the units on the last axis, or [N*T, F] where the model flattened the tokens
into the batch axis before its FFN (OPT does), which shows as a site that saw more rows than
the scan had samples (or, with padding masked, more token positions than samples). Everything here derives from the exact positive counts the scan keeps
(``SiteStats.accumulators.positive_count``, over ``positions`` tokens), so a profile of a
merged report is the profile of the whole data.
"""

from __future__ import annotations

import re

import numpy as np

from reludoctor.report.model import ActivationProfile, HotSet, LayerProfile, SiteStats

# Hot sets: the fewest neurons covering these percentages of all a layer's activations.
COVERAGE_PERCENTS = (80, 90, 99)
_INDEX = re.compile(r"\d+")


def block_index(module: str) -> int | None:
    """The transformer block index in a module path: its first all-digit component
    (``model.decoder.layers.3.activation_fn`` -> 3); None when it has none."""
    for part in module.split("."):
        if _INDEX.fullmatch(part):
            return int(part)
    return None


def is_token_site(site: SiteStats, samples: int) -> bool:
    """Whether the site's units are features of tokens ([N, T, F] units last, or [N*T, F])."""
    if site.accumulators is None or site.units == 0:
        return False
    if len(site.shape) == 2:
        return site.unit_axis in (2, -1)
    # [N*T, F]: more rows than samples, or (padding masked: rows counted as samples) more
    # observed positions than samples
    return len(site.shape) == 1 and (site.samples > samples or site.positions > site.samples)


def positive_counts(site: SiteStats) -> np.ndarray:
    """Per neuron: the tokens on which it fired (the scan's exact count), int64."""
    assert site.accumulators is not None
    return np.asarray(site.accumulators.positive_count, dtype=np.int64)


def hot_set_size(counts: np.ndarray, percent: int) -> int:
    """The fewest neurons whose counts sum to at least ``percent``% of all counts (0 when
    nothing fired). Exact in integers; ties in the sort do not change the size."""
    total = int(counts.sum())
    if total == 0:
        return 0
    covered = np.cumsum(np.sort(counts)[::-1]) * 100
    return int(np.searchsorted(covered, percent * total, side="left")) + 1


def layer_profile(site: SiteStats) -> LayerProfile:
    counts = positive_counts(site)
    tokens = site.positions
    neurons = site.units
    fired = int(counts.sum())
    pairs = tokens * neurons
    active = fired / pairs if pairs else 0.0  # = mean over tokens of (active neurons / F)
    return LayerProfile(
        site=site.name,
        module=site.module,
        layer=block_index(site.module),
        neurons=neurons,
        tokens=tokens,
        activations=fired,
        sparsity=1.0 - active if pairs else 0.0,
        mean_active_neurons=fired / tokens if tokens else 0.0,
        mean_active_fraction=active,
        hot=tuple(HotSet(p / 100, hot_set_size(counts, p)) for p in COVERAGE_PERCENTS),
        dead_neurons=int((counts == 0).sum()),
    )


def build(sites: tuple[SiteStats, ...] | list[SiteStats], samples: int) -> ActivationProfile | None:
    """The profile of every token site, in site order; None when the model has none (a CNN or
    an MLP), so their reports carry no ``profile`` key."""
    layers = tuple(layer_profile(s) for s in sites if is_token_site(s, samples))
    if not layers:
        return None
    pairs = sum(layer.tokens * layer.neurons for layer in layers)
    fired = sum(layer.activations for layer in layers)
    return ActivationProfile(layers=layers, sparsity=1.0 - fired / pairs if pairs else 0.0)
