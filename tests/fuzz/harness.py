"""Run fuzz cases as bounded subprocesses and classify what happened.

Each case runs as ``python -m reludoctor ...`` in its own folder ``ROOT/cases/ID`` with ``-q``,
a wall-clock timeout, ``RLIMIT_AS`` (address space; a runaway allocation fails instead of taking
the machine down), ``RLIMIT_CORE=0`` and ``RLIMIT_FSIZE``, in its own session (the whole process
group is killed on timeout). Peak RSS comes from ``os.wait4``. Outcomes:

- ``exit0``/``exit1``: ran (1: a gate failed); ``exit2``: refused with a clean message (no
  traceback); ``exit2_traceback``; ``exit3`` (internal error); ``crash`` (killed by a signal);
  ``hang`` (timeout); ``other`` (any other code).
- flags, independent of the outcome: ``memory`` (peak RSS over the bound, or an allocation failure
  in the output), ``code_executed`` (a payload's MARKER exists), ``input_modified`` (an input's
  sha256 changed or it vanished), ``wrote_outside`` (a new file in ROOT/outside, ROOT/home or
  ROOT/cases beside the case folder), ``traceback`` (``Traceback`` on stderr), ``raw_escape`` (an
  ESC byte in the output of a case that checks for it), ``wrong_report`` (a case that must give
  the same dead units as the unmodified scan did not).
"""

from __future__ import annotations

import hashlib
import json
import os
import resource
import shutil
import signal
import stat
import sys
import time
import zipfile
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

from .cases import FORMATS, MARKER, Base, Case, plan

GIB = 1 << 30
DEFAULT_AS_LIMIT = 4 * GIB  # a normal scan of the fixtures peaks at ~0.85 GB RSS, ~3.3 GB mapped
DEFAULT_RSS_BOUND_MB = 2048
DEFAULT_TIMEOUT = 60.0
FSIZE_LIMIT = 1 * GIB
HASH_LIMIT = 256 << 20  # files larger than this (the sparse ones) are compared by size and mtime
def CACHE_PREFIXES(root: Path) -> tuple[str, ...]:
    # library caches under HOME (onnxruntime's telemetry device id, matplotlib, torch) are not
    # writes the input caused
    return tuple(str(root / "home" / name) for name in (".cache", ".config"))


MEMORY_SIGNS = ("MemoryError", "bad_alloc", "can't allocate memory", "Unable to allocate",
                "Cannot allocate memory", "out of memory", "failed to map segment")

HEADERS = ("cases", "clean exit 2", "exit 0/1", "exit 3", "crashes", "hangs", "memory", "code executed",
           "inputs modified")


@dataclass
class Settings:
    repo: Path | None = None  # run another checkout's CLI (PYTHONPATH=repo)
    timeout: float = DEFAULT_TIMEOUT
    as_limit: int = DEFAULT_AS_LIMIT
    rss_bound_mb: int = DEFAULT_RSS_BOUND_MB
    python: str = sys.executable


def child_env(root: Path, settings: Settings) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "COV_"))}
    env.pop("PYTHONPATH", None)
    if settings.repo is not None:
        env["PYTHONPATH"] = str(Path(settings.repo).resolve())
    home = root / "home"
    home.mkdir(parents=True, exist_ok=True)
    env.update(HOME=str(home), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", COLUMNS="120",
               PYTHONDONTWRITEBYTECODE="1", PYTHONFAULTHANDLER="", CUDA_VISIBLE_DEVICES="")
    env.pop("PYTHONFAULTHANDLER")
    return env


def check_import(settings: Settings, env: dict[str, str]) -> str:
    """The reludoctor package the children import (must be inside --repo when given)."""
    import subprocess

    out = subprocess.run([settings.python, "-c", "import reludoctor, os; print(os.path.realpath(reludoctor.__file__))"],
                         env=env, capture_output=True, text=True, cwd="/", timeout=120)
    where = out.stdout.strip()
    if settings.repo is not None and not where.startswith(str(Path(settings.repo).resolve())):
        raise RuntimeError(f"children import reludoctor from {where!r}, not from {settings.repo}")
    return where


def _snapshot(folder: Path) -> dict[str, tuple]:
    """Path -> (sha256 or (size, mtime)) for every regular file under folder (symlinks not followed)."""
    out: dict[str, tuple] = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in filenames:
            path = os.path.join(dirpath, name)
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if not stat.S_ISREG(st.st_mode):
                continue
            if st.st_size > HASH_LIMIT:
                out[path] = ("size", st.st_size, st.st_mtime_ns)
                continue
            digest = hashlib.sha256()
            with open(path, "rb") as handle:
                for chunk in iter(lambda: handle.read(1 << 20), b""):
                    digest.update(chunk)
            out[path] = ("sha256", digest.hexdigest())
    return out


