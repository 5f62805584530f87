"""Verify a ``.pt2`` archive (torch.export.save) before torch loads it.

``torch.export.load`` is not safe on untrusted files: it unpickles entries (sample inputs with a
``weights_only=False`` retry, weights and constants marked ``use_pickle``, opaque objects, legacy
``data/weights/model.pt``), loads native AOTInductor libraries from the archive, evaluates symbolic
expressions with sympy (``eval``), compiles the archive's guard strings and forward argument
names into Python code, and runs whatever operators the graph names (``aten.from_file`` writes
files). This module reads the archive itself (zip entries + JSON) and accepts only what it can
check, so that loading a verified archive runs no code from the file:

- entries: only the layout torch.export.save writes (no pickled payloads other than the sample
  inputs, which must load with ``weights_only=True``; no ``data/aotinductor``, no legacy pickles,
  no custom or opaque objects), stored uncompressed, no duplicates;
- graph: every operator from an allow-list (``aten``/``prims`` tensor operators minus those with
  effects outside tensors, a few torchvision operators, Python's arithmetic on sizes, the
  control-flow higher-order operators); names that become Python identifiers are identifiers;
  symbolic expressions and guards use only arithmetic, comparisons, numbers and known functions;
- sizes: every weight and constant's declared size, strides and offset fit in the bytes its
  record holds; no tensor of the graph has a static size above ``MAX_STATIC_TENSOR_BYTES``.

What fails is refused with a ModelLoadError naming the entry and ``--trust-model``.
"""

from __future__ import annotations

import ast
import io
import json
import re
import zipfile
from dataclasses import dataclass
from typing import Any, Iterator

from reludoctor.errors import UnsafeModelError, first_line

# Any single tensor whose size is fixed by the file (not by the batch) may take at most this many
# bytes: a few bytes of JSON must not make the scan allocate unbounded memory.
MAX_STATIC_TENSOR_BYTES = 4 << 30
MAX_ENTRIES = 100_000
MAX_EXPR_CHARS = 10_000
MAX_GUARDS = 10_000

TRUST_HINT = "re-run with --trust-model only if you trust the file's source"

# Operators of these namespaces are pure tensor computations, except the ones listed below.
_OP_NAMESPACES = ("aten", "prims")
# aten operators with effects outside their tensors: files, printing, waiting, global caches.
_DENIED_OPS = frozenset({
    "from_file", "save", "load", "_print", "print", "warn", "wait", "_cufft_set_plan_cache_max_size",
    "_cufft_clear_plan_cache", "_test_warn_in_autograd", "set_num_threads", "_set_print_options",
})
_TORCHVISION_OPS = frozenset({"nms", "roi_align", "roi_pool", "ps_roi_align", "ps_roi_pool",
                              "deform_conv2d", "_roi_align_backward"})
_HIGHER_ORDER_OPS = frozenset({"cond", "while_loop", "map_impl", "scan", "associative_scan",
                               "wrap_with_set_grad_enabled", "wrap_with_autocast"})
