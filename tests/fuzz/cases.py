"""Fuzz cases: seeded mutations of valid files and crafted attacks, per input format.

A case is a recipe: ``build(case_dir)`` writes its files into an empty folder and returns the
reludoctor argument list (run there as ``python -m reludoctor ARGS``). Nothing is written
outside ``case_dir`` except by the case under test. Every pickle payload, when unpickled, only
creates the file ``MARKER`` in its case folder (or, for the write attacks, a file in the run's
``outside/`` folder): nothing more harmful.
"""

from __future__ import annotations

import builtins
import io
import json
import os
import pickle
import random
import shutil
import subprocess
import threading
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from . import mutate as M

FIXTURES = Path(__file__).resolve().parents[2] / "fixtures"
MODELS = FIXTURES / "models"
DATA = FIXTURES / "data"

FORMATS = ("pt2", "ts", "onnx", "npy", "npz", "pt", "images", "toml", "json", "hf")
MARKER = "MARKER"


@dataclass
class Case:
    id: str
    fmt: str
    kind: str  # "mutation" | "crafted"
    desc: str
    build: Callable[[Path], list[str]] = field(repr=False)
    carries_code: bool = False  # a payload that runs code / writes files when loaded: must not exit 0/1
    must_refuse: str | None = None  # other crafted cases that must not be exit 0/1 (why)
    check_escape: bool = False  # the output must not carry raw ESC bytes
    same_dead_as_base: bool = False  # if it runs, its dead units must match the unmodified MLP scan


