"""``benchmarks/FUZZ.md`` from the figures ``make fuzz`` writes (``benchmarks/out/fuzz-results.json``).

    .venv/bin/python benchmarks/fuzz_report.py [fuzz-results.json] [--md benchmarks/FUZZ.md] [--note ...]

The record: the command, the examples run (Optax and torch_compat), the mismatches and how
many of them no documented difference explains, then one row per documented difference (the
README's "Where gradx differs from Optax" table) with its count, and every unexplained one.
"""

import argparse
import json
import os

from report import write_record

HERE = os.path.dirname(os.path.abspath(__file__))


def markdown(result: dict) -> str:
    lines = [f"- Optax examples run: **{result['optax_examples']}**, torch_compat examples run: "
             f"**{result['torch_examples']}** ({result['compiled_programs']} compiled programs, "
             f"{result['seconds']} s of wall-clock)",
             f"- mismatches: {result['mismatches']} in {result['examples_with_mismatches']} "
             "examples; each explained one is a documented difference (README's \"Where gradx "
             "differs from Optax\" table), counted below",
             f"- unexplained: **{result['unexplained']}** "
             f"(in {result['examples_with_unexplained']} examples)", ""]
    rows = sorted(result["explained"].items(), key=lambda item: -item[1])
    if rows:
        lines += ["| documented difference | mismatches |", "|---|---|"]
        lines += [f"| {reason} | {count} |" for reason, count in rows]
    unexplained = [item for item in result["found"] if not item["explanation"]]
    if unexplained:
        lines += ["", "## Unexplained", ""]
        lines += [f"- `{item['problem'][:300]}` in `{item['case'][:300]}`" for item in unexplained]
    return "\n".join(lines) + "\n"


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("results", nargs="?", default=os.path.join(HERE, "out", "fuzz-results.json"))
    p.add_argument("--md", default=os.path.join(HERE, "FUZZ.md"))
    p.add_argument("--note", default="", help="conditions of the run, for the record")
    args = p.parse_args(argv)
    with open(args.results) as f:
        result = json.load(f)
    write_record(args.md, "make fuzz: gradx against Optax 0.2.8 and torch_compat against torch, "
                 "property-based",
                 "`benchmarks/fuzz_report.py` from `make fuzz` (`python tests/differential.py "
                 "$(FUZZ_ARGS) --out benchmarks/out/fuzz-results.json`, derandomized; `make "
                 "test` runs the same generator with a small fixed budget, "
                 "tests/test_differential.py)", args.note, markdown(result))


if __name__ == "__main__":
    main()
