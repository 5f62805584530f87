"""Seeded mutation operators: raw bytes, zip entries, JSON values, TOML lines, .npy headers, ONNX
protos. Every operator takes a ``random.Random`` and returns new bytes plus a short description."""

from __future__ import annotations

import io
import json
import random
import re
import struct
import warnings
import zipfile

INTERESTING = [b"\x00", b"\xff", b"\x7f", b"\x80", b"\x00\x00\x00\x00", b"\xff\xff\xff\xff",
               b"\xff\xff\xff\x7f", b"\x00\x00\x00\x80", b"\xff" * 8, b"\x00" * 8,
               struct.pack("<q", 2**62), struct.pack("<d", float("nan")), struct.pack("<f", float("inf"))]


# --------------------------------------------------------------------------- raw bytes

def bit_flip(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return b"\x01", "bitflip(empty)"
    buf = bytearray(data)
    k = rng.randint(1, 8)
    positions = [rng.randrange(len(buf)) for _ in range(k)]
    for pos in positions:
        buf[pos] ^= 1 << rng.randrange(8)
    return bytes(buf), f"bitflip x{k} @{positions[0]}"


def byte_insert(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    pos = rng.randint(0, len(data))
    chunk = rng.choice(INTERESTING) if rng.random() < 0.5 else rng.randbytes(rng.randint(1, 64))
    return data[:pos] + chunk + data[pos:], f"insert {len(chunk)}B @{pos}"


def byte_delete(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if len(data) < 2:
        return b"", "delete all"
    pos = rng.randrange(len(data))
    n = rng.randint(1, min(64, len(data) - pos))
    return data[:pos] + data[pos + n:], f"delete {n}B @{pos}"


def truncate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    n = rng.randint(0, max(0, len(data) - 1))
    return data[:n], f"truncate to {n}B of {len(data)}"


def overwrite(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if not data:
        return rng.choice(INTERESTING), "overwrite(empty)"
    value = rng.choice(INTERESTING)
    pos = rng.randrange(len(data))
    return data[:pos] + value + data[pos + len(value):], f"overwrite {value.hex()} @{pos}"


RAW_OPS = (bit_flip, byte_insert, byte_delete, truncate, overwrite)


def raw(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    op = rng.choice(RAW_OPS)
    return op(data, rng)


# --------------------------------------------------------------------------- zip archives

def read_zip(data: bytes) -> list[tuple[zipfile.ZipInfo, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as archive:
        return [(info, archive.read(info)) for info in archive.infolist()]


def write_zip(entries: list[tuple[str, bytes, int]]) -> bytes:
    out = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # duplicate names are the point of one operator
        with zipfile.ZipFile(out, "w") as archive:
            for name, content, compress in entries:
                info = zipfile.ZipInfo(name, date_time=(2020, 1, 1, 0, 0, 0))
                info.compress_type = compress
                archive.writestr(info, content)
    return out.getvalue()


def zip_entries(data: bytes) -> list[tuple[str, bytes, int]]:
    return [(info.filename, content, info.compress_type) for info, content in read_zip(data)]


def zip_mutate(data: bytes, rng: random.Random, *, json_weight: float = 0.25) -> tuple[bytes, str]:
    """One entry-level edit of a zip archive (delete/empty/replace/duplicate an entry, mutate its
    bytes with a valid CRC, or edit the JSON inside it)."""
    entries = zip_entries(data)
    json_idx = [i for i, (name, content, _) in enumerate(entries)
                if name.endswith(".json") or content[:1] in (b"{", b"[")]
    if json_idx and rng.random() < json_weight:
        i = rng.choice(json_idx)
        name, content, comp = entries[i]
        try:
            new, what = json_mutate(content, rng)
        except ValueError:
            new, what = raw(content, rng)
        entries[i] = (name, new, comp)
        return write_zip(entries), f"zip json-edit {name.split('/', 1)[-1]}: {what}"
    i = rng.randrange(len(entries))
    name, content, comp = entries[i]
    short = name.split("/", 1)[-1]
    op = rng.choice(("delete", "empty", "replace", "duplicate", "bytes", "bytes", "bytes"))
    if op == "delete":
        del entries[i]
    elif op == "empty":
        entries[i] = (name, b"", comp)
    elif op == "replace":
        entries[i] = (name, rng.randbytes(rng.randint(0, max(1, len(content)))), comp)
    elif op == "duplicate":
        other = rng.randbytes(len(content)) if rng.random() < 0.5 else content
        entries.insert(rng.randint(0, len(entries)), (name, other, comp))
    else:
        new, what = raw(content, rng)
        entries[i] = (name, new, comp)
        return write_zip(entries), f"zip entry-bytes {short}: {what}"
    return write_zip(entries), f"zip {op} {short}"


# --------------------------------------------------------------------------- JSON

JSON_VALUES = [10**30, -1, 0, 2**62, -(2**63), 1.5, "x", "\x1b[2J", None, [], {}, True, "../../etc/passwd",
               [[[[[[[[[[[]]]]]]]]]]]]


def _paths(obj, prefix=(), depth=0):
    yield prefix
    if depth > 40:
        return
    if isinstance(obj, dict):
        for key, value in obj.items():
            yield from _paths(value, prefix + (key,), depth + 1)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            yield from _paths(value, prefix + (i,), depth + 1)


def json_mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    obj = json.loads(data)
    paths = [p for p in _paths(obj) if p]
    if not paths:
        return json.dumps(rng.choice(JSON_VALUES)).encode(), "replace root"
    path = rng.choice(paths)
    parent = obj
    for key in path[:-1]:
        parent = parent[key]
    last = path[-1]
    op = rng.choice(("set", "set", "set", "delete", "nest", "dup"))
    label = "/".join(str(p) for p in path)
    if len(label) > 60:
        label = "..." + label[-57:]
    if op == "delete":
        if isinstance(parent, dict):
            del parent[last]
        else:
            parent.pop(last)
    elif op == "nest":
        value = parent[last]
        for _ in range(rng.choice((5, 50, 500))):
            value = [value]
        parent[last] = value
    elif op == "dup" and isinstance(parent, list):
        parent.insert(last, parent[last])
    else:
        value = rng.choice(JSON_VALUES)
        parent[last] = value
        return json.dumps(obj).encode(), f"json {label}={json.dumps(value)[:30]}"
    return json.dumps(obj).encode(), f"json {op} {label}"


# --------------------------------------------------------------------------- TOML

TOML_VALUES = ['"0.1"', "-1", "1e309", "inf", "nan", "[0.1, 0.2]", "{}", "999999999999999999999", "true",
               '"/dev/zero"', '"\x1b[2J"', "0x10", "1979-05-27", "'''", '"a" "b"']


def toml_mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    if rng.random() < 0.4:
        return raw(data, rng)
    lines = data.decode("utf-8", "replace").splitlines()
    op = rng.choice(("value", "value", "delete", "dup", "insert", "key"))
    i = rng.randrange(len(lines)) if lines else 0
    if op == "value" and lines and "=" in lines[i]:
        key = lines[i].split("=", 1)[0]
        value = rng.choice(TOML_VALUES)
        lines[i] = f"{key}= {value}"
        what = f"toml line {i} value {value!r}"
    elif op == "delete" and lines:
        what = f"toml delete line {i}"
        del lines[i]
    elif op == "dup" and lines:
        lines.insert(i, lines[i])
        what = f"toml duplicate line {i}"
    elif op == "key" and lines and "=" in lines[i]:
        lines[i] = re.sub(r"^[\w.-]+", rng.choice(("fail_over", "FAIL-OVER", "fail-overr", "top", "sites", "")),
                          lines[i])
        what = f"toml rename key line {i}"
    else:
        extra = rng.choice(('[tool.reludoctor]', 'baseline = "missing.json"', "top = -5", "[[x]]", "fail-on = 7",
                            'sites = { "*" = 2.0 }', "= 1", "tolerance = []"))
        lines.insert(i, extra)
        what = f"toml insert {extra!r}"
    return ("\n".join(lines) + "\n").encode(), what


# --------------------------------------------------------------------------- .npy

def npy_header_mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """Edit the dict in a .npy header (shape, dtype, order) and keep the rest of the bytes."""
    if data[:6] != b"\x93NUMPY":
        return raw(data, rng)
    major = data[6]
    if major == 1:
        hlen = struct.unpack("<H", data[8:10])[0]
        start = 10
    else:
        hlen = struct.unpack("<I", data[8:12])[0]
        start = 12
    header = data[start:start + hlen].decode("latin1")
    body = data[start + hlen:]
    choice = rng.choice(("shape", "shape", "descr", "order", "garbage"))
    if choice == "shape":
        shape = rng.choice(("(10000000, 64)", "(360, 64, 64)", "(0, 64)", "(-1, 64)", "(360,)", "()",
                            "(4611686018427387904, 64)", "(360, 1, 8, 8)", "(360, 65)", "(1, 1)"))
        header = re.sub(r"'shape': \([^)]*\)", f"'shape': {shape}", header)
        what = f"npy shape {shape}"
    elif choice == "descr":
        descr = rng.choice(("'>f4'", "'<f8'", "'|u1'", "'<c8'", "'|O'", "'<U4'", "'|b1'", "'<f2'", "'<i8'", "'V4'"))
        header = re.sub(r"'descr': '[^']*'", f"'descr': {descr}", header)
        what = f"npy descr {descr}"
    elif choice == "order":
        header = header.replace("False", "True")
        what = "npy fortran_order True"
    else:
        header = header[:-1][: rng.randrange(len(header))] + rng.choice(("{", "}", "(", "'", "x")) + header[-1]
        what = "npy header garbage"
    header_bytes = header.encode("latin1")
    prefix = data[:8] + (struct.pack("<H", len(header_bytes)) if major == 1 else struct.pack("<I", len(header_bytes)))
    return prefix + header_bytes + body, what


# --------------------------------------------------------------------------- ONNX

def onnx_mutate(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    """One structural edit of an ONNX ModelProto (dims, types, ops, initializers, names)."""
    import onnx

    model = onnx.ModelProto()
    model.ParseFromString(data)
    g = model.graph
    op = rng.choice(("input_dim", "init_dims", "elem_type", "op_type", "drop_node", "drop_init", "rename",
                     "attr", "opset", "raw_data"))
    what = op
    if op == "input_dim" and g.input:
        dims = g.input[0].type.tensor_type.shape.dim
        if dims:
            d = dims[rng.randrange(len(dims))]
            value = rng.choice((0, -1, 1, 10**7, 2**62, 3))
            d.dim_value = value
            what = f"onnx input dim={value}"
    elif op == "init_dims" and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        if t.dims:
            t.dims[rng.randrange(len(t.dims))] = rng.choice((0, 1, 2**31, 2**62, 100000))
        what = f"onnx initializer {t.name} dims {list(t.dims)}"
    elif op == "elem_type" and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        t.data_type = rng.choice((2, 6, 7, 10, 11, 16, 8, 0, 99))
        what = f"onnx initializer {t.name} type {t.data_type}"
    elif op == "op_type" and g.node:
        n = g.node[rng.randrange(len(g.node))]
        n.op_type = rng.choice(("Relu", "Clip", "Loop", "Identity", "NotAnOp", "If", "Gemm", "Relu6"))
        what = f"onnx node {n.name} op {n.op_type}"
    elif op == "drop_node" and g.node:
        i = rng.randrange(len(g.node))
        what = f"onnx drop node {g.node[i].name}"
        del g.node[i]
    elif op == "drop_init" and g.initializer:
        i = rng.randrange(len(g.initializer))
        what = f"onnx drop initializer {g.initializer[i].name}"
        del g.initializer[i]
    elif op == "rename" and g.node:
        n = g.node[rng.randrange(len(g.node))]
        if n.output:
            n.output[0] = rng.choice(("x", "", "logits", "\x1b[31mred", "a" * 5000))
        what = f"onnx rename output of {n.name}"
    elif op == "attr" and g.node:
        n = g.node[rng.randrange(len(g.node))]
        a = n.attribute.add()
        a.name = rng.choice(("alpha", "axis", "transB", "min"))
        a.type = onnx.AttributeProto.INT
        a.i = rng.choice((-1, 2**40, 7))
        what = f"onnx node {n.name} attr {a.name}={a.i}"
    elif op == "opset" and model.opset_import:
        model.opset_import[0].version = rng.choice((1, 6, 99, 10**6))
        what = f"onnx opset {model.opset_import[0].version}"
    elif op == "raw_data" and g.initializer:
        t = g.initializer[rng.randrange(len(g.initializer))]
        blob, inner = raw(t.raw_data, rng)
        t.raw_data = blob
        what = f"onnx initializer {t.name} raw_data {inner}"
    return model.SerializeToString(), what