class Payload:
    """Unpickling this calls ``open(path, "a")``: it creates an empty marker file, nothing else."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self):
        return (builtins.open, (self.path, "a"))


def _marker(case_dir: Path) -> str:
    return str(case_dir / MARKER)


def torch_payload(case_dir: Path) -> bytes:
    import torch

    buf = io.BytesIO()
    torch.save(Payload(_marker(case_dir)), buf)
    return buf.getvalue()


def pickle_payload(case_dir: Path) -> bytes:
    return pickle.dumps(Payload(_marker(case_dir)), protocol=2)


# --------------------------------------------------------------------------- shared base files

class Base:
    """Valid base files shared by all cases of one run (made once, then copied)."""

    def __init__(self, root: Path, python: str, env: dict[str, str]):
        self.root = root
        self.dir = root / "base"  # made when first needed
        self.python = python
        self.env = env
        self._report: bytes | None = None
        self._ext: dict[str, bytes] | None = None
        self._lock = threading.Lock()  # the sample test builds cases from two threads

    def bytes(self, name: str) -> bytes:
        for folder in (MODELS, DATA):
            if (folder / name).exists():
                return (folder / name).read_bytes()
        raise FileNotFoundError(name)

    def report(self) -> bytes:
        """A saved JSON report, written by the CLI under test (so it is valid for that tree)."""
        with self._lock:
            return self._make_report()

    def _make_report(self) -> bytes:
        if self._report is None:
            out = self.dir / "r.json"
            self.dir.mkdir(parents=True, exist_ok=True)
            if not out.exists():
                subprocess.run([self.python, "-m", "reludoctor", "scan", str(MODELS / "digits_mlp_dead.onnx"),
                                "--data", str(DATA / "digits_calib_flat.npy"), "--json", str(out), "-q"],
                               env=self.env, cwd=self.dir, capture_output=True, timeout=300)
            if not out.exists():
                raise RuntimeError("could not make the base JSON report with the CLI under test")
            self._report = out.read_bytes()
        return self._report

    def pngs(self) -> list[bytes]:
        with self._lock:
            if getattr(self, "_pngs", None) is None:
                self._pngs = self._make_pngs()
        return self._pngs

    def _make_pngs(self) -> list[bytes]:
        import numpy as np
        from PIL import Image

        images = np.load(DATA / "digits_calib.npy")[:6, 0]
        out = []
        for img in images:
            buf = io.BytesIO()
            Image.fromarray((img * 255).clip(0, 255).astype("uint8"), mode="L").save(buf, format="PNG")
            out.append(buf.getvalue())
        return out

    def hf_folder(self) -> dict[str, bytes]:
        """A tiny OPT checkpoint as save_pretrained writes it (config.json, model.safetensors,
        generation_config.json), made once with transformers, as file name -> bytes."""
        with self._lock:
            if getattr(self, "_hf", None) is None:
                self._hf = _make_hf_folder(self.dir / "hf")
        return self._hf

    def external_onnx(self) -> dict[str, bytes]:
        """digits_mlp_dead.onnx re-saved with its initializers in ``weights.bin``."""
        with self._lock:
            return self._make_external_onnx()

    def _make_external_onnx(self) -> dict[str, bytes]:
        if self._ext is None:
            import onnx

            folder = self.dir / "ext"
            folder.mkdir(parents=True, exist_ok=True)
            model = onnx.load(str(MODELS / "digits_mlp_dead.onnx"))
            onnx.save_model(model, str(folder / "model.onnx"), save_as_external_data=True,
                            all_tensors_to_one_file=True, location="weights.bin", size_threshold=0)
            self._ext = {"model.onnx": (folder / "model.onnx").read_bytes(),
                         "weights.bin": (folder / "weights.bin").read_bytes()}
        return self._ext


def _make_hf_folder(folder: Path) -> dict[str, bytes]:
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    torch.manual_seed(0)
    config = OPTConfig(hidden_size=16, ffn_dim=32, num_hidden_layers=2, num_attention_heads=2, vocab_size=64,
                       max_position_embeddings=32, word_embed_proj_dim=16, pad_token_id=1, bos_token_id=2,
                       eos_token_id=3)
    OPTForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = "the a cat dog sat ran on mat".split()
    vocab = {"<unk>": 0, "<pad>": 1, "<s>": 2, "</s>": 3, **{w: 4 + i for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=core, unk_token="<unk>", pad_token="<pad>", bos_token="<s>",
                            eos_token="</s>").save_pretrained(folder)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def _hf_tokens() -> bytes:
    """Pre-tokenized calibration data for the tiny OPT: input_ids and attention_mask, [4, 8]."""
    import numpy as np

    ids = (np.arange(32, dtype=np.int64).reshape(4, 8) % 60) + 4
    mask = np.ones((4, 8), dtype=np.int64)
    mask[1, 5:] = 0
    buf = io.BytesIO()
    np.savez(buf, input_ids=ids, attention_mask=mask)
    return buf.getvalue()


def _hf_case(base: Base, case_dir: Path, files: dict[str, bytes]) -> list[str]:
    """The checkpoint folder ``model/`` with ``files`` (the base folder's, replaced or added;
    a value of None removes that file), scanned with pre-tokenized data."""
    merged = {**base.hf_folder(), **files}
    for name, data in merged.items():
        if data is not None:
            _write(case_dir / "model" / name, data)
    _write(case_dir / "tokens.npz", _hf_tokens())
    (case_dir / "out").mkdir(exist_ok=True)
    return scan_args("model", "tokens.npz")


def _hf_mutation(files: dict[str, bytes], rng: random.Random) -> tuple[str, bytes, str]:
    """(file, its mutated bytes, what was done): config.json as JSON, the safetensors header as
    JSON, or the safetensors bytes."""
    if rng.random() < 0.5:
        return ("config.json", *M.json_mutate(files["config.json"], rng))
    data = files["model.safetensors"]
    if rng.random() < 0.5:
        length = int.from_bytes(data[:8], "little")
        header, what = M.json_mutate(data[8:8 + length], rng)
        return "model.safetensors", len(header).to_bytes(8, "little") + header + data[8 + length:], f"header {what}"
    return ("model.safetensors", *M.raw(data, rng))


def _safetensors_parts(data: bytes) -> tuple[dict, bytes]:
    length = int.from_bytes(data[:8], "little")
    return json.loads(data[8:8 + length]), data[8 + length:]


def _safetensors_join(header: dict, body: bytes) -> bytes:
    text = json.dumps(header).encode()
    return len(text).to_bytes(8, "little") + text + body


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


# --------------------------------------------------------------------------- scan recipes per format

# (model file, data file) used when that format's own file is the one mutated
MODEL_FOR = {
    "pt2": ("digits_mlp_dead.pt2", "digits_calib_flat.npy"),
    "ts": ("digits_cnn.ts", "digits_calib.npz"),
    "onnx": ("digits_mlp_dead.onnx", "digits_calib_flat.npy"),
    "npy": ("digits_mlp_dead.onnx", "digits_calib_flat.npy"),
    "npz": ("digits_cnn.onnx", "digits_calib.npz"),
    "pt": ("digits_cnn.onnx", "digits_calib.pt"),
    "images": ("digits_cnn.onnx", None),
    "toml": ("digits_mlp_dead.onnx", "digits_calib_flat.npy"),
}
SUFFIX = {"pt2": ".pt2", "ts": ".ts", "onnx": ".onnx", "npy": ".npy", "npz": ".npz", "pt": ".pt"}


def scan_args(model: str, data: str | None, *extra: str) -> list[str]:
    args = ["scan", model]
    if data is not None:
        args += ["--data", data]
    return args + ["-q", "--json", "out/report.json", *extra]


def _copy_pair(base: Base, case_dir: Path, fmt: str, model_bytes: bytes | None = None,
               data_bytes: bytes | None = None) -> list[str]:
    model_name, data_name = MODEL_FOR[fmt]
    model_file = "model" + Path(model_name).suffix
    _write(case_dir / model_file, model_bytes if model_bytes is not None else base.bytes(model_name))
    data_file = None
    if data_name is not None:
        data_file = "data" + Path(data_name).suffix
        _write(case_dir / data_file, data_bytes if data_bytes is not None else base.bytes(data_name))
    (case_dir / "out").mkdir(exist_ok=True)
    return scan_args(model_file, data_file)


# --------------------------------------------------------------------------- mutations

def _mutation_bytes(fmt: str, original: bytes, rng: random.Random) -> tuple[bytes, str]:
    zipped = fmt in ("pt2", "ts", "npz", "pt")
    if zipped and rng.random() < 0.6:
        return M.zip_mutate(original, rng, json_weight=0.4 if fmt == "pt2" else 0.1)
    if fmt == "onnx" and rng.random() < 0.5:
        return M.onnx_mutate(original, rng)
    if fmt == "npy" and rng.random() < 0.5:
        return M.npy_header_mutate(original, rng)
    if fmt == "json" and rng.random() < 0.6:
        return M.json_mutate(original, rng)
    if fmt == "toml":
        return M.toml_mutate(original, rng)
    return M.raw(original, rng)


TOML_BASES = {
    "reludoctor.toml": b"# reludoctor settings\nfail-over = 0.1\ntop = 5\n",
    "pyproject.toml": b'[project]\nname = "demo"\nversion = "1.0.0"\n\n[tool.reludoctor]\nfail-over = 0.1\n'
                      b'fail-on = "error"\n',
}


def mutation_case(base: Base, fmt: str, index: int, seed: int) -> Case:
    rng = random.Random(f"{seed}:{fmt}:{index}")
    # decide the description now (deterministic), build later
    plan: dict = {}

    if fmt in SUFFIX:
        original = base.bytes(MODEL_FOR[fmt][0] if fmt in ("pt2", "ts", "onnx") else MODEL_FOR[fmt][1])
        mutated, desc = _mutation_bytes(fmt, original, rng)
        plan["bytes"] = mutated

        def build(case_dir: Path) -> list[str]:
            if fmt in ("pt2", "ts", "onnx"):
                return _copy_pair(base, case_dir, fmt, model_bytes=plan["bytes"])
            return _copy_pair(base, case_dir, fmt, data_bytes=plan["bytes"])

    elif fmt == "images":
        pngs = base.pngs()
        victim = rng.randrange(len(pngs))
        op = rng.random()
        if op < 0.8:
            mutated, desc = M.raw(pngs[victim], rng)
            desc = f"img{victim}.png {desc}"
            extra: tuple = ()
        elif op < 0.9:
            mutated, desc = pngs[victim], "empty file beside the images"
            extra = (("notes.png", b""),)
        else:
            mutated, desc = pngs[victim], "an RGB image among grey ones"
            from PIL import Image

            buf = io.BytesIO()
            Image.new("RGB", (9, 7), (255, 0, 0)).save(buf, format="PNG")
            extra = (("sub/rgb.png", buf.getvalue()),)

        def build(case_dir: Path) -> list[str]:
            for i, data in enumerate(pngs):
                _write(case_dir / "images" / f"img{i}.png", mutated if i == victim else data)
            for name, data in extra:
                _write(case_dir / "images" / name, data)
            return _copy_pair(base, case_dir, "images")[:2] + ["--data", "images", "-q", "--json", "out/report.json"]

    elif fmt == "toml":
        name = rng.choice(sorted(TOML_BASES))
        mutated, desc = M.toml_mutate(TOML_BASES[name], rng)
        desc = f"{name}: {desc}"

        def build(case_dir: Path) -> list[str]:
            _write(case_dir / name, mutated)
            return _copy_pair(base, case_dir, "toml")

    elif fmt == "json":
        desc = "a mutation of a saved report (made when the case is built)"

        def build(case_dir: Path) -> list[str]:
            # the base report comes from the CLI under test, so this mutation is drawn at build time
            mutated, what = _mutation_bytes("json", base.report(), random.Random(f"{seed}:json:{index}"))
            case.desc = what
            _write(case_dir / "saved.json", mutated)
            (case_dir / "out").mkdir(exist_ok=True)
            return ["report", "saved.json", "--json", "out/report.json"]

    elif fmt == "hf":
        desc = "a mutation of a tiny OPT checkpoint folder (made when the case is built)"

        def build(case_dir: Path) -> list[str]:
            # the folder is made with transformers, so the mutation is drawn at build time, as for json
            name, mutated, what = _hf_mutation(base.hf_folder(), random.Random(f"{seed}:hf:{index}"))
            case.desc = f"{name}: {what}"
            return _hf_case(base, case_dir, {name: mutated})

    else:
        raise ValueError(fmt)
    case = Case(f"{fmt}-mut-{index:04d}", fmt, "mutation", desc, build)
    return case


# --------------------------------------------------------------------------- crafted attacks

def _pt2_edit(base: Base, edit: Callable[[list, str, Path], None]) -> Callable[[Path], list[str]]:
    """A recipe that rewrites digits_mlp_dead.pt2's entries with ``edit(entries, prefix, case_dir)``."""

    def build(case_dir: Path) -> list[str]:
        entries = M.zip_entries(base.bytes("digits_mlp_dead.pt2"))
        prefix = entries[0][0].split("/", 1)[0] + "/"
        edit(entries, prefix, case_dir)
        return _copy_pair(base, case_dir, "pt2", model_bytes=M.write_zip(entries))

    return build