# Python-level operators the exporter writes for arithmetic on symbolic sizes.
_PYTHON_OPS = frozenset({
    "_operator.getitem", "_operator.eq", "_operator.ne", "_operator.le", "_operator.ge",
    "_operator.lt", "_operator.gt", "_operator.neg", "_operator.pos", "_operator.mul",
    "_operator.add", "_operator.sub", "_operator.floordiv", "_operator.mod", "_operator.pow",
    "_operator.truediv", "_operator.and_", "_operator.or_", "_operator.lshift", "_operator.rshift",
    "_operator.not_", "_operator.abs",
    "math.trunc", "math.ceil", "math.floor", "math.sqrt",
    "torch.sym_not", "torch.sym_int", "torch.sym_float", "torch.sym_ite", "torch.sym_max",
    "torch.sym_min", "torch.sym_sqrt", "torch._sym_sqrt", "torch.sym_sum",
})
_OP_TARGET = re.compile(r"^torch\.ops\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)(?:\.([A-Za-z_][A-Za-z0-9_]*))?$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Attribute paths: torch writes them into generated code inside double quotes.
_FQN = re.compile(r"^[A-Za-z0-9_.\-]*$")
_FQN_KEYS = frozenset({"target", "fqn", "parameter_name", "buffer_name", "tensor_constant_name",
                       "custom_obj_name"})

# Symbolic size expressions: torch writes them as sympy ``srepr`` text
# ("Add(Symbol('s77', positive=True, integer=True), Integer(1))") and reads them back with
# sympy.sympify, which evaluates them with eval. Accepted: calls of these constructors and
# functions, identifier strings, bounded numbers and arithmetic; nothing else.
_SYMPY_NAMES = frozenset({
    "Symbol", "Dummy", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Abs",
    "Mod", "Eq", "Ne", "Lt", "Le", "Gt", "Ge", "StrictLessThan", "LessThan", "StrictGreaterThan",
    "GreaterThan", "Equality", "Unequality", "And", "Or", "Not", "Xor", "true", "false", "True",
    "False", "BooleanTrue", "BooleanFalse", "oo", "zoo", "nan", "Infinity", "NegativeInfinity",
    "NaN", "One", "Zero", "NegativeOne", "Half", "floor", "ceiling", "sqrt", "Piecewise",
    "ExprCondPair", "ITE", "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv",
    "CeilToInt", "FloorToInt", "CeilDiv", "LShift", "RShift", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "FloatPow",
    "PowByNatural", "IntTrueDiv", "FloatTrueDiv", "Identity", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "OpaqueUnaryFn_sqrt", "OpaqueUnaryFn_exp",
    "OpaqueUnaryFn_log", "OpaqueUnaryFn_cos", "OpaqueUnaryFn_sin", "OpaqueUnaryFn_tan",
    "OpaqueUnaryFn_tanh", "OpaqueUnaryFn_log2",
})
_SYMBOL = re.compile(r"^[a-z]+[0-9]+$")
_EXPR_KEYWORDS = frozenset({"positive", "negative", "nonnegative", "nonpositive", "integer",
                            "real", "finite", "nonzero", "zero", "commutative", "even", "odd",
                            "precision", "evaluate"})
_POWER_NAMES = frozenset({"Pow", "FloatPow", "PowByNatural"})
_EXPR_NODES = (ast.Expression, ast.Call, ast.keyword, ast.Constant, ast.Name, ast.Load,
               ast.BinOp, ast.UnaryOp, ast.Compare, ast.BoolOp, ast.Tuple, ast.List, ast.And,
               ast.Or, ast.Not, ast.USub, ast.UAdd, ast.Invert, ast.Add, ast.Sub, ast.Mult,
               ast.Div, ast.FloorDiv, ast.Mod, ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt,
               ast.GtE, ast.BitAnd, ast.BitOr)
_MAX_EXPONENT = 64

# Guards (compiled into Python by torch): comparisons of input sizes and numbers.
_GUARD_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Constant,
                ast.Name, ast.Subscript, ast.Attribute, ast.Call, ast.Load, ast.And, ast.Or,
                ast.Not, ast.USub, ast.UAdd, ast.Add, ast.Sub, ast.Mult, ast.FloorDiv, ast.Mod,
                ast.Div, ast.Pow, ast.Eq, ast.NotEq, ast.Lt, ast.LtE, ast.Gt, ast.GtE, ast.Tuple)
_GUARD_ATTRIBUTES = frozenset({"size", "stride", "storage_offset", "dim", "numel", "shape"})
_GUARD_NAMES = frozenset({"L", "Max", "Min", "Abs", "Eq", "Ne", "Mod", "FloorDiv", "CeilDiv",
                          "floor", "ceiling", "sqrt"})


