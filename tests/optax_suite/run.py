"""Runs Optax 0.2.8's own test files (shipped inside the optax wheel) against gradx.

    python tests/optax_suite/run.py                 # every file (make optax-tests)
    python tests/optax_suite/run.py --quick         # the subset make test runs
    python tests/optax_suite/run.py alias lookahead # files whose path contains a word
    python tests/optax_suite/run.py --against-optax # the same files on Optax itself

Each file runs in its own pytest process with the ``optax_swap`` plugin, which puts gradx's
objects in place of Optax's in every optax module (see ``optax_swap.py``). The table counts,
per file, the tests that pass, fail or error; among the failures, those of names gradx lacks
("missing") and the documented differences listed in ``expected.py`` ("expected"). The
failures that are neither are printed and make the exit status 1 (``--allow-missing``: missing
names do not count, for a branch that predates the names' merge; ``--keep-missing``: the names
gradx lacks keep Optax's objects, so the tests that only use one as a helper still test gradx).

Files of Optax sub-packages outside gradx's scope (``OPTIONAL_NAMESPACES``: losses,
projections, ...) run only once gradx has a module of that name.
"""

import argparse
import concurrent.futures
import fnmatch
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
sys.path.insert(0, str(HERE))

from expected import EXPECTED_DIFFERENCES  # noqa: E402
from optax_swap import MISSING_MARKER  # noqa: E402

OPTIONAL_NAMESPACES = ("assignment", "losses", "perturbations", "projections")
# make test: fast files that exercise core wrappers, updates, masking and schedules.
QUICK = ("_src/update_test.py", "transforms/_adding_test.py", "schedules/_join_test.py",
         "transforms/_constraining_test.py", "transforms/_layouts_test.py",
         "transforms/_combining_test.py")
FILE_TIMEOUT_S = 3600


def optax_dir() -> Path:
    import importlib.util
    return Path(importlib.util.find_spec("optax").origin).parent


def test_files(words=(), quick=False) -> tuple[list[str], list[str]]:
    """``(files to run, files skipped with the reason)``, paths relative to the optax package."""
    root = optax_dir()
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*_test.py"))
    if quick:
        files = [f for f in files if f in QUICK]
    if words:
        files = [f for f in files if any(w in f for w in words)]
    run, skipped = [], []
    for f in files:
        namespace = f.split("/")[0]
        if namespace in OPTIONAL_NAMESPACES and not (REPO / "gradx" / namespace).exists() \
                and not (REPO / "gradx" / f"{namespace}.py").exists():
            skipped.append(f"{f}: gradx has no {namespace} module (outside its scope)")
        else:
            run.append(f)
    return run, skipped


def run_files(files: list[str], against_optax: bool, keep_missing: bool,
              extra: list[str]) -> dict[str, list[dict]]:
    """Runs test files in one fresh process; returns their per-test records by file."""
    records = run_file(" ".join(files), against_optax, keep_missing, extra)
    by_file = {f: [] for f in files}
    for r in records:
        by_file.setdefault(r["nodeid"].split("::")[0], []).append(r)
    return by_file


