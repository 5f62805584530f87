"""One rank of a multi-process scan, launched by the tests the way torchrun launches one
(RANK, LOCAL_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT in the environment).

``python scan_worker.py JOBS.json``: JOBS is a list of {model, data, batch_size, out, kwargs,
iterable}; every rank runs reludoctor.scan() on each job in turn, in one process group. Rank 0
writes each report to ``out``; other ranks write nothing. A job that raises writes
``out.rankN.error`` on every rank instead: {"type", "message", "exit_code"}.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def main() -> None:
    from reludoctor import scan
    from reludoctor.errors import ReludoctorError

    rank = os.environ["RANK"]
    with open(sys.argv[1], encoding="utf-8") as handle:
        jobs = json.load(handle)
    for job in jobs:
        data = job["data"]
        if job.get("iterable"):  # an iterable of batches of unknown length, in chunks of 7
            array = np.load(data)
            data = (array[i:i + 7] for i in range(0, len(array), 7))
        try:
            report = scan(job["model"], data, batch_size=job["batch_size"], device="cpu",
                          **job.get("kwargs", {}))
        except ReludoctorError as exc:
            with open(f"{job['out']}.rank{rank}.error", "w", encoding="utf-8") as handle:
                json.dump({"type": type(exc).__name__, "message": exc.one_line(),
                           "exit_code": exc.exit_code}, handle)
            continue
        if rank == "0":
            with open(job["out"], "w", encoding="utf-8") as handle:
                handle.write(report.to_json())


if __name__ == "__main__":
    main()
