"""Per-layer activation counts in PowerInfer's layout (``scan --export-activations DIR``).

PowerInfer (github.com/SJTU-IPADS/PowerInfer, ``powerinfer-py/powerinfer/``) places hot neurons
on the GPU from one file per transformer block, ``activation_{i}.pt``: a 1-D tensor with one
activation count per FFN neuron, read with ``torch.load``. ``solver.py`` opens
``activation_{i}.pt`` for i in 0..layers-1; ``export_split.py`` keeps the folder's names that
``re.match(r"activation_\\d+.pt")`` accepts and sorts them as strings, so with 11 or more layers
``activation_10.pt`` comes before ``activation_2.pt``. ``naming="index"`` (the default) writes the
names the solver opens; ``naming="padded"`` zero-pads the index so a string sort is also the
numeric order (right for export_split and any reader that sorts, but the solver cannot open them).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

from reludoctor import safeio
from reludoctor.errors import ReludoctorError, UsageError
from reludoctor.report.model import LayerProfile, Report

INDEX_NAME = "reludoctor-activations.json"
NAMINGS = ("index", "padded")
OPTION = "--export-activations"
# What PowerInfer's export_split.py reads as a layer file: a prefix match, as it does it.
_READ_BY_POWERINFER = re.compile(r"activation_\d+.pt")
_INDEX_LIMIT = 16 * 1024 * 1024  # a previous index is untrusted: read at most this much


@dataclass(frozen=True)
class ExportedLayer:
    layer: int
    file: str
    site: str
    neurons: int
    tokens: int
    sha256: str


def _check_naming(naming: str) -> None:
    if naming not in NAMINGS:
        raise UsageError(f"--export-naming {naming!r}: choose one of {', '.join(NAMINGS)}")


def check_folder(folder: str | Path, naming: str, inputs: list[str | Path | None]) -> Path:
    """Before the scan reads anything: refuse (exit 2) an unknown naming, a DIR that exists as
    anything but a folder, or that is one of the run's inputs."""
    _check_naming(naming)
    path = Path(folder)
    hit = safeio.would_overwrite(path, inputs)
    if hit is not None:
        raise UsageError(f"{OPTION} {folder} is an input of this run ({hit})", "choose a new folder")
    if path.exists() and not path.is_dir():
        raise UsageError(f"{OPTION} {folder} exists and is not a folder", "choose a folder")
    return path


def file_name(layer: int, naming: str, width: int) -> str:
    return f"activation_{layer:0{width}d}.pt" if naming == "padded" else f"activation_{layer}.pt"


def _layers(report: Report, warn: Callable[[str], None]) -> list[LayerProfile]:
    """The profiled sites that get a file: one per block index, in site order."""
    if report.profile is None:
        raise ReludoctorError(f"{OPTION}: the model has no FFN (token) site to export",
                              "a site's activation must be [N, T, F] (units last) or [N*T, F]")
    chosen: dict[int, LayerProfile] = {}
    for layer in report.profile.layers:
        if layer.layer is None:
            warn(f"{OPTION}: site {layer.site} is left out: its module path has no block index")
        elif layer.layer in chosen:
            warn(f"{OPTION}: site {layer.site} is left out: block {layer.layer} already has "
                 f"{chosen[layer.layer].site} (one file per block)")
        else:
            chosen[layer.layer] = layer
    if not chosen:
        raise ReludoctorError(f"{OPTION}: no FFN site has a block index in its module path",
                              "PowerInfer needs one file per transformer block")
    indices = sorted(chosen)
    if indices != list(range(len(indices))):
        warn(f"{OPTION}: the blocks exported are {indices}, not 0..{len(indices) - 1}: "
             "PowerInfer's solver opens activation_0.pt .. activation_{layers-1}.pt")
    return [chosen[i] for i in indices]


def _previous(folder: Path) -> set[str]:
    """The layer files a previous export listed in its index (names only, inside ``folder``)."""
    try:
        data = json.loads(safeio.read_limited(folder / INDEX_NAME, _INDEX_LIMIT, "export index"))
        names = {entry["file"] for entry in data["layers"]}
    except (OSError, ValueError, KeyError, TypeError, ReludoctorError):
        return set()
    return {n for n in names if isinstance(n, str) and _READ_BY_POWERINFER.match(n) and "/" not in n}


def export(report: Report, folder: str | Path, naming: str = "index",
           warn: Callable[[str], None] | None = None) -> list[ExportedLayer]:
    """Write one ``activation_{i}.pt`` (int64 [neurons]: tokens on which each neuron fired) per
    block, then the index ``reludoctor-activations.json``; each file atomically.

    Existing files: layer files a previous export listed in its index are replaced, and removed
    when this export has no such layer (PowerInfer would read a stale one as a layer); any other
    file PowerInfer would read as a layer is refused (exit 2), never overwritten; other files
    are left alone."""
    import torch

    _check_naming(naming)
    say = warn or (lambda message: None)
    folder = Path(folder)
    layers = _layers(report, say)
    width = len(str(layers[-1].layer))
    names = [file_name(layer.layer, naming, width) for layer in layers]  # type: ignore[arg-type]
    if naming == "index" and len(layers) > 10:
        say(f"{OPTION}: PowerInfer's export_split.py sorts these names as strings (activation_10.pt "
            "before activation_2.pt); --export-naming padded sorts right, but solver.py opens "
            "unpadded names")
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ReludoctorError(f"cannot create {OPTION} {folder}: {safeio.os_reason(exc)}") from None
    ours = _previous(folder)
    foreign = sorted(n for n in os.listdir(folder)
                     if _READ_BY_POWERINFER.match(n) and n not in ours)
    if foreign:
        raise UsageError(f"{OPTION} {folder} holds activation files reludoctor did not write "
                         f"({', '.join(foreign[:3])}{', ...' if len(foreign) > 3 else ''})",
                         "choose an empty folder: PowerInfer would read every one as a layer")
    # First an index naming every file this export may leave behind, so that an interrupted
    # export is still ours to replace on the next run (not refused as someone else's).
    _write_index(folder, {"format": "powerinfer-activations", "complete": False,
                          "layers": [{"file": name} for name in sorted(ours | set(names))]})
    sites = {site.name: site for site in report.sites}
    exported = []
    for layer, name in zip(layers, names):
        counts = sites[layer.site].accumulators.positive_count  # type: ignore[union-attr]
        with safeio.atomic_path(folder / name, OPTION) as temp:  # ".activation_..." temp names:
            torch.save(torch.tensor(counts, dtype=torch.int64), temp)  # PowerInfer skips them
            digest = hashlib.sha256(temp.read_bytes()).hexdigest()
        exported.append(ExportedLayer(layer.layer, name, layer.site, layer.neurons,  # type: ignore[arg-type]
                                      layer.tokens, digest))
    for stale in sorted(ours - set(names)):  # before the new index forgets them
        path = folder / stale
        if path.is_file() and not path.is_symlink():
            path.unlink()
    _write_index(folder, {"format": "powerinfer-activations", "complete": True, "naming": naming,
                          "dtype": "int64",
                          "model": {"path": report.model.path, "sha256": report.model.sha256},
                          "layers": [asdict(e) for e in exported]})
    return exported


def _write_index(folder: Path, index: dict) -> None:
    with safeio.atomic_path(folder / INDEX_NAME, OPTION) as temp:
        temp.write_text(json.dumps(index, indent=2) + "\n", encoding="utf-8")