def run_file(file: str, against_optax: bool, keep_missing: bool, extra: list[str]) -> list[dict]:
    """Runs one test file (or several, space-separated) in a fresh process; returns the
    per-test records."""
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results.jsonl"
        env = dict(os.environ, GRADX_OPTAX_RESULTS=str(results),
                   GRADX_OPTAX_SWAP="0" if against_optax else "1",
                   GRADX_OPTAX_MISSING="keep" if keep_missing else "stub",
                   PYTHONPATH=os.pathsep.join([str(REPO), str(HERE),
                                               os.environ.get("PYTHONPATH", "")]))
        command = [sys.executable, "-m", "pytest", "-p", "optax_swap", "-p", "no:xdist",
                   "-p", "no:cacheprovider", "-q", "-c", os.devnull, "--rootdir", str(optax_dir()),
                   "-W", "ignore", *file.split(), *extra]
        try:
            done = subprocess.run(command, cwd=optax_dir(), env=env, capture_output=True,
                                  text=True, timeout=FILE_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            return [{"nodeid": file, "outcome": "error",
                     "message": f"timed out after {FILE_TIMEOUT_S} s"}]
        records = ([json.loads(line) for line in results.read_text().splitlines()]
                   if results.exists() else [])
        if not records and done.returncode not in (0, 5):
            records = [{"nodeid": file, "outcome": "error", "message": done.stdout[-3000:]
                        + done.stderr[-3000:]}]
        return one_record_per_test(records)


def expected_reason(nodeid: str):
    for pattern, reason in EXPECTED_DIFFERENCES.items():
        if fnmatch.fnmatchcase(nodeid, pattern):
            return reason
    return None


def classify(record: dict) -> str:
    """``passed``, ``skipped``, ``missing``, ``expected`` or ``unexpected``."""
    if record["outcome"] in ("passed", "skipped"):
        return record["outcome"]
    if MISSING_MARKER in record["message"]:
        return "missing"
    if expected_reason(record["nodeid"]):
        return "expected"
    return "unexpected"


def last_error_line(message: str) -> str:
    """The first line of the exception (``E   SomeError: ...``) of a pytest failure report."""
    lines = [line[1:].strip() for line in message.splitlines() if line.startswith("E ")]
    lines = [line for line in lines if line]
    errors = [line for line in lines if ("Error" in line or "Exception" in line) and ":" in line]
    chosen = errors[0] if errors else (lines[0] if lines else message.strip()[-300:])
    return chosen[:300]


def one_record_per_test(records: list[dict]) -> list[dict]:
    """A test that failed and then errored in teardown counts once, as its first failure."""
    seen = {}
    for r in records:
        if r["nodeid"] not in seen or seen[r["nodeid"]]["outcome"] in ("passed", "skipped"):
            seen[r["nodeid"]] = r
    return list(seen.values())


def summarize(by_file: dict[str, list[dict]]) -> tuple[str, dict]:
    columns = ("passed", "failed", "errors", "skipped", "missing", "expected", "unexpected")
    rows, totals = [], dict.fromkeys(columns, 0)
    for file, records in by_file.items():
        counts = dict.fromkeys(columns, 0)
        for r in records:
            kind = classify(r)
            counts[{"failed": "failed", "error": "errors"}.get(r["outcome"], r["outcome"])] += 1
            if kind in ("missing", "expected", "unexpected"):
                counts[kind] += 1
        rows.append((file, counts))
        for c in columns:
            totals[c] += counts[c]
    width = max([len(f) for f in by_file] + [5])
    lines = [f"| {'file':<{width}} | " + " | ".join(columns) + " |",
             f"|{'-' * (width + 2)}|" + "|".join("-" * (len(c) + 2) for c in columns) + "|"]
    for file, counts in rows + [("total", totals)]:
        lines.append(f"| {file:<{width}} | " + " | ".join(f"{counts[c]:>{len(c)}}" for c in columns)
                     + " |")
    return "\n".join(lines), totals


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("words", nargs="*", help="run the files whose path contains a word")
    parser.add_argument("--quick", action="store_true", help="the subset make test runs")
    parser.add_argument("--against-optax", action="store_true", help="no swap: Optax itself")
    parser.add_argument("--keep-missing", action="store_true",
                        help="names gradx lacks keep Optax's objects instead of failing")
    parser.add_argument("--allow-missing", action="store_true",
                        help="exit 0 when the only failures are names gradx lacks")
    parser.add_argument("--jobs", type=int, default=1, help="files run in parallel")
    parser.add_argument("--json", help="write every record to this file")
    parser.add_argument("--show-missing", action="store_true", help="list the missing names' tests")
    args, extra = parser.parse_known_args(argv)
    files, skipped = test_files(args.words, args.quick)
    by_file = {}
    if args.quick:  # one process for the few fast files
        by_file = run_files(files, args.against_optax, args.keep_missing, extra)
    with concurrent.futures.ThreadPoolExecutor(max(args.jobs, 1)) as pool:
        futures = {f: pool.submit(run_file, f, args.against_optax, args.keep_missing, extra)
                   for f in files if f not in by_file}
        for f, future in futures.items():
            by_file[f] = future.result()
            print(f"ran {f}: {len(by_file[f])} tests", file=sys.stderr, flush=True)
    table, totals = summarize(by_file)
    print(table)
    for line in skipped:
        print(f"not run: {line}")
    if args.json:
        Path(args.json).write_text(json.dumps(by_file, indent=1))
    shown = ("unexpected", "missing") if args.show_missing else ("unexpected",)
    for kind in shown:
        failures = [r for records in by_file.values() for r in records if classify(r) == kind]
        if failures:
            print(f"\n{len(failures)} {kind} failures:")
        for r in failures:
            print(f"- {r['nodeid']}\n    {last_error_line(r['message'])}")
    bad = totals["unexpected"] + (0 if args.allow_missing else totals["missing"])
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
