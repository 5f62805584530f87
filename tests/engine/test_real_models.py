"""Real models as they are shipped, no wrappers (issue 11, section 1): the voice-activity models
of the ``silero-vad`` package (TorchScript and every ONNX file, stateful, ``sr`` a constant), tiny
random-init Hugging Face OPT and T5 with ReLU feed-forwards (``input_ids`` + ``attention_mask``,
every other parameter at its default), and a torchvision detection model fed a folder of images
(``forward(images: list[Tensor])``).

Oracles are independent of reludoctor: forward (pre-)hooks on the models' own modules, or
onnxruntime runs of the shipped graphs with the Relu inputs exposed, reduced with numpy/torch.
Nothing is downloaded: configs are built in code, silero-vad ships its files in the package.
"""

from __future__ import annotations

import importlib.resources
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import reludoctor  # noqa: E402

pytestmark = pytest.mark.slow

N_CHUNKS = 24
BATCH = 8


def _cli(*args: object):
    from typer.testing import CliRunner

    from reludoctor.cli import app

    return CliRunner().invoke(app, ["scan", *map(str, args)], env={"COLUMNS": "200"})


# ---------------------------------------------------------------------------- silero-vad


def _silero_files() -> list[Path]:
    pytest.importorskip("silero_vad")
    root = importlib.resources.files("silero_vad") / "data"
    return sorted(Path(str(entry)) for entry in root.iterdir() if entry.name.endswith((".onnx", ".jit")))


def _silero_onnx() -> list[str]:
    try:
        return [p.name for p in _silero_files() if p.suffix == ".onnx"]
    except pytest.skip.Exception:
        return ["silero-vad not installed"]


def _silero_data(model: Any, path: Path) -> tuple[dict[str, np.ndarray], list[str]]:
    """An .npz for one shipped ONNX file, as a user would write it from the declared inputs:
    audio chunks (512 samples at 16 kHz, or the declared width), the recurrent state zero in the
    model's layout (``state [2, N, 128]``; ``h``/``c [1, 1, 128]`` whole), ``sr`` a constant."""
    rng = np.random.default_rng(0)
    data: dict[str, np.ndarray] = {}
    constants: list[str] = []
    for value in model.graph.input:
        dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                for d in value.type.tensor_type.shape.dim]
        if value.name == "sr":
            constants += ["--const", "sr=16000"]
        elif value.name == "input":
            data["input"] = (rng.standard_normal((N_CHUNKS, dims[1] or 512)) * 0.1).astype(np.float32)
        elif value.name == "state":
            data["state"] = (rng.standard_normal((2, N_CHUNKS, 128)) * 0.1).astype(np.float32)
        else:  # h, c of the sequence model: one state for the whole sequence
            data[value.name] = np.zeros(dims, np.float32)
    return data, constants


def _relu_oracle(model: Any, data: dict[str, np.ndarray], constants: dict[str, Any],
                 batch: int, unit_axes: dict[str, int]) -> dict[str, list[int]]:
    """Dead units of every Relu in the main graph: its input exposed as a graph output, the
    model run by onnxruntime batch by batch, per-unit max with numpy along the unit axis the
    report states (which axis holds units is another test's concern)."""
    import onnx
    import onnxruntime as ort

    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    relus = [node for node in copy.graph.node if node.op_type == "Relu"]
    for node in relus:
        copy.graph.output.append(onnx.ValueInfoProto(name=node.input[0]))
    session = ort.InferenceSession(copy.SerializeToString(), providers=["CPUExecutionProvider"])
    declared = {v.name: [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None
                         for d in v.type.tensor_type.shape.dim] for v in model.graph.input}
    fixed = None if any(None in dims for dims in declared.values()) else declared["input"][0]
    axes = {}
    for name in data:  # the batch: the symbolic size, or in a fixed model the fixed batch's axis
        dims = declared[name]
        axes[name] = dims.index(None) if None in dims else (dims.index(fixed) if fixed else None)
    maxima: dict[str, np.ndarray] = {}
    for start in range(0, N_CHUNKS, batch):
        feed = {name: (array if axes[name] is None
                       else np.take(array, range(start, min(start + batch, N_CHUNKS)), axis=axes[name]))
                for name, array in data.items()}
        feed.update({k: np.array(v, dtype=np.int64) for k, v in constants.items()})
        values = session.run([node.input[0] for node in relus], feed)
        for node, value in zip(relus, values):
            axis = unit_axes[node.name]
            per_channel = np.moveaxis(value, axis, 0).reshape(value.shape[axis], -1).max(1)
            maxima[node.name] = per_channel if node.name not in maxima else np.maximum(maxima[node.name], per_channel)
    return {name: [int(i) for i in np.flatnonzero(m <= 0)] for name, m in maxima.items()}