def _listing(folder: Path) -> set[str]:
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in filenames + dirnames:
            out.add(os.path.join(dirpath, name))
    return out


def _limits(as_limit: int):
    def pre() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (as_limit, as_limit))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
        resource.setrlimit(resource.RLIMIT_FSIZE, (FSIZE_LIMIT, FSIZE_LIMIT))

    return pre


def run_case(case: Case, root: Path, settings: Settings, env: dict[str, str], *, keep: bool = False) -> dict:
    import subprocess

    cases_dir = root / "cases"
    case_dir = cases_dir / case.id
    if case_dir.exists():
        shutil.rmtree(case_dir)
    case_dir.mkdir(parents=True)
    (root / "outside").mkdir(exist_ok=True)
    logs = root / "logs"
    logs.mkdir(exist_ok=True)
    record: dict = {"id": case.id, "format": case.fmt, "kind": case.kind}
    try:
        args = case.build(case_dir)
    except Exception as exc:  # a generator bug: report it, do not count it as a reludoctor outcome
        record.update(desc=case.desc, outcome="build_error", flags=[], violations=[f"build error: {exc!r}"], rc=None)
        return record
    record["desc"] = case.desc
    cwd = case_dir
    if args and args[0].startswith("@cwd="):
        cwd = case_dir / args.pop(0)[len("@cwd="):]
    record["argv"] = args
    inputs = _snapshot(case_dir)
    watched = {name: _listing(root / name) for name in ("outside", "home")}
    siblings = set(os.listdir(cases_dir))
    stdout_path, stderr_path = logs / f"{case.id}.out", logs / f"{case.id}.err"
    start = time.monotonic()
    with open(stdout_path, "wb") as out, open(stderr_path, "wb") as err:
        proc = subprocess.Popen([settings.python, "-m", "reludoctor", *args], cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=out, stderr=err, preexec_fn=_limits(settings.as_limit), start_new_session=True)
        hang = False
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() - start > settings.timeout:
                hang = True
                try:
                    os.killpg(proc.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.05)
        proc.returncode = os.waitstatus_to_exitcode(status)  # keep Popen from reaping again
    wall = time.monotonic() - start
    rc = proc.returncode
    stdout = stdout_path.read_bytes()
    stderr = stderr_path.read_bytes()
    rss_mb = usage.ru_maxrss / 1024
    text = stderr.decode("utf-8", "replace")
    lines = [line for line in text.splitlines() if line.strip()]

    if hang:
        outcome = "hang"
    elif rc < 0:
        outcome = "crash"
    elif rc in (0, 1):
        outcome = f"exit{rc}"
    elif rc == 2:
        outcome = "exit2_traceback" if "Traceback" in text else "exit2"
    elif rc == 3:
        outcome = "exit3"
    else:
        outcome = "other"

    flags = []
    if rss_mb > settings.rss_bound_mb or any(sign in text for sign in MEMORY_SIGNS):
        flags.append("memory")
    markers = [p for p in (case_dir / MARKER,) if os.path.lexists(p)]
    if markers:
        flags.append("code_executed")
    after = _snapshot(case_dir)
    modified = sorted(os.path.relpath(p, case_dir) for p, digest in inputs.items() if after.get(p) != digest)
    if modified:
        flags.append("input_modified")
    outside = sorted(p for name, before in watched.items() for p in _listing(root / name) - before
                     if not p.startswith(CACHE_PREFIXES(root)))
    outside += sorted(str(cases_dir / s) for s in set(os.listdir(cases_dir)) - siblings)
    if outside:
        flags.append("wrote_outside")
    if "Traceback" in text:
        flags.append("traceback")
    if case.same_dead_as_base and rc in (0, 1):
        report = case_dir / "out" / "report.json"
        base_report = root / "base" / "r.json"
        try:
            got = json.loads(report.read_text())["summary"]["dead_units"]
            want = json.loads(base_report.read_text())["summary"]["dead_units"]
            if got != want:
                flags.append("wrong_report")
                record["dead_units"] = {"got": got, "want": want}
        except (OSError, ValueError, KeyError, TypeError):
            pass
    if case.check_escape and (b"\x1b" in stdout or b"\x1b" in stderr):
        flags.append("raw_escape")

    record.update(rc=rc, signal=-rc if rc < 0 else None, outcome=outcome, flags=flags, peak_rss_mb=round(rss_mb, 1),
                  wall_s=round(wall, 2), stderr_lines=len(lines), stderr_last=lines[-1][:400] if lines else "",
                  stderr_tail=text[-1500:], modified=modified, outside=[os.path.relpath(p, root) for p in outside])
    if args[:1] == ["scan"] and len(args) > 1:
        record["torchscript_model"] = _torchscript_kind(cwd / args[1])
    record["violations"] = violations(case, record)
    if not keep:
        shutil.rmtree(case_dir, ignore_errors=True)
        for p in outside:
            if os.path.isdir(p) and not os.path.islink(p):
                shutil.rmtree(p, ignore_errors=True)
            elif os.path.lexists(p):
                os.unlink(p)
    return record