@dataclass(frozen=True)
class Archive:
    """A parsed ``.pt2``: its root folder and entries (name relative to the root -> ZipInfo)."""

    root: str
    entries: dict[str, zipfile.ZipInfo]
    zf: zipfile.ZipFile

    def read(self, name: str) -> bytes:
        return self.zf.read(self.entries[name])

    def json(self, name: str) -> Any:
        try:
            return json.loads(self.read(name))
        except RecursionError:
            raise _refuse(name, "JSON nested too deeply") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise _refuse(name, f"not valid JSON ({exc})") from None


def _refuse(entry: str, reason: str) -> UnsafeModelError:
    return UnsafeModelError(f"entry {entry}: {reason}", TRUST_HINT)


def verify(data: bytes, path: str) -> None:
    """Raise UnsafeModelError (exit 2) unless ``data`` is a ``.pt2`` archive this module accepts.

    The message names ``path`` and the offending entry.
    """
    try:
        archive = _open(data)
        _check_layout(archive)
        for config_name, directory in (("data/weights/model_weights_config.json", "data/weights/"),
                                       ("data/constants/model_constants_config.json", "data/constants/")):
            _check_payloads(archive, config_name, directory)
        _check_program(archive, archive.json("models/model.json"))
        _check_sample_inputs(archive, "data/sample_inputs/model.pt")
    except UnsafeModelError as exc:
        raise UnsafeModelError(f"{path}: refused to load ({exc.message})", exc.hint) from None


def _open(data: bytes) -> Archive:
    try:
        zf = zipfile.ZipFile(io.BytesIO(data))
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, OSError, EOFError) as exc:
        raise _refuse("(archive)", f"not a readable zip archive ({exc})") from None
    if len(infos) > MAX_ENTRIES:
        raise _refuse("(archive)", f"{len(infos)} entries, more than {MAX_ENTRIES}")
    roots = {info.filename.split("/", 1)[0] for info in infos}
    if len(roots) != 1 or any("/" not in info.filename for info in infos):
        raise _refuse("(archive)", "entries are not all under one folder, as torch.export.save writes them")
    root = roots.pop()
    entries: dict[str, zipfile.ZipInfo] = {}
    for info in infos:
        name = info.filename.split("/", 1)[1]
        if name in entries:
            raise _refuse(info.filename, "appears twice in the archive")
        if info.compress_type != zipfile.ZIP_STORED:
            raise _refuse(info.filename, "is compressed (torch.export.save stores entries uncompressed)")
        if info.file_size > len(data):
            raise _refuse(info.filename, f"declares {info.file_size:,} bytes in a file of {len(data):,}")
        entries[name] = info
    return Archive(root, entries, zf)


_FIXED_ENTRIES = {
    "archive_format", "archive_version", "byteorder", ".data/version", ".data/serialization_id",
    "models/model.json", "data/weights/model_weights_config.json",
    "data/constants/model_constants_config.json", "data/sample_inputs/model.pt",
}
_PAYLOAD_ENTRY = re.compile(r"^data/(weights/weight_|constants/tensor_)[0-9]+$")


def _check_layout(archive: Archive) -> None:
    for name in archive.entries:
        if name in _FIXED_ENTRIES or _PAYLOAD_ENTRY.match(name) or name.startswith("extra/"):
            continue
        full = f"{archive.root}/{name}"
        if name.startswith("data/aotinductor/") or name.endswith((".so", ".dll", ".dylib")):
            raise _refuse(full, "native code (AOTInductor) would be loaded from the archive")
        if name in ("data/weights/model.pt", "data/constants/model.pt"):
            raise _refuse(full, "a legacy pickled payload would be unpickled with weights_only=False")
        if "custom_obj_" in name or "opaque_obj_" in name:
            raise _refuse(full, "a pickled object constant would be unpickled")
        raise _refuse(full, "not part of the archive layout torch.export.save writes")
    for required in ("archive_format", "archive_version", "models/model.json",
                     "data/weights/model_weights_config.json",
                     "data/constants/model_constants_config.json"):
        if required not in archive.entries:
            raise _refuse(f"{archive.root}/{required}", "missing")
    if archive.read("archive_format").strip() != b"pt2":
        raise _refuse(f"{archive.root}/archive_format", "is not 'pt2'")


