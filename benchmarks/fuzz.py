"""The full fuzzing run: seeded mutations and crafted attacks against every loader.

    python benchmarks/fuzz.py --cases 450 --seed 0 --out results.json
    python benchmarks/fuzz.py --repo /tmp/before --out before.json      # another checkout's CLI

One worker, one case at a time (each case is a fresh ``python -m reludoctor`` process: ~3-6 s).
Writes one JSON line per case to OUT.jsonl as it goes, then OUT (summary + every record), and
prints a per-format table. Exit status: 0 when no case violates the fuzz properties, 1 otherwise.
See docs/fuzzing.md.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.fuzz.cases import FORMATS  # noqa: E402
from tests.fuzz.harness import (  # noqa: E402
    DEFAULT_AS_LIMIT,
    DEFAULT_RSS_BOUND_MB,
    DEFAULT_TIMEOUT,
    Settings,
    check_import,
    child_env,
    format_table,
    make_plan,
    run_all,
    summarize,
)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cases", type=int, default=450, help="total cases (crafted ones included)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--formats", default=",".join(FORMATS))
    parser.add_argument("--out", type=Path, default=Path("fuzz_results.json"))
    parser.add_argument("--repo", type=Path, default=None,
                        help="checkout whose CLI runs (PYTHONPATH=REPO); default: the installed reludoctor")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT, help="seconds per case")
    parser.add_argument("--as-limit-gib", type=float, default=DEFAULT_AS_LIMIT / 2**30, help="RLIMIT_AS per case")
    parser.add_argument("--rss-bound-mb", type=int, default=DEFAULT_RSS_BOUND_MB)
    parser.add_argument("--workdir", type=Path, default=None, help="where cases are built (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep each case's folder")
    parser.add_argument("--only", default=None, help="comma-separated substrings of case ids to run")
    parser.add_argument("--summarize", type=Path, default=None, metavar="RESULTS",
                        help="only print the table of an earlier run's .json or (partial) .jsonl")
    parser.add_argument("--markdown", action="store_true", help="print the table as Markdown")
    args = parser.parse_args(argv)
    if args.summarize is not None:
        text = args.summarize.read_text()
        if args.summarize.suffix == ".jsonl":
            records = [json.loads(line) for line in text.splitlines() if line.strip()]
        else:
            records = json.loads(text)["records"]
        print(format_table(summarize(records), markdown=args.markdown))
        failing = [r for r in records if r.get("violations")]
        if failing:
            print(f"\n{len(failing)} cases with violations:")
            for r in failing:
                print(f"- {r['id']}: {r['outcome']} rc={r.get('rc')} [{', '.join(r['violations'])}] "
                      f"{r.get('stderr_last', '')[:200]!r}")
        return 0

    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        parser.error(f"unknown formats: {', '.join(unknown)} (known: {', '.join(FORMATS)})")
    settings = Settings(repo=args.repo, timeout=args.timeout, as_limit=int(args.as_limit_gib * 2**30),
                        rss_bound_mb=args.rss_bound_mb)
    work = args.workdir or Path(tempfile.mkdtemp(prefix="reludoctor-fuzz-"))
    work.mkdir(parents=True, exist_ok=True)
    where = check_import(settings, child_env(work, settings))
    repo = Path(args.repo) if args.repo else ROOT
    try:
        commit = subprocess.run(["git", "-C", str(repo), "rev-parse", "--short", "HEAD"], capture_output=True,
                                text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                                    capture_output=True, text=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    print(f"reludoctor from {where} (commit {commit}{' + uncommitted changes' if dirty else ''}); "
          f"cases in {work}", file=sys.stderr)

    cases = make_plan(work, settings, formats, args.cases, args.seed)
    if args.only:
        keys = args.only.split(",")
        cases = [c for c in cases if any(k in c.id for k in keys)]
    jsonl = args.out.with_suffix(args.out.suffix + "l") if args.out.suffix else args.out.with_name(args.out.name + ".jsonl")
    jsonl.write_text("")
    start = time.time()
    records = run_all(cases, work, settings, jsonl=jsonl, log=lambda m: print(m, file=sys.stderr, flush=True),
                      keep=args.keep)
    summary = summarize(records)
    result = {
        "repo": str(repo), "commit": commit, "dirty": dirty, "imported_from": where, "seed": args.seed,
        "cases": len(records), "formats": formats, "timeout_s": args.timeout, "as_limit_gib": args.as_limit_gib,
        "rss_bound_mb": args.rss_bound_mb, "wall_s": round(time.time() - start, 1), "summary": summary,
        "failing": [{k: r.get(k) for k in ("id", "outcome", "rc", "violations", "stderr_last")}
                    for r in records if r.get("violations")],
        "records": records,
    }
    args.out.write_text(json.dumps(result, indent=1))
    print(format_table(summary, markdown=args.markdown))
    if not args.keep and args.workdir is None:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if result["failing"] else 0


if __name__ == "__main__":
    sys.exit(main())
