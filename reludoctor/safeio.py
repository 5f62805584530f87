"""Reading untrusted files safely: regular files only, bounded sizes, one clear error.

Every file reludoctor reads on a user's behalf (models, data, settings, saved reports) goes
through here, so that a FIFO never blocks the run, a device such as /dev/zero never grows memory
without bound, a symlink loop is an input error (exit 2) and not a crash, and the read is at most
a documented number of bytes.
"""

from __future__ import annotations

import contextlib
import contextvars
import errno
import os
import secrets
import stat
from pathlib import Path
from typing import BinaryIO, Iterator

from reludoctor.errors import ReludoctorError

# Documented limits (docs/security.md): files larger than these are refused before being read.
MAX_REPORT_BYTES = 256 << 20  # a saved JSON report or baseline
MAX_SETTINGS_BYTES = 4 << 20  # reludoctor.toml / pyproject.toml
MAX_JSON_INT_DIGITS = 4300  # Python's own default int <-> str limit, applied to our JSON too


def _describe(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_regular(path: str | Path, what: str, error: type[ReludoctorError] = ReludoctorError) -> Path:
    """``path`` if it is a regular file (symlinks followed); else ``error`` naming ``what``."""
    path = Path(path)
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise error(f"{what} {path}: {os_reason(exc)}") from None
    if not stat.S_ISREG(mode):
        raise error(f"{what} {path} is {_describe(mode)}", "give a regular file")
    return path


def open_regular(path: str | Path, what: str, error: type[ReludoctorError] = ReludoctorError) -> BinaryIO:
    """Open ``path`` for reading without ever blocking: O_NONBLOCK for the open (a FIFO swapped
    in after a check would otherwise block), then fstat on the open descriptor."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{what} {path}: no such file") from None
    except OSError as exc:
        raise error(f"{what} {path}: {os_reason(exc)}") from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise error(f"{what} {path} is {_describe(mode)}", "give a regular file")
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_limited(path: str | Path, limit: int, what: str,
                 error: type[ReludoctorError] = ReludoctorError) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes (refused before reading if larger)."""
    with open_regular(path, what, error) as handle:
        size = os.fstat(handle.fileno()).st_size
        if size > limit:
            raise error(f"{what} {path} is {size:,} bytes, more than the limit of {limit:,}",
                        "is it the right file?")
        # read(n) allocates n bytes up front: ask for the size found (+1 to see growth), not the limit
        data = handle.read(size + 1)
    if len(data) > size:  # grew while reading
        raise error(f"{what} {path} changed while it was read", "read it again when nothing writes to it")
    return data


def os_reason(exc: OSError) -> str:
    """A short reason for an OSError (ELOOP reads as 'a symlink loop')."""
    if exc.errno == errno.ELOOP:
        return "a symlink loop"
    return exc.strerror or str(exc)


# --- Outputs never hit inputs -------------------------------------------------------------
# Every file a command reads is noted in the current ledger (a context variable the CLI opens
# per command; library callers may open their own). Every writer asks the ledger before it
# replaces a file, so no output path can overwrite a model, an external-data file, a data file,
# an image of a folder, labels, a baseline or a settings file, through any symlink or hard link.

_LEDGER: contextvars.ContextVar[InputLedger | None] = contextvars.ContextVar("reludoctor_inputs",
                                                                            default=None)


class InputLedger:
    """The files read in one run: (st_dev, st_ino) and resolved path of each."""

    def __init__(self) -> None:
        self._ids: dict[tuple[int, int], str] = {}
        self._paths: dict[Path, str] = {}

    def note(self, path: str | Path) -> None:
        path = Path(path)
        try:
            info = os.stat(path)
            self._ids[(info.st_dev, info.st_ino)] = str(path)
        except OSError:
            pass
        try:
            self._paths[path.resolve()] = str(path)
        except (OSError, RuntimeError):
            pass

    def reader_of(self, destination: str | Path) -> str | None:
        """The input ``destination`` would overwrite, or None."""
        destination = Path(destination)
        try:
            info = os.stat(destination)
            hit = self._ids.get((info.st_dev, info.st_ino))
            if hit is not None:
                return hit
        except OSError:
            pass
        try:
            return self._paths.get(destination.resolve())
        except (OSError, RuntimeError):
            return None


@contextlib.contextmanager
def ledger() -> Iterator[InputLedger]:
    """Open a ledger for one command (nested calls share the outer one)."""
    current = _LEDGER.get()
    if current is not None:
        yield current
        return
    token = _LEDGER.set(InputLedger())
    try:
        yield _LEDGER.get()  # type: ignore[misc]
    finally:
        _LEDGER.reset(token)


def note_read(path: str | Path) -> None:
    """Record that this run reads ``path`` (no-op outside a ledger)."""
    current = _LEDGER.get()
    if current is not None:
        current.note(path)


def input_at(destination: str | Path) -> str | None:
    """The input file this run read that ``destination`` is (None: safe to write)."""
    current = _LEDGER.get()
    return None if current is None else current.reader_of(destination)


# --- Temporary files of atomic writes ------------------------------------------------------
# Every temporary file an output writer creates is registered *before* it exists (the name is
# chosen here, then created with O_EXCL), so that whatever interrupts the write (SIGTERM, SIGINT,
# a second signal during the writer's own cleanup) the CLI can still remove it on the way out.

_TEMPS: set[str] = set()


def create_temp(folder: str | Path, prefix: str, suffix: str) -> tuple[int, str]:
    """Create a new empty file ``folder/PREFIX<random>SUFFIX`` (mode 0600, like mkstemp) and
    return (descriptor, path); the path is registered for ``remove_temps`` until ``forget_temp``
    or ``remove_temp``. OSError (a read-only folder, ...) propagates, with nothing registered."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    for _ in range(100):
        name = os.path.join(str(folder), f"{prefix}{secrets.token_hex(6)}{suffix}")
        _TEMPS.add(name)  # first: a signal between here and the open leaves nothing behind
        try:
            return os.open(name, flags, 0o600), name
        except FileExistsError:
            _TEMPS.discard(name)
        except BaseException:
            _TEMPS.discard(name)
            raise
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(folder))


def forget_temp(name: str | Path) -> None:
    """``name`` was renamed onto its destination: nothing to remove any more."""
    _TEMPS.discard(str(name))


def remove_temp(name: str | Path) -> None:
    """Remove a temporary file (if it is still there) and forget it."""
    try:
        os.unlink(name)
    except FileNotFoundError:
        pass
    except OSError:
        return  # keep it registered: remove_temps tries again on the way out
    _TEMPS.discard(str(name))


def remove_temps() -> None:
    """Remove every temporary file still registered (the CLI calls this on every exit path)."""
    for name in list(_TEMPS):
        remove_temp(name)


def refuse_input(destination: str | Path, option: str | None = None) -> None:
    """UsageError (exit 2) when this run read ``destination`` as an input (model, external data,
    data file, image of a folder, labels, baseline, settings): outputs never overwrite inputs."""
    from reludoctor.errors import UsageError

    hit = input_at(destination)
    if hit is not None:
        label = f"{option} {destination}" if option else str(destination)
        raise UsageError(f"{label} would overwrite an input file ({hit}): reludoctor never "
                         "overwrites what it reads", "choose another path")


def would_overwrite(destination: str | Path, inputs: "list[str | Path | None]",
                    folder_suffixes: "tuple[str, ...] | frozenset[str]" = ()) -> str | None:
    """Before a run reads anything: the input ``destination`` is among ``inputs`` (through
    symlinks and hard links), an existing file with one of ``folder_suffixes`` inside an input
    folder (a scan of an image folder would read it), or a file this run already read (the
    ledger); else None."""
    known = InputLedger()
    folders = []
    for item in inputs:
        if item:
            known.note(item)
            if Path(item).is_dir():
                folders.append(Path(item).resolve())
    hit = known.reader_of(destination) or input_at(destination)
    if hit is None and folders:
        target = Path(destination).resolve()
        if target.suffix.lower() in folder_suffixes and target.is_file():
            hit = next((str(target) for folder in folders if folder in target.parents), None)
    return hit


def resolve_path(path: str | Path, what: str, error: type[ReludoctorError] = ReludoctorError) -> Path:
    """``Path(path).resolve()``, with a symlink loop (RuntimeError or ELOOP) as ``error`` naming
    ``what``: exit 2, not an internal error."""
    try:
        return Path(path).resolve()
    except RuntimeError:
        raise error(f"{what} {path}: a symlink loop", "give a real file path") from None
    except OSError as exc:
        raise error(f"{what} {path}: {os_reason(exc)}") from None


@contextlib.contextmanager
def atomic_path(out: str | Path, option: str | None = None) -> Iterator[Path]:
    """A temporary path beside ``out`` (mode as for any new file), renamed onto ``out`` when the
    block succeeds, removed when it fails or is interrupted: nothing is left behind.

    The one write path of every output (reports, fixed models, summaries). Refused (UsageError,
    exit 2): ``out`` is a file this run read (the input ledger), checked before the temporary file
    is made and again right before the rename. A folder that cannot be written (read-only, full)
    is a ReludoctorError naming it, not an internal error."""
    out = Path(out)
    label = f"{option} {out}" if option else str(out)
    folder = out.parent if str(out.parent) else Path(".")
    refuse_input(out, option)
    try:
        fd, name = create_temp(folder, f".{out.name}.", f".tmp{out.suffix}")
    except OSError as exc:
        raise ReludoctorError(f"cannot write {label}: {os_reason(exc)} (folder {folder})",
                              "choose a folder you can write to") from None
    temp = Path(name)
    try:
        os.close(fd)
        umask = os.umask(0)  # the temp file is 0600; an output is an ordinary file
        os.umask(umask)
        os.chmod(temp, 0o666 & ~umask)
        yield temp
        refuse_input(out, option)  # the ledger now knows every file the run read
        try:
            os.replace(temp, out)
        except OSError as exc:
            raise ReludoctorError(f"cannot write {label}: {os_reason(exc)}") from None
        forget_temp(temp)
    except BaseException:
        remove_temp(temp)
        raise