def _element_size(code: Any, entry: str) -> int:
    from torch._export.serde.serialize import _SERIALIZE_TO_TORCH_DTYPE

    dtype = _SERIALIZE_TO_TORCH_DTYPE.get(code) if isinstance(code, int) else None
    if dtype is None:
        raise _refuse(entry, f"unknown dtype code {code!r}")
    return dtype.itemsize


def _ints(values: Any, entry: str, what: str) -> list[int]:
    if not isinstance(values, list):
        raise _refuse(entry, f"{what} is not a list")
    out = []
    for value in values:
        number = value.get("as_int") if isinstance(value, dict) else None
        if not isinstance(number, int) or isinstance(number, bool) or number < 0:
            raise _refuse(entry, f"{what} holds {value!r}, not a non-negative integer")
        out.append(number)
    return out


def _check_payloads(archive: Archive, config_name: str, directory: str) -> None:
    if config_name not in archive.entries:
        return
    where = f"{archive.root}/{config_name}"
    config = archive.json(config_name)
    items = config.get("config") if isinstance(config, dict) else None
    if not isinstance(items, dict):
        raise _refuse(where, "has no 'config' table")
    for fqn, meta in items.items():
        if not isinstance(meta, dict):
            raise _refuse(where, f"{fqn!r} is not a table")
        path_name = meta.get("path_name")
        record = f"{directory}{path_name}" if isinstance(path_name, str) else None
        if meta.get("use_pickle"):
            raise _refuse(where, f"{fqn!r} is stored as a pickle (use_pickle) and would be unpickled")
        if record is None or record not in archive.entries or not _PAYLOAD_ENTRY.match(record):
            raise _refuse(where, f"{fqn!r} names the record {path_name!r}, which is not a tensor "
                                 "record of the archive")
        tensor = meta.get("tensor_meta")
        if not isinstance(tensor, dict):
            raise _refuse(where, f"{fqn!r} has no tensor_meta")
        _check_fits(tensor, archive.entries[record].file_size, f"{where} ({fqn!r})")


def _check_fits(tensor: dict, record_bytes: int, entry: str) -> None:
    """The tensor's declared sizes, strides and offset address only bytes its record holds."""
    sizes = _ints(tensor.get("sizes"), entry, "sizes")
    strides = _ints(tensor.get("strides"), entry, "strides")
    offset = _ints([tensor.get("storage_offset")], entry, "storage_offset")[0]
    if len(strides) != len(sizes):
        raise _refuse(entry, f"{len(sizes)} sizes but {len(strides)} strides")
    element = _element_size(tensor.get("dtype"), entry)
    if any(size == 0 for size in sizes):
        return
    last = offset + sum((size - 1) * stride for size, stride in zip(sizes, strides))
    needed = (last + 1) * element
    if needed > record_bytes:
        raise _refuse(entry, f"declares a tensor of {sizes} needing {needed:,} bytes, but its "
                             f"record holds {record_bytes:,}")


def _nodes(value: Any) -> Iterator[dict]:
    """Every graph node (a dict with 'target', 'inputs' and 'outputs'), at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            if "target" in item and "inputs" in item and "outputs" in item:
                yield item
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)


def _walk(value: Any) -> Iterator[tuple[str, Any]]:
    """Every (key, value) pair of the JSON document, at any depth."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            for key, inner in item.items():
                yield key, inner
                stack.append(inner)
        elif isinstance(item, list):
            stack.extend(item)