def _set(entries: list, name: str, content: bytes) -> None:
    for i, (n, _, comp) in enumerate(entries):
        if n == name:
            entries[i] = (n, content, comp)
            return
    entries.append((name, content, zipfile.ZIP_STORED))


def _get(entries: list, name: str) -> bytes:
    return next(c for n, c, _ in entries if n == name)


def _weights_config(entries, prefix):
    return json.loads(_get(entries, prefix + "data/weights/model_weights_config.json"))


def _graph_op_edit(target: str, args: list[dict], outdir_name: str):
    """Insert a node calling ``target`` first in models/model.json (plus fill_ for from_file)."""

    def edit(entries, prefix, case_dir):
        name = prefix + "models/model.json"
        doc = json.loads(_get(entries, name))
        graph = doc["graph_module"]["graph"]
        path = str(case_dir.parent.parent / "outside" / f"{case_dir.name}.{outdir_name}")
        inputs = [dict(a) for a in args]
        for a in inputs:
            if a["arg"] == "PATH":
                a["arg"] = {"as_string": path}
        node = {"target": target, "inputs": inputs, "outputs": [{"as_tensor": {"name": "fz_file"}}],
                "metadata": {}, "is_hop_single_tensor_return": None, "name": "fz_file"}
        graph["tensor_values"]["fz_file"] = {"dtype": 1, "sizes": [{"as_int": 16}], "requires_grad": False,
                                             "device": {"type": "cpu", "index": None},
                                             "strides": [{"as_int": 1}], "storage_offset": {"as_int": 0},
                                             "layout": 7}
        fill = {"target": "torch.ops.aten.fill_.Scalar",
                "inputs": [{"name": "self", "arg": {"as_tensor": {"name": "fz_file"}}, "kind": 1},
                           {"name": "value", "arg": {"as_int": 65}, "kind": 1}],
                "outputs": [{"as_tensor": {"name": "fz_fill"}}], "metadata": {},
                "is_hop_single_tensor_return": None, "name": "fz_fill"}
        graph["tensor_values"]["fz_fill"] = dict(graph["tensor_values"]["fz_file"])
        graph["nodes"][0:0] = [node, fill]
        _set(entries, name, json.dumps(doc).encode())

    return edit


FROM_FILE_ARGS = [{"name": "filename", "arg": "PATH", "kind": 1},
                  {"name": "shared", "arg": {"as_bool": True}, "kind": 2},
                  {"name": "size", "arg": {"as_int": 16}, "kind": 2},
                  {"name": "dtype", "arg": {"as_scalar_type": 1}, "kind": 2}]
SAVE_ARGS = [{"name": "obj", "arg": {"as_tensor": {"name": "x"}}, "kind": 1},
             {"name": "f", "arg": "PATH", "kind": 1}]


