"""The fuzzer of tests/fuzz in long mode: many more cases, failures collected instead of stopping.

    python benchmarks/fuzz_long.py --cases 10000        # ~1 h on 2 shared cores
    python benchmarks/fuzz_long.py --cases 500          # a quick look

Runs ``pytest tests/fuzz`` with ``SAGE_FUZZ_EXAMPLES`` (the cases, spread over the fuzz tests) and
``SAGE_FUZZ_REPORT`` (where tests/fuzz/_engine.py writes what it found), then prints how many cases
ran and every distinct failure (exception type + the innermost frame in our source, or the rule
that was broken), with how often it happened and one reproducer each: a folder with the case's
files and command.txt (the model is the tests' tiny model; ``sage-finetune tiny-model DIR`` makes
one like it). Cases are seeded (hypothesis derandomize): the same N gives the same cases.
Exit code 0 when no failure was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", type=int, default=10000, help="cases in all (default 10000)")
    p.add_argument("--report", default=str(REPO / "benchmarks" / "results" / "fuzz_long.json"),
                   help="the JSON report (reproducers go to a folder beside it)")
    p.add_argument("-k", default="", help="only the fuzz tests matching this pytest -k expression")
    args = p.parse_args()
    report = Path(args.report).resolve()
    report.unlink(missing_ok=True)
    env = {**os.environ, "SAGE_FUZZ_EXAMPLES": str(args.cases), "SAGE_FUZZ_REPORT": str(report),
           "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz",
           "--deselect", "tests/fuzz/test_regressions.py", "-k", args.k or "not every_base"]
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=REPO, env=env)
    seconds = time.monotonic() - start
    if not report.is_file():
        print(f"no report was written (pytest exit {proc.returncode})", file=sys.stderr)
        return 1
    found = json.loads(report.read_text())
    found["seconds"] = round(seconds)
    report.write_text(json.dumps(found, indent=2))
    print(f"\ncases run: {found['cases']} in {seconds / 60:.1f} min  ({found['per_test']})")
    print(f"outcomes: {found.get('outcomes')}")
    print(f"distinct failures: {found['distinct_failures']}")
    for sig, entry in found["failures"].items():
        print(f"- {sig}  (x{entry['count']}): {entry['reason']}")
        print(f"    reproducer: {entry['reproducer']}/command.txt")
        print(f"    {entry['stderr_tail'].strip().splitlines()[-1] if entry['stderr_tail'].strip() else ''}")
    print(f"report: {report}")
    return 0 if not found["failures"] else 1


if __name__ == "__main__":
    sys.exit(main())
