"""Checks before a TorchScript archive is loaded (only ever with ``--trust-model``).

TorchScript is code: a scripted module can call any operator, including ones that write files,
so it is refused unless the user trusts the file. Even a trusted file can be damaged, and a
damaged one can kill the process with no message (an emptied tensor record loads fine, then the
first ``addmm`` reads unallocated memory: SIGSEGV). So:

- ``check_storages``: every tensor storage the archive's pickles declare (read without executing
  anything: a stub unpickler) must fit in the bytes of its record;
- ``probe_load``: the archive is first loaded in a child process, so a crash inside
  ``torch.jit.load`` becomes a clean error here instead of the end of the scan.
"""

from __future__ import annotations

import io
import json
import pickle
import re
import signal
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

from reludoctor.errors import ModelLoadError

PROBE_TIMEOUT_S = 300

_ELEMENT_SIZES = {
    "DoubleStorage": 8, "FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2,
    "LongStorage": 8, "IntStorage": 4, "ShortStorage": 2, "CharStorage": 1, "ByteStorage": 1,
    "BoolStorage": 1, "ComplexFloatStorage": 8, "ComplexDoubleStorage": 16, "QInt8Storage": 1,
    "QUInt8Storage": 1, "QInt32Storage": 4, "UntypedStorage": 1,
}


class _Stub:
    """Stands in for every global of the pickle: calling, building or indexing it does nothing."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        pass

    def __setitem__(self, key: Any, value: Any) -> None:
        pass

    def append(self, value: Any) -> None:
        pass

    def extend(self, values: Any) -> None:
        pass


class _StorageLister(pickle.Unpickler):
    """Reads a pickle's persistent ids (the storages) without importing or calling anything."""

    def __init__(self, data: bytes) -> None:
        super().__init__(io.BytesIO(data))
        self.storages: list[tuple[str, str, int]] = []  # (key, storage type, numel)

    def find_class(self, module: str, name: str) -> Any:
        return type(name if name.isidentifier() else "Global", (_Stub,), {})

    def persistent_load(self, pid: Any) -> Any:
        if isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage":
            kind = pid[1].__name__ if isinstance(pid[1], type) else str(pid[1])
            self.storages.append((str(pid[2]), kind, pid[4]))
        return _Stub()


def check_storages(path: Path) -> None:
    """Refuse an archive whose declared tensor storages do not fit in their records."""
    where = str(path)
    try:
        with zipfile.ZipFile(path) as archive:
            sizes = {info.filename.split("/", 1)[-1]: info.file_size for info in archive.infolist()}
            for pickled, folder in (("data.pkl", "data/"), ("constants.pkl", "constants/")):
                name = next((n for n in archive.namelist() if n.split("/", 1)[-1] == pickled), None)
                if name is None:
                    continue
                lister = _StorageLister(archive.read(name))
                lister.load()
                for key, kind, numel in lister.storages:
                    record = f"{folder}{key}"
                    element = _ELEMENT_SIZES.get(kind)
                    if element is None or not isinstance(numel, int) or numel < 0:
                        raise ModelLoadError(f"{where}: tensor record {record} has an unknown "
                                             f"storage {kind!r}", "re-save with torch.jit.save")
                    if record not in sizes:
                        raise ModelLoadError(f"{where}: tensor record {record} is missing",
                                             "the archive is damaged: re-save it")
                    if sizes[record] < numel * element:
                        raise ModelLoadError(
                            f"{where}: tensor record {record} holds {sizes[record]:,} bytes but "
                            f"declares {numel * element:,}", "the archive is damaged: re-save it")
    except ModelLoadError:
        raise
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, pickle.UnpicklingError,
            RecursionError, MemoryError, TypeError, AttributeError, IndexError, KeyError) as exc:
        raise ModelLoadError(f"{where}: cannot read the TorchScript archive ({type(exc).__name__})",
                             "re-save with torch.jit.save") from None


# The child imports the op libraries the parent imported (``--import``, torchvision), from the
# parent's module search path, so that the archive's operators resolve there as they do here.
_PROBE = (
    "import importlib, json, sys\n"
    "path, imports, search = sys.argv[1], json.loads(sys.argv[2]), json.loads(sys.argv[3])\n"
    "sys.path[:] = search + [p for p in sys.path if p not in search]\n"
    "import torch\n"
    "for name in imports:\n"
    "    importlib.import_module(name)\n"
    "torch.jit.load(path, map_location='cpu')\n"
)

MAX_CODE_BYTES = 64 << 20  # the code entries read to find operator namespaces
_OP_CALL = re.compile(rb"\bops\.([A-Za-z_]\w*)\.[A-Za-z_]\w*\s*\(")
_BUILTIN_NAMESPACES = {"aten", "prim", "quantized", "_caffe2", "profiler", "cuda", "_quantized"}


def op_namespaces(path: Path) -> set[str]:
    """The operator namespaces (``torchvision`` of ``ops.torchvision.nms(...)``) the archive's
    serialized code calls, other than torch's own. Read as text: nothing is executed."""
    found: set[str] = set()
    budget = MAX_CODE_BYTES
    try:
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                parts = info.filename.split("/")
                if "code" not in parts[:2] or not info.filename.endswith(".py"):
                    continue
                if info.file_size > budget:
                    break
                budget -= info.file_size
                found.update(m.group(1).decode() for m in _OP_CALL.finditer(archive.read(info)))
    except (zipfile.BadZipFile, OSError, EOFError, ValueError, RuntimeError, NotImplementedError):
        return set()  # the load reports a damaged archive
    return found - _BUILTIN_NAMESPACES


def probe_load(path: Path, imports: list[str] | None = None) -> None:
    """Load the archive in a child process first: a crash there is an error here, not our death."""
    search = [p for p in sys.path if p]
    try:
        result = subprocess.run([sys.executable, "-c", _PROBE, str(path), json.dumps(list(imports or [])),
                                 json.dumps(search)], capture_output=True,
                                timeout=PROBE_TIMEOUT_S, stdin=subprocess.DEVNULL, check=False)
    except subprocess.TimeoutExpired:
        raise ModelLoadError(f"{path}: loading the TorchScript archive did not finish in "
                             f"{PROBE_TIMEOUT_S} s", "the archive may be damaged") from None
    if result.returncode < 0:
        try:
            name = signal.Signals(-result.returncode).name
        except ValueError:
            name = f"signal {-result.returncode}"
        raise ModelLoadError(f"{path}: loading the TorchScript archive crashed the loader ({name})",
                             "the archive is damaged: re-save it with torch.jit.save")
    # A Python-level failure (exit 1) is reported by the load in this process, with its message.