def allowed_target(target: str) -> bool:
    """Whether a graph node may call ``target`` (its serialized name)."""
    if target in _PYTHON_OPS:
        return True
    match = _OP_TARGET.match(target)
    if match is None:
        return False
    namespace, name = match.group(1), match.group(2)
    if namespace in _OP_NAMESPACES:
        return name not in _DENIED_OPS and not name.startswith("_test")
    if namespace == "torchvision":
        return name in _TORCHVISION_OPS
    if namespace == "higher_order":
        return name in _HIGHER_ORDER_OPS
    return False


def _check_program(archive: Archive, program: Any) -> None:
    where = f"{archive.root}/models/model.json"
    if not isinstance(program, dict) or not isinstance(program.get("graph_module"), dict):
        raise _refuse(where, "is not a serialized ExportedProgram")
    for node in _nodes(program):
        target = node.get("target")
        if not isinstance(target, str) or not allowed_target(target):
            raise _refuse(where, f"the graph calls {target!r}, which is not on the allow-list of "
                                 "pure tensor operators")
    for key, value in _walk(program):
        if key in ("as_custom_obj", "custom_obj", "as_operator") and value is not None:
            if key == "as_operator" and isinstance(value, str) and allowed_target(value):
                continue
            raise _refuse(where, f"the graph holds a {key} ({_short(value)})")
        elif key == "expr_str":
            _check_expression(value, where)
        elif key == "name" and isinstance(value, str) and not _IDENTIFIER.match(value):
            raise _refuse(where, f"the name {value!r} is not an identifier")
        elif key == "forward_arg_names":
            if not isinstance(value, list) or not all(
                    isinstance(v, str) and _IDENTIFIER.match(v) for v in value):
                raise _refuse(where, f"forward argument names {_short(value)} are not identifiers")
        elif key in _FQN_KEYS and isinstance(value, str) and not (
                _FQN.match(value) or allowed_target(value)):
            raise _refuse(where, f"the attribute path {value!r} is not a dotted name")
        elif key == "tensor_values" and isinstance(value, dict):
            for name, meta in value.items():
                _check_static_size(meta, f"{where} ({name!r})")
        elif key == "custom_obj_values" and value:
            raise _refuse(where, "the graph holds custom objects")
    guards = program.get("guards_code") or []
    if not isinstance(guards, list) or len(guards) > MAX_GUARDS:
        raise _refuse(where, "guards_code is not a short list")
    for guard in guards:
        _check_guard(guard, where)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def _check_static_size(meta: Any, entry: str) -> None:
    if not isinstance(meta, dict) or not isinstance(meta.get("sizes"), list):
        return
    static = 1
    for size in meta["sizes"]:
        number = size.get("as_int") if isinstance(size, dict) else None
        if isinstance(number, int) and not isinstance(number, bool):
            if number < 0:
                raise _refuse(entry, f"negative size {number}")
            static *= number
    code = meta.get("dtype")
    element = _element_size(code, entry) if code is not None else 8
    if static * element > MAX_STATIC_TENSOR_BYTES:
        raise _refuse(entry, f"a tensor of the graph has a fixed size of {static * element:,} bytes, "
                             f"more than the limit of {MAX_STATIC_TENSOR_BYTES:,}")


def _small_exponent(node: ast.AST) -> bool:
    """A literal exponent (possibly wrapped as Integer(k)) of at most _MAX_EXPONENT, or a symbol."""
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "Integer" \
            and len(node.args) == 1:
        node = node.args[0]
    if isinstance(node, ast.UnaryOp):
        node = node.operand
    if isinstance(node, ast.Constant):
        return isinstance(node.value, (int, float)) and abs(node.value) <= _MAX_EXPONENT
    return not isinstance(node, ast.BinOp)  # a symbol or an expression of symbols stays symbolic


