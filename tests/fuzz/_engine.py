"""The fuzzer's property and bookkeeping: run one CLI case in-process and judge its outcome.

The property (issue #31, item 3): ``main(["train", CFG, *overrides])`` and ``main(["data", "inspect",
...])`` either succeed (exit 0, or ``train`` reaching model loading, which the fuzz tests forbid:
:class:`ModelLoadReached`) or exit 2 with exactly ONE stderr line containing ``error:``, starting
with ``sage-finetune <command>: error: ``, and no traceback. Exit 1 ("run with --debug for the
traceback"), an exception out of ``main`` or any other code is a bug. ``data inspect`` must also
account for every record it was given (see :func:`check_accounting`).

Two modes, chosen by the environment:

* default (the test suite): a failing case fails the test (hypothesis then shrinks it);
* long mode (``SAGE_FUZZ_REPORT=path``, set by ``benchmarks/fuzz_long.py``): failures are
  collected, deduplicated by exception type + location (or by the broken rule), one reproducer
  each, and written as JSON to that path at the end of the session; the tests keep going.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shlex
import shutil
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SRC_MARK = os.sep + "sage_finetune" + os.sep
REPORT = os.environ.get("SAGE_FUZZ_REPORT", "")
LONG = bool(REPORT)


class ModelLoadReached(BaseException):
    """Raised by the patched ``from_pretrained``: the config passed every check that comes before the
    model (a BaseException, so that ``main``'s ``except Exception`` does not turn it into exit 1)."""


@dataclass
class Outcome:
    argv: list[str]
    code: int | str            # exit code, "model" when train reached model loading, "raised" when main raised
    out: str
    err: str
    exc: BaseException | None = None

    @property
    def label(self) -> str:
        return " ".join(self.argv[:2]) if self.argv[:1] == ["data"] else self.argv[0]


@dataclass
class Ledger:
    """What long mode found: cases run, and one entry per distinct failure."""

    cases: int = 0
    per_test: dict[str, int] = field(default_factory=dict)
    outcomes: dict[str, int] = field(default_factory=dict)  # "test: exit 0 / exit 2 / reached the model"
    messages: dict[str, int] = field(default_factory=dict)  # the error messages of exit 2, by shape
    failures: dict[str, dict[str, Any]] = field(default_factory=dict)


LEDGER = Ledger()


def run_cli(argv: list[str]) -> Outcome:
    """``main(argv)`` with stdout and stderr captured."""
    from sage_libs.sage_finetune.cli import main

    out, err = io.StringIO(), io.StringIO()
    exc: BaseException | None = None
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code: int | str = main(argv)
        except ModelLoadReached:
            code = "model"
        except SystemExit as e:  # argparse's usage errors
            code = e.code if isinstance(e.code, int) else 1
        except Exception as e:  # noqa: BLE001 - main must not raise; judged below
            code, exc = "raised", e
    return Outcome(argv, code, out.getvalue(), err.getvalue(), exc)


def violation(o: Outcome) -> str | None:
    """Why ``o`` breaks the property (None: it holds)."""
    if o.code in (0, "model"):
        return None
    if o.code == "raised":
        return f"main raised {type(o.exc).__name__}: {o.exc}"
    if "Traceback (most recent call last)" in o.err:
        return f"exit {o.code} with a traceback"
    if o.code != 2:
        return f"exit {o.code}"
    lines = [line for line in o.err.splitlines() if "error:" in line]
    prefix = f"sage-finetune {o.label}: error: "
    if len(lines) != 1:
        return f"exit 2 with {len(lines)} lines containing 'error:'"
    if not lines[0].startswith(prefix):
        return f"exit 2, but the error line does not start with {prefix!r}"
    return None


def signature(o: Outcome, reason: str) -> str:
    """Exception type + the innermost frame in our source (found by re-running with --debug), or the
    rule that was broken (a malformed message has no exception to point at)."""
    exc = o.exc
    if exc is None and o.code not in (2,):
        again = run_cli(["--debug", *o.argv])
        exc = again.exc
    if exc is not None:
        frames = traceback.extract_tb(exc.__traceback__)
        ours = [f for f in frames if SRC_MARK in f.filename] or frames
        where = f"{Path(ours[-1].filename).name}:{ours[-1].lineno}" if ours else "?"
        return f"{type(exc).__name__} at {where}"
    return re.sub(r"\d+", "N", reason)


def record(test: str, o: Outcome, workdir: Path, reason: str | None) -> None:
    """Count the case; a violation fails the test (default mode) or is filed (long mode)."""
    LEDGER.cases += 1
    LEDGER.per_test[test] = LEDGER.per_test.get(test, 0) + 1
    what = f"{test}: " + ("reached the model" if o.code == "model" else f"exit {o.code}")
    LEDGER.outcomes[what] = LEDGER.outcomes.get(what, 0) + 1
    if o.code == 2:  # which checks the cases ran into (the report's top ones show what the fuzzer exercises)
        line = next((x for x in o.err.splitlines() if "error: " in x), "").partition("error: ")[2]
        shape = f"{test}: " + re.sub(r"'[^']*'|\"[^\"]*\"|\d+", "_", line)[:90]
        LEDGER.messages[shape] = LEDGER.messages.get(shape, 0) + 1
    if reason is None:
        return
    if not LONG:
        raise AssertionError(f"{reason}\nargv: {shlex.join(o.argv)}\nstderr:\n{o.err[-3000:]}\n"
                             f"files: {describe_files(workdir)}")
    sig = f"{test}: {signature(o, reason)}"
    entry = LEDGER.failures.setdefault(sig, {"count": 0})
    entry["count"] += 1
    if entry["count"] == 1:
        entry.update(reason=reason, argv=o.argv, stderr_tail=o.err[-1500:],
                     reproducer=save_reproducer(workdir, len(LEDGER.failures), o))


def describe_files(workdir: Path, limit: int = 2000) -> dict[str, str]:
    """The case's files (config, data) as text, cut short, for the failure message."""
    files = {}
    for path in sorted(workdir.rglob("*")):
        if path.is_file() and "out" not in path.relative_to(workdir).parts[:1]:
            data = path.read_bytes()
            files[str(path.relative_to(workdir))] = repr(data[:limit]) + (" ..." if len(data) > limit else "")
    return files


def save_reproducer(workdir: Path, n: int, o: Outcome) -> str:
    """Copy the case's files next to the report, with the command that replays it."""
    dest = Path(REPORT).with_suffix("") / f"failure-{n}"
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    for path in workdir.iterdir():
        if path.is_file():
            shutil.copy(path, dest / path.name)
    (dest / "command.txt").write_text(
        f"cd {dest} && sage-finetune {shlex.join(o.argv)}\n"
        f"# the model: {os.environ.get('SAGE_FUZZ_MODEL', 'the tests tiny_model_dir')}\n")
    return str(dest)


def write_report() -> None:
    if not LONG:
        return
    Path(REPORT).parent.mkdir(parents=True, exist_ok=True)
    Path(REPORT).write_text(json.dumps({"cases": LEDGER.cases, "per_test": LEDGER.per_test,
                                        "outcomes": dict(sorted(LEDGER.outcomes.items())),
                                        "top_errors": dict(sorted(LEDGER.messages.items(), key=lambda kv: -kv[1])[:60]),
                                        "distinct_failures": len(LEDGER.failures),
                                        "failures": LEDGER.failures}, indent=2, default=str))


# ---- data inspect: no silent drop ------------------------------------------------------------

def _json_summary(out: str) -> dict[str, Any] | None:
    """The summary ``--json`` prints last (the sample above it may hold JSON-like text too)."""
    lines = out.rstrip("\n").splitlines()
    try:
        summary = json.loads(lines[-1]) if lines else None
    except ValueError:
        return None
    return summary if isinstance(summary, dict) else None


def check_accounting(o: Outcome, units: int | None, preference: bool, exact: bool = True) -> str | None:
    """Every record ``data inspect`` was given is an example, or counted as skipped or dropped.

    ``units``: how many records the file holds as the fuzzer wrote it (JSONL: non-blank lines),
    None when that is not known (a corrupted file)."""
    if o.code != 0:
        return None
    s = _json_summary(o.out)
    if s is None:
        return "data inspect --json printed no JSON summary last"
    m = re.search(r"invalid \(skipped\) (\d+)", o.out)
    if not m:
        return "data inspect printed no 'invalid (skipped)' count"
    unreadable = int(m.group(1)) - s["skipped_invalid"]  # lines the loader could not read
    if unreadable < 0:
        return f"invalid (skipped) {m.group(1)} is less than the tokenizer's skipped_invalid {s['skipped_invalid']}"
    if units is not None and s["records"] + unreadable != units:
        return (f"silent drop: the file holds {units} records, data inspect counts {s['records']} read + "
                f"{unreadable} unreadable")
    if preference:
        made = s.get("pairs", s.get("examples", 0))
        lost = s["skipped_invalid"] + s.get("dropped_no_scored_tokens", 0) + s.get("dropped_same_after_truncation", 0)
        if "pairs" in s and made + lost != s["records"]:
            return (f"silent drop: {s['records']} pair records -> {made} pairs + {lost} skipped/dropped")
        return None
    made, lost = s["examples"], s["skipped_invalid"] + s["dropped_no_trained_tokens"]
    if made + lost < s["records"] or (exact and made + lost != s["records"]):
        return f"silent drop: {s['records']} records -> {made} examples + {lost} skipped/dropped"
    return None
