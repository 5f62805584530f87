"""The HTML report's plots of a language model's neuron activation profile: sparsity along
depth, and each layer's neuron frequencies sorted (the hot/cold view). Drawn with the report's
helpers (``plots``), so they look and serialise like its other figures.
"""

from __future__ import annotations

import numpy as np

from reludoctor.report.model import LayerProfile, Report
from reludoctor.reporters.plots import ALIVE, DEAD, _figure, _percent_formatter, _rc, _svg, short

MAX_LABELLED_LAYERS = 40


def _names(layers: tuple[LayerProfile, ...]) -> list[str]:
    return [short(layer.site) if layer.layer is None else str(layer.layer) for layer in layers]


def sparsity(report: Report) -> str | None:
    """Per FFN site in order: the share of (token, neuron) pairs that did not fire, and the share
    of neurons that never fired."""
    if report.profile is None:
        return None
    layers = report.profile.layers
    with _rc():
        figure = _figure(10, 3.0)
        ax = figure.add_subplot()
        x = range(len(layers))
        ax.plot(x, [layer.sparsity for layer in layers], marker="o", markersize=3.5, color=ALIVE,
                label="sparsity (pairs not fired)")
        ax.plot(x, [layer.dead_neurons / layer.neurons if layer.neurons else 0.0 for layer in layers],
                marker=".", color=DEAD, linestyle="--", label="dead neurons")
        ax.set_ylim(-0.02, 1.02)
        ax.yaxis.set_major_formatter(_percent_formatter())
        if len(layers) <= MAX_LABELLED_LAYERS:
            ax.set_xticks(list(x), _names(layers), fontsize=7.5)
        ax.set_xlabel("layer (transformer block)")
        ax.set_title("Sparsity of each FFN layer along depth")
        ax.legend(loc="lower right", fontsize=7.5)
        return _svg(figure)


def frequencies(report: Report) -> str | None:
    """Per FFN site, its neurons' activation frequencies sorted high to low against the neuron's
    rank as a share of the layer: a steep head is a small hot set."""
    if report.profile is None:
        return None
    import matplotlib
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import Normalize

    colours = matplotlib.colormaps["viridis"]
    layers = report.profile.layers
    with _rc():
        figure = _figure(10, 3.4)
        ax = figure.add_subplot()
        for i, layer in enumerate(layers):
            rates = np.sort(np.asarray(report.site(layer.site).activation_rate))[::-1]
            rank = (np.arange(len(rates)) + 0.5) / max(len(rates), 1)
            ax.plot(rank, rates, color=colours(i / max(len(layers) - 1, 1)), linewidth=1.1)
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.xaxis.set_major_formatter(_percent_formatter())
        ax.yaxis.set_major_formatter(_percent_formatter())
        ax.set_xlabel("neurons, most active first (share of the layer)")
        ax.set_ylabel("activation frequency over tokens")
        ax.set_title("Neuron activation frequency per layer (sorted)")
        figure.colorbar(ScalarMappable(Normalize(0, max(len(layers) - 1, 1)), colours), ax=ax,
                        label="FFN site, first to last")  # one colour per layer, by depth
        return _svg(figure)