@pytest.mark.parametrize("name", _silero_onnx())
def test_silero_vad_onnx_files_scan_as_shipped(tmp_path: Path, name: str) -> None:
    onnx = pytest.importorskip("onnx")
    path = next(p for p in _silero_files() if p.name == name)
    model = onnx.load(str(path))
    data, constants = _silero_data(model, path)
    np.savez(tmp_path / "chunks.npz", **data)
    result = _cli(path, "--data", tmp_path / "chunks.npz", *constants, "--batch-size", BATCH,
                  "--json", "-", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calibration"]["samples"] == N_CHUNKS
    assert report["summary"]["sites"] >= 4
    assert all(site["units"] in (64, 128) for site in report["sites"])
    # Where the Relus lie in the main graph, the dead channels equal an onnxruntime run's.
    main = {node.name for node in model.graph.node if node.op_type == "Relu"}
    if main:
        fixed = all(d.HasField("dim_value") and d.dim_value > 0
                    for v in model.graph.input for d in v.type.tensor_type.shape.dim)
        scanned = {site["name"]: site["dead_units"] for site in report["sites"]}
        axes = {site["name"]: site["unit_axis"] for site in report["sites"]}
        oracle = _relu_oracle(model, data, {"sr": 16000} if constants else {}, 1 if fixed else BATCH,
                              axes)
        assert {k: scanned[k] for k in main} == oracle
        assert sum(map(len, oracle.values())) > 0


def test_silero_vad_torchscript_scans_as_shipped(tmp_path: Path) -> None:
    path = next(p for p in _silero_files() if p.suffix == ".jit")
    x = (np.random.default_rng(1).standard_normal((N_CHUNKS, 512)) * 0.1).astype(np.float32)
    np.savez(tmp_path / "chunks.npz", x=x)
    refused = _cli(path, "--data", tmp_path / "chunks.npz", "--const", "sr=16000", "-q")
    assert refused.exit_code == 2 and "--trust-model" in refused.output
    result = _cli(path, "--data", tmp_path / "chunks.npz", "--const", "sr=16000", "--trust-model",
                  "--batch-size", BATCH, "--json", "-", "-q")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["calibration"]["samples"] == N_CHUNKS
    assert report["summary"]["sites"] == 5  # the 16 kHz path: 4 encoder blocks and the decoder
    assert [site["units"] for site in report["sites"]] == [128, 64, 64, 128, 128]
    missing = _cli(path, "--data", tmp_path / "chunks.npz", "--trust-model", "-q")
    assert missing.exit_code == 2 and "input(s) sr, required" in missing.output


# ---------------------------------------------------------------------------- Hugging Face


def _ffn_oracle(model: Any, layers: list[Any], data: dict[str, Any]) -> list[list[int]]:
    """Per layer, the units whose FFN pre-activation (the output of the first linear, hooked)
    is never > 0 over the real tokens (attention_mask 1) of every sample."""
    maxima: list[Any] = [None] * len(layers)
    mask = data["attention_mask"].bool()

    def hook(index: int):
        def record(module, inputs, output):
            real = output.reshape(*mask.shape, -1)[mask]  # [real tokens, units] (OPT flattens)
            top = real.amax(0)
            maxima[index] = top if maxima[index] is None else torch.maximum(maxima[index], top)
        return record

    handles = [layer.register_forward_hook(hook(i)) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            model(**data)
    finally:
        for handle in handles:
            handle.remove()
    return [[int(i) for i in torch.nonzero(m <= 0).flatten()] for m in maxima]


def _tokens(vocab: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (N_CHUNKS, 12), generator=generator)
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids)}


