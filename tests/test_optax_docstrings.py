"""Optax 0.2.8's docstring examples that pass with Optax run against gradx (``import gradx as
optax``), apart from the slow ones (``make optax-tests`` runs every one). An example that uses a
name gradx lacks is counted, not failed; the documented differences are in
``tests/optax_suite/expected.py``."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent / "optax_suite"))

import docstrings  # noqa: E402


def test_optax_docstring_examples_run_on_gradx():
    names = set(docstrings.passing_with_optax())
    tests = [t for t in docstrings.examples() if t.name in names and docstrings.in_scope(t)
             and not t.name.startswith(docstrings.SLOW)]
    assert len(tests) >= 50
    counts, failures = docstrings.check(tests)
    assert not failures, "\n".join(f"=== {name}\n{report[-1500:]}" for name, report in failures)
    assert counts["passed"] >= 35, counts