def _so_bytes(case_dir: Path) -> bytes:
    """A shared object whose constructor creates MARKER (falls back to junk bytes without gcc)."""
    src = case_dir / ".build" / "evil.c"
    src.parent.mkdir(parents=True, exist_ok=True)
    marker = _marker(case_dir).replace("\\", "\\\\").replace('"', '\\"')
    src.write_text('#include <stdio.h>\n__attribute__((constructor)) static void fz(void) {\n'
                   f'  FILE *f = fopen("{marker}", "a"); if (f) fclose(f);\n}}\n')
    out = src.with_suffix(".so")
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc and subprocess.run([cc, "-shared", "-fPIC", "-o", str(out), str(src)], capture_output=True).returncode == 0:
        data = out.read_bytes()
    else:
        data = b"\x7fELF" + b"\x00" * 60
    shutil.rmtree(src.parent)
    return data


def crafted_cases(base: Base) -> list[Case]:
    cases: list[Case] = []

    def add(fmt, name, desc, build, **kw):
        cases.append(Case(f"{fmt}-crafted-{name}", fmt, "crafted", desc, build, **kw))

    # ---------------------------------------------------------------- .pt2
    def sample_inputs(entries, prefix, case_dir):
        _set(entries, prefix + "data/sample_inputs/model.pt", torch_payload(case_dir))

    add("pt2", "sample-inputs-pickle", "pickle payload in data/sample_inputs/model.pt",
        _pt2_edit(base, sample_inputs), carries_code=True)

    def use_pickle(entries, prefix, case_dir):
        cfg = _weights_config(entries, prefix)
        key = next(iter(cfg["config"]))
        cfg["config"][key]["use_pickle"] = True
        _set(entries, prefix + "data/weights/model_weights_config.json", json.dumps(cfg).encode())
        _set(entries, prefix + "data/weights/" + cfg["config"][key]["path_name"], torch_payload(case_dir))

    add("pt2", "weight-use-pickle", "use_pickle: true on a weight, pickle payload as its file",
        _pt2_edit(base, use_pickle), carries_code=True)

    def tensor_constant(entries, prefix, case_dir):
        cfg = {"config": {"fz_const": {"path_name": "tensor_0", "is_param": False, "use_pickle": True,
                                       "tensor_meta": None}}}
        _set(entries, prefix + "data/constants/model_constants_config.json", json.dumps(cfg).encode())
        _set(entries, prefix + "data/constants/tensor_0", torch_payload(case_dir))

    add("pt2", "pickled-tensor-constant", "a pickled tensor constant in the constants config",
        _pt2_edit(base, tensor_constant), carries_code=True)

    def opaque(entries, prefix, case_dir):
        cfg = {"config": {"fz_obj": {"path_name": "opaque_obj_0", "is_param": False, "use_pickle": True,
                                     "tensor_meta": None}}}
        _set(entries, prefix + "data/constants/model_constants_config.json", json.dumps(cfg).encode())
        _set(entries, prefix + "data/constants/opaque_obj_0", pickle_payload(case_dir))

    add("pt2", "opaque-obj-constant", "an opaque_obj_0 constant (plain pickle)", _pt2_edit(base, opaque),
        carries_code=True)

    def legacy_weights(entries, prefix, case_dir):
        _set(entries, prefix + "data/weights/model.pt", torch_payload(case_dir))

    add("pt2", "legacy-weights-pickle", "legacy data/weights/model.pt pickle", _pt2_edit(base, legacy_weights),
        carries_code=True)

    def legacy_constants(entries, prefix, case_dir):
        _set(entries, prefix + "data/constants/model.pt", torch_payload(case_dir))

    add("pt2", "legacy-constants-pickle", "legacy data/constants/model.pt pickle",
        _pt2_edit(base, legacy_constants), carries_code=True)

    def aoti(entries, prefix, case_dir):
        _set(entries, prefix + "data/aotinductor/model/model.so", _so_bytes(case_dir))
        _set(entries, prefix + "data/aotinductor/model/model.wrapper.cpp", b"// fuzz\n")

    add("pt2", "aotinductor-so", "a native .so under data/aotinductor/model/ (constructor makes MARKER)",
        _pt2_edit(base, aoti), carries_code=True)

    def huge_weight(entries, prefix, case_dir):
        cfg = _weights_config(entries, prefix)
        key = next(iter(cfg["config"]))
        meta = cfg["config"][key]["tensor_meta"]
        meta["sizes"] = [{"as_int": 40000}, {"as_int": 40000}]
        meta["strides"] = [{"as_int": 40000}, {"as_int": 1}]
        _set(entries, prefix + "data/weights/model_weights_config.json", json.dumps(cfg).encode())
        _set(entries, prefix + "data/weights/" + cfg["config"][key]["path_name"], b"")

    add("pt2", "weight-40000x40000-empty", "a weight record declaring [40000, 40000] with an emptied record",
        _pt2_edit(base, huge_weight), must_refuse="declared size not backed by bytes")

    add("pt2", "graph-from-file", "graph node torch.ops.aten.from_file.default(shared=True) then fill_",
        _pt2_edit(base, _graph_op_edit("torch.ops.aten.from_file.default", FROM_FILE_ARGS, "from_file")),
        carries_code=True)
    add("pt2", "graph-torch-save", "graph node whose target is torch.save",
        _pt2_edit(base, _graph_op_edit("torch.save", SAVE_ARGS, "save")), carries_code=True)

    def unknown_ns(entries, prefix, case_dir):
        name = prefix + "models/model.json"
        doc = json.loads(_get(entries, name))
        node = next(n for n in doc["graph_module"]["graph"]["nodes"] if n["target"].endswith("relu.default"))
        node["target"] = "torch.ops.evil.relu.default"
        _set(entries, name, json.dumps(doc).encode())

    add("pt2", "graph-custom-namespace", "a relu node retargeted to torch.ops.evil.relu.default",
        _pt2_edit(base, unknown_ns), must_refuse="op outside the allow-list")

    def identity(entries, prefix, case_dir):
        pass

    add("pt2", "zip-rewrite-control", "control: entries rewritten unchanged by Python's zipfile",
        _pt2_edit(base, identity))

    # ---------------------------------------------------------------- TorchScript
    def ts_empty_storage(record: str):
        def build(case_dir: Path) -> list[str]:
            entries = M.zip_entries(base.bytes("digits_cnn.ts"))
            prefix = entries[0][0].split("/", 1)[0] + "/"
            _set(entries, prefix + record, b"")
            return _copy_pair(base, case_dir, "ts", model_bytes=M.write_zip(entries))

        return build

    for record in ("data/0", "data/6", "data/26"):
        add("ts", f"empty-storage-{record.replace('/', '')}", f"TorchScript with tensor storage record {record} emptied",
            ts_empty_storage(record), must_refuse="TorchScript is refused without --trust-model")

    ts_writer: dict[str, bytes] = {}

    def ts_from_file(case_dir: Path) -> list[str]:
        _write(case_dir / "model.ts", ts_writer["bytes"])
        _write(case_dir / "data.npy", base.bytes("digits_calib_flat.npy"))
        (case_dir / "out").mkdir(exist_ok=True)
        return scan_args("model.ts", "data.npy")

    # scripted now, while this file's source on disk matches the loaded module (torch.jit reads it)
    # (relative to the case folder, where the case runs: ROOT/cases/ID -> ROOT/outside)
    ts_writer["bytes"] = _torchscript_writer("../../outside/ts-crafted-forward-writes-file.from_file")
    add("ts", "forward-writes-file", "scripted forward calls from_file(shared=True) then fill_ (writes a file)",
        ts_from_file, carries_code=True)

    # ---------------------------------------------------------------- ONNX
    def onnx_edit(edit, name="model.onnx"):
        def build(case_dir: Path) -> list[str]:
            import onnx

            model = onnx.load_from_string(base.bytes("digits_mlp_dead.onnx"))
            edit(model)
            _write(case_dir / name, model.SerializeToString())
            _write(case_dir / "data.npy", base.bytes("digits_calib_flat.npy"))
            (case_dir / "out").mkdir(exist_ok=True)
            return scan_args(name, "data.npy")

        return build

    def fixed_batch(model):
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 10**7

    add("onnx", "fixed-batch-1e7", "input with a fixed batch of 10**7", onnx_edit(fixed_batch))

    def dim_2_62(model):
        model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 2**62

    add("onnx", "dim-2pow62", "an input dimension of 2**62", onnx_edit(dim_2_62))

    def escape_names(model):
        esc = "\x1b[2J\x1b[31mpwn"
        old_in = model.graph.input[0].name
        model.graph.input[0].name = old_in + esc
        for node in model.graph.node:
            node.name = node.name + esc
            for i, name in enumerate(node.input):
                if name == old_in:
                    node.input[i] = old_in + esc

    def escape_build(case_dir: Path) -> list[str]:
        args = onnx_edit(escape_names)(case_dir)
        return args[:-2] + ["--format", "table"]  # table to stdout: the names reach the terminal output

    add("onnx", "escape-names", "node and input names with ESC[2J", escape_build, check_escape=True)

    def escape_bad_input(case_dir: Path) -> list[str]:
        args = onnx_edit(escape_names)(case_dir)
        _write(case_dir / "data.npy", _npy_bytes("float32", (12, 63)))  # wrong feature count: an error line
        return args

    add("onnx", "escape-names-error", "ESC names in an input-mismatch error line", escape_bad_input,
        check_escape=True)

    def external(location: str, where: str):
        def build(case_dir: Path) -> list[str]:
            import onnx

            files = base.external_onnx()
            model = onnx.load_from_string(files["model.onnx"])
            for t in model.graph.initializer:
                for entry in t.external_data:
                    if entry.key == "location":
                        entry.value = location
            model_dir = case_dir / "a" / "b"
            _write(model_dir / "model.onnx", model.SerializeToString())
            target = (model_dir / location) if where == "rel" else Path(location)
            _write(target, files["weights.bin"])
            _write(case_dir / "data.npy", base.bytes("digits_calib_flat.npy"))
            (case_dir / "out").mkdir(exist_ok=True)
            return scan_args("a/b/model.onnx", "data.npy")

        return build

    add("onnx", "external-data-parent", "external-data location ../../x (outside the model's folder)",
        external("../../x", "rel"), must_refuse="external data outside the model's folder")

    def external_json_at(case_dir: Path) -> list[str]:
        files = base.external_onnx()
        _write(case_dir / "model.onnx", files["model.onnx"])
        _write(case_dir / "weights.bin", files["weights.bin"])
        _write(case_dir / "data.npy", base.bytes("digits_calib_flat.npy"))
        return ["scan", "model.onnx", "--data", "data.npy", "-q", "--json", "weights.bin"]

    add("onnx", "json-at-external-data", "--json pointing at the model's external-data file", external_json_at,
        must_refuse="output path is an input")

    # ---------------------------------------------------------------- data files
    def npy_case(data: bytes, model="digits_mlp_dead.onnx", data_name="data.npy"):
        def build(case_dir: Path) -> list[str]:
            suffix = Path(model).suffix
            _write(case_dir / f"model{suffix}", base.bytes(model))
            if isinstance(data, bytes):
                _write(case_dir / data_name, data)
            else:
                data(case_dir)
            (case_dir / "out").mkdir(exist_ok=True)
            return scan_args(f"model{suffix}", data_name)

        return build

    def big_endian() -> bytes:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.load(DATA / "digits_calib_flat.npy").astype(">f4"))
        return buf.getvalue()

    def big_endian_cnn() -> bytes:
        import numpy as np

        buf = io.BytesIO()
        np.save(buf, np.load(DATA / "digits_calib.npy").astype(">f4"))
        return buf.getvalue()

    add("npy", "big-endian-onnx", "big-endian >f4 .npy with an ONNX model (read as native = wrong numbers)",
        npy_case(big_endian()), same_dead_as_base=True)
    add("npy", "big-endian-pt2", "big-endian >f4 .npy with a .pt2 model", npy_case(big_endian(), "digits_mlp_dead.pt2"),
        same_dead_as_base=True)
    add("npy", "big-endian-ts", "big-endian >f4 .npy with a TorchScript model",
        npy_case(big_endian_cnn(), "digits_cnn.ts"), must_refuse="TorchScript is refused without --trust-model")

    def object_npy(case_dir: Path) -> None:
        import numpy as np

        arr = np.empty(1, dtype=object)
        arr[0] = Payload(_marker(case_dir))
        with open(case_dir / "data.npy", "wb") as handle:
            np.save(handle, arr, allow_pickle=True)

    add("npy", "object-pickle", "object-dtype .npy whose pickle creates MARKER", npy_case(object_npy),
        carries_code=True)
    add("npy", "huge-shape-header", ".npy header declaring (10**7, 64) float32 with 92 KB of data",
        npy_case(_npy_header_only("<f4", (10**7, 64), 92160)))

    def fifo_data(case_dir: Path) -> None:
        os.mkfifo(case_dir / "data.npy")

    add("npy", "fifo-data", "a FIFO as --data (nobody writes to it)", npy_case(fifo_data))

    def loop_data(case_dir: Path) -> None:
        os.symlink("loop_b.npy", case_dir / "data.npy")
        os.symlink("data.npy", case_dir / "loop_b.npy")

    add("npy", "symlink-loop-data", "a symlink loop as --data", npy_case(loop_data))

    def json_at_data(case_dir: Path) -> list[str]:
        args = npy_case(base.bytes("digits_calib_flat.npy"))(case_dir)
        return args[:-2] + ["--json", "data.npy"]

    add("npy", "json-at-data", "--json pointing at the --data file", json_at_data, must_refuse="output path is an input")

    def fifo_model(case_dir: Path) -> list[str]:
        os.mkfifo(case_dir / "model.onnx")
        _write(case_dir / "data.npy", base.bytes("digits_calib_flat.npy"))
        (case_dir / "out").mkdir(exist_ok=True)
        return scan_args("model.onnx", "data.npy")

    add("onnx", "fifo-model", "a FIFO as the model file", fifo_model)

    def loop_model(case_dir: Path) -> list[str]:
        os.symlink("m2.pt2", case_dir / "model.pt2")
        os.symlink("model.pt2", case_dir / "m2.pt2")
        _write(case_dir / "data.npy", base.bytes("digits_calib_flat.npy"))
        (case_dir / "out").mkdir(exist_ok=True)
        return scan_args("model.pt2", "data.npy")

    add("pt2", "symlink-loop-model", "a symlink loop as the model", loop_model)

    def npz_case(writer):
        def build(case_dir: Path) -> list[str]:
            _write(case_dir / "model.onnx", base.bytes("digits_cnn.onnx"))
            writer(case_dir / "data.npz")
            (case_dir / "out").mkdir(exist_ok=True)
            return scan_args("model.onnx", "data.npz")

        return build

    def corrupt_npz(path: Path) -> None:
        data = base.bytes("digits_calib.npz")
        path.write_bytes(data[: len(data) // 2] + b"PK\x05\x06" + b"\xff" * 18)

    add("npz", "corrupt-central-directory", "truncated .npz with a bogus end-of-central-directory",
        npz_case(corrupt_npz))

    def npz_bomb(path: Path) -> None:
        with zipfile.ZipFile(path, "w") as archive:
            archive.writestr("x.npy", _npy_header_only("<f4", (10**6, 1, 8, 8), 0))

    add("npz", "member-huge-shape", ".npz member declaring (10**6, 1, 8, 8) with no data", npz_case(npz_bomb))

    def npz_deflate_bomb(path: Path) -> None:
        import numpy as np

        with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
            with archive.open("x.npy", "w", force_zip64=True) as handle:
                np.lib.format.write_array_header_1_0(
                    handle, {"descr": "<f4", "fortran_order": False, "shape": (2**23, 1, 8, 8)})
                chunk = b"\x00" * (16 << 20)
                for _ in range(128):  # 2 GiB of zeros, ~9 MB compressed
                    handle.write(chunk)

    add("npz", "deflate-bomb", ".npz member inflating to 2 GiB of zeros", npz_case(npz_deflate_bomb))

    def npz_object(case_dir: Path) -> list[str]:
        import numpy as np

        arr = np.empty(1, dtype=object)
        arr[0] = Payload(_marker(case_dir))
        _write(case_dir / "model.onnx", base.bytes("digits_cnn.onnx"))
        np.savez(case_dir / "data.npz", x=arr, allow_pickle=True)
        (case_dir / "out").mkdir(exist_ok=True)
        return scan_args("model.onnx", "data.npz")

    add("npz", "object-pickle-member", ".npz member of object dtype whose pickle creates MARKER", npz_object,
        carries_code=True)

    def pt_case(make):
        def build(case_dir: Path) -> list[str]:
            _write(case_dir / "model.onnx", base.bytes("digits_cnn.onnx"))
            make(case_dir)
            (case_dir / "out").mkdir(exist_ok=True)
            return scan_args("model.onnx", "data.pt")

        return build

    def pt_bf16(case_dir: Path) -> None:
        import torch

        torch.save(torch.load(DATA / "digits_calib.pt").to(torch.bfloat16), case_dir / "data.pt")

    def pt_sparse(case_dir: Path) -> None:
        import torch

        torch.save(torch.load(DATA / "digits_calib.pt").to_sparse(), case_dir / "data.pt")

    def pt_pickle(case_dir: Path) -> None:
        _write(case_dir / "data.pt", torch_payload(case_dir))

    add("pt", "bf16", "a bf16 tensor as .pt data", pt_case(pt_bf16))
    add("pt", "sparse", "a sparse COO tensor as .pt data", pt_case(pt_sparse))
    add("pt", "pickle-payload", ".pt data that is a pickle payload (needs weights_only=False)", pt_case(pt_pickle),
        carries_code=True)

    # ---------------------------------------------------------------- image folders
    def images_case(extra):
        def build(case_dir: Path) -> list[str]:
            for i, data in enumerate(base.pngs()):
                _write(case_dir / "images" / f"img{i}.png", data)
            _write(case_dir / "model.onnx", base.bytes("digits_cnn.onnx"))
            (case_dir / "out").mkdir(exist_ok=True)
            return extra(case_dir) or scan_args("model.onnx", "images")

        return build

    def img_loop(case_dir: Path) -> None:
        os.symlink("b.png", case_dir / "images" / "a.png")
        os.symlink("a.png", case_dir / "images" / "b.png")

    def img_dir_loop(case_dir: Path) -> None:
        os.symlink("..", case_dir / "images" / "up")

    def img_fifo(case_dir: Path) -> None:
        os.mkfifo(case_dir / "images" / "pipe.png")

    def img_huge(case_dir: Path) -> None:
        _write(case_dir / "images" / "huge.png", _png_huge_dims(60000, 60000))

    def img_json_at(case_dir: Path) -> list[str]:
        return ["scan", "model.onnx", "--data", "images", "-q", "--json", "images/img0.png"]

    add("images", "symlink-loop-file", "a symlink loop inside the image folder", images_case(img_loop))
    add("images", "symlink-dir-cycle", "a symlink to .. inside the image folder", images_case(img_dir_loop))
    add("images", "fifo-in-folder", "a FIFO named pipe.png inside the image folder", images_case(img_fifo))
    add("images", "png-60000x60000", "a PNG whose header declares 60000x60000 pixels", images_case(img_huge))
    add("images", "json-at-image", "--json pointing at an image inside the --data folder", images_case(img_json_at),
        must_refuse="output path is an input")

    # ---------------------------------------------------------------- settings
    def settings_case(files: dict[str, bytes | Callable[[Path], None]]):
        def build(case_dir: Path) -> list[str]:
            for name, content in files.items():
                if callable(content):
                    content(case_dir)
                else:
                    _write(case_dir / name, content)
            return _copy_pair(base, case_dir, "toml")

        return build

    add("toml", "pyproject-syntax-error-gate",
        "pyproject.toml with version = 1.0.0 unquoted under [project] and a [tool.reludoctor] fail-over gate",
        settings_case({"pyproject.toml": b'[project]\nname = "demo"\nversion = 1.0.0\n\n[tool.reludoctor]\n'
                                         b'fail-over = 0.1\n'}),
        must_refuse="an unparsable settings file must not silently drop the gate")
    add("toml", "deeply-nested", "reludoctor.toml with a 100,000-deep nested array",
        settings_case({"reludoctor.toml": b"fail-over = 0.1\nx = " + b"[" * 100000 + b"]" * 100000 + b"\n"}))
    add("toml", "deeply-nested-tables", "reludoctor.toml with a 50,000-deep inline table",
        settings_case({"reludoctor.toml": b"fail-over = 0.1\nx = " + b"{a=" * 50000 + b"1" + b"}" * 50000 + b"\n"}))

    def baseline_fifo(case_dir: Path) -> None:
        os.mkfifo(case_dir / "base.json")
        _write(case_dir / "reludoctor.toml", b'fail-over = 0.1\nbaseline = "base.json"\n')

    add("toml", "baseline-fifo", "settings baseline pointing at a FIFO", settings_case({"fifo": baseline_fifo}))

    def baseline_sparse(case_dir: Path) -> None:
        _sparse(case_dir / "base.json", 8 << 30)
        _write(case_dir / "reludoctor.toml", b'fail-over = 0.1\nbaseline = "base.json"\n')

    add("toml", "baseline-huge-sparse", "settings baseline pointing at an 8 GiB sparse file (zeros)",
        settings_case({"sparse": baseline_sparse}))

    def parent_settings(case_dir: Path) -> list[str]:
        sub = case_dir / "work"
        _write(case_dir / "reludoctor.toml", b'fail-over = 0.1\nbaseline = "/dev/zero"\n')
        args = _copy_pair(base, sub, "toml")
        return ["@cwd=work"] + args

    add("toml", "parent-baseline-dev-zero", "a parent folder's reludoctor.toml with baseline = \"/dev/zero\"",
        parent_settings)

    # ---------------------------------------------------------------- saved reports
    def report_case(make):
        def build(case_dir: Path) -> list[str]:
            make(case_dir)
            (case_dir / "out").mkdir(exist_ok=True)
            return ["report", "saved.json", "--json", "out/report.json"]

        return build

    add("json", "fifo", "a FIFO as the saved report", report_case(lambda d: os.mkfifo(d / "saved.json")))
    add("json", "huge-sparse", "an 8 GiB sparse file (zeros) as the saved report",
        report_case(lambda d: _sparse(d / "saved.json", 8 << 30)))
    add("json", "deeply-nested", "a saved report of 100,000 nested arrays",
        report_case(lambda d: _write(d / "saved.json", b"[" * 100000 + b"]" * 100000)))

    def big_int(case_dir: Path) -> None:
        doc = json.loads(base.report())
        text = json.dumps(doc).replace('"schema_version": 1', '"schema_version": 1' + "0" * 100000, 1)
        _write(case_dir / "saved.json", text.encode())

    add("json", "100000-digit-int", "schema_version written with 100,000 digits", report_case(big_int))

    def baseline_nested(case_dir: Path) -> None:
        _write(case_dir / "saved.json", base.report())
        _write(case_dir / "old.json", b'{"a":' * 50000 + b"1" + b"}" * 50000)

    def baseline_build(case_dir: Path) -> list[str]:
        baseline_nested(case_dir)
        (case_dir / "out").mkdir(exist_ok=True)
        return ["report", "saved.json", "--baseline", "old.json", "--json", "out/report.json"]

    add("json", "baseline-deeply-nested", "a --baseline of 50,000 nested objects", baseline_build)

    def report_json_at_self(case_dir: Path) -> list[str]:
        _write(case_dir / "saved.json", base.report())
        return ["report", "saved.json", "--json", "saved.json"]

    add("json", "json-at-saved-report", "report --json pointing at the saved report it reads",
        report_json_at_self, must_refuse="output path is an input")

    # ---------------------------------------------------------------- Hugging Face checkpoint folders
    def hf_config(edit):
        def build(case_dir: Path) -> list[str]:
            config = json.loads(base.hf_folder()["config.json"])
            edit(config, case_dir)
            return _hf_case(base, case_dir, {"config.json": json.dumps(config).encode()})

        return build

    def bigger(config, case_dir):
        config.update(hidden_size=4096, ffn_dim=16384, num_hidden_layers=32, vocab_size=50272)

    add("hf", "config-bigger-than-weights", "config.json describes an opt-6.7b over the tiny weights "
        "(transformers would allocate the missing 6.7e9 parameters)", hf_config(bigger),
        must_refuse="more parameters than the weights hold")

    def remote_code(config, case_dir):
        config["auto_map"] = {"AutoModelForCausalLM": "evil.EvilModel"}
        _write(case_dir / "model" / "evil.py", f"open({_marker(case_dir)!r}, 'a').close()\n".encode())

    add("hf", "auto-map-remote-code", "config.json auto_map naming a Python file in the folder",
        hf_config(remote_code), carries_code=True)

    def pickled_weights(case_dir: Path) -> list[str]:
        return _hf_case(base, case_dir, {"model.safetensors": None, "pytorch_model.bin": torch_payload(case_dir)})

    add("hf", "pickled-weights", "pytorch_model.bin (a pickle payload) instead of safetensors", pickled_weights,
        carries_code=True)

    def tokenizer_auto_map(case_dir: Path) -> list[str]:
        _write(case_dir / "model" / "tok.py", f"open({_marker(case_dir)!r}, 'a').close()\n".encode())
        config = json.loads(base.hf_folder()["tokenizer_config.json"])
        config.update(auto_map={"AutoTokenizer": ["tok.EvilTokenizer", None]}, tokenizer_class="EvilTokenizer")
        args = _hf_case(base, case_dir, {"tokenizer_config.json": json.dumps(config).encode()})
        _write(case_dir / "texts.txt", b"the cat sat on the mat\na dog ran\n")
        return [a if a != "tokens.npz" else "texts.txt" for a in args]

    add("hf", "tokenizer-auto-map", "tokenizer_config.json auto_map naming a Python file, with text data",
        tokenizer_auto_map)

    def header(edit):
        def build(case_dir: Path) -> list[str]:
            meta, body = _safetensors_parts(base.hf_folder()["model.safetensors"])
            return _hf_case(base, case_dir, {"model.safetensors": edit(meta, body)})

        return build

    def header_length(meta, body):
        return (1 << 62).to_bytes(8, "little") + json.dumps(meta).encode() + body

    add("hf", "safetensors-header-length-2-62", "a safetensors header length of 2**62", header(header_length),
        must_refuse="header length beyond the file")

    def huge_tensor(meta, body):
        name = next(k for k in meta if k != "__metadata__")
        meta[name]["shape"] = [1 << 20, 1 << 20]
        return _safetensors_join(meta, body)

    add("hf", "safetensors-huge-shape", "a tensor declared [2**20, 2**20] in a small file", header(huge_tensor),
        must_refuse="more elements than bytes")

    def config_fifo(case_dir: Path) -> list[str]:
        args = _hf_case(base, case_dir, {"config.json": None})
        os.mkfifo(case_dir / "model" / "config.json")
        return args

    add("hf", "config-fifo", "config.json is a FIFO", config_fifo)
    return cases


def _torchscript_writer(target: str) -> bytes:
    """A scripted module whose forward maps ``target`` with from_file(shared=True) and fills it."""
    import torch

    class Writer(torch.nn.Module):
        def __init__(self, path: str):
            super().__init__()
            self.path = path
            self.fc = torch.nn.Linear(64, 16)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            t = torch.from_file(self.path, shared=True, size=16, dtype=torch.uint8)
            t.fill_(65)
            # use the written tensor, or TorchScript drops the calls as dead code
            return torch.relu(self.fc(x.flatten(1))) + t.sum().to(torch.float32) * 0.0

    torch.manual_seed(0)
    buf = io.BytesIO()
    torch.jit.save(torch.jit.script(Writer(target)), buf)
    return buf.getvalue()


def _npy_bytes(dtype: str, shape: tuple[int, ...]) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.save(buf, np.zeros(shape, dtype=dtype))
    return buf.getvalue()


def _npy_header_only(descr: str, shape: tuple[int, ...], body: int) -> bytes:
    import numpy as np

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": descr, "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\x00" * body


def _png_huge_dims(width: int, height: int) -> bytes:
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (width + 1) * 4)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _sparse(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        handle.truncate(size)


# --------------------------------------------------------------------------- the plan

def plan(base: Base, formats: list[str], n: int, seed: int, *, crafted: bool = True,
         mutations_per_format: int | None = None) -> list[Case]:
    """Every crafted case of the chosen formats, then mutations round-robin over the formats up to
    ``n`` cases in all (or exactly ``mutations_per_format`` each)."""
    chosen = [c for c in crafted_cases(base) if c.fmt in formats] if crafted else []
    if mutations_per_format is None:
        left = max(0, n - len(chosen))
        counts = {fmt: left // len(formats) + (1 if i < left % len(formats) else 0) for i, fmt in enumerate(formats)}
    else:
        counts = {fmt: mutations_per_format for fmt in formats}
    mutations = []
    for i in range(max(counts.values(), default=0)):
        for fmt in formats:
            if i < counts[fmt]:
                mutations.append(mutation_case(base, fmt, i, seed))
    return chosen + mutations