def test_hugging_face_opt_from_the_in_memory_model() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.OPTConfig(vocab_size=64, hidden_size=16, num_hidden_layers=2, ffn_dim=48,
                                    num_attention_heads=2, max_position_embeddings=32,
                                    word_embed_proj_dim=16, activation_function="relu")
    model = transformers.OPTForCausalLM(config).eval()
    layers = [layer.fc1 for layer in model.model.decoder.layers]
    with torch.no_grad():  # some units dead for sure, the rest left to chance
        layers[0].bias[:4] = -50.0
        layers[1].bias[10:13] = -50.0
    data = _tokens(config.vocab_size)
    report = reludoctor.scan(model, data, device="cpu", on_warning=lambda m: None)
    expected = _ffn_oracle(model, layers, data)
    sites = [s for s in report.sites if ".layers." in s.name]
    assert [s.name.split(".layers.")[1].split(".")[0] for s in sites] == ["0", "1"]
    assert [list(s.dead_units) for s in sites] == expected
    assert all(s.units == 48 for s in sites)
    assert expected[0][:4] == [0, 1, 2, 3] and set(range(10, 13)) <= set(expected[1])
    assert report.calibration.samples == N_CHUNKS
    # Producer evidence reaches the layer through the same keyword call: the -50 biases show.
    assert any(f.rule == "negative-bias" and ".layers.0." in (f.site or "") for f in report.findings)
    # The gradient pass takes its loss on the ModelOutput's logits; use_cache=False lets
    # torch.export capture the model (its DynamicCache output stops it otherwise).
    report = reludoctor.scan(model, data, device="cpu", constants={"use_cache": False},
                             gradients=True, on_warning=lambda m: None)
    assert report.model.method == "export" and report.gradients.computed
    assert [list(s.dead_units) for s in report.sites if ".layers." in s.name] == expected


def test_hugging_face_t5_with_relu_from_the_in_memory_model() -> None:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.T5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=40, num_layers=2,
                                   num_heads=2, feed_forward_proj="relu", dropout_rate=0.0)
    model = transformers.T5EncoderModel(config).eval()
    layers = [block.layer[-1].DenseReluDense.wi for block in model.encoder.block]
    with torch.no_grad():  # wi has no bias: zero rows are dead (max pre-activation 0)
        layers[0].weight[5:8] = 0.0
        layers[1].weight[:2] = 0.0
    data = _tokens(config.vocab_size)
    report = reludoctor.scan(model, data, device="cpu", on_warning=lambda m: None)
    expected = _ffn_oracle(model, layers, data)
    sites = [s for s in report.sites if ".block." in s.name]
    assert [list(s.dead_units) for s in sites] == expected
    assert all(s.units == 40 for s in sites) and len(sites) == 2
    assert set(range(5, 8)) <= set(expected[0]) and {0, 1} <= set(expected[1])


# ---------------------------------------------------------------------------- detection


def test_torchvision_detection_model_from_an_image_folder(tmp_path: Path) -> None:
    pytest.importorskip("torchvision")
    from PIL import Image
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(0)
    model = fasterrcnn_mobilenet_v3_large_320_fpn(weights=None, weights_backbone=None,
                                                  num_classes=5).eval()
    rng = np.random.default_rng(0)
    folder = tmp_path / "images"
    folder.mkdir()
    for index in range(4):
        pixels = rng.integers(0, 256, (40, 56, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(folder / f"{index}.png")
    report = reludoctor.scan(model, str(folder), device="cpu", batch_size=2, normalize="none",
                             on_warning=lambda m: None)
    assert report.calibration.samples == 4
    assert report.summary.sites > 0

    # Oracle: forward pre-hooks on the model's own nn.ReLU modules that run once per forward,
    # per-channel max of their input over the same images (the model normalizes them itself).
    maxima: dict[str, Any] = {}
    calls: dict[str, int] = {}

    def hook(name: str):
        def record(module, inputs):
            x = inputs[0]
            top = x.transpose(0, 1).reshape(x.shape[1], -1).amax(1)
            maxima[name] = top if name not in maxima else torch.maximum(maxima[name], top)
            calls[name] = calls.get(name, 0) + 1
        return record

    relus = {name: m for name, m in model.named_modules() if isinstance(m, torch.nn.ReLU)}
    handles = [m.register_forward_pre_hook(hook(name)) for name, m in relus.items()]
    images = [torch.from_numpy(np.asarray(Image.open(folder / f"{i}.png").convert("RGB"),
                                          dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0))
              for i in range(4)]
    try:
        with torch.no_grad():
            for start in (0, 2):
                model(images[start:start + 2])
    finally:
        for handle in handles:
            handle.remove()
    once = {name for name, count in calls.items() if count == 2}  # one call per forward
    scanned = {site.name: list(site.dead_units) for site in report.sites}
    compared = sorted(once & set(scanned))
    assert len(compared) >= 10, compared
    for name in compared:
        assert scanned[name] == [int(i) for i in torch.nonzero(maxima[name] <= 0).flatten()], name