def _check_expression(text: Any, entry: str) -> None:
    """A symbolic size expression that sympy evaluates: constructors, identifiers, numbers."""
    if not isinstance(text, str) or len(text) > MAX_EXPR_CHARS:
        raise _refuse(entry, f"the symbolic expression {_short(text)} is not a short string")
    try:
        tree = ast.parse(text, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _refuse(entry, f"the symbolic expression {_short(text)} is not an expression") from None
    for node in ast.walk(tree):
        bad = None
        if not isinstance(node, _EXPR_NODES):
            bad = f"uses {type(node).__name__}"
        elif isinstance(node, ast.Call) and not (isinstance(node.func, ast.Name)
                                                 and node.func.id in _SYMPY_NAMES):
            bad = "calls something other than a sympy constructor"
        elif isinstance(node, ast.Name) and node.id not in _SYMPY_NAMES and not _SYMBOL.match(node.id):
            bad = f"names {node.id!r}"
        elif isinstance(node, ast.keyword) and node.arg not in _EXPR_KEYWORDS:
            bad = f"passes {node.arg}="
        elif isinstance(node, ast.Constant) and not _plain_constant(node.value):
            bad = f"holds {_short(node.value)}"
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow) \
                and not _small_exponent(node.right):
            bad = "raises to a large power"
        elif isinstance(node, ast.Call) and node.func.id in _POWER_NAMES and len(node.args) == 2 \
                and not _small_exponent(node.args[1]):
            bad = "raises to a large power"
        if bad:
            raise _refuse(entry, f"the symbolic expression {_short(text)} {bad}")


def _plain_constant(value: Any) -> bool:
    if isinstance(value, str):
        return bool(_IDENTIFIER.match(value)) or bool(re.fullmatch(r"-?[0-9]{1,30}(\.[0-9]{1,30})?", value))
    if isinstance(value, bool) or value is None:
        return True
    if isinstance(value, int):
        return abs(value) < 10 ** 30
    return isinstance(value, float)


def _check_guard(guard: Any, entry: str) -> None:
    """A guard torch compiles into Python: comparisons of input sizes (L['x'].size()[0]) and numbers."""
    if not isinstance(guard, str) or len(guard) > MAX_EXPR_CHARS:
        raise _refuse(entry, "a guard is not a short string")
    try:
        tree = ast.parse(guard, mode="eval")
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        raise _refuse(entry, f"the guard {_short(guard)} is not an expression") from None
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES):
            raise _refuse(entry, f"the guard {_short(guard)} uses {type(node).__name__}")
        if isinstance(node, ast.Name) and node.id not in _GUARD_NAMES:
            raise _refuse(entry, f"the guard {_short(guard)} names {node.id!r}")
        if isinstance(node, ast.Attribute) and node.attr not in _GUARD_ATTRIBUTES:
            raise _refuse(entry, f"the guard {_short(guard)} reads .{node.attr}")
        if isinstance(node, ast.Constant):
            value = node.value
            if isinstance(value, str) and not _IDENTIFIER.match(value):
                raise _refuse(entry, f"the guard {_short(guard)} holds the string {value!r}")
            if not isinstance(value, (str, int, float, bool)) or (
                    isinstance(value, int) and abs(value) > 1 << 63):
                raise _refuse(entry, f"the guard {_short(guard)} holds {value!r}")
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and isinstance(exponent.value, int)
                    and 0 <= exponent.value <= 8):
                raise _refuse(entry, f"the guard {_short(guard)} raises to a large power")


def _check_sample_inputs(archive: Archive, name: str) -> None:
    """torch retries a failed ``weights_only=True`` load of the sample inputs with
    ``weights_only=False``: the safe load must succeed here, or the file is refused."""
    if name not in archive.entries:
        return
    data = archive.read(name)
    if not data:
        return
    import pickle

    import torch

    try:
        torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    except pickle.UnpicklingError as exc:
        first = first_line(exc)
        raise _refuse(f"{archive.root}/{name}", f"holds pickled objects beyond tensors ({first[:120]})") from None
    except Exception as exc:  # noqa: BLE001 - any failure here would make torch retry unsafely
        raise _refuse(f"{archive.root}/{name}", f"cannot be read safely ({type(exc).__name__})") from None