def violations(case: Case, record: dict) -> list[str]:
    """What the fuzz test rejects. Exit codes 0/1 are fine for mutations (a flipped bit inside a
    weight is still a valid model); everything below is not."""
    out = []
    outcome = record["outcome"]
    if outcome in ("exit3", "crash", "hang", "exit2_traceback", "other", "build_error"):
        out.append(outcome)
    for flag in ("traceback", "memory", "code_executed", "input_modified", "wrote_outside", "raw_escape",
                 "wrong_report"):
        if flag in record["flags"] and flag not in out:
            if flag == "traceback" and outcome == "exit2_traceback":
                continue
            out.append(flag)
    rc = record.get("rc")
    if case.carries_code and rc in (0, 1):
        out.append("ran a code-carrying file (exit %d)" % rc)
    if case.must_refuse and rc in (0, 1):
        out.append(f"not refused (exit {rc}): {case.must_refuse}")
    if record.get("torchscript_model") and rc in (0, 1):
        out.append(f"TorchScript ran without --trust-model (exit {rc})")
    elif record.get("torchscript_model") == "archive" and rc == 2 \
            and "--trust-model" not in record.get("stderr_tail", ""):
        out.append("TorchScript refused without naming --trust-model")
    return out


def _torchscript_kind(path: Path) -> str | None:
    """'archive' when path is a readable zip with TorchScript code entries, 'broken' for another
    .ts file, None when the model is not a .ts file."""
    if path.suffix != ".ts":
        return None
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (OSError, zipfile.BadZipFile, ValueError, EOFError):
        return "broken"
    return "archive" if any("/code/" in name or name.startswith("code/") for name in names) else "broken"


def summarize(records: list[dict]) -> dict[str, dict[str, int]]:
    table: dict[str, Counter] = defaultdict(Counter)
    for r in records:
        for key in (r["format"], "all"):
            row = table[key]
            row["cases"] += 1
            outcome = r["outcome"]
            row["clean exit 2"] += outcome == "exit2"
            row["exit 0/1"] += outcome in ("exit0", "exit1")
            row["exit 3"] += outcome == "exit3"
            row["crashes"] += outcome == "crash"
            row["hangs"] += outcome == "hang"
            row["memory"] += "memory" in r["flags"]
            row["code executed"] += "code_executed" in r["flags"]
            row["inputs modified"] += "input_modified" in r["flags"]
            row["exit 2 + traceback"] += outcome == "exit2_traceback"
            row["wrote outside"] += "wrote_outside" in r["flags"]
            row["wrong report"] += "wrong_report" in r["flags"]
            row["build errors"] += outcome == "build_error"
            row["violations"] += bool(r.get("violations"))
    order = [f for f in FORMATS if f in table] + ["all"]
    return {f: dict(table[f]) for f in order}


def format_table(summary: dict[str, dict[str, int]], markdown: bool = False) -> str:
    cols = ("format",) + HEADERS + ("exit 2 + traceback", "wrote outside", "wrong report", "build errors", "violations")
    rows = [[fmt] + [str(counts.get(c, 0)) for c in cols[1:]] for fmt, counts in summary.items()]
    if markdown:
        lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += ["| " + " | ".join(r) + " |" for r in rows]
        return "\n".join(lines)
    widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
    out = ["  ".join(c.rjust(w) for c, w in zip(cols, widths))]
    out += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    return "\n".join(out)


def run_all(cases: list[Case], root: Path, settings: Settings, *, jsonl: Path | None = None,
            log=print, keep: bool = False) -> list[dict]:
    env = child_env(root, settings)
    records = []
    handle = open(jsonl, "a") if jsonl else None
    try:
        for i, case in enumerate(cases, 1):
            record = run_case(case, root, settings, env, keep=keep)
            records.append(record)
            if handle:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
            if log:
                mark = ("VIOLATION " + ",".join(record["violations"])) if record.get("violations") else "ok"
                log(f"[{i}/{len(cases)}] {case.id}: {record['outcome']} rc={record.get('rc')} "
                    f"{record.get('wall_s', 0)}s {record.get('peak_rss_mb', 0)}MB {mark}")
    finally:
        if handle:
            handle.close()
    return records


def make_plan(root: Path, settings: Settings, formats, n: int, seed: int, **kw) -> list[Case]:
    env = child_env(root, settings)
    base = Base(root, settings.python, env)
    return plan(base, list(formats), n, seed, **kw)
