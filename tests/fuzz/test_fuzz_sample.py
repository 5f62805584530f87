"""A small seeded fuzz sample: every crafted attack once plus one mutation per format, each run as
its own bounded ``python -m reludoctor`` process from this checkout (see docs/fuzzing.md).

Each case must show: no exit 3, no crash, no traceback, no hang, memory under the bound, no
payload marker, no modified input, nothing written outside its folder; a code-carrying file (and
every TorchScript file, which is code) must not run (exit 0/1); TorchScript refusals name
--trust-model. Exit 0/1 is otherwise fine (a mutation may still be a valid file).
The full run is ``python benchmarks/fuzz.py``.
"""

from __future__ import annotations

import os
import queue
import shutil
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from tests.fuzz.cases import FORMATS
from tests.fuzz.harness import Settings, child_env, make_plan, run_case

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
SEED = 20261129
MUTATIONS_PER_FORMAT = 1
TIMEOUT_S = 30.0  # a fixture scan takes 3-10 s on a loaded 2-core machine
WORKERS = 2

_ROOT = Path(tempfile.gettempdir()) / f"reludoctor-fuzz-sample-{os.getpid()}"
_SETTINGS = Settings(repo=REPO, timeout=TIMEOUT_S, python=sys.executable)
CASES = make_plan(_ROOT, _SETTINGS, FORMATS, 0, SEED, mutations_per_format=MUTATIONS_PER_FORMAT)
BY_ID = {case.id: case for case in CASES}


@pytest.fixture(scope="module")
def fuzz_results(request) -> dict[str, dict]:
    """Runs the selected cases (all, or those a -k selection kept) two at a time."""
    selected = {item.callspec.params["case_id"] for item in request.session.items
                if getattr(item, "callspec", None) is not None and "case_id" in item.callspec.params}
    cases = [case for case in CASES if case.id in selected]
    _ROOT.mkdir(parents=True, exist_ok=True)
    # one folder per worker: the "wrote outside" check watches a worker's own cases/ and outside/
    roots: queue.Queue[Path] = queue.Queue()
    envs = {}
    for i in range(WORKERS):
        root = _ROOT / f"w{i}"
        envs[root] = child_env(root, _SETTINGS)
        roots.put(root)

    def one(case):
        root = roots.get()
        try:
            return run_case(case, root, _SETTINGS, envs[root])
        finally:
            roots.put(root)

    try:
        with ThreadPoolExecutor(WORKERS) as pool:
            records = list(pool.map(one, cases))
    finally:
        shutil.rmtree(_ROOT, ignore_errors=True)
    return {record["id"]: record for record in records}


def test_sample_covers_every_format_and_crafted_attack():
    kinds = {(case.fmt, case.kind) for case in CASES}
    for fmt in FORMATS:
        assert (fmt, "mutation") in kinds, fmt
    assert sum(case.kind == "crafted" for case in CASES) >= 40
    assert len(BY_ID) == len(CASES)  # ids are unique


@pytest.mark.parametrize("case_id", list(BY_ID))
def test_fuzz_case(fuzz_results, case_id):
    record = fuzz_results[case_id]
    assert not record["violations"], (
        f"{case_id} ({record['desc']}): {', '.join(record['violations'])}; outcome {record['outcome']} "
        f"rc={record.get('rc')} peak RSS {record.get('peak_rss_mb')} MB; "
        f"argv {record.get('argv')}; stderr: {record.get('stderr_last', '')!r}"
    )
